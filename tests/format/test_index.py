"""Fixed and dynamic indexes against the upstream-written datastore vectors (vectors/README.md)."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapfs.errors import (
    BadMagicError,
    ChecksumMismatchError,
    CorruptDataError,
    NotFoundError,
    SnapfsError,
    TruncatedDataError,
)
from snapfs.format.blob import decode_chunk
from snapfs.format.crypt import CryptConfig
from snapfs.format.index import (
    DYNAMIC_INDEX_MAGIC,
    FIXED_INDEX_MAGIC,
    HEADER_SIZE,
    DynamicIndex,
    FixedIndex,
    build_dynamic_index,
    build_fixed_index,
    parse_index,
)

# report.json key of each index file's chunk list
CHUNK_LISTS = {
    "root.pxar.didx": "chunks",
    "catalog.pcat1.didx": "catalog_chunks",
    "root.mpxar.didx": "chunks_mpxar",
    "root.ppxar.didx": "chunks_ppxar",
    "drive-scsi0.img.fidx": "chunks",
}


def _report(vectors: Path) -> dict:
    return json.loads((vectors / "report.json").read_text())


def _vector_indexes(vectors: Path) -> list[tuple[str, str, dict, dict]]:
    """(snapshot, file name, report file entry, report snapshot entry) for every index file."""
    out = []
    for snap, entry in _report(vectors)["snapshots"].items():
        for filename, info in entry["files"].items():
            if filename.endswith(("fidx", "didx")):
                out.append((snap, filename, info, entry))
    return out


def _load(vectors: Path, snap: str, filename: str) -> tuple[bytes, FixedIndex | DynamicIndex]:
    raw = (vectors / "datastore" / snap / filename).read_bytes()
    return raw, parse_index(raw, name=f"{snap}/{filename}")


def test_every_vector_index_is_covered(vectors: Path) -> None:
    on_disk = sorted(
        str(p.relative_to(vectors / "datastore"))
        for p in (vectors / "datastore").rglob("*")
        if p.suffix in (".fidx", ".didx")
    )
    listed = sorted(f"{snap}/{name}" for snap, name, _, _ in _vector_indexes(vectors))
    assert on_disk == listed
    assert len(listed) == 10


def test_vector_headers_and_chunk_lists(vectors: Path) -> None:
    for snap, filename, info, entry in _vector_indexes(vectors):
        raw, index = _load(vectors, snap, filename)
        assert type(index) is (FixedIndex if info["format"] == "fidx" else DynamicIndex)
        assert index.uuid.hex() == info["uuid"]
        assert index.ctime == info["ctime"]
        assert index.size == info["size"]
        assert index.chunk_count == info["chunk_count"]
        assert index.index_csum.hex() == info["index_csum"]
        assert index.compute_csum().hex() == info["recomputed_csum"]
        if info["format"] == "fidx":
            assert index.chunk_size == info["chunk_size"]
        chunks = list(index.chunks())
        expected = entry[CHUNK_LISTS[filename]]
        assert len(chunks) == len(expected)
        for i, ((start, end, digest), want) in enumerate(zip(chunks, expected, strict=True)):
            assert digest.hex() == want["digest"]
            assert index.digest(i) == digest
            assert index.chunk_range(i) == (start, end)
            if "end" in want:
                assert (start, end) == (want["start"], want["end"])
            else:
                assert (start, end - start) == (want["index"] * index.chunk_size, want["len"])


def test_fixed_vector_digests_from_manifest_md(vectors: Path) -> None:
    _, plain = _load(vectors, "vm/100/2024-06-01T10:00:00Z", "drive-scsi0.img.fidx")
    assert [plain.digest(i).hex()[:8] for i in range(4)] == [
        "3b7b2f9a",
        "bb9f8df6",
        "bb9f8df6",
        "803f1e37",
    ]
    assert plain.chunk_range(3) == (3 * 4194304, 13635072)


def test_chunk_at_boundaries(vectors: Path) -> None:
    for snap, filename, _, _ in _vector_indexes(vectors):
        _, index = _load(vectors, snap, filename)
        for i, (start, end, _) in enumerate(index.chunks()):
            assert index.chunk_at(start) == i
            assert index.chunk_at(end - 1) == i
            assert index.chunk_at((start + end) // 2) == i
        for outside in (-1, index.size, index.size + 4096):
            with pytest.raises(NotFoundError, match=str(outside)):
                index.chunk_at(outside)
        with pytest.raises(NotFoundError):
            index.digest(index.chunk_count)
        with pytest.raises(NotFoundError):
            index.chunk_range(-1)


def test_reassembled_streams_match_manifest(vectors: Path) -> None:
    report = _report(vectors)
    crypt = CryptConfig(bytes.fromhex(report["raw_key_hex"]))
    chunk_dir = vectors / "datastore" / ".chunks"
    for snap, filename, info, _ in _vector_indexes(vectors):
        _, index = _load(vectors, snap, filename)
        h = hashlib.sha256()
        length = 0
        for start, end, digest in index.chunks():
            raw = (chunk_dir / digest.hex()[:4] / digest.hex()).read_bytes()
            data = decode_chunk(raw, digest, crypt)
            assert len(data) == end - start
            h.update(data)
            length += len(data)
        assert length == info["reassembled_len"] == index.size
        assert h.hexdigest() == info["reassembled_sha256"], f"{snap}/{filename}"


def test_v1_stream_matches_the_pxar_file(vectors: Path) -> None:
    """The reassembled root.pxar.didx is the standalone v1 archive (tests/vectors/README.md)."""
    report = _report(vectors)
    pxar = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    assert hashlib.sha256(pxar).hexdigest() == report["pxar_v1_stream_sha256"]
    info = report["snapshots"]["host/testhost/2024-06-01T11:00:00Z"]["files"]["root.pxar.didx"]
    assert info["reassembled_sha256"] == report["pxar_v1_stream_sha256"]


def test_writer_rebuilds_vector_files_byte_for_byte(vectors: Path) -> None:
    for snap, filename, _, _ in _vector_indexes(vectors):
        raw, index = _load(vectors, snap, filename)
        if isinstance(index, FixedIndex):
            rebuilt = build_fixed_index(
                [d for _, _, d in index.chunks()],
                index.size,
                index.chunk_size,
                uuid=index.uuid,
                ctime=index.ctime,
            )
        else:
            rebuilt = build_dynamic_index(
                [(end, d) for _, end, d in index.chunks()], uuid=index.uuid, ctime=index.ctime
            )
        assert rebuilt == raw, f"{snap}/{filename}"


def test_writer_round_trip_and_defaults() -> None:
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    before = int(time.time())
    raw = build_fixed_index(digests, 4 * 65536 + 1, 65536)
    index = FixedIndex.parse(raw, name="t.fidx")
    assert index.chunk_count == 5 and index.chunk_range(4) == (4 * 65536, 4 * 65536 + 1)
    assert before <= index.ctime <= int(time.time()) + 1
    assert index.uuid[6] >> 4 == 4  # random v4 uuid, as upstream
    assert len(raw) == HEADER_SIZE + 5 * 32
    entries = [(10 * (i + 1), d) for i, d in enumerate(digests)]
    d_index = DynamicIndex.parse(build_dynamic_index(entries), name="t.didx")
    assert [(e, d) for _, e, d in d_index.chunks()] == entries
    assert d_index.chunk_at(29) == 2 and d_index.chunk_at(30) == 3
    empty = parse_index(build_dynamic_index([]), name="empty.didx")
    assert empty.size == 0 and empty.chunk_count == 0
    assert empty.compute_csum() == hashlib.sha256(b"").digest()


def test_writer_refuses_misuse() -> None:
    d = bytes(32)
    with pytest.raises(ValueError):
        build_fixed_index([d], 100, 3000)  # not a power of two
    with pytest.raises(ValueError):
        build_fixed_index([d, d], 100, 4096)  # wrong count
    with pytest.raises(ValueError):
        build_dynamic_index([(10, d), (10, d)])  # empty chunk
    with pytest.raises(ValueError):
        build_dynamic_index([(10, b"short")])


def test_large_dynamic_index_parses_without_per_entry_objects() -> None:
    n = 200_000
    entries = b"".join(struct.pack("<Q", 4096 * (i + 1)) + bytes(32) for i in range(n))
    header = bytearray(HEADER_SIZE)
    header[:8] = DYNAMIC_INDEX_MAGIC
    header[32:64] = hashlib.sha256(entries).digest()
    index = DynamicIndex.parse(bytes(header) + entries, name="big.didx")
    assert index.size == 4096 * n
    assert index.chunk_at(4096 * 123_456 + 7) == 123_456
    assert index.chunk_range(n - 1) == (4096 * (n - 1), 4096 * n)


# -- bad input ------------------------------------------------------------------------------------


def _vector_raw(vectors: Path, kind: str) -> bytes:
    if kind == "fidx":
        return (vectors / "datastore/vm/100/2024-06-01T10:00:00Z/drive-scsi0.img.fidx").read_bytes()
    return (vectors / "datastore/host/testhost/2024-06-01T11:00:00Z/root.pxar.didx").read_bytes()


def _with_csum(raw: bytearray) -> bytes:
    raw[32:64] = hashlib.sha256(raw[HEADER_SIZE:]).digest()
    return bytes(raw)


def test_bad_magic(vectors: Path) -> None:
    raw = bytearray(_vector_raw(vectors, "didx"))
    raw[0] ^= 0xFF
    with pytest.raises(BadMagicError, match="bad.didx"):
        parse_index(bytes(raw), name="bad.didx")
    with pytest.raises(BadMagicError):
        DynamicIndex.parse(_vector_raw(vectors, "fidx"), name="x")
    with pytest.raises(BadMagicError):
        FixedIndex.parse(_vector_raw(vectors, "didx"), name="x")


@pytest.mark.parametrize("kind", ["fidx", "didx"])
def test_truncated_index(vectors: Path, kind: str) -> None:
    raw = _vector_raw(vectors, kind)
    for cut in (0, 5, 100, HEADER_SIZE - 1, len(raw) - 1):
        with pytest.raises(TruncatedDataError, match="t.idx"):
            parse_index(raw[:cut], name="t.idx")


def test_fixed_index_longer_than_its_size_says(vectors: Path) -> None:
    raw = _vector_raw(vectors, "fidx") + bytes(32)
    with pytest.raises(CorruptDataError, match="needs 4 digests"):
        parse_index(raw, name="long.fidx")


def test_fixed_index_chunk_size_not_power_of_two(vectors: Path) -> None:
    raw = bytearray(_vector_raw(vectors, "fidx"))
    raw[72:80] = struct.pack("<Q", 3 * 1024 * 1024)
    with pytest.raises(CorruptDataError, match="power of two"):
        parse_index(bytes(raw), name="x.fidx")
    raw[72:80] = bytes(8)
    with pytest.raises(CorruptDataError, match="power of two"):
        parse_index(bytes(raw), name="x.fidx")


@pytest.mark.parametrize("kind", ["fidx", "didx"])
def test_index_checksum_mismatch(vectors: Path, kind: str) -> None:
    raw = bytearray(_vector_raw(vectors, kind))
    raw[-1] ^= 0x01  # a digest byte
    with pytest.raises(ChecksumMismatchError, match="checksum"):
        parse_index(bytes(raw), name="x")
    raw = bytearray(_vector_raw(vectors, kind))
    raw[40] ^= 0x01  # the stored checksum
    with pytest.raises(ChecksumMismatchError):
        parse_index(bytes(raw), name="x")


def test_dynamic_index_ends_not_increasing(vectors: Path) -> None:
    raw = bytearray(_vector_raw(vectors, "didx"))
    second = HEADER_SIZE + 40
    raw[second : second + 8] = raw[HEADER_SIZE : HEADER_SIZE + 8]  # chunk 1 ends where chunk 0 does
    with pytest.raises(CorruptDataError, match=f"offset {second}"):
        parse_index(_with_csum(raw), name="x.didx")
    raw = bytearray(_vector_raw(vectors, "didx"))
    raw[HEADER_SIZE : HEADER_SIZE + 8] = bytes(8)
    with pytest.raises(CorruptDataError, match="empty"):
        parse_index(_with_csum(raw), name="x.didx")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=HEADER_SIZE + 200))
def test_fuzz_parse_index_random_bytes(data: bytes) -> None:
    try:
        parse_index(data, name="fuzz")
    except SnapfsError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    magic=st.sampled_from([FIXED_INDEX_MAGIC, DYNAMIC_INDEX_MAGIC]),
    fields=st.binary(min_size=72, max_size=72),
    body=st.binary(max_size=200),
    fix_csum=st.booleans(),
)
def test_fuzz_parse_index_structured(
    magic: bytes, fields: bytes, body: bytes, fix_csum: bool
) -> None:
    raw = bytearray(magic + fields + bytes(HEADER_SIZE - 80) + body)
    if fix_csum:
        raw[32:64] = hashlib.sha256(body).digest()
    try:
        index = parse_index(bytes(raw), name="fuzz")
    except SnapfsError:
        return
    # Whatever parses must be self-consistent.
    previous = 0
    for i, (start, end, _) in enumerate(index.chunks()):
        assert start == previous < end <= index.size
        assert index.chunk_at(start) == i == index.chunk_at(end - 1)
        previous = end
    assert previous == index.size
