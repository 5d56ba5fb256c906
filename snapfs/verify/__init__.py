"""`snapfs verify`: PBS's verify job, done from the outside with read-only access.

For every selected snapshot: the manifest decodes (and its signature matches, given the key),
every blob matches the manifest's size and sha256 and decodes, every index parses and matches the
manifest's checksum and size, and every chunk an index names is present and decodes to its digest
with the length the index gives it. Chunks shared between snapshots are fetched and checked once.

Without the key, encrypted content cannot be decrypted: what can be checked is still checked
(presence, the blob magic and CRC of each chunk, index and blob checksums), and the report says
the content itself was not verified.

A bad chunk is reported with the snapshot, archive and byte range it affects and, for pxar
archives, the paths of the files whose content lies in it, so the damage is known per file.
Nothing is ever written to the datastore (PBS renames bad chunks to `.bad`; we only report).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from snapfs.cluster import InlinePool, WorkPool
from snapfs.errors import (
    KeyRequiredError,
    NotFoundError,
    SnapfsError,
    UsageError,
    WrongKeyError,
)
from snapfs.format.archive_names import FileType, PxarNames, archive_kind, short_name
from snapfs.format.blob import decode_blob
from snapfs.format.crypt import CryptConfig, format_fingerprint
from snapfs.format.index import DynamicIndex, FixedIndex
from snapfs.store.datastore import BACKUP_TYPES, Datastore, Group, Snapshot, parse_snapshot
from snapfs.store.sources import SourceOptions
from snapfs.store.workers import WorkerStore
from snapfs.verify.shards import (
    CRC_ONLY,
    OK,
    WRONG_SIZE,
    ChunkStatus,
    Shard,
    ShardContext,
    ShardResult,
    Subset,
    check_shard,
    plan_shards,
    shard_width,
)
from snapfs.verify.state import ResumeState


@dataclass
class BadChunk:
    digest: str
    state: str  # missing | corrupt | wrong-size
    message: str
    archive: str
    ranges: list[tuple[int, int]]
    affected: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "problem": self.state,
            "message": self.message,
            "archive": self.archive,
            "ranges": [list(r) for r in self.ranges],
            "affected": self.affected,
        }


@dataclass
class SnapshotResult:
    snapshot: Snapshot
    errors: list[str] = field(default_factory=list)  # manifest, blob, index problems
    bad_chunks: list[BadChunk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    content_verified: bool = True
    archives: int = 0
    chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.bad_chunks

    @property
    def name(self) -> str:
        ns = "/".join(self.snapshot.group.ns)
        return f"{'ns ' + ns + ' ' if ns else ''}{self.snapshot}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.snapshot),
            "ns": "/".join(self.snapshot.group.ns),
            "status": "ok" if self.ok else "failed",
            "content_verified": self.content_verified,
            "archives": self.archives,
            "chunks": self.chunks,
            "errors": self.errors,
            "bad_chunks": [b.to_dict() for b in self.bad_chunks],
            "notes": self.notes,
        }


@dataclass
class VerifyReport:
    snapshots: list[SnapshotResult] = field(default_factory=list)
    chunks_referenced: int = 0  # distinct chunks the selected snapshots' indexes name
    chunks_checked: int = 0
    bytes_checked: int = 0
    gets: int = 0
    lists: int = 0
    subset: str = "all"
    where: str = "this process"
    shards: int = 0
    shards_resumed: int = 0  # finished by an earlier run, read back from --resume
    shard_errors: list[str] = field(default_factory=list)  # shards that could not be checked
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.shard_errors and all(s.ok for s in self.snapshots)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshots": [s.to_dict() for s in self.snapshots],
            "chunks_referenced": self.chunks_referenced,
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "gets": self.gets,
            "lists": self.lists,
            "subset": self.subset,
            "workers": self.where,
            "shards": self.shards,
            "shards_resumed": self.shards_resumed,
            "shard_errors": self.shard_errors,
            "elapsed": round(self.elapsed, 3),
        }

    def lines(self) -> list[str]:
        out = []
        for s in self.snapshots:
            status = "ok" if s.ok else "FAILED"
            extra = "" if s.content_verified else " (content not verified: encrypted, no key)"
            out.append(f"{status:6} {s.name}: {s.archives} archives, {s.chunks} chunks{extra}")
            out += [f"         error: {e}" for e in s.errors]
            for b in s.bad_chunks:
                where = ", ".join(f"{a}-{z}" for a, z in b.ranges)
                out.append(
                    f"         chunk {b.digest} {b.state} in {b.archive} (bytes {where}): {b.message}"
                )
                out += [f"           affects {a}" for a in b.affected]
            out += [f"         note: {n}" for n in s.notes]
        out += [f"error: {e}" for e in self.shard_errors]
        failed = sum(not s.ok for s in self.snapshots)
        counted = f"{self.chunks_checked}"
        size = f"{self.bytes_checked / 1e6:.1f} MB"
        if self.subset != "all":
            counted += f" of {self.chunks_referenced}"
            size += f", --subset {self.subset}"
        if self.shards_resumed:
            size += f", {self.shards_resumed} of {self.shards} shards done before (--resume)"
        out.append(
            f"verified {len(self.snapshots)} snapshots: {len(self.snapshots) - failed} ok, "
            f"{failed} failed; {counted} chunks ({size}) checked in {self.elapsed:.1f}s "
            f"on {self.where}"
        )
        return out


def select_snapshots(
    datastore: Datastore, ns: tuple[str, ...], selector: str | None
) -> list[Snapshot]:
    """TYPE/ID/TIME: that snapshot; TYPE/ID: the group's snapshots; none: everything in ns and below."""
    if selector:
        parts = selector.strip("/").split("/")
        if len(parts) == 2:
            if parts[0] not in BACKUP_TYPES:
                raise UsageError(f"invalid group {selector!r} (expected TYPE/ID, e.g. vm/100)")
            group = Group(ns, parts[0], parts[1])
            found = datastore.snapshots(group)
            if not found:
                raise NotFoundError(f"group {selector} has no snapshots in {datastore.name}")
            return found
        snapshot = parse_snapshot(selector, ns)
        datastore.check_exists(snapshot)
        return [snapshot]
    return [
        s
        for n in datastore.all_namespaces(ns)
        for g in datastore.groups(n)
        for s in datastore.snapshots(g)
    ]


