"""Fuzzing of the byte formats (snapfs.format): mutations of the golden vectors and of what our
writers make, with length fields set to huge values. Each parse gives a value or a SnapfsError,
and its memory stays bounded (support/fuzzing.py). Random-bytes fuzzing of the same parsers
lives next to their unit tests (tests/format); these go from valid inputs, past the magic and
the checksums, to the fields behind them."""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import example, given
from hypothesis import strategies as st
from support.fuzzing import MiB, fuzz, mutate, mutations, put_u64, within_memory
from support.vectors import VECTOR_PASSWORD, VECTORS

from snapfs.errors import CorruptDataError
from snapfs.format.blob import (
    ENCR_COMPR_BLOB_MAGIC,
    ENCRYPTED_BLOB_MAGIC,
    decode_blob,
    decode_chunk,
    encode_blob,
    encode_chunk,
)
from snapfs.format.catalog import CatalogReader, CatalogWriter
from snapfs.format.crypt import CryptConfig
from snapfs.format.index import HEADER_SIZE, build_dynamic_index, build_fixed_index, parse_index
from snapfs.format.keyfile import KeyFile, Pbkdf2Params, ScryptParams
from snapfs.format.manifest import Manifest
from snapfs.format.partitions import read_partition_table

# -- seeds -----------------------------------------------------------------------------------------


@functools.cache
def _key() -> CryptConfig:
    report = json.loads((VECTORS / "report.json").read_text())
    return CryptConfig(bytes.fromhex(report["raw_key_hex"]))


@functools.cache
def _blob_seeds() -> dict[str, tuple[bytes, bytes | None]]:
    """name -> (blob bytes, the chunk's digest or None for a blob)."""
    seeds: dict[str, tuple[bytes, bytes | None]] = {}
    for path in sorted((VECTORS / "blobs").iterdir()):
        if path.suffix == ".blob":
            seeds[path.name] = (path.read_bytes(), None)
        elif path.name.startswith("chunk-"):
            seeds[path.name] = (path.read_bytes(), bytes.fromhex(path.name.split(".")[1]))
    text = b"snapfs fuzz " * 100
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = streamed.compress(text) + streamed.flush()
    seeds["ours-streamed"] = (b"\x31\xb9\x58\x42\x6f\xb6\xa3\x7f" + _crc(frame) + frame, None)
    for compress in (False, True):
        digest, raw = encode_chunk(text, _key(), compress=compress)
        seeds[f"ours-encrypted-{compress}"] = (raw, digest)
    seeds["ours-plain"] = (encode_blob(text, None, compress=True), None)
    return seeds


def _crc(payload: bytes) -> bytes:
    return zlib.crc32(payload).to_bytes(4, "little")


def _fix_blob_crc(raw: bytes) -> bytes:
    """The CRC made right again, so the mutation reaches the zstd and GCM layers."""
    if len(raw) < 12:
        return raw
    header = 44 if raw[:8] in (ENCRYPTED_BLOB_MAGIC, ENCR_COMPR_BLOB_MAGIC) else 12
    return raw[:8] + _crc(raw[header:]) + raw[12:]


def _zstd_blob(frame: bytes) -> bytes:
    return b"\x31\xb9\x58\x42\x6f\xb6\xa3\x7f" + _crc(frame) + frame


# A frame that says it holds 100 MiB (content size field) but has a single raw block of 5 bytes.
_LYING_FRAME = (
    b"\x28\xb5\x2f\xfd" + b"\xa0" + (100 * MiB).to_bytes(4, "little") + b"\x29\x00\x00" + b"hello"
)


@pytest.mark.timeout(120)
@fuzz(500)
@given(
    seed=st.sampled_from(sorted(_blob_seeds())),
    edits=mutations,
    fix_crc=st.booleans(),
    keyed=st.booleans(),
)
@example(seed="ours-streamed", edits=[], fix_crc=True, keyed=False).via("regression")
def test_fuzz_blob(seed, edits, fix_crc, keyed):
    raw = mutate(_blob_seeds()[seed][0], edits)
    if fix_crc:
        raw = _fix_blob_crc(raw)
    crypt = _key() if keyed else None
    within_memory(lambda: decode_blob(raw, crypt, name="fuzz.blob"), len(raw))


def test_fuzz_blob_lying_content_size_is_refused_before_allocating():
    raw = _zstd_blob(_LYING_FRAME)
    assert within_memory(lambda: decode_blob(raw, name="liar.blob"), len(raw)) is None
    with pytest.raises(CorruptDataError, match="declares 104857600 bytes, more than its blocks"):
        decode_blob(raw, name="liar.blob")


