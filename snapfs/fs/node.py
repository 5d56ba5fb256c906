"""What every mounted thing answers, and the datastore-level nodes' common ground. No FUSE here.

A node answers the plain requests itself: `attr`, `lookup`, `opendir`, `open`, `readlink`,
`xattrs`. The defaults below answer for a node that is not the kind the request needs, with the
`RequestError` that says so, so each kind overrides only what it is. Each request that may read
storage has a `cached_` twin that never blocks: it answers from memory, or None for "needs I/O",
so the FUSE adapter keeps its event loop free and sends only real work to a worker thread.
`attr(load=False)` is the non-blocking twin of `attr`.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from snapfs.errors import (
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    NotRegularFileError,
    NotSymlinkError,
    SnapfsError,
)
from snapfs.fs.listing import ChildrenHandle

if TYPE_CHECKING:
    from snapfs.fs.content import BytesContent, Content
    from snapfs.fs.listing import DirHandle
    from snapfs.fs.model import FsModel

_N = TypeVar("_N", bound="DatastoreNode")

DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
LINK_MODE = stat.S_IFLNK | 0o777

#: Names the kernel resolves itself: never a child of anything.
DOT_NAMES = (b".", b"..")


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


class Node:
    """Anything the mount shows: a datastore-level node or an entry inside a pxar archive."""

    __slots__ = ()
    ino: int
    path: str
    #: Content changes between opens: no page cache, no cached size (`.snapfs/stats`).
    live = False
    #: Kept in the inode table only while the kernel holds references to it (`remember`,
    #: `forget`); other nodes stay for the life of the mount or until a refresh drops them.
    counted = False
    #: The model can make this node again whenever its inode is named (an indexed archive's
    #: entry): the inode table need not keep it, however long the kernel holds the inode.
    reproducible = False
    #: Listing the directory the kernel found it in gives this node again (an archive entry
    #: that is no directory, while its archive has no index): the table need keep only that.
    found_by_listing = False

    @property
    def where(self) -> str:
        """The node's path for messages ("/" for the root)."""
        return self.path or "/"

    def attr(self, load: bool = True) -> Attr:
        """Attributes; with load=False never blocks (a lazy node then answers a placeholder)."""
        raise NotImplementedError

    def lookup(self, name: bytes) -> Node:
        """The child `name` (may block); NotFoundError if there is none."""
        raise NotDirectoryError(f"{self.where} is not a directory")

    def cached_lookup(self, name: bytes) -> Node | None:
        """The child `name` if known without I/O (never blocks); None if `lookup` must read.

        Raises like `lookup` when the answer is known: NotFoundError for a name that is not
        there (`.` and `..` never are), NotDirectoryError for a node that is not a directory."""
        if name in DOT_NAMES:
            raise self.no_entry(name)
        return self.lookup(name)  # not a directory: says so without I/O

    def opendir(self) -> DirHandle:
        """A handle that lists the directory in batches (may block)."""
        raise NotDirectoryError(f"{self.where} is not a directory")

    def cached_opendir(self) -> DirHandle | None:
        """A handle served from memory (never blocks); None if `opendir` must read."""
        return self.opendir()  # not a directory: says so without I/O

    def listing_never_changes(self) -> bool:
        """Whether the kernel may keep this directory's listing for good: its names, and the
        attributes handed out with them, are final (never blocks). Most nodes: no."""
        return False

    def open(self) -> Content | BytesContent:
        """The content of a regular file (may block). Decided on attributes that need no I/O:
        a node not loaded yet still knows its kind (an archive is a directory, a blob a file)."""
        if stat.S_ISDIR(self.attr(load=False).mode):
            raise IsDirectoryError(f"{self.where} is a directory")
        raise NotRegularFileError(f"{self.where} has no content to read")

    def cached_open(self) -> Content | BytesContent | None:
        """The content if had without I/O (never blocks); None if `open` must read."""
        return self.open()  # not a regular file: says so without I/O

    def readlink(self) -> bytes:
        """A symbolic link's target (never blocks)."""
        raise NotSymlinkError(f"{self.where} is not a symbolic link")

    def xattrs(self) -> list[tuple[bytes, bytes]]:
        """(name, value) of every extended attribute, ACLs in the kernel's binary form."""
        return []

    def xattr(self, name: bytes) -> bytes | None:
        """The value of one extended attribute; None if the node has none by that name (not an
        error: `ls -l` asks every file for its SELinux label, which nearly none has)."""
        for key, value in self.xattrs():
            if key == name:
                return value
        return None

    def details(self) -> dict[str, str]:
        """What a browser shows of this node beyond its attributes (a snapshot's state, size
        and crypt mode; a group's notes), as labelled text; may block. Most nodes have none."""
        return {}

    def no_entry(self, name: bytes) -> NotFoundError:
        return NotFoundError(f"{self.where}: no entry {os.fsdecode(name)!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where} ino={self.ino}>"


class DatastoreNode(Node):
    """A node of the datastore's layout (above and beside the pxar entries): numbered from the
    model's counter, it lives as long as the mount or until a refresh finds it gone."""

    __slots__ = ("model", "ino", "path", "mtime_ns")
    mode = DIR_MODE
    #: The entry can disappear or change on refresh: the kernel may cache it only so long.
    volatile = False

    def __init__(self, model: FsModel, path: str, mtime_ns: int) -> None:
        self.model = model
        self.ino = model.number(self)
        self.path = path
        self.mtime_ns = mtime_ns

    def attr(self, load: bool = True) -> Attr:
        return self.attr_of_size(0)

    def attr_of_size(self, size: int, final: bool = True) -> Attr:
        """This node's attributes for content of `size` bytes."""
        model = self.model
        return Attr(
            self.ino,
            self.mode,
            1,
            model.uid,
            model.gid,
            size,
            0,
            self.mtime_ns,
            final,
            model.refresh_interval if self.volatile else None,
        )

    def loaded_children(self) -> list[DatastoreNode]:
        """The nodes loaded below this one (what a refresh drops with it)."""
        return []


class DatastoreFile(DatastoreNode):
    """A datastore-level regular file; its content is had only by reading (by default)."""

    __slots__ = ()
    mode = FILE_MODE

    def cached_open(self) -> Content | BytesContent | None:
        return None


class DatastoreDir(DatastoreNode):
    """A virtual directory whose children are computed on first use (blocking), and again after
    the refresh interval if the class is `refreshing`."""

    __slots__ = ("_children", "_lock", "_loaded_at")
    refreshing = False

    def __init__(self, model: FsModel, path: str, mtime_ns: int) -> None:
        super().__init__(model, path, mtime_ns)
        self._children: dict[bytes, DatastoreNode] | None = None
        self._lock = threading.Lock()
        self._loaded_at = 0.0

    def children(self) -> dict[bytes, DatastoreNode]:
        """Blocking on first call, and when the listing is due for a refresh."""
        if self._children is None or self._stale():
            with self._lock:
                if self._children is None or self._stale():
                    self._reload()
        assert self._children is not None
        return self._children

    def cached_children(self) -> dict[bytes, DatastoreNode] | None:
        """The children if loaded and not due for a refresh (never blocks); else None."""
        children = self._children
        return None if children is None or self._stale() else children

    def loaded_children(self) -> list[DatastoreNode]:
        return [] if self._children is None else list(self._children.values())

    def lookup(self, name: bytes) -> DatastoreNode:
        return self.child(self.children(), name)

    def cached_lookup(self, name: bytes) -> DatastoreNode | None:
        children = self.cached_children()
        return None if children is None else self.child(children, name)

    def child(self, children: dict[bytes, DatastoreNode], name: bytes) -> DatastoreNode:
        """`name` in a listing of this directory; NotFoundError if it is not there."""
        child = children.get(name)
        if child is None:
            raise self.no_entry(name)
        return child

    def opendir(self) -> DirHandle:
        return ChildrenHandle(self, list(self.children().items()))

    def listing_never_changes(self) -> bool:
        return not (self.volatile or self.refreshing)

    def cached_opendir(self) -> DirHandle | None:
        children = self.cached_children()
        return None if children is None else ChildrenHandle(self, list(children.items()))

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
                self.model.drop(node)
        self._children = new
        self._loaded_at = self.model.clock()

    def _reuse(self, name: bytes, cls: type[_N]) -> _N | None:
        """During a reload: the node `name` had, if it is the same kind (keeps its inode)."""
        old = self._children.get(name) if self._children is not None else None
        return old if type(old) is cls else None

    def _load(self) -> dict[bytes, DatastoreNode]:
        raise NotImplementedError

    def _child_path(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name
