"""HistoryIndex: every entry of every indexed pxar archive of a datastore, for search, diff and
file history, in one SQLite database.

Why this shape: a host backed up daily keeps nearly all of its files from one snapshot to the
next, so one row per entry per snapshot would grow with snapshots x files. Instead each distinct
*version* of an entry (its path, type, mode, owner, size, mtime, content hash and other metadata)
is one row, and a *span* says in which snapshots of an archive series (one archive name of one
backup group) it appears: from `first` to `last` backup time, `last` NULL while it is still in
the series' newest indexed snapshot. Adding the next snapshot then touches only what changed in
it: the spans of versions gone from it are closed, new versions open spans. A snapshot is in a
span when its backup time lies within it, so pruning a snapshot deletes one archive row and
leaves every span true of the snapshots that remain.

Content is compared by a SHA-256 of each file's bytes, recorded when the archive is indexed
(`IndexedEntry.content`); the builder (snapfs.history) decides how to obtain it cheaply.

Each archive is added in one transaction with the marker that says its snapshot is done, so a
crash mid-build leaves the index as it was before that archive, never with part of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from snapfs.errors import CorruptDataError

__all__ = [
    "SCHEMA_VERSION",
    "HistoryIndex",
    "IndexedEntry",
    "Located",
    "Series",
    "SearchFilter",
    "SnapshotWriter",
    "in_namespace",
]

T = TypeVar("T")

#: SQLite's page cache for an index on disk: its B-trees' upper levels stay in memory while a
#: build inserts versions and spans all over them.
CACHE_KIB = 64 * 1024
#: Entries written per batch of statements, and values per `IN (...)` (SQLite allows 32,766).
_BATCH = 500
SCHEMA_VERSION = 2  # 2: payload_hashes records which series used a place, and when
#: An open span's end in comparisons: later than any backup time.
_OPEN_END = 1 << 62
#: `changes` reads the two archives whole when more spans start between them than 1 in this
#: many paths (snapshots far apart, where most paths have changed).
_WHOLE_STATES_BELOW = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,          -- 'prod/db', '' for the root namespace
    type TEXT NOT NULL,        -- vm, ct, host
    bid TEXT NOT NULL,         -- backup id
    archive TEXT NOT NULL,     -- 'root.pxar', as `snapfs ls` takes it
    UNIQUE (ns, type, bid, archive)
);
CREATE TABLE IF NOT EXISTS archives (
    series INTEGER NOT NULL,
    time INTEGER NOT NULL,     -- the snapshot's backup time
    csum BLOB NOT NULL,        -- the archive index's checksum: equal csum, equal entries
    PRIMARY KEY (series, time)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS archives_by_csum ON archives (csum);
CREATE TABLE IF NOT EXISTS snapshots (   -- snapshots whose archives are all in this index
    ns TEXT NOT NULL, type TEXT NOT NULL, bid TEXT NOT NULL, time INTEGER NOT NULL,
    key TEXT,                  -- fingerprint of the key its encrypted archives need, if any
    PRIMARY KEY (ns, type, bid, time)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paths (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE, -- absolute inside the archive: b'/etc/hosts'
    name BLOB NOT NULL         -- its last component, what a name glob matches
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,  -- digest of all the columns below: one row per distinct version
    path INTEGER NOT NULL,
    type TEXT NOT NULL,        -- f d l c b p s
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content BLOB,              -- SHA-256 of a file's bytes
    meta TEXT                  -- JSON: link target, device, xattrs, ACL, fcaps, flags
);
CREATE INDEX IF NOT EXISTS versions_by_path ON versions (path);
CREATE TABLE IF NOT EXISTS spans (
    series INTEGER NOT NULL,
    version INTEGER NOT NULL,
    first INTEGER NOT NULL,    -- backup times: the version is in every archive of the series
    last INTEGER               -- from first to last; NULL: to the newest one
);
CREATE INDEX IF NOT EXISTS spans_by_series ON spans (series, first, last, version);
CREATE INDEX IF NOT EXISTS spans_by_version ON spans (version);
CREATE INDEX IF NOT EXISTS spans_by_end ON spans (series, last);
CREATE TABLE IF NOT EXISTS payload_hashes (  -- content hashes by where the bytes lie
    place BLOB PRIMARY KEY,    -- (snapfs.search.entries): equal places hold equal bytes
    content BLOB NOT NULL,
    series INTEGER NOT NULL,   -- the series and backup time that last stored or found it:
    used INTEGER NOT NULL      -- kept while the series' next archive may find it again
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payload_hashes_by_use ON payload_hashes (series, used);
"""