@pytest.mark.timeout(120)
@fuzz(300)
@given(
    seed=st.sampled_from(sorted(k for k, v in _blob_seeds().items() if v[1] is not None)),
    edits=mutations,
    fix_crc=st.booleans(),
)
def test_fuzz_chunk(seed, edits, fix_crc):
    data, digest = _blob_seeds()[seed]
    raw = mutate(data, edits)
    if fix_crc:
        raw = _fix_blob_crc(raw)
    within_memory(lambda: decode_chunk(raw, digest, _key(), name="fuzz-chunk"), len(raw))


# -- key file --------------------------------------------------------------------------------------


def _keyfile_seeds() -> list[str]:
    return sorted(p.name for p in (VECTORS / "keys").glob("*.json"))


def _cheap(kdf: object) -> bool:
    """A KDF run the fuzz can afford (the vectors' own parameters are the upper end)."""
    if isinstance(kdf, ScryptParams):
        return kdf.n <= 1 << 16 and kdf.r <= 8 and kdf.p <= 1
    if isinstance(kdf, Pbkdf2Params):
        return kdf.iter <= 100_000
    return True


@pytest.mark.timeout(120)
@fuzz(150)
@given(seed=st.sampled_from(_keyfile_seeds()), edits=mutations)
def test_fuzz_keyfile(seed, edits):
    text = mutate((VECTORS / "keys" / seed).read_bytes(), edits)

    def parse_and_unlock():
        key_file = KeyFile.from_json(text, name="fuzz.json")
        if _cheap(key_file.kdf):
            key_file.unlock(VECTOR_PASSWORD)
        return key_file

    within_memory(parse_and_unlock, len(text))


# -- fixed and dynamic index -----------------------------------------------------------------------


@functools.cache
def _index_seeds() -> dict[str, bytes]:
    seeds = {}
    for path in sorted((VECTORS / "datastore").rglob("*idx")):
        if path.stat().st_size <= 64 * 1024:
            seeds[str(path.relative_to(VECTORS / "datastore"))] = path.read_bytes()
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    seeds["ours.fidx"] = build_fixed_index(digests, 4 * MiB * 4 + 5, 4 * MiB)
    seeds["ours.didx"] = build_dynamic_index([(100 * (i + 1), d) for i, d in enumerate(digests)])
    return seeds


