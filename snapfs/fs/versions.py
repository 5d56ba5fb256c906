"""`GROUP/.versions/`: every version of every file of a backup group, from the search index.

    <group>/.versions/              one directory per pxar archive name of the group
      root.pxar/                    the union of that archive's trees over the group's snapshots
        etc/                        a directory: whatever it holds in any snapshot
          hosts/                    anything else: a directory of its distinct versions
            2024-06-01T10:00:00Z    one version, named by the first snapshot that holds it

borg's `mount -o versions`, per group. A version is what the search index (snapfs.search) keeps
as one: equal type, mode, owner, size, mtime, content hash, link target, xattrs and ACL. So a
file no backup changed has one version, however many snapshots hold it, and a file changed and
then changed back (mtime included) has two. A version reads its bytes from the snapshot it is
named after, through that snapshot's own archive node; its attributes, xattrs, ACLs and link
target come from the index, with no I/O.

The index is the datastore's file that `snapfs index`, `search`, `diff` and `versions` share
(`default_index_path`). The first listing of `.versions`, or lookup in it, brings it up to date
for this group only (`SearchIndex.refresh`, which reads each snapshot it has not seen once,
hashing file contents: for a large group the first time takes about as long as reading it, and
that request waits); later ones do again once the group's snapshot listing changed, which is
re-read after the refresh interval like every datastore-level listing. Archives encrypted with
the mount's key are indexed in the sealed part; without the key they are not in `.versions`.

`.versions` is found by name but not listed in the group (like `.snapfs` in the root): a `find`,
`du` or `rsync` of the mount must not index every group of the datastore on the way. A name that
is a directory in some snapshots and not in others is a directory, the union of what it holds
where it is one; its other versions are not shown (`snapfs versions` lists them): the tree below
a directory matters more than, say, the regular file it replaced.

Inodes: `.versions` and its archive directories are datastore-level nodes. Below them, there are
as many nodes as file versions, so they are counted like pxar entries (kept only while the kernel
references them), numbered in an archive id of their own (`id << 44 | n`, n from a counter that
never reuses a number, so no two files ever share one), and interned weakly by what they show (a
path; a version also its time and what the index has of it): a name looked up again while the
kernel holds it gets the same node, and inode.

Threading: a SearchIndex is one SQLite connection (and, with a key, one in-memory database), so
`VersionsIndex` uses it under one lock: while one group's index is refreshed, requests of other
groups that need the index wait (those answered from the listing cache do not).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from snapfs.errors import CorruptDataError, SnapfsError, UnsupportedFormatError
from snapfs.fs.archive import ARCHIVE_SHIFT, OFFSET_MASK, kernel_xattrs
from snapfs.fs.listing import DirHandle, DirItem, ListingCache
from snapfs.fs.node import DIR_MODE, DOT_NAMES, Attr, DatastoreDir, DatastoreNode, Node
from snapfs.index.archive import parse_extra
from snapfs.index.history import IndexedEntry, Series
from snapfs.search.index import RefreshReport, SearchIndex
from snapfs.store.datastore import format_backup_time

if TYPE_CHECKING:
    from snapfs.format.crypt import CryptConfig
    from snapfs.fs.content import BytesContent, Content
    from snapfs.fs.model import FsModel
    from snapfs.fs.namespace import GroupNode
    from snapfs.store.datastore import Datastore, Group

log = logging.getLogger("snapfs.fs")

VERSIONS_DIR = b".versions"
#: Names kept in `.versions` directory listings, across all of a mount's `.versions`.
VERSIONS_LISTING_ENTRIES = 100_000

#: The distinct versions of one name: (backup time of the first snapshot holding it, version),
#: by that time.
Versions = list[tuple[int, IndexedEntry]]
#: A directory of the union: name -> its versions.
VersionsListing = dict[bytes, Versions]


class VersionsIndex:
    """The datastore's search index as `.versions` uses it: opened on first use (a mount that
    never looks into `.versions` never creates the file), with the mount's key, under one lock."""

    def __init__(self, path: str, crypt: CryptConfig | None = None) -> None:
        self.path = path
        self.crypt = crypt
        #: Directory listings by (tree id, group generation, directory).
        self.listings: ListingCache[tuple[int, int, bytes], VersionsListing] = ListingCache(
            VERSIONS_LISTING_ENTRIES
        )
        self._index: SearchIndex | None = None
        self._lock = threading.Lock()
        self.refreshes = 0
        self.added = 0

    def refresh(self, datastore: Datastore, group: Group) -> RefreshReport:
        """Index the group's snapshots the index does not hold yet, forget its pruned ones."""
        with self._using() as index:
            report = index.refresh(datastore, group.ns, group=group)
            self.refreshes += 1
            self.added += report.indexed
        return report

    def archives(self, group: Group) -> list[str]:
        """The pxar archive names the index holds of the group."""
        ns = "/".join(group.ns)
        with self._using() as index:
            return [
                s.archive
                for s in index.series(ns)
                if (s.ns, s.type, s.id) == (ns, group.type, group.id)
            ]

    def children(self, series: Series, directory: bytes) -> VersionsListing:
        with self._using() as index:
            return index.children(series, directory)

    def versions(self, series: Series, path: bytes) -> Versions:
        with self._using() as index:
            return index.versions(series, path)

    def summary(self) -> str:
        """One line for `.snapfs/stats`."""
        return (
            f"group versions (.versions): {self.refreshes} index refreshes, {self.added} "
            f"snapshots added ({self.path})"
        )

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None

    @contextlib.contextmanager
    def _using(self) -> Iterator[SearchIndex]:
        """The index, under the lock. Its own failures (a cache folder not writable, a damaged
        file) become SnapfsError: EIO for the request, not an exception the FUSE loop dies of."""
        with self._lock:
            try:
                if self._index is None:
                    self._index = SearchIndex(self.path, self.crypt)
                yield self._index
            except (OSError, sqlite3.Error) as exc:
                raise SnapfsError(f"search index {self.path}: {exc}") from None


