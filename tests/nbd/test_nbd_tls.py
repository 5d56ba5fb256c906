"""NBD over TLS (NBD_OPT_STARTTLS, the protocol's FORCEDTLS mode) with client certificates.

Real clients (nbdinfo, nbdcopy, qemu-img) read the image through `snapfs nbd --tls-cert --tls-key
--tls-ca` and get exactly its bytes; a client without TLS, with a certificate from another CA or
none, or one that does not trust the server's CA gets none; bad certificate files are one-line
errors at start-up. The certificates are made here (support/certs.py).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import ssl
import struct
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.certs import Pki, make_pki
from support.nbd_client import NbdClientError
from support.nbd_serving import Served, nbd_process
from support.serving import backup_image, server_env, snapfs_command

from snapfs.errors import UsageError
from snapfs.nbd import protocol as P
from snapfs.nbd import tls
from snapfs.nbd.exports import datastore_exports
from snapfs.nbd.tls import tls_context
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore

IMAGE_SIZE = 5 * 1024 * 1024 + 3 * 4096
TOOL_TIMEOUT = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed (scripts/setup installs qemu-utils and libnbd-bin)")
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, str, bytes]:
    """A datastore with one image of random bytes and zeroes; (datastore, export name, bytes)."""
    work = tmp_path_factory.mktemp("image")
    data = bytearray(random.Random(7).randbytes(IMAGE_SIZE))
    data[1 << 20 : 3 << 20] = bytes(2 << 20)  # whole zero chunks too
    raw = work / "disk.raw"
    raw.write_bytes(data)
    snapshot = backup_image(work / "ds", raw, "vm/100")
    return work / "ds", f"{snapshot}/drive-scsi0.img", bytes(data)


class CliServer:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        parts = urlsplit(url)
        self.port = parts.port
        self.export = parts.path.lstrip("/")


@pytest.fixture(scope="module")
def cli_server(image, pki, tmp_path_factory):
    """`snapfs nbd` as users run it, with TLS required and client certificates from pki's CA."""
    store, export, _ = image
    work = tmp_path_factory.mktemp("cli")
    log = work / "nbd.log"
    tls = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-ca", pki.ca_cert]
    with nbd_process(store, *tls, env=server_env(work), log=log, log_level="info") as url:
        assert url.startswith("nbds://127.0.0.1:") and url.endswith(f"/{export}"), url
        yield CliServer(url, log)


def _run(*argv: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=TOOL_TIMEOUT
    )


def _nbdinfo(url: str, certificates: Path | None) -> subprocess.CompletedProcess:
    query = f"?tls-certificates={certificates}" if certificates else ""
    return _run(_tool("nbdinfo"), "--json", url + query)


def _client_context(pki: Pki, certificates: Path) -> ssl.SSLContext:
    """What a client presents and trusts, from one of pki's certificate directories."""
    ctx = ssl.create_default_context(cafile=str(certificates / "ca-cert.pem"))
    if (certificates / "client-cert.pem").exists():
        ctx.load_cert_chain(certificates / "client-cert.pem", certificates / "client-key.pem")
    return ctx


# --- real clients through `snapfs nbd` ------------------------------------------------------------


def test_nbdinfo_and_nbdcopy_over_tls_read_the_image_exactly(cli_server, image, pki, tmp_path):
    _, _, data = image
    info = _nbdinfo(cli_server.url, pki.client_dir)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["TLS"] is True
    assert described["exports"][0]["export-size"] == len(data)
    copy = tmp_path / "copy.raw"
    url = f"{cli_server.url}?tls-certificates={pki.client_dir}"
    done = _run(_tool("nbdcopy"), "--requests=32", url, copy)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert "started TLS (certificate of 'client')" in cli_server.log.read_text()


