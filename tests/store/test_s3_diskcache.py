"""DiskCache over an in-memory Backend: bound, LRU across instances, verification, free space."""

from __future__ import annotations

import hashlib
import os

import pytest

from snapfs.errors import MissingChunkError
from snapfs.store.backend import DirListing
from snapfs.store.diskcache import DiskCache


class CountingBackend:
    """Chunks keyed by sha256 of their bytes; counts fetches (the thing a disk cache saves)."""

    name = "memory://test"

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = {hashlib.sha256(c).digest(): c for c in chunks}
        self.fetches = 0

    def list_dir(self, path: str) -> DirListing:
        return DirListing()

    def read_file(self, path: str) -> bytes:
        return b"file " + path.encode()

    def read_chunk(self, digest: bytes) -> bytes:
        self.fetches += 1
        try:
            return self.chunks[digest]
        except KeyError:
            raise MissingChunkError(f"chunk {digest.hex()} missing") from None


def _chunks(n: int, size: int = 10_000) -> list[bytes]:
    return [bytes([i]) * size for i in range(n)]


def _record_path(cache: DiskCache, digest: bytes) -> str:
    return os.path.join(cache.root, "chunks", digest.hex()[:4], digest.hex())


def test_hits_survive_a_new_instance(tmp_path):
    backend = CountingBackend(_chunks(3))
    cache = DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=0)
    for digest, data in backend.chunks.items():
        assert cache.read_chunk(digest) == data
    assert backend.fetches == 3
    again = DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=0)
    for digest, data in backend.chunks.items():
        assert again.read_chunk(digest) == data
    assert backend.fetches == 3
    assert again.stats()["disk_cache_hits"] == 3


def test_bounded_by_bytes_least_recently_used_out(tmp_path):
    chunks = _chunks(6)
    backend = CountingBackend(chunks)
    digests = list(backend.chunks)
    cache = DiskCache(backend, tmp_path, 35_000, min_free_bytes=0)  # room for three records
    for digest in digests[:3]:
        cache.read_chunk(digest)
    cache.read_chunk(digests[0])  # now most recent: digests[1] is the oldest
    cache.read_chunk(digests[3])
    assert cache.used_bytes <= 35_000
    assert not os.path.exists(_record_path(cache, digests[1]))
    assert os.path.exists(_record_path(cache, digests[0]))
    on_disk = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(os.path.join(cache.root, "chunks"))
        for f in fs
    )
    assert on_disk == cache.used_bytes
    # A smaller bound on the next run evicts down to it at start.
    smaller = DiskCache(backend, tmp_path, 15_000, min_free_bytes=0)
    assert smaller.used_bytes <= 15_000


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupt_record_is_dropped_and_refetched(tmp_path, damage):
    backend = CountingBackend(_chunks(1))
    digest, data = next(iter(backend.chunks.items()))
    DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=0).read_chunk(digest)
    cache = DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=0)
    path = _record_path(cache, digest)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if damage == "flip":
        raw[-1] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = bytearray(b"\xff" * 100)
    with open(path, "wb") as f:
        f.write(raw)
    assert cache.read_chunk(digest) == data
    assert backend.fetches == 2
    assert cache.stats()["disk_cache_corrupt"] == 1
    assert cache.read_chunk(digest) == data  # rewritten good copy
    assert backend.fetches == 2


def test_never_fills_the_disk(tmp_path):
    backend = CountingBackend(_chunks(2))
    st = os.statvfs(tmp_path)
    everything = st.f_blocks * st.f_frsize
    cache = DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=everything)
    for digest, data in backend.chunks.items():
        assert cache.read_chunk(digest) == data
    assert cache.used_bytes == 0
    assert cache.stats()["disk_cache_skipped_writes"] == 2
    assert not os.listdir(os.path.join(cache.root, "chunks"))


def test_unwritable_cache_still_serves(tmp_path):
    backend = CountingBackend(_chunks(1))
    digest, data = next(iter(backend.chunks.items()))
    cache = DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=0)
    blocker = os.path.join(cache.root, "chunks", digest.hex()[:4])
    open(blocker, "w").close()  # a file where the prefix folder should be: every write fails
    assert cache.read_chunk(digest) == data
    assert cache.stats()["disk_cache_skipped_writes"] == 1


def test_missing_chunk_passes_through(tmp_path):
    cache = DiskCache(CountingBackend([]), tmp_path, 1 << 20, min_free_bytes=0)
    with pytest.raises(MissingChunkError):
        cache.read_chunk(b"\x00" * 32)


def test_files_without_versions_are_not_cached(tmp_path):
    backend = CountingBackend([])
    cache = DiskCache(backend, tmp_path, 1 << 20, min_free_bytes=0)
    assert cache.read_file("vm/100/owner") == b"file vm/100/owner"
    assert not os.listdir(os.path.join(cache.root, "files"))
