"""Directory listings read from an archive's index before the kernel asks for them. No FUSE here.

A walk (find, du, tar, a file manager's tree) lists directories in the order the archive stores
them, depth first. Once an archive is indexed, each listing not in memory is an SQLite query run
on a worker thread, so a walk of 1,345 directories cost the FUSE loop 1,345 thread round trips,
one after another, while `find` waited on each. An archive keeps a directory's entries right
after it, so the listings a walk asks for next are one range of offsets
(`ArchiveIndex.listings_after`): after a listing the index was asked for, the next
`WINDOW_ENTRIES` entries' listings go to the listing cache with it, and once the walk reads a
listing halfway through that window, one thread reads the next window while the FUSE loop
answers from memory, the way the kernel reads a file ahead. A listing not reached is read as
before: the readahead only ever fills the cache.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from snapfs.errors import SnapfsError

if TYPE_CHECKING:
    from snapfs.fs.listing import Listing, ListingCache
    from snapfs.index.archive import ArchiveIndex

log = logging.getLogger("snapfs.fs")

#: Entries a window of listings holds: about 15 ms of SQLite and Python on one core, 2 MiB of
#: entries; the listing cache holds 50,000.
WINDOW_ENTRIES = 4096


class ListingReadahead:
    """Windows of listings read ahead from archives' indexes into a ListingCache.

    Listings are cached under (archive id, directory offset), as `Archive` keys them.
    Thread-safe: `read_after` runs on the FUSE adapter's worker threads, `listed` on its loop.
    """

    def __init__(
        self, listings: ListingCache[tuple[int, int], Listing], window: int = WINDOW_ENTRIES
    ) -> None:
        self._listings = listings
        self.window = window
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._reading: set[int] = set()  # archives with a window being read
        #: archive id -> (the directory offset whose listing, once read, starts the next window;
        #: where that window starts).
        self._next: dict[int, tuple[int, int]] = {}
        #: For `.snapfs/stats`: listings the index was asked for one by one, and windows read.
        self.alone = 0
        self.windows = 0

    def read_after(self, archive_id: int, index: ArchiveIndex, directory: int) -> None:
        """The directory at offset `directory` was just read from `index` (blocking): read the
        window after it now, here, since a walk opens its subdirectories next."""
        with self._lock:
            self.alone += 1
            if self._closed or archive_id in self._reading:
                return  # a window is on its way: the listings it has not read are read alone
            self._reading.add(archive_id)
        self._read(archive_id, index, directory)

    def listed(self, archive_id: int, index: ArchiveIndex, directory: int) -> None:
        """A cached listing is read (never blocks): past the middle of the last window, the
        next is read on the readahead thread."""
        planned = self._next.get(archive_id)
        if planned is None or directory < planned[0]:
            return
        with self._lock:
            if self._closed or archive_id in self._reading or self._next.get(archive_id) != planned:
                return
            self._reading.add(archive_id)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="snapfs-listings")
            self._pool.submit(self._read, archive_id, index, planned[1])

    def summary(self) -> str:
        """One line for `.snapfs/stats`."""
        return (
            f"listings read from archive indexes: {self.alone} alone; "
            f"read-ahead windows: {self.windows}"
        )

    def close(self) -> None:
        """Read no more windows (the mount is ending); a window being read is let finish."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, archive_id: int, index: ArchiveIndex, after: int) -> None:
        planned = None
        try:
            got = index.listings_after(after, self.window)
            for offset, listing in got.listings:
                self._listings.put((archive_id, offset), listing)
            if got.read_to is not None and got.listings:
                planned = (got.listings[len(got.listings) // 2][0], got.read_to)
        except SnapfsError as exc:
            # The walk reads each listing itself and reports what is wrong with it there.
            log.debug("listings after offset %d not read ahead: %s", after, exc)
        finally:
            with self._lock:
                self._reading.discard(archive_id)
                self.windows += 1
                if planned is None:
                    self._next.pop(archive_id, None)
                else:
                    self._next[archive_id] = planned
