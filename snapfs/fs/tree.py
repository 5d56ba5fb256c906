"""The mounted datastore as a tree of nodes, and the inode table the kernel talks to. No FUSE here.

Layout (every level built lazily, on first lookup or listing):

    /                                 root namespace
      vm/ ct/ host/                   backup types that have groups
        <id>/                         a group: its snapshots plus `latest` -> newest complete one
          <time>/                     a snapshot, from its manifest:
            drive-scsi0.img           fidx (and plain didx) archives as files (IndexStream)
            qemu-server.conf          blobs, decoded
            index.json                the manifest text
            drive-scsi0.img.parts/    part1, part2, ...: each partition of the image as a file
            root.pxar/                pxar archives (v1, or split .mpxar+.ppxar) as directories
      ns/<name>/                      child namespaces, the same layout inside
      .snapfs/stats                   live statistics (root only; looked up, never listed)

Refresh: snapshots come and go while mounted (backups, prune). Listings of namespaces, groups and
snapshots (and an incomplete snapshot) are re-read once they are `refresh_interval` seconds old;
an entry that is still there keeps its node and inode number, a vanished one is dropped from the
inode table (the kernel then gets ENOENT for it; open files keep reading what they opened). The
kernel caches these entries only for the interval. What is inside a complete snapshot never
changes, so it is read once.

Inodes: the datastore-level nodes get small numbers from a counter (never reused) and live as
long as the mount or until a refresh finds them gone (there are as many as snapshots and archives,
not files). An entry inside a pxar archive gets
`archive_id << 44 | entry_offset`, so it is stable for the life of the mount without a global
table; the table that maps it back holds only what the kernel still references (lookup counts,
dropped on `forget`). A hard link is its target's inode, and its target's st_nlink counts the
links seen so far (pxar records links only at the link, so a link not yet listed is not counted).

Threading: methods documented as blocking read storage or decode chunks and are meant to run in
worker threads. The pxar part of the inode table (`remember`, `forget`) is touched only from the
thread that serves FUSE requests; datastore-level nodes are added and dropped by the (worker)
threads that list, one dict operation at a time. One pxar Accessor is not thread-safe, so its metadata calls hold the
archive's lock; file content is read from the archive's IndexStreams directly (at the entry's
`content_offset`), which are thread-safe, so concurrent readers of one archive do not serialise.

Listings: the kernel does not cache FUSE directory listings, so a pxar directory listed to its end
is kept (`ListingCache`, bounded by total entries, ~0.5 KiB each) and later listings of it are
served from memory without a worker thread; the nodes handed out are counted as before.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from snapfs.errors import (
    CorruptDataError,
    CryptKeyError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    NotRegularFileError,
    NotSymlinkError,
    NoXattrError,
    SnapfsError,
    TruncatedDataError,
    UnsupportedFormatError,
)
from snapfs.format.crypt import CryptConfig
from snapfs.format.manifest import ManifestFile
from snapfs.format.partitions import Partition, read_partition_table
from snapfs.pxar import acl as aclmod
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Entry, EntryKind
from snapfs.store.cache import ChunkCache
from snapfs.store.chunks import ChunkReader
from snapfs.store.datastore import BACKUP_TYPES, MANIFEST_NAME, Datastore, Group, Snapshot
from snapfs.store.stats import format_report
from snapfs.store.stream import IndexStream
from snapfs.views.archives import SnapshotReader

log = logging.getLogger("snapfs.fs")

_N = TypeVar("_N", bound="Node")

ROOT_INODE = 1
CONTROL_DIR = b".snapfs"
ARCHIVE_SHIFT = 44
MAX_ARCHIVES = (1 << (63 - ARCHIVE_SHIFT)) - 1
_OFFSET_MASK = (1 << ARCHIVE_SHIFT) - 1

DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
LINK_MODE = stat.S_IFLNK | 0o777

#: Readahead target: bytes decoded ahead of a sequential reader (at least two chunks).
READAHEAD_BYTES = 16 * 1024 * 1024
MIN_READAHEAD_CHUNKS = 2
SEQUENTIAL_SLACK = 4 * 1024 * 1024
#: Entries kept in complete pxar directory listings, across all directories of the mount.
LISTING_CACHE_ENTRIES = 200_000


@dataclass(slots=True)
class Attr:
    """What stat(2) shows. `final` is False for placeholders the kernel must not cache."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    rdev: int
    mtime_ns: int
    final: bool = True
    timeout: float | None = None  # kernel cache time if shorter than the default (may vanish)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


# --- nodes ----------------------------------------------------------------------------------------


class Node:
    """A datastore-level node (directory, file or symlink above and beside the pxar entries)."""

    __slots__ = ("model", "ino", "path", "mtime_ns")
    mode = DIR_MODE
    #: The entry can disappear or change on refresh: the kernel may cache it only so long.
    volatile = False

    def __init__(self, model: FsModel, path: str, mtime_ns: int) -> None:
        self.model = model
        self.ino = model._new_ino(self)
        self.path = path
        self.mtime_ns = mtime_ns

    def attr(self, load: bool = True) -> Attr:
        """Attributes; with load=False never blocks (a lazy node then answers a placeholder)."""
        return Attr(
            self.ino,
            self.mode,
            1,
            self.model.uid,
            self.model.gid,
            0,
            0,
            self.mtime_ns,
            timeout=self._timeout(),
        )

    def _timeout(self) -> float | None:
        return self.model.refresh_interval if self.volatile else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path or '/'} ino={self.ino}>"


