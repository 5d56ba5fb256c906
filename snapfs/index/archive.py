"""ArchiveIndex: the metadata of one pxar archive, every entry, in an SQLite file.

Why: a unified (v1) archive interleaves metadata with file contents, so listing its directories
decodes nearly every chunk of it, again on every mount. One front-to-back pass (pxar/scan.py)
records every entry (name, kind, mode, owner, size, times, offsets, hard-link targets, xattrs and
ACLs); after it, lookups, listings and opens are answered from the index and decode no chunk at
all. A split archive's index is built from its metadata stream alone.

Each directory's listing is also kept whole, packed as one msgpack value (`listings`): a walk
reads every listing, and building 100,000 entries' Python values from SQLite's columns took
0.4 s, from one packed value per directory 0.09 s.

The file is named by the archive's index checksum (which covers every chunk digest of the
archive), so a rebuilt archive never meets a stale index and an archive seen in another
snapshot, mount or datastore reuses it. It is written to a temporary name and renamed, mode
0600, so a crash or a concurrent builder never leaves a half-written index under the real name.
An index whose schema or contents do not check out is ignored and built again.

Encrypted archives are indexed in memory only (`path=None`): their names and paths never reach
the disk in plain text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from typing import NamedTuple

import msgpack

from snapfs.errors import CorruptDataError, SnapfsError
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Acl, Entry, EntryKind
from snapfs.pxar.format import HEADER_SIZE
from snapfs.pxar.scan import scan

log = logging.getLogger("snapfs.index")

__all__ = [
    "SCHEMA_VERSION",
    "ArchiveIndex",
    "BuildCancelled",
    "BuildProgress",
    "Extra",
    "entry_extra",
    "index_file_name",
    "parse_extra",
    "remove_other_schemas",
]

#: Bumped whenever the tables change: an index of another version is built again.
#: 3: a split archive's files are indexed by content offset too (`files_within`).
#: 4: each directory's listing packed whole (`listings`).
SCHEMA_VERSION = 4
_INSERT_BATCH = 10_000
#: Bytes of packed listings written at a time while building.
_LISTING_BATCH_BYTES = 4 << 20
#: How far before its content `files_within` looks for a file's entry (see there).
_ITEMS_BEFORE_CONTENT = 64 * 1024

_KINDS = tuple(EntryKind)
_KIND_CODE = {kind: code for code, kind in enumerate(_KINDS)}
_FILE_CODE = _KIND_CODE[EntryKind.FILE]

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE entries (
    offset INTEGER PRIMARY KEY,  -- the entry's FILENAME offset (0: the root); its inode key
    parent INTEGER NOT NULL,     -- the parent directory's offset (-1 for the root)
    name BLOB NOT NULL,
    path BLOB NOT NULL,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    size INTEGER NOT NULL,
    entry_end INTEGER NOT NULL,
    content_offset INTEGER,      -- file bytes: in the archive (v1) or the payload stream (v2)
    link BLOB,                   -- symlink target; a hard link's stored path
    device TEXT,                 -- "major:minor" of a device node
    extra TEXT,                  -- JSON: xattrs, ACL, fcaps, quota project id (rare)
    target INTEGER               -- a hard link: the offset of the file it names
);
CREATE TABLE listings (
    directory INTEGER PRIMARY KEY,  -- the directory's offset
    entries INTEGER NOT NULL,       -- how many it lists
    packed BLOB NOT NULL            -- msgpack: [[name, *_ENTRY_COLUMNS], ...], hard links resolved
);
"""
_INDEXES = """
CREATE INDEX by_name ON entries (parent, name);
CREATE INDEX by_target ON entries (target) WHERE target IS NOT NULL;
"""
#: A split archive's files by where their content lies in the payload stream.
_BY_CONTENT = "CREATE INDEX by_content ON entries (content_offset) WHERE size > 0"
#: What an Entry is made of (`_entry`), in this order.
_ENTRY_COLUMNS = (
    "offset",
    "name",
    "path",
    "kind",
    "mode",
    "uid",
    "gid",
    "mtime_ns",
    "flags",
    "size",
    "entry_end",
    "content_offset",
    "link",
    "device",
    "extra",
)
_ROW_COLUMNS = ("parent", "target", *_ENTRY_COLUMNS)  # what `_row` gives
#: A hard link's row joined with its target's: the listing shows the target under the link's name.
_RESOLVED = (
    f"SELECT e.name, {', '.join('t.' + c for c in _ENTRY_COLUMNS)} "
    "FROM entries e JOIN entries t ON t.offset = coalesce(e.target, e.offset) "
)


