"""The datastore model: namespaces -> groups -> snapshots -> manifest -> archives.

Plain data built from a Backend's listings, so it is the same for a local directory and for an S3
bucket, and testable without either. Listings never fail on one odd entry: a folder whose name is
not a valid backup id or time is passed over, a snapshot without a manifest is listed as
incomplete. Reading a snapshot file checks it against the manifest (size, checksum) before anything
is decoded from it.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from dataclasses import dataclass

from lru import LRU

from snapfs.errors import (
    ChecksumMismatchError,
    CorruptDataError,
    KeyRequiredError,
    NotFoundError,
    SnapfsError,
    UnsupportedFormatError,
    UsageError,
    WrongKeyError,
)
from snapfs.format.archive_names import MANIFEST_NAME, FileType, manifest_candidates
from snapfs.format.blob import decode_blob
from snapfs.format.crypt import CryptConfig, format_fingerprint
from snapfs.format.index import DynamicIndex, FixedIndex, parse_index
from snapfs.format.manifest import Manifest, ManifestFile
from snapfs.store.backend import Backend

BACKUP_TYPES = ("vm", "ct", "host")
MAX_NAMESPACE_DEPTH = 7
MANIFEST_CACHE_ENTRIES = 4096
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._\-]*\Z")
_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z\Z")


def format_backup_time(epoch: int) -> str:
    """PBS's snapshot folder name: UTC RFC 3339 with seconds and a Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _time_name(epoch: int) -> str:
    try:
        return format_backup_time(epoch)
    except (ValueError, OverflowError, OSError):
        return str(epoch)


def parse_backup_time(text: str) -> int:
    m = _TIME.match(text)
    if not m:
        raise UsageError(f"invalid snapshot time {text!r} (expected YYYY-MM-DDTHH:MM:SSZ)")
    try:
        values = [int(g) for g in m.groups()]
        epoch = calendar.timegm(time.struct_time((*values, 0, 0, 0)))
        if format_backup_time(epoch) != text:
            raise ValueError
    except (ValueError, OverflowError):
        raise UsageError(f"invalid snapshot time {text!r}") from None
    return epoch


def parse_namespace(text: str | None) -> tuple[str, ...]:
    """`a/b/c` -> ('a', 'b', 'c'); '' or None is the root namespace."""
    if not text:
        return ()
    parts = tuple(text.strip("/").split("/"))
    if len(parts) > MAX_NAMESPACE_DEPTH or not all(_SAFE_ID.match(p) for p in parts):
        raise UsageError(f"invalid namespace {text!r}")
    return parts


def namespace_path(ns: tuple[str, ...]) -> str:
    """('a', 'b') -> 'ns/a/ns/b', the folder PBS keeps that namespace in."""
    return "/".join(f"ns/{part}" for part in ns)


@dataclass(frozen=True, order=True)
class Group:
    ns: tuple[str, ...]
    type: str
    id: str

    @property
    def path(self) -> str:
        return "/".join(p for p in (namespace_path(self.ns), self.type, self.id) if p)

    def __str__(self) -> str:
        return f"{self.type}/{self.id}"


@dataclass(frozen=True, order=True)
class Snapshot:
    group: Group
    time: int

    @property
    def time_name(self) -> str:
        return format_backup_time(self.time)

    @property
    def path(self) -> str:
        return f"{self.group.path}/{self.time_name}"

    def __str__(self) -> str:
        """PBS's form, `vm/100/2024-06-01T10:00:00Z` (the namespace is said separately)."""
        return f"{self.group}/{self.time_name}"


def parse_snapshot(text: str, ns: tuple[str, ...] = ()) -> Snapshot:
    """`vm/100/2024-06-01T10:00:00Z` -> Snapshot; a bad type, id or time is a UsageError."""
    parts = text.strip("/").split("/")
    if len(parts) != 3:
        raise UsageError(
            f"invalid snapshot {text!r} (expected TYPE/ID/TIME, e.g. vm/100/2024-06-01T10:00:00Z)"
        )
    backup_type, backup_id, when = parts
    if backup_type not in BACKUP_TYPES:
        raise UsageError(
            f"invalid snapshot {text!r}: unknown backup type {backup_type!r} (vm, ct or host)"
        )
    if not _SAFE_ID.match(backup_id):
        raise UsageError(f"invalid snapshot {text!r}: invalid backup id {backup_id!r}")
    return Snapshot(Group(ns, backup_type, backup_id), parse_backup_time(when))