class DirNode(Node):
    """A virtual directory whose children are computed on first use (blocking), and again after
    the refresh interval if the class is `refreshing`."""

    __slots__ = ("_children", "_lock", "_loaded_at")
    refreshing = False

    def __init__(self, model: FsModel, path: str, mtime_ns: int) -> None:
        super().__init__(model, path, mtime_ns)
        self._children: dict[bytes, Node] | None = None
        self._lock = threading.Lock()
        self._loaded_at = 0.0

    def children(self) -> dict[bytes, Node]:
        """Blocking on first call, and when the listing is due for a refresh."""
        if self._children is None or self._stale():
            with self._lock:
                if self._children is None or self._stale():
                    self._reload()
        assert self._children is not None
        return self._children

    def cached_children(self) -> dict[bytes, Node] | None:
        """The children if loaded and not due for a refresh (never blocks); else None."""
        children = self._children
        return None if children is None or self._stale() else children

    def _stale(self) -> bool:
        interval = self.model.refresh_interval
        return (
            self.refreshing
            and interval is not None
            and self.model.clock() - self._loaded_at >= interval
        )

    def _reload(self) -> None:
        old = self._children
        if old is None:
            self._children = self._load()
            self._loaded_at = self.model.clock()
            return
        self.model.refresh_backend()
        try:
            new = self._load()  # reuses the old nodes of entries still there (_reuse)
        except SnapfsError as exc:
            # Keep serving the last good listing (S3 briefly unreachable); retry next interval.
            self.model.report(exc, self.path)
            self._loaded_at = self.model.clock()
            return
        kept = {id(n) for n in new.values()}
        for node in old.values():
            if id(node) not in kept:
                self.model._drop(node)
        self._children = new
        self._loaded_at = self.model.clock()

    def _reuse(self, name: bytes, cls: type[_N]) -> _N | None:
        """During a reload: the node `name` had, if it is the same kind (keeps its inode)."""
        old = self._children.get(name) if self._children is not None else None
        return old if type(old) is cls else None

    def _load(self) -> dict[bytes, Node]:
        raise NotImplementedError

    def _child_path(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name


class NamespaceNode(DirNode):
    """The root, or one namespace: its backup types plus `ns/` when it has child namespaces."""

    __slots__ = ("ns",)
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, ns: tuple[str, ...]) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.ns = ns

    def _load(self) -> dict[bytes, Node]:
        ds = self.model.datastore
        by_type: dict[str, list[Group]] = {}
        for group in ds.groups(self.ns):
            by_type.setdefault(group.type, []).append(group)
        out: dict[bytes, Node] = {}
        for backup_type in BACKUP_TYPES:
            if backup_type in by_type:
                name = backup_type.encode()
                node = self._reuse(name, TypeNode)
                if node is None:  # a new node's first listing is what we just saw
                    node = TypeNode(self.model, self._child_path(backup_type), self.ns, backup_type)
                    node.hint = by_type[backup_type]
                out[name] = node
        children = ds.namespaces(self.ns)
        if children:
            ns_list = self._reuse(b"ns", NamespaceListNode)
            if ns_list is None:
                ns_list = NamespaceListNode(self.model, self._child_path("ns"), self.ns)
                ns_list.hint = children
            out[b"ns"] = ns_list
        return out


class NamespaceListNode(DirNode):
    """`ns/`: the child namespaces of a namespace."""

    __slots__ = ("parent_ns", "hint")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, parent_ns: tuple[str, ...]) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.parent_ns = parent_ns
        self.hint: list[tuple[str, ...]] | None = None  # what the parent's listing just saw

    def _load(self) -> dict[bytes, Node]:
        namespaces, self.hint = self.hint, None
        if namespaces is None:
            namespaces = self.model.datastore.namespaces(self.parent_ns)
        out: dict[bytes, Node] = {}
        for ns in sorted(namespaces):
            name = ns[-1].encode()
            out[name] = self._reuse(name, NamespaceNode) or NamespaceNode(
                self.model, self._child_path(ns[-1]), ns
            )
        return out


class TypeNode(DirNode):
    """`vm/`, `ct/` or `host/` of a namespace: one directory per backup group."""

    __slots__ = ("ns", "backup_type", "hint")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, ns: tuple[str, ...], backup_type: str) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.ns = ns
        self.backup_type = backup_type
        self.hint: list[Group] | None = None  # what the parent's listing just saw

    def _load(self) -> dict[bytes, Node]:
        groups, self.hint = self.hint, None
        if groups is None:
            groups = [g for g in self.model.datastore.groups(self.ns) if g.type == self.backup_type]
        out: dict[bytes, Node] = {}
        for g in sorted(groups, key=lambda g: g.id):
            name = g.id.encode()
            out[name] = self._reuse(name, GroupNode) or GroupNode(
                self.model, self._child_path(g.id), g
            )
        return out


