"""Finding, probing and unmounting FUSE mounts, bounded in time.

A mount whose process hangs answers nothing: a stat, a statfs or an unmount that waits for it
never returns. So every probe here runs with a deadline (`answer`), and an unmount of a mount that
is dead or hung is done lazily, which never waits for the process. Used by the mount's start-up
and by `snapfs umount` and `snapfs unmap`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from snapfs.errors import SnapfsError
from snapfs.linux.mountinfo import mount_at

log = logging.getLogger("snapfs.fs")
T = TypeVar("T")

#: Seconds a mount may take to start (or an unmount to finish) before it is given up.
DEFAULT_TIMEOUT = 60.0
#: Seconds an existing mount may take to answer statfs before it counts as hung. Its process
#: answers statfs from memory, so no answer in this time means it is stuck, not busy.
PROBE_TIMEOUT = 5.0
#: Bound of the clean-up after a failed start: SIGKILL ends even a wait on FUSE at once, and a
#: lazy unmount never waits for the mount's process; this only bounds the unexpected.
CLEANUP_TIMEOUT = 10.0


class MountError(SnapfsError):
    """The mount could not be set up or taken down (message names the mount point)."""


def find_mount(mountpoint: str) -> str | None:
    """The filesystem type mounted at `mountpoint`, or None (never stats the path when it is
    listed as given: see mount_at)."""
    mount = mount_at(mountpoint)
    return None if mount is None else mount.fs_type


def mount_state(mountpoint: str, timeout: float) -> str:
    """`alive`, `dead` (its process is gone) or `hung` (no statfs answer within `timeout` s).

    statfs always reaches the mount's process (a stat may come from the kernel's cache).
    """
    try:
        answer(timeout, os.statvfs, mountpoint)
    except NoAnswer:
        return "hung"
    except OSError as exc:
        return "dead" if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED) else "alive"
    return "alive"


class NoAnswer(Exception):
    pass


def answer(timeout: float, call: Callable[..., T], *args: object) -> T:
    """`call(*args)`'s result (or exception), or NoAnswer after `timeout` seconds.

    For calls on a filesystem that may hang: the call runs in a daemon thread, which a hung
    filesystem keeps forever, but which neither we nor the interpreter's exit wait for.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call(*args))
        except BaseException as exc:
            future.set_exception(exc)

    thread = threading.Thread(target=run, name="snapfs-probe", daemon=True)
    thread.start()
    thread.join(timeout)  # to its very end: a mount process is forked after this
    if thread.is_alive():
        raise NoAnswer
    return future.result()


def still_mounted(mountpoint: str) -> bool:
    fstype = find_mount(mountpoint)
    return fstype is not None and fstype.startswith("fuse")


def umount(mountpoint: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Unmount a snapfs mount within `timeout` seconds; a mount whose process died or hangs is
    detached lazily (that never waits for the process)."""
    deadline = time.monotonic() + timeout
    probe = min(PROBE_TIMEOUT, timeout / 3)  # each look; the unmount itself needs the rest
    try:
        fstype = answer(probe, find_mount, mountpoint)
    except NoAnswer:
        raise MountError(f"{mountpoint} does not answer (no stat reply in {probe:g} s)") from None
    if fstype is None:
        raise MountError(f"{mountpoint} is not mounted")
    if not fstype.startswith("fuse"):
        raise MountError(f"{mountpoint} is a {fstype} mount, not snapfs")
    lazy = mount_state(mountpoint, probe) != "alive"
    try:
        _unmount(mountpoint, lazy, deadline - time.monotonic())
    except subprocess.TimeoutExpired as exc:
        raise MountError(
            f"{mountpoint} not unmounted after {timeout:g} s: waiting for {' '.join(exc.cmd)}"
        ) from None


def clear_mount(mountpoint: str) -> None:
    """Detach what a failed start left mounted; lazily, so it never waits for a process."""
    try:
        _unmount(mountpoint, lazy=True, timeout=CLEANUP_TIMEOUT)
    except (SnapfsError, subprocess.TimeoutExpired) as exc:
        log.warning("%s: cannot clear the mount point: %s", mountpoint, exc)


def _unmount(mountpoint: str, lazy: bool, timeout: float) -> None:
    """fusermount3, then umount (as root), until the mount is gone. Raises MountError with the
    last complaint, subprocess.TimeoutExpired if the commands take longer than `timeout` s."""
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = []
    if fusermount:
        commands.append([fusermount, "-u", *(["-z"] if lazy else []), mountpoint])
    if os.geteuid() == 0:
        commands.append(["umount", *(["-l"] if lazy else []), mountpoint])
    deadline = time.monotonic() + timeout
    errors = []
    for cmd in commands:
        left = max(deadline - time.monotonic(), 0)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        if result.returncode == 0 and not still_mounted(mountpoint):
            return
        errors.append(
            (result.stderr or result.stdout).strip() or f"{cmd[0]} exited {result.returncode}"
        )
    raise MountError(
        f"cannot unmount {mountpoint}: {errors[-1] if errors else 'no fusermount3 or umount found'}"
    )
