"""IndexStream: a fixed or dynamic index read as one random-access byte stream.

This is what a disk image is, and what a pxar archive is read through. `read_at` serves random
access (FUSE reads, pxar lookups); `iter_range` serves whole-stream reads (cat, restore, verify)
and keeps a few chunks decoding ahead of the consumer in worker threads, since zstd, AES-GCM and
SHA-256 release the GIL and a lone reader would otherwise leave the second core idle.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from snapfs.errors import CorruptDataError
from snapfs.format.index import DynamicIndex, FixedIndex
from snapfs.store.chunks import ChunkReader
from snapfs.store.pipeline import ordered

DEFAULT_WORKERS = 2
DEFAULT_WINDOW = 4
PREFETCH_CHUNKS = 16  # how far ahead a backend that fetches ahead (S3) is told to go


class IndexStream:
    """A ByteSource over the chunks an index lists."""

    def __init__(self, index: FixedIndex | DynamicIndex, chunks: ChunkReader, name: str) -> None:
        self.index = index
        self.chunks = chunks
        self.name = name
        self.size = index.size

    def chunk(self, i: int, *, block: bool = True) -> tuple[int, int, memoryview] | None:
        """Chunk i as (start, stop, decoded bytes); with block=False only if already decoded.

        The non-blocking form lets an event loop (FUSE, NBD) answer from the cache at once and
        send only misses to a worker thread.
        """
        start, stop = self.index.chunk_range(i)
        digest = self.index.digest(i)
        if block:
            data = self.chunks.read_chunk(digest)
        else:
            data = self.chunks.cache.get(digest)
            if data is None:
                return None
        self._check_length(i, start, stop, data)
        return start, stop, memoryview(data)

    def view_at(self, offset: int, size: int, *, block: bool = True) -> memoryview | bytes | None:
        """Like read_at, without a copy when the range lies in one chunk; None if not block and
        a chunk is not decoded yet."""
        if offset < 0 or size < 0:
            raise ValueError(f"{self.name}: negative offset or size ({offset}, {size})")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        parts = []
        i = self.index.chunk_at(offset)
        pos = offset
        while pos < end:
            found = self.chunk(i, block=block)
            if found is None:
                return None
            start, stop, data = found
            parts.append(data[pos - start : min(end, stop) - start])
            pos = stop
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_at(self, offset: int, size: int) -> bytes:
        data = self.view_at(offset, size)
        return data if isinstance(data, bytes) else data.tobytes()

    def iter_range(
        self,
        offset: int = 0,
        end: int | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        window: int = DEFAULT_WINDOW,
    ) -> Iterator[memoryview]:
        """The bytes of [offset, end) in order, as slices of decoded chunks."""
        end = self.size if end is None else min(end, self.size)
        if offset >= end:
            return
        first = self.index.chunk_at(offset)
        last = self.index.chunk_at(end - 1)
        for i, future in ordered(
            self.hinted(range(first, last + 1)),
            self.chunk_data,
            workers=workers,
            window=window,
            thread_name="snapfs-decode",
        ):
            data = future.result()
            start, stop = self.index.chunk_range(i)
            yield memoryview(data)[max(offset, start) - start : min(end, stop) - start]

    def chunk_data(self, i: int) -> bytes:
        """Chunk i's decoded bytes, checked against the length the index gives it."""
        data = self.chunks.read_chunk(self.index.digest(i))
        self._check_length(i, *self.index.chunk_range(i), data)
        return data

    def hinted(self, chunks: Sequence[int]) -> Iterator[int]:
        """The chunk numbers `chunks` in order; on the way, a backend that fetches ahead (S3) is
        told which chunks come next, PREFETCH_CHUNKS at a time, half of them before they are due."""
        hinted = 0  # chunks[:hinted] were already named to the backend's prefetch
        for pos, i in enumerate(chunks):
            if hinted < len(chunks) and hinted < pos + PREFETCH_CHUNKS // 2:
                stop = min(len(chunks), pos + PREFETCH_CHUNKS)
                self.chunks.prefetch([self.index.digest(j) for j in chunks[hinted:stop]])
                hinted = stop
            yield i

    def _check_length(self, i: int, start: int, stop: int, data: bytes) -> None:
        if len(data) != stop - start:
            raise CorruptDataError(
                f"{self.name}: chunk {self.index.digest(i).hex()} at offset {start} decodes to "
                f"{len(data)} bytes, the index says {stop - start}"
            )
