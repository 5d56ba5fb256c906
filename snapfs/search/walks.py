"""The archive walks of an index refresh, as tasks any worker can run (`snapfs index --workers`).

Indexing a snapshot is mostly reading: decoding its pxar archives and hashing the bytes of every
file whose hash is not known yet. That part needs nothing from the index file, so a worker does
it (`walk_snapshot`) and hands back the entries; the coordinator keeps the one SQLite file and
writes each snapshot in its own transaction, as a refresh in one process does.

What a worker cannot ask the index while it walks, the task brings: the content hashes known by
place for each archive's series when the task was made (snapfs.search.entries.HashCache), so an
unchanged file is not read again. The worker gives back every place it used or learnt, and the
coordinator records them as a walk in its own process would have.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from snapfs.format.archive_names import PxarNames
from snapfs.format.index import DynamicIndex, FixedIndex
from snapfs.format.manifest import Manifest
from snapfs.index.history import IndexedEntry
from snapfs.pxar.accessor import Accessor
from snapfs.search.entries import HashCache, archive_entries
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Snapshot
from snapfs.store.readahead import ForwardReader, Readahead
from snapfs.store.workers import WorkerStore
from snapfs.views.archives import SnapshotReader

#: Threads decoding chunks ahead of the indexing walk (zstd, AES and SHA-256 release the GIL).
DECODERS = 2
#: Chunks kept decoded while indexing: the walk's window and the hashing reads behind it.
CACHE_SIZE = 64 << 20


def archive_csum(manifest: Manifest, names: PxarNames) -> bytes:
    """What identifies an archive's content: its index checksum (for a split pair, of both)."""
    files = {f.filename: f for f in manifest.files}
    if names.meta in files and names.unified not in files:
        payload = files.get(names.payload)
        return hashlib.sha256(files[names.meta].csum + (payload.csum if payload else b"")).digest()
    return files[names.unified].csum


def open_walk(
    reader: SnapshotReader, names: PxarNames, readahead: Readahead
) -> tuple[Accessor, FixedIndex | DynamicIndex]:
    """An Accessor over the archive, decoding ahead, and the index of the stream its file bytes
    lie in: the archive's own (v1) or its payload stream's (split)."""
    files = {f.filename for f in reader.manifest.files}
    label = f"{reader.snapshot}/{names.name}"
    if names.meta in files and names.unified not in files:
        meta = reader.stream(names.meta)
        payload = reader.stream(names.payload)
        accessor = Accessor(
            ForwardReader(meta, readahead), ForwardReader(payload, readahead), name=label
        )
        return accessor, payload.index
    stream = reader.stream(names.unified)
    return Accessor(ForwardReader(stream, readahead), name=label), stream.index


@dataclass(frozen=True)
class ArchiveWalk:
    names: PxarNames
    private: bool  # encrypted: walked with the key, kept in the sealed part
    places: dict[bytes, bytes]  # content hashes by place known for its series


@dataclass(frozen=True)
class SnapshotWalk:
    """One task: walk these archives of `snapshot`."""

    store: WorkerStore
    snapshot: Snapshot
    archives: tuple[ArchiveWalk, ...]


@dataclass
class WalkedArchive:
    entries: list[IndexedEntry]
    places: dict[bytes, bytes] = field(default_factory=dict)  # used or learnt by this walk
    hashed: int = 0
    reused: int = 0


def walk_snapshot(task: SnapshotWalk) -> list[WalkedArchive]:
    """Runs on a worker: every entry of each archive of the task, in the task's order."""
    datastore, crypt = task.store.open()
    private = any(a.private for a in task.archives)
    reader = SnapshotReader(
        datastore, task.snapshot, crypt if private else None, ChunkCache(CACHE_SIZE)
    )
    readahead = Readahead(DECODERS, "snapfs-search-decode")
    try:
        return [_walk(reader, archive, readahead) for archive in task.archives]
    finally:
        readahead.close()


def _walk(reader: SnapshotReader, archive: ArchiveWalk, readahead: Readahead) -> WalkedArchive:
    used: dict[bytes, bytes] = {}

    def lookup(place: bytes) -> bytes | None:
        content = archive.places.get(place) or used.get(place)
        if content is not None:
            used[place] = content
        return content

    hashes = HashCache(lookup, used.__setitem__)
    accessor, content_index = open_walk(reader, archive.names, readahead)
    entries = list(archive_entries(accessor, content_index, hashes))
    return WalkedArchive(entries, used, hashes.hashed, hashes.reused)
