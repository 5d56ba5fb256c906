"""The kernel's page cache filled from a process of its own, many files per request.

Why a process: each `notify_store` is a system call made without the interpreter lock, and
each time it returns, the filler thread must take the lock back from the main loop, which
holds it while it answers requests. One file at a time, the two threads then hand the lock to
each other twice per file. Measured on a cold `tar` of the bench tree (98,000 small files):
65 us per file handed, and the mount answering its own READs more slowly than with no filling
at all, so most files were handed after `tar` had read them. This process has an interpreter
of its own: the filler thread gives it a whole chunk's files at once and waits for one answer.

How: the mount passes it its `/dev/fuse` descriptor and a memory file (memfd). For each batch the
filler writes the pieces' bytes into the memory file and sends a table (inode, offset, where
in the memory file, length); this process writes one FUSE_NOTIFY_STORE message per piece to
`/dev/fuse`, as libfuse's `fuse_lowlevel_notify_store` does, and answers with one status byte
per piece (0: taken; else the errno, ENOENT when the kernel does not know the inode yet).

Run as a script with the standard library only (`python -I -S page_store.py FUSE_FD MEMFD`):
it starts in a few milliseconds and never imports snapfs. It ends when its requests pipe closes
(the mount stopping the filler, or the mount process gone: the kernel also ends it then), and
it never outlives a FUSE connection that is gone: every write then fails at once.

A store waits while a READ of the same pages is pending, as in the thread: the mount's main loop
answers that READ; nothing here holds anything the loop needs.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

#: struct fuse_out_header (length, notify code in place of an error, unique 0) and struct
#: fuse_notify_store_out (inode, offset, size, padding), from linux/fuse.h.
OUT_HEADER = struct.Struct("<IiQ")
NOTIFY_STORE_OUT = struct.Struct("<QQII")
FUSE_NOTIFY_STORE = 4

#: A request: the number of pieces and the bytes they take in the memory file; then per piece
#: its inode, file offset, place in the memory file and length.
REQUEST = struct.Struct("<QQ")
PIECE = struct.Struct("<QQQQ")

T = TypeVar("T")

#: At most this many buffers per `pwritev` (the kernel's IOV_MAX).
_IOV_MAX = 1024
#: How long `close` waits for the process to end after its pipe closed.
_CLOSE_TIMEOUT = 5.0


def fuse_device_fd() -> int | None:
    """This process's one descriptor open on /dev/fuse, or None if it has none or several."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:  # closed meanwhile (listdir's own descriptor, for one)
            continue
    return found[0] if len(found) == 1 else None


class PageStoreProcess:
    """The mount's side: start the process, send it batches, close it."""

    def __init__(self, fuse_fd: int) -> None:
        self._memfd = os.memfd_create("snapfs-page-store", os.MFD_CLOEXEC)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(fuse_fd),
                 str(self._memfd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(fuse_fd, self._memfd),
                bufsize=0,
                env={},  # it needs none, and carries no credentials of the mount's
            )  # fmt: skip
        except BaseException:
            os.close(self._memfd)
            raise

    def store(self, pieces: Sequence[tuple[int, int, memoryview]]) -> list[int]:
        """Hand `pieces` (inode, file offset, bytes) to the kernel's page cache: for each, 0 if
        it was taken, else the errno. OSError if the process is gone."""
        table = []
        at = 0
        for inode, offset, data in pieces:
            table.append(PIECE.pack(inode, offset, at, len(data)))
            at += len(data)
        views = [data for _, _, data in pieces]
        written = 0
        for i in range(0, len(views), _IOV_MAX):
            written += os.pwritev(self._memfd, views[i : i + _IOV_MAX], written)
        if written != at:  # a memory file takes all or fails (ENOMEM)
            raise OSError(errno.EIO, f"page store: {written} of {at} bytes written")
        try:
            self._proc.stdin.write(REQUEST.pack(len(pieces), at) + b"".join(table))
            reply = _read_exactly(self._proc.stdout, len(pieces))
        finally:
            os.ftruncate(self._memfd, 0)  # the bytes are the kernel's now: free them here
        if len(reply) != len(pieces):
            raise OSError(errno.EPIPE, "the page store process ended")
        return list(reply)

    def close(self) -> None:
        """End the process (it finishes the batch it is in) and free the memory file."""
        try:
            self._proc.stdin.close()
            self._proc.wait(_CLOSE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._proc.stdout.close()
            os.close(self._memfd)


def _read_exactly(f, size: int) -> bytes:
    """`size` bytes from `f`, or fewer only at its end."""
    parts = []
    while size:
        part = f.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def store_each(pieces: Sequence[T], store_one: Callable[[T], object]) -> list[int]:
    """`store_one` each piece: a status each, 0 if it was taken, else the errno (at most 255).
    ENOENT (the kernel does not know the inode yet) leaves the rest to try; any other failure
    means the connection is gone, or the filling is stopping: the rest fail the same way."""
    status = []
    for piece in pieces:
        try:
            store_one(piece)
        except OSError as exc:
            code = min(exc.errno or errno.EIO, 255)
            status.append(code)
            if code != errno.ENOENT:
                return status + [code] * (len(pieces) - len(status))
        else:
            status.append(0)
    return status


def store_pieces(fuse_fd: int, table: bytes, data: memoryview) -> bytes:
    """Write one FUSE_NOTIFY_STORE per piece of `table`: a status byte each (`store_each`)."""

    def write(piece: tuple[int, int, int, int]) -> None:
        inode, offset, at, length = piece
        size = OUT_HEADER.size + NOTIFY_STORE_OUT.size + length
        head = OUT_HEADER.pack(size, FUSE_NOTIFY_STORE, 0) + NOTIFY_STORE_OUT.pack(
            inode, offset, length, 0
        )
        os.writev(fuse_fd, [head, data[at : at + length]])

    return bytes(store_each(list(PIECE.iter_unpack(table)), write))


def serve(fuse_fd: int, memfd: int, requests, replies) -> None:
    """Answer batches from `requests` until it ends."""
    while True:
        head = _read_exactly(requests, REQUEST.size)
        if len(head) < REQUEST.size:
            return
        count, length = REQUEST.unpack(head)
        table = _read_exactly(requests, count * PIECE.size)
        if len(table) < count * PIECE.size:
            return
        if length:
            with (
                mmap.mmap(memfd, length, prot=mmap.PROT_READ) as mapped,
                memoryview(mapped) as data,
            ):
                status = store_pieces(fuse_fd, table, data)
        else:
            status = store_pieces(fuse_fd, table, memoryview(b""))
        replies.write(status)
        replies.flush()


def _die_with_parent() -> None:
    """Be killed when the thread that started this process ends (prctl PR_SET_PDEATHSIG):
    the mount's filler thread, which ends after closing our pipe, or with the mount process,
    whatever ends it."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    fuse_fd, memfd = int(argv[1]), int(argv[2])
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent ended before the line above took effect
        return 0
    try:
        serve(fuse_fd, memfd, sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
