"""ChunkCache: decoded chunks in memory, bounded by bytes, least recently used out first.

Keyed by chunk digest, so every reader in the process shares it: two snapshots that share chunks
share cache. lru-dict keeps the recency order in C; this class adds the byte bound (lru-dict bounds
entries, and chunks range from a few KiB to 4 MiB) and a lock for the compound operations.
"""

from __future__ import annotations

import threading

from lru import LRU

#: Decoded chunks kept by default: the chunk a reader is in and the readahead beyond it (a quarter
#: of the cache, snapfs.store.readahead), with room for other readers. Warm data is the kernel's
#: page cache's to keep, not ours: 16 MiB reads the bench image and tars its tree as fast as
#: 32 MiB did, with 15-30 MiB less peak RSS (and 32 MiB as fast as 64 MiB, with 36 MiB less).
DEFAULT_CACHE_SIZE = 16 * 1024 * 1024
#: ... from a source that fetches ahead (S3): a reader there names 16 MiB of chunks ahead, to
#: hide the round trips, and they must fit in half the cache (snapfs.store.readahead).
FETCHING_AHEAD_CACHE_SIZE = 32 * 1024 * 1024


class ChunkCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        if max_bytes < 0:
            raise ValueError("cache size must not be negative")
        self.max_bytes = max_bytes
        self._entries: LRU = LRU(1 << 30)  # entry count is not the bound; bytes are
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            data = self._entries.get(digest)
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
            return data

    def peek(self, digest: bytes) -> bytes | None:
        """`get` for a look that is not a read (not counted as a hit or a miss)."""
        with self._lock:
            return self._entries.get(digest)

    def put(self, digest: bytes, data: bytes) -> None:
        """Keep `data`, dropping the least recently used beyond `max_bytes`. A chunk larger than
        the whole cache is kept alone: its reader reads it piece by piece (a pxar walk, 256 KiB at
        a time), and each piece would decode it again (a 4 MiB cache indexed the bench tree, whose
        chunks reach 16 MiB, in 21 s instead of 2.4). A cache of 0 keeps nothing."""
        if self.max_bytes == 0:
            return
        with self._lock:
            old = self._entries.get(digest)
            if old is not None:
                self._bytes -= len(old)
            self._entries[digest] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                # Not popitem(): lru-dict 1.4's popitem keeps a reference to the value it
                # returns, so every evicted chunk would stay in memory for good.
                key, evicted = self._entries.peek_last_item()
                del self._entries[key]
                self._bytes -= len(evicted)

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            return self._entries.has_key(digest)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