def index_file_name(index_csum: bytes) -> str:
    """The file an archive's index is kept in, inside the index directory."""
    return f"{index_csum.hex()}.v{SCHEMA_VERSION}.sqlite"


def remove_other_schemas(directory: str, index_csum: bytes) -> None:
    """This archive's index files of another schema version are never read again (an upgrade
    built this one): they go, so upgrades do not leave the index folder growing."""
    kept = index_file_name(index_csum)
    prefix = f"{index_csum.hex()}.v"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".sqlite") and name != kept:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError as exc:
                log.debug("%s: an old index is left: %s", name, exc)


#: A directory's children in archive order as (name, entry), hard links resolved.
Listing = tuple[tuple[bytes, Entry], ...]


class ListingsAfter(NamedTuple):
    """What `ArchiveIndex.listings_after` read: (offset, listing) of each directory in archive
    order, and the offset the next range starts after (None: the archive's end was reached)."""

    listings: list[tuple[int, Listing]]
    read_to: int | None


class ArchiveIndex:
    """Every entry of one pxar archive, by offset and by (directory, name). Thread-safe."""

    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self._db = db
        self._lock = threading.Lock()
        self.name = name
        self.entries = self._one("SELECT count(*) FROM entries")[0]
        #: 1 for a unified archive, 2 for a split one (`files_within` reads each its own way).
        self.format_version = self._one("SELECT value FROM meta WHERE key = 'format_version'")[0]
        #: st_nlink of the files that hard links name (the others have 1); few, so kept here.
        self.nlinks: dict[int, int] = dict(
            db.execute(
                "SELECT target, count(*) + 1 FROM entries WHERE target IS NOT NULL GROUP BY target"
            )
        )

    # -- opening and building ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, *, name: str) -> ArchiveIndex | None:
        """The index kept at `path`, or None if there is none or it does not check out."""
        if not os.path.exists(path):
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if (
                meta.get("schema") != SCHEMA_VERSION
                or meta.get("complete") != 1
                or meta.get("format_version") not in (1, 2)
            ):
                db.close()
                return None
            return cls(db, name)
        except sqlite3.Error as exc:
            log.warning("%s: ignoring the metadata index %s: %s", name, path, exc)
            return None

    @classmethod
    def build(
        cls, accessor: Accessor, path: str | None, progress: BuildProgress | None = None
    ) -> ArchiveIndex:
        """Walk the whole archive once and record every entry; kept at `path` (None: memory).
        `progress` hears of each directory as soon as the walk has all of it.

        Raises the walk's SnapfsError if any entry cannot be decoded: an index never leaves an
        entry out.
        """
        progress = progress if progress is not None else BuildProgress()
        if path is None:
            db = sqlite3.connect(":memory:", check_same_thread=False)
            _fill(db, accessor, progress)
            return cls(db, accessor.name)
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".sqlite", dir=directory)
        os.close(fd)
        try:
            db = sqlite3.connect(tmp)
            try:
                _fill(db, accessor, progress)
            finally:
                db.close()
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        index = cls.load(path, name=accessor.name)
        if index is None:
            raise CorruptDataError(f"{accessor.name}: the metadata index {path} did not read back")
        return index

    # -- queries ----------------------------------------------------------------------------------

    def entry(self, offset: int) -> Entry | None:
        """The entry at this offset (a hard link as itself), None if there is none."""
        row = self._one(
            f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM entries WHERE offset = ?", (offset,)
        )
        return None if row is None else _entry(row)

    def child(self, directory: int, name: bytes) -> Entry | None:
        """The child `name` of the directory at offset `directory`, a hard link resolved; the
        earliest in the archive if a hostile archive repeats a name."""
        row = self._one(
            _RESOLVED + "WHERE e.parent = ? AND e.name = ? ORDER BY e.offset LIMIT 1",
            (directory, bytes(name)),
        )
        return None if row is None else _entry(row[1:])

    def listing(self, directory: int) -> Listing:
        """The directory's children in archive order as (name, entry), hard links resolved."""
        with self._lock, self._readable():
            return self._listing(directory)

    def _listing(self, directory: int) -> Listing:
        row = self._db.execute(
            "SELECT packed FROM listings WHERE directory = ?", (directory,)
        ).fetchone()
        return () if row is None else self._unpacked(directory, row[0])

    def listings_after(self, directory: int, max_entries: int) -> ListingsAfter:
        """The listings of the directories that come after the one at offset `directory` in the
        archive, in archive order: the listings a depth-first walk (find, du, tar) asks for
        next, each whole, about `max_entries` entries of them (at least one directory, however
        large: a 20,000-file directory is read once)."""
        listings: list[tuple[int, Listing]] = []
        read_to = None
        with self._lock, self._readable():
            cursor = self._db.execute(
                "SELECT directory, entries, packed FROM listings WHERE directory > ? "
                "ORDER BY directory",
                (directory,),
            )
            try:
                listed = 0
                for offset, entries, packed in cursor:
                    listings.append((offset, self._unpacked(offset, packed)))
                    listed += max(1, entries)  # a run of empty directories is bounded too
                    if listed >= max_entries:
                        read_to = offset
                        break
            finally:
                cursor.close()
        return ListingsAfter(listings, read_to)

    def _unpacked(self, directory: int, packed: bytes) -> Listing:
        """A `listings` row's listing; a damaged one is the index's named error."""
        try:
            return tuple(
                (row[0], _entry(row[1:]))
                for row in msgpack.unpackb(packed, use_list=False, raw=False)
            )
        except (ValueError, TypeError, IndexError, AttributeError, msgpack.UnpackException) as exc:
            raise CorruptDataError(
                f"{self.name}: the listing of the directory at offset {directory} in its "
                f"metadata index is damaged ({type(exc).__name__})"
            ) from None

    def files_within(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(entry_offset, content_offset, size) of the non-empty regular files whose content lies
        wholly in bytes [start, end) of the stream that holds it, in the order they lie there:
        the archive (v1), or the payload stream of a split archive, where the PAYLOAD header
        before each file's content must lie in the range too.

        In a v1 archive they are found by entry offset, which comes just before the content: a
        file whose items before its content (name, ENTRY, xattrs, ACL) span more than
        _ITEMS_BEFORE_CONTENT is left out.
        """
        if self.format_version == 1:
            sql = (
                "SELECT offset, content_offset, size FROM entries "
                "WHERE offset BETWEEN ? AND ? AND kind = ? AND size > 0 "
                "AND content_offset >= ? AND content_offset + size <= ? ORDER BY offset"
            )
            args = (max(0, start - _ITEMS_BEFORE_CONTENT), end, _FILE_CODE, start, end)
        else:
            sql = (
                "SELECT offset, content_offset, size FROM entries "
                "WHERE content_offset BETWEEN ? AND ? AND size > 0 AND kind = ? "
                "AND content_offset + size <= ? ORDER BY content_offset"
            )
            args = (start + HEADER_SIZE, end, _FILE_CODE, end)
        with self._lock, self._readable():
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock, self._readable():
            return self._db.execute(sql, args).fetchone()

    @contextlib.contextmanager
    def _readable(self) -> Iterator[None]:
        """An index file damaged under a running mount (a disk error) is the archive's error,
        named, not SQLite's exception from a FUSE request."""
        try:
            yield
        except sqlite3.Error as exc:
            raise CorruptDataError(
                f"{self.name}: its metadata index cannot be read: {exc}"
            ) from None


# -- building ---------------------------------------------------------------------------------------


class BuildCancelled(SnapfsError):
    """The build was told to stop (the mount is ending); nothing was kept."""


class BuildProgress:
    """What a build tells whoever waits for it; this one tells nobody.

    `directory_done(directory, listing)` is called from the building thread as soon as a
    directory's children are all decoded, with the listing `ArchiveIndex.listing` will give.
    `position` is the archive offset the walk has reached (it moves forward only).
    """

    position = 0
    #: Set from another thread to stop the walk: the build then raises BuildCancelled.
    cancelled = False

    def directory_done(self, directory: Entry, listing: tuple[tuple[bytes, Entry], ...]) -> None:
        pass


def _fill(db: sqlite3.Connection, accessor: Accessor, progress: BuildProgress) -> None:
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.executescript(_SCHEMA)
    try:
        _insert(db, _scanned_rows(accessor, progress, _ListingWriter(db)))
    except CorruptDataError as exc:
        # Not laid out as the encoder writes (see pxar/scan.py): walk it by its goodbye tables.
        log.info("%s: %s; indexing it directory by directory", accessor.name, exc)
        db.execute("DELETE FROM entries")
        db.execute("DELETE FROM listings")
        _insert(db, _walked_rows(accessor, progress, _ListingWriter(db)))
    db.executescript(_INDEXES)
    if accessor.format_version != 1:
        db.execute(_BY_CONTENT)
    db.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [
            ("schema", SCHEMA_VERSION),
            ("archive", accessor.name),
            ("format_version", accessor.format_version),
            ("complete", 1),
        ],
    )
    db.commit()


