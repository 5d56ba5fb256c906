"""pxar encoder: writes unified (v1) archives and split (v2) `.mpxar` + `.ppxar` pairs.

The output is byte-identical with upstream pxar for the same calls (docs/formats.md §11): the
goodbye tables, the root tail offset of 0 and the split-archive goodbye size quirk are reproduced
on purpose, because PBS tooling and our golden vectors expect exactly those bytes.

The encoder is a streaming state machine over a stack of open directories; it never seeks, never
recurses and never holds file content in memory, so trees of any depth and files of any size go
through with bounded memory (the pending goodbye records of the open directories aside).
"""

from __future__ import annotations

import stat as statmod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from snapfs.pxar.entry import Acl, Entry
from snapfs.pxar.format import (
    ACL_DEFAULT,
    ACL_USER,
    DEVICE,
    FORMAT_VERSION_2,
    GOODBYE_ITEM,
    HEADER,
    HEADER_SIZE,
    MAX_FILENAME_LEN,
    MAX_PATH_LEN,
    PAYLOAD_REF,
    PXAR_ACL_DEFAULT,
    PXAR_ACL_DEFAULT_GROUP,
    PXAR_ACL_DEFAULT_USER,
    PXAR_ACL_GROUP,
    PXAR_ACL_GROUP_OBJ,
    PXAR_ACL_USER,
    PXAR_DEVICE,
    PXAR_ENTRY,
    PXAR_FCAPS,
    PXAR_FILENAME,
    PXAR_FORMAT_VERSION,
    PXAR_GOODBYE,
    PXAR_GOODBYE_TAIL_MARKER,
    PXAR_HARDLINK,
    PXAR_PAYLOAD,
    PXAR_PAYLOAD_REF,
    PXAR_PAYLOAD_START_MARKER,
    PXAR_PAYLOAD_TAIL_MARKER,
    PXAR_PRELUDE,
    PXAR_QUOTA_PROJID,
    PXAR_SYMLINK,
    PXAR_XATTR,
    STAT_V2,
    U64,
    filename_hash,
)

__all__ = [
    "COPY_BLOCK_SIZE",
    "EVENT_DIR_END",
    "Encoder",
    "EntryEvent",
    "Metadata",
    "goodbye_layout",
]

#: Block size for streaming file content; large enough that per-block Python overhead is noise.
COPY_BLOCK_SIZE = 1 << 20
#: Small items are coalesced until this many bytes are pending, then written with one call.
_FLUSH_AT = 1 << 18
#: Content blocks at least this large bypass the coalescing buffer (no copy).
_DIRECT_WRITE_MIN = 1 << 16

_NS = 1_000_000_000
_HEADER_PACK = HEADER.pack
_STAT_PACK = STAT_V2.pack

#: `EntryEvent.kind` of the event that closes a directory (catalog writers end the table there).
EVENT_DIR_END = ")"


@dataclass(frozen=True, slots=True)
class Metadata:
    """What one ENTRY and its metadata carry (docs/formats.md §11.4, §11.6), in encoder order.

    `xattrs` keep the caller's order (PBS uses the `flistxattr` order; the bytes depend on it).
    `mtime_ns` may be negative; it is split into floor seconds and nanoseconds like statx.
    """

    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    flags: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    acl: Acl | None = None
    fcaps: bytes | None = None
    quota_project_id: int | None = None

    @classmethod
    def from_entry(cls, entry: Entry) -> Metadata:
        """The metadata of a decoded entry, so a decoded archive can be written out again."""
        return cls(
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            mtime_ns=entry.mtime_ns,
            flags=entry.flags,
            xattrs=tuple(entry.xattrs),
            acl=entry.acl,
            fcaps=entry.fcaps,
            quota_project_id=entry.quota_project_id,
        )


@dataclass(frozen=True, slots=True)
class EntryEvent:
    """One entry as a catalog writer needs it, reported before the entry's content is written.

    `kind` is the catalog letter: `d` (a directory begins; its children follow), `f`, `l`, `h`,
    `b`, `c`, `p`, `s`, or `EVENT_DIR_END` when the most recently begun directory ends. The archive
    root produces no events: the catalog's archive directory belongs to the caller.
    `mtime` is whole seconds (floor), as the catalog stores it; `size` is set for files only.
    """

    kind: str
    name: bytes
    size: int = 0
    mtime: int = 0