class GroupNode(DirNode):
    """A backup group: one directory per snapshot, and `latest` -> the newest complete one."""

    __slots__ = ("group",)
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, group: Group) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.group = group

    def _load(self) -> dict[bytes, Node]:
        ds = self.model.datastore
        snapshots = ds.snapshots(self.group)
        out: dict[bytes, Node] = {}
        for s in snapshots:
            name = s.time_name.encode()
            out[name] = self._reuse(name, SnapshotNode) or SnapshotNode(
                self.model, self._child_path(s.time_name), s
            )
        for s in reversed(snapshots):
            # Only the newest few are usually checked: a snapshot being written has no manifest.
            if MANIFEST_NAME in ds.backend.list_dir(s.path).files:
                target, mtime_ns = s.time_name.encode(), s.time * 1_000_000_000
                latest = self._reuse(b"latest", SymlinkNode)
                if latest is None:
                    latest = SymlinkNode(self.model, self._child_path("latest"), target, mtime_ns)
                else:  # the same inode follows the newest snapshot (readlink is never cached)
                    latest.target, latest.mtime_ns = target, mtime_ns
                out[b"latest"] = latest
                break
        return out


class SymlinkNode(Node):
    """`latest`: its target changes on refresh, its inode does not."""

    __slots__ = ("target",)
    mode = LINK_MODE
    volatile = True

    def __init__(self, model: FsModel, path: str, target: bytes, mtime_ns: int) -> None:
        super().__init__(model, path, mtime_ns)
        self.target = target

    def attr(self, load: bool = True) -> Attr:
        return Attr(
            self.ino,
            self.mode,
            1,
            self.model.uid,
            self.model.gid,
            len(self.target),
            0,
            self.mtime_ns,
            timeout=self._timeout(),
        )


class SnapshotNode(DirNode):
    """A snapshot: its manifest is read when the directory is first listed or looked into."""

    __slots__ = ("snapshot", "_state", "_state_lock")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, snapshot: Snapshot) -> None:
        super().__init__(model, path, snapshot.time * 1_000_000_000)
        self.snapshot = snapshot
        self._state: SnapshotState | None = None
        self._state_lock = threading.Lock()

    def _stale(self) -> bool:
        # A finished snapshot never changes; an incomplete one (empty) may be finished since.
        return not self._children and super()._stale()

    def _load(self) -> dict[bytes, Node]:
        ds = self.model.datastore
        if MANIFEST_NAME not in ds.backend.list_dir(self.snapshot.path).files:
            return {}  # incomplete (being written or aborted): shown, but empty
        manifest = ds.manifest(self.snapshot)
        out: dict[bytes, Node] = {
            b"index.json": ManifestNode(self.model, self._child_path("index.json"), self)
        }
        names = {f.filename for f in manifest.files}
        images: list[StreamNode] = []
        for f in manifest.files:
            name = f.filename
            node: Node | None = None
            if name.endswith(".blob"):
                shown = name.removesuffix(".blob")
                node = BlobNode(self.model, self._child_path(shown), self, f)
            elif name.endswith(".fidx"):
                shown = name.removesuffix(".fidx")
                node = StreamNode(self.model, self._child_path(shown), self, f)
                images.append(node)
            elif name.endswith(".pxar.didx"):
                shown = name.removesuffix(".didx")
                node = ArchiveNode(self.model, self._child_path(shown), self, shown)
            elif name.endswith(".mpxar.didx"):
                shown = name.removesuffix(".mpxar.didx") + ".pxar"
                if shown + ".didx" in names:
                    continue  # a v1 archive of the same name wins; should not happen
                node = ArchiveNode(self.model, self._child_path(shown), self, shown)
            elif name.endswith(".ppxar.didx"):
                continue  # the payload half of a split archive, served through its .mpxar
            elif name.endswith(".didx"):
                shown = name.removesuffix(".didx")
                node = StreamNode(self.model, self._child_path(shown), self, f)
            if node is not None and shown and shown.encode() not in out:
                out[shown.encode()] = node
        for image in images:
            parts = image.path.rpartition("/")[2] + ".parts"
            if parts.encode() not in out:  # a real file of that name wins
                out[parts.encode()] = PartsNode(self.model, self._child_path(parts), image)
        return dict(sorted(out.items()))

    def state(self) -> SnapshotState:
        """The snapshot's reader (blocking: reads the manifest, checks the key)."""
        if self._state is None:
            with self._state_lock:
                if self._state is None:
                    self._state = self.model._open_snapshot(self.snapshot)
        return self._state


@dataclass
class SnapshotState:
    reader: SnapshotReader
    key_error: SnapfsError | None  # why the given key was not used for this snapshot

    def require_key(self, file: ManifestFile) -> None:
        if self.key_error is not None and file.crypt_mode == "encrypt":
            raise self.key_error


class LazyFileNode(Node):
    """A snapshot file whose bytes are small and decoded whole (blob, manifest)."""

    __slots__ = ("snapshot_node", "_data", "_lock")
    mode = FILE_MODE

    def __init__(self, model: FsModel, path: str, snapshot_node: SnapshotNode) -> None:
        super().__init__(model, path, snapshot_node.mtime_ns)
        self.snapshot_node = snapshot_node
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def data(self) -> bytes:
        """Blocking on first call; errors are not remembered (a retry may succeed)."""
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = self._load()
        return self._data

    def _load(self) -> bytes:
        raise NotImplementedError

    def attr(self, load: bool = True) -> Attr:
        data = self._data
        if data is None and load:
            try:
                data = self.data()
            except SnapfsError as exc:
                self.model.report(exc, self.path)
        size = 0 if data is None else len(data)
        return Attr(
            self.ino,
            self.mode,
            1,
            self.model.uid,
            self.model.gid,
            size,
            0,
            self.mtime_ns,
            data is not None,
        )