def _insert(db: sqlite3.Connection, rows: Iterator[tuple]) -> None:
    insert = (
        f"INSERT INTO entries ({', '.join(_ROW_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(_ROW_COLUMNS))})"
    )
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _INSERT_BATCH:
            db.executemany(insert, batch)
            batch.clear()
    db.executemany(insert, batch)


#: A child as a directory's `listings` row holds it: its name, then its entry's (the target's, for
#: a hard link) `_ENTRY_COLUMNS`.
_Child = tuple


class _ListingWriter:
    """Writes each directory's listing as one packed `listings` row as the build completes it,
    a few MiB at a time (the build holds the listings of the directories it is inside, no more)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._batch: list[tuple[int, int, bytes]] = []
        self._bytes = 0

    def add(self, directory: int, children: list[_Child]) -> None:
        packed = msgpack.packb(children, use_bin_type=True)
        self._batch.append((directory, len(children), packed))
        self._bytes += len(packed)
        if self._bytes >= _LISTING_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        self._db.executemany(
            "INSERT INTO listings (directory, entries, packed) VALUES (?, ?, ?)", self._batch
        )
        self._batch.clear()
        self._bytes = 0


def _scanned_rows(
    accessor: Accessor, progress: BuildProgress, listings: _ListingWriter
) -> Iterator[tuple]:
    """One row per entry (`_ROW_COLUMNS`), the archive read front to back (pxar/scan.py): a
    directory's row and its `directory_done` come once everything in it is done."""
    children: dict[int, list[tuple[bytes, Entry, _Child]]] = {}
    for entry, parent in scan(accessor):
        if progress.cancelled:
            raise BuildCancelled(f"{accessor.name}: indexing stopped")
        offset = entry.entry_offset
        row, resolved, child = _row_and_child(accessor, entry, parent)
        if parent >= 0:
            children.setdefault(parent, []).append((entry.name, resolved, child))
        if entry.kind is EntryKind.DIRECTORY:
            progress.position = entry.entry_end
            _directory_done(progress, listings, entry, children.pop(offset, []))
        else:
            progress.position = offset
        yield row
    listings.flush()