class VersionsNode(DatastoreDir):
    """`GROUP/.versions`: a directory per pxar archive name of the group (`SeriesNode`); and
    whether the index is up to date for the group, by the snapshot listing it was refreshed for."""

    __slots__ = (
        "group_node",
        "generation",
        "_indexed",
        "_settled",
        "_checked_at",
        "_index_lock",
        "_listed_generation",
    )
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, group_node: GroupNode) -> None:
        super().__init__(model, path, group_node.mtime_ns)
        self.group_node = group_node
        #: Bumped by each refresh that changed the group's part of the index: listings are
        #: cached under it, so a change shows at once in every directory below.
        self.generation = 0
        self._indexed: frozenset[bytes] | None = None  # snapshot names of the last refresh
        self._settled = False  # ... none of which was incomplete
        self._checked_at = 0.0
        self._index_lock = threading.Lock()
        self._listed_generation = -1

    @property
    def index(self) -> VersionsIndex:
        index = self.model.versions_index
        assert index is not None  # there is no VersionsNode without one
        return index

    def up_to_date(self) -> bool:
        """Whether the index answers for the group's snapshots (never blocks: False also when
        the group's listing is due for a re-read)."""
        snapshots = self.group_node.cached_snapshot_names()
        return snapshots is not None and self._covers(snapshots)

    def bring_up_to_date(self) -> int:
        """Refresh the group's part of the index if the group's snapshots changed since the
        last refresh (blocking: re-lists the group once its interval passed, and a refresh reads
        each new snapshot's archives). Returns the generation to look listings up under."""
        snapshots = self.group_node.snapshot_names()
        with self._index_lock:
            if not self._covers(snapshots):
                self._refresh(snapshots)
            return self.generation

    def _covers(self, snapshots: frozenset[bytes]) -> bool:
        # The group keeps one set per listing: asked on every request, mostly `is` answers.
        if snapshots is not self._indexed and snapshots != self._indexed:
            return False
        # A snapshot still being written (no manifest yet) is looked at again each interval;
        # one that failed is not, until the listing changes (it would be read again each time).
        interval = self.model.refresh_interval
        return self._settled or interval is None or self.model.clock() - self._checked_at < interval

    def _refresh(self, snapshots: frozenset[bytes]) -> None:
        try:
            report = self.index.refresh(self.model.datastore, self.group_node.group)
        except BaseException:
            self.generation += 1  # some snapshots may have been added before it failed
            raise
        for line in report.warnings():
            log.warning("%s: %s", self.path, line)
        if report.indexed:
            log.info(
                "%s: %d snapshot(s) added to the search index in %.1f s",
                self.path,
                report.indexed,
                report.seconds,
            )
        self._indexed = snapshots
        self._settled = not report.incomplete
        self._checked_at = self.model.clock()
        if report.indexed or report.pruned:
            self.generation += 1

    def _stale(self) -> bool:
        return self._listed_generation != self.generation or not self.up_to_date()

    def _load(self) -> dict[bytes, DatastoreNode]:
        generation = self.bring_up_to_date()
        out: dict[bytes, DatastoreNode] = {}
        for archive in sorted(self.index.archives(self.group_node.group)):
            name = archive.encode()
            out[name] = self._reuse(name, SeriesNode) or SeriesNode(
                self.model, self._child_path(archive), self, archive
            )
        self._listed_generation = generation
        return out