class ManifestNode(LazyFileNode):
    __slots__ = ()

    def _load(self) -> bytes:
        return self.snapshot_node.state().reader.manifest_text()


class BlobNode(LazyFileNode):
    __slots__ = ("file",)

    def __init__(
        self, model: FsModel, path: str, snapshot_node: SnapshotNode, file: ManifestFile
    ) -> None:
        super().__init__(model, path, snapshot_node)
        self.file = file

    def _load(self) -> bytes:
        state = self.snapshot_node.state()
        state.require_key(self.file)
        return state.reader.blob(self.file.filename)


class StreamNode(Node):
    """An image (fidx) or other non-pxar didx archive: its size is in the manifest."""

    __slots__ = ("snapshot_node", "file", "_stream", "_lock")
    mode = FILE_MODE

    def __init__(
        self, model: FsModel, path: str, snapshot_node: SnapshotNode, file: ManifestFile
    ) -> None:
        super().__init__(model, path, snapshot_node.mtime_ns)
        self.snapshot_node = snapshot_node
        self.file = file
        self._stream: IndexStream | None = None
        self._lock = threading.Lock()

    def attr(self, load: bool = True) -> Attr:
        return Attr(
            self.ino, self.mode, 1, self.model.uid, self.model.gid, self.file.size, 0, self.mtime_ns
        )

    def stream(self) -> IndexStream:
        """Blocking on first call: reads and checks the index file."""
        if self._stream is None:
            with self._lock:
                if self._stream is None:
                    state = self.snapshot_node.state()
                    state.require_key(self.file)
                    self._stream = state.reader.stream(self.file.filename)
        return self._stream


class PartsNode(DirNode):
    """`drive-scsi0.img.parts/`: `part<N>` per partition, the table read on first use.

    A damaged table is logged and shows an empty directory: the image itself stays readable
    (and `losetup -P` may still make sense of it). Errors reading the image (no key, missing
    chunk) fail the listing instead, like the image would.
    """

    __slots__ = ("image",)

    def __init__(self, model: FsModel, path: str, image: StreamNode) -> None:
        super().__init__(model, path, image.mtime_ns)
        self.image = image

    def _load(self) -> dict[bytes, Node]:
        stream = self.image.stream()
        try:
            table = read_partition_table(stream, name=self.image.path)
        except CorruptDataError as exc:
            self.model.report(exc, self.path)
            return {}
        if table is None:
            return {}
        return {
            f"part{p.number}".encode(): PartitionNode(
                self.model, self._child_path(f"part{p.number}"), self.image, p
            )
            for p in sorted(table.partitions, key=lambda p: p.number)
        }


class PartitionNode(Node):
    """One partition of an image: a window [start, start+size) on the image's stream."""

    __slots__ = ("image", "partition")
    mode = FILE_MODE

    def __init__(self, model: FsModel, path: str, image: StreamNode, partition: Partition) -> None:
        super().__init__(model, path, image.mtime_ns)
        self.image = image
        self.partition = partition

    def attr(self, load: bool = True) -> Attr:
        return Attr(
            self.ino,
            self.mode,
            1,
            self.model.uid,
            self.model.gid,
            self.partition.size,
            0,
            self.mtime_ns,
        )


class ControlDirNode(DirNode):
    """`.snapfs/`: the mount's own files. PBS names never start with '.', so it cannot collide;
    it is found by name but not listed (like ZFS's `.zfs`), so `find` and rsync skip it."""

    __slots__ = ()

    def _load(self) -> dict[bytes, Node]:
        return {b"stats": StatsNode(self.model, self._child_path("stats"), self.mtime_ns)}


class StatsNode(Node):
    """`.snapfs/stats`: the statistics as text, rendered anew on every open and stat."""

    __slots__ = ()
    mode = FILE_MODE
    #: Content changes between opens: no page cache, no cached size.
    live = True

    def render(self) -> bytes:
        return self.model.stats_text().encode()

    def attr(self, load: bool = True) -> Attr:
        size = len(self.render()) if load else 0
        return Attr(
            self.ino, self.mode, 1, self.model.uid, self.model.gid, size, 0, time.time_ns(), False
        )


class ArchiveNode(Node):
    """`root.pxar/`: the archive's root directory, opened when first entered or stat'ed."""

    __slots__ = ("snapshot_node", "name", "archive", "_lock")

    def __init__(self, model: FsModel, path: str, snapshot_node: SnapshotNode, name: str) -> None:
        super().__init__(model, path, snapshot_node.mtime_ns)
        self.snapshot_node = snapshot_node
        self.name = name
        self.archive: Archive | None = None
        self._lock = threading.Lock()

    def open(self) -> Archive:
        """Blocking on first call: reads the index(es) and the archive's root entry."""
        if self.archive is None:
            with self._lock:
                if self.archive is None:
                    state = self.snapshot_node.state()
                    base = self.name.removesuffix(".pxar")
                    parts = {f"{base}.pxar.didx", f"{base}.mpxar.didx", f"{base}.ppxar.didx"}
                    for f in state.reader.manifest.files:
                        if f.filename in parts:
                            state.require_key(f)
                    accessor = state.reader.pxar(self.name)
                    self.archive = Archive(self.model, self, accessor)
        return self.archive

    def attr(self, load: bool = True) -> Attr:
        archive = self.archive
        if archive is None and load:
            try:
                archive = self.open()
            except SnapfsError as exc:
                self.model.report(exc, self.path)
        if archive is None:
            return Attr(
                self.ino, self.mode, 1, self.model.uid, self.model.gid, 0, 0, self.mtime_ns, False
            )
        return archive.entry_attr(archive.root, self.ino)


