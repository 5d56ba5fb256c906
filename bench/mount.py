"""Benchmark of the FUSE mount: throughput against this machine's limits, listing speed, memory.

On one datastore made here with `snapfs backup` (a 1 GiB VM-like image, a 100,000-file tree):

* sequential read of the image through the mount, cold (chunk cache empty, page cache dropped)
  and warm (every chunk decoded in snapfs's cache, page cache dropped, so each read still goes
  through our read handler);
* the same bytes from a plain file (page cache dropped / warm);
* the in-process decode limit: read each chunk file + zstd + SHA-256 in one thread, no snapfs;
* the ceiling: a minimal pyfuse3 filesystem in this script serving the same bytes from memory,
  mounted with the same options and kernel readahead;
* `find` + stat over the 100,000-file archive (fresh mount), and the mount process's peak RSS.

Usage: scripts/bench-mount [--quick] [--json] [--read-ahead-kb N] [--keep DIR]
Needs root (drop_caches, mounts). Prints the numbers and the goals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 1024 * 1024
SNAPFS = [sys.executable, "-m", "snapfs"]
TIME = "2024-06-01T10:00:00Z"


# --- data ------------------------------------------------------------------------------------------


def make_image(path: str, size: int) -> None:
    """VM-like: random, text-like and zero regions in 1 MiB pieces (as scripts/bench-read)."""
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


def make_tree(root: str, count: int) -> None:
    per_dir = 1000
    for i in range(count):
        d = os.path.join(root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(b"%d\n" % i)


# --- helpers ---------------------------------------------------------------------------------------


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_seq(path: str, block: int = MiB) -> float:
    """Bytes/s of one sequential pass with a reused buffer (no per-read allocation)."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    try:
        while n := os.readv(fd, [view]):
            total += n
    finally:
        os.close(fd)
    return total / (time.perf_counter() - start)


def decode_limit(store: str, digests: list[bytes]) -> float:
    import zstandard

    from snapfs.store.backend import chunk_path

    dctx = zstandard.ZstdDecompressor()
    start = time.perf_counter()
    total = 0
    for digest in digests:
        with open(os.path.join(store, chunk_path(digest)), "rb") as f:
            raw = f.read()
        body = memoryview(raw)[12:]
        if raw[:8] == bytes.fromhex("31b958426fb6a37f"):
            data = dctx.decompress(body, max_output_size=16 * MiB)
        else:
            data = body
        hashlib.sha256(data).digest()
        total += len(data)
    return total / (time.perf_counter() - start)


