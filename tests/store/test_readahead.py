"""Readahead: which chunks a sequential reader gets decoded ahead, and the threads that do it."""

from __future__ import annotations

import random
import threading
import time

from support.flights import CountingCalls

from snapfs.errors import MissingChunkError
from snapfs.format.blob import encode_chunk
from snapfs.format.index import build_dynamic_index, build_fixed_index, parse_index
from snapfs.store.backend import DirListing
from snapfs.store.cache import ChunkCache
from snapfs.store.chunks import ChunkReader
from snapfs.store.readahead import (
    ForwardReader,
    Readahead,
    SequentialWindow,
    chunk_digests,
    readahead_bytes,
)
from snapfs.store.singleflight import SingleFlight
from snapfs.store.stream import IndexStream

MiB = 1024 * 1024


class ChunkStore:
    """A backend of encoded chunks that counts fetches and can hold them at a gate."""

    name = "memory://readahead"

    def __init__(self, contents: list[bytes]) -> None:
        self.blobs = dict(encode_chunk(c, None, compress=False) for c in contents)
        self.fetched: list[bytes] = []
        self.fetching = threading.Event()  # set at the first fetch
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def list_dir(self, path: str) -> DirListing:
        return DirListing()

    def read_file(self, path: str) -> bytes:
        raise MissingChunkError(path)

    def read_chunk(self, digest: bytes) -> bytes:
        self.gate.wait(timeout=30)
        with self.lock:
            self.fetched.append(digest)
        self.fetching.set()
        if digest not in self.blobs:
            raise MissingChunkError(f"chunk {digest.hex()} is missing")
        return self.blobs[digest]