class Archive:
    """One opened pxar archive: its Accessor (behind a lock), id, and hard-link counts."""

    def __init__(self, model: FsModel, node: ArchiveNode, accessor: Accessor) -> None:
        self.model = model
        self.node = node
        self.accessor = accessor
        self.lock = threading.Lock()
        self.id = model._new_archive_id()
        self.root = accessor.root()
        self.links: dict[int, set[int]] = {}  # target entry_offset -> link entry_offsets seen

    def ino(self, entry: Entry) -> int:
        if entry.entry_offset == 0:
            return self.node.ino
        if entry.entry_offset > _OFFSET_MASK:
            raise UnsupportedFormatError(
                f"{self.accessor.name}: entry at offset {entry.entry_offset} is beyond what inode numbers hold"
            )
        return (self.id << ARCHIVE_SHIFT) | entry.entry_offset

    def resolve(self, entry: Entry) -> Entry:
        """A hard link's target (recording the link); anything else as is. Caller holds the lock."""
        if entry.kind is not EntryKind.HARDLINK:
            return entry
        target = self.accessor.resolve_hardlink(entry)
        self.links.setdefault(target.entry_offset, set()).add(entry.entry_offset)
        return target

    @property
    def content_needs_io(self) -> bool:
        """Whether `content` may block: only a split archive reads (the PAYLOAD header)."""
        return self.accessor.format_version != 1

    def entry_attr(self, entry: Entry, ino: int | None = None) -> Attr:
        model = self.model
        size = 0
        nlink = 1
        if entry.kind is EntryKind.FILE:
            size = entry.size
            nlink += len(self.links.get(entry.entry_offset, ()))
        elif entry.kind is EntryKind.SYMLINK:
            size = len(entry.link_target or b"")
        rdev = os.makedev(*entry.device) if entry.device is not None else 0
        uid, gid = (model.uid, model.gid) if model.map_owner else (entry.uid, entry.gid)
        return Attr(
            self.ino(entry) if ino is None else ino,
            entry.mode,
            nlink,
            uid,
            gid,
            size,
            rdev,
            entry.mtime_ns,
        )

    def content(self, entry: Entry) -> Content:
        """A regular file's bytes as a window on the stream that holds them.

        Blocking only for a split archive (the PAYLOAD header is read and checked, once per
        entry); for a v1 archive no I/O at all (see `content_needs_io`).
        """
        acc = self.accessor
        if entry.kind is not EntryKind.FILE or entry.content_offset is None:
            raise UnsupportedFormatError(f"{acc.name}: {entry.path!r} is not a regular file")
        if acc.format_version == 1:
            source = acc.archive
            if entry.content_offset + entry.size > source.size:
                raise TruncatedDataError(
                    f"{acc.name}: content of {entry.path!r} ({entry.size} bytes at offset "
                    f"{entry.content_offset}) runs past the end of the archive"
                )
        else:
            if entry.size:
                with self.lock:
                    acc.read(entry, 0, 1)  # checks the PAYLOAD header of a split archive
            source = acc.payload
        if not isinstance(source, IndexStream):
            raise UnsupportedFormatError(
                f"{acc.name}: content of {entry.path!r} is not in an index stream"
            )
        return Content(
            source, entry.content_offset, entry.size, f"{self.node.path}{_show(entry.path)}"
        )


class PxarNode:
    """An entry inside an archive, as long as the kernel references it."""

    __slots__ = ("archive", "entry", "ino", "lookups")

    def __init__(self, archive: Archive, entry: Entry) -> None:
        self.archive = archive
        self.entry = entry
        self.ino = archive.ino(entry)
        self.lookups = 0

    @property
    def path(self) -> str:
        return f"{self.archive.node.path}{_show(self.entry.path)}"

    def attr(self, load: bool = True) -> Attr:
        return self.archive.entry_attr(self.entry, self.ino)

    def __repr__(self) -> str:
        return f"<PxarNode {self.path} ino={self.ino} lookups={self.lookups}>"


def _show(path: bytes) -> str:
    return os.fsdecode(path if path.startswith(b"/") else b"/" + path)


AnyNode = Node | PxarNode


# --- open files and directories ----------------------------------------------------------------