def _exercise_index(raw: bytes):
    index = parse_index(raw, name="fuzz.idx")
    previous = 0
    for count, (start, end, digest) in enumerate(index.chunks()):
        assert start == previous < end <= index.size and len(digest) == 32
        assert count < len(raw) // 32
        previous = end
    assert previous == index.size
    for offset in (0, index.size // 2, index.size - 1):
        if 0 <= offset < index.size:
            start, end = index.chunk_range(index.chunk_at(offset))
            assert start <= offset < end
    return index


@pytest.mark.timeout(120)
@fuzz(500)
@given(seed=st.sampled_from(sorted(_index_seeds())), edits=mutations, fix_csum=st.booleans())
@example(seed="ours.fidx", edits=[], fix_csum=False).via("regression")
def test_fuzz_index(seed, edits, fix_csum):
    raw = mutate(_index_seeds()[seed], edits)
    if fix_csum and len(raw) >= HEADER_SIZE:
        raw = raw[:32] + hashlib.sha256(raw[HEADER_SIZE:]).digest() + raw[64:]
    within_memory(lambda: _exercise_index(raw), len(raw))


@pytest.mark.parametrize("field", [64, 72])
@pytest.mark.parametrize("value", [(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 40])
def test_fuzz_index_huge_fixed_sizes_are_errors(field, value):
    raw = put_u64(_index_seeds()["ours.fidx"], field, value)
    assert within_memory(lambda: _exercise_index(raw), len(raw)) is None


# -- manifest --------------------------------------------------------------------------------------


@functools.cache
def _manifest_seeds() -> dict[str, bytes]:
    return {
        str(p.relative_to(VECTORS / "datastore")): decode_blob(p.read_bytes())
        for p in sorted((VECTORS / "datastore").rglob("index.json.blob"))
        if p.read_bytes()[:8] not in (ENCRYPTED_BLOB_MAGIC, ENCR_COMPR_BLOB_MAGIC)
    }


@pytest.mark.timeout(120)
@fuzz(400)
@given(seed=st.sampled_from(sorted(_manifest_seeds())), edits=mutations)
def test_fuzz_manifest(seed, edits):
    text = mutate(_manifest_seeds()[seed], edits)

    def parse():
        manifest = Manifest.parse(text, name="fuzz/index.json")
        for entry in manifest.files:
            manifest.file(entry.filename)
            entry.archive_type  # noqa: B018  (a property that may raise)
        manifest.to_json()
        return manifest

    within_memory(parse, len(text))


# -- catalog ---------------------------------------------------------------------------------------


@functools.cache
def _catalog_seeds() -> dict[str, bytes]:
    writer = CatalogWriter()
    writer.start_directory(b"etc")
    writer.add_file(b"hosts", 120, 1717200000)
    writer.start_directory(b"deep")
    writer.add_file(b"f", (1 << 64) - 1, -(1 << 63))
    writer.end_directory()
    writer.end_directory()
    writer.add_file(b"top", 0, 0)
    return {
        "vector": (VECTORS / "catalog" / "catalog.pcat1").read_bytes(),
        "ours": writer.finish(),
    }


def _exercise_catalog(raw: bytes):
    reader = CatalogReader(raw, name="fuzz.pcat1")
    walked = 0
    for walked, (_path, _entry) in enumerate(reader.walk(), start=1):
        assert walked <= len(raw)
    for path in (b"/etc/hosts", b"/etc/deep/f", b"/a"):
        try:
            reader.lookup(path)
        except Exception as exc:  # only a SnapfsError may escape, checked by the caller
            if not isinstance(exc, CorruptDataError) and "NotFound" not in type(exc).__name__:
                raise
    return walked


@pytest.mark.timeout(120)
@fuzz(500)
@given(seed=st.sampled_from(["vector", "ours"]), edits=mutations)
def test_fuzz_catalog(seed, edits):
    raw = mutate(_catalog_seeds()[seed], edits)
    within_memory(lambda: _exercise_catalog(raw), len(raw))


# -- partition tables ------------------------------------------------------------------------------


class _SparseDisk:
    """A ByteSource of `size` bytes: `head` at 0, `tail` at the end, zeros between; so a
    mutated disk of 28 MiB costs what its tables cost."""

    def __init__(self, head: bytes, tail: bytes, size: int) -> None:
        self.head, self.tail, self.size = head, tail, max(size, len(head) + len(tail))

    def read_at(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        tail_at = self.size - len(self.tail)
        out = bytearray(end - offset)
        if offset < len(self.head):
            piece = self.head[offset:end]
            out[: len(piece)] = piece
        if end > tail_at:
            lo = max(offset, tail_at)
            out[lo - offset :] = self.tail[lo - tail_at : end - tail_at]
        return bytes(out)


@functools.cache
def _partition_seeds() -> dict[str, tuple[bytes, bytes, int]]:
    """GPT and MBR (with logical partitions) disks written by sfdisk: (head, tail, size)."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("sfdisk") is None:
        pytest.fail("sfdisk not installed (Debian package fdisk)")
    scripts = {
        "gpt": 'label: gpt\nstart=2048, size=8192, type=linux, name="a"\n'
        "start=10240, size=20480, type=linux\n",
        "mbr": "label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=40960, type=5\n"
        "start=12288, size=4096, type=83\nstart=18432, size=4096, type=82\n",
    }
    seeds = {}
    size = 28 * MiB
    with tempfile.TemporaryDirectory() as d:
        for kind, script in scripts.items():
            path = Path(d, f"{kind}.img")
            with open(path, "wb") as f:
                f.truncate(size)
            subprocess.run(
                ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
                input=script,
                text=True,
                check=True,
                capture_output=True,
            )
            data = path.read_bytes()
            head_size = 64 * 1024 if kind == "gpt" else 12288 * 512 + 1024
            seeds[kind] = (data[:head_size], data[-32 * 1024 :], size)
    return seeds


def _fix_gpt_crcs(head: bytes) -> bytes:
    """The GPT header's entry-array CRC and header CRC made right again (LBA 1, 512-byte sectors)."""
    out = bytearray(head)
    if len(out) < 1024 or out[512:520] != b"EFI PART":
        return bytes(out)
    header_size = int.from_bytes(out[524:528], "little")
    entries_lba = int.from_bytes(out[584:592], "little")
    count = int.from_bytes(out[592:596], "little")
    entry_size = int.from_bytes(out[596:600], "little")
    table = entries_lba * 512
    length = count * entry_size
    if table + length <= len(out):
        out[600:604] = _crc(bytes(out[table : table + length]))
    if 92 <= header_size <= 512:
        out[528:532] = bytes(4)
        out[528:532] = _crc(bytes(out[512 : 512 + header_size]))
    return bytes(out)


@pytest.mark.timeout(120)
@fuzz(300)
@given(
    kind=st.sampled_from(["gpt", "mbr"]),
    edits=mutations,
    fix_crc=st.booleans(),
    cut=st.sampled_from([None, 1024, 34 * 512, MiB]),
)
def test_fuzz_partitions(kind, edits, fix_crc, cut):
    head, tail, size = _partition_seeds()[kind]
    # Mutations land where the tables are: the first sectors (or the EBR chain) and the backup.
    head = mutate(head, edits)
    if fix_crc:
        head = _fix_gpt_crcs(head)
    disk = _SparseDisk(head, tail, size if cut is None else cut)

    def read():
        table = read_partition_table(disk, name="fuzz.img")
        if table is not None:
            for p in table.partitions:
                assert p.start > 0 and p.end <= disk.size
        return table

    within_memory(read, len(head) + len(tail))