def test_qemu_img_over_tls_reads_the_image_exactly(cli_server, image, pki, tmp_path):
    _, _, data = image
    creds = f"tls-creds-x509,id=tls0,dir={pki.client_dir},endpoint=client"
    opts = (
        f"driver=nbd,host=127.0.0.1,port={cli_server.port},export={cli_server.export},"
        "tls-creds=tls0"
    )
    qemu_img = _tool("qemu-img")
    info = _run(qemu_img, "info", "--output=json", "--object", creds, "--image-opts", opts)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == len(data)
    copy = tmp_path / "copy.raw"
    done = _run(qemu_img, "convert", "--object", creds, "--image-opts", opts, "-O", "raw", copy)
    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == data


def test_client_without_tls_is_refused(cli_server, image):
    plain = "nbd://" + cli_server.url.removeprefix("nbds://")
    refused = _nbdinfo(plain, None)
    assert refused.returncode != 0
    assert "export-size" not in refused.stdout
    assert refused.stderr, "nbdinfo says why"
    assert "refused: it did not start TLS" in cli_server.log.read_text()


@pytest.mark.parametrize(
    ("client", "logged"),
    [
        ("stranger", "client certificate: unable to get local issuer certificate"),
        ("anonymous", "the client presented no certificate"),
    ],
)
def test_client_certificate_not_from_the_ca_is_refused(cli_server, pki, client, logged):
    """A certificate signed by another CA, or none at all: the handshake fails, no data, and
    the server's log says why (before the client hears of it)."""
    directory = {"stranger": pki.stranger_dir, "anonymous": pki.anonymous_dir}[client]
    refused = _nbdinfo(cli_server.url, directory)
    assert refused.returncode != 0
    assert "export-size" not in refused.stdout
    assert f"TLS handshake failed: {logged}" in cli_server.log.read_text()


def test_client_not_trusting_the_server_ca_fails(cli_server, pki):
    refused = _nbdinfo(cli_server.url, pki.wrong_ca_dir)
    assert refused.returncode != 0
    assert "export-size" not in refused.stdout
    assert "certificate verification" in refused.stderr, refused.stderr


# --- the protocol, on a server in this process ----------------------------------------------------


@pytest.fixture
def tls_served(image, pki):
    store, _, _ = image
    ds = Datastore(LocalBackend(store))
    served = Served(
        datastore_exports(ds, None, ChunkCache(), []),
        tls=tls_context(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert)),
    )
    yield served
    served.stop()


def test_every_option_before_starttls_needs_tls(tls_served, image, pki):
    _, export, _ = image
    c = tls_served.client(None)
    for option in (P.OPT_LIST, P.OPT_INFO, P.OPT_GO, P.OPT_STRUCTURED_REPLY, 9999):
        c.send_option(option, struct.pack(">IH", 0, 0) if option in (P.OPT_INFO, P.OPT_GO) else b"")
        _, reply, _ = c.recv_option_reply()
        assert reply == P.REP_ERR_TLS_REQD, option
    c.send_option(P.OPT_STARTTLS, b"x")  # STARTTLS takes no data
    assert c.recv_option_reply()[1] == P.REP_ERR_INVALID
    c.send_option(P.OPT_ABORT)
    assert c.recv_option_reply()[1] == P.REP_ACK
    c.close()
    # NBD_OPT_EXPORT_NAME cannot be answered with an error: the connection closes, no byte sent.
    c = tls_served.client(None)
    name = export.encode()
    c.sock.sendall(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, len(name)) + name)
    assert c.sock.recv(1) == b""
    c.close()
    # After STARTTLS: no more TLS_REQD, a second STARTTLS is invalid, the export reads.
    c = tls_served.client(None, tls=_client_context(pki, pki.client_dir))
    assert c.list_exports() == [export]
    c.send_option(P.OPT_STARTTLS)
    assert c.recv_option_reply()[1] == P.REP_ERR_INVALID
    c.go(export)
    assert c.read(0, 4096) == image[2][:4096]
    c.send_request(P.CMD_DISC, 0, 0)
    assert c.sock.recv(1) == b""  # TLS's close_notify, as the protocol asks after a DISC
    c.close()