class Content:
    """Bytes [base, base+size) of an IndexStream, read chunk by chunk with no copy when possible.

    Keeps the chunk it served last (so a run of small reads inside one chunk touches nothing
    shared), and after a sequential read names the chunks to decode next (readahead).
    """

    __slots__ = ("stream", "base", "size", "name", "_cur", "_next", "ahead")

    def __init__(self, stream: IndexStream, base: int, size: int, name: str) -> None:
        self.stream = stream
        self.base = base
        self.size = size
        self.name = name
        self._cur: tuple[int, int, memoryview] | None = None  # (start, stop, data) of one chunk
        self._next = 0  # where a sequential reader continues
        self.ahead = -1  # last chunk index handed out for readahead

    def read(self, offset: int, size: int, block: bool = True) -> memoryview | bytes | None:
        """File bytes at [offset, offset+size); None if not block and a chunk is not decoded yet."""
        if offset >= self.size or size <= 0:
            return b""
        pos = self.base + offset
        end = self.base + min(offset + size, self.size)
        parts = []
        cur = self._cur
        while pos < end:
            if cur is None or not (cur[0] <= pos < cur[1]):
                cur = self.stream.chunk(self.stream.index.chunk_at(pos), block=block)
                if cur is None:
                    return None
            start, stop, data = cur
            parts.append(data[pos - start : min(end, stop) - start])
            pos = min(end, stop)
        self._cur = cur
        self._next = offset + size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readahead(self, offset: int, size: int) -> list[bytes]:
        """Digests to decode ahead of a sequential reader that just read [offset, offset+size)."""
        index = self.stream.index
        end = self.base + min(offset + size, self.size)
        if end >= self.base + self.size or end <= 0:
            return []
        current = index.chunk_at(end - 1)
        last_byte = min(self.base + self.size, end + READAHEAD_BYTES) - 1
        last = max(
            index.chunk_at(last_byte),
            min(current + MIN_READAHEAD_CHUNKS, index.chunk_at(self.base + self.size - 1)),
        )
        first = current + 1
        if first <= self.ahead <= last:
            first = self.ahead + 1  # the ones before were handed out by an earlier read
        if first > last:
            return []
        self.ahead = last
        cache = self.stream.chunks.cache
        wanted = dict.fromkeys(index.digest(i) for i in range(first, last + 1))  # dedup, in order
        return [d for d in wanted if d not in cache]

    def is_sequential(self, offset: int) -> bool:
        # The kernel's readahead keeps several requests in flight, so they may arrive a little
        # out of order: near the last read's end still counts as sequential.
        return abs(offset - self._next) <= SEQUENTIAL_SLACK