def image(
    chunk_count: int,
    chunk_size: int = 4 * MiB,
    zero_at: tuple[int, ...] = (),
    cache_size: int = 1 << 30,
):
    """An IndexStream over chunks 0..n-1 (each its own bytes; those in zero_at all zeros)."""
    contents = [
        bytes(chunk_size) if i in zero_at else (i + 1).to_bytes(4, "big") * (chunk_size // 4)
        for i in range(chunk_count)
    ]
    store = ChunkStore(contents)
    digests = [encode_chunk(c, None, compress=False)[0] for c in contents]
    index = parse_index(
        build_fixed_index(digests, chunk_count * chunk_size, chunk_size), name="image.fidx"
    )
    return IndexStream(index, ChunkReader(store, None, ChunkCache(cache_size)), "image"), store


def test_a_sequential_reader_gets_the_next_16_mib_each_chunk_once() -> None:
    stream, _ = image(12)
    index, size = stream.index, stream.size
    window = SequentialWindow()
    assert readahead_bytes(stream) == 16 * MiB  # the cache is large
    ahead = readahead_bytes(stream) // (4 * MiB)  # chunks of 4 MiB in the window
    # A read in chunk 0 names the chunks after it, up to 16 MiB past the read's end.
    assert window.after(stream, 4096, size) == [index.digest(i) for i in range(1, ahead + 1)]
    # Reading on: only what the window newly covers.
    assert window.after(stream, 4 * MiB + 4096, size) == [index.digest(ahead + 1)]
    assert window.after(stream, 4 * MiB + 8192, size) == []  # nothing new yet
    # Never past the limit (the end of a file or partition inside the stream).
    assert window.after(stream, 10 * 4 * MiB, size) == [index.digest(10), index.digest(11)]
    assert window.after(stream, size, size) == []
    assert window.after(stream, 0, size) == []


def test_the_window_is_a_quarter_of_the_chunk_cache() -> None:
    """Chunks decoded further ahead would leave a small cache before the reader gets there."""
    stream, _ = image(12, cache_size=32 * MiB)
    assert readahead_bytes(stream) == 8 * MiB
    index = stream.index
    assert SequentialWindow().after(stream, 4096, stream.size) == [index.digest(1), index.digest(2)]


def test_no_more_is_named_than_half_the_cache_holds() -> None:
    """Chunks named beyond what the cache keeps beside the reader's own would leave it before
    the reader gets there, and be decoded twice."""
    stream, _ = image(12, cache_size=8 * MiB)
    assert SequentialWindow().after(stream, 4096, stream.size) == [stream.index.digest(1)]
    stream, _ = image(12, cache_size=4 * MiB)
    assert SequentialWindow().after(stream, 4096, stream.size) == []


def test_nothing_is_named_that_would_push_out_the_chunk_being_read() -> None:
    """A reader in a chunk larger than the cache (kept alone while it is read) gets no chunk
    named ahead, however small: decoded, it would push the reader's own out, to be decoded
    again for the next piece read. Beside a chunk of half the cache, the other half is named."""
    sizes = [6 * MiB, MiB, 2 * MiB, MiB, MiB]
    contents = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    digests = [encode_chunk(c, None, compress=False)[0] for c in contents]
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    index = parse_index(build_dynamic_index(list(zip(ends, digests, strict=True))), name="a.didx")
    cache = ChunkCache(4 * MiB)
    stream = IndexStream(index, ChunkReader(ChunkStore(contents), None, cache), "archive")
    assert SequentialWindow().after(stream, MiB, stream.size) == []  # in the 6 MiB chunk
    assert SequentialWindow().after(stream, ends[1] + 4096, stream.size) == digests[3:]


def test_a_walk_through_a_small_cache_fetches_each_chunk_once() -> None:
    """A ForwardReader read front to back, a piece at a time, with background decoders: through a
    cache that holds two chunks (one named ahead) and one smaller than a chunk (none named, the
    chunk being read kept alone), every chunk is fetched once."""
    for cache_size in (8 * MiB, 2 * MiB):
        stream, store = image(10, cache_size=cache_size)
        expected = b"".join((i + 1).to_bytes(4, "big") * (MiB) for i in range(10))
        readahead = Readahead(2, "test-readahead")
        try:
            reader = ForwardReader(stream, readahead)
            got = b"".join(
                reader.read_at(pos, 256 * 1024) for pos in range(0, stream.size, 256 * 1024)
            )
        finally:
            readahead.close(wait=True)
        assert got == expected
        assert sorted(store.fetched) == sorted(stream.index.digest(i) for i in range(10))


class FetchingAheadStore(ChunkStore):
    """A backend that fetches named chunks ahead, as S3 does."""

    def prefetch(self, digests) -> None:
        self.named = list(digests)


def test_a_source_that_fetches_ahead_gets_the_whole_window() -> None:
    """Over S3 a round trip per chunk is what the reader waits for: however small the cache,
    16 MiB of chunks are named (and fetched at once)."""
    plain, _ = image(12, cache_size=32 * MiB)
    stream = IndexStream(
        plain.index, ChunkReader(FetchingAheadStore([]), None, ChunkCache(32 * MiB)), "image"
    )
    assert stream.chunks.fetches_ahead and readahead_bytes(stream) == 16 * MiB
    ahead = SequentialWindow().after(stream, 4096, stream.size)
    assert ahead == [stream.index.digest(i) for i in range(1, 5)]


def test_after_a_jump_back_the_window_is_named_again() -> None:
    stream, _ = image(12)
    index, size = stream.index, stream.size
    window = SequentialWindow()
    window.after(stream, 8 * 4 * MiB, size)  # named chunks up to 11
    assert window.after(stream, 4096, size) == [index.digest(i) for i in (1, 2, 3, 4)]


def test_at_least_two_chunks_ahead_when_chunks_are_larger_than_the_window() -> None:
    stream, _ = image(5, chunk_size=16 * MiB)
    window = SequentialWindow()
    got = window.after(stream, 4096, stream.size)
    assert got == [stream.index.digest(1), stream.index.digest(2)]
    # ... but never past the limit: the last byte in chunk 1.
    window = SequentialWindow()
    assert window.after(stream, 4096, 16 * MiB + 1) == [stream.index.digest(1)]


def test_a_repeated_chunk_is_named_once_in_order() -> None:
    stream, _ = image(6, zero_at=(1, 3, 4))
    index = stream.index
    assert chunk_digests(index, 0, 5) == [
        index.digest(0),
        index.digest(1),
        index.digest(2),
        index.digest(5),
    ]


def test_warm_decodes_into_the_cache_and_skips_what_is_there_or_under_way() -> None:
    stream, store = image(6)
    chunks = stream.chunks
    chunks.read_chunk(stream.index.digest(0))
    store.gate.clear()  # hold the background fetches until every hint is given
    readahead = Readahead(2, "test-readahead")
    try:
        wanted = chunk_digests(stream.index, 0, 5)
        readahead.warm(chunks, wanted)
        readahead.warm(chunks, wanted)  # again while they are queued or running: nothing new
        store.gate.set()
        for digest in wanted:
            assert chunks.read_chunk(digest) == stream.read_at(
                stream.index.chunk_range(wanted.index(digest))[0], 4 * MiB
            )
    finally:
        readahead.close(wait=True)
    assert sorted(store.fetched) == sorted(wanted)  # each chunk fetched once, chunk 0 not again


def test_warm_range_decodes_the_chunks_holding_the_bytes() -> None:
    stream, store = image(6)
    readahead = Readahead(2, "test-readahead")
    readahead.warm_range(stream, 4 * MiB - 1, 8 * MiB + 1)  # the last byte of 0 to the first of 2
    readahead.warm_range(stream, 5, 5)  # empty: nothing
    readahead.warm_range(stream, 100 * MiB, 101 * MiB)  # past the end: left to the reader
    wanted = [stream.index.digest(i) for i in range(3)]
    deadline = time.monotonic() + 30
    while not all(d in stream.chunks.cache for d in wanted) and time.monotonic() < deadline:
        time.sleep(0.001)
    readahead.close(wait=True)
    assert sorted(store.fetched) == sorted(wanted)


def test_a_failed_fetch_is_silent_and_a_closed_readahead_drops_hints() -> None:
    stream, store = image(3)
    missing = bytes(32)
    readahead = Readahead(1, "test-readahead")
    readahead.warm(stream.chunks, [missing])  # the reader who needs it reports it, not the hint
    assert store.fetching.wait(30)  # started (close drops the hints not started yet)
    readahead.close(wait=True)
    readahead.warm(stream.chunks, [stream.index.digest(0)])  # closed: dropped, not an error
    assert store.fetched == [missing]


def test_readers_join_what_a_shared_table_started() -> None:
    """S3Backend's way: its readers wait for a fetch-ahead GET instead of issuing their own."""
    flights: SingleFlight[str, str] = SingleFlight()
    flights._calls = lookups = CountingCalls()
    calls: list[str] = []

    def fetch() -> str:
        calls.append("ahead")
        lookups.wait_for(2)  # the hint's lookup, then the reader's: it has joined
        return "fetched ahead"

    readahead = Readahead(1, "test-readahead", flights=flights)
    readahead.start("k", fetch)
    assert flights.run("k", lambda: "own") == "fetched ahead"
    readahead.close(wait=True)
    assert calls == ["ahead"]


class RecordingReadahead:
    """What a ForwardReader names to its Readahead, in order."""

    def __init__(self) -> None:
        self.named: list[list[bytes]] = []

    def warm(self, chunks: ChunkReader, digests: list[bytes]) -> None:
        self.named.append(list(digests))


def test_a_walk_reads_ahead_where_it_goes_on_not_where_it_jumps() -> None:
    """A pxar walk reads a directory's goodbye table at its end, then comes back to its first
    entry: neither jump is read ahead of (the chunks would leave the cache unread)."""
    stream, _ = image(40, chunk_size=MiB)
    readahead = RecordingReadahead()
    reader = ForwardReader(stream, readahead)  # type: ignore[arg-type]
    digest = stream.index.digest

    assert reader.read_at(0, 4096) == stream.read_at(0, 4096)
    assert readahead.named == [[digest(i) for i in range(1, 17)]]  # the next 16 MiB
    reader.read_at(30 * MiB, 4096)  # the goodbye table, far ahead
    reader.read_at(8192, 4096)  # back to the first entry
    assert len(readahead.named) == 1
    reader.read_at(16 * MiB, 4096)  # the walk goes on: the window moves with it
    assert readahead.named[1] == [digest(i) for i in range(17, 33)]


def test_reads_inside_the_named_window_skip_the_lookups_and_name_the_same() -> None:
    """The shortcut for reads that can name nothing new (most reads of small files in archive
    order) gives, for any reading pattern, what the full computation gives."""
    rng = random.Random(7)
    for cache_size in (32 * MiB, 1 << 30):
        stream, _ = image(24, chunk_size=2 * MiB, cache_size=cache_size)
        for limit in (stream.size, 40 * MiB + 5, 3 * MiB):
            window, reference = SequentialWindow(), SequentialWindow()
            end = 0
            for _ in range(400):
                pick = rng.random()
                if pick < 0.85:
                    end = min(stream.size, end + rng.randint(0, 300_000))
                elif pick < 0.95:
                    end = rng.randint(0, stream.size)
                else:
                    end = min(stream.size, end + rng.randint(0, 12 * MiB))
                reference._quiet = (0, 0)  # always computed in full
                assert window.after(stream, end, limit) == reference.after(stream, end, limit)
                assert window.ahead == reference.ahead