@dataclass(frozen=True)
class SnapshotInfo:
    """What a listing says of a snapshot without decoding its archives."""

    snapshot: Snapshot
    manifest: Manifest | None  # None: incomplete (no manifest) or unreadable manifest
    protected: bool
    problem: str | None = None  # why the manifest could not be read, for the listing

    @property
    def complete(self) -> bool:
        return self.manifest is not None


class Datastore:
    """A PBS datastore read through a Backend. Caches nothing but parsed manifests."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = backend.name
        # Bounded: a long-lived mount over a pruned and re-filled datastore must not keep every
        # manifest it ever read.
        self._manifests: LRU = LRU(MANIFEST_CACHE_ENTRIES)

    # -- listings -------------------------------------------------------------------------------

    def namespaces(self, parent: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        """The direct child namespaces of `parent`."""
        if len(parent) >= MAX_NAMESPACE_DEPTH:
            return []
        base = "/".join(p for p in (namespace_path(parent), "ns") if p)
        return [(*parent, d) for d in self.backend.list_dir(base).dirs if _SAFE_ID.match(d)]

    def all_namespaces(self, parent: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        """`parent` and every namespace below it, depth first."""
        found, todo = [], [parent]
        while todo:
            ns = todo.pop()
            found.append(ns)
            todo.extend(reversed(self.namespaces(ns)))
        return found

    def groups(self, ns: tuple[str, ...] = ()) -> list[Group]:
        found = []
        for backup_type in BACKUP_TYPES:
            base = "/".join(p for p in (namespace_path(ns), backup_type) if p)
            found.extend(
                Group(ns, backup_type, d)
                for d in self.backend.list_dir(base).dirs
                if _SAFE_ID.match(d)
            )
        return found

    def snapshots(self, group: Group) -> list[Snapshot]:
        found = []
        for d in self.backend.list_dir(group.path).dirs:
            if _TIME.match(d):
                try:
                    found.append(Snapshot(group, parse_backup_time(d)))
                except UsageError:
                    continue
        found.sort()
        return found

    def snapshot_info(self, snapshot: Snapshot) -> SnapshotInfo:
        listing = self.backend.list_dir(snapshot.path)
        protected = ".protected" in listing.files
        if MANIFEST_NAME not in listing.files:
            return SnapshotInfo(snapshot, None, protected)
        try:
            manifest = self.manifest(snapshot)
        except SnapfsError as exc:
            return SnapshotInfo(snapshot, None, protected, problem=str(exc))
        return SnapshotInfo(snapshot, manifest, protected)

    def owner(self, group: Group) -> str | None:
        try:
            return self.backend.read_file(f"{group.path}/owner").decode("utf-8", "replace").strip()
        except NotFoundError:
            return None

    def notes(self, group: Group) -> str | None:
        try:
            return self.backend.read_file(f"{group.path}/notes").decode("utf-8", "replace")
        except NotFoundError:
            return None

    # -- snapshot contents ----------------------------------------------------------------------

    def check_exists(self, snapshot: Snapshot) -> None:
        group_dirs = self.backend.list_dir(snapshot.group.path).dirs
        if snapshot.time_name not in group_dirs:
            where = f" in namespace {'/'.join(snapshot.group.ns)}" if snapshot.group.ns else ""
            raise NotFoundError(f"snapshot {snapshot}{where} not found in {self.name}")

    def manifest(self, snapshot: Snapshot) -> Manifest:
        cached = self._manifests.get(snapshot)
        if cached is not None:
            return cached
        path = f"{snapshot.path}/{MANIFEST_NAME}"
        try:
            raw = self.backend.read_file(path)
        except NotFoundError:
            self.check_exists(snapshot)
            raise NotFoundError(
                f"snapshot {snapshot} is incomplete: it has no {MANIFEST_NAME}"
            ) from None
        manifest = Manifest.parse(decode_blob(raw, None, name=path), name=path)
        claimed = (manifest.backup_type, manifest.backup_id, manifest.backup_time)
        if claimed != (snapshot.group.type, snapshot.group.id, snapshot.time):
            # Every other file is checked against the manifest; only this check ties the
            # manifest to its folder (a replayed or moved snapshot would serve other data).
            raise CorruptDataError(
                f"{path}: the manifest is for {manifest.backup_type}/{manifest.backup_id}/"
                f"{_time_name(manifest.backup_time)}, not {snapshot} (replayed or moved)"
            )
        self._manifests[snapshot] = manifest
        return manifest

    def check_key(self, snapshot: Snapshot, crypt: CryptConfig | None) -> None:
        """Refuse a key that is not the snapshot's, and check the manifest signature with it."""
        manifest = self.manifest(snapshot)
        stored = manifest.key_fingerprint
        if crypt is None:
            return
        if stored is not None and stored != crypt.fingerprint:
            raise WrongKeyError(
                f"snapshot {snapshot} was encrypted with key {format_fingerprint(stored)}, "
                f"the key given is {format_fingerprint(crypt.fingerprint)}"
            )
        if manifest.is_signed:
            manifest.verify_signature(crypt)

    def resolve_archive(self, snapshot: Snapshot, name: str) -> ManifestFile:
        """A manifest entry by the name users type: with or without .blob/.fidx/.didx."""
        manifest = self.manifest(snapshot)
        names = [f.filename for f in manifest.files]
        for candidate in manifest_candidates(name):
            if candidate in names:
                return manifest.file(candidate)
        raise NotFoundError(
            f"snapshot {snapshot} has no archive {name!r} (it has: {', '.join(names) or 'none'})"
        )

    def read_snapshot_file(self, snapshot: Snapshot, file: ManifestFile) -> bytes:
        """The raw bytes of a blob or index, checked against the manifest for blobs."""
        path = f"{snapshot.path}/{file.filename}"
        raw = self.backend.read_file(path)
        if file.archive_type is FileType.BLOB and (
            len(raw) != file.size or hashlib.sha256(raw).digest() != file.csum
        ):
            raise ChecksumMismatchError(
                f"{path}: size/sha256 do not match the manifest (file changed or corrupt)"
            )
        return raw

    def open_blob(self, snapshot: Snapshot, file: ManifestFile, crypt: CryptConfig | None) -> bytes:
        self._require_key(snapshot, file, crypt)
        raw = self.read_snapshot_file(snapshot, file)
        return decode_blob(raw, crypt, name=f"{snapshot.path}/{file.filename}")

    def open_index(self, snapshot: Snapshot, file: ManifestFile) -> FixedIndex | DynamicIndex:
        path = f"{snapshot.path}/{file.filename}"
        if file.archive_type is FileType.BLOB:
            raise UnsupportedFormatError(f"{path}: not an index file")
        index = parse_index(self.read_snapshot_file(snapshot, file), name=path)
        if index.index_csum != file.csum or index.size != file.size:
            raise ChecksumMismatchError(
                f"{path}: index checksum/size do not match the manifest "
                f"(index {index.index_csum.hex()[:16]}…/{index.size}, manifest {file.csum.hex()[:16]}…/{file.size})"
            )
        return index

    def _require_key(
        self, snapshot: Snapshot, file: ManifestFile, crypt: CryptConfig | None
    ) -> None:
        if file.crypt_mode == "encrypt" and crypt is None:
            stored = self.manifest(snapshot).key_fingerprint
            key = f" (key {format_fingerprint(stored)})" if stored is not None else ""
            raise KeyRequiredError(
                f"snapshot {snapshot}{key}: {file.filename} is encrypted; "
                "give its key with --keyfile"
            )
        self.check_key(snapshot, crypt)
