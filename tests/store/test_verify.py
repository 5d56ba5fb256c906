"""snapfs verify: golden datastore passes; each injected fault fails, naming chunk and files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from snapfs.cli import main
from snapfs.format.blob import decode_blob, encode_blob
from snapfs.format.crypt import CryptConfig
from snapfs.format.index import parse_index
from snapfs.store.backend import LocalBackend
from snapfs.store.datastore import Datastore, parse_namespace
from snapfs.verify import select_snapshots, verify

KEY = bytes.fromhex("6bed763d839f13dd6855e5a9f69a15628c34100da6a5030d1e0a6a1935375e5a")
V1 = "host/testhost/2024-06-01T11:00:00Z"
ENC = "host/testhost/2024-06-01T12:00:00Z"


def _verify(
    store: Path, crypt: CryptConfig | None = None, selector: str | None = None, ns: str = ""
):
    ds = Datastore(LocalBackend(store))
    return verify(ds, select_snapshots(ds, parse_namespace(ns), selector), crypt)


def _by_name(report) -> dict[str, object]:
    return {str(s.snapshot): s for s in report.snapshots}


@pytest.fixture
def store(vectors, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(vectors / "datastore", copy)
    return copy


def _chunk_file(store: Path, digest: str) -> Path:
    return store / ".chunks" / digest[:4] / digest


def _digest_at(store: Path, snapshot: str, archive: str, offset: int) -> str:
    index = parse_index((store / snapshot / archive).read_bytes(), name=archive)
    return index.digest(index.chunk_at(offset)).hex()


def test_golden_datastore_passes_with_key(vectors):
    report = _verify(vectors / "datastore", CryptConfig(KEY))
    assert report.ok
    assert len(report.snapshots) == 6
    assert all(s.content_verified for s in report.snapshots)
    # chunks shared between snapshots are checked once: fewer checks than index references
    assert report.chunks_checked < sum(s.chunks for s in report.snapshots)


def test_golden_without_key_checks_what_it_can(vectors):
    report = _verify(vectors / "datastore")
    assert report.ok
    snaps = _by_name(report)
    assert not snaps[ENC].content_verified and snaps[V1].content_verified
    assert any("not verified" in n for n in snaps[ENC].notes)


def test_flipped_byte_in_chunk_names_digest_and_file(store, capsys):
    digest = _digest_at(store, V1, "root.pxar.didx", 1_500_000)
    path = _chunk_file(store, digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    rc = main(["verify", str(store), V1, "--json"])
    assert rc == 1
    out = json.loads(capsys.readouterr().out)
    (snap,) = out["snapshots"]
    assert snap["status"] == "failed"
    (bad,) = snap["bad_chunks"]
    assert bad["digest"] == digest and bad["problem"] == "corrupt"
    assert "root.pxar:/big_random.bin" in bad["affected"]


def test_missing_chunk(store, capsys):
    digest = _digest_at(
        store, "ns/testns/host/splithost/2024-06-01T13:00:00Z", "root.ppxar.didx", 10
    )
    _chunk_file(store, digest).unlink()
    assert main(["verify", str(store), "--ns", "testns"]) == 1
    out = capsys.readouterr().out
    assert f"chunk {digest} missing" in out and "FAILED" in out
    report = _verify(store)
    failed = [s for s in report.snapshots if not s.ok]
    assert [str(s.snapshot) for s in failed] == ["host/splithost/2024-06-01T13:00:00Z"]
    affected = failed[0].bad_chunks[0].affected
    assert affected and all(a.startswith("root.pxar:/") for a in affected)


def test_missing_image_chunk_names_byte_range(store):
    digest = "803f1e37ee3026dc63265e3f20b110b5d68f043603cc4fc4d4785400503de524"
    _chunk_file(store, digest).unlink()
    snaps = _by_name(_verify(store, CryptConfig(KEY)))
    bad = snaps["vm/100/2024-06-01T10:00:00Z"].bad_chunks
    assert [b.digest for b in bad] == [digest]
    assert bad[0].affected == ["drive-scsi0.img bytes 12582912-13635072"]
    assert snaps["vm/100/2024-06-01T14:00:00Z"].ok  # encrypted copy has other digests


def test_corrupt_encrypted_chunk_found_without_key(store):
    digest = _digest_at(store, ENC, "root.pxar.didx", 1_000_000)
    path = _chunk_file(store, digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    snaps = _by_name(_verify(store))
    assert not snaps[ENC].ok
    assert snaps[ENC].bad_chunks[0].digest == digest
    assert "CRC" in snaps[ENC].bad_chunks[0].message


def test_truncated_index(store):
    index = store / V1 / "root.pxar.didx"
    index.write_bytes(index.read_bytes()[:-17])
    snaps = _by_name(_verify(store))
    assert not snaps[V1].ok
    assert any(e.startswith("root.pxar.didx:") for e in snaps[V1].errors)


def test_modified_manifest_checksum(store):
    path = store / V1 / "index.json.blob"
    text = decode_blob(path.read_bytes(), name="manifest")
    path.write_bytes(encode_blob(text.replace(b'"size": 664', b'"size": 665')))
    snaps = _by_name(_verify(store))
    assert not snaps[V1].ok
    assert any("catalog.pcat1.didx" in e for e in snaps[V1].errors)


def test_modified_signed_manifest_fails_signature(store):
    snap = "ct/200/2024-06-01T15:00:00Z"
    path = store / snap / "index.json.blob"
    text = decode_blob(path.read_bytes(), name="manifest")
    path.write_bytes(encode_blob(text.replace(b'"backup-id": "200"', b'"backup-id": "201"')))
    snaps = _by_name(_verify(store, CryptConfig(KEY)))
    assert not snaps[snap].ok
    # Refused either by the signature or, first, by the manifest naming another snapshot.
    assert any("signature" in e.lower() or "not ct/200/" in e for e in snaps[snap].errors)


def test_corrupt_manifest_blob(store):
    path = store / V1 / "index.json.blob"
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0x01
    path.write_bytes(bytes(raw))
    snaps = _by_name(_verify(store))
    assert not snaps[V1].ok and snaps[V1].errors[0].startswith("manifest:")


def test_wrong_key_is_reported(store):
    snaps = _by_name(_verify(store, CryptConfig(bytes(32)), selector=ENC))
    assert not snaps[ENC].ok
    assert "key" in snaps[ENC].errors[0]


def test_select_group_and_bad_selectors(vectors):
    ds = Datastore(LocalBackend(vectors / "datastore"))
    assert len(select_snapshots(ds, (), "vm/100")) == 2
    from snapfs.errors import NotFoundError, UsageError

    with pytest.raises(NotFoundError):
        select_snapshots(ds, (), "vm/999")
    with pytest.raises(UsageError):
        select_snapshots(ds, (), "xx/100")


def test_a_chunk_whose_stored_crc_alone_is_damaged_fails_verify(store):
    """A read trusts the digest and returns such a chunk's (right) bytes; verify reports the
    damaged chunk file."""
    digest = _digest_at(store, V1, "root.pxar.didx", 1_500_000)
    path = _chunk_file(store, digest)
    raw = bytearray(path.read_bytes())
    raw[8] ^= 0x01  # the CRC field of the header
    path.write_bytes(bytes(raw))
    snaps = _by_name(_verify(store))
    assert not snaps[V1].ok
    (bad,) = snaps[V1].bad_chunks
    assert bad.digest == digest and "CRC mismatch" in bad.message
