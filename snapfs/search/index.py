"""SearchIndex: the search index of one datastore, and how it is kept current.

Two parts: a plain SQLite file (snapfs.index.history) for unencrypted archives, and, when a key
is given, a sealed file (snapfs.search.sealed) for the archives encrypted with that key. A
refresh lists the datastore (listings only: a snapshot already indexed is never read again),
drops what was pruned, and indexes each new snapshot in its own transaction: an archive whose
index checksum is indexed already is copied, not parsed. Nothing is written to the datastore.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from snapfs.cluster import WorkPool
from snapfs.errors import KeyRequiredError, NotFoundError, SnapfsError
from snapfs.format.archive_names import ArchiveKind, PxarNames, archive_kind
from snapfs.format.crypt import CryptConfig, format_fingerprint
from snapfs.format.manifest import Manifest
from snapfs.index.history import (
    HistoryIndex,
    IndexedEntry,
    Located,
    SearchFilter,
    Series,
    SnapshotWriter,
    in_namespace,
)
from snapfs.progress import Progress
from snapfs.search.entries import HashCache, archive_entries
from snapfs.search.sealed import seal, sealed_path, unseal
from snapfs.search.walks import (
    CACHE_SIZE,
    DECODERS,
    ArchiveWalk,
    SnapshotWalk,
    archive_csum,
    open_walk,
    walk_snapshot,
)
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore, Group, Snapshot
from snapfs.store.readahead import Readahead
from snapfs.store.workers import WorkerStore
from snapfs.views.archives import SnapshotReader

log = logging.getLogger("snapfs.search")

__all__ = ["RefreshReport", "SearchIndex", "default_index_path", "pxar_archives"]


SnapshotKey = tuple[str, str, str, int]  # ns, type, id, time


def default_index_path(source: str, endpoint_url: str | None = None) -> str:
    """`$XDG_CACHE_HOME/snapfs/search/<digest of the source>.sqlite` (`~/.cache/...`): one
    index per datastore, shared by every command and the mount that read it."""
    if source.startswith("s3://"):
        identity = f"{source} {endpoint_url or ''}"
    else:
        # abspath, not realpath: naming the index must not touch the source (a datastore on a
        # hung network filesystem would hang the command before it could say so).
        identity = os.path.abspath(source)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return os.path.join(base, "snapfs", "search", f"{digest}.sqlite")


def pxar_archives(manifest: Manifest) -> dict[str, PxarNames]:
    """The pxar archives of a snapshot, unified or split, by the name users give them."""
    found = {}
    for file in manifest.files:
        if archive_kind(file.filename) in (ArchiveKind.PXAR, ArchiveKind.PXAR_META):
            names = PxarNames.of(file.filename)
            found[names.name] = names
    return found


def snapshot_key(snapshot: Snapshot) -> SnapshotKey:
    group = snapshot.group
    return ("/".join(group.ns), group.type, group.id, snapshot.time)


@dataclass
class RefreshReport:
    """What a refresh did, for `snapfs index` and the lines search prints on stderr."""

    snapshots: int = 0  # on the datastore, in scope
    indexed: int = 0  # snapshots added by this refresh
    archives: int = 0  # archives parsed
    copied: int = 0  # archives whose index checksum was indexed already
    entries: int = 0
    pruned: int = 0
    hashed: int = 0  # files whose bytes were read to hash them
    reused_hashes: int = 0  # files whose hash was known by where their bytes lie
    seconds: float = 0.0
    incomplete: list[str] = field(default_factory=list)
    need_key: dict[str, list[str]] = field(default_factory=dict)  # fingerprint -> snapshots
    failed: list[str] = field(default_factory=list)  # one line each

    def to_value(self) -> dict:
        return dict(self.__dict__)

    def warnings(self) -> list[str]:
        """One line per thing the index does not cover, for stderr."""
        lines = [f"not indexed: {line}" for line in self.failed]
        if self.incomplete:
            lines.append(
                f"{len(self.incomplete)} incomplete snapshot(s) not indexed "
                f"(no manifest yet), e.g. {self.incomplete[0]}"
            )
        for fingerprint, snapshots in self.need_key.items():
            lines.append(
                f"{len(snapshots)} snapshot(s) with archives encrypted with key {fingerprint} "
                f"not searched (give that --keyfile), e.g. {snapshots[0]}"
            )
        return lines


class SearchIndex:
    """The plain index file of a datastore and, with a key, the sealed part of that key."""

    def __init__(self, path: str, crypt: CryptConfig | None = None) -> None:
        self.path = path
        self.crypt = crypt
        self.plain = HistoryIndex.open(path)
        self.private: HistoryIndex | None = None
        if crypt is not None:
            where = sealed_path(path, crypt)
            data = unseal(where, crypt)
            self.private = (
                HistoryIndex.memory() if data is None else HistoryIndex.from_bytes(data, where)
            )

    @property
    def parts(self) -> list[HistoryIndex]:
        return [self.plain] + ([self.private] if self.private is not None else [])

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def save(self) -> None:
        """Seal the private part to disk (the plain part commits as it goes)."""
        if self.private is not None and self.crypt is not None:
            seal(self.private.to_bytes(), self.crypt, sealed_path(self.path, self.crypt))

    # -- queries over both parts ------------------------------------------------------------------

    def search(self, query: SearchFilter) -> list[Located]:
        found = [hit for part in self.parts for hit in part.search(query)]
        found.sort(key=lambda hit: (hit.entry.path, hit.series, hit.time))
        return found

    def series(self, ns: str | None = None) -> list[Series]:
        return sorted({s for part in self.parts for s in part.all_series(ns)})

    def archive_times(self, series: Series) -> list[int]:
        return sorted({t for part in self.parts for t in part.archive_times(series)})

    def state(self, series: Series, at: int) -> dict[bytes, IndexedEntry]:
        found: dict[bytes, IndexedEntry] = {}
        for part in self.parts:
            found.update(part.state(series, at))
        return found

    def changes(
        self, series: Series, a: int, b: int
    ) -> dict[bytes, tuple[IndexedEntry | None, IndexedEntry | None]]:
        """What differs between the series' archives at `a` and `b`: path -> (old, new)."""
        for part in self.parts:
            times = part.archive_times(series)
            if a in times and b in times:
                return part.changes(series, a, b)
        # The two archives are in different parts (a key given to some snapshots only).
        old, new = self.state(series, a), self.state(series, b)
        pairs = {path: (old.get(path), new.get(path)) for path in old.keys() | new.keys()}
        return {path: pair for path, pair in pairs.items() if pair[0] != pair[1]}

    def history(self, series: Iterable[Series], path: bytes) -> list[Located]:
        wanted = list(series)
        found = [hit for part in self.parts for hit in part.history(wanted, path)]
        found.sort(key=lambda hit: (hit.time, hit.series))
        return found

    def children(
        self, series: Series, directory: bytes
    ) -> dict[bytes, list[tuple[int, IndexedEntry]]]:
        """HistoryIndex.children over both parts (a group may have switched to encryption)."""
        found: dict[bytes, list[tuple[int, IndexedEntry]]] = {}
        for part in self.parts:
            for name, held in part.children(series, directory).items():
                found.setdefault(name, []).extend(held)
        return {name: _earliest(held) for name, held in found.items()}

    def versions(self, series: Series, path: bytes) -> list[tuple[int, IndexedEntry]]:
        """HistoryIndex.versions over both parts."""
        return _earliest([held for part in self.parts for held in part.versions(series, path)])

    def require_snapshot(self, snapshot: Snapshot) -> None:
        """Raise, saying why, unless every pxar archive of `snapshot` is in the index."""
        key = snapshot_key(snapshot)
        plain = self.plain.done_snapshots()
        if key not in plain:
            raise NotFoundError(
                f"snapshot {_label(snapshot)} is not in the search index "
                "(incomplete or unreadable: `snapfs index` says why)"
            )
        needed = plain[key]
        if needed is not None and (
            self.private is None or key not in self.private.done_snapshots()
        ):
            raise KeyRequiredError(
                f"snapshot {_label(snapshot)} has archives encrypted with key {needed}; "
                "give it with --keyfile"
            )

    # -- refresh ------------------------------------------------------------------------------------

    def refresh(
        self,
        datastore: Datastore,
        ns: tuple[str, ...] = (),
        progress: Progress | None = None,
        *,
        group: Group | None = None,
        pool: WorkPool | None = None,
        store: WorkerStore | None = None,
    ) -> RefreshReport:
        """Bring the index up to the datastore's snapshots in `ns` and below (or of `group`).

        With a `pool` of workers (and the `store` they open, snapfs.store.workers), the archive
        walks run there and this process only writes; without one, everything runs here."""
        start = time.perf_counter()
        report = RefreshReport()
        progress = progress or Progress.disabled()
        groups = (
            [group]
            if group is not None
            else [
                g for namespace in datastore.all_namespaces(ns) for g in datastore.groups(namespace)
            ]
        )
        on_store = {snapshot_key(s): s for g in groups for s in datastore.snapshots(g)}
        report.snapshots = len(on_store)
        scope = "/".join(ns)

        def in_scope(key: SnapshotKey) -> bool:
            if group is not None:
                return key[:3] == ("/".join(group.ns), group.type, group.id)
            return in_namespace(key[0], scope)

        for part in self.parts:
            gone = [key for key in part.done_snapshots() if key not in on_store and in_scope(key)]
            for key in gone:
                part.forget_snapshot(*key)
            if gone:
                part.collect_garbage()
            if part is self.plain:
                report.pruned = len(gone)
        plain_done = self.plain.done_snapshots()
        private_done = self.private.done_snapshots() if self.private is not None else {}
        mine = format_fingerprint(self.crypt.fingerprint) if self.crypt is not None else None
        todo = []
        for key, snapshot in on_store.items():
            if key not in plain_done:
                todo.append(snapshot)
            elif plain_done[key] is not None:
                if plain_done[key] == mine and key not in private_done:
                    todo.append(snapshot)
                elif plain_done[key] != mine:
                    report.need_key.setdefault(plain_done[key], []).append(str(snapshot))
        todo.sort(key=lambda s: (s.time, s))
        progress.start(len(todo))
        try:
            if pool is not None and store is not None and pool.workers > 1:
                store.adopt(datastore, self.crypt)
                self._refresh_on(pool, store, datastore, todo, plain_done, report, progress)
            else:
                self._refresh_here(datastore, todo, plain_done, report, progress)
        finally:
            progress.close()
            self.save()
        report.seconds = time.perf_counter() - start
        return report

    def _refresh_here(
        self,
        datastore: Datastore,
        todo: list[Snapshot],
        plain_done: dict,
        report: RefreshReport,
        progress: Progress,
    ) -> None:
        """Walk and write each snapshot in turn, in this process, streaming its entries."""
        cache = ChunkCache(CACHE_SIZE)
        readahead = Readahead(DECODERS, "snapfs-search-decode")
        try:
            for snapshot in todo:
                plan = self._plan(datastore, snapshot, snapshot_key(snapshot) in plain_done, report)
                if plan is not None:
                    reader = SnapshotReader(
                        datastore, snapshot, self.crypt if plan.have_key else None, cache
                    )

                    def walk(
                        writer: SnapshotWriter, names: PxarNames, _private: bool, reader=reader
                    ) -> _Walk:
                        hashes = HashCache(*writer.places(names.name))
                        accessor, content_index = open_walk(reader, names, readahead)
                        return archive_entries(accessor, content_index, hashes), hashes

                    self._write(plan, report, walk)
                progress.update(1)
        finally:
            readahead.close()

    def _refresh_on(
        self,
        pool: WorkPool,
        store: WorkerStore,
        datastore: Datastore,
        todo: list[Snapshot],
        plain_done: dict,
        report: RefreshReport,
        progress: Progress,
    ) -> None:
        """Walk the snapshots on `pool`'s workers and write each here as its walk comes back
        (in the order they finish: the index gives the same answers in any order)."""
        plans: dict[Snapshot, _Plan] = {}

        def tasks() -> Iterator[SnapshotWalk]:
            for snapshot in todo:
                plan = self._plan(datastore, snapshot, snapshot_key(snapshot) in plain_done, report)
                walks = [] if plan is None else self._walks(plan)
                if not walks:  # nothing to read: copied by checksum, or nothing at all
                    if plan is not None:
                        self._write(plan, report, _no_walk)
                    progress.update(1)
                    continue
                plans[snapshot] = plan
                yield SnapshotWalk(store, snapshot, tuple(walks))

        for task, outcome in pool.run(walk_snapshot, tasks()):
            plan = plans.pop(task.snapshot)
            if isinstance(outcome, BaseException):
                report.failed.append(f"{_label(task.snapshot)}: {outcome}")
                log.info("%s: not indexed: %s", _label(task.snapshot), outcome)
            else:
                walked = {
                    (a.private, a.names.name): w
                    for a, w in zip(task.archives, outcome, strict=True)
                }

                def take(
                    writer: SnapshotWriter, names: PxarNames, private: bool, walked=walked
                ) -> _Walk:
                    done = walked[(private, names.name)]
                    writer.remember_places(names.name, done.places)
                    return done.entries, done

                self._write(plan, report, take)
            progress.update(1)

    def _walks(self, plan: _Plan) -> list[ArchiveWalk]:
        """The archives of `plan` a worker must read, each with the hashes its series knows."""
        walks = []
        for part, archives, _fingerprint in plan.parts:
            private = part is not self.plain
            for names, csum in archives:
                if not part.has_csum(csum):
                    series = Series(*plan.key[:3], names.name)
                    walks.append(ArchiveWalk(names, private, part.known_places(series)))
        return walks

    def _plan(
        self, datastore: Datastore, snapshot: Snapshot, done_plain: bool, report: RefreshReport
    ) -> _Plan | None:
        """What indexing the snapshot takes: its plain archives unless `done_plain`, its
        encrypted ones when the key is at hand. None (and the reason in `report`) if nothing
        can be indexed."""
        name = _label(snapshot)
        info = datastore.snapshot_info(snapshot)
        if info.manifest is None:
            if info.problem:
                report.failed.append(f"{name}: {info.problem}")
            else:
                report.incomplete.append(name)
            return None
        manifest = info.manifest
        archives = pxar_archives(manifest)
        encrypted = {
            a for a, names in archives.items() if _crypt_mode(manifest, names) == "encrypt"
        }
        needed = format_fingerprint(manifest.key_fingerprint) if manifest.key_fingerprint else None
        if encrypted and needed is None:
            needed = "unknown"
        have_key = (
            self.crypt is not None
            and self.private is not None
            and manifest.key_fingerprint in (None, self.crypt.fingerprint)
        )
        parts: list[tuple[HistoryIndex, list[tuple[PxarNames, bytes]], str | None]] = []
        try:
            if not done_plain:
                plain = [
                    (archives[a], archive_csum(manifest, archives[a]))
                    for a in sorted(set(archives) - encrypted)
                ]
                parts.append((self.plain, plain, needed if encrypted else None))
            if encrypted and have_key:
                assert self.private is not None
                private = [
                    (archives[a], archive_csum(manifest, archives[a])) for a in sorted(encrypted)
                ]
                parts.append((self.private, private, needed))
        except (KeyError, SnapfsError) as exc:
            report.failed.append(f"{name}: manifest: {exc}")
            return None
        missing_key = bool(encrypted) and not have_key
        return _Plan(
            snapshot, snapshot_key(snapshot), parts, have_key, needed if missing_key else None
        )

    def _write(
        self,
        plan: _Plan,
        report: RefreshReport,
        walk: Callable[[SnapshotWriter, PxarNames, bool], _Walk],
    ) -> None:
        """Each part's archives in one transaction per part: copied when an archive of the same
        checksum is in already, else the entries `walk` gives."""
        name = _label(plan.snapshot)
        try:
            for part, archives, fingerprint in plan.parts:
                with part.snapshot(*plan.key, fingerprint) as writer:
                    for names, csum in archives:
                        if part.has_csum(csum):
                            report.entries += writer.add(names.name, csum, None)
                            report.copied += 1
                            continue
                        entries, hashes = walk(writer, names, part is not self.plain)
                        report.entries += writer.add(names.name, csum, entries)
                        report.archives += 1
                        report.hashed += hashes.hashed
                        report.reused_hashes += hashes.reused
        except SnapfsError as exc:
            report.failed.append(f"{name}: {exc}")
            log.info("%s: not indexed: %s", name, exc)
            return
        if plan.need_key is not None:
            report.need_key.setdefault(plan.need_key, []).append(name)
            return
        report.indexed += 1


