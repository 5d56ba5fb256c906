"""Random-access reader for pxar archives: unified (v1) `.pxar` and split (v2) `.mpxar` + `.ppxar`.

Everything is found through goodbye tables (docs/formats.md §11.7), so a lookup costs a few
small reads per path component and nothing is ever read whole. Archives are untrusted: every offset
is checked against the range it must lie in before it is followed, directory ranges must shrink
strictly with depth and siblings' ranges must not overlap, so hostile input ends in a
`CorruptDataError` naming the archive and offset, never in a hang or unbounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from snapfs.errors import (
    BadMagicError,
    CorruptDataError,
    NotFoundError,
    SnapfsError,
    TruncatedDataError,
    UnsupportedFormatError,
    UsageError,
)
from snapfs.format.source import ByteSource
from snapfs.pxar import format as fmt
from snapfs.pxar.entry import Acl, Entry, EntryKind

ErrorHandler = Callable[[SnapfsError], None]

_HDR = fmt.HEADER.unpack_from
_U64 = fmt.U64.unpack_from
_GB = fmt.GOODBYE_ITEM.unpack_from
_GB_SIZE = fmt.GOODBYE_ITEM_SIZE
_NS = 1_000_000_000

#: Bytes fetched at once when decoding an entry: FILENAME + ENTRY + typical metadata fit.
_ENTRY_WINDOW = 1024
#: Listing decodes consecutive siblings, so one larger window serves many of them.
_LIST_WINDOW = 16 * 1024
#: Bytes fetched from a directory's end: tail plus the whole table of a small directory.
_GOODBYE_WINDOW = 1024
#: No real directory has more children; the cap keeps a forged table size from costing memory.
_MAX_GOODBYE_SIZE = 16 + _GB_SIZE * (16 * 1024 * 1024 + 1)
#: Metadata bytes one entry may carry (xattrs, ACLs); far above anything a file system allows.
_MAX_METADATA_BYTES = 16 * 1024 * 1024
_MAX_HARDLINK_HOPS = 16
_DIR_CACHE_ENTRIES = 256
_DIR_CACHE_BYTES = 16 * 1024 * 1024
_PAYLOAD_CHECK_CACHE = 4096

_METADATA_TYPES = frozenset(
    {
        fmt.PXAR_XATTR,
        fmt.PXAR_ACL_USER,
        fmt.PXAR_ACL_GROUP,
        fmt.PXAR_ACL_GROUP_OBJ,
        fmt.PXAR_ACL_DEFAULT,
        fmt.PXAR_ACL_DEFAULT_USER,
        fmt.PXAR_ACL_DEFAULT_GROUP,
        fmt.PXAR_FCAPS,
        fmt.PXAR_QUOTA_PROJID,
    }
)
_KIND_MODES = {
    EntryKind.FILE: (fmt.S_IFREG,),
    EntryKind.SYMLINK: (fmt.S_IFLNK,),
    EntryKind.DEVICE: (fmt.S_IFCHR, fmt.S_IFBLK),
    EntryKind.DIRECTORY: (fmt.S_IFDIR,),
}


@dataclass
class ReadStats:
    """How much a caller made us read; lets tests and benchmarks assert lookup costs."""

    reads: int = 0
    bytes: int = 0
    payload_reads: int = 0
    payload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Directory:
    """An opened goodbye table: `table` holds the N child records (the tail excluded)."""

    entry_start: int  # E: the directory's ENTRY header (0 for the root)
    goodbye_start: int  # G
    table: bytes
    count: int


class _Cursor:
    """A read window over [.., limit) of the archive, so parsing consecutive items costs one read."""

    __slots__ = ("_acc", "_limit", "_window", "_base", "_buf")

    def __init__(self, acc: Accessor, limit: int, window: int) -> None:
        self._acc = acc
        self._limit = limit
        self._window = window
        self._base = 0
        self._buf = b""

    def get(self, pos: int, size: int) -> memoryview:
        """Return exactly `size` bytes at `pos`, all below the limit, else a CorruptDataError."""
        if pos < 0 or pos + size > self._limit:
            acc = self._acc
            if pos + size > acc.archive.size:
                raise TruncatedDataError(
                    f"{acc.name}: item at offset {pos} runs past the end of the archive"
                )
            raise CorruptDataError(
                f"{acc.name}: item at offset {pos} crosses the end of its directory"
            )
        start = pos - self._base
        if start < 0 or start + size > len(self._buf):
            want = min(max(size, self._window), self._limit - pos)
            self._buf = self._acc._read(pos, want)
            self._base = pos
            start = 0
            if len(self._buf) < size:
                raise TruncatedDataError(
                    f"{self._acc.name}: archive ends before offset {pos + size}"
                )
        return memoryview(self._buf)[start : start + size]

    def header(self, pos: int) -> fmt.Header:
        return fmt.parse_header(self.get(pos, fmt.HEADER_SIZE), where=self._acc.name, pos=pos)

    def content(self, pos: int, hdr: fmt.Header) -> memoryview:
        return self.get(pos + fmt.HEADER_SIZE, hdr.full_size - fmt.HEADER_SIZE)


class _EntryBuilder:
    """Collects the metadata items of one entry, enforcing at-most-once for the singletons."""

    __slots__ = (
        "xattrs",
        "users",
        "groups",
        "group_obj",
        "default",
        "default_users",
        "default_groups",
        "fcaps",
        "quota",
        "meta_bytes",
    )

    def __init__(self) -> None:
        self.xattrs: list[tuple[bytes, bytes]] = []
        self.users: list[tuple[int, int]] = []
        self.groups: list[tuple[int, int]] = []
        self.group_obj: int | None = None
        self.default: tuple[int, int, int, int] | None = None
        self.default_users: list[tuple[int, int]] = []
        self.default_groups: list[tuple[int, int]] = []
        self.fcaps: bytes | None = None
        self.quota: int | None = None
        self.meta_bytes = 0

    def add(self, htype: int, data: memoryview, where: str, pos: int) -> None:
        self.meta_bytes += len(data) + fmt.HEADER_SIZE
        if self.meta_bytes > _MAX_METADATA_BYTES:
            raise CorruptDataError(
                f"{where}: more than {_MAX_METADATA_BYTES} bytes of metadata at offset {pos}"
            )
        if htype == fmt.PXAR_XATTR:
            raw = bytes(data)
            nul = raw.find(b"\x00")
            if nul <= 0:
                raise CorruptDataError(
                    f"{where}: xattr without a NUL-terminated name at offset {pos}"
                )
            self.xattrs.append((raw[:nul], raw[nul + 1 :]))
        elif htype == fmt.PXAR_ACL_USER:
            self.users.append(fmt.ACL_USER.unpack_from(data))
        elif htype == fmt.PXAR_ACL_GROUP:
            self.groups.append(fmt.ACL_USER.unpack_from(data))
        elif htype == fmt.PXAR_ACL_DEFAULT_USER:
            self.default_users.append(fmt.ACL_USER.unpack_from(data))
        elif htype == fmt.PXAR_ACL_DEFAULT_GROUP:
            self.default_groups.append(fmt.ACL_USER.unpack_from(data))
        elif htype == fmt.PXAR_ACL_GROUP_OBJ:
            self._once(self.group_obj, htype, where, pos)
            self.group_obj = _U64(data)[0]
        elif htype == fmt.PXAR_ACL_DEFAULT:
            self._once(self.default, htype, where, pos)
            self.default = fmt.ACL_DEFAULT.unpack_from(data)
        elif htype == fmt.PXAR_FCAPS:
            self._once(self.fcaps, htype, where, pos)
            self.fcaps = bytes(data)
        else:  # QUOTA_PROJID: the caller passes metadata types only
            self._once(self.quota, htype, where, pos)
            self.quota = _U64(data)[0]

    @staticmethod
    def _once(current: object, htype: int, where: str, pos: int) -> None:
        if current is not None:
            raise CorruptDataError(f"{where}: second {fmt.htype_name(htype)} item at offset {pos}")

    def acl(self) -> Acl | None:
        acl = Acl(
            users=tuple(self.users),
            groups=tuple(self.groups),
            group_obj=self.group_obj,
            default=self.default,
            default_users=tuple(self.default_users),
            default_groups=tuple(self.default_groups),
        )
        return None if acl.is_empty else acl


def _payload_name(name: str) -> str:
    head, sep, tail = name.rpartition("mpxar")
    return f"{head}ppxar{tail}" if sep else f"{name} (payload stream)"


class Accessor:
    """Random access to one pxar archive through `ByteSource.read_at` only.

    `payload` is the `.ppxar` stream of a split archive. Without it a v2 archive can still be
    browsed (metadata-only mode); reading file content then raises NotFoundError naming the
    missing payload stream, instead of returning the wrong bytes upstream returns.
    """

    def __init__(
        self, archive: ByteSource, payload: ByteSource | None = None, *, name: str = "archive"
    ) -> None:
        self.archive = archive
        self.payload = payload
        self.name = name
        self.payload_name = _payload_name(name)
        self.stats = ReadStats()
        self._dir_cache: OrderedDict[tuple[int, int], _Directory] = OrderedDict()
        self._dir_cache_bytes = 0
        self._payload_checked: OrderedDict[int, int] = OrderedDict()
        self.format_version, self.prelude, root_start = self._read_version()
        if self.format_version == 2 and payload is not None:
            self._check_payload_start()
        self._root = self._decode_root(root_start)

    # --- public API ---------------------------------------------------------------------------

    def root(self) -> Entry:
        return self._root

    def lookup(self, path: bytes | str) -> Entry:
        """Entry at an archive path like b"/dir_a/nested"; hard links are returned unresolved."""
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else bytes(path)
        entry = self._root
        for component in raw.split(b"/"):
            if component in (b"", b"."):
                continue
            if component == b"..":
                raise NotFoundError(f"{self.name}: path {raw!r} contains '..'")
            if not entry.is_dir:
                raise NotFoundError(
                    f"{self.name}: {entry.path!r} is not a directory (looking up {raw!r})"
                )
            child = self.lookup_child(entry, component)
            if child is None:
                raise NotFoundError(f"{self.name}: no such entry {raw!r}")
            entry = child
        return entry

    def lookup_child(self, directory: Entry, name: bytes) -> Entry | None:
        """Find one child by name via the goodbye table's hash search; None if there is none.

        Duplicate names (a buggy or hostile writer) resolve to the one earliest in the archive.
        """
        d = self._open_dir(directory)
        name = bytes(name)
        if not name or len(name) > fmt.MAX_FILENAME_LEN:
            return None
        h = fmt.filename_hash(name)
        table, n = d.table, d.count
        candidates: list[tuple[int, int]] = []
        # All records with an equal hash, which may sit in both subtrees of a match (§11.7).
        stack = [0]
        while stack:
            i = stack.pop()
            if i >= n:
                continue
            rh, roff, rsize = _GB(table, i * _GB_SIZE)
            if h < rh:
                stack.append(2 * i + 1)
            elif h > rh:
                stack.append(2 * i + 2)
            else:
                candidates.append((roff, rsize))
                stack.append(2 * i + 1)
                stack.append(2 * i + 2)
        best: Entry | None = None
        for roff, rsize in candidates:
            f = self._child_start(d, roff)
            if best is not None and f >= best.entry_offset:
                continue
            cur = _Cursor(self, d.goodbye_start, _ENTRY_WINDOW)
            entry = self._decode_child(cur, directory.path, d, f, rsize, expect_name=name)
            if entry is not None:
                best = entry
        return best

    def listdir(self, directory: Entry, *, on_error: ErrorHandler | None = None) -> Iterator[Entry]:
        """Children in archive order, decoded one at a time.

        A corrupt child raises, or with `on_error` is reported there and skipped, so one bad entry
        does not hide its siblings. A directory that cannot be opened raises here, at the call.
        """
        d = self._open_dir(directory)
        return self._iter_children(directory, d, on_error)

    def _iter_children(
        self, directory: Entry, d: _Directory, on_error: ErrorHandler | None
    ) -> Iterator[Entry]:
        records, bad = self._records_in_archive_order(d)
        for roff in bad:
            exc = CorruptDataError(
                f"{self.name}: goodbye record in table at offset {d.goodbye_start} of {directory.path!r} "
                f"points outside its directory (offset {roff})"
            )
            if on_error is None:
                raise exc
            on_error(exc)
        cur = _Cursor(self, d.goodbye_start, _LIST_WINDOW)
        parent_path = directory.path
        covered = d.entry_start + 1  # no child may start inside the directory's own ENTRY
        for f, rsize in records:
            try:
                if f < covered:
                    raise CorruptDataError(
                        f"{self.name}: goodbye record at offset {d.goodbye_start} points to {f}, "
                        f"inside a sibling or the directory's own items"
                    )
                entry = self._decode_child(cur, parent_path, d, f, rsize)
                assert entry is not None
                # siblings are back to back: the next one starts where this one ends
                covered = entry.entry_end
            except SnapfsError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield entry

    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Up to `size` bytes of file content from `offset`; short only at the end of the file."""
        if entry.is_hardlink:
            entry = self.resolve_hardlink(entry)
        if not entry.is_file or entry.content_offset is None:
            raise UsageError(f"{self.name}: {entry.path!r} is not a regular file")
        if offset < 0 or size < 0:
            raise UsageError(f"{self.name}: negative read ({offset}, {size}) of {entry.path!r}")
        if offset >= entry.size or size == 0:
            return b""
        size = min(size, entry.size - offset)
        if self.format_version == 1:
            pos = entry.content_offset + offset
            data = self._read(pos, size)
            if len(data) != size:
                raise TruncatedDataError(
                    f"{self.name}: content of {entry.path!r} truncated at offset {pos}"
                )
            return data
        source = self._payload_source(entry)
        self._check_payload_header(entry, source)
        pos = entry.content_offset + offset
        data = self._read_payload(source, pos, size)
        if len(data) != size:
            raise TruncatedDataError(
                f"{self.payload_name}: content of {entry.path!r} truncated at offset {pos}"
            )
        return data

    def readlink(self, entry: Entry) -> bytes:
        if not entry.is_symlink or entry.link_target is None:
            raise UsageError(f"{self.name}: {entry.path!r} is not a symbolic link")
        return entry.link_target

    def resolve_hardlink(self, entry: Entry) -> Entry:
        """The regular file a hard link names.

        The stored offset is authoritative (it is what upstream's accessor follows); if it does not
        lead to a regular file, the stored path is tried, as PBS extraction uses it. Chains are
        followed a bounded number of hops; offsets shrink strictly so they cannot loop.
        """
        if not entry.is_hardlink:
            return entry
        current = entry
        for _ in range(_MAX_HARDLINK_HOPS):
            try:
                target = self._follow_hardlink_offset(current)
            except SnapfsError as offset_error:
                target = self._follow_hardlink_path(current, offset_error)
            if not target.is_hardlink:
                if not target.is_file:
                    raise CorruptDataError(
                        f"{self.name}: hard link {entry.path!r} at offset {entry.entry_offset} "
                        f"points to a {target.kind.value}, not a regular file"
                    )
                return target
            current = target
        raise CorruptDataError(
            f"{self.name}: hard link {entry.path!r} at offset {entry.entry_offset} "
            f"is a chain of more than {_MAX_HARDLINK_HOPS} links"
        )

    def walk(
        self, directory: Entry | None = None, *, on_error: ErrorHandler | None = None
    ) -> Iterator[Entry]:
        """Every entry below `directory` (default: the root, itself included), depth-first pre-order.

        Iterative, so depth is limited by memory only; directory ranges nest strictly, so even a
        hostile archive cannot make it revisit a directory.
        """
        start = self._root if directory is None else directory
        yield start
        if not start.is_dir:
            return
        stack: list[Iterator[Entry]] = []
        try:
            stack.append(self.listdir(start, on_error=on_error))
        except SnapfsError as exc:
            if on_error is None:
                raise
            on_error(exc)
            return
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            yield child
            if child.is_dir:
                try:
                    stack.append(self.listdir(child, on_error=on_error))
                except SnapfsError as exc:
                    if on_error is None:
                        raise
                    on_error(exc)

    # --- reading ------------------------------------------------------------------------------

    def _read(self, pos: int, size: int) -> bytes:
        try:
            data = self.archive.read_at(pos, size)
        except (ValueError, OSError) as exc:
            raise CorruptDataError(
                f"{self.name}: cannot read {size} bytes at offset {pos}: {exc}"
            ) from exc
        self.stats.reads += 1
        self.stats.bytes += len(data)
        return data

    def _read_exact(self, pos: int, size: int) -> bytes:
        data = self._read(pos, size)
        if len(data) != size:
            raise TruncatedDataError(f"{self.name}: archive ends before offset {pos + size}")
        return data

    # --- archive start and root ---------------------------------------------------------------

    def _read_version(self) -> tuple[int, bytes | None, int]:
        """Detect the format: (version, prelude, offset of the root ENTRY)."""
        total = self.archive.size
        if total < fmt.ENTRY_V1_FULL_SIZE + 40:
            raise TruncatedDataError(f"{self.name}: {total} bytes is too small for a pxar archive")
        head = self._read_exact(0, fmt.HEADER_SIZE)
        htype, _ = _HDR(head)
        if htype in (fmt.PXAR_ENTRY, fmt.PXAR_ENTRY_V1):
            return 1, None, 0
        if htype != fmt.PXAR_FORMAT_VERSION:
            raise BadMagicError(
                f"{self.name}: not a pxar archive (first item {fmt.htype_name(htype)})"
            )
        fmt.parse_header(head, where=self.name, pos=0)
        version = _U64(self._read_exact(fmt.HEADER_SIZE, 8))[0]
        if version not in (1, 2):
            raise UnsupportedFormatError(
                f"{self.name}: unknown pxar format version {version} at offset 0"
            )
        pos = fmt.FORMAT_VERSION_FULL_SIZE
        hdr = fmt.parse_header(self._read_exact(pos, fmt.HEADER_SIZE), where=self.name, pos=pos)
        prelude = None
        if hdr.htype == fmt.PXAR_PRELUDE:
            if pos + hdr.full_size > total:
                raise TruncatedDataError(f"{self.name}: prelude at offset {pos} runs past the end")
            prelude = self._read_exact(pos + fmt.HEADER_SIZE, hdr.content_size)
            pos += hdr.full_size
        return version, prelude, pos

    def _decode_root(self, root_start: int) -> Entry:
        root_stub = Entry(
            path=b"/", name=b"", kind=EntryKind.DIRECTORY, mode=fmt.S_IFDIR, uid=0, gid=0, mtime_ns=0, flags=0,
            size=0, xattrs=(), acl=None, fcaps=None, quota_project_id=None, link_target=None, device=None,
            entry_offset=0, entry_end=self.archive.size, content_offset=None,
        )  # fmt: skip
        d = self._open_dir(root_stub)
        cur = _Cursor(self, d.goodbye_start, _ENTRY_WINDOW)
        entry = self._decode_body(
            cur, b"/", b"", 0, root_start, d.goodbye_start, dir_end=self.archive.size
        )
        if not entry.is_dir:
            raise CorruptDataError(
                f"{self.name}: root entry at offset {root_start} is not a directory"
            )
        return entry

    # --- directories --------------------------------------------------------------------------

    def _open_dir(self, directory: Entry) -> _Directory:
        """Read and validate a directory's goodbye table from its end offset (§11.7)."""
        if not directory.is_dir:
            raise NotFoundError(f"{self.name}: {directory.path!r} is not a directory")
        end = directory.entry_end
        key = (directory.entry_offset, end)
        cached = self._dir_cache.get(key)
        if cached is not None:
            self._dir_cache.move_to_end(key)
            return cached
        is_root = directory.entry_offset == 0
        # ENTRY header position: for the root always 0 (even in v2), else right after FILENAME.
        expect_e = (
            0 if is_root else directory.entry_offset + fmt.HEADER_SIZE + len(directory.name) + 1
        )
        where = f"{self.name}: directory {directory.path!r} ending at offset {end}"
        if end > self.archive.size:
            raise TruncatedDataError(
                f"{where}: past the end of the archive ({self.archive.size} bytes)"
            )
        span = end - expect_e
        if span < fmt.ENTRY_V1_FULL_SIZE + 40:
            raise CorruptDataError(f"{where}: range of {span} bytes is too small")
        window = min(span, _GOODBYE_WINDOW)
        tail_block = self._read_exact(end - window, window)
        th, to, ts = _GB(tail_block, window - _GB_SIZE)
        if th != fmt.PXAR_GOODBYE_TAIL_MARKER:
            raise CorruptDataError(f"{where}: no goodbye tail marker at offset {end - _GB_SIZE}")
        if (
            ts < 40
            or (ts - 16) % _GB_SIZE
            or ts > span - fmt.ENTRY_V1_FULL_SIZE
            or ts > _MAX_GOODBYE_SIZE
        ):
            raise CorruptDataError(
                f"{where}: bad goodbye table size {ts} at offset {end - _GB_SIZE}"
            )
        g = end - ts
        if to != g - expect_e:
            raise CorruptDataError(
                f"{where}: goodbye tail at offset {end - _GB_SIZE} points to {g - to}, not the ENTRY at {expect_e}"
            )
        table = tail_block[window - ts :] if ts <= window else self._read_exact(g, ts)
        htype, full_size = _HDR(table)
        if htype != fmt.PXAR_GOODBYE or full_size != ts:
            raise CorruptDataError(f"{where}: no GOODBYE item of {ts} bytes at offset {g}")
        body = table[fmt.HEADER_SIZE : ts - _GB_SIZE]
        d = _Directory(
            entry_start=expect_e, goodbye_start=g, table=body, count=len(body) // _GB_SIZE
        )
        self._cache_dir(key, d)
        return d

    def _cache_dir(self, key: tuple[int, int], d: _Directory) -> None:
        size = len(d.table)
        if size > _DIR_CACHE_BYTES // 4:
            return
        self._dir_cache[key] = d
        self._dir_cache_bytes += size
        while len(self._dir_cache) > _DIR_CACHE_ENTRIES or self._dir_cache_bytes > _DIR_CACHE_BYTES:
            _, old = self._dir_cache.popitem(last=False)
            self._dir_cache_bytes -= len(old.table)

    def _child_start(self, d: _Directory, roff: int) -> int:
        """FILENAME position named by a goodbye record; it must lie inside the directory body."""
        f = d.goodbye_start - roff
        if roff > d.goodbye_start or f < d.entry_start + fmt.ENTRY_V1_FULL_SIZE:
            raise CorruptDataError(
                f"{self.name}: goodbye record in table at offset {d.goodbye_start} points outside "
                f"its directory (offset {roff})"
            )
        return f

    def _records_in_archive_order(self, d: _Directory) -> tuple[list[tuple[int, int]], list[int]]:
        """Child records as (FILENAME offset, record size) sorted by position,
        and the record offsets that point outside the directory."""
        g = d.goodbye_start
        lowest = d.entry_start + fmt.ENTRY_V1_FULL_SIZE
        records = []
        bad: list[int] = []
        for _h, roff, rsize in fmt.GOODBYE_ITEM.iter_unpack(d.table):
            f = g - roff
            if roff > g or f < lowest:
                bad.append(roff)
                continue
            records.append((f, rsize))
        records.sort()
        return records, bad

    # --- entries ------------------------------------------------------------------------------

    def _decode_child(
        self,
        cur: _Cursor,
        parent_path: bytes,
        d: _Directory,
        f: int,
        rsize: int,
        *,
        expect_name: bytes | None = None,
    ) -> Entry | None:
        """Decode the child whose FILENAME is at `f`; None if `expect_name` is given and differs."""
        g = d.goodbye_start
        hdr = cur.header(f)
        if hdr.htype != fmt.PXAR_FILENAME:
            raise CorruptDataError(
                f"{self.name}: expected FILENAME at offset {f}, found {fmt.htype_name(hdr.htype)}"
            )
        name = self._filename(cur, f, hdr)
        if expect_name is not None and name != expect_name:
            return None
        path = b"/" + name if parent_path == b"/" else parent_path + b"/" + name
        dir_end = f + rsize
        if rsize <= 0 or dir_end > g:
            dir_end = None  # only a directory needs it; a file's size may overshoot (§11.7)
        return self._decode_body(cur, path, name, f, f + hdr.full_size, g, dir_end=dir_end)

    def _filename(self, cur: _Cursor, pos: int, hdr: fmt.Header) -> bytes:
        raw = bytes(cur.content(pos, hdr))
        if not raw or raw[-1] != 0:
            raise CorruptDataError(f"{self.name}: FILENAME at offset {pos} is not NUL-terminated")
        name = raw[:-1]
        fmt.validate_filename(name, where=self.name, pos=pos)
        return name

    def _decode_body(
        self,
        cur: _Cursor,
        path: bytes,
        name: bytes,
        entry_offset: int,
        pos: int,
        limit: int,
        *,
        dir_end: int | None,
    ) -> Entry:
        """Decode HARDLINK, or ENTRY + metadata + kind item, starting at `pos` (§11.3).

        `limit` is where the enclosing directory's goodbye table starts; `dir_end` the end the
        parent's record gives, trusted only if this turns out to be a directory.
        """
        where = self.name
        hdr = cur.header(pos)
        if hdr.htype == fmt.PXAR_HARDLINK:
            raw = bytes(cur.content(pos, hdr))
            if len(raw) <= 8 or raw[-1] != 0:
                raise CorruptDataError(f"{where}: malformed HARDLINK at offset {pos}")
            return _plain_entry(
                path,
                name,
                EntryKind.HARDLINK,
                entry_offset,
                pos + hdr.full_size,
                link_target=raw[8:-1],
            )
        if hdr.htype == fmt.PXAR_ENTRY:
            mode, flags, uid, gid, secs, nanos, _pad = fmt.STAT_V2.unpack_from(
                cur.content(pos, hdr)
            )
            if nanos >= _NS:
                raise CorruptDataError(
                    f"{where}: mtime nanoseconds {nanos} out of range at offset {pos}"
                )
            mtime_ns = secs * _NS + nanos
        elif hdr.htype == fmt.PXAR_ENTRY_V1:
            mode, flags, uid, gid, mtime_ns = fmt.STAT_V1.unpack_from(cur.content(pos, hdr))
        else:
            raise CorruptDataError(
                f"{where}: expected ENTRY at offset {pos}, found {fmt.htype_name(hdr.htype)}"
            )
        pos += hdr.full_size
        meta = _EntryBuilder()
        size = 0
        content_offset: int | None = None
        link_target: bytes | None = None
        device: tuple[int, int] | None = None
        while True:
            hdr = None if pos >= limit else cur.header(pos)
            htype = None if hdr is None else hdr.htype
            if htype in _METADATA_TYPES:
                meta.add(htype, cur.content(pos, hdr), where, pos)
                pos += hdr.full_size
                continue
            end = pos
            if htype == fmt.PXAR_PAYLOAD:
                if self.format_version != 1:
                    raise CorruptDataError(
                        f"{where}: inline PAYLOAD in a split metadata archive at offset {pos}"
                    )
                end = pos + hdr.full_size
                if end > limit:
                    raise CorruptDataError(
                        f"{where}: PAYLOAD at offset {pos} of {hdr.full_size} bytes crosses its directory"
                    )
                kind, size, content_offset = EntryKind.FILE, hdr.content_size, pos + fmt.HEADER_SIZE
            elif htype == fmt.PXAR_PAYLOAD_REF:
                if self.format_version != 2:
                    raise CorruptDataError(
                        f"{where}: PAYLOAD_REF in a unified archive at offset {pos}"
                    )
                poff, size = fmt.PAYLOAD_REF.unpack_from(cur.content(pos, hdr))
                kind, content_offset, end = (
                    EntryKind.FILE,
                    poff + fmt.HEADER_SIZE,
                    pos + hdr.full_size,
                )
            elif htype == fmt.PXAR_SYMLINK:
                raw = bytes(cur.content(pos, hdr))
                if not raw or raw[-1] != 0:
                    raise CorruptDataError(
                        f"{where}: SYMLINK at offset {pos} is not NUL-terminated"
                    )
                kind, link_target, end = EntryKind.SYMLINK, raw[:-1], pos + hdr.full_size
            elif htype == fmt.PXAR_DEVICE:
                device = fmt.DEVICE.unpack_from(cur.content(pos, hdr))
                kind, end = EntryKind.DEVICE, pos + hdr.full_size
            elif htype in (fmt.PXAR_FILENAME, fmt.PXAR_GOODBYE, None):
                ftype = mode & fmt.S_IFMT
                if ftype == fmt.S_IFIFO:
                    kind = EntryKind.FIFO
                elif ftype == fmt.S_IFSOCK:
                    kind = EntryKind.SOCKET
                elif htype is None and dir_end is None:
                    raise CorruptDataError(
                        f"{where}: entry at offset {entry_offset} ends without a kind item"
                    )
                elif dir_end is None or dir_end <= pos:
                    raise CorruptDataError(
                        f"{where}: directory entry at offset {entry_offset} has a size outside its parent"
                    )
                else:
                    kind, end = EntryKind.DIRECTORY, dir_end
            else:
                raise CorruptDataError(
                    f"{where}: unexpected {fmt.htype_name(htype)} item at offset {pos}"
                )
            break
        expected_modes = _KIND_MODES.get(kind)
        if expected_modes is not None and mode & fmt.S_IFMT not in expected_modes:
            raise CorruptDataError(
                f"{where}: mode {mode:#o} does not match {kind.value} entry at offset {entry_offset}"
            )
        return Entry(
            path=path,
            name=name,
            kind=kind,
            mode=mode,
            uid=uid,
            gid=gid,
            mtime_ns=mtime_ns,
            flags=flags,
            size=size,
            xattrs=tuple(meta.xattrs),
            acl=meta.acl(),
            fcaps=meta.fcaps,
            quota_project_id=meta.quota,
            link_target=link_target,
            device=device,
            entry_offset=entry_offset,
            entry_end=end,
            content_offset=content_offset,
        )

    # --- hard links ---------------------------------------------------------------------------

    def _follow_hardlink_offset(self, link: Entry) -> Entry:
        f = link.entry_offset
        cur = _Cursor(self, self.archive.size, _ENTRY_WINDOW)
        hdr = cur.header(f)
        if hdr.htype != fmt.PXAR_FILENAME:
            raise CorruptDataError(f"{self.name}: expected FILENAME of hard link at offset {f}")
        pos = f + hdr.full_size
        hdr = cur.header(pos)
        if hdr.htype != fmt.PXAR_HARDLINK:
            raise CorruptDataError(f"{self.name}: expected HARDLINK at offset {pos}")
        content = cur.content(pos, hdr)
        if len(content) <= 8:
            raise CorruptDataError(f"{self.name}: malformed HARDLINK at offset {pos}")
        rel = _U64(content)[0]
        if rel == 0 or rel > f:
            raise CorruptDataError(
                f"{self.name}: hard link at offset {f} has invalid target offset {rel}"
            )
        target_f = f - rel
        hdr = cur.header(target_f)
        if hdr.htype != fmt.PXAR_FILENAME:
            raise CorruptDataError(
                f"{self.name}: hard link at offset {f} points to no FILENAME at offset {target_f}"
            )
        name = self._filename(cur, target_f, hdr)
        path = _hardlink_path(link.link_target or b"", name)
        return self._decode_body(
            cur, path, name, target_f, target_f + hdr.full_size, self.archive.size, dir_end=None
        )

    def _follow_hardlink_path(self, link: Entry, offset_error: SnapfsError) -> Entry:
        target = link.link_target or b""
        try:
            found = self.lookup(target)
        except NotFoundError:
            raise offset_error from None
        if found.entry_offset == link.entry_offset or found.is_dir:
            raise offset_error
        return found

    # --- payload stream -----------------------------------------------------------------------

    def _payload_source(self, entry: Entry) -> ByteSource:
        if self.payload is None:
            raise NotFoundError(
                f"{self.name}: payload stream {self.payload_name} not supplied, "
                f"cannot read content of {entry.path!r}"
            )
        return self.payload

    def _read_payload(self, source: ByteSource, pos: int, size: int) -> bytes:
        try:
            data = source.read_at(pos, size)
        except (ValueError, OSError) as exc:
            raise CorruptDataError(
                f"{self.payload_name}: cannot read {size} bytes at offset {pos}: {exc}"
            ) from exc
        self.stats.payload_reads += 1
        self.stats.payload_bytes += len(data)
        return data

    def _check_payload_start(self) -> None:
        assert self.payload is not None
        head = self._read_payload(self.payload, 0, fmt.HEADER_SIZE)
        if len(head) != fmt.HEADER_SIZE or _HDR(head) != (
            fmt.PXAR_PAYLOAD_START_MARKER,
            fmt.HEADER_SIZE,
        ):
            raise BadMagicError(f"{self.payload_name}: no payload start marker at offset 0")

    def _check_payload_header(self, entry: Entry, source: ByteSource) -> None:
        """Verify the PAYLOAD header a PAYLOAD_REF points at (§11.8), once per offset."""
        assert entry.content_offset is not None
        pos = entry.content_offset - fmt.HEADER_SIZE
        if self._payload_checked.get(pos) == entry.size:
            return
        where = f"{self.payload_name}: payload of {entry.path!r} at offset {pos}"
        if pos < 0 or entry.content_offset + entry.size > source.size:
            raise CorruptDataError(f"{where} (size {entry.size}) lies outside the payload stream")
        head = self._read_payload(source, pos, fmt.HEADER_SIZE)
        if len(head) != fmt.HEADER_SIZE:
            raise TruncatedDataError(f"{where}: truncated PAYLOAD header")
        htype, full_size = _HDR(head)
        if htype != fmt.PXAR_PAYLOAD or full_size - fmt.HEADER_SIZE != entry.size:
            raise CorruptDataError(
                f"{where}: expected PAYLOAD of {entry.size} bytes, found {fmt.htype_name(htype)} of {full_size - 16}"
            )
        self._payload_checked[pos] = entry.size
        if len(self._payload_checked) > _PAYLOAD_CHECK_CACHE:
            self._payload_checked.popitem(last=False)


def _hardlink_path(stored: bytes, name: bytes) -> bytes:
    """Archive path of a hard-link target from its stored path (relative in PBS, absolute in tests)."""
    parts = [p for p in stored.split(b"/") if p and p != b"."]
    if not parts:
        return b"/" + name
    return b"/" + b"/".join(parts)


def _plain_entry(
    path: bytes,
    name: bytes,
    kind: EntryKind,
    entry_offset: int,
    entry_end: int,
    *,
    link_target: bytes,
) -> Entry:
    return Entry(
        path=path,
        name=name,
        kind=kind,
        mode=0,
        uid=0,
        gid=0,
        mtime_ns=0,
        flags=0,
        size=0,
        xattrs=(),
        acl=None,
        fcaps=None,
        quota_project_id=None,
        link_target=link_target,
        device=None,
        entry_offset=entry_offset,
        entry_end=entry_end,
        content_offset=None,
    )
