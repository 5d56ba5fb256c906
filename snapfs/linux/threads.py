"""OS-level thread names, so `top -H`, `ps -L` and /proc show which pool a thread belongs to.

Python's `threading` names exist only inside Python; the kernel shows every thread as the
process's name until it is told otherwise (trio names its own threads the same way).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

_KERNEL_NAME_MAX = 15  # TASK_COMM_LEN - 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once (a pool's threads start at once, not after a dlopen each)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.pthread_setname_np.argtypes = [ctypes.c_ulong, ctypes.c_char_p]
        libc.pthread_self.restype = ctypes.c_ulong
        return libc
    return None


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for the kernel (truncated to 15 bytes); a no-op where the C
    library lacks pthread_setname_np."""
    libc = _libc()
    if libc is not None:
        libc.pthread_setname_np(libc.pthread_self(), name.encode()[:_KERNEL_NAME_MAX])
