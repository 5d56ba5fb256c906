"""pyfuse3 Operations over the FsModel: inode -> node -> one node call, SnapfsError -> errno.

Nothing else: what a request means for a node is the node's business (`snapfs.fs.node`).

All handlers run as trio tasks in one thread. Anything that may touch storage or decode a chunk
runs in a worker thread (`trio.to_thread`), so requests overlap and zstd/AES/SHA-256 (which
release the GIL) use both cores; reads whose chunk is already decoded are answered inline, as a
memoryview of the cached chunk (no copy). After a sequential read the next chunks of that file
are decoded in the background (`Readahead`, snapfs.store.readahead), at most two at a time.

Files are not opened through FUSE on a mount: the first `open` is answered ENOSYS, after which the
kernel opens files itself and each `read` names its inode (snapfs.fs.inode_reads), so `tar` of
many small files costs one request per file, not three. The content of the last files read is
kept by inode (`OPEN_FILES`) with its readahead state.

Failure semantics: a corrupt or missing chunk fails only the reads that need it (EIO, logged once
per file and message); a missing or wrong key fails the encrypted archives (EACCES); everything
else in the mount stays readable. The mount is read-only: every write is EROFS. A request that
does not fit its node (a name that is not there, a path through a file) gets the errno programs
expect for it (`errno_for`) and is not logged: the datastore is fine.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import threading
from collections.abc import Iterable

import pyfuse3
import trio
from lru import LRU

from snapfs.errors import (
    CryptKeyError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    NotRegularFileError,
    NotSymlinkError,
    RequestError,
    SnapfsError,
    UsageError,
)
from snapfs.fs.content import BytesContent, Content, FilesJob, Hand
from snapfs.fs.idle_memory import IdleMemoryReturn
from snapfs.fs.listing import DirHandle, DirItem
from snapfs.fs.model import FsModel
from snapfs.fs.node import Attr, Node
from snapfs.fs.page_fill import PageFiller
from snapfs.store.readahead import Readahead

log = logging.getLogger("snapfs.fs")

#: Attributes of archived data never change; placeholders (not yet loaded) are never cached.
CACHE_TIMEOUT = 24 * 3600.0
READDIR_BATCH = 256
#: Files read by inode whose content (and readahead state) is kept between reads.
OPEN_FILES = 64
#: How long the mount waits for the page cache filler to stop (it waits for at most one READ).
FILL_STOP_TIMEOUT = 10.0
BLOCK_SIZE = 128 * 1024


#: What each error means to a program. Anything else (a corrupt or missing chunk, a format we do
#: not read, a bug) is data that cannot be read or verified: EIO.
ERRNOS: tuple[tuple[type[SnapfsError], int], ...] = (
    (NotFoundError, errno.ENOENT),
    (NotDirectoryError, errno.ENOTDIR),
    (IsDirectoryError, errno.EISDIR),
    (NotRegularFileError, errno.EINVAL),
    (NotSymlinkError, errno.EINVAL),
    (CryptKeyError, errno.EACCES),
    (UsageError, errno.EINVAL),
)


def _whole_listing(jobs: list[FilesJob], hand: Hand) -> None:
    """One listing's page cache fills, run as one job (`SnapfsOperations._fill_listed`)."""
    for job in jobs:
        job(hand)


def errno_for(exc: BaseException) -> int:
    """The one place an error becomes an errno."""
    for cls, code in ERRNOS:
        if isinstance(exc, cls):
            return code
    return errno.EIO


