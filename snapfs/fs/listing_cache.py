"""Directory listings the kernel keeps (FOPEN_CACHE_DIR), which pyfuse3 cannot ask for.

A directory inside a snapshot never changes, so once the kernel has read it the kernel could
answer every later `readdir` itself: a second `find` or `ls` then costs no FUSE request at all
(the entries and attributes are cached already, with long timeouts). The kernel does this when
`opendir`'s reply carries FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE, which libfuse sets from two bits
of `struct fuse_file_info`. pyfuse3 (3.5) never sets them: its C `opendir` handler copies the
kernel's `fuse_file_info` and replies with it.

So once `pyfuse3.init` has handed its table of C handlers to libfuse, and before pyfuse3's loop
handles the first request, we put a small ctypes function in the `opendir` slot of libfuse's
copy of that table. It sets the two bits when the directory may be cached (the caller decides
per inode) and calls pyfuse3's own handler, which copies them into its reply.

This reaches into pyfuse3's module: its table and its session are static C variables, found
through the symbol table of pyfuse3's extension module (pyfuse3 built from source, as pip does,
keeps it). Everything is checked before anything is written: the symbols must be there, the
table's `opendir` slot must hold pyfuse3's own `opendir` handler, and libfuse's copy must be
found in the session, byte for byte. If anything differs (a stripped build, another pyfuse3 or
libfuse), nothing is changed and directories are listed through FUSE every time, as before:
slower, never wrong.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

import pyfuse3

log = logging.getLogger("snapfs.fs")

#: `struct fuse_lowlevel_ops` (libfuse 3): init, destroy, lookup, forget, getattr, setattr,
#: readlink, mknod, mkdir, unlink, rmdir, symlink, rename, link, open, read, write, flush,
#: release, fsync, opendir. libfuse 3 only ever appends to this table.
_OPENDIR_SLOT = 20
#: Bit-fields of `struct fuse_file_info` after `int flags`: writepage, direct_io, keep_cache,
#: flush, nonseekable, flock_release, cache_readdir, ... (libfuse 3 only ever appends).
_KEEP_CACHE = 1 << 2
_CACHE_READDIR = 1 << 6

#: Cython's names for pyfuse3's handler table, its libfuse session and its C `opendir` handler.
_TABLE_SYMBOL = "__pyx_v_7pyfuse3_fuse_ops"
_SESSION_SYMBOL = "__pyx_v_7pyfuse3_session"
_OPENDIR_SYMBOL = "__pyx_f_7pyfuse3_fuse_opendir"
_SYMBOLS = (_TABLE_SYMBOL, _SESSION_SYMBOL, _OPENDIR_SYMBOL)
#: How far into libfuse's `struct fuse_session` its copy of the table is looked for (it follows
#: a few fields: the mount point, the fd, ...).
_SESSION_SCAN = 512
_POINTER = ctypes.sizeof(ctypes.c_void_p)


class _FileInfoHead(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_int), ("bits", ctypes.c_uint)]


_OpendirC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(_FileInfoHead))
#: pyfuse3's handler expects the GIL held, as libfuse calls it from pyfuse3's loop: PYFUNCTYPE
#: calls it without releasing the GIL.
_OpendirPy = ctypes.PYFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(_FileInfoHead)
)


class _Hook:
    """The installed `opendir` wrapper and the decision it asks for (swapped per mount)."""

    def __init__(self, original: Callable) -> None:
        self.original = original
        self.may_cache: Callable[[int], bool] | None = None
        self.c_function = _OpendirC(self._opendir)  # kept alive: C holds its address

    def _opendir(self, req, ino, fi) -> None:
        try:
            decide = self.may_cache
            if decide is not None and decide(ino):
                fi.contents.bits |= _KEEP_CACHE | _CACHE_READDIR
        except Exception:  # a cache hint must never fail a request
            log.exception("deciding whether the kernel may cache the listing of inode %d", ino)
        self.original(req, ino, fi)


_hook: _Hook | None = None


def enable(may_cache: Callable[[int], bool]) -> bool:
    """Let the kernel keep the listings of directories for which `may_cache(inode)` is true.

    Call between `pyfuse3.init` and `pyfuse3.main`; a later mount in the same process calls it
    again. `may_cache` runs in pyfuse3's loop for every `opendir` and must not block. False if
    pyfuse3 could not be reached (see the module's docstring): listings are then always asked
    of the filesystem.
    """
    global _hook
    addresses = _addresses()
    if addresses is None:
        return False
    table, session, opendir = addresses
    slots = _OPENDIR_SLOT + 1
    if ctypes.c_void_p.from_address(table + _OPENDIR_SLOT * _POINTER).value != opendir:
        log.debug("pyfuse3's handler table is not laid out as expected: listings uncached")
        return False
    copy = _find_copy(session, ctypes.string_at(table, slots * _POINTER))
    if copy is None:
        log.debug("libfuse's copy of pyfuse3's handlers not found: listings uncached")
        return False
    if _hook is None:
        _hook = _Hook(_OpendirPy(opendir))
    _hook.may_cache = may_cache
    slot = ctypes.c_void_p.from_address(copy + _OPENDIR_SLOT * _POINTER)
    slot.value = ctypes.cast(_hook.c_function, ctypes.c_void_p).value
    return True


def _find_copy(session: int, table: bytes) -> int | None:
    """Where in the session libfuse copied the table (`se->op`), or None."""
    if not session:
        return None
    memory = ctypes.string_at(session, _SESSION_SCAN + len(table))
    for offset in range(0, _SESSION_SCAN, _POINTER):
        if memory[offset : offset + len(table)] == table:
            return session + offset
    return None


def _addresses() -> tuple[int, int, int] | None:
    """pyfuse3's handler table, its session pointer's value and its `opendir`, or None."""
    from elftools.elf.elffile import ELFFile  # only a mount needs it

    path = os.path.realpath(pyfuse3.__file__)
    try:
        with open(path, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            if symtab is None:
                log.debug("%s has no symbol table: listings uncached", path)
                return None
            found = {}
            for name in _SYMBOLS:
                symbols = symtab.get_symbol_by_name(name)
                if not symbols:
                    log.debug("%s has no symbol %s: listings uncached", path, name)
                    return None
                found[name] = symbols[0]["st_value"]
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s: listings uncached", path, exc)
        return None
    base = _load_address(path)
    if base is None:
        return None
    session = ctypes.c_void_p.from_address(base + found[_SESSION_SYMBOL]).value
    return base + found[_TABLE_SYMBOL], session or 0, base + found[_OPENDIR_SYMBOL]


def _load_address(path: str) -> int | None:
    """Where the shared object at `path` is mapped in this process (its offset-0 mapping)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[2] == "00000000" and fields[5].strip() == path:
                return int(fields[0].split("-")[0], 16)
    return None
