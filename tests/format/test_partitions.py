"""MBR/GPT parsing, checked against sfdisk (util-linux) as the independent writer and reader."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapfs.errors import (
    BadMagicError,
    ChecksumMismatchError,
    CorruptDataError,
    SnapfsError,
    TruncatedDataError,
)
from snapfs.format.partitions import PartitionSource, read_partition_table
from snapfs.format.source import BytesSource

MiB = 1024 * 1024


def _sfdisk(path: Path, script: str, *extra: str) -> None:
    if shutil.which("sfdisk") is None:
        pytest.fail("sfdisk not installed (Debian package fdisk)")
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", *extra, str(path)],
        input=script,
        text=True,
        check=True,
        capture_output=True,
    )


def _sfdisk_json(path: Path, *extra: str) -> dict:
    out = subprocess.run(
        ["sfdisk", "--json", *extra, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["partitiontable"]


def _disk(tmp_path: Path, script: str, size: int = 28 * MiB, *extra: str) -> tuple[Path, bytes]:
    path = tmp_path / "disk.img"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        f.truncate(size)
    _sfdisk(path, script, *extra)
    return path, path.read_bytes()


GPT_SCRIPT = """label: gpt
start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
start=10240, size=20480, type=linux, name="root fs"
start=40960, size=4096, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap, attrs=LegacyBIOSBootable
"""

MBR_SCRIPT = """label: dos
start=2048, size=8192, type=83, bootable
start=10240, size=40960, type=5
start=16384, size=4096, type=7
start=24576, size=4096, type=83
start=32768, size=8192, type=82
"""


def test_gpt_matches_sfdisk(tmp_path):
    path, data = _disk(tmp_path, GPT_SCRIPT)
    table = read_partition_table(BytesSource(data), name="disk.img")
    expected = _sfdisk_json(path)
    assert table.scheme == "gpt" and not table.used_backup
    assert table.disk_id == expected["id"].lower()
    assert [p.number for p in table.partitions] == [1, 2, 3]
    for ours, theirs in zip(table.partitions, expected["partitions"], strict=True):
        assert ours.start == theirs["start"] * 512
        assert ours.size == theirs["size"] * 512
        assert ours.type == theirs["type"].lower()
        assert ours.uuid == theirs["uuid"].lower()
        assert ours.name == theirs["name"]
    assert table.partitions[2].bootable and not table.partitions[0].bootable


def test_mbr_with_logical_partitions_matches_sfdisk(tmp_path):
    path, data = _disk(tmp_path, MBR_SCRIPT)
    table = read_partition_table(BytesSource(data), name="disk.img")
    expected = [p for p in _sfdisk_json(path)["partitions"] if p["type"] not in ("5", "f", "85")]
    assert table.scheme == "mbr"
    assert [p.number for p in table.partitions] == [1, 5, 6, 7]
    for ours, theirs in zip(table.partitions, expected, strict=True):
        assert f"disk.img{ours.number}" == Path(theirs["node"]).name
        assert (ours.start, ours.size) == (theirs["start"] * 512, theirs["size"] * 512)
        assert ours.type == "0x" + theirs["type"].rjust(2, "0")
    assert table.partitions[0].bootable


def test_no_table_is_none():
    assert read_partition_table(BytesSource(bytes(MiB)), name="blank") is None


def test_partition_source_reads_only_its_partition(tmp_path):
    _, data = _disk(tmp_path, GPT_SCRIPT)
    data = bytearray(data)
    data[10240 * 512 : 10240 * 512 + 5] = b"HELLO"
    table = read_partition_table(BytesSource(bytes(data)), name="d")
    src = PartitionSource(BytesSource(bytes(data)), table.partition(2))
    assert src.size == 20480 * 512
    assert src.read_at(0, 5) == b"HELLO"
    assert src.read_at(src.size - 2, 100) == bytes(2)
    assert src.read_at(src.size, 10) == b""


# --- damaged tables, one per error class ----------------------------------------------------------


def _gpt(tmp_path) -> bytearray:
    return bytearray(_disk(tmp_path, GPT_SCRIPT)[1])


def test_damaged_primary_gpt_header_falls_back_to_backup(tmp_path):
    data = _gpt(tmp_path)
    data[512 + 40] ^= 0xFF  # first usable LBA: the header CRC no longer matches
    table = read_partition_table(BytesSource(bytes(data)), name="d")
    assert table.used_backup and len(table.partitions) == 3


def test_both_gpt_headers_damaged_is_checksum_mismatch(tmp_path):
    data = _gpt(tmp_path)
    data[512 + 40] ^= 0xFF
    data[len(data) - 512 + 40] ^= 0xFF
    with pytest.raises(ChecksumMismatchError, match="header CRC32"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_damaged_entry_array_everywhere_is_checksum_mismatch(tmp_path):
    data = _gpt(tmp_path)
    data[1024 + 56] ^= 0x01  # name of entry 1 in the primary array
    backup_entries = len(data) - 33 * 512
    data[backup_entries + 56] ^= 0x01
    with pytest.raises(ChecksumMismatchError, match="entry array CRC32"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def _rewrite_gpt_entry(data: bytearray, index: int, first: int, last: int) -> None:
    """Change one entry of the primary array and fix both CRCs, so only the value is wrong."""
    base = 1024 + index * 128
    struct.pack_into("<QQ", data, base + 32, first, last)
    entries = bytes(data[1024 : 1024 + 128 * 128])
    struct.pack_into("<I", data, 512 + 88, zlib.crc32(entries))
    header_size = struct.unpack_from("<I", data, 512 + 12)[0]
    struct.pack_into("<I", data, 512 + 16, 0)
    struct.pack_into("<I", data, 512 + 16, zlib.crc32(bytes(data[512 : 512 + header_size])))


def test_gpt_partition_past_end_of_disk_is_corrupt(tmp_path):
    data = _gpt(tmp_path)
    _rewrite_gpt_entry(data, 1, 10240, len(data) // 512 + 10)
    data[len(data) - 512 :] = bytes(512)  # no backup to fall back to
    with pytest.raises(CorruptDataError, match="GPT partition 2 .* past the end"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_gpt_last_before_first_is_corrupt(tmp_path):
    data = _gpt(tmp_path)
    _rewrite_gpt_entry(data, 0, 5000, 4000)
    data[len(data) - 512 :] = bytes(512)
    with pytest.raises(CorruptDataError, match="before first LBA"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_protective_mbr_without_gpt_is_bad_magic():
    data = bytearray(4 * MiB)
    data[446 + 4] = 0xEE
    struct.pack_into("<II", data, 446 + 8, 1, 8191)
    data[510:512] = b"\x55\xaa"
    with pytest.raises(BadMagicError, match="EFI PART"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def _mbr(tmp_path) -> bytearray:
    return bytearray(_disk(tmp_path, MBR_SCRIPT)[1])


def test_ebr_chain_loop_is_corrupt(tmp_path):
    data = _mbr(tmp_path)
    # The first EBR (at LBA 10240) links to the second; make the second link to itself.
    rel = struct.unpack_from("<I", data, 10240 * 512 + 462 + 8)[0]
    second = (10240 + rel) * 512
    data[second + 462 + 4] = 0x05
    struct.pack_into("<II", data, second + 462 + 8, rel, 100)
    with pytest.raises(CorruptDataError, match="loops"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_ebr_without_signature_is_bad_magic(tmp_path):
    data = _mbr(tmp_path)
    data[10240 * 512 + 510] = 0
    with pytest.raises(BadMagicError, match="EBR at offset"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_mbr_partition_past_end_is_corrupt(tmp_path):
    data = _mbr(tmp_path)
    struct.pack_into("<I", data, 446 + 12, 10**9)
    with pytest.raises(CorruptDataError, match="MBR partition 1 .* past the end"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_mbr_bad_status_byte_is_corrupt(tmp_path):
    data = _mbr(tmp_path)
    data[446] = 0x42
    with pytest.raises(CorruptDataError, match="status byte"):
        read_partition_table(BytesSource(bytes(data)), name="d")


def test_truncated_disk_is_truncated(tmp_path):
    data = _gpt(tmp_path)
    with pytest.raises(TruncatedDataError, match="GPT entries"):
        read_partition_table(BytesSource(bytes(data[:1124])), name="d")
    with pytest.raises(TruncatedDataError):
        read_partition_table(BytesSource(b"\0" * 100), name="d")


# --- fuzzing --------------------------------------------------------------------------------------

_SEEDS: dict[str, bytes] = {}


def _seed(kind: str) -> bytes:
    """Only the first 64 KiB plus the last 32 KiB of a small disk: where tables live."""
    if kind not in _SEEDS:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            script = GPT_SCRIPT if kind == "gpt" else MBR_SCRIPT
            _SEEDS[kind] = _disk(Path(d), script)[1]
    return _SEEDS[kind]


class _Edited:
    """A ByteSource: `base` with a few bytes changed and cut to `size`, without copying `base`."""

    def __init__(self, base: bytes, edits: dict[int, int], size: int) -> None:
        self.base, self.edits, self.size = base, edits, size

    def read_at(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        out = bytearray(self.base[offset:end])
        for pos, value in self.edits.items():
            if offset <= pos < end:
                out[pos - offset] = value
        return bytes(out)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["gpt", "mbr"]),
    edits=st.lists(
        st.tuples(st.integers(0, 70 * 1024), st.integers(0, 255)), min_size=1, max_size=8
    ),
    from_end=st.booleans(),
    cut=st.integers(0, 28 * MiB),
)
def test_fuzzed_tables_raise_only_snapfs_errors(kind, edits, from_end, cut):
    base = _seed(kind)
    changed = {}
    for pos, value in edits:
        if kind == "mbr":
            pos = pos % 1024 if pos % 2 else 10240 * 512 + pos % 1024
        changed[len(base) - 1 - pos if from_end else pos] = value
    size = max(cut, 512) if cut < MiB else len(base)
    src = _Edited(base, changed, size)
    try:
        table = read_partition_table(src, name="fuzz")
    except SnapfsError:
        return
    if table is not None:
        for p in table.partitions:
            assert p.start > 0 and p.end <= src.size