@dataclass
class _IndexJob:
    result: SnapshotResult
    filename: str
    index: FixedIndex | DynamicIndex
    encrypted: bool


class Verifier:
    """One verify run: manifests, blobs and indexes here; the chunk checks in shards on `pool`.

    `on_shard(result)` is called as each shard finishes (the progress bar); `state_path` keeps
    finished shards for a rerun (snapfs.verify.state).
    """

    def __init__(
        self,
        datastore: Datastore,
        crypt: CryptConfig | None = None,
        *,
        context: ShardContext | None = None,
        pool: WorkPool | None = None,
        subset: str | None = None,
        state_path: str | None = None,
        selection: str = "",
        on_plan: Callable[[int], None] | None = None,
        on_shard: Callable[[ShardResult], None] | None = None,
    ) -> None:
        self.datastore = datastore
        self.crypt = crypt
        # Without one, a context naming the open store: only this process can run its shards.
        self.context = context or ShardContext(WorkerStore(SourceOptions(datastore.name)))
        self.pool = pool or InlinePool()
        self.subset_text = subset
        self.state_path = state_path
        self.selection = selection
        self.on_plan = on_plan
        self.on_shard = on_shard
        self.chunk_status: dict[bytes, ChunkStatus] = {}
        # Shards run in this process use this store, its open connections and its counters.
        self.context.store.adopt(datastore, crypt)

    def run(self, snapshots: list[Snapshot]) -> VerifyReport:
        started = time.monotonic()
        report = VerifyReport(where=self.pool.where)
        jobs: list[_IndexJob] = []
        for snapshot in snapshots:
            result = SnapshotResult(snapshot)
            report.snapshots.append(result)
            jobs += self._check_snapshot_files(result)
        referenced: dict[bytes, int] = {}
        for job in jobs:
            for start, end, digest in job.index.chunks():
                referenced.setdefault(digest, end - start)
        report.chunks_referenced = len(referenced)

        state = None
        subset = Subset.parse(self.subset_text)
        width = shard_width(len(referenced))
        if self.state_path is not None:
            run = {
                "source": self.datastore.name,
                "selection": self.selection,
                "subset": subset.spec,
            }
            state = ResumeState.open(self.state_path, {**run, "seed": subset.seed, "width": width})
            # A resumed run draws the same random folders and cuts the same shards as before.
            subset = Subset(subset.spec, state.run["seed"])
            width = state.run["width"]
        report.subset = subset.spec
        shards = plan_shards(referenced, subset, width)
        report.shards = len(shards)
        finished = state.finished if state is not None else {}
        todo: list[Shard] = []
        for shard in shards:
            done = finished.get(shard.number)
            if done is not None and done.fingerprint == shard.fingerprint:
                self._take(report, shard, done)
                report.shards_resumed += 1
            else:
                todo.append(shard)
        if self.on_plan is not None:
            self.on_plan(sum(len(s.chunks) for s in todo))
        for shard, outcome in self.pool.run(partial(check_shard, self.context), todo):
            if isinstance(outcome, BaseException):
                first, last = shard.prefixes[0], shard.prefixes[-1]
                report.shard_errors.append(
                    f"chunks under .chunks/{first}..{last} not checked: {_one_line(outcome)}"
                )
                continue
            if state is not None:
                state.record(outcome)
            self._take(report, shard, outcome)
            if self.on_shard is not None:
                self.on_shard(outcome)
        if state is not None and not report.shard_errors:
            state.complete()
        for job in jobs:
            self._collect_bad(job)
        if not subset.is_all:
            for result in report.snapshots:
                if result.chunks:
                    result.notes.append(
                        f"only the chunks of --subset {subset.spec} were checked "
                        f"({report.chunks_checked} of {report.chunks_referenced} in this run)"
                    )
        report.elapsed = time.monotonic() - started
        return report

    def _take(self, report: VerifyReport, shard: Shard, result: ShardResult) -> None:
        """Book a shard's outcome: every chunk it checked gets a status (right unless named)."""
        for digest, size in shard.chunks:
            self.chunk_status[digest] = result.bad.get(digest) or ChunkStatus(OK, size=size)
        report.chunks_checked += result.checked
        report.bytes_checked += result.bytes
        report.gets += result.gets
        report.lists += result.lists

    # -- per snapshot: manifest, blobs, indexes

    def _check_snapshot_files(self, result: SnapshotResult) -> list[_IndexJob]:
        ds, snapshot = self.datastore, result.snapshot
        try:
            manifest = ds.manifest(snapshot)
        except SnapfsError as exc:
            result.errors.append(f"manifest: {exc}")
            return []
        crypt = self.crypt
        stored = manifest.key_fingerprint
        if stored is not None and crypt is not None and stored != crypt.fingerprint:
            result.errors.append(
                str(
                    WrongKeyError(
                        f"snapshot was made with key {format_fingerprint(stored)}, "
                        f"the key given is {format_fingerprint(crypt.fingerprint)}: content not checked"
                    )
                )
            )
            crypt = None
        if manifest.is_signed:
            if crypt is None:
                result.notes.append("manifest signature not checked (no key)")
            else:
                try:
                    manifest.verify_signature(crypt)
                except SnapfsError as exc:
                    result.errors.append(f"manifest: {exc}")
        jobs = []
        for file in manifest.files:
            encrypted = file.crypt_mode == "encrypt"
            if encrypted and crypt is None:
                result.content_verified = False
            path = f"{snapshot.path}/{file.filename}"
            try:
                if file.archive_type is FileType.BLOB:
                    raw = ds.read_snapshot_file(snapshot, file)
                    # Without the key, magic and CRC are still checked before the key is needed.
                    with contextlib.suppress(KeyRequiredError):
                        decode_blob(raw, crypt, name=path)
                else:
                    index = ds.open_index(snapshot, file)
                    jobs.append(_IndexJob(result, file.filename, index, encrypted))
                    result.chunks += index.chunk_count
                result.archives += 1
            except SnapfsError as exc:
                result.errors.append(f"{file.filename}: {exc}")
        if not result.content_verified:
            result.notes.append(
                "encrypted content not verified without the key (presence and CRC only)"
            )
        return jobs

    # -- reporting

    def _collect_bad(self, job: _IndexJob) -> None:
        bad: dict[bytes, BadChunk] = {}
        for start, end, digest in job.index.chunks():
            status = self.chunk_status.get(digest)
            if status is None:
                continue  # outside this run's --subset
            state, message = status.state, status.message
            if state in (OK, WRONG_SIZE) and status.size != end - start:
                state = WRONG_SIZE
                message = f"decodes to {status.size} bytes, the index says {end - start}"
            if state in (OK, CRC_ONLY):
                continue
            entry = bad.get(digest)
            if entry is None:
                entry = bad[digest] = BadChunk(digest.hex(), state, message, job.filename, [])
                job.result.bad_chunks.append(entry)
            entry.ranges.append((start, end))
        if bad:
            self._affected(job, list(bad.values()))

    def _affected(self, job: _IndexJob, bad: list[BadChunk]) -> None:
        """Name what each bad chunk breaks: files of a pxar archive, else the byte range."""
        name = job.filename
        kind = archive_kind(name)
        if kind is not None and kind.is_pxar:
            try:
                self._affected_files(job, bad)
                return
            except SnapfsError as exc:
                for b in bad:
                    b.affected.append(f"{name}: files unknown ({exc})")
                return
        archive = short_name(name)
        for b in bad:
            b.affected += [f"{archive} bytes {a}-{z}" for a, z in b.ranges]

    def _affected_files(self, job: _IndexJob, bad: list[BadChunk]) -> None:
        from snapfs.pxar.accessor import Accessor
        from snapfs.store.chunks import ChunkReader
        from snapfs.store.stream import IndexStream

        ds, snapshot = self.datastore, job.result.snapshot
        if job.encrypted and self.crypt is None:
            raise KeyRequiredError("archive is encrypted and no key was given")
        pxar = PxarNames.of(job.filename)
        names = {f.filename for f in ds.manifest(snapshot).files}
        reader = ChunkReader(ds.backend, self.crypt)
        split = pxar.meta in names
        meta_name = pxar.meta if split else pxar.unified

        def stream(filename: str) -> IndexStream:
            return IndexStream(
                ds.open_index(snapshot, ds.manifest(snapshot).file(filename)),
                reader,
                f"{snapshot}/{filename}",
            )

        # Metadata-only: entries carry their payload offsets, and the payload may be the damage.
        label = pxar.name
        accessor = Accessor(stream(meta_name), None, name=f"{snapshot}/{label}")
        content_in_job = job.filename != meta_name or not split
        walk_errors: list[SnapfsError] = []
        for entry in accessor.walk(on_error=walk_errors.append):
            if not content_in_job or not entry.is_file or entry.content_offset is None:
                continue
            lo, hi = entry.content_offset, entry.content_offset + entry.size
            for b in bad:
                if any(a < hi and lo < z for a, z in b.ranges) or (
                    entry.size == 0 and any(a <= lo < z for a, z in b.ranges)
                ):
                    b.affected.append(f"{label}:{entry.path.decode('utf-8', 'backslashreplace')}")
        for exc in walk_errors:
            for b in bad:
                b.affected.append(f"{label}: metadata unreadable: {exc}")


def verify(
    datastore: Datastore,
    snapshots: list[Snapshot],
    crypt: CryptConfig | None = None,
    **options: Any,
) -> VerifyReport:
    """Verify the snapshots (see the module docstring for what is checked); `options` are
    Verifier's: where the shards run, which subset, the --resume file, progress callbacks."""
    return Verifier(datastore, crypt, **options).run(snapshots)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{text}" if isinstance(exc, SnapfsError) else f"{exc.__class__.__name__}: {text}"
