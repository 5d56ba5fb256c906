"""What an open file reads: a window on an IndexStream, or bytes already in memory. No FUSE here.

A read whose chunk is already decoded is answered without blocking, as a memoryview of the cached
chunk (no copy); `read(block=False)` says None when a chunk must be fetched first, so the caller
can do that in a worker thread. After a sequential read, `readahead` names the chunks to decode
next.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

from snapfs.store.readahead import Readahead, SequentialWindow
from snapfs.store.stream import IndexStream

#: (inode, offset, bytes): bytes of a file, at that offset in it.
Piece = tuple[int, int, memoryview]
#: hand(pieces): give pieces of files to whoever caches them; for each, False if it cannot take
#: that file yet (the kernel takes a file only once it knows its inode).
Hand = Callable[[list[Piece]], list[bool]]
#: Work for another thread: hand over the files stored beside one just read, or the rest of a
#: chunk a read decoded.
FilesJob = Callable[[Hand], None]

#: The kernel's page cache takes whole pages: a partial one is kept only at the file's end.
PAGE = mmap.PAGESIZE

SEQUENTIAL_SLACK = 4 * 1024 * 1024
#: Files whose contents start at most this far after the last one read are read in archive order
#: (tar, cp -r, rsync of a pxar tree): the headers and goodbye tables of a v1 archive lie between.
SCAN_GAP = 1024 * 1024


class ArchiveScan:
    """The files of one archive stream being read one after another in archive order.

    Per-file readahead stops at the file's end, which for small files is no readahead at all; a
    reader that goes through the files in the order they are stored gets the stream's next
    chunks decoded ahead instead, as a sequential reader of one big file does.
    """

    __slots__ = ("last_end", "window", "in_order")

    def __init__(self) -> None:
        self.last_end = -1  # stream offset where the last file read ended
        self.window = SequentialWindow()
        #: The last file read came just after the one before it in the archive.
        self.in_order = False

    def after(self, content: Content, end: int) -> list[bytes] | None:
        """The chunks to decode after `content` was read up to stream offset `end`, if the files
        are being read in archive order; else None."""
        self.in_order = in_order = 0 <= content.base - self.last_end <= SCAN_GAP
        self.last_end = max(self.last_end, end) if in_order else end
        if not in_order:
            return None
        return self.window.after(content.stream, end, content.stream.size)


class Content:
    """Bytes [base, base+size) of an IndexStream, read chunk by chunk with no copy when possible.

    Holds no chunk between reads: a mount keeps the contents of recently read files (it reads
    by inode, snapfs.fs.inode_reads), and a chunk held by each would escape the cache's bound.
    After a sequential read it names the chunks to decode next (readahead).
    """

    __slots__ = ("stream", "base", "size", "name", "scan", "beside", "_next", "_window")

    def __init__(
        self,
        stream: IndexStream,
        base: int,
        size: int,
        name: str,
        scan: ArchiveScan | None = None,
        beside: Callable[[Content], FilesJob | None] | None = None,
    ) -> None:
        self.stream = stream
        self.base = base
        self.size = size
        self.name = name
        self.scan = scan  # shared by the files of one archive
        self.beside = beside  # the archive's files_beside (a pxar archive)
        self._next = 0  # where a sequential reader continues
        self._window = SequentialWindow()

    def read(self, offset: int, size: int, block: bool = True) -> memoryview | bytes | None:
        """File bytes at [offset, offset+size); None if not block and a chunk is not decoded yet."""
        if offset >= self.size or size <= 0:
            return b""
        data = self.stream.view_at(self.base + offset, min(size, self.size - offset), block=block)
        if data is not None:
            self._next = offset + size
        return data

    def readahead(self, offset: int, size: int) -> list[bytes]:
        """Digests to decode ahead of a sequential reader that just read [offset, offset+size)."""
        end = self.base + min(offset + size, self.size)
        if self.scan is not None:
            ahead = self.scan.after(self, end)
            if ahead is not None:
                return ahead
        limit = self.base + self.size  # never past this file (or partition) into the next
        return self._window.after(self.stream, end, limit)

    def read_ahead(self, pool: Readahead, offset: int, size: int) -> None:
        """After a sequential read of [offset, offset+size): have `pool` decode the chunks a
        reader wants next, and an S3 source fetch them all at once (not two at a time)."""
        digests = self.readahead(offset, size)
        if digests:
            chunks = self.stream.chunks
            chunks.prefetch(digests)
            pool.warm(chunks, digests)

    def files_beside(self) -> FilesJob | None:
        """Once this file was read from its start: the job that hands over other files stored
        in the chunk it starts in, if there is one to do now (Archive.files_beside)."""
        return None if self.beside is None or not self.size else self.beside(self)

    def rest_of_chunk(self, inode: int, offset: int, size: int) -> FilesJob | None:
        """After a read of [offset, offset+size) that decoded its chunk: the job that hands the
        rest of this file's bytes in that chunk to the kernel, as file `inode`'s pages, if the
        chunk is still decoded. A random reader (a VM's disk, a database file) comes back near
        where it read; each later read there is then answered from the page cache instead of
        decoding the 4 MiB chunk again once it has left the chunk cache."""
        chunks = self.stream.index
        i = chunks.chunk_at(self.base + offset)
        data = self.stream.chunks.cache.peek(chunks.digest(i))
        if data is None:
            return None
        start, stop = chunks.chunk_range(i)
        # In file offsets: the chunk's share of the file, in whole pages (or up to its end).
        first = -(-max(start - self.base, 0) // PAGE) * PAGE
        last = min(stop - self.base, self.size)
        if last < self.size:
            last -= last % PAGE
        read_end = offset + size
        pieces = [(a, b) for a, b in ((first, offset), (read_end, last)) if a < b]
        if not pieces:
            return None
        skip = self.base - start  # where file offset 0 lies in the chunk

        def hand_over(hand: Hand) -> None:
            view = memoryview(data)  # the read's own pages are the kernel's already
            hand([(inode, a, view[skip + a : skip + b]) for a, b in pieces])

        return hand_over

    def is_sequential(self, offset: int) -> bool:
        # The kernel's readahead keeps several requests in flight, so they may arrive a little
        # out of order: near the last read's end still counts as sequential.
        return abs(offset - self._next) <= SEQUENTIAL_SLACK


class BytesContent:
    """Content already in memory (a decoded blob or the manifest)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def read(self, offset: int, size: int, block: bool = True) -> memoryview:
        return self.data[offset : offset + size]

    def read_ahead(self, pool: Readahead, offset: int, size: int) -> None:
        """Nothing to decode: the bytes are in memory."""
