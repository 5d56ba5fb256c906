"""The buzhash chunker against upstream chunk boundaries (the datastore vectors) and a scalar model."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapfs.format.chunker import BUZHASH_TABLE, Chunker, split_stream, window_hash
from snapfs.format.index import parse_index


def reference_ends(data: bytes, avg: int) -> list[int]:
    """A literal per-byte transcription of upstream ChunkerImpl::scan + the ChunkStream loop."""
    minimum, maximum = avg >> 2, avg << 2
    mask = 2 * avg - 1
    table = BUZHASH_TABLE
    ends: list[int] = []
    h = length = 0
    for k, b in enumerate(data):
        if length < 64:
            h = (((h << 1) | (h >> 31)) & 0xFFFFFFFF) ^ table[b]
            length += 1
            continue
        h = (((h << 1) | (h >> 31)) & 0xFFFFFFFF) ^ table[data[k - 64]] ^ table[b]
        length += 1
        if length >= maximum or (length >= minimum and (h & mask) >= mask - 2):
            ends.append(k + 1)
            h = length = 0
    if len(data) > (ends[-1] if ends else 0):
        ends.append(len(data))
    return ends


def split_ends(chunks) -> list[int]:
    ends, pos = [], 0
    for chunk in chunks:
        assert chunk, "empty chunk"
        pos += len(chunk)
        ends.append(pos)
    return ends


def scan_loop_ends(pieces: list[bytes], avg: int) -> list[int]:
    """pbs-client ChunkStream::poll_next driving Chunker.scan, piece by piece."""
    chunker = Chunker(avg)
    buffer, scan_pos, consumed, ends = b"", 0, 0, []
    for piece in pieces:
        buffer += piece
        while scan_pos < len(buffer):
            boundary = chunker.scan(buffer[scan_pos:])
            if boundary == 0:
                scan_pos = len(buffer)
                break
            size = scan_pos + boundary
            assert size <= len(buffer)
            consumed += size
            ends.append(consumed)
            buffer, scan_pos = buffer[size:], 0
    if buffer:
        ends.append(consumed + len(buffer))
    return ends


def _didx_ends(vectors: Path, path: str) -> list[int]:
    raw = (vectors / "datastore" / path).read_bytes()
    return [end for _, end, _ in parse_index(raw, name=path).chunks()]


def test_table_matches_spec_checksum() -> None:
    serialised = struct.pack("<256I", *BUZHASH_TABLE)
    assert (
        hashlib.sha256(serialised).hexdigest()
        == "5b52080d38287da9d2e278466e3e0db7ec98e5e8b226f50612a56fa012b1f660"
    )


@pytest.mark.parametrize(
    ("snapshot", "avg"),
    [
        ("host/testhost/2024-06-01T11:00:00Z", 64 * 1024),
        ("host/testhost/2024-06-01T12:00:00Z", 256 * 1024),
    ],
)
def test_v1_pxar_chunk_ends_match_upstream(vectors: Path, snapshot: str, avg: int) -> None:
    report = json.loads((vectors / "report.json").read_text())
    assert report["snapshots"][snapshot]["chunker_avg_size"] == avg
    data = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    expected = _didx_ends(vectors, f"{snapshot}/root.pxar.didx")
    assert split_ends(split_stream(io.BytesIO(data), avg)) == expected
    # The upstream client loop around scan() and arbitrary input pieces give the same cuts.
    pieces = [data[i : i + 300_007] for i in range(0, len(data), 300_007)]
    assert scan_loop_ends(pieces, avg) == expected


def test_v1_pxar_chunk_ends_of_the_sign_only_snapshot(vectors: Path) -> None:
    data = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    expected = _didx_ends(vectors, "ct/200/2024-06-01T15:00:00Z/root.pxar.didx")
    assert split_ends(split_stream([data], 64 * 1024)) == expected


def test_split_archive_chunk_ends_match_upstream(vectors: Path) -> None:
    """Plain buzhash at 128 KiB reproduces the .mpxar and .ppxar cuts (no suggested boundaries)."""
    snap = "ns/testns/host/splithost/2024-06-01T13:00:00Z"
    for kind in ("mpxar", "ppxar"):
        data = (vectors / "pxar" / f"archive-v2.{kind}").read_bytes()
        expected = _didx_ends(vectors, f"{snap}/root.{kind}.didx")
        assert split_ends(split_stream([data], 128 * 1024)) == expected


def test_catalog_chunking(vectors: Path) -> None:
    data = (vectors / "catalog" / "catalog.pcat1").read_bytes()
    expected = _didx_ends(vectors, "host/testhost/2024-06-01T11:00:00Z/catalog.pcat1.didx")
    assert split_ends(split_stream([data], 512 * 1024)) == expected == [len(data)]


def test_spec_counter_vector() -> None:
    """docs/formats.md §12 derived vector: the 32-bit LE counter 0..262143 at 64 KiB average."""
    data = struct.pack("<262144I", *range(262144))
    lengths = [len(c) for c in split_stream([data], 64 * 1024)]
    assert lengths == [143377, 262144, 262144, 262144, 118767]


def _mixed_data(seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    third = size // 3
    # random, then a constant run (forces max-size cuts), then random again
    return rnd.randbytes(third) + bytes(third) + rnd.randbytes(size - 2 * third)


@pytest.mark.parametrize("avg", [64, 128, 1024, 4096, 32 * 1024, 64 * 1024])
def test_fast_paths_equal_reference(avg: int) -> None:
    data = _mixed_data(avg, 700_000)
    expected = reference_ends(data, avg)
    assert split_ends(split_stream([data], avg)) == expected
    pieces = [data[i : i + 9_973] for i in range(0, len(data), 9_973)]
    assert split_ends(split_stream(iter(pieces), avg)) == expected
    assert scan_loop_ends(pieces, avg) == expected


def test_scan_byte_by_byte() -> None:
    data = _mixed_data(7, 6000)
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert scan_loop_ends(pieces, 256) == reference_ends(data, 256)


def test_scan_returns_zero_until_a_boundary() -> None:
    chunker = Chunker(64 * 1024)
    zeros = bytes(64 * 1024)
    assert [chunker.scan(zeros) for _ in range(3)] == [0, 0, 0]
    assert chunker.scan(zeros) == 64 * 1024  # 256 KiB of zeros: only the max-size cut
    assert chunker.scan(b"\0" * 100) == 0  # a fresh chunk started


def test_window_hash_is_independent_of_history() -> None:
    """The identity the bulk hash relies on: after 64 bytes, earlier bytes no longer matter."""
    rnd = random.Random(3)
    window = rnd.randbytes(64)
    for prefix in (b"", rnd.randbytes(1), rnd.randbytes(100)):
        h = 0
        data = prefix + window
        for k, b in enumerate(data):
            h = (((h << 1) | (h >> 31)) & 0xFFFFFFFF) ^ BUZHASH_TABLE[b]
            if k >= 64:
                h ^= BUZHASH_TABLE[data[k - 64]]
        assert h == window_hash(window)


def test_empty_and_tiny_streams() -> None:
    assert list(split_stream(io.BytesIO(b""), 64 * 1024)) == []
    assert list(split_stream([b"", b"abc", b""], 64 * 1024)) == [b"abc"]


def test_chunks_reassemble_to_the_input() -> None:
    data = _mixed_data(11, 300_000)
    assert b"".join(split_stream([data], 4096)) == data


@pytest.mark.parametrize("avg", [0, 100, 3 * 1024 * 1024, 32])
def test_bad_average_size(avg: int) -> None:
    with pytest.raises(ValueError):
        Chunker(avg)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    repeat=st.integers(min_value=1, max_value=8),
    piece=st.integers(min_value=1, max_value=3000),
    avg=st.sampled_from([64, 128, 256]),
)
def test_fuzz_against_reference(data: bytes, repeat: int, piece: int, avg: int) -> None:
    data = data * repeat
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    expected = reference_ends(data, avg)
    assert split_ends(split_stream(pieces, avg)) == expected
    assert scan_loop_ends(pieces, avg) == expected