def entry_attributes(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.ino
    e.generation = 0
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = attr.rdev
    e.st_size = attr.size
    e.st_blksize = BLOCK_SIZE
    e.st_blocks = (attr.size + 511) // 512
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = attr.mtime_ns
    timeout = CACHE_TIMEOUT if attr.final else 0.0
    if attr.timeout is not None:  # may vanish or change on the next listing refresh
        timeout = min(timeout, attr.timeout)
    e.entry_timeout = timeout
    e.attr_timeout = timeout
    return e


class SnapfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True  # the kernel keeps each file's ACL after asking once (`ls -l` asks for it)

    def __init__(self, model: FsModel, *, workers: int = 8, readahead_workers: int = 2) -> None:
        super().__init__()
        self.model = model
        self._limiter = trio.CapacityLimiter(workers)
        self._readahead = Readahead(readahead_workers, "snapfs-readahead")
        self._filler = PageFiller()
        #: Run by the mount's main loop beside pyfuse3's (snapfs.fs.mount).
        self.idle_memory = IdleMemoryReturn(model.work_done)
        self._fhs = itertools.count(1)
        self._files: dict[int, Content | BytesContent] = {}
        #: The kernel opens files itself and reads by inode (snapfs.fs.inode_reads); the mount
        #: sets this once the read handler hands over inodes.
        self.reads_by_inode = False
        self._by_inode: LRU = LRU(OPEN_FILES)
        self._dirs: dict[int, DirHandle] = {}
        #: Page cache fills for listings being read, by directory handle (`_fill_listed`).
        self._listed_jobs: dict[int, list[FilesJob]] = {}
        self._session_lock = threading.Lock()
        self._session_open = False

    def close(self) -> None:
        """Stop the readahead threads; for the mount, once the FUSE main loop has returned."""
        self._readahead.close()

    def stop_filling(self, timeout: float = FILL_STOP_TIMEOUT) -> bool:
        """Hand the kernel no more files (snapfs.fs.page_fill); True once nothing is being
        handed. Called while the main loop still answers, before it is ended, and by `detach`."""
        return self._filler.stop(timeout)

    def _fill_summary(self) -> str:
        filler = self._filler
        return (
            f"files and rests of chunks handed to the kernel's page cache before a read: "
            f"{filler.handed} "
            f"({filler.pending} jobs pending)"
        )

    # -- what the kernel caches ---------------------------------------------------------------

    def attach(self) -> None:
        """pyfuse3 is mounted: from now on, attributes that change are pushed to the kernel."""
        with self._session_lock:
            self._session_open = True
        self.model.notify_attrs_changed = self._invalidate_attrs
        self.model.adapter_summaries += [self._fill_summary, self.idle_memory.summary]

    def detach(self) -> None:
        """Before `pyfuse3.close`: a walk still running must not notify a closed session, nor
        the page cache filler store into one."""
        self.model.notify_attrs_changed = None
        if not self.stop_filling():
            log.warning("the page cache filler is still waiting for the kernel; closing anyway")
        with self._session_lock:
            self._session_open = False

    def _invalidate_attrs(self, ino: int) -> None:
        """Any thread: the kernel asks for the attributes of `ino` again, if it knows it."""
        with self._session_lock:
            if not self._session_open:
                return
            try:
                pyfuse3.invalidate_inode(ino, attr_only=True)
            except OSError:  # ENOENT: not cached; ENOSYS: before the kernel's INIT
                pass

    # -- helpers ------------------------------------------------------------------------------

    async def _run(self, where: Node | str, func, *args, quiet_enoent: bool = False):
        """Run blocking model work in a worker thread; map SnapfsError to FUSEError. `where`:
        the node the request is about (its path is made only if the request fails), or a name."""
        try:
            return await trio.to_thread.run_sync(func, *args, limiter=self._limiter)
        except SnapfsError as exc:
            raise self._fail(exc, where, quiet_enoent) from None

    def _inline(self, where: Node | str, func, *args, quiet_enoent: bool = False):
        """Run model work that never blocks right here; map SnapfsError to FUSEError."""
        try:
            return func(*args)
        except SnapfsError as exc:
            raise self._fail(exc, where, quiet_enoent) from None

    async def _cached_or_run(self, node: Node, cached, blocking):
        """`cached()` if the node can answer without blocking, else `blocking()` in a thread."""
        found = self._inline(node, cached)
        if found is None:
            found = await self._run(node, blocking)
        return found

    def _fail(
        self, exc: BaseException, where: Node | str, quiet_enoent: bool = False
    ) -> pyfuse3.FUSEError:
        """The FUSEError for `exc`, logged unless it is the asker's mistake, not the data's."""
        code = errno_for(exc)
        if not (isinstance(exc, RequestError) or (quiet_enoent and code == errno.ENOENT)):
            self.model.report(exc, where if isinstance(where, str) else where.path)
        return pyfuse3.FUSEError(code)

    async def _node(self, ino: int) -> Node:
        # Every request starts here: no `_inline`, and its message made only on failure.
        try:
            node = self.model.cached_node(ino)
        except SnapfsError as exc:
            raise self._fail(exc, f"inode {ino}", quiet_enoent=True) from None
        if node is None:  # given up before its archive was indexed: its directory finds it
            node = await self._run(f"inode {ino}", self.model.node, ino, quiet_enoent=True)
        return node

    async def _attr(self, node: Node) -> Attr:
        attr = node.attr(load=False)
        if not attr.final:
            attr = await self._run(node, node.attr)
        return attr

    # -- metadata -----------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        parent = await self._node(parent_inode)
        name = bytes(name)
        child = self._inline(parent, parent.cached_lookup, name, quiet_enoent=True)
        if child is None:
            child = await self._run(parent, parent.lookup, name, quiet_enoent=True)
        attr = await self._attr(child)
        self.model.remember(child, parent)
        return entry_attributes(attr)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.model.forget(ino, count)

    async def getattr(self, inode, ctx=None):
        return entry_attributes(await self._attr(await self._node(inode)))

    async def readlink(self, inode, ctx=None):
        node = await self._node(inode)
        return self._inline(node, node.readlink)

    async def getxattr(self, inode, name, ctx=None):
        node = await self._node(inode)
        value = self._inline(node, node.xattr, bytes(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode, ctx=None):
        return [key for key, _ in (await self._node(inode)).xattrs()]

    async def statfs(self, ctx=None):
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = BLOCK_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 4096
        return s

    # -- directories --------------------------------------------------------------------------

    def listing_never_changes(self, inode: int) -> bool:
        """Whether the kernel may keep this directory's listing (snapfs.fs.listing_cache).

        Called inline for every `opendir`, before `opendir` itself: no I/O.
        """
        try:
            node = self.model.cached_node(inode)
        except SnapfsError:
            return False
        return node is not None and node.listing_never_changes()

    async def opendir(self, inode, ctx=None):
        node = await self._node(inode)
        handle = await self._cached_or_run(node, node.cached_opendir, node.opendir)
        fh = next(self._fhs)
        self._dirs[fh] = handle
        return fh

    async def readdir(self, fh, start_id, token):
        handle = self._dirs[fh]
        if start_id == 0:
            self.model.listings_read += 1
        if not handle.in_memory and handle.loads:
            await self._run(handle.node, handle.load)
        replied: list[DirItem] = []
        if handle.in_memory:
            self._reply_entries(handle.node, handle.items(start_id), token, replied)
        else:
            start = start_id
            while True:
                items = await self._run(handle.node, handle.read, start, READDIR_BATCH)
                if not items or not self._reply_entries(handle.node, items, token, replied):
                    break
                start = items[-1].next_offset
        self._fill_listed(fh, handle, replied)

    def _reply_entries(
        self, directory: Node, items: Iterable[DirItem], token, replied: list[DirItem]
    ) -> bool:
        """Hand entries to the kernel until its buffer is full (False) or they run out (True);
        those handed are added to `replied`."""
        remember = self.model.remember
        for item in items:
            if not pyfuse3.readdir_reply(
                token, item.name, entry_attributes(item.attr), item.next_offset
            ):
                return False
            remember(item.node, directory)  # readdirplus hands the kernel a reference
            replied.append(item)
        return True

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)
        self._listed_jobs.pop(fh, None)

    # -- files --------------------------------------------------------------------------------

    async def open(self, inode, flags, ctx=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        self.model.files_opened += 1
        if self.reads_by_inode:  # the kernel opens every file itself from now on
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = await self._node(inode)
        content = await self._cached_or_run(node, node.cached_open, node.open)
        fh = next(self._fhs)
        self._files[fh] = content
        live = node.live  # new content on every open: bypass the page cache
        return pyfuse3.FileInfo(fh=fh, keep_cache=not live, direct_io=live)

    async def _content_of(self, inode: int) -> Content | BytesContent:
        """What a read by inode reads: kept for the next read unless it changes (`live`)."""
        content = self._by_inode.get(inode)
        if content is None:
            node = await self._node(inode)
            content = await self._cached_or_run(node, node.cached_open, node.open)
            if not node.live:
                self._by_inode[inode] = content
        return content

    async def read(self, fh, off, size):
        content = await self._content_of(fh) if self.reads_by_inode else self._files[fh]
        if isinstance(content, BytesContent):
            return content.read(off, size)
        self.model.reads_sent += 1
        sequential = content.is_sequential(off)
        decoded = False
        try:
            data = content.read(off, size, block=False)
            if data is None:
                decoded = True
                if sequential:  # start the chunks after this one while we wait for it
                    self._read_ahead(content, off, size)
                data = await trio.to_thread.run_sync(content.read, off, size, limiter=self._limiter)
        except SnapfsError as exc:
            raise self._fail(exc, content.name) from None
        except Exception as exc:  # a bug must not kill the mount; never pass wrong bytes on
            log.exception("%s: reading %d bytes at %d", content.name, size, off)
            raise self._fail(exc, content.name) from None
        if sequential:
            self._read_ahead(content, off, size)
        elif decoded and self.reads_by_inode:  # fh is the inode
            self._fill_rest_of_chunk(fh, content, off, len(data))
        if off == 0:
            self._fill_beside(content)
        return data

    def _fill_rest_of_chunk(self, inode: int, content: Content, off: int, size: int) -> None:
        """Have the rest of the chunk a random read decoded handed to the kernel."""
        try:
            job = content.rest_of_chunk(inode, off, size)
        except Exception as exc:  # a hint never fails the read it follows
            log.debug("%s: no page cache fill: %s", content.name, exc)
            return
        if job is not None:
            self._filler.submit(job)

    def _fill_listed(self, fh: int, handle: DirHandle, items: list[DirItem]) -> None:
        """Have the files a listing named handed to the kernel, if a reader is at them, once the
        listing is read to its end: the kernel learns the inodes of a reply's entries only as
        the reader takes them, and the reader asks again, for none left, once it has."""
        if not self.reads_by_inode:
            return
        if not items:
            jobs = self._listed_jobs.pop(fh, None)
            if jobs:
                self._filler.submit(functools.partial(_whole_listing, jobs))
            return
        try:
            job = handle.files_listed(items)
        except Exception as exc:  # a hint never fails the listing it follows
            log.debug("%s: no page cache fill: %s", handle.node.path, exc)
            return
        if job is not None:
            self._listed_jobs.setdefault(fh, []).append(job)

    def _fill_beside(self, content: Content) -> None:
        """Have the files stored beside this one handed to the kernel (snapfs.fs.page_fill)."""
        try:
            job = content.files_beside()
        except Exception as exc:  # a hint never fails the read it follows
            log.debug("%s: no page cache fill: %s", content.name, exc)
            return
        if job is not None:
            self._filler.submit(job)

    def _read_ahead(self, content: Content, off: int, size: int) -> None:
        content.read_ahead(self._readahead, off, size)

    async def release(self, fh):
        self._files.pop(fh, None)

    # -- the mount is read-only -----------------------------------------------------------------

    async def _read_only(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = _read_only
    setxattr = _read_only
    removexattr = _read_only
    mknod = _read_only
    mkdir = _read_only
    unlink = _read_only
    rmdir = _read_only
    symlink = _read_only
    rename = _read_only
    link = _read_only
    create = _read_only
    write = _read_only
