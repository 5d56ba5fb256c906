"""Files handed to the kernel's page cache before anyone reads them (FUSE notify_store).

`tar` or `cp -r` of a pxar tree reads thousands of small files one after another, in archive
order, and each costs a READ round trip through the mount. When a file's first read finds the
chunk it starts in decoded, the other files stored wholly in that chunk are handed to the
kernel, one `notify_store` each (Archive.files_beside lists them from the archive's index); a
reader going on through the archive then finds them in the page cache and sends no READ. The
kernel takes a file only once it knows its inode (its directory was listed): the rest of a
chunk is handed over at the next read in it, once the reader has listed their directory. The
kernel keeps what it took as it keeps what was read (FOPEN_KEEP_CACHE), and drops it as it
drops any page cache under memory pressure.

A random read (a VM's disk image, a database file) decodes a whole 4 MiB chunk for a few pages:
the rest of that chunk's share of the file goes to the kernel the same way
(Content.rest_of_chunk), so the reads that come back near it are answered from the page cache.

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
import queue
import threading
from collections.abc import Callable

import pyfuse3

from snapfs.fs.content import FilesJob
from snapfs.linux.threads import set_os_thread_name

log = logging.getLogger("snapfs.fs")

#: Jobs waiting for the thread; more are dropped (each holds a decoded chunk until it runs).
PENDING_JOBS = 2

#: store(inode, offset, data): the kernel's page cache of `inode` gets `data` at `offset`.
Store = Callable[[int, int, memoryview], None]


class PageFiller:
    """One thread handing the files of submitted jobs to the kernel's page cache."""

    def __init__(self, store: Store = pyfuse3.notify_store) -> None:
        self._store = store
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
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self._fill(job)
            finally:
                self._jobs.task_done()

    def _fill(self, job: FilesJob) -> None:
        try:
            job(self._hand)
        except _Stopped:
            pass
        except Exception as exc:  # a hint: the reader's own READ reports what is wrong
            log.debug("page cache fill: %s", exc)

    def _hand(self, inode: int, offset: int, data: memoryview) -> bool:
        if self._stopping:
            raise _Stopped
        try:
            self._store(inode, offset, data)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # not known to the kernel (yet): nothing to fill
                return False
            # The connection is gone (unmounted), or the kernel cannot store: stop trying.
            log.debug("page cache fill stopped: %s", exc)
            with self._lock:
                self._stopping = True
            raise _Stopped from None
        self.handed += 1
        return True


class _Stopped(Exception):
    """The filler is stopping: the job in hand ends here."""
