"""Open directories, and the cache that keeps complete pxar directory listings. No FUSE here.

A directory is listed through a handle that keeps a position, so 100,000 entries stream in
kernel-sized batches. The kernel does not cache FUSE directory listings: without the
`ListingCache` a warm `find` or `ls -l` decodes every pxar directory again, so a pxar directory
listed to its end is kept (bounded by total entries, ~0.5 KiB each) and later listings of it are
served from memory without a worker thread; the nodes handed out are counted as before.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from snapfs.index.archive import Listing

if TYPE_CHECKING:
    from snapfs.fs.archive import Archive, PxarNode
    from snapfs.fs.content import FilesJob
    from snapfs.fs.node import Attr, DatastoreNode, Node
    from snapfs.pxar.entry import Entry

#: Entries kept in complete pxar directory listings, across all directories of the mount.
LISTING_CACHE_ENTRIES = 50_000


_K = TypeVar("_K", bound=Hashable)
_L = TypeVar("_L", bound=Sized)


@dataclass(slots=True)
class DirItem:
    name: bytes
    node: Node
    attr: Attr
    next_offset: int


class DirHandle:
    """An open directory of `node`: `read` hands out entries from any position."""

    __slots__ = ("node",)
    #: `read` never blocks (the listing is in memory): the adapter answers it inline.
    in_memory = True
    #: `load` brings the whole listing into memory (blocking), after which `in_memory` holds.
    loads = False

    def __init__(self, node: Node) -> None:
        self.node = node

    def read(self, start: int, count: int) -> list[DirItem]:
        """Up to `count` entries from position `start`; `next_offset` resumes after each."""
        return list(itertools.islice(self.items(start), count))

    def load(self) -> None:
        """Where `loads`: read the listing now (blocking), so that reads are answered inline."""

    def find(self, ino: int) -> Node | None:
        """The node of inode `ino` if this directory lists it (blocking unless `in_memory`)."""
        return next((item.node for item in self.all_items() if item.node.ino == ino), None)

    def all_items(self, batch: int = 1000) -> list[DirItem]:
        """Every entry, read `batch` at a time as the kernel reads them, so a handle that takes a
        lock per read (DecodingHandle) holds it for one batch at a time, not the whole listing."""
        found: list[DirItem] = []
        start = 0
        while got := self.read(start, batch):
            found += got
            start = got[-1].next_offset
        return found

    def items(self, start: int) -> Iterator[DirItem]:
        """The entries from position `start`, made one at a time: the kernel's buffer takes a
        few dozen per request, so an in-memory handle builds only what it sends."""
        raise NotImplementedError

    def files_listed(self, items: list[DirItem]) -> FilesJob | None:
        """After `items` went to the kernel: the job that hands it their files' bytes, if a
        reader is about to read them (only a pxar directory has any)."""
        return None


class ChildrenHandle(DirHandle):
    """A datastore-level directory: its children as loaded when it was opened."""

    __slots__ = ("children",)

    def __init__(self, node: Node, children: list[tuple[bytes, DatastoreNode]]) -> None:
        super().__init__(node)
        self.children = children

    def items(self, start: int) -> Iterator[DirItem]:
        for i, (name, n) in enumerate(itertools.islice(self.children, start, None), start + 1):
            yield DirItem(name, n, n.attr(load=False), i)


class PxarDirHandle(DirHandle):
    """A directory of a pxar archive."""

    __slots__ = ("archive", "entry")

    def __init__(self, node: Node, archive: Archive, entry: Entry) -> None:
        super().__init__(node)
        self.archive = archive
        self.entry = entry

    def files_listed(self, items: list[DirItem]) -> FilesJob | None:
        # A generator: the archive reads it only while its files are being read in order.
        return self.archive.files_listed(item.node for item in items)


class CachedListingHandle(PxarDirHandle):
    """A pxar directory whose complete listing is cached: no decoding, no lock."""

    __slots__ = ("listing",)

    def __init__(self, node: Node, archive: Archive, entry: Entry, listing: Listing | None) -> None:
        super().__init__(node, archive, entry)
        self.listing = listing

    def find(self, ino: int) -> Node | None:
        self.load()
        archive = self.archive
        for _, entry in self.listing:  # by entry: no node, no attributes made for the others
            if archive.ino(entry) == ino:
                return archive.entry_node(entry)
        return None

    def items(self, start: int) -> Iterator[DirItem]:
        if start == 0:
            self.archive.cached_listing_read(self.entry)
        entry_node = self.archive.entry_node
        listing = self.listing
        # By position, not islice: a 20,000-entry directory is read a few dozen at a time, and
        # islice walked from the start on every request.
        for i in range(start, len(listing)):
            name, entry = listing[i]
            node = entry_node(entry)
            yield DirItem(name, node, node.attr(), i + 1)


class IndexedListingHandle(CachedListingHandle):
    """A pxar directory whose listing comes from the archive's index, read at the first `read`:
    the kernel opens a directory it keeps the listing of, then reads nothing."""

    loads = True

    def __init__(self, node: Node, archive: Archive, entry: Entry) -> None:
        super().__init__(node, archive, entry, None)

    @property
    def in_memory(self) -> bool:  # type: ignore[override]
        return self.listing is not None  # else the first read asks the index (SQLite)

    def load(self) -> None:
        if self.listing is None:
            self.listing = self.archive.indexed_listing(self.entry)

    def items(self, start: int) -> Iterator[DirItem]:
        self.load()
        return super().items(start)


class DecodingHandle(PxarDirHandle):
    """A pxar directory decoded as the kernel asks (blocking), and collected into `_collected`
    so that a read to the end can be cached for the next opendir."""

    __slots__ = ("_iter", "_iter_pos", "_pending", "_collected")
    in_memory = False

    def __init__(self, node: Node, archive: Archive, entry: Entry) -> None:
        super().__init__(node, archive, entry)
        self._iter: Iterator[Entry] | None = None
        self._iter_pos = 0
        self._pending: list[tuple[int, bytes, PxarNode]] = []
        self._collected: list[tuple[bytes, Entry]] | None = None

    def read(self, start: int, count: int) -> list[DirItem]:
        pending = [p for p in self._pending if p[0] >= start]
        expected = pending[0][0] if pending else self._iter_pos
        archive = self.archive
        with archive.lock:
            try:
                if self._iter is None or expected != start:
                    self._iter = archive.accessor.listdir(self.entry)
                    self._iter_pos = 0
                    pending = []
                    # Only a listing read from its start, in order, is collected for the cache.
                    self._collected = [] if start == 0 else None
                    for _ in itertools.islice(self._iter, start):
                        self._iter_pos += 1
                collected = self._collected
                while len(pending) < count:
                    child = next(self._iter, None)
                    if child is None:
                        if collected is not None:
                            self._collected = None
                            archive.keep_listing(self.entry, tuple(collected))
                        break
                    index = self._iter_pos
                    self._iter_pos += 1
                    name = child.name  # a hard link keeps its own name, but is its target's inode
                    resolved = archive.resolve(child)
                    pending.append((index, name, archive.entry_node(resolved)))
                    if collected is not None:
                        collected.append((name, resolved))
            except BaseException:
                self._collected = None  # the iterator is dead: what it gave is not complete
                raise
            self._pending = pending
            # Attributes after the batch: a hard link later in it raises its target's st_nlink.
            return [
                DirItem(name, node, node.attr(), index + 1) for index, name, node in pending[:count]
            ]


class ListingCache(Generic[_K, _L]):
    """Complete directory listings, least recently used first out, bounded by the total number
    of entries they hold (a directory counts at least 1, so empty ones are bounded too).

    The model's cache holds pxar directories (`Listing`), keyed by (archive id, directory
    entry_offset); entries are stored resolved (a hard link as its target, under its own name),
    as readdir hands them out. `.versions` keeps its own (`versions.py`). Thread-safe: filled by
    worker threads, read by the FUSE thread.
    """

    def __init__(self, max_entries: int = LISTING_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lists: OrderedDict[_K, _L] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def get(self, key: _K) -> _L | None:
        with self._lock:
            listing = self._lists.get(key)
            if listing is not None:
                self._lists.move_to_end(key)
            return listing

    def put(self, key: _K, listing: _L) -> None:
        weight = max(1, len(listing))
        if weight > self.max_entries:
            return
        with self._lock:
            old = self._lists.pop(key, None)
            if old is not None:
                self._count -= max(1, len(old))
            self._lists[key] = listing
            self._count += weight
            while self._count > self.max_entries:
                _, old = self._lists.popitem(last=False)
                self._count -= max(1, len(old))

    @property
    def entries(self) -> int:
        return self._count

    def __len__(self) -> int:
        return len(self._lists)
