"""Directory listings the kernel keeps (FOPEN_CACHE_DIR), which pyfuse3 cannot ask for.

A directory inside a snapshot never changes, so once the kernel has read it the kernel could
answer every later `readdir` itself: a second `find` or `ls` then costs no FUSE request at all
(the entries and attributes are cached already, with long timeouts). The kernel does this when
`opendir`'s reply carries FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE, which libfuse sets from two bits
of `struct fuse_file_info`. pyfuse3 (3.5) never sets them: its C `opendir` handler copies the
kernel's `fuse_file_info` and replies with it.

So the mount wraps the `opendir` slot of libfuse's table of handlers
(snapfs.fs.handler_table): the wrapper sets the two bits when the directory may be cached (the
caller decides per inode) and calls pyfuse3's own handler, which copies them into its reply.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import partial

from snapfs.fs.handler_table import (
    CACHE_READDIR,
    KEEP_CACHE,
    OPENDIR_SLOT,
    FileInfo,
    HandlerTable,
)

log = logging.getLogger("snapfs.fs")

_OPENDIR_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(FileInfo))


def enable(table: HandlerTable, may_cache: Callable[[int], bool]) -> None:
    """Let the kernel keep the listings of directories for which `may_cache(inode)` is true.

    `may_cache` runs in pyfuse3's loop for every `opendir` and must not block.
    """
    table.wrap(OPENDIR_SLOT, _OPENDIR_ARGS, partial(_opendir, may_cache))


def _opendir(may_cache: Callable[[int], bool], original, req, ino, fi) -> None:
    try:
        if may_cache(ino):
            fi.contents.bits |= KEEP_CACHE | CACHE_READDIR
    except Exception:  # a cache hint must never fail a request
        log.exception("deciding whether the kernel may cache the listing of inode %d", ino)
    original(req, ino, fi)
