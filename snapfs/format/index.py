"""Fixed (`.fidx`) and dynamic (`.didx`) chunk indexes (docs/formats.md §7).

An index maps a stream (a disk image, a pxar archive, a catalog) to the chunks that hold it. Both
kinds have a 4096-byte header and then fixed-size entries. A big image has millions of entries, so
the parsed index keeps the raw entry area as a memoryview (and the dynamic end offsets as one
array('Q')) instead of a Python object per chunk; lookups are O(1) (fixed) or a bisect (dynamic).
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import sys
import time
import uuid as uuid_mod
from array import array
from collections.abc import Iterator, Sequence
from itertools import islice
from operator import ge
from typing import ClassVar, Self

from snapfs.errors import (
    BadMagicError,
    ChecksumMismatchError,
    CorruptDataError,
    NotFoundError,
    TruncatedDataError,
)

FIXED_INDEX_MAGIC = bytes.fromhex("2f7f41ed91fd0fcd")
DYNAMIC_INDEX_MAGIC = bytes.fromhex("1c914ea519bab3cd")
HEADER_SIZE = 4096
DIGEST_SIZE = 32
DYNAMIC_ENTRY_SIZE = 40

# magic, uuid, ctime (i64), index_csum; the fixed header continues with size and chunk_size.
_COMMON_HEADER = struct.Struct("<8s16sq32s")
_FIXED_SIZES = struct.Struct("<QQ")
_U64_MAX = (1 << 64) - 1

Buffer = bytes | bytearray | memoryview


def _view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view.toreadonly()


#: (uuid, ctime, index_csum): what the header holds after the magic.
_Header = tuple[bytes, int, bytes]


def _read_header(view: memoryview, magic: bytes, kind: str, name: str) -> _Header:
    if len(view) < 8:
        raise TruncatedDataError(f"{name}: {len(view)} bytes is too short for a {kind} header")
    if view[:8] != magic:
        raise BadMagicError(f"{name}: not a {kind} (magic {view[:8].hex()})")
    if len(view) < HEADER_SIZE:
        raise TruncatedDataError(
            f"{name}: {kind} header is cut off at offset {len(view)} (needs {HEADER_SIZE} bytes)"
        )
    _, uuid, ctime, csum = _COMMON_HEADER.unpack_from(view)
    return uuid, ctime, csum


class _Index:
    """What both index kinds have: the header's fields, and the stream's size in chunks and bytes."""

    __slots__ = ("name", "uuid", "ctime", "index_csum", "size", "chunk_count")
    _MAGIC: ClassVar[bytes]
    _KIND: ClassVar[str]

    def __init__(self, name: str, header: _Header, size: int, chunk_count: int) -> None:
        self.name = name
        self.uuid, self.ctime, self.index_csum = header
        self.size = size
        self.chunk_count = chunk_count

    @classmethod
    def parse(cls, data: Buffer, *, name: str) -> Self:
        """Parse and check a whole index file: magic, header, entries, and index_csum."""
        view = _view(data)
        header = _read_header(view, cls._MAGIC, cls._KIND, name)
        index = cls._from_entries(view, header, name)
        _check_csum(index, name)
        return index

    @classmethod
    def _from_entries(cls, view: memoryview, header: _Header, name: str) -> Self:
        raise NotImplementedError


class FixedIndex(_Index):
    """A `.fidx`: `size` bytes cut in `chunk_size` pieces, one digest each, only the last short."""

    __slots__ = ("chunk_size", "_digests")
    _MAGIC = FIXED_INDEX_MAGIC
    _KIND = "fixed index"

    def __init__(
        self, name: str, header: _Header, size: int, chunk_size: int, digests: memoryview
    ) -> None:
        super().__init__(name, header, size, len(digests) // DIGEST_SIZE)
        self.chunk_size = chunk_size
        self._digests = digests

    @classmethod
    def _from_entries(cls, view: memoryview, header: _Header, name: str) -> Self:
        """The geometry in the header against the file's size, then one digest per chunk."""
        size, chunk_size = _FIXED_SIZES.unpack_from(view, _COMMON_HEADER.size)
        if chunk_size == 0 or chunk_size & (chunk_size - 1):
            raise CorruptDataError(
                f"{name}: chunk size {chunk_size} at offset 72 is not a power of two"
            )
        count = -(-size // chunk_size)
        expected = HEADER_SIZE + count * DIGEST_SIZE
        if len(view) != expected:
            error = TruncatedDataError if len(view) < expected else CorruptDataError
            raise error(
                f"{name}: file is {len(view)} bytes, but size {size} / chunk size {chunk_size} "
                f"needs {count} digests ({expected} bytes)"
            )
        return cls(name, header, size, chunk_size, view[HEADER_SIZE:])

    def digest(self, i: int) -> bytes:
        if not 0 <= i < self.chunk_count:
            raise NotFoundError(f"{self.name}: no chunk {i} (index has {self.chunk_count})")
        return self._digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE].tobytes()

    def chunk_range(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.chunk_count:
            raise NotFoundError(f"{self.name}: no chunk {i} (index has {self.chunk_count})")
        start = i * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def chunk_at(self, offset: int) -> int:
        """The chunk holding stream byte `offset`."""
        if not 0 <= offset < self.size:
            raise NotFoundError(
                f"{self.name}: offset {offset} is outside the stream (size {self.size})"
            )
        return offset // self.chunk_size

    def chunks(self) -> Iterator[tuple[int, int, bytes]]:
        digests = self._digests
        size, step = self.size, self.chunk_size
        for i in range(self.chunk_count):
            start = i * step
            yield (
                start,
                min(start + step, size),
                digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE].tobytes(),
            )

    def compute_csum(self) -> bytes:
        """SHA-256 over the digest area, what the header and the manifest store."""
        return hashlib.sha256(self._digests).digest()

    def __repr__(self) -> str:
        return f"FixedIndex({self.name!r}, size={self.size}, chunk_size={self.chunk_size}, chunks={self.chunk_count})"


