"""Snapshot manifests: the vectors' index.json.blob files, signatures, byte-exact re-serialisation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapfs.errors import (
    CorruptDataError,
    NotFoundError,
    SignatureMismatchError,
    SnapfsError,
    UnsupportedFormatError,
    WrongKeyError,
)
from snapfs.format.blob import decode_blob
from snapfs.format.crypt import CryptConfig
from snapfs.format.index import parse_index
from snapfs.format.manifest import Manifest, ManifestFile, canonical_json

SIGNED = (
    "ct/200/2024-06-01T15:00:00Z",
    "host/testhost/2024-06-01T12:00:00Z",
    "vm/100/2024-06-01T14:00:00Z",
)


def _report(vectors: Path) -> dict:
    return json.loads((vectors / "report.json").read_text())


def _crypt(vectors: Path) -> CryptConfig:
    return CryptConfig(bytes.fromhex(_report(vectors)["raw_key_hex"]))


def _manifest_text(vectors: Path, snap: str) -> bytes:
    path = vectors / "datastore" / snap / "index.json.blob"
    return decode_blob(path.read_bytes(), None, name=str(path))


def _snapshots(vectors: Path) -> list[str]:
    return sorted(_report(vectors)["snapshots"])


def _signed_text(vectors: Path) -> bytes:
    return _manifest_text(vectors, "vm/100/2024-06-01T14:00:00Z")


def test_every_snapshot_directory_has_a_report_entry(vectors: Path) -> None:
    found = sorted(
        str(p.parent.relative_to(vectors / "datastore"))
        for p in (vectors / "datastore").rglob("index.json.blob")
    )
    assert found == _snapshots(vectors) and len(found) == 6


def test_stored_texts_are_the_documented_ones(vectors: Path) -> None:
    report = _report(vectors)
    for snap in _snapshots(vectors):
        assert _manifest_text(vectors, snap) == report["snapshots"][snap]["manifest"].encode()


def test_manifests_parse_and_match_files_on_disk(vectors: Path) -> None:
    for snap in _snapshots(vectors):
        manifest = Manifest.parse(_manifest_text(vectors, snap), name=snap)
        btype, bid = snap.removeprefix("ns/testns/").split("/")[:2]
        assert (manifest.backup_type, manifest.backup_id) == (btype, bid)
        assert manifest.unknown_fields == {}
        assert "chunk_upload_stats" in manifest.unprotected
        on_disk = sorted(
            p.name for p in (vectors / "datastore" / snap).iterdir() if p.name != "index.json.blob"
        )
        assert sorted(f.filename for f in manifest.files) == on_disk
        for entry in manifest.files:
            raw = (vectors / "datastore" / snap / entry.filename).read_bytes()
            if entry.archive_type == "blob":
                assert entry.size == len(raw)
                assert entry.csum == hashlib.sha256(raw).digest()
            else:
                index = parse_index(raw, name=entry.filename)
                assert entry.archive_type == entry.filename[-4:]
                assert (entry.size, entry.csum) == (index.size, index.index_csum)
            assert manifest.file(entry.filename) is entry


def test_backup_times_and_crypt_modes(vectors: Path) -> None:
    expected = {
        "vm/100/2024-06-01T10:00:00Z": (1717236000, "none"),
        "host/testhost/2024-06-01T11:00:00Z": (1717239600, "none"),
        "host/testhost/2024-06-01T12:00:00Z": (1717243200, "encrypt"),
        "ns/testns/host/splithost/2024-06-01T13:00:00Z": (1717246800, "none"),
        "vm/100/2024-06-01T14:00:00Z": (1717250400, "encrypt"),
        "ct/200/2024-06-01T15:00:00Z": (1717254000, "sign-only"),
    }
    for snap, (btime, mode) in expected.items():
        manifest = Manifest.parse(_manifest_text(vectors, snap), name=snap)
        assert manifest.backup_time == btime
        assert {f.crypt_mode for f in manifest.files} == {mode}
        assert manifest.is_signed == (snap in SIGNED)


def test_re_serialisation_is_byte_identical(vectors: Path) -> None:
    crypt = _crypt(vectors)
    for snap in _snapshots(vectors):
        text = _manifest_text(vectors, snap)
        manifest = Manifest.parse(text, name=snap)
        assert manifest.to_json() == text
        if manifest.is_signed:
            # Signing afresh (as the client does) reproduces signature and key-fingerprint.
            assert manifest.to_json(crypt) == text


def test_signed_manifests_verify(vectors: Path) -> None:
    crypt = _crypt(vectors)
    fingerprint = _report(vectors)["fingerprint_full"]
    for snap in SIGNED:
        manifest = Manifest.parse(_manifest_text(vectors, snap), name=snap)
        assert manifest.key_fingerprint == bytes.fromhex(fingerprint.replace(":", ""))
        assert manifest.key_fingerprint == crypt.fingerprint
        manifest.verify_signature(crypt)


def test_unsigned_manifest_has_nothing_to_verify(vectors: Path) -> None:
    manifest = Manifest.parse(_manifest_text(vectors, "vm/100/2024-06-01T10:00:00Z"), name="m")
    assert not manifest.is_signed and manifest.key_fingerprint is None
    assert manifest.verify_signature(_crypt(vectors)) is None


def test_signature_mismatch_on_flipped_signature_byte(vectors: Path) -> None:
    text = _signed_text(vectors)
    at = text.index(b'"signature": "') + len(b'"signature": "')
    flipped = text[:at] + (b"0" if text[at : at + 1] != b"0" else b"1") + text[at + 1 :]
    manifest = Manifest.parse(flipped, name="m")
    with pytest.raises(SignatureMismatchError, match="vm/100"):
        manifest.verify_signature(_crypt(vectors))


def test_signature_mismatch_on_changed_content(vectors: Path) -> None:
    text = _signed_text(vectors).replace(b'"size": 144', b'"size": 145')
    with pytest.raises(SignatureMismatchError):
        Manifest.parse(text, name="m").verify_signature(_crypt(vectors))


def test_unprotected_changes_keep_the_signature_valid(vectors: Path) -> None:
    manifest = Manifest.parse(_signed_text(vectors), name="m")
    manifest.unprotected["notes"] = "edited later"
    manifest.unprotected["chunk_upload_stats"]["count"] = 99
    reparsed = Manifest.parse(manifest.to_json(), name="m")
    reparsed.verify_signature(_crypt(vectors))
    assert reparsed.unprotected["notes"] == "edited later"


def test_other_key_is_refused(vectors: Path) -> None:
    manifest = Manifest.parse(_signed_text(vectors), name="m")
    with pytest.raises(WrongKeyError):
        manifest.verify_signature(CryptConfig(bytes(range(32))))
    # Without a recorded fingerprint the other key fails on the HMAC itself.
    del manifest.unprotected["key-fingerprint"]
    with pytest.raises(SignatureMismatchError):
        manifest.verify_signature(CryptConfig(bytes(range(32))))


def test_upstream_signature_vector() -> None:
    """pbs-datastore manifest.rs test_manifest_signature (docs/formats.md §8.2, §12)."""
    key = hashlib.scrypt(b"test", salt=b"", n=65536, r=8, p=1, dklen=32, maxmem=128 * 1024 * 1024)
    manifest = Manifest(
        backup_type="host",
        backup_id="elsa",
        backup_time=1593179765,
        files=[
            ManifestFile("test1.img.fidx", "encrypt", 200, bytes([1]) * 32),
            ManifestFile("abc.blob", "none", 200, bytes([2]) * 32),
        ],
    )
    assert canonical_json(manifest.signed_value()) == (
        b'{"backup-id":"elsa","backup-time":1593179765,"backup-type":"host","files":['
        b'{"crypt-mode":"encrypt","csum":"'
        + b"01"
        * 32
        + b'","filename":"test1.img.fidx","size":200},'
        b'{"crypt-mode":"none","csum":"' + b"02" * 32 + b'","filename":"abc.blob","size":200}]}'
    )
    crypt = CryptConfig(key)
    assert (
        manifest.compute_signature(crypt).hex()
        == "d7b446fb7db081662081d4b40fedd858a1d6307a5aff4ecff7d5bf4fd35679e9"
    )
    signed = Manifest.parse(manifest.to_json(crypt), name="elsa")
    signed.verify_signature(crypt)
    assert signed.to_json() == manifest.to_json(crypt)


def test_canonical_json_scalars() -> None:
    assert canonical_json({"b": 1, "a": ["x", True, -5]}) == b'{"a":["x",true,-5],"b":1}'
    assert (
        canonical_json('"\\\b\f\n\r\t\x01\x7f/é€')
        == '"\\"\\\\\\b\\f\\n\\r\\t\\u0001\x7f/é€"'.encode()
    )
    with pytest.raises(CorruptDataError, match="null"):
        canonical_json({"a": [1, None]})


def test_missing_file_and_unknown_archive_type(vectors: Path) -> None:
    manifest = Manifest.parse(_signed_text(vectors), name="m")
    with pytest.raises(NotFoundError, match="nope.blob"):
        manifest.file("nope.blob")
    with pytest.raises(UnsupportedFormatError):
        _ = ManifestFile("x.tar", "none", 1, bytes(32)).archive_type


def test_old_manifest_defaults_and_unknown_fields() -> None:
    text = json.dumps(
        {
            "backup-type": "host",
            "backup-id": "old",
            "backup-time": 1,
            "files": [{"filename": "a.blob", "size": 3, "csum": "ab" * 32}],
            "future-member": {"x": 1},
        }
    ).encode()
    manifest = Manifest.parse(text, name="old")
    assert manifest.files[0].crypt_mode == "none"
    assert manifest.unprotected == {} and manifest.signature is None
    assert manifest.unknown_fields == {"future-member": {"x": 1}}
    assert b"future-member" not in manifest.to_json()  # upstream drops what it does not know


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"not json",
        b'{"backup-type": "vm"',
        b"[1, 2]",
        b"\xff\xfe{}",
        b'{"a": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"backup-time": ' + b"9" * 5000 + b"}",
    ],
)
def test_garbage_json(text: bytes) -> None:
    with pytest.raises(CorruptDataError, match="garbage.json"):
        Manifest.parse(text, name="garbage.json")


def _valid() -> dict:
    return {
        "backup-type": "vm",
        "backup-id": "100",
        "backup-time": 1717236000,
        "files": [{"crypt-mode": "none", "csum": "00" * 32, "filename": "a.blob", "size": 1}],
        "signature": None,
        "unprotected": {},
    }


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("backup-id"),
        lambda m: m.pop("files"),
        lambda m: m.update({"backup-time": "1717236000"}),
        lambda m: m.update({"backup-time": True}),
        lambda m: m.update({"backup-time": 1 << 63}),
        lambda m: m.update({"files": {}}),
        lambda m: m.update({"files": [1]}),
        lambda m: m["files"][0].pop("csum"),
        lambda m: m["files"][0].update({"csum": "zz" * 32}),
        lambda m: m["files"][0].update({"size": -1}),
        lambda m: m["files"][0].update({"crypt-mode": "rot13"}),
        lambda m: m.update({"signature": "abc"}),
        lambda m: m.update({"signature": 5}),
        lambda m: m.update({"unprotected": []}),
        lambda m: m.update({"unprotected": {"key-fingerprint": "no:pe"}}),
    ],
)
def test_malformed_members(change) -> None:
    value = _valid()
    Manifest.parse(json.dumps(value).encode(), name="ok.json")
    change(value)
    with pytest.raises(CorruptDataError, match="bad.json"):
        Manifest.parse(json.dumps(value).encode(), name="bad.json")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_random_bytes(data: bytes) -> None:
    try:
        Manifest.parse(data, name="fuzz")
    except SnapfsError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "backup-type": _json_values,
            "backup-id": _json_values,
            "backup-time": _json_values,
            "files": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "filename": _json_values,
                        "crypt-mode": st.sampled_from(["none", "encrypt", "x"]) | _json_values,
                        "size": st.integers() | _json_values,
                        "csum": st.sampled_from(["00" * 32, "g" * 64]) | _json_values,
                    },
                ),
                max_size=3,
            )
            | _json_values,
            "signature": _json_values,
            "unprotected": _json_values,
        },
    )
)
def test_fuzz_parse_structured(value: dict) -> None:
    try:
        manifest = Manifest.parse(json.dumps(value).encode(), name="fuzz")
    except SnapfsError:
        return
    # Whatever parses re-serialises and parses back to the same manifest.
    again = Manifest.parse(manifest.to_json(), name="fuzz")
    assert again == Manifest(**{**manifest.__dict__, "unknown_fields": {}})
