"""Random-access reader for pxar archives: unified (v1) `.pxar` and split (v2) `.mpxar` + `.ppxar`.

Everything is found through goodbye tables (docs/formats.md §11.7), so a lookup costs a few
small reads per path component and nothing is ever read whole. Archives are untrusted: every offset
is checked against the range it must lie in before it is followed, directory ranges must shrink
strictly with depth and siblings' ranges must not overlap, so hostile input ends in a
`CorruptDataError` naming the archive and offset, never in a hang or unbounded memory.

goodbye.py reads and checks the tables, decode.py the entries; this module walks between them.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
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
from snapfs.pxar.decode import Cursor, decode_entry_items, decode_filename, decode_regular_file
from snapfs.pxar.entry import Entry, EntryKind
from snapfs.pxar.goodbye import (
    GoodbyeTable,
    child_start,
    read_goodbye_table,
    records_in_archive_order,
    records_with_hash,
)

ErrorHandler = Callable[[SnapfsError], None]

_HDR = fmt.HEADER.unpack_from
_U64 = fmt.U64.unpack_from

#: Bytes fetched at once when decoding an entry: FILENAME + ENTRY + typical metadata fit.
_ENTRY_WINDOW = 1024
#: Listing decodes consecutive siblings, so one larger window serves many of them.
_LIST_WINDOW = 16 * 1024
_MAX_HARDLINK_HOPS = 16
_DIR_CACHE_ENTRIES = 256
_DIR_CACHE_BYTES = 16 * 1024 * 1024
_PAYLOAD_CHECK_CACHE = 4096


@dataclass
class ReadStats:
    """How much a caller made us read; lets tests and benchmarks assert lookup costs."""

    reads: int = 0
    bytes: int = 0
    payload_reads: int = 0
    payload_bytes: int = 0


def _read_at(
    source: ByteSource, name: str, pos: int, size: int, *, view: bool = False
) -> bytes | memoryview:
    """`source.read_at`, a failing read (a bad offset, a dead disk) reported as corrupt data;
    with `view`, the source's `view_at` where it has one (no copy within one chunk)."""
    read = getattr(source, "view_at", source.read_at) if view else source.read_at
    try:
        return read(pos, size)
    except (ValueError, OSError) as exc:
        raise CorruptDataError(f"{name}: cannot read {size} bytes at offset {pos}: {exc}") from exc


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
        self._dir_cache: OrderedDict[tuple[int, int], GoodbyeTable] = OrderedDict()
        self._dir_cache_bytes = 0
        self._payload_checked: OrderedDict[int, int] = OrderedDict()
        self.format_version, self.prelude, self.root_start = self._read_version()
        if self.format_version == 2 and payload is not None:
            self._check_payload_start()
        self._root = self._decode_root(self.root_start)

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
        best: Entry | None = None
        for roff, rsize in records_with_hash(d, fmt.filename_hash(name)):
            f = child_start(d, roff, self.name)
            if best is not None and f >= best.entry_offset:
                continue
            cur = self._cursor(d.goodbye_start, _ENTRY_WINDOW)
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
        return self._decode_records(directory, d, self._records(directory, d, on_error), on_error)

    def records(
        self, directory: Entry, *, on_error: ErrorHandler | None = None
    ) -> list[tuple[int, int]]:
        """The children as (FILENAME offset, the size their goodbye record gives), in archive
        order, none decoded: one read of the directory's goodbye table, where listing a v1
        directory decodes the chunks its children lie in. A record pointing outside the
        directory raises, or with `on_error` is reported there and left out."""
        return self._records(directory, self._open_dir(directory), on_error)

    def children_at(
        self,
        directory: Entry,
        offsets: Sequence[int],
        *,
        on_error: ErrorHandler | None = None,
    ) -> Iterator[Entry]:
        """The children at `offsets` (FILENAME offsets from `records`, in archive order),
        decoded and checked as `listdir` decodes and checks them: a run of siblings a worker
        decodes for itself, the sibling before it decoded too to know where the run may start."""
        d = self._open_dir(directory)
        records, _ = records_in_archive_order(d)  # `records` reported the bad ones
        sizes = dict(records)
        wanted = []
        for f in offsets:
            if f not in sizes:
                raise CorruptDataError(
                    f"{self.name}: no goodbye record of {directory.path!r} names offset {f}"
                )
            wanted.append((f, sizes[f]))
        covered = None  # after the directory's own ENTRY, unless a sibling comes before
        first = bisect.bisect_left(records, (offsets[0],)) if offsets else 0
        with contextlib.suppress(SnapfsError):  # its own restore reports it; it bounds nothing
            for previous in self._decode_records(directory, d, records[first - 1 : first], None):
                covered = previous.entry_end
        return self._decode_records(directory, d, wanted, on_error, covered=covered)

    def _records(
        self, directory: Entry, d: GoodbyeTable, on_error: ErrorHandler | None
    ) -> list[tuple[int, int]]:
        records, bad = records_in_archive_order(d)
        for roff in bad:
            exc = CorruptDataError(
                f"{self.name}: goodbye record in table at offset {d.goodbye_start} of {directory.path!r} "
                f"points outside its directory (offset {roff})"
            )
            if on_error is None:
                raise exc
            on_error(exc)
        return records

    def _decode_records(
        self,
        directory: Entry,
        d: GoodbyeTable,
        records: list[tuple[int, int]],
        on_error: ErrorHandler | None,
        *,
        covered: int | None = None,
    ) -> Iterator[Entry]:
        """The children `records` name, decoded in turn; `covered` is where the first may start
        (default: after the directory's own ENTRY)."""
        cur = self._cursor(d.goodbye_start, _LIST_WINDOW)
        parent_path = directory.path
        if covered is None:
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
        data = self.read_view(entry, offset, size)
        return data if isinstance(data, bytes) else data.tobytes()

    def read_view(self, entry: Entry, offset: int, size: int) -> bytes | memoryview:
        """`read` without a copy where the source allows (bytes within one chunk of an index
        stream: a view on the decoded chunk, to be used at once, not kept)."""
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
            data = self.read_archive(pos, size, view=True)
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
        opening = start if start.is_dir else None  # the directory to descend into next
        stack: list[Iterator[Entry]] = []
        while True:
            if opening is not None:
                try:
                    stack.append(self.listdir(opening, on_error=on_error))
                except SnapfsError as exc:
                    if on_error is None:
                        raise
                    on_error(exc)
            if not stack:
                return
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                opening = None
                continue
            yield child
            opening = child if child.is_dir else None

    # --- reading ------------------------------------------------------------------------------

    def read_archive(self, pos: int, size: int, *, view: bool = False) -> bytes | memoryview:
        """Up to `size` bytes of the archive (the metadata stream of a split one) at `pos`; with
        `view`, a memoryview where the source gives one without a copy (file content of a v1
        archive, read by `read_view`)."""
        data = _read_at(self.archive, self.name, pos, size, view=view)
        self.stats.reads += 1
        self.stats.bytes += len(data)
        return data

    def _cursor(self, limit: int, window: int) -> Cursor:
        return Cursor(self.read_archive, self.archive.size, self.name, limit, window)

    def _read_exact(self, pos: int, size: int) -> bytes:
        data = self.read_archive(pos, size)
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
        root_stub = Entry.without_metadata(
            b"/", b"", EntryKind.DIRECTORY, 0, self.archive.size, mode=fmt.S_IFDIR
        )
        d = self._open_dir(root_stub)
        cur = self._cursor(d.goodbye_start, _ENTRY_WINDOW)
        entry = decode_entry_items(
            cur,
            b"/",
            b"",
            0,
            root_start,
            d.goodbye_start,
            dir_end=self.archive.size,
            version=self.format_version,
            where=self.name,
        )[0]
        if not entry.is_dir:
            raise CorruptDataError(
                f"{self.name}: root entry at offset {root_start} is not a directory"
            )
        return entry

    # --- directories --------------------------------------------------------------------------

    def _open_dir(self, directory: Entry) -> GoodbyeTable:
        """Read and validate a directory's goodbye table from its end offset (§11.7)."""
        if not directory.is_dir:
            raise NotFoundError(f"{self.name}: {directory.path!r} is not a directory")
        key = (directory.entry_offset, directory.entry_end)
        cached = self._dir_cache.get(key)
        if cached is not None:
            self._dir_cache.move_to_end(key)
            return cached
        d = read_goodbye_table(directory, self._read_exact, self.archive.size, self.name)
        self._cache_dir(key, d)
        return d

    def _cache_dir(self, key: tuple[int, int], d: GoodbyeTable) -> None:
        size = len(d.table)
        if size > _DIR_CACHE_BYTES // 4:
            return
        self._dir_cache[key] = d
        self._dir_cache_bytes += size
        while len(self._dir_cache) > _DIR_CACHE_ENTRIES or self._dir_cache_bytes > _DIR_CACHE_BYTES:
            _, old = self._dir_cache.popitem(last=False)
            self._dir_cache_bytes -= len(old.table)

    # --- entries ------------------------------------------------------------------------------

    def _decode_child(
        self,
        cur: Cursor,
        parent_path: bytes,
        d: GoodbyeTable,
        f: int,
        rsize: int,
        *,
        expect_name: bytes | None = None,
    ) -> Entry | None:
        """Decode the child whose FILENAME is at `f`; None if `expect_name` is given and differs."""
        g = d.goodbye_start
        entry = decode_regular_file(cur, f, parent_path, g, self.format_version)
        if entry is not None:
            return entry if expect_name is None or entry.name == expect_name else None
        hdr = cur.header(f)
        if hdr.htype != fmt.PXAR_FILENAME:
            raise CorruptDataError(
                f"{self.name}: expected FILENAME at offset {f}, found {fmt.htype_name(hdr.htype)}"
            )
        name = decode_filename(cur, f, hdr, self.name)
        if expect_name is not None and name != expect_name:
            return None
        path = b"/" + name if parent_path == b"/" else parent_path + b"/" + name
        dir_end = f + rsize
        if rsize <= 0 or dir_end > g:
            dir_end = None  # only a directory needs it; a file's size may overshoot (§11.7)
        return decode_entry_items(
            cur,
            path,
            name,
            f,
            f + hdr.full_size,
            g,
            dir_end=dir_end,
            version=self.format_version,
            where=self.name,
        )[0]

    # --- hard links ---------------------------------------------------------------------------

    def _follow_hardlink_offset(self, link: Entry) -> Entry:
        f = link.entry_offset
        cur = self._cursor(self.archive.size, _ENTRY_WINDOW)
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
        name = decode_filename(cur, target_f, hdr, self.name)
        path = _hardlink_path(link.link_target or b"", name)
        return decode_entry_items(
            cur,
            path,
            name,
            target_f,
            target_f + hdr.full_size,
            self.archive.size,
            dir_end=None,
            version=self.format_version,
            where=self.name,
        )[0]

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
        data = _read_at(source, self.payload_name, pos, size)
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
        if pos < 0 or entry.content_offset + entry.size > source.size:
            raise CorruptDataError(
                f"{self.payload_name}: payload of {entry.path!r} at offset {pos} "
                f"(size {entry.size}) lies outside the payload stream"
            )
        check_payload_header(
            entry, self._read_payload(source, pos, fmt.HEADER_SIZE), self.payload_name
        )
        self._payload_checked[pos] = entry.size
        if len(self._payload_checked) > _PAYLOAD_CHECK_CACHE:
            self._payload_checked.popitem(last=False)


def check_payload_header(entry: Entry, head: bytes | memoryview, payload_name: str) -> None:
    """Raise unless `head`, the bytes just before a split archive's file content, is the PAYLOAD
    header of exactly that content (§11.8): a PAYLOAD_REF that points anywhere else is refused."""
    assert entry.content_offset is not None
    where = (
        f"{payload_name}: payload of {entry.path!r} at offset "
        f"{entry.content_offset - fmt.HEADER_SIZE}"
    )
    if len(head) != fmt.HEADER_SIZE:
        raise TruncatedDataError(f"{where}: truncated PAYLOAD header")
    if not fmt.is_payload_header(head, entry.size):
        htype, full_size = _HDR(head)
        raise CorruptDataError(
            f"{where}: expected PAYLOAD of {entry.size} bytes, found {fmt.htype_name(htype)} of {full_size - 16}"
        )


def _hardlink_path(stored: bytes, name: bytes) -> bytes:
    """Archive path of a hard-link target from its stored path (relative in PBS, absolute in tests)."""
    parts = [p for p in stored.split(b"/") if p and p != b"."]
    if not parts:
        return b"/" + name
    return b"/" + b"/".join(parts)