class IndexedEntry(NamedTuple):
    """One entry of an archive as the index keeps it."""

    path: bytes
    type: str  # f d l c b p s (a hard link is indexed as the file it names)
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    content: bytes | None
    meta: str | None

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]

    def key(self) -> bytes:
        return hashlib.blake2b(repr(tuple(self)).encode(), digest_size=16).digest()


@dataclass(frozen=True, order=True)
class Series:
    """One archive name of one backup group: the snapshots a version can span."""

    ns: str
    type: str
    id: str
    archive: str

    @property
    def group(self) -> str:
        return f"{self.type}/{self.id}"


class Located(NamedTuple):
    """A version of an entry and one snapshot holding it (what search and history return)."""

    series: Series
    time: int
    entry: IndexedEntry


@dataclass(frozen=True)
class SearchFilter:
    """What `snapfs search` selects; None means any."""

    name_glob: str | None = None  # SQLite GLOB on the last path component
    path_glob: str | None = None  # ... or on the whole path
    ns: str | None = None  # this namespace and those below it
    type: str | None = None
    newer_ns: int | None = None  # mtime bounds, nanoseconds
    older_ns: int | None = None
    min_size: int | None = None
    max_size: int | None = None

    @classmethod
    def for_pattern(cls, pattern: str, **fields: object) -> SearchFilter:
        """A glob as users write it: on the name, or on the whole path when it holds a `/`
        (anchored at the archive's root unless it starts with `*`). `[!x]` is fnmatch's
        negation; SQLite spells it `[^x]`."""
        pattern = pattern.replace("[!", "[^")
        if "/" not in pattern:
            return cls(name_glob=pattern, **fields)  # type: ignore[arg-type]
        if not pattern.startswith(("/", "*")):
            pattern = "/" + pattern
        return cls(path_glob=pattern, **fields)  # type: ignore[arg-type]


#: Path ids per `IN (...)` list: SQLite takes at most 32766 parameters in one statement.
_IN_BATCH = 500
_VERSION_COLUMNS = "p.path, v.type, v.mode, v.uid, v.gid, v.size, v.mtime_ns, v.content, v.meta"
#: Queries that start from paths go path -> its versions -> their spans, in that order and by
#: those indexes: SQLite's planner, without statistics, would rather walk every span of a series.
_FROM_PATHS = (
    "paths p CROSS JOIN versions v ON v.path = p.id "
    "CROSS JOIN spans s INDEXED BY spans_by_version ON s.version = v.id"
)