def goodbye_layout(n: int) -> list[int]:
    """Slot -> sorted index for a goodbye table of `n` records (the BST of docs/formats.md §11.7).

    An in-order walk over heap indices hands out the sorted records one by one; done iteratively so
    huge directories cannot hit the recursion limit.
    """
    out = [0] * n
    stack: list[int] = []
    i = 0
    k = 0
    while stack or i < n:
        while i < n:
            stack.append(i)
            i = 2 * i + 1
        i = stack.pop()
        out[i] = k
        k += 1
        i = 2 * i + 2
    return out


def _acl_entries(htype: int, records: tuple[tuple[int, int], ...]) -> list[bytes]:
    """The items of one ACL list (users, groups, default users or groups): (id, permissions)."""
    return [_HEADER_PACK(htype, HEADER_SIZE + 16) + ACL_USER.pack(i, p) for i, p in records]


class _Sink:
    """One output stream: counts its position and turns many small items into few writes."""

    __slots__ = ("_out", "_buf", "pos")

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buf = bytearray()
        self.pos = 0

    def put(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        self.pos += len(data)
        if len(self._buf) >= _FLUSH_AT:
            self.flush()

    def put_block(self, data: bytes | bytearray | memoryview) -> None:
        """Like `put`, but big blocks go straight to the output without being copied."""
        n = len(data)
        if n < _DIRECT_WRITE_MIN:
            self.put(data)
            return
        self.flush()
        self._write_all(data)
        self.pos += n

    def flush(self) -> None:
        if self._buf:
            self._write_all(self._buf)
            self._buf.clear()

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        # Raw (unbuffered) files may accept only part of a write; everything else returns None or
        # the full length.
        written = self._out.write(data)
        if written is None or written >= len(data):
            return
        view = memoryview(data)[written:]
        while view:
            written = self._out.write(view)
            if not written:
                raise OSError("output stream accepted no bytes")
            view = view[written:]


@dataclass(slots=True)
class _OpenDir:
    name: bytes
    #: Position of the directory's FILENAME item (None for the root).
    filename_offset: int | None
    #: Position of the ENTRY item; 0 for the root even when version/prelude items precede it.
    entry_offset: int
    #: Pending goodbye records: (hash, FILENAME offset, byte size).
    records: list[tuple[int, int, int]] = field(default_factory=list)


class Encoder:
    """Low-level pxar writer mirroring upstream's encoder call for call.

    Call `begin_directory(b"", meta)` first for the archive root, then add children, close every
    directory with `end_directory()` and call `finish()` (which also closes the root if it is
    still open). With `payload_output` the archive is split (format version 2): file data goes to
    the payload stream and the metadata stream gets PAYLOAD_REF items.

    The encoder buffers internally; `finish()` flushes. It never closes the outputs. Misuse (bad
    names, wrong call order, content shorter than announced) raises `ValueError`: the archive
    written so far is then unusable.
    """

    def __init__(
        self,
        output: BinaryIO,
        payload_output: BinaryIO | None = None,
        *,
        prelude: bytes | None = None,
        on_entry: Callable[[EntryEvent], None] | None = None,
    ) -> None:
        if prelude is not None and payload_output is None:
            raise ValueError("a prelude needs a split archive (payload_output)")
        self._out = _Sink(output)
        self._payload = _Sink(payload_output) if payload_output is not None else None
        self._on_entry = on_entry
        self._stack: list[_OpenDir] = []
        self._root_done = False
        self._finished = False
        self._last_payload_ref = -1
        self._copy_buf: bytearray | None = None
        if self._payload is not None:
            self._payload.put(_HEADER_PACK(PXAR_PAYLOAD_START_MARKER, HEADER_SIZE))
            self._out.put(_HEADER_PACK(PXAR_FORMAT_VERSION, 24) + U64.pack(FORMAT_VERSION_2))
            if prelude is not None:
                self._out.put(_HEADER_PACK(PXAR_PRELUDE, HEADER_SIZE + len(prelude)))
                self._out.put(prelude)

    # --- positions ------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Bytes written so far to the archive (or metadata) stream."""
        return self._out.pos

    # --- directories ----------------------------------------------------------------------------

    def begin_directory(self, name: bytes, meta: Metadata) -> None:
        """Open a directory; the first call opens the archive root and its name must be b""."""
        if not self._stack:
            if self._root_done or self._finished:
                raise ValueError("the archive root has already been written")
            if name:
                raise ValueError(f"the archive root has no name, got {name!r}")
            self._stack.append(_OpenDir(b"", None, 0))
            self._write_metadata(meta)
            return
        f_off = self._begin_child(name)
        entry_offset = self._out.pos
        self._write_metadata(meta)
        self._stack.append(_OpenDir(name, f_off, entry_offset))
        self._emit("d", name, 0, meta.mtime_ns)

    def end_directory(self) -> None:
        """Write the goodbye table of the innermost open directory and close it."""
        if not self._stack:
            raise ValueError("end_directory without an open directory")
        d = self._stack.pop()
        self._write_goodbye(d)
        if d.filename_offset is None:
            self._root_done = True
            return
        self._stack[-1].records.append(
            (filename_hash(d.name), d.filename_offset, self._out.pos - d.filename_offset)
        )
        self._emit(EVENT_DIR_END, d.name, 0, 0)

    # --- leaves ---------------------------------------------------------------------------------

    def add_file(
        self,
        name: bytes,
        meta: Metadata,
        size: int,
        content: Iterable[bytes | bytearray | memoryview] | BinaryIO,
    ) -> int:
        """Add a regular file of exactly `size` bytes read from `content`.

        `content` is a binary file object (read with `readinto` when it has one, stopping after
        `size` bytes) or an iterable of blocks that must add up to `size`. Returns the file's link
        offset (its FILENAME position), the value `add_hardlink` needs to point at it.
        """
        if size < 0:
            raise ValueError(f"negative size for {name!r}")
        f_off = self._begin_child(name)
        self._emit("f", name, size, meta.mtime_ns)
        self._write_metadata(meta)
        if self._payload is None:
            self._out.put(_HEADER_PACK(PXAR_PAYLOAD, HEADER_SIZE + size))
            self._copy(self._out, name, size, content)
            self._add_record(name, f_off, self._out.pos - f_off)
        else:
            payload_offset = self._payload.pos
            self._payload.put(_HEADER_PACK(PXAR_PAYLOAD, HEADER_SIZE + size))
            self._copy(self._payload, name, size, content)
            self._out.put(
                _HEADER_PACK(PXAR_PAYLOAD_REF, HEADER_SIZE + 16)
                + PAYLOAD_REF.pack(payload_offset, size)
            )
            self._last_payload_ref = payload_offset
            # Upstream counts the payload bytes into the record size although they live in the
            # other stream (docs/formats.md §11.7); readers must not trust it, but bytes must match.
            self._add_record(name, f_off, self._out.pos - f_off + size)
        return f_off

    def add_payload_ref(self, name: bytes, meta: Metadata, size: int, payload_offset: int) -> int:
        """Add a regular file whose PAYLOAD the caller already placed in the payload stream.

        This is PBS's metadata-mode re-use; the goodbye record gets the exact size. Offsets must
        increase strictly, as pxar 1.0.1 enforces, so sequential readers can follow them.
        """
        if self._payload is None:
            raise ValueError("add_payload_ref needs a split archive")
        if payload_offset <= self._last_payload_ref:
            raise ValueError(
                f"payload offset {payload_offset} of {name!r} does not increase "
                f"(previous {self._last_payload_ref})"
            )
        f_off = self._begin_child(name)
        self._emit("f", name, size, meta.mtime_ns)
        self._write_metadata(meta)
        self._out.put(
            _HEADER_PACK(PXAR_PAYLOAD_REF, HEADER_SIZE + 16)
            + PAYLOAD_REF.pack(payload_offset, size)
        )
        self._last_payload_ref = payload_offset
        self._add_record(name, f_off, self._out.pos - f_off)
        return f_off

    def add_symlink(self, name: bytes, meta: Metadata, target: bytes) -> None:
        if len(target) > MAX_PATH_LEN or b"\x00" in target:
            raise ValueError(f"symlink target of {name!r} is too long or contains NUL")
        f_off = self._begin_child(name)
        self._emit("l", name, 0, meta.mtime_ns)
        self._write_metadata(meta)
        self._out.put(_HEADER_PACK(PXAR_SYMLINK, HEADER_SIZE + len(target) + 1) + target + b"\x00")
        self._add_record(name, f_off, self._out.pos - f_off)

    def add_hardlink(self, name: bytes, target_path: bytes, target_offset: int) -> None:
        """Add a hard link to a file added earlier.

        `target_offset` is what `add_file` returned for the target; `target_path` is stored for
        extraction (PBS: archive-relative, no leading slash).
        """
        if len(target_path) > MAX_PATH_LEN or b"\x00" in target_path:
            raise ValueError(f"hardlink target of {name!r} is too long or contains NUL")
        f_off = self._begin_child(name)
        if not 0 <= target_offset < f_off:
            raise ValueError(
                f"hardlink {name!r}: target offset {target_offset} is not before {f_off}"
            )
        self._emit("h", name, 0, 0)
        self._out.put(
            _HEADER_PACK(PXAR_HARDLINK, HEADER_SIZE + 8 + len(target_path) + 1)
            + U64.pack(f_off - target_offset)
            + target_path
            + b"\x00"
        )
        self._add_record(name, f_off, self._out.pos - f_off)

    def add_device(self, name: bytes, meta: Metadata, major: int, minor: int) -> None:
        kind = "b" if statmod.S_ISBLK(meta.mode) else "c"
        f_off = self._begin_child(name)
        self._emit(kind, name, 0, meta.mtime_ns)
        self._write_metadata(meta)
        self._out.put(_HEADER_PACK(PXAR_DEVICE, HEADER_SIZE + 16) + DEVICE.pack(major, minor))
        self._add_record(name, f_off, self._out.pos - f_off)

    def add_fifo(self, name: bytes, meta: Metadata) -> None:
        # Readers spot FIFOs/sockets by mode alone (docs/formats.md §11.3); any other mode would make
        # the following items be read as this entry's directory body.
        if not statmod.S_ISFIFO(meta.mode):
            raise ValueError(f"add_fifo {name!r}: mode {meta.mode:#o} is not a FIFO")
        self._add_bare(name, meta, "p")

    def add_socket(self, name: bytes, meta: Metadata) -> None:
        if not statmod.S_ISSOCK(meta.mode):
            raise ValueError(f"add_socket {name!r}: mode {meta.mode:#o} is not a socket")
        self._add_bare(name, meta, "s")

    # --- end ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Close the root (if still open), write the payload tail marker and flush both streams."""
        if self._finished:
            return
        if len(self._stack) > 1:
            raise ValueError(f"finish with {len(self._stack) - 1} directories still open")
        if self._stack:
            self.end_directory()
        if not self._root_done:
            raise ValueError("finish without an archive root")
        self._finished = True
        self._out.flush()
        if self._payload is not None:
            self._payload.put(_HEADER_PACK(PXAR_PAYLOAD_TAIL_MARKER, HEADER_SIZE))
            self._payload.flush()

    # --- internals ------------------------------------------------------------------------------

    def _emit(self, kind: str, name: bytes, size: int, mtime_ns: int) -> None:
        if self._on_entry is not None:
            self._on_entry(EntryEvent(kind, name, size, mtime_ns // _NS))

    def _begin_child(self, name: bytes) -> int:
        if not self._stack:
            raise ValueError(f"cannot add {name!r}: no open directory")
        if (
            not name
            or len(name) > MAX_FILENAME_LEN
            or b"/" in name
            or b"\x00" in name
            or name in (b".", b"..")
        ):
            raise ValueError(f"invalid file name {name[:64]!r}")
        f_off = self._out.pos
        self._out.put(_HEADER_PACK(PXAR_FILENAME, HEADER_SIZE + len(name) + 1) + name + b"\x00")
        return f_off

    def _add_record(self, name: bytes, f_off: int, size: int) -> None:
        self._stack[-1].records.append((filename_hash(name), f_off, size))

    def _add_bare(self, name: bytes, meta: Metadata, kind: str) -> None:
        f_off = self._begin_child(name)
        self._emit(kind, name, 0, meta.mtime_ns)
        self._write_metadata(meta)
        self._add_record(name, f_off, self._out.pos - f_off)

    def _write_metadata(self, meta: Metadata) -> None:
        secs, nanos = divmod(meta.mtime_ns, _NS)
        parts = [
            _HEADER_PACK(PXAR_ENTRY, HEADER_SIZE + STAT_V2.size),
            _STAT_PACK(meta.mode, meta.flags, meta.uid, meta.gid, secs, nanos, 0),
        ]
        for xname, value in meta.xattrs:
            parts.append(_HEADER_PACK(PXAR_XATTR, HEADER_SIZE + len(xname) + 1 + len(value)))
            parts += (xname, b"\x00", value)
        acl = meta.acl
        if acl is not None:
            parts += _acl_entries(PXAR_ACL_USER, acl.users)
            parts += _acl_entries(PXAR_ACL_GROUP, acl.groups)
            if acl.group_obj is not None:
                parts.append(
                    _HEADER_PACK(PXAR_ACL_GROUP_OBJ, HEADER_SIZE + 8) + U64.pack(acl.group_obj)
                )
            if acl.default is not None:
                parts.append(
                    _HEADER_PACK(PXAR_ACL_DEFAULT, HEADER_SIZE + 32)
                    + ACL_DEFAULT.pack(*acl.default)
                )
            parts += _acl_entries(PXAR_ACL_DEFAULT_USER, acl.default_users)
            parts += _acl_entries(PXAR_ACL_DEFAULT_GROUP, acl.default_groups)
        if meta.fcaps is not None:
            parts.append(_HEADER_PACK(PXAR_FCAPS, HEADER_SIZE + len(meta.fcaps)))
            parts.append(meta.fcaps)
        if meta.quota_project_id is not None:
            parts.append(
                _HEADER_PACK(PXAR_QUOTA_PROJID, HEADER_SIZE + 8) + U64.pack(meta.quota_project_id)
            )
        self._out.put(b"".join(parts))

    def _write_goodbye(self, d: _OpenDir) -> None:
        g = self._out.pos
        records = sorted(d.records)
        n = len(records)
        table = bytearray(HEADER_SIZE + GOODBYE_ITEM.size * (n + 1))
        full_size = len(table)
        HEADER.pack_into(table, 0, PXAR_GOODBYE, full_size)
        pack_into = GOODBYE_ITEM.pack_into
        pos = HEADER_SIZE
        for src in goodbye_layout(n):
            h, f_off, size = records[src]
            pack_into(table, pos, h, g - f_off, size)
            pos += GOODBYE_ITEM.size
        pack_into(table, pos, PXAR_GOODBYE_TAIL_MARKER, g - d.entry_offset, full_size)
        self._out.put(table)

    def _copy(
        self,
        sink: _Sink,
        name: bytes,
        size: int,
        content: Iterable[bytes | bytearray | memoryview] | BinaryIO,
    ) -> None:
        remaining = size
        readinto = getattr(content, "readinto", None)
        if readinto is not None:
            if self._copy_buf is None:
                self._copy_buf = bytearray(COPY_BLOCK_SIZE)
            view = memoryview(self._copy_buf)
            while remaining:
                got = readinto(view[: min(remaining, COPY_BLOCK_SIZE)])
                if not got:
                    break
                sink.put_block(view[:got])
                remaining -= got
        elif hasattr(content, "read"):
            while remaining:
                block = content.read(min(remaining, COPY_BLOCK_SIZE))  # type: ignore[union-attr]
                if not block:
                    break
                sink.put_block(block)
                remaining -= len(block)
        else:
            for block in content:  # type: ignore[union-attr]
                if len(block) > remaining:
                    raise ValueError(f"content of {name!r} is longer than its size {size}")
                sink.put_block(block)
                remaining -= len(block)
        if remaining:
            raise ValueError(
                f"content of {name!r} ended {remaining} bytes short of its size {size}"
            )
