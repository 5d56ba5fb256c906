"""Reads without `open`: the kernel sends no OPEN or RELEASE, and `read` names the inode.

`tar` or `cp -r` of a tree of small files pays two FUSE round trips per file besides its one
`read`: OPEN and RELEASE (about 100 us together, measured on a warm tree). A filesystem whose
files need no per-open state may answer the first OPEN with ENOSYS; the kernel then opens every
file itself (with FOPEN_KEEP_CACHE: the page cache survives opens) and never sends OPEN or
RELEASE again on this mount. Every READ then carries file handle 0.

pyfuse3's C `read` handler passes on only that file handle, so the mount puts a small ctypes
function in the `read` slot of libfuse's table of handlers (snapfs.fs.handler_table): it copies
the request's inode into the file handle and calls pyfuse3's own handler. The filesystem's
`read(fh, ...)` is then `read(inode, ...)`.

Requires a kernel that knows "no open" (Linux 4.19 and later): an older one would fail the
open itself with ENOSYS.
"""

from __future__ import annotations

import ctypes

from snapfs.fs.handler_table import READ_SLOT, FileInfo, HandlerTable

_READ_ARGS = (
    ctypes.c_void_p,  # fuse_req_t
    ctypes.c_uint64,  # fuse_ino_t
    ctypes.c_size_t,
    ctypes.c_int64,  # off_t
    ctypes.POINTER(FileInfo),
)


def enable(table: HandlerTable) -> None:
    """From now on every `read` of this session gets the inode as its file handle.

    The filesystem must then answer `open` with ENOSYS: a file handle it handed out itself
    would be overwritten.
    """
    table.wrap(READ_SLOT, _READ_ARGS, _read)


def _read(original, req, ino, size, off, fi) -> None:
    fi.contents.fh = ino
    original(req, ino, size, off, fi)
