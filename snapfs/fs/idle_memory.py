"""Free memory given back to the system once the mount goes idle.

A burst of work through a mount (a first `find` that indexes an archive, a `tar`, a VM reading
its disk) decodes hundreds of chunks of up to 4 MiB on several threads. When they are freed, the
C library keeps their pages for the next allocation instead of returning them: after a first
`find` + `stat` of the bench tree the mount held 188 MiB, of which 64 MiB were free heap, and
145 MiB once the heap was trimmed. Trimming during the burst costs the reader time and lowers
the peak little (tried: a trim every 50 or 200 ms made that `find` up to 0.3 s slower); trimming
once the work has stopped costs nothing anyone waits for, and the host has the memory until the
next burst.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from snapfs.linux.memory import return_free_memory

#: Seconds without new work after which the mount counts as idle.
IDLE_SECONDS = 2.0


class IdleMemoryReturn:
    """Returns free heap memory to the system once per burst of work, when the burst is over.

    `work_done` is any count that grows while the mount works (the model's `work_done`); the
    memory is returned after IDLE_SECONDS in which it did not grow, and not again until it has.
    """

    def __init__(
        self,
        work_done: Callable[[], int],
        release: Callable[[], int] = return_free_memory,
        idle_seconds: float = IDLE_SECONDS,
        in_thread: Callable[[Callable[[], int]], Awaitable[int]] = trio.to_thread.run_sync,
    ) -> None:
        """`in_thread` runs `release` off the loop: the trim walks the whole heap
        (milliseconds), and the loop answers on meanwhile."""
        self._work_done = work_done
        self._release = release
        self._in_thread = in_thread
        self._idle_seconds = idle_seconds
        #: Bursts of work after which memory was returned, and how much (bytes) in all.
        self.bursts = 0
        self.returned = 0

    async def run(self) -> None:
        """Watch until cancelled (the mount's main loop ends)."""
        seen = released_at = self._work_done()
        while True:
            await trio.sleep(self._idle_seconds)
            now = self._work_done()
            if now == seen and now != released_at:
                self.returned += await self._in_thread(self._release)
                self.bursts += 1
                released_at = now
            seen = now

    def summary(self) -> str:
        return (
            f"memory returned to the system when idle: {self.returned / 2**20:.1f} MiB "
            f"after {self.bursts} bursts of work"
        )
