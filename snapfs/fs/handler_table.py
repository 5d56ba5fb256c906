"""libfuse's copy of pyfuse3's table of C handlers, where a mount slips in what pyfuse3 lacks.

pyfuse3 (3.5) cannot set every bit the kernel understands: it never asks the kernel to keep a
directory's listing (snapfs.fs.listing_cache), and its `read` handler passes on the file handle
only, which is nothing once the kernel stops sending `open` (snapfs.fs.inode_reads). Both are
mended by putting a small ctypes function in one slot of the table of handlers libfuse calls,
after `pyfuse3.init` has handed the table to libfuse and before pyfuse3's loop handles the first
request. The function adjusts the request's `struct fuse_file_info` and calls pyfuse3's own
handler, which does the rest as usual.

This reaches into pyfuse3's module: its table and its session are static C variables, found
through the symbol table of pyfuse3's extension module (pyfuse3 built from source, as pip does,
keeps it). Everything is checked before anything is written: the symbols must be there, the
slot must hold pyfuse3's own handler, and libfuse's copy of the table must be found in the
session, byte for byte. If anything differs (a stripped build, another pyfuse3 or libfuse),
nothing is changed and the caller goes on without the hook: slower, never wrong.
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
READ_SLOT = 15
OPENDIR_SLOT = 20

#: Cython's names for pyfuse3's handler table, its libfuse session and the C handlers we wrap.
_TABLE_SYMBOL = "__pyx_v_7pyfuse3_fuse_ops"
_SESSION_SYMBOL = "__pyx_v_7pyfuse3_session"
HANDLER_SYMBOLS = {
    READ_SLOT: "__pyx_f_7pyfuse3_fuse_read",
    OPENDIR_SLOT: "__pyx_f_7pyfuse3_fuse_opendir",
}
#: How far into libfuse's `struct fuse_session` its copy of the table is looked for (it follows
#: a few fields: the mount point, the fd, ...).
_SESSION_SCAN = 512
_POINTER = ctypes.sizeof(ctypes.c_void_p)
_TABLE_SLOTS = max(HANDLER_SYMBOLS) + 1


class FileInfo(ctypes.Structure):
    """The head of libfuse 3's `struct fuse_file_info`, up to the file handle.

    After `int flags` come one word of bit-fields (writepage, direct_io, keep_cache, flush,
    nonseekable, flock_release, cache_readdir, ...) and one word of padding; libfuse 3 only
    ever appends to them.
    """

    _fields_ = [
        ("flags", ctypes.c_int),
        ("bits", ctypes.c_uint),
        ("padding", ctypes.c_uint),
        ("fh", ctypes.c_uint64),
    ]


KEEP_CACHE = 1 << 2
CACHE_READDIR = 1 << 6


class HandlerTable:
    """libfuse's copy of pyfuse3's handlers in the session being mounted."""

    def __init__(self, copy: int, handlers: dict[int, int]) -> None:
        self._copy = copy
        self._handlers = handlers  # slot -> address of pyfuse3's own handler

    @classmethod
    def find(cls) -> HandlerTable | None:
        """The table of the session `pyfuse3.init` opened, or None (see the module docstring).

        Call between `pyfuse3.init` and `pyfuse3.main`; before `init` (or after `close`) there
        is no session and the answer is None.
        """
        addresses = _addresses()
        if addresses is None:
            return None
        table, session, handlers = addresses
        for slot, handler in handlers.items():
            if ctypes.c_void_p.from_address(table + slot * _POINTER).value != handler:
                log.debug("pyfuse3's handler table is not laid out as expected")
                return None
        copy = _find_copy(session, ctypes.string_at(table, _TABLE_SLOTS * _POINTER))
        if copy is None:
            log.debug("libfuse's copy of pyfuse3's handlers not found")
            return None
        return cls(copy, handlers)

    def wrap(self, slot: int, argtypes: tuple, handler: Callable[..., None]) -> None:
        """Have libfuse call `handler(original, *args)` for `slot`, where `original` calls
        pyfuse3's own handler with the (possibly adjusted) arguments.

        `argtypes` are the C handler's arguments. A later mount in the same process wraps the
        slot of its own table again, with its own `handler`.
        """
        wrapper = _wrappers.get(slot)
        if wrapper is None:
            wrapper = _wrappers[slot] = _Wrapper(self._handlers[slot], argtypes)
        wrapper.handler = handler
        place = ctypes.c_void_p.from_address(self._copy + slot * _POINTER)
        place.value = ctypes.cast(wrapper.c_function, ctypes.c_void_p).value


class _Wrapper:
    """A ctypes function in a slot of the table, and pyfuse3's handler behind it."""

    def __init__(self, original: int, argtypes: tuple) -> None:
        # pyfuse3's handler expects the GIL held, as libfuse calls it from pyfuse3's loop:
        # PYFUNCTYPE calls it without releasing the GIL.
        self.original = ctypes.PYFUNCTYPE(None, *argtypes)(original)
        self.handler: Callable[..., None] | None = None
        # kept alive for the process: libfuse holds its address
        self.c_function = ctypes.CFUNCTYPE(None, *argtypes)(self._call)

    def _call(self, *args) -> None:
        self.handler(self.original, *args)  # type: ignore[misc]  # set before installed


#: Slot -> its wrapper, one per process (pyfuse3's handlers are the same for every mount).
_wrappers: dict[int, _Wrapper] = {}


def _find_copy(session: int, table: bytes) -> int | None:
    """Where in the session libfuse copied the table (`se->op`), or None."""
    if not session:
        return None
    memory = ctypes.string_at(session, _SESSION_SCAN + len(table))
    for offset in range(0, _SESSION_SCAN, _POINTER):
        if memory[offset : offset + len(table)] == table:
            return session + offset
    return None


def _addresses() -> tuple[int, int, dict[int, int]] | None:
    """pyfuse3's handler table, its session pointer's value and its handlers by slot, or None."""
    from elftools.elf.elffile import ELFFile  # only a mount needs it

    path = os.path.realpath(pyfuse3.__file__)
    names = (_TABLE_SYMBOL, _SESSION_SYMBOL, *HANDLER_SYMBOLS.values())
    try:
        with open(path, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            if symtab is None:
                log.debug("%s has no symbol table", path)
                return None
            found = {}
            for name in names:
                symbols = symtab.get_symbol_by_name(name)
                if not symbols:
                    log.debug("%s has no symbol %s", path, name)
                    return None
                found[name] = symbols[0]["st_value"]
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None
    base = _load_address(path)
    if base is None:
        return None
    session = ctypes.c_void_p.from_address(base + found[_SESSION_SYMBOL]).value
    handlers = {slot: base + found[name] for slot, name in HANDLER_SYMBOLS.items()}
    return base + found[_TABLE_SYMBOL], session or 0, handlers


def _load_address(path: str) -> int | None:
    """Where the shared object at `path` is mapped in this process (its offset-0 mapping)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[2] == "00000000" and fields[5].strip() == path:
                return int(fields[0].split("-")[0], 16)
    return None
