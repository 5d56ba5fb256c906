"""Streaming decode throughput of a fixed index, against this machine's limit.

The limit is the same work with no snapfs code in the loop: read each chunk file, zstd-decode it,
SHA-256 it, in one process; measured with one thread and with as many threads as cores (zstd and
SHA-256 release the GIL, so the second core is part of this machine's limit). snapfs reads the
same image through IndexStream.iter_range (which decodes ahead in worker threads). All run side by
side on the same datastore, the page cache warm for all (the chunk files are read once first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import zstandard

from snapfs.backup import BackupSource, backup
from snapfs.store.backend import LocalBackend, chunk_path
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.views.archives import SnapshotReader

MiB = 1024 * 1024


def make_image(path: str, size: int) -> None:
    """VM-like: a mix of random, text-like and zero regions, in 1 MiB pieces."""
    rng = random.Random(1)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(8)) for _ in range(512)
    ]
    with open(path, "wb") as f:
        written = 0
        while written < size:
            kind = rng.random()
            if kind < 0.4:
                block = rng.randbytes(MiB)
            elif kind < 0.8:
                block = b"".join(rng.choice(words) for _ in range(MiB // 8))
            else:
                block = bytes(MiB)
            f.write(block)
            written += len(block)


_COMPRESSED = bytes.fromhex("31b958426fb6a37f")
_local = threading.local()


def _decode_one(path: str) -> int:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        raw = f.read()
    body = memoryview(raw)[12:]
    # decompressobj is the fast path for frames with or without a content size
    data = dctx.decompressobj().decompress(body) if raw[:8] == _COMPRESSED else body
    hashlib.sha256(data).digest()
    return len(data)


def limit_pass(root: str, digests: list[bytes], threads: int) -> float:
    paths = [os.path.join(root, chunk_path(d)) for d in digests]
    start = time.perf_counter()
    if threads == 1:
        total = sum(map(_decode_one, paths))
    else:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(_decode_one, paths))
    return total / (time.perf_counter() - start)


def snapfs_pass(datastore: Datastore, snapshot: str) -> float:
    reader = SnapshotReader(datastore, parse_snapshot(snapshot), None, ChunkCache(0))
    stream = reader.stream("drive-scsi0.img")
    start = time.perf_counter()
    total = 0
    for block in stream.iter_range():
        total += len(block)
    assert total == stream.size
    return total / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-read", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="snapfs-bench-") as tmp:
        image = os.path.join(tmp, "disk.raw")
        make_image(image, args.size_mib * MiB)
        store = os.path.join(tmp, "ds")
        backup(
            store,
            [BackupSource("drive-scsi0.img", image)],
            backup_type="vm",
            backup_id="1",
            backup_time=1,
        )
        datastore = Datastore(LocalBackend(store))
        snapshot = "vm/1/1970-01-01T00:00:01Z"
        index = SnapshotReader(datastore, parse_snapshot(snapshot)).stream("drive-scsi0.img").index
        digests = [d for _, _, d in index.chunks()]
        cores = os.cpu_count() or 1
        limit_pass(store, digests, 1)  # warm the page cache for all
        one, many, ours = [], [], []
        for _ in range(args.rounds):  # interleaved so machine noise hits all alike
            one.append(limit_pass(store, digests, 1))
            many.append(limit_pass(store, digests, cores))
            ours.append(snapfs_pass(datastore, snapshot))
    limit1, limit, snap = max(one), max(many), max(ours)
    result = {
        "image_mib": args.size_mib,
        "limit_1_thread_mb_s": limit1 / 1e6,
        "limit_mb_s": limit / 1e6,
        "snapfs_mb_s": snap / 1e6,
        "ratio": snap / limit,
    }
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        print(f"image {args.size_mib} MiB, best of {args.rounds}, {cores} cores")
        print(f"limit, 1 thread:  read + zstd + sha256, no snapfs  {limit1 / 1e6:8.1f} MB/s")
        print(f"limit, {cores} threads: read + zstd + sha256, no snapfs  {limit / 1e6:8.1f} MB/s")
        print(f"snapfs IndexStream.iter_range:                   {snap / 1e6:8.1f} MB/s")
        print(f"ratio to the {cores}-thread limit: {snap / limit:.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
