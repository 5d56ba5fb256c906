"""The entries of one pxar archive as the search index keeps them, content hashes included.

Every file's bytes are hashed (SHA-256) once, so two versions compare exactly without reading
either again. Reading them is what makes indexing cost more than a metadata walk, so the hash
is first looked up by *where* the bytes lie: the digests of the chunks that hold them, the
offset in the first of those chunks and the size (`place`). Chunks are named by their content,
so equal places hold equal bytes: a file that a later backup left where it was (a split
archive's unchanged file, re-used chunk for chunk; a large file between unchanged neighbours in
a v1 archive) is hashed once for the whole datastore, and its chunks are never fetched again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator

from snapfs.format.index import DynamicIndex, FixedIndex
from snapfs.index.archive import entry_extra
from snapfs.index.history import IndexedEntry
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Entry, EntryKind, type_letter

__all__ = ["HashCache", "archive_entries"]

_READ_BLOCK = 4 << 20
_EMPTY = hashlib.sha256(b"").digest()


class HashCache:
    """Content hashes by place: `lookup(place)` and `store(place, content)`."""

    def __init__(
        self, lookup: Callable[[bytes], bytes | None], store: Callable[[bytes, bytes], None]
    ) -> None:
        self.lookup = lookup
        self.store = store
        self.hashed = 0  # files whose bytes were read
        self.reused = 0  # files whose hash was known by place


def archive_entries(
    accessor: Accessor, content_index: FixedIndex | DynamicIndex, hashes: HashCache
) -> Iterator[IndexedEntry]:
    """Every entry of the archive, in archive order. `content_index` is the index of the stream
    file bytes lie in: the archive's own (v1) or its payload stream's (split)."""
    for entry in accessor.walk():
        target = accessor.resolve_hardlink(entry) if entry.kind is EntryKind.HARDLINK else entry
        content = None
        if target.kind is EntryKind.FILE:
            content = _content_hash(accessor, target, content_index, hashes)
        yield IndexedEntry(
            entry.path or b"/",
            type_letter(target.mode),
            target.mode,
            target.uid,
            target.gid,
            target.size,
            target.mtime_ns,
            content,
            _meta(target),
        )


def _meta(entry: Entry) -> str | None:
    """What else makes a version differ: link target, device, flags, xattrs, ACL, fcaps."""
    extra = entry_extra(entry)
    fields: dict[str, object] = json.loads(extra) if extra else {}
    if entry.link_target is not None and entry.kind is EntryKind.SYMLINK:
        fields["target"] = entry.link_target.hex()
    if entry.device is not None:
        fields["device"] = list(entry.device)
    if entry.flags:
        fields["flags"] = entry.flags
    return json.dumps(fields, separators=(",", ":"), sort_keys=True) if fields else None


def _content_hash(
    accessor: Accessor, entry: Entry, index: FixedIndex | DynamicIndex, hashes: HashCache
) -> bytes:
    if entry.size == 0 or entry.content_offset is None:
        return _EMPTY
    place = _place(index, entry.content_offset, entry.size)
    known = hashes.lookup(place)
    if known is not None:
        hashes.reused += 1
        return known
    digest = hashlib.sha256()
    offset = 0
    while offset < entry.size:
        block = accessor.read(entry, offset, min(_READ_BLOCK, entry.size - offset))
        digest.update(block)
        offset += len(block)
    content = digest.digest()
    hashes.store(place, content)
    hashes.hashed += 1
    return content


def _place(index: FixedIndex | DynamicIndex, start: int, size: int) -> bytes:
    """Where `size` bytes at stream offset `start` lie, as chunk digests: equal places hold
    equal bytes."""
    first = index.chunk_at(start)
    last = index.chunk_at(start + size - 1)
    place = hashlib.sha256()
    place.update(f"{start - index.chunk_range(first)[0]}:{size}:".encode())
    for i in range(first, last + 1):
        place.update(index.digest(i))
    return place.digest()
