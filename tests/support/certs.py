"""A small X.509 world made by the test itself: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a second CA nobody trusts with a client certificate of its
own (`make_pki`, for NBD over TLS); or a bare CA that signs server certificates for any host
(`make_authority`, for the S3 endpoints over HTTPS).

The files come out as servers take them (`--tls-cert`, `--tls-key`, `--tls-ca`) and as the
certificate directories libnbd (`tls-certificates=DIR`) and QEMU (`tls-creds-x509,dir=DIR`) read:
`ca-cert.pem`, `client-cert.pem`, `client-key.pem`. The extensions are the ones QEMU's sanity
checks want (CA basic constraints and keyCertSign; digitalSignature and keyEncipherment, and the
TLS client or server purpose, on the leaves).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = rsa.RSAPrivateKey


@dataclass(frozen=True)
class Pki:
    ca_cert: Path  # the CA the server trusts for clients (--tls-ca), and clients for the server
    server_cert: Path  # --tls-cert: 127.0.0.1 and localhost, signed by ca_cert
    server_key: Path  # --tls-key
    server_key_encrypted: Path  # the same key under a passphrase
    other_cert: Path  # a certificate of the other CA: not server_key's
    client_dir: Path  # ca-cert.pem, and a client certificate signed by it
    stranger_dir: Path  # ca-cert.pem, and a client certificate signed by the other CA
    anonymous_dir: Path  # ca-cert.pem only: no client certificate
    wrong_ca_dir: Path  # the other CA as ca-cert.pem, and the good client certificate

    def client_key(self) -> bytes:
        return (self.client_dir / "client-key.pem").read_bytes()


def _key() -> Key:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "snapfs tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None,
    *,
    purpose: x509.ObjectIdentifier | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """A CA certificate (self-signed when `issuer` is None) or a leaf for `purpose`."""
    now = datetime.datetime.now(datetime.UTC)
    is_ca = purpose is None
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=not is_ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
    if purpose is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key, passphrase: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
    )


def _client_dir(path: Path, ca: x509.Certificate, client: tuple[x509.Certificate, Key] | None):
    path.mkdir(parents=True)
    (path / "ca-cert.pem").write_bytes(_pem(ca))
    if client is not None:
        (path / "client-cert.pem").write_bytes(_pem(client[0]))
        key = path / "client-key.pem"
        key.write_bytes(_key_pem(client[1]))
        key.chmod(0o600)
    return path


@dataclass(frozen=True)
class Authority:
    """A CA of the test's own, for HTTPS endpoints no system store trusts: `issue` signs server
    certificates for host names or IPs (the S3 TLS tests hand snapfs `pem`, or another CA's)."""

    cert: x509.Certificate
    key: Key

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)

    def issue(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a server certificate for `hosts`."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = _key()
        cert = _certificate(
            hosts[0],
            key,
            (self.cert, self.key),
            purpose=ExtendedKeyUsageOID.SERVER_AUTH,
            names=names,
        )
        return _pem(cert), _key_pem(key)


def make_authority(name: str) -> Authority:
    """A self-signed CA named `name`."""
    key = _key()
    return Authority(_certificate(name, key, None), key)


def make_pki(root: Path) -> Pki:
    """Every file under `root` (about a second: five RSA keys)."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = _key(), _key()
    ca = _certificate("snapfs test CA", ca_key, None)
    other = _certificate("untrusted test CA", other_key, None)
    server_key = _key()
    server = _certificate(
        "127.0.0.1",
        server_key,
        (ca, ca_key),
        purpose=ExtendedKeyUsageOID.SERVER_AUTH,
        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = _key()
    client = _certificate(
        "client", client_key, (ca, ca_key), purpose=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    stranger_key = _key()
    stranger = _certificate(
        "stranger", stranger_key, (other, other_key), purpose=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    files = {
        "ca-cert.pem": _pem(ca),
        "server-cert.pem": _pem(server),
        "server-key.pem": _key_pem(server_key),
        "server-key-encrypted.pem": _key_pem(server_key, b"correct horse"),
        "other-ca-cert.pem": _pem(other),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return Pki(
        ca_cert=root / "ca-cert.pem",
        server_cert=root / "server-cert.pem",
        server_key=root / "server-key.pem",
        server_key_encrypted=root / "server-key-encrypted.pem",
        other_cert=root / "other-ca-cert.pem",
        client_dir=_client_dir(root / "client", ca, (client, client_key)),
        stranger_dir=_client_dir(root / "stranger", ca, (stranger, stranger_key)),
        anonymous_dir=_client_dir(root / "anonymous", ca, None),
        wrong_ca_dir=_client_dir(root / "wrong-ca", other, (client, client_key)),
    )
