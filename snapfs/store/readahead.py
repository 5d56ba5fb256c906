"""Readahead: fetch, before a reader asks, what it will want next.

One mechanism for every reader that knows its future: the mount and the NBD server after a
sequential read (`SequentialWindow` names the chunks that come next), NBD_CMD_CACHE and the pxar
restore's walker (the chunks of a byte range), and S3Backend's fetch-ahead. A few background
threads do the work and each key is fetched at most once at a time (`SingleFlight`), so a hint
repeated while its fetch is queued or running costs nothing. A hint is never an error: a fetch
that fails is left for the reader who needs that chunk, which fetches it again and reports the
failure with the file it belongs to.

The first three decode chunks into the shared ChunkCache (`warm`), and their readers fetch for
themselves rather than wait behind a queued hint. S3's fetch-ahead works one layer down: for a
streaming reader (IndexStream.iter_range, `snapfs cat`), whose decoded cache may be too small to
hold anything ahead, it GETs raw chunks and parks them until read, and its readers join a GET
already started (S3Backend passes its own table of GETs as `flights`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from snapfs.errors import SnapfsError
from snapfs.linux.threads import set_os_thread_name
from snapfs.store.singleflight import SingleFlight

if TYPE_CHECKING:
    from snapfs.format.index import DynamicIndex, FixedIndex
    from snapfs.store.chunks import ChunkReader
    from snapfs.store.stream import IndexStream

__all__ = [
    "MAX_READAHEAD_BYTES",
    "ForwardReader",
    "Readahead",
    "SequentialWindow",
    "chunk_digests",
    "readahead_bytes",
]

#: The farthest ahead of a sequential reader chunks are decoded (but always two chunks at least).
MAX_READAHEAD_BYTES = 16 * 1024 * 1024


def readahead_bytes(stream: IndexStream) -> int:
    """How far ahead of a sequential reader of `stream` to decode: a quarter of its chunk cache,
    or the most for a source that fetches ahead (S3).

    Further ahead, chunks decoded early leave the cache before the reader gets to them (beside
    the reader's own chunk and whatever else is read): 16 MiB ahead in a 32 MiB cache, tar of
    the bench tree decoded 242 chunks for 145 distinct ones; 8 MiB ahead, 149. Over S3 the
    reader waits for round trips instead, and the GETs in flight are as many as the chunks
    named: 8 MiB ahead kept 0.68 of the 0 ms speed at 20 ms a round trip, 16 MiB 0.92.
    """
    if stream.chunks.fetches_ahead:
        return MAX_READAHEAD_BYTES
    return min(MAX_READAHEAD_BYTES, stream.chunks.cache.max_bytes // 4)


MIN_READAHEAD_CHUNKS = 2


class Readahead:
    """Background threads that fetch keys before they are asked for, each once at a time."""

    def __init__(self, workers: int, thread_name: str, flights: SingleFlight | None = None) -> None:
        """`flights`: the table the readers join, when they should wait for a fetch started here
        rather than start their own (S3Backend's GETs); by default one of its own, so that the
        readers fetch for themselves and only repeated hints are dropped."""
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=thread_name,
            initializer=set_os_thread_name,
            initargs=(thread_name,),
        )
        self._flights = flights if flights is not None else SingleFlight()

    def start(self, key: Hashable, fetch: Callable[[], object]) -> None:
        """Run `fetch` in the background unless a fetch of `key` is queued or running already."""
        with contextlib.suppress(RuntimeError):  # closed: a hint is dropped, never an error
            self._flights.start(key, fetch, self._pool)

    def warm(self, chunks: ChunkReader, digests: Iterable[bytes]) -> None:
        """Decode these chunks into `chunks`' cache, those not in it already."""
        cache = chunks.cache
        for digest in digests:
            if digest not in cache:
                self.start(digest, partial(chunks.read_chunk, digest))

    def warm_range(self, stream: IndexStream, start: int, end: int) -> None:
        """Decode the chunks that hold bytes [start, end) of `stream`."""
        if end <= start:
            return
        try:
            digests = chunk_digests(
                stream.index, stream.index.chunk_at(start), stream.index.chunk_at(end - 1)
            )
        except SnapfsError:
            return  # a range the index does not cover: the reader's own read reports it
        self.warm(stream.chunks, digests)

    def close(self, *, wait: bool = False) -> None:
        """Drop the fetches not started yet; with `wait`, also wait for the ones running."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


class SequentialWindow:
    """Which chunks to decode next for one sequential reader of one stream, each named once."""

    __slots__ = ("ahead", "_quiet")

    def __init__(self) -> None:
        self.ahead = -1  # the last chunk named by an earlier call
        #: Reads ending in [from, until) name nothing new: a reader of small files in archive
        #: order asks after every file, and most ask inside the same chunk (no lookups then).
        self._quiet = (0, 0)

    def after(self, stream: IndexStream, end: int, limit: int) -> list[bytes]:
        """The chunks after a read that ended at stream offset `end`, up to `readahead_bytes` (at
        least MIN_READAHEAD_CHUNKS chunks) further and never past `limit`, less those an earlier
        call named already."""
        if end >= limit or end <= 0:
            return []
        quiet_from, quiet_until = self._quiet
        if quiet_from <= end < quiet_until:
            return []
        index = stream.index
        current = index.chunk_at(end - 1)
        reach = readahead_bytes(stream)
        final = index.chunk_at(limit - 1)
        last = max(
            index.chunk_at(min(limit, end + reach) - 1),
            min(current + MIN_READAHEAD_CHUNKS, final),
        )
        # Never more than half the cache ahead: chunks decoded into a cache too small to keep
        # them are dropped before the reader gets there, and decoded again. A 4 MiB cache read
        # the bench image at 227 MB/s, decoding 562 chunks for its 256 (now 347 MB/s, each once).
        # Nor more than the cache holds beside the reader's own chunk: a chunk named ahead would
        # push that one out while it is still being read (one larger than the cache goes first).
        start, stop = index.chunk_range(current)
        cache_bytes = stream.chunks.cache.max_bytes
        horizon = min(stop + cache_bytes // 2, start + cache_bytes)
        while last > current and index.chunk_range(last)[1] > horizon:
            last -= 1
        first = current + 1
        if first <= self.ahead <= last:
            first = self.ahead + 1
        if first <= last:
            self.ahead = last
        if self.ahead == last:
            # Until `end` moves far enough for `last` to grow, later calls name nothing.
            until = limit
            if last < final:
                until = min(
                    index.chunk_range(last + 1)[0] - reach + 1,
                    index.chunk_range(max(0, last - MIN_READAHEAD_CHUNKS + 1))[0] + 1,
                )
            self._quiet = (end, until)
        return chunk_digests(index, first, last) if first <= last else []


def chunk_digests(index: FixedIndex | DynamicIndex, first: int, last: int) -> list[bytes]:
    """The digests of chunks first..last, in order, each once (a zero chunk repeats a lot)."""
    return list(dict.fromkeys(index.digest(i) for i in range(first, last + 1)))


class ForwardReader:
    """A ByteSource over an IndexStream read mostly front to back (a whole-archive walk): each
    read that goes on from where the last one ended names the chunks after it to a Readahead, so
    decoding runs ahead on the other cores.

    A pxar walk also jumps: to a directory's goodbye table at its end, then back to its first
    entry. Reading ahead of such a jump decoded chunks that were dropped from the cache before the
    walk got there, and were decoded again (145 distinct chunks, 200 decodes for the bench tree).
    """

    def __init__(self, stream: IndexStream, readahead: Readahead) -> None:
        self.stream = stream
        self.size = stream.size
        self._readahead = readahead
        self._window = SequentialWindow()
        self._end = 0  # where the last read ended

    def read_at(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if self._end <= offset <= self._end + readahead_bytes(self.stream):
            ahead = self._window.after(self.stream, end, self.size)
            if ahead:
                self._readahead.warm(self.stream.chunks, ahead)
        self._end = end
        return self.stream.read_at(offset, size)
