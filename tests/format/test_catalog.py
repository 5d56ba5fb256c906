"""The pcat1 catalog: the upstream listing, the catalogs inside the snapshots, writer byte-exactness."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapfs.errors import (
    BadMagicError,
    CorruptDataError,
    NotFoundError,
    SnapfsError,
    TruncatedDataError,
)
from snapfs.format.blob import decode_chunk
from snapfs.format.catalog import (
    CATALOG_MAGIC,
    CatalogEntry,
    CatalogReader,
    CatalogWriter,
    encode_i64,
    encode_u64,
)
from snapfs.format.crypt import CryptConfig
from snapfs.format.index import parse_index

_ADDERS = {
    "l": "add_symlink",
    "h": "add_hardlink",
    "b": "add_block_device",
    "c": "add_char_device",
    "p": "add_fifo",
    "s": "add_socket",
}


def _escape(path: bytes) -> str:
    return "".join(
        chr(c) if 0x20 <= c < 0x7F and c not in (0x5C, 0x22) else f"\\x{c:02x}" for c in path
    )


def listing(reader: CatalogReader) -> list[str]:
    """The upstream CatalogReader listing format (tests/vectors/README.md, catalog)."""
    lines = []
    for path, entry in reader.walk():
        if entry.kind == "d":
            lines.append(f"d start={entry.start} {_escape(path)}")
        elif entry.kind == "f":
            lines.append(f"f size={entry.size} mtime={entry.mtime} {_escape(path)}")
        else:
            lines.append(f"{entry.kind} {_escape(path)}")
    return lines


def rebuild(reader: CatalogReader) -> bytes:
    """Replay the reader's tree through the writer, iteratively, as the client emits it."""
    writer = CatalogWriter()
    stack = [iter(reader.list_dir(reader.root().start))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            if stack:
                writer.end_directory()
            continue
        if entry.kind == "d":
            writer.start_directory(entry.name)
            stack.append(iter(reader.list_dir(entry.start)))
        elif entry.kind == "f":
            writer.add_file(entry.name, entry.size, entry.mtime)
        else:
            getattr(writer, _ADDERS[entry.kind])(entry.name)
    return writer.finish()


def _catalog(vectors: Path) -> bytes:
    return (vectors / "catalog" / "catalog.pcat1").read_bytes()


def _expected_listing(vectors: Path) -> list[str]:
    return (vectors / "catalog" / "catalog-listing.txt").read_text().splitlines()


def _snapshot_catalog(vectors: Path, snap: str) -> bytes:
    report = json.loads((vectors / "report.json").read_text())
    crypt = CryptConfig(bytes.fromhex(report["raw_key_hex"]))
    raw = (vectors / "datastore" / snap / "catalog.pcat1.didx").read_bytes()
    index = parse_index(raw, name="catalog.pcat1.didx")
    parts = []
    for _, _, digest in index.chunks():
        chunk = vectors / "datastore" / ".chunks" / digest.hex()[:4] / digest.hex()
        parts.append(decode_chunk(chunk.read_bytes(), digest, crypt))
    return b"".join(parts)


def test_listing_matches_upstream(vectors: Path) -> None:
    lines = listing(CatalogReader(_catalog(vectors), name="catalog.pcat1"))
    assert lines == _expected_listing(vectors)
    assert len(lines) == 24


@pytest.mark.parametrize(
    "snap",
    [
        "ct/200/2024-06-01T15:00:00Z",
        "host/testhost/2024-06-01T11:00:00Z",
        "host/testhost/2024-06-01T12:00:00Z",  # encrypted chunks
    ],
)
def test_snapshot_catalogs(vectors: Path, snap: str) -> None:
    data = _snapshot_catalog(vectors, snap)
    assert data == _catalog(vectors)
    assert listing(CatalogReader(data, name=snap)) == _expected_listing(vectors)


def test_writer_rebuilds_the_vector_byte_for_byte(vectors: Path) -> None:
    data = _catalog(vectors)
    assert rebuild(CatalogReader(data, name="catalog.pcat1")) == data


def test_root_and_lookup(vectors: Path) -> None:
    reader = CatalogReader(_catalog(vectors), name="catalog.pcat1")
    root = reader.root()
    assert root == CatalogEntry(b"", "d", start=636)
    assert reader.lookup(b"/") == root
    assert [e.name for e in reader.list_dir(root.start)] == [b"root.pxar.didx"]
    notes = reader.lookup(b"/root.pxar.didx/dir_a/nested/notes.txt")
    assert notes == CatalogEntry(b"notes.txt", "f", size=1300, mtime=1600950400)
    assert reader.lookup(b"root.pxar.didx//dir_a/").start == 56
    assert reader.lookup(b"/root.pxar.didx/non_utf8_\xff\xfe_name.txt").size == 14
    assert reader.lookup(b"/root.pxar.didx/hardlink_b").kind == "h"
    with pytest.raises(NotFoundError, match="missing"):
        reader.lookup(b"/root.pxar.didx/missing")
    with pytest.raises(NotFoundError, match="not a directory"):
        reader.lookup(b"/root.pxar.didx/acl_file/x")


def test_spec_worked_example() -> None:
    """docs/formats.md §12, byte for byte."""
    writer = CatalogWriter()
    writer.start_directory(b"root.pxar.didx")
    writer.add_file(b"a", 5, 1600000000)
    writer.start_directory(b"d")
    writer.end_directory()
    writer.add_symlink(b"link")
    writer.end_directory()
    expected = bytes.fromhex(
        "91fd60f9c46758d5"
        "0100"
        "1403" + "660161" + "05" + "80a0f8fa05" + "64016402" + "6c046c696e6b"
        "1201" + "640e" + b"root.pxar.didx".hex() + "15"
        "1f00000000000000"
    )
    data = writer.finish()
    assert data == expected
    reader = CatalogReader(data, name="example")
    assert [(p, e.kind) for p, e in reader.walk()] == [
        (b"/root.pxar.didx", "d"),
        (b"/root.pxar.didx/a", "f"),
        (b"/root.pxar.didx/d", "d"),
        (b"/root.pxar.didx/link", "l"),
    ]


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (300, "ac02"), (1600000000, "80a0f8fa05"), (-1, "8100"), (-128, "808100")],
)
def test_varint_examples(value: int, encoded: str) -> None:
    assert encode_i64(value).hex() == encoded
    if value >= 0:
        assert encode_u64(value).hex() == encoded


