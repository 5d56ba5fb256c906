"""What changed between two snapshots: pxar entries from the search index, images by chunk,
blobs by checksum.

The symbols are restic's: `+` added, `-` removed, `M` content changed, `T` type changed, `U`
metadata only (mode, owner, times, xattrs, ACL, flags), and `?` content changed while size and
mtime did not (bit rot, or a file changed behind its mtime). A file's content is its SHA-256
from the index; a symlink's is its target, a device's its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from snapfs.errors import NotFoundError
from snapfs.format.archive_names import ArchiveKind, FileType, archive_kind, short_name
from snapfs.format.crypt import CryptConfig
from snapfs.format.index import FixedIndex
from snapfs.format.manifest import Manifest
from snapfs.index.history import IndexedEntry, Series
from snapfs.search.index import SearchIndex, pxar_archives, snapshot_key
from snapfs.store.datastore import Datastore, Snapshot
from snapfs.views.archives import SnapshotReader

__all__ = ["Change", "classify", "diff_snapshots"]


@dataclass(frozen=True)
class Change:
    change: str  # + - M T U ?
    archive: str
    path: bytes | None = None  # None: the archive as a whole
    old: IndexedEntry | None = None
    new: IndexedEntry | None = None
    chunks: tuple[int, ...] | None = None  # an image: the chunks whose bytes differ
    bytes: int | None = None  # ... and how many bytes they hold


def _content(entry: IndexedEntry) -> object:
    if entry.type == "f":
        return entry.content
    meta = json.loads(entry.meta) if entry.meta else {}
    return meta.get("target"), meta.get("device")


def classify(old: IndexedEntry | None, new: IndexedEntry | None) -> str | None:
    """The change from `old` to `new` (None: absent), None if they are the same."""
    if old == new:
        return None
    if old is None:
        return "+"
    if new is None:
        return "-"
    if old.type != new.type:
        return "T"
    if _content(old) != _content(new):
        same_look = (old.size, old.mtime_ns) == (new.size, new.mtime_ns)
        return "?" if old.type == "f" and same_look else "M"
    return "U"


def diff_snapshots(
    index: SearchIndex,
    datastore: Datastore,
    a: Snapshot,
    b: Snapshot,
    *,
    archive: str | None = None,
    path: bytes | None = None,
    crypt: CryptConfig | None = None,
    content: bool = False,
) -> Iterator[Change]:
    """Every change from snapshot `a` to `b`, archive by archive, paths in order. `content`:
    confirm a changed file or image chunk by comparing the bytes in the store."""
    manifests = (datastore.manifest(a), datastore.manifest(b))
    names = [_archives(m) for m in manifests]
    wanted = sorted(set(names[0]) | set(names[1]))
    if archive is not None:
        name = _archive_name(archive, wanted)
        wanted = [name]
    readers = (
        [SnapshotReader(datastore, a, crypt), SnapshotReader(datastore, b, crypt)]
        if content
        else None
    )
    for name in wanted:
        kinds = [n.get(name) for n in names]
        if kinds[0] is None or kinds[1] is None:
            if path is None:
                yield Change("+" if kinds[0] is None else "-", name)
            continue
        kind = kinds[0]
        if kind is ArchiveKind.PXAR:
            yield from _diff_pxar(index, a, b, name, path, readers)
        elif kind is ArchiveKind.IMAGE and path is None:
            change = _diff_image(datastore, a, b, name, readers)
            if change is not None:
                yield change
        elif path is None and _csum(manifests[0], name) != _csum(manifests[1], name):
            yield Change("M", name)


def _archives(manifest: Manifest) -> dict[str, ArchiveKind]:
    """The archives of a snapshot by user-facing name: pxar archives once (split or not),
    images, blobs; the catalog is not an archive of its own."""
    found: dict[str, ArchiveKind] = dict.fromkeys(pxar_archives(manifest), ArchiveKind.PXAR)
    for file in manifest.files:
        kind = archive_kind(file.filename)
        if kind in (ArchiveKind.IMAGE, ArchiveKind.BLOB):
            found[short_name(file.filename)] = kind
    return found


def _archive_name(given: str, names: list[str]) -> str:
    for name in names:
        if given in (name, short_name(given)) or short_name(given) == name:
            return name
    raise NotFoundError(
        f"neither snapshot has an archive {given!r} (they have: {', '.join(names) or 'none'})"
    )


def _csum(manifest: Manifest, name: str) -> bytes:
    for file in manifest.files:
        if short_name(file.filename) == name:
            return file.csum
    raise NotFoundError(f"{name}: not in the manifest")


def _diff_pxar(
    index: SearchIndex,
    a: Snapshot,
    b: Snapshot,
    name: str,
    path: bytes | None,
    readers: list[SnapshotReader] | None,
) -> Iterator[Change]:
    for snapshot in (a, b):
        index.require_snapshot(snapshot)
    series = (_series(a, name), _series(b, name))
    if series[0] == series[1]:  # two snapshots of one group: only what changed is read
        pairs = index.changes(series[0], a.time, b.time)
    else:
        old, new = index.state(series[0], a.time), index.state(series[1], b.time)
        pairs = {p: (old.get(p), new.get(p)) for p in old.keys() | new.keys()}
    for entry_path in sorted(pairs):
        if path is not None and not _below(entry_path, path):
            continue
        before, after = pairs[entry_path]
        change = classify(before, after)
        if change in ("M", "?") and readers is not None:
            assert before is not None and after is not None
            if _same_bytes(readers, name, entry_path):
                change = classify(before, after._replace(content=before.content))
        if change is not None:
            yield Change(change, name, entry_path, before, after)


def _series(snapshot: Snapshot, archive: str) -> Series:
    ns, type, bid, _ = snapshot_key(snapshot)
    return Series(ns, type, bid, archive)


def _below(entry_path: bytes, path: bytes) -> bool:
    path = path.rstrip(b"/") or b"/"
    return path == b"/" or entry_path == path or entry_path.startswith(path + b"/")


def _same_bytes(readers: list[SnapshotReader], archive: str, path: bytes) -> bool:
    """Compare a file's bytes in both snapshots, block by block."""
    accessors = [r.pxar(archive) for r in readers]
    entries = [acc.resolve_hardlink(acc.lookup(path)) for acc in accessors]
    if entries[0].size != entries[1].size:
        return False
    block, offset = 4 << 20, 0
    while offset < entries[0].size:
        parts = [acc.read(e, offset, block) for acc, e in zip(accessors, entries, strict=True)]
        if parts[0] != parts[1]:
            return False
        offset += block
    return True


def _diff_image(
    datastore: Datastore,
    a: Snapshot,
    b: Snapshot,
    name: str,
    readers: list[SnapshotReader] | None,
) -> Change | None:
    """Images compare by their chunk digests (no chunk is read); `readers`: confirm by bytes."""
    filename = name + FileType.FIXED_INDEX.suffix
    indexes = [datastore.open_index(s, datastore.resolve_archive(s, filename)) for s in (a, b)]
    old, new = indexes
    assert isinstance(old, FixedIndex) and isinstance(new, FixedIndex)
    chunks = []
    changed_bytes = 0
    for i in range(max(old.chunk_count, new.chunk_count)):
        if i < old.chunk_count and i < new.chunk_count and old.digest(i) == new.digest(i):
            continue
        if readers is not None and i < old.chunk_count and i < new.chunk_count:
            streams = [r.stream(filename) for r in readers]
            if streams[0].chunk_data(i) == streams[1].chunk_data(i):
                continue
        start, end = (new if i < new.chunk_count else old).chunk_range(i)
        chunks.append(i)
        changed_bytes += end - start
    if not chunks and old.size == new.size:
        return None
    return Change("M", name, chunks=tuple(chunks), bytes=changed_bytes)