def mount_pid(mnt: str) -> int | None:
    target = os.fsencode(os.path.abspath(mnt))
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if target in args:
                return int(pid)
    return None


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def snapfs_mount(store: str, mnt: str, *opts: str) -> int:
    os.makedirs(mnt, exist_ok=True)
    proc = subprocess.run([*SNAPFS, "mount", store, mnt, *opts], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench-mount: mount failed: {proc.stderr.strip()}")
    pid = mount_pid(mnt)
    assert pid is not None
    return pid


def snapfs_umount(mnt: str) -> None:
    subprocess.run([*SNAPFS, "umount", mnt], check=True)


# --- the ceiling: a minimal pyfuse3 filesystem serving bytes from memory --------------------------


def serve_ceiling(image: str, mnt: str, read_ahead_kb: int) -> None:
    """One file, `image`, held in memory; reads answered with a slice (no copy)."""
    import errno
    import stat

    import pyfuse3

    from bench.nullfs import run_mounted
    from snapfs.fs.mount import MountOptions, mount_options

    with open(image, "rb") as f:
        data = memoryview(f.read())
    mtime = time.time_ns()

    class Ceiling(pyfuse3.Operations):
        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            e.st_mode = (stat.S_IFDIR | 0o555) if ino == 1 else (stat.S_IFREG | 0o444)
            e.st_size = 0 if ino == 1 else len(data)
            e.st_nlink = 1
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = mtime
            e.attr_timeout = e.entry_timeout = 3600
            e.st_blksize = 128 * 1024
            return e

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            if parent_inode != 1 or name != b"image":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(2)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            return data[off : off + size]

    run_mounted(
        Ceiling(), mnt, mount_options(MountOptions(source=image, mountpoint=mnt)), read_ahead_kb
    )


def ceiling_read(image: str, mnt: str, read_ahead_kb: int) -> float:
    os.makedirs(mnt, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--serve-ceiling",
            image,
            mnt,
            str(read_ahead_kb),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench-mount: the ceiling filesystem did not start")
        drop_caches()
        best = 0.0
        for _ in range(2):
            drop_caches()
            best = max(best, read_seq(os.path.join(mnt, "image")))
        return best
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- the benchmark ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: str) -> dict:
    from snapfs.backup import BackupSource, backup
    from snapfs.store.backend import LocalBackend
    from snapfs.store.datastore import Datastore, parse_snapshot
    from snapfs.views.archives import SnapshotReader

    size = (128 if args.quick else 1024) * MiB
    files = 10_000 if args.quick else 100_000
    image = os.path.join(tmp, "disk.raw")
    tree = os.path.join(tmp, "tree")
    store = os.path.join(tmp, "store")
    t0 = time.perf_counter()
    if os.path.exists(os.path.join(store, "vm")) and os.path.getsize(image) == size:
        print("setup: reusing the data in --keep", file=sys.stderr)
    else:
        make_image(image, size)
        make_tree(tree, files)
        backup(
            store,
            [BackupSource("drive-scsi0.img", image)],
            backup_type="vm",
            backup_id="1",
            backup_time=1717236000,
        )
        backup(
            store,
            [BackupSource("root.pxar", tree)],
            backup_type="host",
            backup_id="tree",
            backup_time=1717236000,
        )
        print(
            f"setup: {size // MiB} MiB image, {files} files, backed up in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )

    datastore = Datastore(LocalBackend(store))
    index = (
        SnapshotReader(datastore, parse_snapshot(f"vm/1/{TIME}")).stream("drive-scsi0.img").index
    )
    digests = [d for _, _, d in index.chunks()]
    ra = str(args.read_ahead_kb)
    r: dict = {"image_mib": size // MiB, "files": files, "read_ahead_kb": args.read_ahead_kb}

    # Plain file and decode limit.
    drop_caches()
    r["plain_cold_mb_s"] = read_seq(image) / 1e6
    r["plain_warm_mb_s"] = max(read_seq(image) for _ in range(2)) / 1e6
    drop_caches()
    r["decode_limit_cold_mb_s"] = decode_limit(store, digests) / 1e6
    r["decode_limit_mb_s"] = decode_limit(store, digests) / 1e6

    # Through snapfs: cold (fresh mount each round, interleaved with the decode limit so machine
    # noise hits both alike), then warm (all chunks in snapfs's cache, page cache dropped).
    mnt = os.path.join(tmp, "mnt")
    cache = size + 64 * MiB
    path = os.path.join(mnt, "vm", "1", TIME, "drive-scsi0.img")
    cold, limits = [], [r["decode_limit_mb_s"] * 1e6]
    for round_ in range(args.rounds):
        pid = snapfs_mount(store, mnt, "--cache-size", str(cache), "--read-ahead-kb", ra)
        try:
            drop_caches()
            cold.append(read_seq(path))
            limits.append(decode_limit(store, digests))
            if round_ == args.rounds - 1:
                warm = []
                for _ in range(2):
                    drop_caches()
                    warm.append(read_seq(path))
                r["warm_mb_s"] = max(warm) / 1e6
                r["peak_rss_mib"] = peak_rss(pid) / MiB
                r["cache_size_mib"] = cache / MiB
        finally:
            snapfs_umount(mnt)
    r["cold_mb_s"] = max(cold) / 1e6
    r["decode_limit_mb_s"] = max(limits) / 1e6

    # find + stat over the tree archive, on a fresh mount with the default cache.
    pid = snapfs_mount(store, mnt, "--read-ahead-kb", ra)
    try:
        drop_caches()
        archive = os.path.join(mnt, "host", "tree", TIME, "root.pxar")
        start = time.perf_counter()
        out = subprocess.run(
            ["find", archive, "-printf", "%s %m %U %T@\n"], capture_output=True, check=True
        ).stdout
        r["find_stat_s"] = time.perf_counter() - start
        r["find_entries"] = out.count(b"\n")
        start = time.perf_counter()
        subprocess.run(
            ["find", archive, "-printf", "%s %m %U %T@\n"], capture_output=True, check=True
        )
        r["find_stat_warm_s"] = time.perf_counter() - start
        r["find_peak_rss_mib"] = peak_rss(pid) / MiB
    finally:
        snapfs_umount(mnt)

    r["ceiling_mb_s"] = ceiling_read(image, os.path.join(tmp, "ceiling"), args.read_ahead_kb) / 1e6
    r["cold_vs_decode_limit"] = r["cold_mb_s"] / r["decode_limit_mb_s"]
    r["cold_vs_decode_limit_cold"] = r["cold_mb_s"] / r["decode_limit_cold_mb_s"]
    r["warm_vs_ceiling"] = r["warm_mb_s"] / r["ceiling_mb_s"]
    r["cold_vs_plain_cold"] = r["cold_mb_s"] / r["plain_cold_mb_s"]
    r["warm_vs_plain_warm"] = r["warm_mb_s"] / r["plain_warm_mb_s"]
    r["rss_budget_ok"] = r["peak_rss_mib"] <= r["cache_size_mib"] + 100
    return r


def report(r: dict) -> None:
    print(f"image {r['image_mib']} MiB, kernel readahead {r['read_ahead_kb']} KiB")
    print(
        f"  plain file            cold {r['plain_cold_mb_s']:8.1f} MB/s   warm {r['plain_warm_mb_s']:8.1f} MB/s"
    )
    print(
        f"  decode limit (1 thr)  cold {r['decode_limit_cold_mb_s']:8.1f} MB/s   warm {r['decode_limit_mb_s']:8.1f} MB/s"
    )
    print(f"  ceiling (pyfuse3, memory)                 {r['ceiling_mb_s']:8.1f} MB/s")
    print(
        f"  snapfs mount          cold {r['cold_mb_s']:8.1f} MB/s   warm {r['warm_mb_s']:8.1f} MB/s"
    )
    print(
        f"  cold / decode limit {r['cold_vs_decode_limit']:.2f} (goal >= 0.6; vs cold limit "
        f"{r['cold_vs_decode_limit_cold']:.2f})   warm / ceiling {r['warm_vs_ceiling']:.2f} (goal >= 0.7)"
    )
    print(
        f"  cold / plain cold {r['cold_vs_plain_cold']:.2f}   warm / plain warm {r['warm_vs_plain_warm']:.2f}"
    )
    print(
        f"  peak RSS {r['peak_rss_mib']:.0f} MiB with a {r['cache_size_mib']:.0f} MiB cache "
        f"(goal <= cache + 100 MiB: {'ok' if r['rss_budget_ok'] else 'OVER'})"
    )
    print(
        f"find + stat over {r['find_entries']} entries: {r['find_stat_s']:.2f} s cold, "
        f"{r['find_stat_warm_s']:.2f} s again; peak RSS {r['find_peak_rss_mib']:.0f} MiB"
    )


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-ceiling":
        serve_ceiling(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(
        prog="scripts/bench-mount", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB image, 10,000 files")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--read-ahead-kb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2, help="cold rounds (best is reported)")
    parser.add_argument("--keep", help="work in this directory and keep it")
    args = parser.parse_args()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        result = run(args, args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="snapfs-bench-mount-", dir="/var/tmp")
        try:
            result = run(args, tmp)
        finally:
            for mnt in ("mnt", "ceiling"):
                subprocess.run(
                    ["fusermount3", "-u", "-z", os.path.join(tmp, mnt)], capture_output=True
                )
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
