"""Streaming decode throughput of a fixed index, against this machine's limit.

The limit is the same work with no snapfs code in the loop: read each chunk file, zstd-decode it,
SHA-256 it, in one process and one thread. snapfs reads the same image through
IndexStream.iter_range (which decodes ahead in worker threads). Both run side by side on the same
datastore, the page cache warm for both (the chunk files are read once before timing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time

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


def limit_pass(root: str, digests: list[bytes]) -> float:
    dctx = zstandard.ZstdDecompressor()
    start = time.perf_counter()
    total = 0
    for digest in digests:
        with open(os.path.join(root, chunk_path(digest)), "rb") as f:
            raw = f.read()
        magic = raw[:8]
        body = memoryview(raw)[12:]
        if magic == bytes.fromhex("31b958426fb6a37f"):
            data = dctx.decompress(body, max_output_size=16 * MiB)
        else:
            data = body.tobytes()
        hashlib.sha256(data).digest()
        total += len(data)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        limit_pass(store, digests)  # warm the page cache for both
        limits, ours = [], []
        for _ in range(args.rounds):  # interleaved so machine noise hits both alike
            limits.append(limit_pass(store, digests))
            ours.append(snapfs_pass(datastore, snapshot))
    limit, snap = max(limits), max(ours)
    result = {
        "image_mib": args.size_mib,
        "limit_mb_s": limit / 1e6,
        "snapfs_mb_s": snap / 1e6,
        "ratio": snap / limit,
    }
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        print(f"image {args.size_mib} MiB, best of {args.rounds}")
        print(f"limit (read + zstd + sha256, one thread, no snapfs): {limit / 1e6:8.1f} MB/s")
        print(f"snapfs IndexStream.iter_range:                       {snap / 1e6:8.1f} MB/s")
        print(f"ratio: {snap / limit:.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
