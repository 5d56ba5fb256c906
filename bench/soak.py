"""Soak run: concurrent readers for a set time through a FUSE mount and through NBD, both reading
from S3 (SeaweedFS) over a slow, lossy link; every byte checked against the source, and the
snapfs processes watched for growth.

One snapshot made here with `snapfs backup` (an image and a pxar tree) is uploaded to a SeaweedFS
bucket (tests/support/s3server.py). `snapfs mount` and `snapfs nbd` each run in the network
namespace of tests/support/load.py, whose S3 traffic passes the delaying proxy
(tests/support/delayproxy.py) and loses 1% of its incoming packets (NBD's too: the export listens
on the namespace's address). The readers, spread evenly over six kinds: the image through the
mount at random and in sequence, pxar files through the mount whole and at random, the image over
NBD at random and in sequence. Page-cache pages are dropped before each mount read, so each reaches
snapfs.

Once the warm-up is over, and then every --sample-seconds (60), the threads (outside the S3
fetch-ahead pool), open fds and RSS of both snapfs processes are sampled; a least-squares slope
per minute is fitted to each. Exit status 1 on any mismatched byte, failed read, or growth: a
fitted rise over the run above GROWTH_ALLOWANCE.

Usage: scripts/soak [--minutes 10] [--readers 64] [--sample-seconds 60] [--warmup 30]  (root)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# The tests' S3 server, slow link and NBD client: scripts/soak puts tests/ on the path.
from support.delayproxy import DelayProxy
from support.load import DELAY, LOSS, lossy_namespace, proc_counts, s3_pool_threads, snapfs_in
from support.mounting import is_mounted, mount_pids, snapfs
from support.nbd_client import NbdClient
from support.s3server import BUCKET, start_server, upload_datastore

from bench.nbd import make_image
from snapfs.backup import BackupSource, backup

SNAPSHOT = "vm/900/2024-06-01T10:00:00Z"
CACHE = "32M"
IMAGE_SIZE = 64 << 20
KINDS = (
    "mount-image-random",
    "mount-image-sequential",
    "mount-file-whole",
    "mount-file-random",
    "nbd-random",
    "nbd-sequential",
)
#: A fitted rise over the run above this is growth: (threads, fds, RSS bytes).
GROWTH_ALLOWANCE = (4, 8, 64 << 20)
READ_SIZES = (4096, 65536, 131072, 1 << 20)
SAMPLE_MARGIN = 3.0  # seconds the load goes on after the last sample


@dataclass
class Source:
    image: bytes
    files: dict[str, bytes]  # path in the archive -> content


def make_tree(root: Path, rng: random.Random) -> dict[str, bytes]:
    """200 files in 10 folders, 0 B to 1 MiB (most small), some of repeating text."""
    files = {}
    for i in range(200):
        rel = f"d{i % 10}/f{i:03d}"
        size = min(1 << 20, int(rng.paretovariate(0.6) * 2000)) if i % 7 else 0
        data = rng.randbytes(size) if i % 3 else (b"soak line %d\n" % i * (size // 12 + 1))[:size]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


@dataclass
class Tally:
    reads: int = 0
    bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, kind: str, where: str, data: bytes, want: bytes) -> None:
        with self.lock:
            self.reads += 1
            self.bytes += len(data)
            self.by_kind[kind] += 1
            if data != want:
                self.mismatches.append(f"{kind} {where}: {len(data)} bytes differ from the source")

    def error(self, kind: str, where: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{kind} {where}: {exc}")


class Readers:
    """The reader threads: each runs one kind until `until`."""

    def __init__(self, source: Source, image: Path, archive: Path, nbd: tuple[str, int, str]):
        self.source = source
        self.image = image
        self.archive = archive
        self.nbd = nbd
        self.tally = Tally()

    def run(self, index: int, until: float) -> None:
        kind = KINDS[index % len(KINDS)]
        rng = random.Random(index)
        how = (
            self._mount_image_random,
            self._mount_image_sequential,
            self._mount_file_whole,
            self._mount_file_random,
            self._nbd_random,
            self._nbd_sequential,
        )[index % len(KINDS)]  # in the order of KINDS
        try:
            how(kind, rng, until)
        except Exception as exc:  # a reader that dies is a failure, never a silent stop
            self.tally.error(kind, f"reader {index}", exc)

    def _mount_read(self, kind: str, path: Path, want: bytes, ranges: Iterator[tuple[int, int]]):
        fd = os.open(path, os.O_RDONLY)
        try:
            for off, size in ranges:
                os.posix_fadvise(fd, off, size, os.POSIX_FADV_DONTNEED)
                try:
                    data = os.pread(fd, size, off)
                except OSError as exc:
                    self.tally.error(kind, f"{path.name}@{off}+{size}", exc)
                    continue
                self.tally.check(kind, f"{path.name}@{off}+{size}", data, want[off : off + size])
        finally:
            os.close(fd)

    def _mount_image_random(self, kind: str, rng: random.Random, until: float) -> None:
        image = self.source.image
        self._mount_read(kind, self.image, image, _random_ranges(rng, len(image), until))

    def _mount_image_sequential(self, kind: str, rng: random.Random, until: float) -> None:
        image = self.source.image
        self._mount_read(kind, self.image, image, _sequential_ranges(rng, len(image), until))

    def _mount_file_whole(self, kind: str, rng: random.Random, until: float) -> None:
        names = sorted(self.source.files)
        while time.monotonic() < until:
            rel = rng.choice(names)
            want = self.source.files[rel]
            ranges = ((off, 1 << 20) for off in range(0, max(len(want), 1), 1 << 20))
            self._mount_read(kind, self.archive / rel, want, ranges)

    def _mount_file_random(self, kind: str, rng: random.Random, until: float) -> None:
        names = sorted(rel for rel, data in self.source.files.items() if len(data) > 8192)
        while time.monotonic() < until:
            rel = rng.choice(names)
            want = self.source.files[rel]
            end = time.monotonic() + 1.0  # a few reads per file, then another file
            self._mount_read(kind, self.archive / rel, want, _random_ranges(rng, len(want), end))

    def _nbd(self, kind: str, ranges: Iterator[tuple[int, int]]) -> None:
        host, port, name = self.nbd
        image = self.source.image
        client = None
        try:
            for off, size in ranges:
                try:
                    if client is None:
                        client = NbdClient.connect((host, port))
                        client.go(name)
                    data = client.read(off, size)
                except (OSError, Exception) as exc:  # NbdClientError is an Exception
                    self.tally.error(kind, f"@{off}+{size}", exc)
                    if client is not None:
                        client.close()
                    client = None
                    continue
                self.tally.check(kind, f"@{off}+{size}", data, image[off : off + size])
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.disconnect()
                client.close()

    def _nbd_random(self, kind: str, rng: random.Random, until: float) -> None:
        self._nbd(kind, _random_ranges(rng, len(self.source.image), until))

    def _nbd_sequential(self, kind: str, rng: random.Random, until: float) -> None:
        self._nbd(kind, _sequential_ranges(rng, len(self.source.image), until))


def _random_ranges(rng: random.Random, size: int, until: float) -> Iterator[tuple[int, int]]:
    while time.monotonic() < until:
        n = min(rng.choice(READ_SIZES), size)
        yield rng.randrange(0, size - n + 1), n


def _sequential_ranges(rng: random.Random, size: int, until: float) -> Iterator[tuple[int, int]]:
    off = rng.randrange(0, size) & ~0xFFFFF
    while time.monotonic() < until:
        n = min(1 << 20, size - off)
        yield off, n
        off = 0 if off + n >= size else off + n


@dataclass
class Watched:
    name: str
    pid: int
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (min, thr, fds, rss)

    def sample(self, minute: float) -> str:
        threads, fds, rss = proc_counts(self.pid)
        self.samples.append((minute, threads, fds, rss))
        pool = s3_pool_threads(self.pid)
        return f"{self.name}: threads {threads} (+{pool} S3 pool), fds {fds}, RSS {rss >> 20} MiB"

    def growth(self) -> list[str]:
        """The metrics whose fitted rise over the run exceeds GROWTH_ALLOWANCE, with slopes."""
        out, report = [], []
        minutes = [s[0] for s in self.samples]
        span = minutes[-1] - minutes[0]
        for i, (label, unit, scale) in enumerate(
            (("threads", "", 1), ("fds", "", 1), ("RSS", " MiB", 1 << 20))
        ):
            values = [s[i + 1] for s in self.samples]
            slope = _slope(minutes, values)
            report.append(f"{label} {slope / scale:+.2f}{unit}/min")
            if slope * span > GROWTH_ALLOWANCE[i]:
                out.append(f"{self.name}: {label} grows {slope / scale:+.2f}{unit}/min")
        print(f"  {self.name} slopes: {', '.join(report)}")
        return out


def _slope(xs: list[float], ys: list[int]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


@contextlib.contextmanager
def served(work: Path, source_url: str, env: dict[str, str], netns: str, theirs: str):
    """`snapfs mount` and `snapfs nbd` in the namespace; yields (mount point, mount pid, nbd
    process, (host, port, export name))."""
    mnt = work / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        snapfs_in(netns) + ["mount", source_url, str(mnt), "--cache-size", CACHE],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"soak: snapfs mount failed: {proc.stderr.strip()}")
    nbd = None
    try:
        (mount_pid,) = mount_pids(mnt)
        nbd = subprocess.Popen(
            snapfs_in(netns)
            + ["nbd", source_url, SNAPSHOT, "drive-scsi0.img", "--listen", f"{theirs}:0"]
            + ["--cache-size", CACHE],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        url = nbd.stdout.readline().strip()  # the export's URL, once it listens
        if not url.startswith("nbd://"):
            raise SystemExit(f"soak: snapfs nbd did not start (exit {nbd.wait(timeout=30)})")
        address, name = url.removeprefix("nbd://").split("/", 1)
        host, port = address.rsplit(":", 1)
        yield mnt, mount_pid, nbd, (host, int(port), name)
    finally:
        if nbd is not None and nbd.poll() is None:
            nbd.send_signal(signal.SIGTERM)
            try:
                nbd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                nbd.kill()
                nbd.wait()
        done = snapfs("umount", mnt)
        if done.returncode != 0 or is_mounted(mnt):
            print(f"soak: umount failed: {done.stderr.strip()}", file=sys.stderr)


def run_phase(readers: Readers, count: int, seconds: float, tick: Callable[[float], None]) -> None:
    """`count` readers for `seconds`; `tick(elapsed)` is called about every second meanwhile."""
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=readers.run, args=(i, until), name=f"soak-{i}", daemon=True)
        for i in range(count)
    ]
    for t in threads:
        t.start()
    start = time.monotonic()
    pause = threading.Event()  # never set: the sampling period, not a synchronisation
    while any(t.is_alive() for t in threads):
        tick(time.monotonic() - start)
        pause.wait(1.0)
    for t in threads:
        t.join()


def soak(args: argparse.Namespace, work: Path) -> int:
    rng = random.Random(900)
    image_path = work / "disk.raw"
    make_image(image_path, IMAGE_SIZE)
    tree = work / "tree"
    tree.mkdir()
    source = Source(image_path.read_bytes(), make_tree(tree, rng))
    local = work / "ds"
    backup(
        local,
        [BackupSource("drive-scsi0.img", str(image_path)), BackupSource("root.pxar", str(tree))],
        backup_type="vm",
        backup_id="900",
        backup_time=1717236000,
    )
    server = start_server(work / "seaweed")
    try:
        store = "soak"
        upload_datastore(server.client(), BUCKET, store, local)
        s3_port = int(server.endpoint.rsplit(":", 1)[1].strip("/"))
        with lossy_namespace() as (netns, ours, theirs):
            proxy = DelayProxy(ours, ("127.0.0.1", s3_port), delay=DELAY)
            env = server.reader_env()
            env["AWS_ENDPOINT_URL"] = f"http://{ours}:{proxy.port}"
            try:
                with served(work, f"s3://{BUCKET}/{store}", env, netns, theirs) as (
                    mnt,
                    mount_pid,
                    nbd,
                    nbd_address,
                ):
                    return hammer(args, source, mnt, mount_pid, nbd.pid, nbd_address)
            finally:
                proxy.close()
    finally:
        server.stop()


def hammer(
    args: argparse.Namespace,
    source: Source,
    mnt: Path,
    mount_pid: int,
    nbd_pid: int,
    nbd_address: tuple[str, int, str],
) -> int:
    snapshot = mnt / SNAPSHOT
    readers = Readers(source, snapshot / "drive-scsi0.img", snapshot / "root.pxar", nbd_address)
    watched = [Watched("mount", mount_pid), Watched("nbd", nbd_pid)]
    print(
        f"soak: {args.readers} readers ({', '.join(KINDS)}), {args.minutes:g} min after a "
        f"{args.warmup:g} s warm-up; S3 +{DELAY * 2000:.0f} ms per round trip, {LOSS:.0%} loss"
    )
    warmup = args.warmup
    next_sample = [0.0]
    end = args.minutes * 60

    def tick(elapsed: float) -> None:
        elapsed -= warmup  # the clock of the samples starts after the warm-up
        if elapsed >= next_sample[0] <= end:  # every period, and once at the end
            minute = next_sample[0] / 60
            lines = [w.sample(minute) for w in watched]
            tally = readers.tally
            print(
                f"[{minute:5.2f} min] {tally.reads} reads, {tally.bytes / 1e9:.2f} GB, "
                f"{len(tally.mismatches)} mismatches, {len(tally.errors)} errors; "
                + "; ".join(lines),
                flush=True,
            )
            nxt = next_sample[0] + args.sample_seconds
            next_sample[0] = min(nxt, end) if next_sample[0] < end else end + 1

    # One load throughout (readers do not restart after the warm-up), a little longer than
    # asked, so the last sample is taken under the same load as the others.
    started = time.monotonic() + warmup
    run_phase(readers, args.readers, warmup + end + SAMPLE_MARGIN, tick)
    idle = "; ".join(
        f"{w.name}: threads {c[0]}, fds {c[1]}, RSS {c[2] >> 20} MiB"
        for w in watched
        for c in [proc_counts(w.pid)]
    )
    print(f"[readers stopped, {(time.monotonic() - started) / 60:.2f} min] {idle}")
    tally = readers.tally
    print(
        f"soak: {tally.reads} reads, {tally.bytes / 1e9:.2f} GB checked "
        f"({', '.join(f'{k} {v}' for k, v in tally.by_kind.items())}); "
        f"mismatches {len(tally.mismatches)}, errors {len(tally.errors)}"
    )
    for line in (tally.mismatches + tally.errors)[:20]:
        print(f"  {line}")
    growth = [g for w in watched for g in w.growth()]
    for line in growth:
        print(f"soak: growth: {line}")
    failed = bool(tally.mismatches or tally.errors or growth or not tally.reads)
    print("soak: FAILED" if failed else "soak: ok")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--readers", type=int, default=64, help="concurrent readers (64)")
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="sampling period (60)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before sampling (30)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp folder)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.readers < len(KINDS) or args.sample_seconds <= 0:
        parser.error(f"--minutes and --sample-seconds > 0, --readers >= {len(KINDS)}")
    if os.geteuid() != 0:
        parser.error("needs root (a network namespace and a FUSE mount)")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return soak(args, args.keep)
    work = Path(tempfile.mkdtemp(prefix="snapfs-soak."))
    try:
        return soak(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
