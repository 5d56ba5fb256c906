"""Files handed to the kernel's page cache before anyone reads them (FUSE notify_store).

`tar` or `cp -r` of a pxar tree reads thousands of small files one after another, in archive
order, and each costs a READ round trip through the mount. The kernel takes a file only once
it knows its inode, from the listing of its directory; such a reader lists a directory, then
reads its files. So while an archive's files are being read in archive order, each directory
listing the kernel reads to its end has its files handed over then (Archive.files_listed):
those in a chunk decoded already at once, the others at the first read in their chunk, which
decodes it (Archive.files_beside). The reader then finds them in the page cache and sends no
READ. When the kernel had the listings before (a `find` first), a file's first read hands over
the other files stored in its chunk instead, found in the archive's index, as far as the
kernel knows them. The kernel keeps what it took as it keeps what was read
(FOPEN_KEEP_CACHE), and drops it as it drops any page cache under memory pressure.

A random read (a VM's disk image, a database file) decodes a whole 4 MiB chunk for a few pages:
the rest of that chunk's share of the file goes to the kernel the same way
(Content.rest_of_chunk), so the reads that come back near it are answered from the page cache.

The stores themselves are made by a process of its own (snapfs.fs.page_store), a batch of
pieces per job: made from this thread, one system call per file, they cost the main loop the
interpreter lock twice per file.

Why a thread of its own, and why `stop` comes before the main loop ends: the kernel locks a
file's pages while a READ of them is pending, and a store into those pages waits for that
READ's answer. From the thread that answers READs a store could wait for itself; from this one
it waits for the main loop. So the loop must go on answering until the filler has stopped: the
mount stops it on a signal before ending the loop, and again, with a bound, once the loop has
ended (an unmount has then closed the connection, and a store fails at once).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Callable

import pyfuse3

from snapfs.fs.content import FilesJob, Piece
from snapfs.fs.page_store import PageStoreProcess, fuse_device_fd, store_each
from snapfs.linux.threads import set_os_thread_name

log = logging.getLogger("snapfs.fs")

#: Jobs waiting for the thread; more are dropped (most hold a decoded chunk until they run).
PENDING_JOBS = 4

#: store(inode, offset, data): the kernel's page cache of `inode` gets `data` at `offset`.
Store = Callable[[int, int, memoryview], None]
#: store(pieces): the same for many pieces at once; for each, 0 if taken, else the errno.
BatchStore = Callable[[list[Piece]], list[int]]


class PageFiller:
    """One thread handing the files of submitted jobs to the kernel's page cache."""

    def __init__(self, store: Store | None = None) -> None:
        """`store`: one piece at a time, in this process's filler thread (tests record with
        it). None: the kernel's, from a process of its own (snapfs.fs.page_store), or, if that
        cannot start, pyfuse3's `notify_store` in the thread."""
        self._store = store
        self._batch_store: BatchStore | None = None
        self._process: PageStoreProcess | None = None
        self._jobs: queue.Queue[FilesJob | None] = queue.Queue(PENDING_JOBS)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        #: Files (or rests of chunks) handed to the kernel so far (one thread writes it).
        self.handed = 0

    def submit(self, job: FilesJob) -> None:
        """Run `job` and hand its files over, unless stopping or PENDING_JOBS are waiting (a
        hint: a file not handed over is read as ever)."""
        with self._lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="snapfs-page-fill", daemon=True
                )
                self._thread.start()
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                pass

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet done (the one running included)."""
        return self._jobs.unfinished_tasks

    def stop(self, timeout: float) -> bool:
        """Hand nothing more over and wait up to `timeout` for the thread to end; False if it
        is still in a store (waiting for a READ the main loop has not answered)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            return True
        while True:  # make room for the end mark: the jobs not started are dropped
            try:
                self._jobs.get_nowait()
                self._jobs.task_done()
            except queue.Empty:
                break
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        set_os_thread_name("snapfs-page-fill")
        self._batch_store = self._start_store()
        try:
            while True:
                job = self._jobs.get()
                try:
                    if job is None:
                        return
                    self._fill(job)
                finally:
                    self._jobs.task_done()
        finally:
            if self._process is not None:
                self._process.close()

    def _start_store(self) -> BatchStore:
        if self._store is not None:
            return self._one_by_one
        fd = fuse_device_fd()
        if fd is not None:
            try:
                self._process = PageStoreProcess(fd)
                return self._process.store
            except OSError as exc:
                log.info("page cache fill in a thread: no page store process (%s)", exc)
        self._store = pyfuse3.notify_store
        return self._one_by_one

    def _one_by_one(self, pieces: list[Piece]) -> list[int]:
        """Store each piece in this thread (as the page store process does, `store_each`)."""
        return store_each(pieces, self._store_one)

    def _store_one(self, piece: Piece) -> None:
        if self._stopping:  # the main loop is about to end: a store could wait for it
            raise OSError(errno.ECANCELED, "page cache fill stopping")
        self._store(*piece)

    def _fill(self, job: FilesJob) -> None:
        try:
            job(self._hand)
        except _Stopped:
            pass
        except Exception as exc:  # a hint: the reader's own READ reports what is wrong
            log.debug("page cache fill: %s", exc)

    def _hand(self, pieces: list[Piece]) -> list[bool]:
        if self._stopping:
            raise _Stopped
        try:
            status = self._batch_store(pieces)
        except OSError as exc:  # the page store process is gone
            status = [exc.errno or errno.EIO] * len(pieces)
        taken = [code == 0 for code in status]
        self.handed += sum(taken)
        failed = next((code for code in status if code not in (0, errno.ENOENT)), None)
        if failed is not None:
            # The connection is gone (unmounted), or the kernel cannot store: stop trying.
            log.debug("page cache fill stopped: %s", os.strerror(failed))
            with self._lock:
                self._stopping = True
            raise _Stopped
        return taken  # False: not known to the kernel (yet), nothing to fill


class _Stopped(Exception):
    """The filler is stopping: the job in hand ends here."""
