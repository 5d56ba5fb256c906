"""Fault matrix, load row: 64 concurrent readers on a mount over S3 with added latency and 1%
packet loss, for ~2 minutes: no mismatch, no error, bounded memory, no leaked threads or fds.

The network is made for real, not simulated in snapfs (support/load.py): the mount process runs
in a network namespace of its own, reaching SeaweedFS through a veth pair and a delaying TCP proxy
in this process; inside the namespace, iptables drops 1% of the packets the mount receives.
SNAPFS_LOAD_SECONDS and SNAPFS_LOAD_READERS make the run longer or wider; scripts/soak is the
longer run with more kinds of readers.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.delayproxy import DelayProxy
from support.load import (
    DELAY,
    S3_POOL_BOUND,
    lossy_namespace,
    proc_counts,
    s3_pool_threads,
    snapfs_in,
)
from support.mounting import is_mounted, mount_pids, snapfs
from support.s3server import BUCKET, upload_datastore

from snapfs.backup import backup, parse_backup_source

DURATION = float(os.environ.get("SNAPFS_LOAD_SECONDS", "120"))
READERS = int(os.environ.get("SNAPFS_LOAD_READERS", "64"))
CACHE = 32 * 1024 * 1024
IMAGE_SIZE = 40 * 1024 * 1024
SNAPSHOT = "vm/900/2024-06-01T10:00:00Z"


@pytest.mark.slow
@pytest.mark.timeout(DURATION + 240)
def test_64_readers_over_a_slow_lossy_s3_link(s3server, tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(random.Random(7).randbytes(IMAGE_SIZE))
    truth = image.read_bytes()
    local = tmp_path / "ds"
    backup(
        local,
        [parse_backup_source(f"drive-scsi0.img:{image}")],
        backup_type="vm",
        backup_id="900",
        backup_time=1717236000,
    )
    store = f"load{os.getpid()}"
    upload_datastore(s3server.client(), BUCKET, store, local)
    s3_port = int(s3server.endpoint.rsplit(":", 1)[1].strip("/"))

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with lossy_namespace() as (netns, ours, _theirs):
        proxy = DelayProxy(ours, ("127.0.0.1", s3_port), delay=DELAY)
        env = s3server.reader_env()
        env["AWS_ENDPOINT_URL"] = f"http://{ours}:{proxy.port}"
        try:
            proc = subprocess.run(
                snapfs_in(netns)
                + ["mount", f"s3://{BUCKET}/{store}", str(mnt), "--cache-size", str(CACHE)],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            try:
                _hammer(mnt, truth)
            finally:
                done = snapfs("umount", mnt)
                assert done.returncode == 0, done.stderr
                assert not is_mounted(mnt)
        finally:
            proxy.close()


def _hammer(mnt: Path, truth: bytes) -> None:
    path = mnt / SNAPSHOT / "drive-scsi0.img"
    assert path.stat().st_size == len(truth)
    (pid,) = mount_pids(mnt)
    stats = {"reads": 0, "bytes": 0, "mismatches": [], "errors": []}
    lock = threading.Lock()

    def reader(seed: int, until: float) -> None:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            while time.monotonic() < until:
                size = rng.choice((4096, 65536, 131072, 1 << 20))
                off = rng.randrange(0, len(truth) - size)
                # Drop our cached pages of this range so the read reaches the mount.
                os.posix_fadvise(fd, off, size, os.POSIX_FADV_DONTNEED)
                try:
                    data = os.pread(fd, size, off)
                except OSError as exc:
                    with lock:
                        stats["errors"].append((off, size, exc.errno))
                    continue
                with lock:
                    stats["reads"] += 1
                    stats["bytes"] += len(data)
                    if data != truth[off : off + size]:
                        stats["mismatches"].append((off, size))
            with lock:
                _ = os.listdir(mnt / "vm/900")  # listings keep working under load
        finally:
            os.close(fd)

    def run(seconds: float) -> None:
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=reader, args=(i, until)) for i in range(READERS)]
        for t in threads:
            t.start()
        peak = 0
        tick = threading.Event()  # never set: a 0.5 s sampling period, not a synchronisation
        while any(t.is_alive() for t in threads):
            rss = proc_counts(pid)[2]
            peak = max(peak, rss)
            stats.setdefault("rss_samples", []).append(rss >> 20)
            tick.wait(0.5)
        for t in threads:
            t.join()
        stats["peak_rss"] = max(stats.get("peak_rss", 0), peak)

    run(min(10.0, DURATION / 4))  # warm up: every worker thread and connection made
    warm_threads, warm_fds, warm_rss = proc_counts(pid)
    run(DURATION)
    end_threads, end_fds, end_rss = proc_counts(pid)
    print(
        f"load: {stats['reads']} reads, {stats['bytes'] / 1e6:.0f} MB, errors "
        f"{len(stats['errors'])}, threads {warm_threads}->{end_threads}, fds {warm_fds}->{end_fds}, "
        f"rss {warm_rss >> 20}->{end_rss >> 20} MiB, peak {stats['peak_rss'] >> 20} MiB; "
        f"samples (MiB, every 5 s) {stats['rss_samples'][::10]}"
    )
    assert stats["mismatches"] == []
    assert stats["errors"] == []
    assert stats["reads"] > READERS * 10
    assert end_threads <= warm_threads
    assert s3_pool_threads(pid) <= S3_POOL_BOUND
    assert end_fds <= warm_fds + 16  # the S3 connection pool may reconnect, never grow unbounded
    # Memory: the chunk cache, readahead windows and S3 buffers, never a growth with time.
    assert stats["peak_rss"] < warm_rss + 4 * CACHE + 256 * 1024 * 1024