def test_extreme_file_values_round_trip() -> None:
    values = [(0, 0), ((1 << 64) - 1, (1 << 63) - 1), (1, -(1 << 63)), (7, -1), (8, -1600000000)]
    writer = CatalogWriter()
    writer.start_directory(b"a.pxar.didx")
    for i, (size, mtime) in enumerate(values):
        writer.add_file(b"f%d" % i, size, mtime)
    writer.end_directory()
    reader = CatalogReader(writer.finish(), name="x")
    got = [(e.size, e.mtime) for _, e in reader.walk() if e.kind == "f"]
    assert got == values


def test_deep_tree_walks_without_recursion() -> None:
    depth = 5000
    writer = CatalogWriter()
    for i in range(depth):
        writer.start_directory(b"d%d" % i)
    writer.add_fifo(b"bottom")
    for _ in range(depth):
        writer.end_directory()
    data = writer.finish()
    reader = CatalogReader(data, name="deep")
    paths = [p for p, _ in reader.walk()]
    assert len(paths) == depth + 1
    assert paths[-1].endswith(b"/d4999/bottom")
    assert reader.lookup(paths[-1]).kind == "p"
    assert rebuild(reader) == data


def test_writer_refuses_misuse() -> None:
    writer = CatalogWriter()
    with pytest.raises(ValueError):
        writer.end_directory()
    writer.start_directory(b"x")
    with pytest.raises(ValueError):
        writer.finish()
    with pytest.raises(ValueError):
        writer.add_file(b"a\0b", 1, 1)
    writer.end_directory()
    writer.finish()
    with pytest.raises(ValueError):
        writer.add_fifo(b"late")