class SeriesNode(DatastoreNode):
    """`GROUP/.versions/root.pxar`: the root directory of the archive's union tree."""

    __slots__ = ("tree",)
    volatile = True

    def __init__(self, model: FsModel, path: str, versions_node: VersionsNode, archive: str):
        super().__init__(model, path, versions_node.mtime_ns)
        self.tree = VersionsTree(versions_node, archive, path)

    def lookup(self, name: bytes) -> Node:
        return self.tree.lookup(self, b"/", name)

    def cached_lookup(self, name: bytes) -> Node | None:
        return self.tree.cached_lookup(self, b"/", name)

    def opendir(self) -> DirHandle:
        return self.tree.opendir(self, b"/")

    def cached_opendir(self) -> DirHandle | None:
        return self.tree.cached_opendir(self, b"/")


class VersionsTree:
    """The union tree of one archive name of a group: its listings, from the index and cached
    under the group's generation, and its nodes, interned by what they show."""

    def __init__(self, versions_node: VersionsNode, archive: str, where: str) -> None:
        self.versions_node = versions_node
        self.model = versions_node.model
        self.index = versions_node.index
        group = versions_node.group_node.group
        self.series = Series("/".join(group.ns), group.type, group.id, archive)
        self.where = where  # the mount path of the tree's root, for messages
        self.id = self.model.new_archive_id()
        self._numbers = itertools.count(1)
        self._nodes: weakref.WeakValueDictionary[tuple, TreeNode] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    # -- what the index says --------------------------------------------------------------------

    def listing(self, directory: bytes) -> VersionsListing:
        """What `directory` holds in any snapshot (blocking: may refresh the index first)."""
        key = (self.id, self.versions_node.bring_up_to_date(), directory)
        listing = self.index.listings.get(key)
        if listing is None:
            listing = self.index.children(self.series, directory)
            self.index.listings.put(key, listing)
        return listing

    def cached_listing(self, directory: bytes) -> VersionsListing | None:
        """The listing if cached and the index is up to date (never blocks); else None."""
        versions_node = self.versions_node
        if not versions_node.up_to_date():
            return None
        return self.index.listings.get((self.id, versions_node.generation, directory))

    def versions(self, path: bytes) -> Versions:
        """The versions of one name (blocking): from its directory's listing if that is cached,
        else looked up alone, not listing a large directory to find one name."""
        directory, name = _split(path)
        generation = self.versions_node.bring_up_to_date()
        listing = self.index.listings.get((self.id, generation, directory))
        if listing is not None:
            return listing.get(name, [])
        return self.index.versions(self.series, path)

    def cached_versions(self, path: bytes) -> Versions | None:
        directory, name = _split(path)
        listing = self.cached_listing(directory)
        return None if listing is None else listing.get(name, [])

    # -- a directory's requests (the root's and every UnionDirNode's) -----------------------------

    def lookup(self, parent: Node, directory: bytes, name: bytes) -> Node:
        path = _join(directory, name)
        return self._child(parent, path, self.versions(path))

    def cached_lookup(self, parent: Node, directory: bytes, name: bytes) -> Node | None:
        if name in DOT_NAMES:
            raise parent.no_entry(name)
        path = _join(directory, name)
        versions = self.cached_versions(path)
        return None if versions is None else self._child(parent, path, versions)

    def opendir(self, parent: Node, directory: bytes) -> DirHandle:
        return self._handle(parent, directory, self.listing(directory))

    def cached_opendir(self, parent: Node, directory: bytes) -> DirHandle | None:
        listing = self.cached_listing(directory)
        return None if listing is None else self._handle(parent, directory, listing)

    def _child(self, parent: Node, path: bytes, versions: Versions) -> TreeNode:
        if not versions:
            raise parent.no_entry(_split(path)[1])
        return self.node(path, versions)

    def _handle(self, parent: Node, directory: bytes, listing: VersionsListing) -> DirHandle:
        return NamesHandle(
            parent, sorted(listing), lambda name: self.node(_join(directory, name), listing[name])
        )

    # -- nodes ------------------------------------------------------------------------------------

    def node(self, path: bytes, versions: Versions) -> TreeNode:
        """The node of a name of the union: a directory if it is one in any snapshot (with the
        attributes of its newest version), else the directory of its versions."""
        directories = [entry for _, entry in versions if entry.type == "d"]
        if directories:
            return self._interned((UnionDirNode, path), UnionDirNode, directories[-1])
        return self._interned((FileVersionsNode, path), FileVersionsNode, versions)

    def version(self, path: bytes, at: int, entry: IndexedEntry) -> TreeNode:
        """The node of one version of `path`, first held by the snapshot of time `at`. The
        version is part of its key: one inode never shows two contents (the kernel keeps a
        file's pages by inode), even if a snapshot was deleted and made again."""
        cls = _VERSION_NODES.get(entry.type, VersionNode)
        return self._interned((cls, path, at, entry), cls, (at, entry))

    def _interned(self, key: tuple, cls: type[TreeNode], data) -> TreeNode:
        """The node for `key` the kernel may still hold, with what the index says now; else a
        new one, with a number never used before."""
        with self._lock:
            node = self._nodes.get(key)
            if node is None:
                number = next(self._numbers)
                if number > OFFSET_MASK:
                    raise UnsupportedFormatError(f"{self.where}: too many nodes for inode numbers")
                node = cls(self, self.id << ARCHIVE_SHIFT | number, key[1], data)
                self._nodes[key] = node
            else:
                node.data = data
        return node

    def attr(self, ino: int, entry: IndexedEntry, mode: int, size: int, rdev: int = 0) -> Attr:
        """Attributes from an indexed entry, for as long as the listings they come from."""
        model = self.model
        uid, gid = (model.uid, model.gid) if model.map_owner else (entry.uid, entry.gid)
        return Attr(
            ino, mode, 1, uid, gid, size, rdev, entry.mtime_ns, True, model.refresh_interval
        )

    def archived(self, path: bytes, at: int, entry: IndexedEntry) -> Node:
        """The entry `path` of the snapshot of time `at`, as that snapshot's directory shows it
        (blocking: may list the group, open the archive, decode directories on the way)."""
        node: Node = self.versions_node.group_node.lookup(format_backup_time(at).encode())
        node = node.lookup(self.series.archive.encode())
        for name in path.strip(b"/").split(b"/"):
            node = node.lookup(name)
        found = node.attr()
        if (found.mode, found.size, found.mtime_ns) != (entry.mode, entry.size, entry.mtime_ns):
            raise CorruptDataError(
                f"{node.where} is not the file the search index {self.index.path} has for it "
                "(remove the index: it is rebuilt)"
            )
        return node