def test_stalled_handshake_is_dropped(tls_served, pki, monkeypatch, caplog):
    """A client that sends STARTTLS and then nothing does not hold its thread forever."""
    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT", 0.5)
    c = tls_served.client(None)
    c.send_option(P.OPT_STARTTLS)
    assert c.recv_option_reply()[1] == P.REP_ACK
    c.sock.settimeout(30)  # a hang fails the test instead of stopping it
    assert c.sock.recv(1) == b""
    c.close()
    assert "no handshake within the time allowed" in caplog.text


def test_stranger_certificate_gets_no_option_answered(tls_served, pki):
    c = tls_served.client(None)
    with pytest.raises((ssl.SSLError, OSError, NbdClientError)):
        c.starttls(_client_context(pki, pki.stranger_dir))
        c.list_exports()  # TLS 1.3: the refusal arrives after the client's side finished
    c.close()


def test_pipelined_reads_over_tls_arrive_intact(tls_served, image, pki):
    """Replies leave from worker threads while the connection's thread decrypts the next
    requests: 256 reads in flight at once, every one answered with its own bytes."""
    _, export, data = image
    c = tls_served.client(export, tls=_client_context(pki, pki.client_dir))
    rnd = random.Random(3)
    length = 32 * 1024
    offsets = {}
    for _ in range(256):
        offset = rnd.randrange(0, len(data) - length)
        offsets[c.send_request(P.CMD_READ, offset, length)] = offset
    for _ in offsets:
        cookie, error, got = c.recv_reply(length)
        assert error == 0
        assert got == data[offsets[cookie] : offsets[cookie] + length], offsets[cookie]
    c.disconnect()


# --- start-up errors ------------------------------------------------------------------------------


def _bad_files(pki: Pki, tmp: Path) -> dict[str, tuple[list[object], Path | str]]:
    """Case name: (the TLS options, what the one error line must name)."""
    missing = tmp / "missing.pem"
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = pki.server_cert, pki.server_key
    return {
        "missing cert": (["--tls-cert", missing, "--tls-key", key], missing),
        "cert not PEM": (["--tls-cert", garbage, "--tls-key", key], garbage),
        "key is a directory": (["--tls-cert", cert, "--tls-key", tmp], tmp),
        "key of another certificate": (["--tls-cert", pki.other_cert, "--tls-key", key], key),
        "key with passphrase": (
            ["--tls-cert", cert, "--tls-key", pki.server_key_encrypted],
            pki.server_key_encrypted,
        ),
        "CA not PEM": (["--tls-cert", cert, "--tls-key", key, "--tls-ca", garbage], garbage),
        "CA is a key": (["--tls-cert", cert, "--tls-key", key, "--tls-ca", key], key),
        "CA without cert": (["--tls-ca", pki.ca_cert], "--tls-ca"),
        "cert without key": (["--tls-cert", cert], "--tls-key"),
    }


CASES = [
    "missing cert",
    "cert not PEM",
    "key is a directory",
    "key of another certificate",
    "key with passphrase",
    "CA not PEM",
    "CA is a key",
    "CA without cert",
    "cert without key",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_certificate_files_are_one_line_errors(pki, image, tmp_path, case):
    store, _, _ = image
    options, named = _bad_files(pki, tmp_path)[case]
    result = subprocess.run(
        snapfs_command("nbd", store, *options, "--listen", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=server_env(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapfs: error: "), result.stderr
    assert str(named) in lines[0]
    key_body = pki.server_key.read_text().splitlines()[1]
    assert "PRIVATE" not in result.stderr and key_body not in result.stderr


def test_tls_context_never_asks_for_a_passphrase(pki):
    with pytest.raises(UsageError, match="passphrase"):
        tls_context(str(pki.server_cert), str(pki.server_key_encrypted))
