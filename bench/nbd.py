"""Benchmark of the NBD export against the FUSE file: what a booting or running guest feels.

On a datastore made here with `snapfs backup` (a VM-like image: random, text and zero regions):

* 4 KiB random reads (IOPS) through `snapfs nbd` (a pipelined client, 16 requests in flight, as
  QEMU keeps several) and through the FUSE file (pread, one thread), cold (fresh process, empty
  chunk cache) and warm (same offsets again: every chunk decoded in memory);
* 1 MiB sequential reads (MB/s), cold and warm, both ways;
* the time a Linux guest (Debian kernel, busybox initramfs; TCG) takes to boot from the backup
  through `snapfs nbd` + a qcow2 overlay, mount its disk, read a file and write one; against the
  same guest booting from the raw disk file.

The page cache is dropped before each FUSE pass, so each read reaches snapfs.
Usage: scripts/bench-nbd [--quick] [--json] [--size-mb N] [--keep DIR]   (needs root)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The tests' guest helpers (tests/support/guest.py): scripts/bench-nbd puts tests/ on the path.
from support.guest import boot_guest, build_disk, build_initramfs, guest_init, guest_kit
from support.nbd_client import NbdClient

from snapfs.nbd import protocol as P

SNAPSHOT = "vm/100/2024-06-01T10:00:00Z"
SNAPFS = [sys.executable, "-m", "snapfs"]


def make_image(path: Path, size: int) -> None:
    rng = random.Random(42)
    line = b"the quick brown fox jumps over the lazy dog, block %08d\n"
    with open(path, "wb") as f:
        written = 0
        i = 0
        while written < size:
            kind = i % 4
            if kind == 0:
                block = rng.randbytes(1 << 20)
            elif kind == 1:
                block = b"".join(line % (written + j) for j in range(18000))[: 1 << 20]
            elif kind == 2:
                block = bytes(1 << 20)
            else:
                block = rng.randbytes(1 << 19) + bytes(1 << 19)
            f.write(block[: size - written])
            written += len(block[: size - written])
            i += 1


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Server:
    def __init__(self, store: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*SNAPFS, "nbd", str(store), SNAPSHOT, "drive-scsi0.img", "--listen", "127.0.0.1:0",
             "--cache-size", "1G", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.url = self.proc.stdout.readline().strip()
        host_port = self.url.removeprefix("nbd://").split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self.address = (host, int(port))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def nbd_random(client: NbdClient, offsets: list[int], depth: int = 16) -> float:
    """IOPS of 4 KiB reads with `depth` requests in flight."""
    started = time.perf_counter()
    inflight = 0
    for off in offsets:
        client.send_request(P.CMD_READ, off, 4096)
        inflight += 1
        if inflight >= depth:
            _, err, _ = client.recv_reply(4096)
            assert not err
            inflight -= 1
    for _ in range(inflight):
        _, err, _ = client.recv_reply(4096)
        assert not err
    return len(offsets) / (time.perf_counter() - started)


def nbd_sequential(client: NbdClient, size: int, depth: int = 8) -> float:
    started = time.perf_counter()
    block = 1 << 20
    offsets = list(range(0, size, block))
    inflight = []
    for off in offsets:
        n = min(block, size - off)
        client.send_request(P.CMD_READ, off, n)
        inflight.append(n)
        if len(inflight) >= depth:
            _, err, _ = client.recv_reply(inflight.pop(0))
            assert not err
    for n in inflight:
        _, err, _ = client.recv_reply(n)
        assert not err
    return size / (time.perf_counter() - started) / 1e6


def file_random(path: Path, offsets: list[int]) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        for off in offsets:
            os.pread(fd, 4096, off)
        return len(offsets) / (time.perf_counter() - started)
    finally:
        os.close(fd)


def file_sequential(path: Path, size: int) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        off = 0
        while off < size:
            off += len(os.pread(fd, 1 << 20, off))
        return size / (time.perf_counter() - started) / 1e6
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-nbd", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB image, fewer reads")
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench-nbd: needs root (drop_caches, FUSE mount)", file=sys.stderr)
        return 2
    size = (64 if args.quick else args.size_mb) << 20
    count = 2000 if args.quick else 10000
    work = Path(args.keep or tempfile.mkdtemp(prefix="snapfs-bench-nbd-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    try:
        raw = work / "disk.raw"
        make_image(raw, size)
        store = work / "ds"
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run([*SNAPFS, "backup", str(store), f"drive-scsi0.img:{raw}", "--time",
                        "2024-06-01T10:00:00Z"], check=True, capture_output=True)  # fmt: skip
        rng = random.Random(7)
        offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(count)]

        drop_caches()
        server = Server(store)
        try:
            client = NbdClient.connect(server.address)
            client.go("")
            results["nbd_rand4k_cold_iops"] = nbd_random(client, offsets)
            results["nbd_rand4k_warm_iops"] = nbd_random(client, offsets)
            client.disconnect()
        finally:
            server.stop()
        drop_caches()
        server = Server(store)
        try:
            client = NbdClient.connect(server.address)
            client.go("")
            results["nbd_seq1m_cold_mbs"] = nbd_sequential(client, size)
            results["nbd_seq1m_warm_mbs"] = nbd_sequential(client, size)
            client.disconnect()
        finally:
            server.stop()

        mnt = work / "mnt"
        mnt.mkdir(exist_ok=True)
        image = mnt / SNAPSHOT / "drive-scsi0.img"
        for kind in ("rand", "seq"):
            drop_caches()
            subprocess.run(
                [*SNAPFS, "mount", "--cache-size", "1G", str(store), str(mnt)], check=True
            )
            try:
                if kind == "rand":
                    results["fuse_rand4k_cold_iops"] = file_random(image, offsets)
                    drop_caches()
                    results["fuse_rand4k_warm_iops"] = file_random(image, offsets)
                else:
                    results["fuse_seq1m_cold_mbs"] = file_sequential(image, size)
                    drop_caches()
                    results["fuse_seq1m_warm_mbs"] = file_sequential(image, size)
            finally:
                subprocess.run([*SNAPFS, "umount", str(mnt)], check=True)

        results.update(boot_times(work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:28} {value:12.1f}")
    return 0


def boot_times(work: Path) -> dict[str, float]:
    kit = guest_kit()
    disk = work / "guest.raw"
    build_disk(disk, {"hello.txt": b"bench\n"})
    store = work / "guest-ds"
    shutil.rmtree(store, ignore_errors=True)
    subprocess.run([*SNAPFS, "backup", str(store), f"drive-scsi0.img:{disk}", "--time",
                    "2024-06-01T10:00:00Z"], check=True, capture_output=True)  # fmt: skip
    initrd = build_initramfs(kit, guest_init(kit, "hello.txt", "new.txt", "x"), work / "initrd")
    out: dict[str, float] = {}
    direct = work / "direct.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "raw",
                    str(direct)], check=True)  # fmt: skip
    console, out["boot_from_raw_file_s"] = boot_guest(kit, initrd, str(direct))
    assert "SNAPFS-GUEST-WROTE" in console, console[-2000:]
    drop_caches()
    server = Server(store)
    try:
        overlay = work / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", server.url, "-F", "raw",
                        str(overlay)], check=True)  # fmt: skip
        console, out["boot_from_backup_nbd_s"] = boot_guest(kit, initrd, str(overlay))
        assert "SNAPFS-GUEST-WROTE" in console, console[-2000:]
    finally:
        server.stop()
    return out


if __name__ == "__main__":
    sys.exit(main())
