"""The benchmarks: each mounts fresh, measures, verifies what it read, and records peak RSS.

Interleaved: every benchmark runs for every tool before the next benchmark starts, so a slow
phase of the machine hits all tools alike. "Cold" = the tool's persistent caches emptied, a
fresh mount (its in-memory caches empty) and the page cache dropped right before the timed
operation; "warm" = the same operation again at once, nothing dropped (what a user sees the
second time, page cache included). The groups `limits` and `s3` measure snapfs alone, as lines
(lines.py) beside the comparison: limits.py and s3.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import limits, s3, serve, split
from .data import BIGDIR, IMAGE_NAME, Manifest, Sizes
from .lines import LineSample, summarize
from .probes import (
    drop_caches,
    log,
    peak_rss_mib,
    read_random,
    read_sequential,
    start_profiler,
    stop_profiler,
    timed_find,
    timed_tar,
    wait_listing,
)
from .tools import Mount, Restic, Snapfs, Tool, ToolError, is_mounted
from .verify import check_ls_l, check_tree, check_walk


@dataclass(frozen=True)
class Benchmark:
    id: str
    title: str
    unit: str
    better: str  # "higher" | "lower"
    group: str


BENCHMARKS = [
    Benchmark(
        "mount-first-ls", "mount until the first ls of a snapshot returns", "s", "lower", "mount"
    ),
    Benchmark("find-stat-cold", "find + stat of every tree entry, cold", "s", "lower", "walk"),
    Benchmark("find-stat-warm", "find + stat of every tree entry, warm", "s", "lower", "walk"),
    Benchmark(
        "find-stat-next",
        "find + stat, next mount (page cache dropped, tool's own caches kept)",
        "s",
        "lower",
        "walk",
    ),
    Benchmark("ls-l-bigdir-cold", "ls -l of the huge directory, cold", "s", "lower", "lsl"),
    Benchmark("ls-l-bigdir-warm", "ls -l of the huge directory, warm", "s", "lower", "lsl"),
    Benchmark("image-seq-cold", "sequential read of the image, cold", "MB/s", "higher", "seq"),
    Benchmark("image-seq-warm", "sequential read of the image, warm", "MB/s", "higher", "seq"),
    Benchmark("tree-tar-cold", "tar of all files (every byte), cold", "MB/s", "higher", "tar"),
    Benchmark("tree-tar-warm", "tar of all files (every byte), warm", "MB/s", "higher", "tar"),
    Benchmark(
        "image-rand4k-cold", "random 4 KiB reads of the image, cold", "IOPS", "higher", "random"
    ),
    Benchmark(
        "image-rand4k-warm", "random 4 KiB reads of the image, warm", "IOPS", "higher", "random"
    ),
    Benchmark(
        "image-rand4k-spread-cold",
        "random 4 KiB reads of the image, one per 4 MiB region, cold",
        "IOPS",
        "higher",
        "random",
    ),
    Benchmark("rss-walk", "peak RSS of the FUSE process, tree walk", "MiB", "lower", "walk"),
    Benchmark("rss-image-read", "peak RSS of the FUSE process, image reads", "MiB", "lower", "seq"),
    Benchmark(
        "rss-tree-read", "peak RSS of the FUSE process, tar of all files", "MiB", "lower", "tar"
    ),
    Benchmark("rss-max", "peak RSS of the FUSE process, whole run", "MiB", "lower", "rss"),
    Benchmark("restore-tree", "restore of the tree (to disk, synced)", "s", "lower", "restore"),
    Benchmark("restore-image", "restore of the image (to disk, synced)", "s", "lower", "restore"),
]
BY_ID = {b.id: b for b in BENCHMARKS}
# The groups of lines measured for snapfs alone (no peer): this machine's limits, S3, serve, and
# the tree as a split archive.
LINES = [*limits.LINES, *s3.LINES, *serve.LINES, *split.LINES]
LINE_BY_ID = {line.id: line for line in LINES}
SNAPFS_ONLY = ("limits", "s3", "serve", "split")
#: The least time the warm random reads are timed over (passes over the same offsets repeated).
WARM_RANDOM_SECONDS = 0.5
#: The spread random reads read once in each region of this size: an image chunk of PBS's.
SPREAD_REGION = 4 << 20
#: Under the work directory: what `Runner.discard` set aside, deleted when the run ends.
DISCARDED = "discarded"
GROUPS = ["mount", "walk", "lsl", "seq", "random", "tar", "restore", *SNAPFS_ONLY]


@dataclass
class Sample:
    value: float | None
    verified: bool
    note: str = ""


@dataclass
class Runner:
    tools: list[Tool]
    manifest: Manifest
    sizes: Sizes
    work: str
    data_dir: str
    profile_dir: str | None = None
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    rss: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    lines: dict[str, list[LineSample]] = field(default_factory=dict)
    _mounts: int = 0
    _discarded: int = 0
    _s3: s3.S3Lines | None = None
    _serve: serve.ServeLines | None = None

    # --- bookkeeping -----------------------------------------------------------------------------

    def discard(self, path: str) -> None:
        """Set a tree the run made (a restore's) aside, to be deleted when the run ends.

        Deleting 100,000 files slows every file made on the same disk for minutes after, where
        ext4 runs without a journal (the bench machine's root disk does): its inode allocator
        passes over each inode deleted in the last minute (five while its inode table block is
        dirty), one buffer-cache lookup each. A restore just after such a deletion spent a fifth
        of its CPU there and took 8.2-9.9 s with its sync, against 6.3-7.1 on a disk nothing
        was deleted from; the tool restoring after another paid for the other's deletion. Set
        aside, no measured restore follows a deletion. The disk needs room for them all (about
        15 GB at full size and three rounds).
        """
        if not os.path.lexists(path):
            return
        self._discarded += 1
        aside = os.path.join(self.work, DISCARDED)
        os.makedirs(aside, exist_ok=True)
        os.rename(path, os.path.join(aside, f"{self._discarded}-{os.path.basename(path)}"))

    def record(self, bench: str, tool: Tool, value: float | None, problem: str | None) -> None:
        sample = Sample(value, problem is None, problem or "")
        self.samples.setdefault((bench, tool.name), []).append(sample)
        shown = "n/a" if value is None else f"{value:.4g} {BY_ID[bench].unit}"
        flag = "ok" if problem is None else f"NOT VERIFIED: {problem}"
        log(f"  {bench:18} {tool.name:7} {shown:>16}  {flag}")

    def record_line(self, line: str, value: float | None, problem: str | None, **extra) -> None:
        """A figure of a line measured for snapfs alone (lines.py); `extra`: what it counted."""
        self.lines.setdefault(line, []).append(
            LineSample(value, problem is None, problem or "", extra)
        )
        shown = "n/a" if value is None else f"{value:.4g} {LINE_BY_ID[line].unit}"
        flag = "ok" if problem is None else f"NOT VERIFIED: {problem}"
        log(f"  {line:22} {shown:>18}  {flag}")

    def attempt(self, lines: list[str], measure, *args) -> None:
        """Runs measure(*args); if it fails, each of `lines` it did not record this time fails
        with it, and the next measurement goes on."""
        before = {line: len(self.lines.get(line, ())) for line in lines}
        try:
            measure(*args)
        except Exception as e:  # a failed line is reported as such; the run goes on
            for line in lines:
                if len(self.lines.get(line, ())) == before[line]:
                    self.record_line(line, None, f"failed: {type(e).__name__}: {e}")

    def line_results(self, group: str) -> list[dict]:
        return [
            summarize(line, self.lines[line.id])
            for line in LINES
            if line.group == group and line.id in self.lines
        ]

    def results(self) -> list[dict]:
        out = []
        for bench in BENCHMARKS:
            for tool in self.tools:
                samples = self.samples.get((bench.id, tool.name))
                if bench.id == "rss-max":
                    peaks = self.rss.get(tool.name)
                    if not peaks:
                        continue
                    samples = [Sample(max(v for v, _ in peaks), all(ok for _, ok in peaks))]
                if not samples:
                    continue
                values = [s.value for s in samples if s.value is not None]
                out.append(
                    {
                        "benchmark": bench.id,
                        "tool": tool.name,
                        "value": statistics.median(values)
                        if values and len(values) == len(samples)
                        else None,
                        "unit": bench.unit,
                        "better": bench.better,
                        "verified": all(s.verified for s in samples),
                        "title": bench.title,
                        **(
                            {"note": "; ".join(s.note for s in samples if s.note)}
                            if any(s.note for s in samples)
                            else {}
                        ),
                    }
                )
        return out

    # --- mounts --------------------------------------------------------------------------------

    def cold(self, tool: Tool, *, keep_caches: bool = False) -> None:
        if not keep_caches:
            tool.clear_caches()
        drop_caches()

    def _mountpoint(self, tool: Tool) -> str:
        self._mounts += 1
        mnt = os.path.join(self.work, "mnt", f"{tool.name}-{self._mounts}")
        os.makedirs(mnt)
        return mnt

    @contextlib.contextmanager
    def mounted(
        self, tool: Tool, label: str, rss_bench: str | None = None, *, keep_caches: bool = False
    ) -> Iterator[Mount]:
        """A fresh mount, ready (its tree's root answers); peak RSS recorded at the end. With
        `keep_caches` the tool's persistent caches stay (what a user sees on the next mount)."""
        mnt = self._mountpoint(tool)
        self.cold(tool, keep_caches=keep_caches)
        mount = tool.start_mount(mnt)
        profiler = None
        state = {"ok": True}
        try:
            wait_listing(mount, tool.tree_path(mnt))
            pid = mount.find_pid()
            if self.profile_dir and tool.name == "snapfs" and pid:
                profiler = start_profiler(pid, os.path.join(self.profile_dir, f"{label}.txt"))
            yield mount
        except Exception:
            state["ok"] = False
            raise
        finally:
            if profiler:
                stop_profiler(profiler)
            pid = mount.find_pid()
            peak = peak_rss_mib(pid) if pid else None
            if peak is not None:
                self.rss.setdefault(tool.name, []).append((peak, state["ok"]))
                if rss_bench:
                    self.record(
                        rss_bench,
                        tool,
                        peak,
                        None if state["ok"] else "a read in this mount failed",
                    )
            mount.close()
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
            with contextlib.suppress(OSError):
                os.rmdir(mnt)

    # --- the benchmarks -----------------------------------------------------------------------

    def run_group(self, group: str, tool: Tool) -> None:
        if group in SNAPFS_ONLY:
            ids = [line.id for line in LINES if line.group == group]
            self.attempt(ids, getattr(self, f"bench_{group}"), tool)
            return
        try:
            getattr(self, f"bench_{group}")(tool)
        except (ToolError, OSError, subprocess.SubprocessError, TimeoutError) as e:
            for bench in BENCHMARKS:
                if bench.group == group and (bench.id, tool.name) not in self.samples:
                    self.record(bench.id, tool, None, f"failed: {e}")

    def bench_mount(self, tool: Tool) -> None:
        mnt = self._mountpoint(tool)
        self.cold(tool)
        start = time.perf_counter()
        mount = tool.start_mount(mnt)
        try:
            names = wait_listing(mount, tool.tree_path(mnt))
            elapsed = time.perf_counter() - start
            problem = (
                None
                if names == self.manifest.top_level
                else f"listing {names[:5]} differs from the source"
            )
            self.record("mount-first-ls", tool, elapsed, problem)
            pid = mount.find_pid()
            if pid:
                self.rss.setdefault(tool.name, []).append((peak_rss_mib(pid), problem is None))
        finally:
            mount.close()
            with contextlib.suppress(OSError):
                os.rmdir(mnt)

    def bench_walk(self, tool: Tool) -> None:
        with self.mounted(tool, "walk", "rss-walk") as mount:
            for bench in ("find-stat-cold", "find-stat-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                self._timed_find(bench, tool, mount)
        with self.mounted(tool, "walk-next", keep_caches=True) as mount:
            self._timed_find("find-stat-next", tool, mount)

    def _timed_find(self, bench: str, tool: Tool, mount: Mount) -> None:
        elapsed, lines = timed_find(tool.tree_path(mount.mountpoint))
        self.record(bench, tool, elapsed, check_walk(lines, self.manifest))

    def bench_lsl(self, tool: Tool) -> None:
        with self.mounted(tool, "lsl") as mount:
            bigdir = os.path.join(tool.tree_path(mount.mountpoint), BIGDIR)
            for bench in ("ls-l-bigdir-cold", "ls-l-bigdir-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                start = time.perf_counter()
                out = subprocess.run(
                    ["ls", "-l", "-n", "--time-style=+%s", bigdir],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                elapsed = time.perf_counter() - start
                self.record(bench, tool, elapsed, check_ls_l(out, self.manifest))

    def bench_seq(self, tool: Tool) -> None:
        with self.mounted(tool, "seq", "rss-image-read") as mount:
            path = tool.image_path(mount.mountpoint)
            for bench in ("image-seq-cold", "image-seq-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                rate, digest, size = read_sequential(path)
                problem = None
                if (size, digest) != (self.manifest.image_size, self.manifest.image_sha256):
                    problem = f"read {size} bytes with another SHA-256 than the source"
                self.record(bench, tool, rate / 1e6, problem)

    def bench_random(self, tool: Tool) -> None:
        """Random 4 KiB reads: anywhere in the image (some land near earlier ones, as a VM's
        do), then again warm; and, on a fresh mount, one in each 4 MiB region in a random order,
        so that every read is the first in its chunk (what a cold read costs alone)."""
        offsets, expected = self._random_plan(self._anywhere(random.Random(7)))
        with self.mounted(tool, "random", None) as mount:
            path = tool.image_path(mount.mountpoint)
            for bench in ("image-rand4k-cold", "image-rand4k-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                warm = WARM_RANDOM_SECONDS if bench.endswith("warm") else 0.0
                iops, bad = read_random(path, offsets, expected, min_seconds=warm)
                self.record(
                    bench, tool, iops, f"{bad} reads differ from the source" if bad else None
                )
        offsets, expected = self._random_plan(self._one_per_region(random.Random(7)))
        with self.mounted(tool, "random-spread", None) as mount:
            drop_caches()
            iops, bad = read_random(tool.image_path(mount.mountpoint), offsets, expected)
            self.record(
                "image-rand4k-spread-cold",
                tool,
                iops,
                f"{bad} reads differ from the source" if bad else None,
            )

    def _anywhere(self, rng: random.Random) -> list[int]:
        blocks = self.manifest.image_size // 4096
        return [rng.randrange(blocks) * 4096 for _ in range(self.sizes.random_reads)]

    def _one_per_region(self, rng: random.Random) -> list[int]:
        regions = list(range(self.manifest.image_size // SPREAD_REGION))
        rng.shuffle(regions)
        return [r * SPREAD_REGION + rng.randrange(SPREAD_REGION // 4096) * 4096 for r in regions]

    def _random_plan(self, offsets: list[int]) -> tuple[list[int], list[bytes]]:
        """The offsets, and the 4 KiB the source holds at each."""
        fd = os.open(os.path.join(self.data_dir, IMAGE_NAME), os.O_RDONLY)
        try:
            expected = [os.pread(fd, 4096, off) for off in offsets]
        finally:
            os.close(fd)
        return offsets, expected

    def bench_tar(self, tool: Tool) -> None:
        with self.mounted(tool, "tar", "rss-tree-read") as mount:
            root = tool.tree_path(mount.mountpoint)
            for bench in ("tree-tar-cold", "tree-tar-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                elapsed, total, problem = timed_tar(root, self.manifest.files)
                self.record(bench, tool, total / elapsed / 1e6, problem)

    def bench_restore(self, tool: Tool) -> None:
        if isinstance(tool, Restic):
            tool.prefetch_ids()
        for bench, restore, check in (
            ("restore-tree", tool.restore_tree, lambda p: check_tree(p, self.manifest)),
            ("restore-image", tool.restore_image, self._check_image_file),
        ):
            target = os.path.join(self.work, f"restore-{tool.name}")
            self.discard(target)
            os.makedirs(target)
            try:
                self.cold(tool)
                start = time.perf_counter()
                restored = restore(target)
                os.sync()  # the data on disk, not just in the page cache, for every tool alike
                elapsed = time.perf_counter() - start
                self.record(bench, tool, elapsed, check(restored))
            except ToolError as e:
                self.record(bench, tool, None, f"failed: {e}")
            finally:
                if bench == "restore-tree":
                    self.discard(target)
                else:  # one file: deleting it slows no restore after
                    shutil.rmtree(target, ignore_errors=True)

    def _check_image_file(self, path: str) -> str | None:
        from .data import sha256_file

        if (
            os.path.getsize(path) != self.manifest.image_size
            or sha256_file(path) != self.manifest.image_sha256
        ):
            return "restored image differs from the source"
        return None

    def bench_limits(self, tool: Tool) -> None:
        limits.measure(self, tool)

    def bench_s3(self, tool: Tool) -> None:
        if self._s3 is None:  # one server and one upload for every round
            self._s3 = s3.S3Lines.start(self.work, tool.repo)
        self._s3.measure(self, tool)

    def bench_serve(self, tool: Tool) -> None:
        if self._serve is None:  # one server for every round
            self._serve = serve.ServeLines.start(tool, self.work)
        self._serve.measure(self, tool)

    def bench_split(self, tool: Tool) -> None:
        assert isinstance(tool, Snapfs)  # a group measured for snapfs alone
        split.measure(self, tool)

    def run(self, groups: list[str], repeat: int) -> None:
        snapfs_only = [t for t in self.tools if t.name == "snapfs"]
        for rep in range(repeat):
            order = self.tools[rep % len(self.tools) :] + self.tools[: rep % len(self.tools)]
            for group in groups:
                log(f"[{group}] round {rep + 1}/{repeat}")
                for tool in snapfs_only if group in SNAPFS_ONLY else order:
                    self.run_group(group, tool)

    def close(self) -> None:
        """Stops what the lines started (the S3 server); deletes what `discard` set aside."""
        shutil.rmtree(os.path.join(self.work, DISCARDED), ignore_errors=True)
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None
        if self._serve is not None:
            self._serve.close()
            self._serve = None