class HistoryIndex:
    """One SQLite database of archive histories: on disk (`open`) or in memory (`memory`,
    `from_bytes`), the latter for what must not reach the disk in plain text."""

    def __init__(self, db: sqlite3.Connection, where: str) -> None:
        self._db = db
        self.where = where
        db.execute("PRAGMA foreign_keys = OFF")
        with db:
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif version[0] != SCHEMA_VERSION:
                raise CorruptDataError(
                    f"{where}: search index of schema {version[0]}, this snapfs reads "
                    f"{SCHEMA_VERSION}; remove it (it is rebuilt from the datastore)"
                )

    @classmethod
    def open(cls, path: str) -> HistoryIndex:
        """The index file at `path`, created (mode 0600, folder 0700) if missing."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        try:
            db = sqlite3.connect(path, timeout=60, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            # A commit need not wait for the disk: WAL keeps every snapshot's transaction whole
            # through a crash of ours, and a power cut can only lose the newest ones, which the
            # next refresh adds again (the index is rebuilt from the datastore, never the reverse).
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            return cls(db, path)
        except sqlite3.DatabaseError as exc:
            raise CorruptDataError(f"{path}: not a snapfs search index ({exc})") from None

    @classmethod
    def memory(cls) -> HistoryIndex:
        return cls(sqlite3.connect(":memory:", check_same_thread=False), "memory")

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> HistoryIndex:
        db = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            db.deserialize(data)
            return cls(db, where)
        except sqlite3.DatabaseError as exc:
            raise CorruptDataError(f"{where}: not a snapfs search index ({exc})") from None

    def to_bytes(self) -> bytes:
        return self._db.serialize()

    def close(self) -> None:
        self._db.close()

    # -- what is indexed ----------------------------------------------------------------------------

    def done_snapshots(self) -> dict[tuple[str, str, str, int], str | None]:
        """(ns, type, id, time) of every snapshot fully indexed here -> its key fingerprint."""
        rows = self._db.execute("SELECT ns, type, bid, time, key FROM snapshots")
        return {(ns, t, b, time): key for ns, t, b, time, key in rows}

    def archive_times(self, series: Series) -> list[int]:
        sid = self._series_id(series, create=False)
        if sid is None:
            return []
        rows = self._db.execute("SELECT time FROM archives WHERE series = ? ORDER BY time", (sid,))
        return [t for (t,) in rows]

    def all_series(self, ns: str | None = None) -> list[Series]:
        rows = self._db.execute("SELECT ns, type, bid, archive FROM series ORDER BY 1, 2, 3, 4")
        found = [Series(*row) for row in rows]
        return [s for s in found if ns is None or in_namespace(s.ns, ns)]

    def has_csum(self, csum: bytes) -> bool:
        return self._twin(csum) is not None

    # -- changing it --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(
        self, ns: str, type: str, bid: str, time: int, key: str | None
    ) -> Iterator[SnapshotWriter]:
        """Add a snapshot's archives; everything is kept at once when the block ends without an
        exception, nothing of it otherwise."""
        with self._db:
            yield SnapshotWriter(self, ns, type, bid, time)
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?)",
                (ns, type, bid, time, key),
            )

    def forget_snapshot(self, ns: str, type: str, bid: str, time: int) -> None:
        """The snapshot is gone from the datastore (pruned): drop it, and what only it held."""
        with self._db:
            self._db.execute(
                "DELETE FROM snapshots WHERE ns = ? AND type = ? AND bid = ? AND time = ?",
                (ns, type, bid, time),
            )
            self._db.execute(
                "DELETE FROM archives WHERE time = ? AND series IN "
                "(SELECT id FROM series WHERE ns = ? AND type = ? AND bid = ?)",
                (time, ns, type, bid),
            )

    def collect_garbage(self) -> None:
        """Drop spans no remaining archive lies in, then versions and paths nothing refers to."""
        with self._db:
            self._db.execute(
                "DELETE FROM spans WHERE NOT EXISTS (SELECT 1 FROM archives a WHERE "
                "a.series = spans.series AND a.time BETWEEN spans.first "
                f"AND coalesce(spans.last, {_OPEN_END}))"
            )
            self._db.execute(
                "DELETE FROM versions WHERE NOT EXISTS "
                "(SELECT 1 FROM spans s WHERE s.version = versions.id)"
            )
            self._db.execute(
                "DELETE FROM paths WHERE NOT EXISTS "
                "(SELECT 1 FROM versions v WHERE v.path = paths.id)"
            )
            self._db.execute(
                "DELETE FROM series WHERE NOT EXISTS "
                "(SELECT 1 FROM archives a WHERE a.series = series.id)"
            )

    # -- queries ------------------------------------------------------------------------------------

    def state(self, series: Series, time: int) -> dict[bytes, IndexedEntry]:
        """Every entry of the series' archive at `time`, by path."""
        sid = self._series_id(series, create=False)
        if sid is None:
            return {}
        rows = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM spans s JOIN versions v ON v.id = s.version "
            "JOIN paths p ON p.id = v.path WHERE s.series = ? AND s.first <= ? "
            f"AND coalesce(s.last, {_OPEN_END}) >= ?",
            (sid, time, time),
        )
        return {row[0]: IndexedEntry(*row) for row in rows}

    def changes(
        self, series: Series, a: int, b: int
    ) -> dict[bytes, tuple[IndexedEntry | None, IndexedEntry | None]]:
        """The entries that differ between the series' archives at times `a` and `b`, by path:
        (the one at `a`, the one at `b`), None where there is none.

        When a path's versions at `a` and `b` differ, the span holding the first ends between
        the two times and the span holding the second starts between them; so only the spans
        that start or end between them are read, and two adjacent snapshots cost what changed
        between them, not what they hold. Far apart, when more spans start between them than
        1 in _WHOLE_STATES_BELOW paths, the two archives are read whole instead."""
        sid = self._series_id(series, create=False)
        if sid is None or a == b:
            return {}
        low, high = min(a, b), max(a, b)
        (starting,) = self._db.execute(
            "SELECT count(*) FROM spans INDEXED BY spans_by_series "
            "WHERE series = ? AND first > ? AND first <= ?",
            (sid, low, high),
        ).fetchone()
        (paths,) = self._db.execute("SELECT coalesce(max(id), 0) FROM paths").fetchone()
        if starting * _WHOLE_STATES_BELOW > paths:
            old, new = self.state(series, a), self.state(series, b)
        else:
            old, new = {}, {}
            columns = f"s.first, coalesce(s.last, {_OPEN_END}), {_VERSION_COLUMNS}"
            joins = "JOIN versions v ON v.id = s.version JOIN paths p ON p.id = v.path"
            rows = self._db.execute(
                f"SELECT {columns} FROM spans s INDEXED BY spans_by_series {joins} "
                "WHERE s.series = ?1 AND s.first > ?2 AND s.first <= ?3 UNION ALL "
                f"SELECT {columns} FROM spans s INDEXED BY spans_by_end {joins} "
                "WHERE s.series = ?1 AND s.last >= ?2 AND s.last < ?3",
                (sid, low, high),
            )
            for first, last, *fields in rows:
                entry = IndexedEntry(*fields)
                if first <= a <= last:
                    old[entry.path] = entry
                if first <= b <= last:
                    new[entry.path] = entry
        found = {}
        for path in old.keys() | new.keys():
            pair = (old.get(path), new.get(path))
            if pair[0] != pair[1]:
                found[path] = pair
        return found

    def search(self, query: SearchFilter) -> Iterator[Located]:
        """Every (snapshot, version) where the version matches, ordered by path then time."""
        where, args = ["1"], []
        if query.name_glob is not None:
            where.append("CAST(p.name AS TEXT) GLOB ?")
            args.append(query.name_glob)
        if query.path_glob is not None:
            where.append("CAST(p.path AS TEXT) GLOB ?")
            args.append(query.path_glob)
        for column, op, value in (
            ("v.type", "=", query.type),
            ("v.mtime_ns", ">=", query.newer_ns),
            ("v.mtime_ns", "<=", query.older_ns),
            ("v.size", ">=", query.min_size),
            ("v.size", "<=", query.max_size),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        if query.ns:
            where.append("(r.ns = ? OR r.ns GLOB ?)")
            args.extend([query.ns, _glob_escape(query.ns) + "/*"])
        # Paths first: a GLOB over the distinct paths is a scan of one small table (CROSS JOIN
        # keeps SQLite to that order; left to itself it scans every span).
        rows = self._db.execute(
            f"SELECT r.ns, r.type, r.bid, r.archive, a.time, {_VERSION_COLUMNS} "
            f"FROM {_FROM_PATHS} CROSS JOIN series r ON r.id = s.series "
            "CROSS JOIN archives a ON a.series = s.series "
            f"AND a.time BETWEEN s.first AND coalesce(s.last, {_OPEN_END}) "
            f"WHERE {' AND '.join(where)} ORDER BY p.path, r.ns, r.type, r.bid, r.archive, a.time",
            args,
        )
        for row in rows:
            yield Located(Series(*row[:4]), row[4], IndexedEntry(*row[5:]))

    def history(self, series: Iterable[Series], path: bytes) -> Iterator[Located]:
        """Every archive of these series holding `path`, with the version it holds, by time."""
        for one in series:
            sid = self._series_id(one, create=False)
            if sid is None:
                continue
            rows = self._db.execute(
                f"SELECT a.time, {_VERSION_COLUMNS} FROM {_FROM_PATHS} "
                "CROSS JOIN archives a ON a.series = s.series "
                f"AND a.time BETWEEN s.first AND coalesce(s.last, {_OPEN_END}) "
                "WHERE p.path = ? AND s.series = ? ORDER BY a.time",
                (path, sid),
            )
            for row in rows:
                yield Located(one, row[0], IndexedEntry(*row[1:]))

    def children(
        self, series: Series, directory: bytes
    ) -> dict[bytes, list[tuple[int, IndexedEntry]]]:
        """The union over the series' archives of what `directory` holds: name -> each distinct
        version of it, with the backup time of the first archive holding it, by that time. What
        a `.versions` directory lists.

        Costs an index seek per name (two for a name with entries below it) and the rows of those
        names' versions: not the entries deeper down, nor a row per archive holding a version
        (for the root of a large tree backed up daily for a year, billions)."""
        sid = self._series_id(series, create=False)
        if sid is None:
            return {}
        names = dict(self._child_paths(directory))
        held = self._first_versions(sid, list(names))
        return {names[path_id]: versions for path_id, versions in held.items()}

    def versions(self, series: Series, path: bytes) -> list[tuple[int, IndexedEntry]]:
        """Each distinct version of `path` in the series, with the backup time of the first
        archive holding it, by that time: one name of `children`, looked up alone."""
        sid = self._series_id(series, create=False)
        row = self._db.execute("SELECT id FROM paths WHERE path = ?", (path,)).fetchone()
        if sid is None or row is None:
            return []
        return self._first_versions(sid, [row[0]]).get(row[0], [])

    # -- internals ----------------------------------------------------------------------------------

    def _child_paths(self, directory: bytes) -> Iterator[tuple[int, bytes]]:
        """(path id, name) of every path right below `directory`, in any series.

        A skip-scan of the paths, which sort bytewise: what lies below a child `c` sorts from
        `c/` up to `c0` ('0' follows '/'), so the scan jumps from a path below `c` to `c0`. A
        sibling such as `c.d` sorts between `c` and `c/`, so after a child the scan goes on from
        right after it (no name holds a NUL)."""
        prefix = directory.rstrip(b"/") + b"/"
        end = prefix[:-1] + b"0"
        low = prefix + b"\0"
        while True:
            row = self._db.execute(
                "SELECT id, path FROM paths WHERE path >= ? AND path < ? ORDER BY path LIMIT 1",
                (low, end),
            ).fetchone()
            if row is None:
                return
            path_id, path = row
            name, below, _ = path[len(prefix) :].partition(b"/")
            if below:
                low = prefix + name + b"0"
            else:
                yield path_id, name
                low = path + b"\0"

    def _first_versions(
        self, sid: int, path_ids: Iterable[int]
    ) -> dict[int, list[tuple[int, IndexedEntry]]]:
        """path id -> each version of it in the series with the backup time of the first archive
        holding it, by that time. A span whose archives were all pruned (garbage not collected
        yet) holds none. The indexes are named: left to itself, SQLite scans every span of the
        series (spans_by_series) for each version, i.e. the whole archive per listing."""
        ids = list(path_ids)
        first: dict[tuple[int, IndexedEntry], int] = {}
        for start in range(0, len(ids), _IN_BATCH):
            batch = ids[start : start + _IN_BATCH]
            rows = self._db.execute(
                "SELECT v.path, (SELECT a.time FROM archives a WHERE a.series = s.series "
                f"AND a.time BETWEEN s.first AND coalesce(s.last, {_OPEN_END}) "
                f"ORDER BY a.time LIMIT 1), {_VERSION_COLUMNS} "
                "FROM versions v INDEXED BY versions_by_path JOIN paths p ON p.id = v.path "
                "JOIN spans s INDEXED BY spans_by_version ON s.version = v.id "
                f"WHERE s.series = ? AND v.path IN ({', '.join('?' * len(batch))})",
                (sid, *batch),
            )
            for row in rows:
                if row[1] is None:
                    continue
                key = (row[0], IndexedEntry(*row[2:]))
                if key not in first or row[1] < first[key]:
                    first[key] = row[1]
        found: dict[int, list[tuple[int, IndexedEntry]]] = {}
        for (path_id, entry), at in sorted(first.items(), key=lambda item: item[1]):
            found.setdefault(path_id, []).append((at, entry))
        return found

    def _series_id(self, series: Series, *, create: bool) -> int | None:
        values = (series.ns, series.type, series.id, series.archive)
        row = self._db.execute(
            "SELECT id FROM series WHERE ns = ? AND type = ? AND bid = ? AND archive = ?", values
        ).fetchone()
        if row is not None or not create:
            return None if row is None else row[0]
        return self._db.execute(
            "INSERT INTO series (ns, type, bid, archive) VALUES (?, ?, ?, ?)", values
        ).lastrowid

    def _twin(self, csum: bytes) -> tuple[int, int] | None:
        return self._db.execute(
            "SELECT series, time FROM archives WHERE csum = ? LIMIT 1", (csum,)
        ).fetchone()

    def _version_ids(self, fresh: list[tuple[bytes, IndexedEntry | int]]) -> list[int]:
        """The version id of each (key, entry or id), adding the versions (and paths) the index
        does not hold yet: a few statements per batch of entries, not several per entry."""
        wanted = [key for key, entry in fresh if not isinstance(entry, int)]
        known = self._ids_of("versions", "key", wanted)
        new = {
            key: entry for key, entry in fresh if not isinstance(entry, int) and key not in known
        }
        if new:
            self._db.executemany(
                "INSERT OR IGNORE INTO paths (path, name) VALUES (?, ?)",
                ((e.path, e.name) for e in new.values()),
            )
            path_ids = self._ids_of("paths", "path", list({e.path for e in new.values()}))
            self._db.executemany(
                "INSERT INTO versions (key, path, type, mode, uid, gid, size, mtime_ns, content,"
                " meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((key, path_ids[e.path], *e[1:]) for key, e in new.items()),
            )
            known.update(self._ids_of("versions", "key", list(new)))
        return [entry if isinstance(entry, int) else known[key] for key, entry in fresh]

    def _ids_of(self, table: str, column: str, values: list[bytes]) -> dict[bytes, int]:
        """{value: id} of the rows of `table` whose unique `column` is one of `values`."""
        found: dict[bytes, int] = {}
        for part in _batches(values, _BATCH):
            marks = ",".join("?" * len(part))
            found.update(
                self._db.execute(
                    f"SELECT {column}, id FROM {table} WHERE {column} IN ({marks})", part
                )
            )
        return found

    def _add_archive(
        self, series: Series, time: int, csum: bytes, entries: Iterable[IndexedEntry] | None
    ) -> int:
        """Record the archive; `entries` None copies them from an archive with the same csum.
        Returns how many entries it holds. Entries stream through: what stays in memory is the
        keys of the versions the series held at `time` before, not the archive's entries."""
        sid = self._series_id(series, create=True)
        if entries is None:
            twin = self._twin(csum)
            if twin is None:
                raise CorruptDataError(f"{self.where}: no indexed archive with csum {csum.hex()}")
            incoming: Iterable[tuple[bytes, IndexedEntry | int]] = self._keys_at(*twin).items()
        else:
            incoming = ((entry.key(), entry) for entry in entries)
        self._db.execute("DELETE FROM archives WHERE series = ? AND time = ?", (sid, time))
        later = self._db.execute(
            "SELECT 1 FROM archives WHERE series = ? AND time > ? LIMIT 1", (sid, time)
        ).fetchone()
        # Spans that claim `time` already: kept if the archive holds their version, else cut.
        covering = {
            key: (rowid, version, first, last)
            for rowid, key, version, first, last in self._db.execute(
                "SELECT s.rowid, v.key, s.version, s.first, s.last FROM spans s "
                "JOIN versions v ON v.id = s.version WHERE s.series = ? AND s.first <= ? "
                f"AND coalesce(s.last, {_OPEN_END}) >= ?",
                (sid, time, time),
            )
        }
        new_last = time if later else None
        held = set()
        count = 0
        for batch in _batches(incoming, _BATCH):
            count += len(batch)
            fresh: list[tuple[bytes, IndexedEntry | int]] = []
            for key, entry in batch:
                if key in covering:
                    held.add(key)
                else:
                    fresh.append((key, entry))
            versions = self._version_ids(fresh)
            self._db.executemany(
                "INSERT INTO spans VALUES (?, ?, ?, ?)",
                ((sid, version, time, new_last) for version in versions),
            )
        for key, (rowid, version, first, last) in covering.items():
            if key in held:
                continue
            # The span claims this archive, which does not hold its version: cut the time out.
            if first < time:
                self._db.execute("UPDATE spans SET last = ? WHERE rowid = ?", (time - 1, rowid))
            else:
                self._db.execute("DELETE FROM spans WHERE rowid = ?", (rowid,))
            if later and (last is None or last > time):
                self._db.execute(
                    "INSERT INTO spans VALUES (?, ?, ?, ?)", (sid, version, time + 1, last)
                )
        self._db.execute("INSERT INTO archives VALUES (?, ?, ?)", (sid, time, csum))
        # Places the series' previous archive did not use will not recur (in a v1 archive a
        # small file's chunks change with its neighbours): without this the table would grow
        # by a row per file per snapshot.
        (previous,) = self._db.execute(
            "SELECT max(time) FROM archives WHERE series = ? AND time < ?", (sid, time)
        ).fetchone()
        if previous is not None:
            self._db.execute(
                "DELETE FROM payload_hashes WHERE series = ? AND used < ?", (sid, previous)
            )
        return count

    def known_places(self, series: Series) -> dict[bytes, bytes]:
        """The content hashes by place last used by `series`: what a walk of its next archive
        elsewhere (a worker, snapfs.search.walks) can reuse without asking the index."""
        sid = self._series_id(series, create=False)
        if sid is None:
            return {}
        rows = self._db.execute(
            "SELECT place, content FROM payload_hashes WHERE series = ?", (sid,)
        )
        return dict(rows)

    def _content_by_place(self, place: bytes, sid: int, time: int) -> bytes | None:
        row = self._db.execute(
            "SELECT content FROM payload_hashes WHERE place = ?", (place,)
        ).fetchone()
        if row is None:
            return None
        self._db.execute(
            "UPDATE payload_hashes SET series = ?, used = ? WHERE place = ?", (sid, time, place)
        )
        return row[0]

    def _remember_place(self, place: bytes, content: bytes, sid: int, time: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO payload_hashes VALUES (?, ?, ?, ?)", (place, content, sid, time)
        )

    def _remember_places(self, places: dict[bytes, bytes], sid: int, time: int) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO payload_hashes VALUES (?, ?, ?, ?)",
            ((place, content, sid, time) for place, content in places.items()),
        )

    def _keys_at(self, sid: int, time: int) -> dict[bytes, int]:
        rows = self._db.execute(
            "SELECT v.key, v.id FROM spans s JOIN versions v ON v.id = s.version "
            f"WHERE s.series = ? AND s.first <= ? AND coalesce(s.last, {_OPEN_END}) >= ?",
            (sid, time, time),
        )
        return dict(rows)


