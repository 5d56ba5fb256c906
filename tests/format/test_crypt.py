"""CryptConfig derivations and fingerprints against upstream vectors (docs/formats.md §6, §8.2)."""

from __future__ import annotations

import hashlib
import json

import pytest

from snapfs.errors import CorruptDataError, CryptKeyError, WrongKeyError
from snapfs.format.crypt import CryptConfig, format_fingerprint, parse_fingerprint


@pytest.fixture(scope="module")
def report(vectors):
    return json.loads((vectors / "report.json").read_text())


@pytest.fixture(scope="module")
def vector_crypt(report) -> CryptConfig:
    return CryptConfig(bytes.fromhex(report["raw_key_hex"]))


def test_vector_key_fingerprint(report, vector_crypt):
    assert format_fingerprint(vector_crypt.fingerprint) == report["fingerprint_full"]
    assert format_fingerprint(vector_crypt.fingerprint, short=True) == report["fingerprint_short"]
    assert parse_fingerprint(report["fingerprint_full"]) == vector_crypt.fingerprint


def test_vector_keyed_digest_of_empty(report, vector_crypt):
    assert vector_crypt.compute_digest(b"").hex() == report["id_key_digest_of_empty"]
    assert vector_crypt.compute_digest(memoryview(b"")).hex() == report["id_key_digest_of_empty"]


def test_upstream_fingerprint_checks_vector():
    # Asserted upstream in pbs-key-config `fingerprint_checks` (key = bytes 0..31).
    crypt = CryptConfig(bytes(range(32)))
    assert crypt.id_key.hex() == "7c2c013efd07f3b25717a485263343cd4d292a4b65c200bb3b18ea227abe225c"
    assert format_fingerprint(crypt.fingerprint) == (
        "0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:"
        "90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b"
    )
    assert format_fingerprint(crypt.fingerprint, short=True) == "0e:ab:d4:46:0b:6e:b9:ca"


def test_upstream_manifest_signature_vector():
    # Upstream `test_manifest_signature` in pbs-datastore/src/manifest.rs.
    key = hashlib.scrypt(b"test", salt=b"", n=65536, r=8, p=1, maxmem=1025 * 1024 * 1024, dklen=32)
    canonical = (
        b'{"backup-id":"elsa","backup-time":1593179765,"backup-type":"host","files":['
        b'{"crypt-mode":"encrypt","csum":"' + b"01" * 32 + b'","filename":"test1.img.fidx",'
        b'"size":200},{"crypt-mode":"none","csum":"' + b"02" * 32 + b'","filename":"abc.blob",'
        b'"size":200}]}'
    )
    assert (
        CryptConfig(key).sign(canonical).hex()
        == "d7b446fb7db081662081d4b40fedd858a1d6307a5aff4ecff7d5bf4fd35679e9"
    )


def test_keyed_digest_differs_from_plain_and_between_keys():
    data = b"same plaintext"
    a, b = CryptConfig(bytes(32)), CryptConfig(bytes([1]) * 32)
    assert a.compute_digest(data) == hashlib.sha256(data + a.id_key).digest()
    assert a.compute_digest(data) != b.compute_digest(data)
    assert a.compute_digest(data) != hashlib.sha256(data).digest()


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_bad_key_length(length):
    with pytest.raises(CryptKeyError, match=str(length)):
        CryptConfig(bytes(length))


def test_encrypt_decrypt_round_trip():
    crypt = CryptConfig(bytes(range(32)))
    iv, tag, ct = crypt.encrypt(b"hello world\n")
    assert len(iv) == 16 and len(tag) == 16 and len(ct) == 12
    assert crypt.decrypt(iv, tag, ct, name="x") == b"hello world\n"
    assert crypt.encrypt(b"hello world\n")[0] != iv  # fresh IV every time


def test_spec_worked_example_ciphertext():
    # docs/formats.md §12: key 0..31, IV 0..15, plaintext "hello world\n".
    crypt = CryptConfig(bytes(range(32)))
    tag = bytes.fromhex("fdf254d842e6a0321aa6261db903b3ed")
    ct = bytes.fromhex("0f09cc1a56c43d47ef93bf23")
    assert crypt.decrypt(bytes(range(16)), tag, ct, name="x") == b"hello world\n"


def test_decrypt_with_wrong_key_names_object():
    iv, tag, ct = CryptConfig(bytes(32)).encrypt(b"secret data")
    other = CryptConfig(bytes([7]) * 32)
    with pytest.raises(WrongKeyError, match="my-object"):
        other.decrypt(iv, tag, ct, name="my-object")


def test_decrypt_tampered_tag():
    crypt = CryptConfig(bytes(32))
    iv, tag, ct = crypt.encrypt(b"secret data")
    with pytest.raises(WrongKeyError):
        crypt.decrypt(iv, bytes(16), ct, name="x")


def test_repr_hides_key():
    crypt = CryptConfig(bytes.fromhex("ab" * 32))
    assert "ab" * 8 not in repr(crypt)
    assert crypt.id_key.hex()[:16] not in repr(crypt)


def test_parse_fingerprint_accepts_case_and_no_colons():
    fp = bytes(range(32))
    assert parse_fingerprint(format_fingerprint(fp).upper()) == fp
    assert parse_fingerprint(fp.hex()) == fp


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a5:2d",
        "zz" * 32,
        "00" * 31 + " 0",
        "00" * 32 + "\n",
        "00" * 33,
        "é" * 64,
    ],
)
def test_parse_fingerprint_rejects(text):
    with pytest.raises(CorruptDataError):
        parse_fingerprint(text)


def test_parse_fingerprint_rejects_non_string():
    with pytest.raises(CorruptDataError):
        parse_fingerprint(42)  # type: ignore[arg-type]


def test_format_fingerprint_rejects_wrong_length():
    with pytest.raises(CryptKeyError):
        format_fingerprint(bytes(8))
