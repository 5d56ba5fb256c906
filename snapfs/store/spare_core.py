"""A spare core for a chunk decode that runs alone, for readers that wait on each chunk.

A reader that waits on one chunk at a time (random reads of a mounted image or an NBD export,
`cat` of one file of a cold archive) decodes on one core while the other idles: fetch, CRC,
zstd and SHA-256 one after another. When no other decode is running in the process, `SpareCore`
lends that decode a helper thread, so the CRC and the digest run beside the decompression
(`format.blob.decode_chunk(helper=...)`). When several decodes run (readahead) the cores are
busy already and each decodes alone, as before: handing work over would only add to it. The
mount and NBD hand their chunk readers the one `SPARE_CORE`; restore and verify, which keep
every core busy by themselves, do not.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor


class SpareCore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0  # a forked child has the pool but not its thread: it makes its own

    @contextlib.contextmanager
    def lent(self) -> Iterator[Executor | None]:
        """For the length of one decode: the helper if no other decode runs, else None."""
        with self._lock:
            self._running += 1
            alone = self._running == 1
            if alone and (self._pool is None or self._pid != os.getpid()):
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="snapfs-decode-helper")
                self._pid = os.getpid()
            pool = self._pool if alone else None
        try:
            yield pool
        finally:
            with self._lock:
                self._running -= 1


#: One per process: the point is the cores of the machine, not of one reader.
SPARE_CORE = SpareCore()
