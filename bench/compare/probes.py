"""The measuring primitives every benchmark shares: dropping the page cache, peak RSS, waiting for
a mount to answer, the sequential and random readers, the timed `find` and `tar`, and py-spy
attached to a mount (--profile).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

from .tools import Mount, ToolError
from .verify import check_tar_stream

MiB = 1024 * 1024
READY_TIMEOUT = 120.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float | None:
    """The process's peak RSS (or another /proc status field in kB, e.g. VmRSS) in MiB, with
    that of each process it started and still runs (snapfs's page store): the sum of their
    peaks, never less than the peak of their sum."""
    own = _status_mib(pid, field)
    if own is None:
        return None
    return own + sum(_status_mib(child, field) or 0.0 for child in _children(pid))


def _status_mib(pid: int, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return found


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


def read_random(
    path: str, offsets: list[int], expected: list[bytes], *, min_seconds: float = 0.0
) -> tuple[float, int]:
    """4 KiB preads at the given offsets: (reads/s, how many differ from the source).

    With `min_seconds`, the offsets are read again, pass after pass, until that long has gone
    by: warm reads from the page cache take microseconds each, and one pass of a few thousand
    would time a few milliseconds, where one scheduling delay moves the figure severalfold.
    """
    fd = os.open(path, os.O_RDONLY)
    bad = reads = 0
    start = time.perf_counter()
    try:
        while True:
            for off, want in zip(offsets, expected, strict=True):
                if os.pread(fd, 4096, off) != want:
                    bad += 1
            reads += len(offsets)
            if time.perf_counter() - start >= min_seconds:
                break
    finally:
        os.close(fd)
    return reads / (time.perf_counter() - start), bad


def timed_find(root: str) -> tuple[float, list[str]]:
    """`find ROOT -printf` as every walk line runs it: (seconds, its output lines)."""
    start = time.perf_counter()
    out = subprocess.run(
        ["find", root, "-printf", "%P\t%y\t%s\n"], capture_output=True, text=True, check=True
    ).stdout
    return time.perf_counter() - start, out.split("\n")


def timed_tar(root: str, files: dict[str, tuple[int, str]]) -> tuple[float, int, str | None]:
    """`tar -c` of ROOT's contents, each member checked against `files` (name: size, SHA-256) as
    it streams by: (seconds, bytes of file content, what was wrong or None)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["tar", "-C", root, "-cf", "-", "."], stdout=subprocess.PIPE, bufsize=MiB
    )
    assert proc.stdout is not None
    total, problem = check_tar_stream(proc.stdout, files)
    rc = proc.wait()
    elapsed = time.perf_counter() - start
    return elapsed, total, problem or (f"tar exited {rc}" if rc else None)


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