def _walked_rows(
    accessor: Accessor, progress: BuildProgress, listings: _ListingWriter
) -> Iterator[tuple]:
    """One row per entry (`_ROW_COLUMNS`), directory by directory through the goodbye tables."""
    # The directories the walk is inside, innermost last, with their children so far.
    open_dirs: list[tuple[Entry, list[tuple[bytes, Entry, _Child]]]] = []
    for entry in accessor.walk():
        if progress.cancelled:
            raise BuildCancelled(f"{accessor.name}: indexing stopped")
        offset = entry.entry_offset
        progress.position = offset
        while open_dirs and offset >= open_dirs[-1][0].entry_end:
            _directory_done(progress, listings, *open_dirs.pop())
        parent = open_dirs[-1][0].entry_offset if open_dirs else -1
        row, resolved, child = _row_and_child(accessor, entry, parent)
        if open_dirs:
            open_dirs[-1][1].append((entry.name, resolved, child))
        if entry.kind is EntryKind.DIRECTORY:
            open_dirs.append((entry, []))
        yield row
    while open_dirs:
        _directory_done(progress, listings, *open_dirs.pop())
    listings.flush()


def _row_and_child(accessor: Accessor, entry: Entry, parent: int) -> tuple[tuple, Entry, _Child]:
    """The entry's row, the entry its directory's listing shows for it (a hard link's target),
    and that listing's packed child."""
    resolved, target = _resolved(accessor, entry)
    row = _row(entry, parent, target)
    columns = row[2:] if target is None else _row(resolved, -1, None)[2:]
    return row, resolved, (entry.name, *columns)