class DynamicIndex(_Index):
    """A `.didx`: (exclusive end offset, digest) entries with strictly increasing ends."""

    __slots__ = ("_entries", "_ends")
    _MAGIC = DYNAMIC_INDEX_MAGIC
    _KIND = "dynamic index"

    def __init__(self, name: str, header: _Header, entries: memoryview, ends: array) -> None:
        super().__init__(name, header, ends[-1] if ends else 0, len(ends))
        self._entries = entries
        self._ends = ends

    @classmethod
    def _from_entries(cls, view: memoryview, header: _Header, name: str) -> Self:
        """(end, digest) records filling the rest of the file, with strictly rising ends."""
        entries = view[HEADER_SIZE:]
        count, rest = divmod(len(entries), DYNAMIC_ENTRY_SIZE)
        if rest:
            raise TruncatedDataError(
                f"{name}: entry area of {len(entries)} bytes is not a multiple of "
                f"{DYNAMIC_ENTRY_SIZE} (last entry cut off at offset {len(view) - rest})"
            )
        ends = _gather_ends(entries, count)
        _check_monotonic(ends, name)
        return cls(name, header, entries, ends)

    def digest(self, i: int) -> bytes:
        if not 0 <= i < self.chunk_count:
            raise NotFoundError(f"{self.name}: no chunk {i} (index has {self.chunk_count})")
        pos = i * DYNAMIC_ENTRY_SIZE + 8
        return self._entries[pos : pos + DIGEST_SIZE].tobytes()

    def chunk_range(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.chunk_count:
            raise NotFoundError(f"{self.name}: no chunk {i} (index has {self.chunk_count})")
        return (self._ends[i - 1] if i else 0), self._ends[i]

    def chunk_at(self, offset: int) -> int:
        """The chunk holding stream byte `offset` (binary search over the end offsets)."""
        if not 0 <= offset < self.size:
            raise NotFoundError(
                f"{self.name}: offset {offset} is outside the stream (size {self.size})"
            )
        return bisect.bisect_right(self._ends, offset)

    def chunks(self) -> Iterator[tuple[int, int, bytes]]:
        entries = self._entries
        start = 0
        for i, end in enumerate(self._ends):
            pos = i * DYNAMIC_ENTRY_SIZE + 8
            yield start, end, entries[pos : pos + DIGEST_SIZE].tobytes()
            start = end

    def compute_csum(self) -> bytes:
        """SHA-256 over the raw entry area (end offsets and digests as stored)."""
        return hashlib.sha256(self._entries).digest()

    def __repr__(self) -> str:
        return f"DynamicIndex({self.name!r}, size={self.size}, chunks={self.chunk_count})"


def _gather_ends(entries: memoryview, count: int) -> array:
    """The u64 end offsets pulled out of the 40-byte records with 8 strided copies (no per-entry loop)."""
    raw = bytearray(8 * count)
    # Strided slicing of bytes runs in C; of a memoryview it goes item by item (3x slower).
    src = entries.tobytes()
    for j in range(8):
        raw[j::8] = src[j::DYNAMIC_ENTRY_SIZE]
    ends = array("Q")
    if ends.itemsize != 8:  # pragma: no cover - every supported platform has an 8-byte 'Q'
        raise RuntimeError("array('Q') is not 64-bit on this platform")
    ends.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover
        ends.byteswap()
    return ends


def _check_monotonic(ends: array, name: str) -> None:
    if not ends:
        return
    if ends[0] == 0:
        raise CorruptDataError(f"{name}: chunk 0 is empty (end offset 0 at offset {HEADER_SIZE})")
    # map(ge, ...) runs the comparison loop in C; only a failure costs a Python-level search.
    if any(map(ge, ends, islice(ends, 1, None))):
        i = next(i for i in range(1, len(ends)) if ends[i] <= ends[i - 1])
        raise CorruptDataError(
            f"{name}: end offset {ends[i]} of chunk {i} (at offset "
            f"{HEADER_SIZE + i * DYNAMIC_ENTRY_SIZE}) does not exceed the previous end {ends[i - 1]}"
        )


def _check_csum(index: FixedIndex | DynamicIndex, name: str) -> None:
    actual = index.compute_csum()
    if actual != index.index_csum:
        raise ChecksumMismatchError(
            f"{name}: index checksum {index.index_csum.hex()} (offset 32) does not match "
            f"the entries ({actual.hex()})"
        )


def parse_index(data: Buffer, *, name: str) -> FixedIndex | DynamicIndex:
    """Parse either index kind, chosen by magic."""
    view = _view(data)
    magic = view[:8].tobytes()
    if magic == FIXED_INDEX_MAGIC:
        return FixedIndex.parse(view, name=name)
    if magic == DYNAMIC_INDEX_MAGIC:
        return DynamicIndex.parse(view, name=name)
    if len(view) < 8:
        raise TruncatedDataError(f"{name}: {len(view)} bytes is too short for an index header")
    raise BadMagicError(f"{name}: not a chunk index (magic {magic.hex()})")


# --- writers ----------------------------------------------------------------------------------


def _header(magic: bytes, uuid: bytes | None, ctime: int | None, csum: bytes) -> bytearray:
    uuid = uuid_mod.uuid4().bytes if uuid is None else uuid
    if len(uuid) != 16:
        raise ValueError(f"index uuid must be 16 bytes, got {len(uuid)}")
    ctime = int(time.time()) if ctime is None else ctime
    header = bytearray(HEADER_SIZE)
    _COMMON_HEADER.pack_into(header, 0, magic, uuid, ctime, csum)
    return header


def build_fixed_index(
    digests: Sequence[bytes],
    size: int,
    chunk_size: int,
    *,
    uuid: bytes | None = None,
    ctime: int | None = None,
) -> bytes:
    """A `.fidx` as upstream FixedIndexWriter writes it (random v4 uuid and current time by default).

    Writer misuse (wrong digest count, bad chunk size) raises ValueError: it is a bug, not bad data.
    """
    if chunk_size <= 0 or chunk_size & (chunk_size - 1):
        raise ValueError(f"fixed index chunk size {chunk_size} is not a power of two")
    if not 0 <= size <= _U64_MAX:
        raise ValueError(f"fixed index size {size} out of range")
    if len(digests) != -(-size // chunk_size):
        raise ValueError(f"{len(digests)} digests given for size {size} / chunk size {chunk_size}")
    body = b"".join(digests)
    if len(body) != DIGEST_SIZE * len(digests):
        raise ValueError("every digest must be 32 bytes")
    header = _header(FIXED_INDEX_MAGIC, uuid, ctime, hashlib.sha256(body).digest())
    _FIXED_SIZES.pack_into(header, _COMMON_HEADER.size, size, chunk_size)
    return bytes(header) + body


def build_dynamic_index(
    entries: Sequence[tuple[int, bytes]],
    *,
    uuid: bytes | None = None,
    ctime: int | None = None,
) -> bytes:
    """A `.didx` from (exclusive end offset, digest) pairs, as upstream DynamicIndexWriter writes it."""
    body = bytearray()
    previous = 0
    for end, digest in entries:
        if not previous < end <= _U64_MAX:
            raise ValueError(f"dynamic index end offset {end} does not exceed {previous}")
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"digest for end offset {end} is {len(digest)} bytes, not 32")
        body += end.to_bytes(8, "little")
        body += digest
        previous = end
    header = _header(DYNAMIC_INDEX_MAGIC, uuid, ctime, hashlib.sha256(body).digest())
    return bytes(header) + bytes(body)
