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
from typing import Any

from snapfs.errors import (
    KeyRequiredError,
    MissingChunkError,
    NotFoundError,
    SnapfsError,
    UsageError,
    WrongKeyError,
)
from snapfs.format.archive_names import FileType, PxarNames, archive_kind, short_name
from snapfs.format.blob import decode_blob, decode_chunk
from snapfs.format.crypt import CryptConfig, format_fingerprint
from snapfs.format.index import DynamicIndex, FixedIndex
from snapfs.store.datastore import BACKUP_TYPES, Datastore, Group, Snapshot, parse_snapshot
from snapfs.store.pipeline import ordered

DEFAULT_WORKERS = 8
#: Chunk checks under way per worker: enough that one slow GET does not idle the others, few
#: enough that millions of chunks never stand in memory as futures at once.
CHECKS_PER_WORKER = 8

# Chunk states. CRC_ONLY: an encrypted chunk checked without its key (magic and CRC only).
OK, CRC_ONLY, MISSING, CORRUPT = "ok", "crc-only", "missing", "corrupt"


@dataclass
class ChunkStatus:
    state: str
    message: str = ""
    size: int | None = None  # decoded length, when it could be decoded


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
    chunks_checked: int = 0
    bytes_checked: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.snapshots)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshots": [s.to_dict() for s in self.snapshots],
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
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
        failed = sum(not s.ok for s in self.snapshots)
        out.append(
            f"verified {len(self.snapshots)} snapshots: {len(self.snapshots) - failed} ok, {failed} failed; "
            f"{self.chunks_checked} chunks ({self.bytes_checked / 1e6:.1f} MB) checked in {self.elapsed:.1f}s"
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
    def __init__(
        self,
        datastore: Datastore,
        crypt: CryptConfig | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.datastore = datastore
        self.crypt = crypt
        self.workers = workers
        self.on_chunk = on_chunk
        self.chunk_status: dict[bytes, ChunkStatus] = {}

    def run(self, snapshots: list[Snapshot]) -> VerifyReport:
        started = time.monotonic()
        report = VerifyReport()
        jobs: list[_IndexJob] = []
        for snapshot in snapshots:
            result = SnapshotResult(snapshot)
            report.snapshots.append(result)
            jobs += self._check_snapshot_files(result)
        digests = {d for job in jobs for d in _digests(job.index)} - self.chunk_status.keys()
        for digest, future in ordered(
            digests,
            self._check_chunk,
            workers=self.workers,
            window=CHECKS_PER_WORKER * self.workers,
            thread_name="snapfs-verify",
        ):
            status = future.result()
            self.chunk_status[digest] = status
            report.chunks_checked += 1
            report.bytes_checked += status.size or 0
            if self.on_chunk is not None:
                self.on_chunk(status.size or 0)
        for job in jobs:
            self._collect_bad(job)
        report.elapsed = time.monotonic() - started
        return report

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

    # -- per chunk

    def _check_chunk(self, digest: bytes) -> ChunkStatus:
        try:
            raw = self.datastore.backend.read_chunk(digest)
        except MissingChunkError as exc:
            return ChunkStatus(MISSING, str(exc))
        except SnapfsError as exc:
            return ChunkStatus(MISSING, str(exc))
        try:
            data = decode_chunk(raw, digest, self.crypt, name=f"chunk {digest.hex()}")
        except KeyRequiredError:
            return ChunkStatus(CRC_ONLY)
        except SnapfsError as exc:
            return ChunkStatus(CORRUPT, str(exc))
        except Exception as exc:  # a decoder bug must fail the chunk, not the whole verify
            return ChunkStatus(CORRUPT, f"chunk {digest.hex()}: cannot decode: {exc}")
        return ChunkStatus(OK, size=len(data))

    # -- reporting

    def _collect_bad(self, job: _IndexJob) -> None:
        bad: dict[bytes, BadChunk] = {}
        for start, end, digest in job.index.chunks():
            status = self.chunk_status[digest]
            state, message = status.state, status.message
            if state == OK and status.size != end - start:
                state = "wrong-size"
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
    *,
    workers: int = DEFAULT_WORKERS,
    on_chunk: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the snapshots; see the module docstring for what is checked."""
    return Verifier(datastore, crypt, workers=workers, on_chunk=on_chunk).run(snapshots)


def _digests(index: FixedIndex | DynamicIndex) -> set[bytes]:
    return {index.digest(i) for i in range(index.chunk_count)}