def _directory_done(
    progress: BuildProgress,
    listings: _ListingWriter,
    directory: Entry,
    children: list[tuple[bytes, Entry, _Child]],
) -> None:
    progress.directory_done(directory, tuple((name, entry) for name, entry, _ in children))
    listings.add(directory.entry_offset, [child for _, _, child in children])


def _resolved(accessor: Accessor, entry: Entry) -> tuple[Entry, int | None]:
    """The entry a listing shows for `entry` (a hard link's target), and the target's offset."""
    if entry.kind is not EntryKind.HARDLINK:
        return entry, None
    target = accessor.resolve_hardlink(entry)
    return target, target.entry_offset


def _row(entry: Entry, parent: int, target: int | None) -> tuple:
    device = None if entry.device is None else f"{entry.device[0]}:{entry.device[1]}"
    return (
        parent,
        target,
        entry.entry_offset,
        entry.name,
        entry.path,
        _KIND_CODE[entry.kind],
        entry.mode,
        entry.uid,
        entry.gid,
        entry.mtime_ns,
        entry.flags,
        entry.size,
        entry.entry_end,
        entry.content_offset,
        entry.link_target,
        device,
        entry_extra(entry),
    )


def entry_extra(entry: Entry) -> str | None:
    """The rare metadata as JSON (bytes as hex), or None when the entry has none."""
    extra: dict[str, object] = {}
    if entry.xattrs:
        extra["xattrs"] = [[k.hex(), v.hex()] for k, v in entry.xattrs]
    if entry.acl is not None:
        extra["acl"] = dataclasses.asdict(entry.acl)
    if entry.fcaps is not None:
        extra["fcaps"] = entry.fcaps.hex()
    if entry.quota_project_id is not None:
        extra["quota"] = entry.quota_project_id
    return json.dumps(extra, separators=(",", ":")) if extra else None


def _tuples(value: object) -> object:
    return tuple(map(_tuples, value)) if isinstance(value, list) else value


class Extra(NamedTuple):
    """The rare metadata `entry_extra` records, read back."""

    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    acl: Acl | None = None
    fcaps: bytes | None = None
    quota: int | None = None


_NO_EXTRA = Extra()


def parse_extra(extra: str | None) -> Extra:
    """What `entry_extra` made of an entry (other keys in the JSON are ignored: the search
    index adds its own to the same object)."""
    if extra is None:
        return Extra()
    fields = json.loads(extra)
    xattrs = tuple((bytes.fromhex(k), bytes.fromhex(v)) for k, v in fields.get("xattrs", ()))
    acl = None
    if "acl" in fields:  # JSON made its tuples lists: make them tuples again
        acl = Acl(**{key: _tuples(value) for key, value in fields["acl"].items()})
    fcaps = bytes.fromhex(fields["fcaps"]) if "fcaps" in fields else None
    return Extra(xattrs, acl, fcaps, fields.get("quota"))


def _entry(row: tuple) -> Entry:
    """An Entry from its `_ENTRY_COLUMNS` (a listing makes one per child: positional, and no
    JSON parsed for the nearly all entries that have no rare metadata)."""
    (offset, name, path, kind, mode, uid, gid, mtime_ns, flags, size, end, content) = row[:12]
    link, device, extra = row[12:]
    xattrs, acl, fcaps, quota = _NO_EXTRA if extra is None else parse_extra(extra)
    return Entry(
        path,
        name,
        _KINDS[kind],
        mode,
        uid,
        gid,
        mtime_ns,
        flags,
        size,
        xattrs,
        acl,
        fcaps,
        quota,
        link,
        None if device is None else tuple(map(int, device.split(":"))),
        offset,
        end,
        content,
    )