#: A walk's entries, and what counted its hashing (`hashed`, `reused`).
_Walk = tuple[Iterable[IndexedEntry], Any]


def _no_walk(writer: SnapshotWriter, names: PxarNames, private: bool) -> _Walk:
    raise AssertionError(f"{names.name}: planned as copied, yet not indexed")


@dataclass
class _Plan:
    """What indexing one snapshot writes: per part, its archives with their checksums and the
    key fingerprint recorded with the snapshot."""

    snapshot: Snapshot
    key: SnapshotKey
    parts: list[tuple[HistoryIndex, list[tuple[PxarNames, bytes]], str | None]]
    have_key: bool
    need_key: str | None  # encrypted archives left out for want of this key


def _earliest(held: list[tuple[int, IndexedEntry]]) -> list[tuple[int, IndexedEntry]]:
    """Each distinct version once, at the earliest of its times, by time."""
    first: dict[IndexedEntry, int] = {}
    for at, entry in held:
        first[entry] = min(at, first.get(entry, at))
    return sorted(((at, entry) for entry, at in first.items()), key=lambda item: item[0])


def _crypt_mode(manifest: Manifest, names: PxarNames) -> str:
    """The crypt mode of the file that names the archive (unified, or the split pair's meta)."""
    return next(f.crypt_mode for f in manifest.files if f.filename in (names.unified, names.meta))


def _label(snapshot: Snapshot) -> str:
    ns = "/".join(snapshot.group.ns)
    return f"{ns}:{snapshot}" if ns else str(snapshot)


@contextlib.contextmanager
def opened(path: str, crypt: CryptConfig | None) -> Iterator[SearchIndex]:
    index = SearchIndex(path, crypt)
    try:
        yield index
    finally:
        index.close()