class BytesContent:
    """Content already in memory (a decoded blob or the manifest)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def read(self, offset: int, size: int, block: bool = True) -> memoryview:
        return self.data[offset : offset + size]


Listing = tuple[tuple[bytes, Entry], ...]


class DirHandle:
    """An open directory: a listing position, so 100,000 entries stream in kernel-sized batches.

    A pxar directory is served from `listing` when a complete listing of it is cached (no
    decoding, no lock, never blocks); otherwise it is decoded as the kernel asks, and collected
    into `_collected` so that a read to the end can be cached for the next opendir.
    """

    __slots__ = (
        "node",
        "_static",
        "_iter",
        "_iter_pos",
        "_pending",
        "archive",
        "listing",
        "_collected",
    )

    def __init__(
        self,
        node: AnyNode,
        static: list[tuple[bytes, Node]] | None,
        archive: Archive | None = None,
        listing: Listing | None = None,
    ) -> None:
        self.node = node
        self._static = static
        self._iter: Iterator[Entry] | None = None
        self._iter_pos = 0
        self._pending: list[tuple[int, bytes, PxarNode]] = []
        self.archive = archive
        self.listing = listing
        self._collected: list[tuple[bytes, Entry]] | None = None


class ListingCache:
    """Complete pxar directory listings, least recently used first out, bounded by the total
    number of entries they hold (a directory counts at least 1, so empty ones are bounded too).

    The kernel does not cache FUSE directory listings: without this a warm `find` or `ls -l`
    decodes every directory again. Keyed by (archive id, directory entry_offset); entries are
    stored resolved (a hard link as its target, under its own name), as readdir hands them out.
    Thread-safe: filled by worker threads, read by the FUSE thread.
    """

    def __init__(self, max_entries: int = LISTING_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lists: OrderedDict[tuple[int, int], Listing] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> Listing | None:
        with self._lock:
            listing = self._lists.get(key)
            if listing is not None:
                self._lists.move_to_end(key)
            return listing

    def put(self, key: tuple[int, int], listing: Listing) -> None:
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


@dataclass(slots=True)
class DirItem:
    name: bytes
    node: AnyNode
    attr: Attr
    next_offset: int


# --- the model ------------------------------------------------------------------------------------


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
        self._chunk_readers = {
            False: ChunkReader(datastore.backend, None, self.cache),
            True: ChunkReader(datastore.backend, crypt, self.cache) if crypt is not None else None,
        }
        self._nodes: dict[int, Node] = {}
        self._entries: dict[int, PxarNode] = {}
        self._inos = itertools.count(ROOT_INODE)
        self._archive_ids = itertools.count(1)
        self._reported: set[tuple[str, str]] = set()
        self._reported_lock = threading.Lock()
        self.listings = ListingCache(listing_cache_entries)
        self.root = NamespaceNode(self, "", ())
        assert self.root.ino == ROOT_INODE
        self.control = ControlDirNode(self, CONTROL_DIR.decode(), self.mount_time_ns)

    # -- inode table (event-loop thread only) ---------------------------------------------------

    def _new_ino(self, node: Node) -> int:
        ino = next(self._inos)
        if ino > _OFFSET_MASK:
            raise UnsupportedFormatError("too many datastore-level nodes for the inode space")
        self._nodes[ino] = node
        return ino

    def _new_archive_id(self) -> int:
        archive_id = next(self._archive_ids)
        if archive_id > MAX_ARCHIVES:
            raise UnsupportedFormatError("too many pxar archives opened in one mount")
        return archive_id

    def _drop(self, node: Node) -> None:
        """Forget a node that vanished on refresh, and every node loaded below it."""
        todo = [node]
        while todo:
            n = todo.pop()
            self._nodes.pop(n.ino, None)
            if isinstance(n, DirNode) and n._children is not None:
                todo.extend(n._children.values())

    def node(self, ino: int) -> AnyNode:
        node = self._nodes.get(ino)
        if node is None:
            node = self._entries.get(ino)
            if node is None:
                raise NotFoundError(f"inode {ino} is not known (forgotten or never looked up)")
        return node

    def remember(self, node: AnyNode) -> AnyNode:
        """The kernel got this node (lookup, readdirplus): count it; returns the table's node."""
        if isinstance(node, PxarNode):
            known = self._entries.get(node.ino)
            if known is None:
                self._entries[node.ino] = known = node
            known.lookups += 1
            return known
        return node

    def forget(self, ino: int, count: int) -> None:
        node = self._entries.get(ino)
        if node is not None:
            node.lookups -= count
            if node.lookups <= 0:
                del self._entries[ino]

    @property
    def entries_referenced(self) -> int:
        """pxar entries the kernel still holds (what `forget` keeps bounded)."""
        return len(self._entries)

    # -- blocking operations (worker threads) -----------------------------------------------------

    def hidden_child(self, parent: AnyNode, name: bytes) -> Node | None:
        """A child found by name but never listed: `.snapfs` in the root."""
        if parent is self.root and name == CONTROL_DIR:
            return self.control
        return None

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

    def cached_lookup(self, parent: AnyNode, name: bytes) -> AnyNode | None:
        """The child `name` if known without I/O (never blocks); None if `lookup` must read.

        Raises like `lookup` when the answer is known: NotFoundError for a name that is not
        there (`.` and `..` never are: the kernel resolves those), NotDirectoryError for a
        parent that is not a directory."""
        if name in (b".", b".."):
            raise NotFoundError(f"{_where(parent)}: no entry {os.fsdecode(name)!r}")
        if isinstance(parent, DirNode):
            children = parent.cached_children()
            return None if children is None else self._dir_child(parent, children, name)
        if not parent.attr(load=False).is_dir:
            raise NotDirectoryError(f"{_where(parent)} is not a directory")
        return None

    def lookup(self, parent: AnyNode, name: bytes) -> AnyNode:
        """The child `name` of a directory node; NotFoundError if there is none."""
        if isinstance(parent, DirNode):
            return self._dir_child(parent, parent.children(), name)
        archive, entry = self._pxar_dir(parent)
        with archive.lock:
            found = archive.accessor.lookup_child(entry, name)
            if found is None:
                raise NotFoundError(f"{_where(parent)}: no entry {os.fsdecode(name)!r}")
            found = archive.resolve(found)
        return PxarNode(archive, found)

    def _dir_child(self, parent: DirNode, children: dict[bytes, Node], name: bytes) -> Node:
        child = children.get(name) or self.hidden_child(parent, name)
        if child is None:
            raise NotFoundError(f"{_where(parent)}: no entry {os.fsdecode(name)!r}")
        return child

    def attr(self, node: AnyNode) -> Attr:
        return node.attr(load=True)

    def readlink(self, node: AnyNode) -> bytes:
        if isinstance(node, SymlinkNode):
            return node.target
        if isinstance(node, PxarNode) and node.entry.kind is EntryKind.SYMLINK:
            return node.entry.link_target or b""
        raise NotSymlinkError(f"{_where(node)} is not a symbolic link")

    def opendir(self, node: AnyNode) -> DirHandle:
        if isinstance(node, DirNode):
            return DirHandle(node, list(node.children().items()))
        archive, entry = self._pxar_dir(node)  # opens the archive, checks it is a directory
        listing = self.listings.get((archive.id, entry.entry_offset))
        return DirHandle(node, None, archive, listing)

    def cached_opendir(self, node: AnyNode) -> DirHandle | None:
        """A handle served from memory (never blocks): a loaded datastore-level directory, or a
        pxar directory whose complete listing is cached; None if `opendir` must read.
        NotDirectoryError for a node that is not a directory."""
        if isinstance(node, DirNode):
            children = node.cached_children()
            return None if children is None else DirHandle(node, list(children.items()))
        if isinstance(node, ArchiveNode):
            archive = node.archive
            if archive is None:
                return None
            entry = archive.root
        elif isinstance(node, PxarNode) and node.entry.kind is EntryKind.DIRECTORY:
            archive, entry = node.archive, node.entry
        else:
            raise NotDirectoryError(f"{_where(node)} is not a directory")
        listing = self.listings.get((archive.id, entry.entry_offset))
        return None if listing is None else DirHandle(node, None, archive, listing)

    def readdir(self, handle: DirHandle, start: int, count: int) -> list[DirItem]:
        """Up to `count` entries from position `start`; `next_offset` resumes after each.

        Never blocks for a handle with a static or cached `listing`; otherwise blocking."""
        if handle._static is not None:
            items = handle._static[start : start + count]
            return [
                DirItem(name, n, n.attr(load=False), start + i + 1)
                for i, (name, n) in enumerate(items)
            ]
        if handle.listing is not None:
            archive = handle.archive
            assert archive is not None
            nodes = [
                (name, PxarNode(archive, entry))
                for name, entry in handle.listing[start : start + count]
            ]
            return [
                DirItem(name, node, node.attr(), start + i + 1)
                for i, (name, node) in enumerate(nodes)
            ]
        pending = [p for p in handle._pending if p[0] >= start]
        expected = pending[0][0] if pending else handle._iter_pos
        archive, entry = self._pxar_dir(handle.node)
        with archive.lock:
            try:
                if handle._iter is None or expected != start:
                    handle._iter = archive.accessor.listdir(entry)
                    handle._iter_pos = 0
                    pending = []
                    # Only a listing read from its start, in order, is collected for the cache.
                    handle._collected = [] if start == 0 else None
                    for _ in itertools.islice(handle._iter, start):
                        handle._iter_pos += 1
                collected = handle._collected
                while len(pending) < count:
                    child = next(handle._iter, None)
                    if child is None:
                        if collected is not None:
                            handle._collected = None
                            self.listings.put((archive.id, entry.entry_offset), tuple(collected))
                        break
                    index = handle._iter_pos
                    handle._iter_pos += 1
                    name = child.name  # a hard link keeps its own name, but is its target's inode
                    resolved = archive.resolve(child)
                    pending.append((index, name, PxarNode(archive, resolved)))
                    if collected is not None:
                        collected.append((name, resolved))
            except BaseException:
                handle._collected = None  # the iterator is dead: what it gave is not complete
                raise
            handle._pending = pending
            # Attributes after the batch: a hard link later in it raises its target's st_nlink.
            return [
                DirItem(name, node, node.attr(), index + 1) for index, name, node in pending[:count]
            ]

    def cached_open(self, node: AnyNode) -> Content | BytesContent | None:
        """The content handle if had without I/O (never blocks): a blob or manifest decoded
        before, a v1 archive's file; None if `open` must read. Raises like `open` for a node
        that is not a regular file."""
        _require_file(node)
        if isinstance(node, LazyFileNode) and node._data is not None:
            return BytesContent(node._data)
        if isinstance(node, PxarNode) and not node.archive.content_needs_io:
            return node.archive.content(node.entry)
        return None

    def open(self, node: AnyNode) -> Content | BytesContent:
        """Content handle of a regular file (blocking: index, blob or manifest read)."""
        _require_file(node)
        if isinstance(node, LazyFileNode):
            return BytesContent(node.data())
        if isinstance(node, StreamNode):
            stream = node.stream()
            return Content(stream, 0, stream.size, node.path)
        if isinstance(node, PartitionNode):
            p = node.partition
            return Content(node.image.stream(), p.start, p.size, node.path)
        if isinstance(node, StatsNode):
            return BytesContent(node.render())
        if isinstance(node, PxarNode):
            return node.archive.content(node.entry)
        raise NotRegularFileError(f"{_where(node)} has no content to read")

    def xattrs(self, node: AnyNode) -> list[tuple[bytes, bytes]]:
        """(name, value) of every extended attribute, ACLs in the kernel's binary form."""
        if not isinstance(node, PxarNode):
            return []
        entry = node.entry
        out = list(entry.xattrs)
        if entry.fcaps is not None:
            out.append((b"security.capability", entry.fcaps))
        if aclmod.has_access_acl(entry.acl):
            out.append((aclmod.ACL_XATTR_ACCESS, aclmod.access_acl_xattr(entry.mode, entry.acl)))
        if entry.kind is EntryKind.DIRECTORY and aclmod.has_default_acl(entry.acl):
            out.append((aclmod.ACL_XATTR_DEFAULT, aclmod.default_acl_xattr(entry.acl)))
        return out

    def xattr(self, node: AnyNode, name: bytes) -> bytes:
        """The value of one extended attribute; NoXattrError if the node has none by that name."""
        for key, value in self.xattrs(node):
            if key == name:
                return value
        raise NoXattrError(f"{_where(node)}: no extended attribute {os.fsdecode(name)!r}")

    def _pxar_dir(self, node: AnyNode) -> tuple[Archive, Entry]:
        if isinstance(node, ArchiveNode):
            archive = node.open()
            return archive, archive.root
        if isinstance(node, PxarNode) and node.entry.kind is EntryKind.DIRECTORY:
            return node.archive, node.entry
        raise NotDirectoryError(f"{_where(node)} is not a directory")

    def _open_snapshot(self, snapshot: Snapshot) -> SnapshotState:
        key_error = None
        crypt = self.crypt
        try:
            reader = SnapshotReader(self.datastore, snapshot, crypt, self.cache)
        except CryptKeyError as exc:
            if crypt is None:
                raise
            # A key for another snapshot must not hide this one's unencrypted archives.
            key_error = exc
            crypt = None
            reader = SnapshotReader(self.datastore, snapshot, None, self.cache)
        shared = self._chunk_readers[crypt is not None]
        if shared is not None:
            reader.chunks = shared
        return SnapshotState(reader, key_error)

    # -- diagnostics ------------------------------------------------------------------------------

    def stats_text(self) -> str:
        """`.snapfs/stats` and the unmount summary: the source's counters and the chunk cache."""
        backend = self.datastore.backend
        cache = self.cache
        # Chunks fetched and decoded, i.e. real misses: the cache's own miss counter also counts
        # the non-blocking probe that precedes each fetch.
        fetches = sum(r.fetches for r in self._chunk_readers.values() if r is not None)
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


def _where(node: AnyNode) -> str:
    return node.path or "/"


def _require_file(node: AnyNode) -> None:
    """Only a regular file has content. Decided on attributes that need no I/O: a node not
    loaded yet still knows its kind (an archive is a directory, a blob a file)."""
    mode = node.attr(load=False).mode
    if stat.S_ISDIR(mode):
        raise IsDirectoryError(f"{_where(node)} is a directory")
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{_where(node)} has no content to read")
