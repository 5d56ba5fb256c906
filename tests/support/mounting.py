"""Helpers for the real-mount tests: mount with the CLI as users do, always unmount; a small tmpfs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from snapfs.linux.mountinfo import mounts

SNAPFS = [sys.executable, "-m", "snapfs"]


def snapfs(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAPFS, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def is_mounted(path: Path) -> bool:
    """Whether /proc/self/mountinfo lists `path` as given: never resolved, since a stat under a
    hung mount never returns (the tests hang mounts on purpose)."""
    target = os.path.abspath(path)
    return any(mount.mount_point == target for mount in mounts())


def mount_pids(mnt: Path) -> list[int]:
    """Processes whose command line names the mount point after `mount`: the mount process
    (and, while a background mount starts, its parent)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in cmdline and os.fsencode(mnt) in cmdline and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


@contextlib.contextmanager
def mounted(source: Path, mnt: Path, *options, env=None) -> Iterator[Path]:
    """`snapfs mount` (returns when ready: no polling), then `snapfs umount` whatever happens."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = snapfs("mount", source, mnt, *options, env=env)
    assert proc.returncode == 0, proc.stderr
    assert is_mounted(mnt)
    try:
        yield mnt
    finally:
        done = snapfs("umount", mnt)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)


@contextlib.contextmanager
def foreground_mount(source: Path, mnt: Path, *options) -> Iterator[subprocess.Popen]:
    """`snapfs mount --foreground` until it announces itself; killed and unmounted afterwards
    if it still runs (a test that stops it checks how it ended)."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [*SNAPFS, "mount", "--foreground", *map(str, options), str(source), str(mnt)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()  # the mount announces itself once it answers
        assert "mounted" in line, line
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            snapfs("umount", mnt)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount(8) syntax) at `path`, lazily unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)


def key_options(vectors: Path, tmp: Path) -> list[str]:
    password = tmp / "password"
    password.write_text("pbs-vector-password\n")
    return [
        "--keyfile",
        str(vectors / "keys" / "key-pbkdf2.json"),
        "--password-file",
        str(password),
    ]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The last stderr line is snapfs's one-line error and names what went wrong."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("snapfs: error: "), proc.stderr
    assert all(n in line for n in names), (names, line)
    return line