class TreeNode(Node):
    """A node below `GROUP/.versions/ARCHIVE`, counted like a pxar entry. `data` is what the
    index said of it when it was last looked up or listed."""

    __slots__ = ("tree", "ino", "archive_path", "data", "lookups", "__weakref__")
    counted = True

    def __init__(self, tree: VersionsTree, ino: int, archive_path: bytes, data) -> None:
        self.tree = tree
        self.ino = ino
        self.archive_path = archive_path
        self.data = data
        self.lookups = 0

    @property
    def path(self) -> str:
        return self.tree.where + os.fsdecode(self.archive_path)


class UnionDirNode(TreeNode):
    """A directory of the union: what it holds in any snapshot. `data` is its newest version."""

    __slots__ = ()
    data: IndexedEntry

    def attr(self, load: bool = True) -> Attr:
        entry = self.data
        return self.tree.attr(self.ino, entry, entry.mode, 0)

    def xattrs(self) -> list[tuple[bytes, bytes]]:
        return _xattrs(self.data)

    def lookup(self, name: bytes) -> Node:
        return self.tree.lookup(self, self.archive_path, name)

    def cached_lookup(self, name: bytes) -> Node | None:
        return self.tree.cached_lookup(self, self.archive_path, name)

    def opendir(self) -> DirHandle:
        return self.tree.opendir(self, self.archive_path)

    def cached_opendir(self) -> DirHandle | None:
        return self.tree.cached_opendir(self, self.archive_path)


