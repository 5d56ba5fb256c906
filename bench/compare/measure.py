"""The benchmarks: each mounts fresh, measures, verifies what it read, and records peak RSS.

Interleaved: every benchmark runs for every tool before the next benchmark starts, so a slow
phase of the machine hits all tools alike. "Cold" = the tool's persistent caches emptied, a
fresh mount (its in-memory caches empty) and the page cache dropped right before the timed
operation; "warm" = the same operation again at once, nothing dropped (what a user sees the
second time, page cache included).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .data import BIGDIR, IMAGE_NAME, Manifest, Sizes
from .tools import Mount, Restic, Tool, ToolError, is_mounted
from .verify import check_ls_l, check_tar_stream, check_tree, check_walk

MiB = 1024 * 1024
READY_TIMEOUT = 120.0


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
GROUPS = ["mount", "walk", "lsl", "seq", "random", "tar", "restore"]


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
    _mounts: int = 0

    # --- bookkeeping -----------------------------------------------------------------------------

    def record(self, bench: str, tool: Tool, value: float | None, problem: str | None) -> None:
        sample = Sample(value, problem is None, problem or "")
        self.samples.setdefault((bench, tool.name), []).append(sample)
        shown = "n/a" if value is None else f"{value:.4g} {BY_ID[bench].unit}"
        flag = "ok" if problem is None else f"NOT VERIFIED: {problem}"
        log(f"  {bench:18} {tool.name:7} {shown:>16}  {flag}")

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

    def cold(self, tool: Tool) -> None:
        tool.clear_caches()
        drop_caches()

    def _mountpoint(self, tool: Tool) -> str:
        self._mounts += 1
        mnt = os.path.join(self.work, "mnt", f"{tool.name}-{self._mounts}")
        os.makedirs(mnt)
        return mnt

    @contextlib.contextmanager
    def mounted(self, tool: Tool, label: str, rss_bench: str | None = None) -> Iterator[Mount]:
        """A fresh mount, ready (its tree's root answers); peak RSS recorded at the end."""
        mnt = self._mountpoint(tool)
        self.cold(tool)
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
            root = tool.tree_path(mount.mountpoint)
            for bench in ("find-stat-cold", "find-stat-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                start = time.perf_counter()
                out = subprocess.run(
                    ["find", root, "-printf", "%P\t%y\t%s\n"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                elapsed = time.perf_counter() - start
                self.record(bench, tool, elapsed, check_walk(out.split("\n"), self.manifest))

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
        offsets, expected = self._random_plan()
        with self.mounted(tool, "random", None) as mount:
            path = tool.image_path(mount.mountpoint)
            for bench in ("image-rand4k-cold", "image-rand4k-warm"):
                if bench.endswith("cold"):
                    drop_caches()
                iops, bad = read_random(path, offsets, expected)
                self.record(
                    bench, tool, iops, f"{bad} reads differ from the source" if bad else None
                )

    def _random_plan(self) -> tuple[list[int], list[bytes]]:
        blocks = self.manifest.image_size // 4096
        rng = random.Random(7)
        offsets = [rng.randrange(blocks) * 4096 for _ in range(self.sizes.random_reads)]
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
                start = time.perf_counter()
                proc = subprocess.Popen(
                    ["tar", "-C", root, "-cf", "-", "."], stdout=subprocess.PIPE, bufsize=MiB
                )
                assert proc.stdout is not None
                total, problem = check_tar_stream(proc.stdout, self.manifest)
                rc = proc.wait()
                elapsed = time.perf_counter() - start
                if rc != 0:
                    problem = problem or f"tar exited {rc}"
                self.record(bench, tool, total / elapsed / 1e6, problem)

    def bench_restore(self, tool: Tool) -> None:
        if isinstance(tool, Restic):
            tool.prefetch_ids()
        for bench, restore, check in (
            ("restore-tree", tool.restore_tree, lambda p: check_tree(p, self.manifest)),
            ("restore-image", tool.restore_image, self._check_image_file),
        ):
            target = os.path.join(self.work, f"restore-{tool.name}")
            shutil.rmtree(target, ignore_errors=True)
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
                shutil.rmtree(target, ignore_errors=True)

    def _check_image_file(self, path: str) -> str | None:
        from .data import sha256_file

        if (
            os.path.getsize(path) != self.manifest.image_size
            or sha256_file(path) != self.manifest.image_sha256
        ):
            return "restored image differs from the source"
        return None

    def run(self, groups: list[str], repeat: int) -> None:
        for rep in range(repeat):
            order = self.tools[rep % len(self.tools) :] + self.tools[: rep % len(self.tools)]
            for group in groups:
                log(f"[{group}] round {rep + 1}/{repeat}")
                for tool in order:
                    self.run_group(group, tool)


# --- measuring primitives ------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def peak_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_listing(mount: Mount, path: str) -> list[str]:
    """Polls until `path` lists (the mount answers); sorted names. Raises if the server died."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            return sorted(os.listdir(path))
        except OSError:
            if mount.proc is not None and mount.proc.poll() is not None:
                raise ToolError(f"{mount.tool.name} mount exited {mount.proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {READY_TIMEOUT:.0f} s") from None
            time.sleep(0.002)


def read_sequential(path: str) -> tuple[float, str, int]:
    """One pass in 1 MiB reads into a reused buffer, hashed as it goes: (bytes/s, sha256, size)."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    h = hashlib.sha256()
    total = 0
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            total += n
    finally:
        os.close(fd)
    return total / (time.perf_counter() - start), h.hexdigest(), total


def read_random(path: str, offsets: list[int], expected: list[bytes]) -> tuple[float, int]:
    """4 KiB preads at the given offsets: (reads/s, how many differ from the source)."""
    fd = os.open(path, os.O_RDONLY)
    bad = 0
    start = time.perf_counter()
    try:
        for off, want in zip(offsets, expected, strict=True):
            if os.pread(fd, 4096, off) != want:
                bad += 1
    finally:
        os.close(fd)
    return len(offsets) / (time.perf_counter() - start), bad


# --- profiling (--profile): py-spy attached to the snapfs mount process ----------------------------


def start_profiler(pid: int, out: str) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        log("  (py-spy not found: no profile)")
        return None
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "-o",
            out,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