class SnapshotWriter:
    """Adds the archives of one snapshot inside `HistoryIndex.snapshot`'s transaction."""

    def __init__(self, index: HistoryIndex, ns: str, type: str, bid: str, time: int) -> None:
        self._index = index
        self._where = (ns, type, bid)
        self.time = time

    def places(
        self, archive: str
    ) -> tuple[Callable[[bytes], bytes | None], Callable[[bytes, bytes], None]]:
        """(lookup, store) of content hashes by place, for the entries of `archive`."""
        index = self._index
        sid = index._series_id(Series(*self._where, archive), create=True)
        assert sid is not None
        return (
            lambda place: index._content_by_place(place, sid, self.time),
            lambda place, content: index._remember_place(place, content, sid, self.time),
        )

    def remember_places(self, archive: str, places: dict[bytes, bytes]) -> None:
        """Content hashes by place that a walk of `archive` elsewhere used or learnt (all at
        once: what `places`' store would have recorded one by one)."""
        index = self._index
        sid = index._series_id(Series(*self._where, archive), create=True)
        assert sid is not None
        index._remember_places(places, sid, self.time)

    def add(self, archive: str, csum: bytes, entries: Iterable[IndexedEntry] | None) -> int:
        """Record one archive's entries (None: an archive of the same csum is indexed already,
        copy its entries); returns how many it holds."""
        return self._index._add_archive(Series(*self._where, archive), self.time, csum, entries)


def _batches(items: Iterable[T], size: int) -> Iterator[tuple[T, ...]]:
    """`items` in tuples of `size` (the last one shorter); itertools.batched from Python 3.12."""
    it = iter(items)
    while batch := tuple(itertools.islice(it, size)):
        yield batch


def in_namespace(ns: str, scope: str) -> bool:
    """Whether namespace `ns` is `scope` or below it (every namespace is below the root, '')."""
    return not scope or ns == scope or ns.startswith(scope + "/")


def _glob_escape(text: str) -> str:
    """`text` matched literally by SQLite GLOB."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
