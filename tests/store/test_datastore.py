"""The datastore model and chunk layer over the golden datastore (read-only, upstream-written)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading

import pytest

from snapfs.errors import (
    ChecksumMismatchError,
    KeyRequiredError,
    MissingChunkError,
    NotFoundError,
    UsageError,
    WrongKeyError,
)
from snapfs.format.crypt import CryptConfig
from snapfs.store.backend import LocalBackend, chunk_path
from snapfs.store.cache import ChunkCache
from snapfs.store.chunks import ChunkReader
from snapfs.store.datastore import (
    Datastore,
    Group,
    Snapshot,
    format_backup_time,
    parse_backup_time,
    parse_namespace,
    parse_snapshot,
)
from snapfs.views.archives import SnapshotReader


@pytest.fixture(scope="module")
def report(vectors):
    return json.loads((vectors / "report.json").read_text())


@pytest.fixture(scope="module")
def store(vectors) -> Datastore:
    return Datastore(LocalBackend(vectors / "datastore"))


@pytest.fixture(scope="module")
def key(report) -> CryptConfig:
    return CryptConfig(bytes.fromhex(report["raw_key_hex"]))


def test_lists_every_golden_snapshot(store, report):
    found = []
    for ns in store.all_namespaces():
        for group in store.groups(ns):
            for snap in store.snapshots(group):
                found.append("/".join(f"ns/{p}" for p in ns) + ("/" if ns else "") + str(snap))
    assert sorted(found) == sorted(report["snapshots"])


def test_namespaces_groups_and_owner(store):
    assert store.namespaces() == [("testns",)]
    assert store.groups(("testns",)) == [Group(("testns",), "host", "splithost")]
    assert [str(g) for g in store.groups()] == ["vm/100", "ct/200", "host/testhost"]
    assert store.owner(Group((), "vm", "100")) == "root@pam"
    assert store.notes(Group((), "vm", "100")) is None


def test_manifests_match_the_stored_text(store, report):
    for path, expected in report["snapshots"].items():
        ns = ()
        if path.startswith("ns/"):
            parts = path.split("/")
            ns, path = (parts[1],), "/".join(parts[2:])
        snap = parse_snapshot(path, ns)
        reader = SnapshotReader(store, snap)
        assert reader.manifest_text() == expected["manifest"].encode()
        info = store.snapshot_info(snap)
        assert info.complete and not info.protected


def test_image_streams_reassemble_to_the_golden_sha256(store, report, key):
    for path in ("vm/100/2024-06-01T10:00:00Z", "vm/100/2024-06-01T14:00:00Z"):
        crypt = key if report["snapshots"][path].get("encrypted") else None
        stream = SnapshotReader(store, parse_snapshot(path), crypt).stream("drive-scsi0.img")
        h = hashlib.sha256()
        for block in stream.iter_range():
            h.update(block)
        assert h.hexdigest() == report["snapshots"][path]["image_sha256"]
        # random access agrees with the streamed bytes
        whole = b"".join(bytes(b) for b in stream.iter_range())
        for offset, size in ((0, 10), (4194300, 10), (stream.size - 5, 100), (8388608, 4194304)):
            assert stream.read_at(offset, size) == whole[offset : offset + size]


def test_encrypted_snapshot_needs_the_right_key(store, report):
    snap = parse_snapshot("vm/100/2024-06-01T14:00:00Z")
    with pytest.raises(KeyRequiredError):
        SnapshotReader(store, snap).blob("qemu-server.conf")
    other = CryptConfig(bytes(32))
    with pytest.raises(WrongKeyError, match="a5:2d:a8:e7"):
        SnapshotReader(store, snap, other)


def test_blobs_decode(store, key):
    plain = SnapshotReader(store, parse_snapshot("vm/100/2024-06-01T10:00:00Z")).blob(
        "qemu-server.conf"
    )
    enc = SnapshotReader(store, parse_snapshot("vm/100/2024-06-01T14:00:00Z"), key).blob(
        "qemu-server.conf.blob"
    )
    assert plain == enc
    assert (
        hashlib.sha256(plain).hexdigest()
        == "f761bfd3d0dabde4013a104a322bc6df7444cd0dbd63166d5b7772c275139ed1"
    )


def test_snapshot_names():
    snap = parse_snapshot("vm/100/2024-06-01T10:00:00Z")
    assert snap.time == 1717236000 and str(snap) == "vm/100/2024-06-01T10:00:00Z"
    assert Snapshot(Group(("a", "b"), "ct", "7"), 0).path == "ns/a/ns/b/ct/7/1970-01-01T00:00:00Z"
    assert format_backup_time(parse_backup_time("2020-06-26T13:56:05Z")) == "2020-06-26T13:56:05Z"
    assert parse_namespace("a/b") == ("a", "b")
    for bad in (
        "vm/100",
        "lxc/100/2024-06-01T10:00:00Z",
        "vm/1 00/2024-06-01T10:00:00Z",
        "vm/100/2024-13-01T10:00:00Z",
        "vm/100/2024-06-01 10:00:00",
        "vm/../2024-06-01T10:00:00Z",
    ):
        with pytest.raises(UsageError):
            parse_snapshot(bad)
    with pytest.raises(UsageError):
        parse_namespace("a/../b")


def test_missing_snapshot_and_archive(store):
    with pytest.raises(NotFoundError, match="2030-01-01T00:00:00Z"):
        store.manifest(parse_snapshot("vm/100/2030-01-01T00:00:00Z"))
    with pytest.raises(NotFoundError, match="drive-virtio0"):
        store.resolve_archive(parse_snapshot("vm/100/2024-06-01T10:00:00Z"), "drive-virtio0.img")


@pytest.fixture
def store_copy(vectors, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(vectors / "datastore", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_incomplete_and_protected_snapshots_are_listed(store_copy):
    (store_copy / "vm/100/2024-06-01T10:00:00Z/.protected").touch()
    (store_copy / "vm/100/2024-06-02T00:00:00Z").mkdir()
    (store_copy / "vm/100/not-a-time").mkdir()
    (store_copy / "vm/bad id").mkdir()
    store = Datastore(LocalBackend(store_copy))
    snaps = store.snapshots(Group((), "vm", "100"))
    assert [s.time_name for s in snaps] == [
        "2024-06-01T10:00:00Z",
        "2024-06-01T14:00:00Z",
        "2024-06-02T00:00:00Z",
    ]
    assert store.snapshot_info(snaps[0]).protected
    assert not store.snapshot_info(snaps[2]).complete
    with pytest.raises(NotFoundError, match="incomplete"):
        store.manifest(snaps[2])


def test_missing_and_corrupt_chunks(store_copy):
    digest = bytes.fromhex("3b7b2f9af426fcce03e16e1a94ff2cf5cd275c2aaa48983c6904e9d6055f888f")
    (store_copy / chunk_path(digest)).unlink()
    store = Datastore(LocalBackend(store_copy))
    stream = SnapshotReader(store, parse_snapshot("vm/100/2024-06-01T10:00:00Z")).stream(
        "drive-scsi0.img"
    )
    with pytest.raises(MissingChunkError, match=digest.hex()):
        stream.read_at(0, 100)
    # the other chunks stay readable
    assert stream.read_at(4194304, 16) == bytes(16)


def test_index_replaced_by_another_snapshots_index_is_refused(store_copy):
    a = store_copy / "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img.fidx"
    b = store_copy / "vm/100/2024-06-01T14:00:00Z/drive-scsi0.img.fidx"
    shutil.copy(b, a)
    store = Datastore(LocalBackend(store_copy))
    with pytest.raises(ChecksumMismatchError, match="manifest"):
        SnapshotReader(store, parse_snapshot("vm/100/2024-06-01T10:00:00Z")).stream(
            "drive-scsi0.img"
        )


class CountingBackend:
    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.chunk_reads = 0
        self.gate = threading.Event()

    def list_dir(self, path):
        return self.inner.list_dir(path)

    def read_file(self, path):
        return self.inner.read_file(path)

    def read_chunk(self, digest):
        self.chunk_reads += 1
        self.gate.wait(timeout=10)
        return self.inner.read_chunk(digest)


def test_one_fetch_per_chunk_however_many_readers(vectors):
    backend = CountingBackend(LocalBackend(vectors / "datastore"))
    reader = ChunkReader(backend, None, ChunkCache(64 << 20))
    digest = bytes.fromhex("3b7b2f9af426fcce03e16e1a94ff2cf5cd275c2aaa48983c6904e9d6055f888f")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(reader.read_chunk(digest)))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    backend.gate.set()
    for t in threads:
        t.join()
    assert len(results) == 16 and len({hashlib.sha256(r).digest() for r in results}) == 1
    assert backend.chunk_reads == 1
    reader.read_chunk(digest)
    assert backend.chunk_reads == 1  # served from the cache


def test_chunk_cache_is_bounded_by_bytes():
    cache = ChunkCache(10_000)
    for i in range(100):
        cache.put(bytes([i]) * 32, bytes(1000))
    assert cache.used_bytes <= 10_000 and len(cache) == 10
    assert cache.get(bytes([99]) * 32) is not None and cache.get(bytes([0]) * 32) is None
    cache.get(bytes([90]) * 32)  # recently used survives the next eviction
    cache.put(b"x" * 32, bytes(1000))
    assert cache.get(bytes([90]) * 32) is not None and cache.get(bytes([91]) * 32) is None
    cache.put(b"big" * 11, bytes(20_000))  # larger than the whole cache: kept alone
    assert len(cache) == 1 and cache.get(b"big" * 11) is not None
    cache.put(b"x" * 32, bytes(1000))  # the next one drops it
    assert cache.used_bytes == 1000 and cache.get(b"big" * 11) is None


def test_a_cache_of_zero_keeps_nothing():
    cache = ChunkCache(0)
    cache.put(b"x" * 32, bytes(1000))
    assert len(cache) == 0 and cache.used_bytes == 0


def test_evicted_chunks_are_released():
    """An evicted chunk's memory is freed: the cache keeps no hidden reference to it."""
    cache = ChunkCache(3 * 1024)
    first = bytes(bytearray(1024))
    refs_before = sys.getrefcount(first)
    cache.put(b"a" * 32, first)
    for i in range(10):
        cache.put(bytes([i]) * 32, bytes(bytearray(1024)))
    assert cache.get(b"a" * 32) is None
    assert sys.getrefcount(first) == refs_before
