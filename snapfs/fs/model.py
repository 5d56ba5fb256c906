"""The mounted datastore as a tree of nodes, and the inode table the kernel talks to. No FUSE here.

The tree starts at `FsModel.root` (layout in `namespace.py`), every level built lazily on first
lookup or listing. Each node answers the plain requests itself (`node.py`); the model holds what
they share: the datastore, the key, the chunk cache and readers, the listing cache, the archive
indexer (`indexing.py`), the search index `.versions` reads (`versions.py`), and the inode
table. The FUSE adapter, and anything else that browses a datastore, asks the model for a node
by inode and then asks the node.

Refresh: snapshots come and go while mounted (backups, prune). Listings of namespaces, groups and
snapshots (and an incomplete snapshot) are re-read once they are `refresh_interval` seconds old;
an entry that is still there keeps its node and inode number, a vanished one is dropped from the
inode table (the kernel then gets ENOENT for it; open files keep reading what they opened). The
kernel caches these entries only for the interval. What is inside a complete snapshot never
changes, so it is read once.

Inodes: the datastore-level nodes get small numbers from a counter (never reused) and live as
long as the mount or until a refresh finds them gone (there are as many as snapshots and archives,
not files). Entries inside a pxar archive derive theirs from their offset (`archive.py`). Once
the archive is indexed, an entry's node is made again from the index whenever the kernel names
its inode, so the table holds nothing per entry: only the last RECENT_NODES nodes handed out
are kept, so that the requests that follow a listing (`ls -l` asks three per file) are answered
without the index. Memory then stays flat however many entries the kernel holds (a `find` over
ten million files holds them all). Until then, the table counts the kernel's references to each
entry (lookup counts, dropped on `forget`) and keeps, for a file, only the directory it was
found in (a tenth of a node: listing that directory again finds it, from the listing cache or
by decoding, in a worker thread), and directories and hard links' targets whole; all of it is
given up once the index is there. The nodes below `GROUP/.versions/ARCHIVE` are kept whole
while the kernel references them, numbered from a counter in an archive id of their own
(`versions.py`). An archive id (the bits above an entry offset) is never given out twice.

Threading: node methods documented as blocking read storage or decode chunks and are meant to run
in worker threads; their `cached_` twins never block (as `cached_node` is `node`'s). The pxar
part of the inode table (`remember`, `forget`) is changed only from the thread that serves FUSE
requests (`node`, in a worker thread, only reads it and adds to the recent nodes); datastore-level
nodes are added and dropped by the (worker) threads that list, one dict operation at a time.
`.versions` nodes are made by both, each tree's under its own lock.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from lru import LRU

from snapfs.errors import NotFoundError, UnsupportedFormatError
from snapfs.format.crypt import CryptConfig
from snapfs.fs.archive import ARCHIVE_SHIFT, MAX_ARCHIVES, OFFSET_MASK, Archive, PxarNode
from snapfs.fs.content import BytesContent, Content
from snapfs.fs.indexing import ArchiveIndexer
from snapfs.fs.listing import LISTING_CACHE_ENTRIES, DirHandle, DirItem, Listing, ListingCache
from snapfs.fs.listing_ahead import ListingReadahead
from snapfs.fs.namespace import RootNode
from snapfs.fs.node import DOT_NAMES, Attr, DatastoreNode, Node
from snapfs.store.cache import ChunkCache
from snapfs.store.chunks import ChunkReader
from snapfs.store.datastore import Datastore
from snapfs.store.spare_core import SPARE_CORE
from snapfs.store.stats import format_report

if TYPE_CHECKING:
    from snapfs.fs.versions import VersionsIndex

log = logging.getLogger("snapfs.fs")

ROOT_INODE = 1
NAME_MAX = 255
#: Nodes of indexed archives kept after they were handed out (a few hundred bytes each, their
#: entries mostly shared with the listing cache): more than the biggest directory `ls -l` is
#: usually run on, since it asks about each file after listing them all.
RECENT_NODES = 32_768


class FsModel:
    """The whole mount's state: nodes, inode table, shared chunk cache and readers."""

    def __init__(
        self,
        datastore: Datastore,
        crypt: CryptConfig | None = None,
        cache: ChunkCache | None = None,
        *,
        uid: int | None = None,
        gid: int | None = None,
        refresh_interval: float | None = None,
        listing_cache_entries: int = LISTING_CACHE_ENTRIES,
        indexer: ArchiveIndexer | None = None,
        versions_index: VersionsIndex | None = None,
        recent_nodes: int = RECENT_NODES,
    ) -> None:
        self.datastore = datastore
        self.crypt = crypt
        self.cache = cache if cache is not None else ChunkCache()
        # Seconds after which listings are re-read; None (or 0): never, for the mount's life.
        self.refresh_interval = refresh_interval or None
        self.clock = time.monotonic  # what refresh intervals are measured with (tests step it)
        self._backend_refreshed_at = self.clock()
        self._refresh_lock = threading.Lock()
        if hasattr(datastore.backend, "memory_cache"):
            datastore.backend.memory_cache = self.cache  # so the source's stats show hit ratios
        self.map_owner = uid is not None or gid is not None
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.mount_time_ns = time.time_ns()
        # One ChunkReader per key, shared by every snapshot: one fetch per chunk process-wide.
        self.chunk_readers = {
            False: ChunkReader(datastore.backend, None, self.cache, spare=SPARE_CORE),
            True: ChunkReader(datastore.backend, crypt, self.cache, spare=SPARE_CORE)
            if crypt is not None
            else None,
        }
        self._nodes: dict[int, DatastoreNode] = {}
        self._entries: dict[int, PxarNode] = {}  # what the kernel references (`counted`)
        # Nodes of indexed archives recently handed out; the rest are made again on request.
        self._recent: LRU = LRU(recent_nodes)
        self._archives: weakref.WeakValueDictionary[int, Archive] = weakref.WeakValueDictionary()
        self._indexed: list[int] = []  # archives whose counted nodes can now be given up
        # Entries of archives not indexed yet that a listing of their directory finds again:
        # ino -> (the directory's ino, the kernel's references), a tenth of a whole node.
        self._parents: dict[int, tuple[int, int]] = {}
        self._inos = itertools.count(ROOT_INODE)
        self._archive_ids = itertools.count(1)
        self._reported: set[tuple[str, str]] = set()
        self._reported_lock = threading.Lock()
        self.listings: ListingCache[tuple[int, int], Listing] = ListingCache(listing_cache_entries)
        self.listing_readahead = ListingReadahead(self.listings)
        # Directory listings the kernel asked for (from the start); the kernel keeps the ones of
        # archives (snapfs.fs.listing_cache), so a second `find` adds nothing here.
        self.listings_read = 0
        # Files the kernel asked snapfs to open: after the first, none when the kernel opens
        # them itself (snapfs.fs.inode_reads).
        self.files_opened = 0
        # Reads of archive and image files the kernel sent (none for pages it holds already).
        self.reads_sent = 0
        # The FUSE adapter's lines on its own work: the files it hands the kernel before they
        # are read (snapfs.fs.page_fill), the memory it returns when idle (snapfs.fs.idle_memory).
        self.adapter_summaries: list[Callable[[], str]] = []
        # Told the inodes whose attributes changed after the kernel may have cached them (a hard
        # link's target's st_nlink); the FUSE adapter sets it, elsewhere nothing caches them.
        self.notify_attrs_changed: Callable[[int], None] | None = None
        # Default: no archive is indexed; the mount passes the indexer its options ask for.
        self.indexer = indexer if indexer is not None else ArchiveIndexer(None, enabled=False)
        # None: no group has a `.versions` (the default; the mount passes one unless --no-index).
        self.versions_index = versions_index
        self.root = RootNode(self)
        assert self.root.ino == ROOT_INODE

    # -- inode table ------------------------------------------------------------------------------

    def number(self, node: DatastoreNode) -> int:
        """A new datastore-level node's inode number; the node is in the table from now on."""
        ino = next(self._inos)
        if ino > OFFSET_MASK:
            raise UnsupportedFormatError("too many datastore-level nodes for the inode space")
        self._nodes[ino] = node
        return ino

    def new_archive_id(self) -> int:
        """The number a `.versions` tree's inodes start with (an archive's: `add_archive`)."""
        archive_id = next(self._archive_ids)
        if archive_id > MAX_ARCHIVES:
            raise UnsupportedFormatError("too many pxar archives opened in one mount")
        return archive_id

    def add_archive(self, archive: Archive) -> int:
        """The number an opened archive's entry inodes start with; `node` finds the archive by
        it for as long as the archive is open (its node not dropped by a refresh)."""
        archive_id = self.new_archive_id()
        self._archives[archive_id] = archive
        return archive_id

    def archive_indexed(self, archive_id: int) -> None:
        """The archive's index is in use: its entries' nodes can be made again from it, so the
        ones counted until now need not be kept (given up on the FUSE thread, at its next
        request). Called from the thread that built the index."""
        self._indexed.append(archive_id)

    def drop(self, node: DatastoreNode) -> None:
        """Forget a node that vanished on refresh, and every node loaded below it."""
        todo = [node]
        while todo:
            n = todo.pop()
            self._nodes.pop(n.ino, None)
            todo.extend(n.loaded_children())

    def node(self, ino: int) -> Node:
        """The node of an inode the kernel was given (may block: a node given up before its
        archive was indexed is found again in its directory's listing, decoded if need be)."""
        node = self.cached_node(ino)
        if node is None:  # its directory finds it (unless the kernel forgot it meanwhile)
            node = self._found_again(ino, self.node(self._directory_of(ino)).opendir())
        return node

    def cached_node(self, ino: int) -> Node | None:
        """`node` if it needs no decoding (never blocks, but an indexed archive's entry is made
        again from the index: SQLite, a few microseconds); None if `node` must decode."""
        node = self._nodes.get(ino) or self._entries.get(ino) or self._recent.get(ino)
        if node is not None:
            return node
        archive = self._archives.get(ino >> ARCHIVE_SHIFT)
        node = None if archive is None else archive.node_at(ino & OFFSET_MASK)
        if node is not None:
            self._recent[ino] = node
            return node
        parent = self.cached_node(self._directory_of(ino))
        handle = None if parent is None else parent.cached_opendir()
        if handle is None or not handle.in_memory:
            return None
        return self._found_again(ino, handle)

    def _directory_of(self, ino: int) -> int:
        """The directory a file given up before its archive was indexed was found in."""
        found = self._parents.get(ino)
        if found is None:
            raise NotFoundError(f"inode {ino} is not known (forgotten or never looked up)")
        return found[0]

    def _found_again(self, ino: int, handle: DirHandle) -> Node:
        node = handle.find(ino)
        if node is None:  # the directory no longer lists it: only a damaged archive does that
            raise NotFoundError(f"inode {ino} is no longer in its directory {handle.node.where}")
        self._recent[ino] = node
        return node

    def remember(self, node: Node, parent: Node | None = None) -> Node:
        """The kernel got this node (lookup, readdirplus; `parent`: the directory it was found
        in): count it, unless it can be made again from its archive's index, or by listing
        `parent` again (then the table keeps only where to look); returns the table's node."""
        if not node.counted:
            return node
        if self._indexed:
            self._give_up_indexed()
        if node.reproducible:
            self._recent[node.ino] = node
            return node
        ino = node.ino
        if parent is not None and node.found_by_listing and ino not in self._entries:
            self._recent[ino] = node
            known = self._parents.get(ino)
            self._parents[ino] = (parent.ino, 1 if known is None else known[1] + 1)
            return node
        known = self._entries.get(ino)
        if known is None:
            self._entries[ino] = known = node
            # Found before as a plain file, now known as a hard link's target (whose other
            # names lie in other directories): kept whole from now on, with its references.
            moved = self._parents.pop(ino, None)
            if moved is not None:
                known.lookups += moved[1]
        known.lookups += 1
        return known

    def _give_up_indexed(self) -> None:
        """Drop the counted nodes of archives indexed since the last request: `node` makes them
        again from the index (the kernel's later `forget`s of them find nothing, as intended)."""
        ids = set()
        while self._indexed:
            ids.add(self._indexed.pop())
        self._entries = {
            ino: node for ino, node in self._entries.items() if ino >> ARCHIVE_SHIFT not in ids
        }
        self._parents = {
            ino: found for ino, found in self._parents.items() if ino >> ARCHIVE_SHIFT not in ids
        }

    def forget(self, ino: int, count: int) -> None:
        if self._indexed:
            self._give_up_indexed()
        found = self._parents.get(ino)
        if found is not None:
            if found[1] <= count:
                del self._parents[ino]
                self._recent.pop(ino, None)
            else:
                self._parents[ino] = (found[0], found[1] - count)
            return
        node = self._entries.get(ino)
        if node is not None:
            node.lookups -= count
            if node.lookups <= 0:
                del self._entries[ino]

    def references(self, ino: int) -> int:
        """The kernel's references to `ino` that the table counts (0 if it counts none)."""
        found = self._parents.get(ino)
        if found is not None:
            return found[1]
        node = self._entries.get(ino)
        return 0 if node is None else node.lookups

    def attrs_changed(self, inos: Iterable[int]) -> None:
        """These nodes' attributes changed: whoever caches them must ask again."""
        notify = self.notify_attrs_changed
        if notify is not None:
            for ino in inos:
                notify(ino)

    @property
    def entries_referenced(self) -> int:
        """Inodes the table counts while the kernel holds them (what `forget` bounds): entries
        of archives not indexed (whole, or where to find them again), and `.versions` nodes."""
        return len(self._entries) + len(self._parents)

    def resolve(self, names: Iterable[bytes]) -> Node:
        """The node at this path of names below the root, looked up as the kernel would (may
        block). Only names a directory can hold get through: never `.`, `..`, an empty name,
        one with a `/` or NUL, or one longer than NAME_MAX; so a path from outside (a URL) can
        only reach what the mount shows, never a host file."""
        node: Node = self.root
        for name in names:
            if (
                not name
                or name in DOT_NAMES
                or b"/" in name
                or b"\0" in name
                or len(name) > NAME_MAX
            ):
                raise NotFoundError(f"invalid name {os.fsdecode(name)!r} in a path")
            node = node.lookup(name)
        return node

    # -- requests by node: each is the node's own method, for callers that hand the model nodes --

    def lookup(self, parent: Node, name: bytes) -> Node:
        return parent.lookup(name)

    def attr(self, node: Node) -> Attr:
        return node.attr(load=True)

    def readlink(self, node: Node) -> bytes:
        return node.readlink()

    def open(self, node: Node) -> Content | BytesContent:
        return node.open()

    def opendir(self, node: Node) -> DirHandle:
        return node.opendir()

    def cached_opendir(self, node: Node) -> DirHandle | None:
        return node.cached_opendir()

    def readdir(self, handle: DirHandle, start: int, count: int) -> list[DirItem]:
        return handle.read(start, count)

    def xattrs(self, node: Node) -> list[tuple[bytes, bytes]]:
        return node.xattrs()

    # -- shared by the nodes ----------------------------------------------------------------------

    def refresh_backend(self) -> None:
        """Before re-reading a listing: make a caching source (S3) list again, once per interval."""
        refresh = getattr(self.datastore.backend, "refresh", None)
        if refresh is None or self.refresh_interval is None:
            return
        with self._refresh_lock:
            now = self.clock()
            if now - self._backend_refreshed_at < self.refresh_interval:
                return
            self._backend_refreshed_at = now
        refresh()

    def close(self) -> None:
        """The mount or server is ending: no more listings read ahead, an unfinished index walk
        stops, leaving nothing behind (the next mount walks again), and `.versions` lets go of
        its index."""
        self.listing_readahead.close()
        self.indexer.close()
        if self.versions_index is not None:
            self.versions_index.close()

    def work_done(self) -> int:
        """A count that grows while the mount works: chunks read (decoded or from the cache),
        listings and reads the kernel asked for, files opened."""
        cache = self.cache
        return cache.hits + cache.misses + self.listings_read + self.reads_sent + self.files_opened

    def stats_text(self) -> str:
        """`.snapfs/stats` and the unmount summary: the source's counters and the chunk cache."""
        backend = self.datastore.backend
        cache = self.cache
        # Chunks fetched and decoded, i.e. real misses: the cache's own miss counter also counts
        # the non-blocking probe that precedes each fetch.
        fetches = sum(r.fetches for r in self.chunk_readers.values() if r is not None)
        ratio = cache.hits / (cache.hits + fetches) if cache.hits + fetches else None
        lines = [f"source: {backend.name}"]
        stats = getattr(backend, "stats", None)
        if stats is not None:
            report = stats()
            report.update(
                memory_cache_hits=cache.hits,
                memory_cache_misses=fetches,
                memory_cache_hit_ratio=ratio,
            )
            lines.append(format_report(report).rstrip("\n"))
        else:
            percent = "n/a" if ratio is None else f"{ratio * 100:.1f}%"
            lines.append(f"memory cache: {cache.hits} hits, {fetches} misses ({percent})")
        lines.append(
            f"memory cache size: {cache.used_bytes} of {cache.max_bytes} bytes, {len(cache)} chunks"
        )
        lines.append(f"chunks read from the source: {fetches}")
        lines.append(f"directory listings read by the kernel: {self.listings_read}")
        lines.append(self.listing_readahead.summary())
        lines.append(f"file opens sent by the kernel: {self.files_opened}")
        lines.append(f"archive and image reads sent by the kernel: {self.reads_sent}")
        lines.extend(summary() for summary in self.adapter_summaries)
        lines.append(self.indexer.summary())
        versions = self.versions_index
        lines.append("group versions (.versions): off" if versions is None else versions.summary())
        refresh = self.refresh_interval
        lines.append(
            f"listings refreshed every {refresh:g} s" if refresh else "listings never refreshed"
        )
        return "\n".join(lines) + "\n"

    def report(self, exc: BaseException, where: str) -> None:
        """Log an error once per (file, message): a reader retrying a bad chunk must not flood."""
        key = (where, str(exc))
        with self._reported_lock:
            if key in self._reported:
                return
            if len(self._reported) > 100_000:
                self._reported.clear()
            self._reported.add(key)
        log.error("%s: %s", where or "/", exc)
