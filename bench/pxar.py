"""pxar reader at scale: one deep lookup, one huge directory, a whole-archive walk.

The archive is synthetic but real: the low-level `Encoder` writes ENTRIES entries (a directory of
ENTRIES/10 files, the rest small files in a tree of FANOUT^DEPTH leaf directories) to a temporary
file, which is stored as `root.pxar.didx` in a datastore snapshot exactly as `snapfs backup` stores
a tree (buzhash chunks of 4 MiB average). No file is created per entry, so a million entries take
a minute, not an hour of inode churn.

Measured through `SnapshotReader.pxar` as the mount uses it:
* deep lookup: chunks fetched (ChunkReader.fetches) and time for one path DEPTH+2 levels down, the
  chunk cache cold (the accessor already open: opening costs the first and last chunk, reported
  apart);
* listdir of the big directory, every entry consumed, cold cache;
* walk: peak RSS (VmHWM) of a child process that walks every entry with a 64 MiB chunk cache, for
  this archive and one a tenth its size: memory must not grow with the archive.
Timings are the best of --rounds, interleaved, as the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from snapfs.backup import backup_pxar_stream
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.encoder import Encoder, Metadata
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.views.archives import SnapshotReader

MiB = 1024 * 1024
WALK_CACHE_BYTES = 64 * MiB
MAX_FANOUT = 10
DEPTH = 3
_T0 = 1_717_236_000 * 1_000_000_000  # 2024-06-01, so mtimes look like a real tree's
_DIR_META = Metadata(mode=stat.S_IFDIR | 0o755, uid=0, gid=0, mtime_ns=_T0)


@dataclass(frozen=True)
class Layout:
    """What was encoded, so the benchmark knows its targets and can check its counts."""

    entries: int  # below the root
    big_dir: str
    big_dir_entries: int
    deep_path: str
    archive_bytes: int


def _fanout(entries: int) -> int:
    """Subdirectories per tree directory: 10 (1,000 leaves) from 100,000 entries on, fewer below,
    so leaves keep about a hundred files or more."""
    fanout = MAX_FANOUT
    while fanout > 2 and fanout**DEPTH > entries // 100:
        fanout -= 1
    return fanout


def _tree_dirs(fanout: int) -> list[tuple[str, ...]]:
    """Leaf directory paths (name components below /tree), in name order."""
    paths: list[tuple[str, ...]] = [()]
    for level in range(DEPTH):
        letter = "abcdefgh"[level]
        paths = [p + (f"{letter}{i:02d}",) for p in paths for i in range(fanout)]
    return paths


def encode_synthetic(out, entries: int) -> Layout:  # noqa: ANN001 - any binary file object
    """Encode `entries` entries below the root: /big with entries/10 files and /tree/a../b../c..

    File content is 0..256 bytes cut from a fixed random pool, so chunks compress like text.
    """
    big = entries // 10
    fanout = _fanout(entries)
    leaves = _tree_dirs(fanout)
    inner_dirs = sum(fanout**level for level in range(1, DEPTH))
    tree_files = entries - big - 2 - inner_dirs - len(leaves)
    if tree_files < len(leaves):
        raise SystemExit(f"--entries {entries} is too small for {len(leaves)} leaf directories")
    rng = random.Random(7)
    pool = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 \n") for _ in range(1 << 16))
    metas = [
        Metadata(mode=stat.S_IFREG | 0o644, uid=1000, gid=1000, mtime_ns=_T0 + k * 1_000_003)
        for k in range(64)
    ]
    serial = 0

    def add_files(enc: Encoder, count: int) -> None:
        nonlocal serial
        for k in range(count):
            size = (serial * 37) % 257
            start = (serial * 131) % (len(pool) - 257)
            enc.add_file(
                f"f{k:06d}".encode(), metas[serial & 63], size, (pool[start : start + size],)
            )
            serial += 1

    enc = Encoder(out)
    enc.begin_directory(b"", _DIR_META)
    enc.begin_directory(b"big", _DIR_META)
    add_files(enc, big)
    enc.end_directory()
    enc.begin_directory(b"tree", _DIR_META)
    per_leaf, extra = divmod(tree_files, len(leaves))
    open_path: tuple[str, ...] = ()
    for n, leaf in enumerate(leaves):
        common = 0
        while common < len(open_path) and open_path[common] == leaf[common]:
            common += 1
        for _ in range(len(open_path) - common):
            enc.end_directory()
        for name in leaf[common:]:
            enc.begin_directory(name.encode(), _DIR_META)
        open_path = leaf
        add_files(enc, per_leaf + (n < extra))
    for _ in open_path:
        enc.end_directory()
    enc.end_directory()
    enc.finish()
    # A leaf two thirds of the way through the tree, its middle file: nothing about it is cached
    # by accident, and its directories span several chunks on the way down.
    leaf_no = len(leaves) * 2 // 3
    deep = "/tree/" + "/".join(leaves[leaf_no]) + f"/f{per_leaf // 2:06d}"
    return Layout(entries, "/big", big, deep, enc.position)


def build_snapshot(store: str, entries: int, backup_id: str) -> tuple[Layout, str, dict]:
    """Encode a synthetic archive and store it as a snapshot; returns its layout and timings."""
    with tempfile.TemporaryFile(dir=store) as f:
        start = time.perf_counter()
        layout = encode_synthetic(f, entries)
        encoded = time.perf_counter()
        f.seek(0)
        result = backup_pxar_stream(
            store, f, backup_type="host", backup_id=backup_id, backup_time=1_717_236_000
        )
        stored = time.perf_counter()
    snapshot = str(result.snapshot)
    index = open_snapshot(store, snapshot).stream("root.pxar.didx").index
    info = {
        "encode_s": encoded - start,
        "store_s": stored - encoded,
        "chunks": index.chunk_count,
        # a walk holds one decoded chunk beyond the cache at times: the largest one counts
        "max_chunk_mib": max(end - begin for begin, end, _ in index.chunks()) / MiB,
    }
    return layout, snapshot, info


def open_snapshot(store: str, snapshot: str) -> SnapshotReader:
    """A reader with its own cold chunk cache of WALK_CACHE_BYTES."""
    return SnapshotReader(
        Datastore(LocalBackend(store)), parse_snapshot(snapshot), None, ChunkCache(WALK_CACHE_BYTES)
    )


def open_archive(store: str, snapshot: str) -> tuple[SnapshotReader, Accessor]:
    reader = open_snapshot(store, snapshot)
    return reader, reader.pxar("root.pxar")


def measure_lookup(store: str, snapshot: str, path: str) -> dict:
    """Open (cold), then look up `path` with the chunk cache emptied again."""
    reader = open_snapshot(store, snapshot)
    start = time.perf_counter()
    acc = reader.pxar("root.pxar")
    opened = time.perf_counter()
    open_chunks = reader.chunks.fetches
    reader.chunks.cache.clear()
    fetches, reads = reader.chunks.fetches, acc.stats.reads
    t = time.perf_counter()
    entry = acc.lookup(path)
    done = time.perf_counter()
    assert entry.is_file, path
    t_warm = time.perf_counter()
    acc.lookup(path)
    warm = time.perf_counter() - t_warm
    return {
        "open_ms": (opened - start) * 1e3,
        "open_chunks": open_chunks,
        "lookup_ms": (done - t) * 1e3,
        "lookup_chunks": reader.chunks.fetches - fetches,
        "lookup_reads": acc.stats.reads - reads,
        "lookup_warm_ms": warm * 1e3,
    }


def measure_listdir(store: str, snapshot: str, path: str, expect: int) -> dict:
    reader, acc = open_archive(store, snapshot)
    directory = acc.lookup(path)
    reader.chunks.cache.clear()
    fetches = reader.chunks.fetches
    start = time.perf_counter()
    count = sum(1 for _ in acc.listdir(directory))
    seconds = time.perf_counter() - start
    assert count == expect, (count, expect)
    return {"listdir_s": seconds, "listdir_chunks": reader.chunks.fetches - fetches}


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def walk_child(store: str, snapshot: str) -> None:
    """Runs in a fresh interpreter so VmHWM is the walk's alone, not the builder's."""
    reader, acc = open_archive(store, snapshot)
    base = _vm_hwm_mib()
    start = time.perf_counter()
    count = 0
    for _ in acc.walk():
        count += 1
    seconds = time.perf_counter() - start
    json.dump(
        {
            "walk_entries": count,
            "walk_s": seconds,
            "rss_before_walk_mib": base,
            "rss_peak_mib": _vm_hwm_mib(),
            "walk_chunks": reader.chunks.fetches,
            "cache_mib": reader.chunks.cache.used_bytes / MiB,
        },
        sys.stdout,
    )


def measure_walk(store: str, snapshot: str, expect: int) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--walk-child", store, snapshot],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"walk child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    # The cache only evicts above its limit, so its final size is its largest.
    result["rss_excl_cache_mib"] = result["rss_peak_mib"] - result["cache_mib"]
    assert result["walk_entries"] == expect, (result["walk_entries"], expect)
    return result


def _best(rounds: list[dict], key: str, *, high: bool = False) -> float:
    values = [r[key] for r in rounds]
    return max(values) if high else min(values)


def run(entries: int, rounds: int, work: str | None) -> dict:
    small_entries = entries // 10
    with tempfile.TemporaryDirectory(prefix="snapfs-bench-pxar-", dir=work) as store:
        t = time.perf_counter()
        layout, snapshot, build = build_snapshot(store, entries, "large")
        build["total_s"] = time.perf_counter() - t
        small_layout, small_snapshot, small_info = build_snapshot(store, small_entries, "small")
        lookups, listings, walks, small_walks = [], [], [], []
        for _ in range(rounds):  # interleaved so machine noise hits all alike
            lookups.append(measure_lookup(store, snapshot, layout.deep_path))
            listings.append(
                measure_listdir(store, snapshot, layout.big_dir, layout.big_dir_entries)
            )
            walks.append(measure_walk(store, snapshot, entries + 1))
            small_walks.append(measure_walk(store, small_snapshot, small_entries + 1))
    lookup = {k: _best(lookups, k) for k in lookups[0]}
    # Chunk counts do not depend on noise; all rounds must agree.
    assert len({r["lookup_chunks"] for r in lookups}) == 1, lookups
    peak, small_peak = _best(walks, "rss_peak_mib"), _best(small_walks, "rss_peak_mib")
    # The cache fills up to its limit on a big archive but only to the archive's size on a small
    # one; what must not grow is everything else.
    rest = _best(walks, "rss_excl_cache_mib")
    small_rest = _best(small_walks, "rss_excl_cache_mib")
    return {
        "entries": entries,
        "archive_mib": layout.archive_bytes / MiB,
        "chunks": build["chunks"],
        "build": build,
        "deep_path": layout.deep_path,
        "deep_lookup": lookup,
        "big_dir_entries": layout.big_dir_entries,
        "listdir": {k: _best(listings, k) for k in listings[0]},
        "walk": {
            "entries": entries + 1,
            "seconds": _best(walks, "walk_s"),
            "entries_per_s": (entries + 1) / _best(walks, "walk_s"),
            "rss_before_walk_mib": _best(walks, "rss_before_walk_mib"),
            "rss_peak_mib": peak,
            "rss_excl_cache_mib": rest,
            "chunks": walks[0]["walk_chunks"],
            "cache_mib": walks[0]["cache_mib"],
            "cache_limit_mib": WALK_CACHE_BYTES / MiB,
            "max_chunk_mib": build["max_chunk_mib"],
        },
        "walk_small": {
            "entries": small_entries + 1,
            "archive_mib": small_layout.archive_bytes / MiB,
            "seconds": _best(small_walks, "walk_s"),
            "rss_peak_mib": small_peak,
            "rss_excl_cache_mib": small_rest,
            "cache_mib": small_walks[0]["cache_mib"],
            "max_chunk_mib": small_info["max_chunk_mib"],
        },
        "rss_growth_ratio": peak / small_peak,
        "rss_excl_cache_growth_ratio": rest / small_rest,
        "rounds": rounds,
    }


def print_table(r: dict) -> None:
    lk, ls, w, ws, b = r["deep_lookup"], r["listdir"], r["walk"], r["walk_small"], r["build"]
    print(
        f"archive: {r['entries']:,} entries, {r['archive_mib']:.0f} MiB, {r['chunks']} chunks; "
        f"built in {b['total_s']:.0f} s (encode {b['encode_s']:.0f} s, "
        f"chunk+store {b['store_s']:.0f} s); best of {r['rounds']}"
    )
    print(f"open accessor, cold:        {lk['open_ms']:8.1f} ms  {lk['open_chunks']:3d} chunks")
    print(
        f"deep lookup, cold cache:    {lk['lookup_ms']:8.1f} ms  {lk['lookup_chunks']:3d} chunks"
        f"  (goal <= 5)  {r['deep_path']}"
    )
    print(f"deep lookup, warm:          {lk['lookup_warm_ms']:8.3f} ms")
    print(
        f"listdir {r['big_dir_entries']:,} entries, cold: {ls['listdir_s']:6.2f} s  "
        f"{ls['listdir_chunks']:3d} chunks  ({r['big_dir_entries'] / ls['listdir_s']:,.0f} entries/s)"
    )
    print(
        f"walk {w['entries']:,} entries:      {w['seconds']:6.1f} s  "
        f"({w['entries_per_s']:,.0f} entries/s), peak RSS {w['rss_peak_mib']:.0f} MiB "
        f"(before walk {w['rss_before_walk_mib']:.0f} MiB; chunk cache {w['cache_mib']:.0f} MiB "
        f"of {w['cache_limit_mib']:.0f}; the rest {w['rss_excl_cache_mib']:.0f} MiB; "
        f"largest chunk {w['max_chunk_mib']:.0f} MiB)"
    )
    print(
        f"walk {ws['entries']:,} entries:        {ws['seconds']:6.1f} s, "
        f"peak RSS {ws['rss_peak_mib']:.0f} MiB (chunk cache {ws['cache_mib']:.0f} MiB; "
        f"the rest {ws['rss_excl_cache_mib']:.0f} MiB; largest chunk {ws['max_chunk_mib']:.0f} MiB)"
    )
    print(
        f"{r['entries']:,} vs {r['entries'] // 10:,} entries: peak RSS x{r['rss_growth_ratio']:.2f}, "
        f"without the chunk cache x{r['rss_excl_cache_growth_ratio']:.2f} "
        f"(goal: flat, peak < 150 MiB)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-pxar", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, help="entries in the archive (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 entries unless --entries")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", help="directory for the temporary datastore")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--walk-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.walk_child:
        walk_child(*args.walk_child)
        return 0
    entries = args.entries or (100_000 if args.quick else 1_000_000)
    result = run(entries, max(1, args.rounds), args.work)
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