# -- bad input ------------------------------------------------------------------------------------


def _example() -> bytearray:
    writer = CatalogWriter()
    writer.start_directory(b"root.pxar.didx")
    writer.add_file(b"a", 5, 1600000000)
    writer.start_directory(b"d")
    writer.end_directory()
    writer.end_directory()
    return bytearray(writer.finish())


def _table_catalog(*tables: bytes, root: int | None = None) -> bytes:
    """Hand-made catalogs: tables laid out from offset 8, root = the last one unless given."""
    out = bytearray(CATALOG_MAGIC)
    starts = []
    for table in tables:
        starts.append(len(out))
        out += table
    out += struct.pack("<Q", starts[-1] if root is None else root)
    return bytes(out)


def test_bad_magic(vectors: Path) -> None:
    data = bytearray(_catalog(vectors))
    data[3] ^= 1
    with pytest.raises(BadMagicError, match="cat.pcat1"):
        CatalogReader(data, name="cat.pcat1")


def test_truncated(vectors: Path) -> None:
    for cut in (0, 7, 12):
        with pytest.raises(TruncatedDataError):
            CatalogReader(_catalog(vectors)[:cut], name="cut")
    reader = CatalogReader(_catalog(vectors)[:-1], name="cut")  # root offset now garbage
    with pytest.raises(CorruptDataError):
        list(reader.walk())


def test_root_offset_out_of_range() -> None:
    data = _example()
    data[-8:] = struct.pack("<Q", len(data))
    with pytest.raises(CorruptDataError, match="offset"):
        CatalogReader(bytes(data), name="x").root()


def test_directory_pointing_to_itself_is_refused() -> None:
    # table at 8: one 'd' entry with delta 0 (would loop forever)
    loop = _table_catalog(bytes.fromhex("05") + bytes.fromhex("01" + "6401" + "78" + "00"))
    with pytest.raises(CorruptDataError, match="earlier table"):
        list(CatalogReader(loop, name="loop").walk())


def test_shared_table_is_refused() -> None:
    empty = bytes.fromhex("0100")  # at offset 8
    # table at 10 with two directories both pointing at offset 8 (delta 2)
    shared = bytes.fromhex("09" + "02" + "6401" + "61" + "02" + "6401" + "62" + "02")
    with pytest.raises(CorruptDataError, match="twice"):
        list(CatalogReader(_table_catalog(empty, shared), name="dag").walk())


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("02" + "01" + "78", "unknown entry type"),  # type 'x'
        ("0101" + "78", "before its 1 entries"),  # the entry lies outside its table
        ("0c" + "01" + "66" + "01" + "61" + "ffffffffffffffffffff", "varint"),  # no end in 10 bytes
        ("04" + "01" + "66" + "0161", "varint"),  # file without size/mtime
        ("03" + "02" + "7001", "past"),  # second entry beyond the table
        ("05" + "01" + "700100" + "00", "bytes after"),  # trailing garbage in the table
        ("02" + "01" + "70" + "05", "runs past"),  # name beyond the table
        ("7f" + "00", "runs past"),  # table longer than the file
        ("04" + "01" + "70" + "ff" + "7f", "name of"),  # name of 16383 bytes
        ("0f" + "01" + "66" + "0161" + "00" + "ffffffffffffffffff7f", "exceeds 64 bits"),
    ],
)
def test_corrupt_tables(table: str, message: str) -> None:
    data = _table_catalog(bytes.fromhex(table))
    with pytest.raises(CorruptDataError, match=message):
        list(CatalogReader(data, name="bad").walk())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        reader = CatalogReader(CATALOG_MAGIC + data, name="fuzz")
        list(reader.walk())
        reader.lookup(b"/a/b")
    except SnapfsError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_vector(data: st.DataObject) -> None:
    original = _example()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        pos = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        mutated[pos] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        reader = CatalogReader(bytes(mutated), name="fuzz")
        walked = list(reader.walk())
    except SnapfsError:
        return
    assert len(walked) < 100