class FileVersionsNode(TreeNode):
    """A file (or symlink, device, ...) of the union as a directory of its versions, each named
    by the backup time of the first snapshot holding it. `data` is its versions."""

    __slots__ = ()
    data: Versions

    def attr(self, load: bool = True) -> Attr:
        # Readable by anyone (the versions keep their own modes), owned and dated as the newest.
        newest = self.data[-1][1]
        return self.tree.attr(self.ino, newest, DIR_MODE, 0)

    def lookup(self, name: bytes) -> Node:
        return self._version(self._current(self.tree.versions(self.archive_path)), name)

    def cached_lookup(self, name: bytes) -> Node | None:
        if name in DOT_NAMES:
            raise self.no_entry(name)
        versions = self.tree.cached_versions(self.archive_path)
        return None if versions is None else self._version(self._current(versions), name)

    def opendir(self) -> DirHandle:
        return self._handle(self._current(self.tree.versions(self.archive_path)))

    def cached_opendir(self) -> DirHandle | None:
        versions = self.tree.cached_versions(self.archive_path)
        return None if versions is None else self._handle(self._current(versions))

    def _current(self, versions: Versions) -> dict[bytes, tuple[int, IndexedEntry]]:
        """The versions by name; a directory version (the name became one) is not one of them."""
        shown = [(at, entry) for at, entry in versions if entry.type != "d"]
        if shown:
            self.data = shown
        return {format_backup_time(at).encode(): (at, entry) for at, entry in shown}

    def _version(self, by_name: dict[bytes, tuple[int, IndexedEntry]], name: bytes) -> Node:
        found = by_name.get(name)
        if found is None:
            raise self.no_entry(name)
        return self.tree.version(self.archive_path, *found)

    def _handle(self, by_name: dict[bytes, tuple[int, IndexedEntry]]) -> DirHandle:
        path = self.archive_path
        return NamesHandle(
            self, list(by_name), lambda name: self.tree.version(path, *by_name[name])
        )


class VersionNode(TreeNode):
    """One version of a device, FIFO or socket; the kinds with more to answer subclass it.
    `data` is (backup time of the first snapshot holding it, the version)."""

    __slots__ = ()
    data: tuple[int, IndexedEntry]

    @property
    def path(self) -> str:
        return f"{super().path}/{format_backup_time(self.data[0])}"

    def attr(self, load: bool = True) -> Attr:
        entry = self.data[1]
        device = _meta(entry).get("device")
        rdev = os.makedev(*device) if device else 0
        return self.tree.attr(self.ino, entry, entry.mode, 0, rdev)

    def xattrs(self) -> list[tuple[bytes, bytes]]:
        return _xattrs(self.data[1])


class VersionFileNode(VersionNode):
    """A regular file's version: its bytes are the file's in the snapshot it is named after."""

    __slots__ = ("_archived",)

    def __init__(self, tree: VersionsTree, ino: int, archive_path: bytes, data) -> None:
        super().__init__(tree, ino, archive_path, data)
        self._archived: Node | None = None

    def attr(self, load: bool = True) -> Attr:
        entry = self.data[1]
        return self.tree.attr(self.ino, entry, entry.mode, entry.size)

    def open(self) -> Content | BytesContent:
        return self.archived().open()

    def cached_open(self) -> Content | BytesContent | None:
        archived = self._archived
        return None if archived is None else archived.cached_open()

    def archived(self) -> Node:
        """The file in its snapshot (blocking on first call: found as a lookup there is)."""
        if self._archived is None:
            self._archived = self.tree.archived(self.archive_path, *self.data)
        return self._archived


class VersionSymlinkNode(VersionNode):
    __slots__ = ()

    def attr(self, load: bool = True) -> Attr:
        entry = self.data[1]
        return self.tree.attr(self.ino, entry, entry.mode, len(self.readlink()))

    def readlink(self) -> bytes:
        return bytes.fromhex(_meta(self.data[1]).get("target", ""))


class NamesHandle(DirHandle):
    """A `.versions` directory as it was when opened: its names, and their nodes made as
    readdir reaches them (the kernel takes a few dozen per request)."""

    __slots__ = ("names", "node_for")

    def __init__(self, node: Node, names: list[bytes], node_for: Callable[[bytes], Node]) -> None:
        super().__init__(node)
        self.names = names
        self.node_for = node_for

    def items(self, start: int) -> Iterator[DirItem]:
        for i, name in enumerate(itertools.islice(self.names, start, None), start + 1):
            node = self.node_for(name)
            yield DirItem(name, node, node.attr(), i)


def _join(directory: bytes, name: bytes) -> bytes:
    return directory.rstrip(b"/") + b"/" + name


def _split(path: bytes) -> tuple[bytes, bytes]:
    """(directory, name) of an absolute path inside the archive."""
    directory, _, name = path.rpartition(b"/")
    return directory or b"/", name


def _meta(entry: IndexedEntry) -> dict:
    """The index's JSON of the rarer metadata (link target, device, xattrs, ACL, ...)."""
    return json.loads(entry.meta) if entry.meta else {}


def _xattrs(entry: IndexedEntry) -> list[tuple[bytes, bytes]]:
    extra = parse_extra(entry.meta)
    return kernel_xattrs(extra.xattrs, extra.fcaps, extra.acl, entry.mode, entry.type == "d")


_VERSION_NODES: dict[str, type[VersionNode]] = {"f": VersionFileNode, "l": VersionSymlinkNode}
