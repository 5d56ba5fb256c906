"""The pcat1 catalog (docs/formats.md §9).

A catalog mirrors the directory trees of a snapshot's legacy pxar archives (names, kinds, file
sizes and mtimes) so they can be browsed without reading the archives. It is a sequence of
directory tables, each written when its directory closes (children before parents), and ends with
the offset of the root table. Catalogs are small, so the reader holds the whole decoded stream.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partialmethod

from snapfs.errors import BadMagicError, CorruptDataError, NotFoundError, TruncatedDataError

CATALOG_MAGIC = bytes.fromhex("91fd60f9c46758d5")
MAX_NAME_LEN = 4096  # upstream refuses names of this length or more
KINDS = frozenset("dflhbcps")
_U64_MAX = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class CatalogEntry:
    name: bytes
    kind: str  # one letter: d f l h b c p s
    size: int | None = None  # files only
    mtime: int | None = None  # files only, seconds
    start: int | None = None  # directories only: offset of the directory's table

    @property
    def is_dir(self) -> bool:
        return self.kind == "d"


class CatalogReader:
    """Random access to a decoded catalog stream; every offset is checked before it is followed."""

    def __init__(self, data: bytes | bytearray | memoryview, *, name: str) -> None:
        self.name = name
        self._data = bytes(data)
        if len(self._data) < 8:
            raise TruncatedDataError(f"{name}: {len(self._data)} bytes is too short for a catalog")
        if self._data[:8] != CATALOG_MAGIC:
            raise BadMagicError(f"{name}: not a catalog (magic {self._data[:8].hex()})")
        if len(self._data) < 16:
            raise TruncatedDataError(f"{name}: catalog ends before its root offset")
        self._limit = len(self._data) - 8  # tables live in [8, limit)
        (self._root_start,) = struct.unpack_from("<Q", self._data, self._limit)
        self._tables: dict[int, list[CatalogEntry]] = {}

    def root(self) -> CatalogEntry:
        """The root directory; its entries are the archives (`root.pxar.didx`, ...)."""
        self._check_table_start(self._root_start, self._limit)
        return CatalogEntry(b"", "d", start=self._root_start)

    def list_dir(self, start: int) -> list[CatalogEntry]:
        """The entries of the directory whose table is at `start`, in stored order."""
        cached = self._tables.get(start)
        if cached is None:
            cached = self._parse_table(start)
            self._tables[start] = cached
        return list(cached)

    def lookup(self, path: bytes) -> CatalogEntry:
        """The entry at `path` (e.g. b"/root.pxar.didx/etc/hosts"); b"/" is the root."""
        entry = self.root()
        walked = b""
        for part in path.split(b"/"):
            if not part:
                continue
            if entry.kind != "d":
                raise NotFoundError(
                    f"{self.name}: {walked.decode(errors='replace')!s} is not a directory"
                )
            walked += b"/" + part
            for child in self.list_dir(entry.start):  # type: ignore[arg-type]
                if child.name == part:
                    entry = child
                    break
            else:
                raise NotFoundError(
                    f"{self.name}: no {walked.decode(errors='replace')!r} in the catalog"
                )
        return entry

    def walk(self) -> Iterator[tuple[bytes, CatalogEntry]]:
        """Every entry below the root, depth-first pre-order, with its path (b"/root.pxar.didx/a")."""
        root = self.root()
        seen = {root.start}
        stack = [(b"", iter(self.list_dir(root.start)))]  # type: ignore[arg-type]
        while stack:
            prefix, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                continue
            path = prefix + b"/" + child.name
            yield path, child
            if child.kind == "d":
                # Tables strictly precede their parents, so offsets cannot cycle; but a table
                # shared by two entries would let a small file describe an exponential tree.
                if child.start in seen:
                    raise CorruptDataError(
                        f"{self.name}: directory table at offset {child.start} is referenced twice"
                    )
                seen.add(child.start)
                stack.append((path, iter(self.list_dir(child.start))))  # type: ignore[arg-type]

    # -- parsing --------------------------------------------------------------------------------

    def _check_table_start(self, start: int, parent: int) -> None:
        if not 8 <= start < parent:
            raise CorruptDataError(
                f"{self.name}: directory table offset {start} is outside [8, {parent})"
            )

    def _parse_table(self, start: int) -> list[CatalogEntry]:
        self._check_table_start(start, self._limit)
        data, name = self._data, self.name
        length, pos = _read_u64(data, start, self._limit, name)
        end = pos + length
        if end > self._limit:
            raise CorruptDataError(
                f"{name}: directory table at offset {start} ({length} bytes) runs past the "
                f"root offset at {self._limit}"
            )
        count, pos = _read_u64(data, pos, end, name)
        entries = []
        for _ in range(count):
            if pos >= end:
                raise CorruptDataError(
                    f"{name}: directory table at offset {start} ends at {end} before its "
                    f"{count} entries"
                )
            kind = chr(data[pos])
            if kind not in KINDS:
                raise CorruptDataError(
                    f"{name}: unknown entry type 0x{data[pos]:02x} at offset {pos}"
                )
            name_len, pos = _read_u64(data, pos + 1, end, name)
            if name_len >= MAX_NAME_LEN:
                raise CorruptDataError(f"{name}: entry name of {name_len} bytes at offset {pos}")
            if pos + name_len > end:
                raise CorruptDataError(f"{name}: entry name at offset {pos} runs past its table")
            entry_name = data[pos : pos + name_len]
            pos += name_len
            if kind == "d":
                delta, pos = _read_u64(data, pos, end, name)
                child = start - delta
                if delta == 0 or child < 8:
                    raise CorruptDataError(
                        f"{name}: directory {entry_name!r} in table {start} points to offset "
                        f"{child}, not to an earlier table"
                    )
                entries.append(CatalogEntry(entry_name, kind, start=child))
            elif kind == "f":
                size, pos = _read_u64(data, pos, end, name)
                mtime, pos = _read_i64(data, pos, end, name)
                entries.append(CatalogEntry(entry_name, kind, size=size, mtime=mtime))
            else:
                entries.append(CatalogEntry(entry_name, kind))
        if pos != end:
            raise CorruptDataError(
                f"{name}: directory table at offset {start} has {end - pos} bytes after its entries"
            )
        return entries


def _read_u64(data: bytes, pos: int, end: int, name: str) -> tuple[int, int]:
    """LEB128 u64, at most 10 bytes (upstream catalog_decode_u64)."""
    return _read_varint(data, pos, end, name, signed=False)


def _read_i64(data: bytes, pos: int, end: int, name: str) -> tuple[int, int]:
    """Signed varint: |v| with every byte flagged and a 0x00 terminator when negative, at most
    11 bytes (upstream catalog_decode_i64)."""
    return _read_varint(data, pos, end, name, signed=True)


def _read_varint(data: bytes, pos: int, end: int, name: str, *, signed: bool) -> tuple[int, int]:
    what, most, limit = ("signed varint", 11, _I64_MAX) if signed else ("varint", 10, _U64_MAX)
    value = 0
    for i in range(most):
        if pos + i >= end:
            raise CorruptDataError(f"{name}: varint at offset {pos} runs past its table")
        byte = data[pos + i]
        negative = signed and byte == 0  # a 0x00 after the magnitude: the value is negative
        value |= (byte & 0x7F) << (7 * i)
        if negative or byte < 0x80:
            if value > limit + negative:  # -(2**63) is the one magnitude past the i64 maximum
                raise CorruptDataError(f"{name}: {what} at offset {pos} exceeds 64 bits")
            return (-value if negative else value), pos + i + 1
    raise CorruptDataError(f"{name}: {what} at offset {pos} has no end within {most} bytes")


def encode_u64(value: int) -> bytes:
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"catalog u64 {value} out of range")
    out = bytearray()
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_i64(value: int) -> bytes:
    if not -(_I64_MAX + 1) <= value <= _I64_MAX:
        raise ValueError(f"catalog i64 {value} out of range")
    if value >= 0:
        return encode_u64(value)
    magnitude = -value
    out = bytearray()
    while magnitude >= 0x80:
        out.append(0x80 | (magnitude & 0x7F))
        magnitude >>= 7
    out += bytes((0x80 | magnitude, 0))
    return bytes(out)


# A table entry waiting for its table to be written: encoded bytes, or for a directory the
# encoded head plus its child table offset (the delta needs the parent table's own offset).
_Pending = bytes | tuple[bytes, int]


class CatalogWriter:
    """Build a catalog as upstream CatalogWriter does: one call per archive entry, in order.

    The root directory is implicit; `start_directory(b"root.pxar.didx")` opens an archive in it.
    Writer misuse (unbalanced directories, bad names) raises ValueError.
    """

    def __init__(self) -> None:
        self._out = bytearray(CATALOG_MAGIC)
        self._stack: list[tuple[bytes, list[_Pending]]] = [(b"", [])]

    def start_directory(self, name: bytes) -> None:
        self._current()  # refuse after finish
        self._stack.append((_check_name(name), []))

    def end_directory(self) -> None:
        if len(self._stack) < 2:
            raise ValueError("end_directory without start_directory")
        name, entries = self._stack.pop()
        start = len(self._out)
        self._out += self._encode_table(entries)
        self._current().append((_head(b"d", name), start))

    def add_file(self, name: bytes, size: int, mtime: int) -> None:
        self._current().append(_head(b"f", name) + encode_u64(size) + encode_i64(mtime))

    def _add_named(self, kind: bytes, name: bytes) -> None:
        """An entry that is its kind and name only: all but directories and files."""
        self._current().append(_head(kind, name))

    add_symlink = partialmethod(_add_named, b"l")
    add_hardlink = partialmethod(_add_named, b"h")
    add_block_device = partialmethod(_add_named, b"b")
    add_char_device = partialmethod(_add_named, b"c")
    add_fifo = partialmethod(_add_named, b"p")
    add_socket = partialmethod(_add_named, b"s")

    def finish(self) -> bytes:
        """Write the root table and its offset; the writer is spent afterwards."""
        if len(self._stack) != 1:
            raise ValueError(f"finish with {len(self._stack) - 1} directories still open")
        start = len(self._out)
        self._out += self._encode_table(self._stack.pop()[1])
        self._out += struct.pack("<Q", start)
        return bytes(self._out)

    def _current(self) -> list[_Pending]:
        if not self._stack:
            raise ValueError("catalog already finished")
        return self._stack[-1][1]

    def _encode_table(self, entries: list[_Pending]) -> bytes:
        start = len(self._out)
        body = bytearray(encode_u64(len(entries)))
        for entry in entries:
            if isinstance(entry, tuple):
                head, child = entry
                body += head + encode_u64(start - child)
            else:
                body += entry
        return encode_u64(len(body)) + bytes(body)


def _head(kind: bytes, name: bytes) -> bytes:
    return kind + encode_u64(len(_check_name(name))) + name


def _check_name(name: bytes) -> bytes:
    if not isinstance(name, bytes) or b"\0" in name or len(name) >= MAX_NAME_LEN:
        raise ValueError(f"invalid catalog entry name {name!r}")
    return name
