"""Mount lifecycle: options, daemonizing, readiness, signals, unmount (also of dead mounts).

`mount()` returns only once the filesystem answers: the background process stats its own mount
point (a real round trip through the kernel and our handlers), tunes the kernel's readahead for
the mount, and only then reports "ready" through a pipe to the parent, which exits 0. Any failure
before that (bad mount point, FUSE refusing the mount) comes back through the same pipe as one
line, and the parent exits non-zero with it. SIGINT/SIGTERM end the main loop and unmount.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from snapfs import logs
from snapfs.errors import SnapfsError, UsageError
from snapfs.format.crypt import CryptConfig
from snapfs.store.cache import DEFAULT_CACHE_SIZE, ChunkCache
from snapfs.store.datastore import Datastore

log = logging.getLogger("snapfs.fs")

DEFAULT_READ_AHEAD_KB = 1024
#: Seconds before namespace/group/snapshot listings are re-read. A local datastore is cheap to
#: list; every S3 re-list is a paid LIST request, so remote sources wait longer.
DEFAULT_REFRESH_LOCAL = 10.0
DEFAULT_REFRESH_REMOTE = 60.0


class MountError(SnapfsError):
    """The mount could not be set up or taken down (message names the mount point)."""


@dataclass
class MountOptions:
    source: str
    mountpoint: str
    cache_size: int = DEFAULT_CACHE_SIZE
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    foreground: bool = False
    debug: bool = False
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB
    log_file: str | None = None
    refresh_interval: float | None = None  # None or 0: list once for the mount's life


def is_remote(source: str) -> bool:
    return "://" in source


def default_refresh_interval(source: str) -> float:
    return DEFAULT_REFRESH_REMOTE if is_remote(source) else DEFAULT_REFRESH_LOCAL


def parse_id(text: str | None, kind: str) -> int | None:
    """A numeric uid/gid, or a user/group name."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    import grp
    import pwd

    try:
        return pwd.getpwnam(text).pw_uid if kind == "uid" else grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"unknown {'user' if kind == 'uid' else 'group'} {text!r}") from None


def mount_options(opts: MountOptions) -> set[str]:
    """What pyfuse3/libfuse get: read-only, kernel-enforced archived modes, a telling fsname."""
    source = opts.source if is_remote(opts.source) else os.path.abspath(opts.source)
    fsname = "snapfs:" + source.replace(",", "_").replace("\\", "_")
    options = {"ro", "default_permissions", f"fsname={fsname}", "subtype=snapfs"}
    if opts.allow_other:
        options.add("allow_other")
    return options


def mount(datastore: Datastore, crypt: CryptConfig | None, opts: MountOptions) -> int:
    """Mount and serve; in the background unless opts.foreground. Returns an exit code."""
    if not is_remote(opts.source):
        opts.source = os.path.abspath(opts.source)
    opts.mountpoint = mnt = os.path.abspath(opts.mountpoint)
    if opts.log_file:
        opts.log_file = os.path.abspath(opts.log_file)
    if not os.path.isdir(mnt):
        raise MountError(f"mount point {mnt} is not a directory")
    if find_mount(mnt) is not None and _is_dead(mnt):
        raise MountError(
            f"{mnt}: a dead snapfs mount is still there; run `snapfs umount {mnt}` first"
        )
    if find_mount(mnt) is not None:  # stacking a second mount would hide the first
        raise MountError(f"{mnt} is already a mount point ({find_mount(mnt)}); unmount it first")
    if opts.foreground:
        _setup_logging(opts, background=False)
        return _serve(datastore, crypt, opts, ready_fd=None)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the mount process
        os.close(read_fd)
        code = 1
        try:
            os.setsid()
            os.chdir("/")  # do not keep the caller's directory busy
            code = _serve(datastore, crypt, opts, ready_fd=write_fd)
        except BaseException as exc:  # report before ready; after it, log
            _report_failure(write_fd, exc)
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read().decode("utf-8", "replace").strip()
    if message == "ready":
        return 0
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    raise MountError(
        message.removeprefix("error: ")
        or f"{mnt}: the mount process exited before the mount was ready"
    )


def _report_failure(fd: int | None, exc: BaseException) -> None:
    msg = str(exc) if isinstance(exc, SnapfsError) else f"{type(exc).__name__}: {exc}"
    if fd is None:
        log.error("%s", msg)
        return
    with contextlib.suppress(OSError):
        os.write(fd, f"error: {msg}\n".encode())
        os.close(fd)


def _serve(
    datastore: Datastore, crypt: CryptConfig | None, opts: MountOptions, ready_fd: int | None
) -> int:
    import pyfuse3
    import trio

    from snapfs.fs.model import FsModel
    from snapfs.fs.operations import SnapfsOperations

    model = FsModel(
        datastore,
        crypt,
        ChunkCache(opts.cache_size),
        uid=opts.uid,
        gid=opts.gid,
        refresh_interval=opts.refresh_interval,
    )
    ops = SnapfsOperations(model)
    try:
        pyfuse3.init(ops, opts.mountpoint, mount_options(opts))
    except RuntimeError as exc:
        raise MountError(
            f"cannot mount on {opts.mountpoint}: {exc} (see the message above)"
        ) from None
    unmounted = False
    try:
        trio.run(_main, opts, ready_fd)
        unmounted = True
    finally:
        pyfuse3.close(unmount=not unmounted or _still_mounted(opts.mountpoint))
        _report_stats(model, opts)
    return 0


def _report_stats(model, opts: MountOptions) -> None:
    """What the mount cost, once it is over: on stderr in the foreground, and in the log."""
    try:
        text = model.stats_text()
    except Exception as exc:  # statistics must never turn a clean unmount into a failure
        log.warning("cannot summarise the statistics: %s", exc)
        return
    if opts.foreground:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"snapfs: statistics of the mount on {opts.mountpoint}:\n{text}")
            sys.stderr.flush()
    for line in text.splitlines():
        # file_only: the foreground's stderr has the readable block above already.
        log.info("unmount statistics: %s", line, extra={"file_only": opts.foreground})


async def _main(opts: MountOptions, ready_fd: int | None) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals)
        nursery.start_soon(_announce_ready, opts, ready_fd)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _on_signals() -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _announce_ready(opts: MountOptions, ready_fd: int | None) -> None:
    import trio

    try:
        st = await trio.to_thread.run_sync(os.stat, opts.mountpoint)
        set_read_ahead(st.st_dev, opts.read_ahead_kb)
    except BaseException as exc:
        _report_failure(ready_fd, exc)
        raise
    if ready_fd is not None:
        _setup_logging(opts, background=True)
        _detach_stdio()
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    log.info("mounted %s on %s", opts.source, opts.mountpoint)


def set_read_ahead(dev: int, kb: int) -> bool:
    """Raise the kernel's readahead for this mount: bigger FUSE read requests, fewer round trips."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
        return True
    except OSError as exc:
        log.info("cannot set %s (%s); keeping the kernel's readahead", path, exc)
        return False


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _setup_logging(opts: MountOptions, background: bool) -> None:
    """The mount's logging, through logs.configure like every command's (one set of sinks).

    A mount logs at info (it is a service: its start and statistics belong in its log), debug with
    --debug. Once daemonised it has no terminal: its --log-file, else syslog.
    """
    logs.configure("debug" if opts.debug else "info", opts.log_file, background=background)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if opts.debug else logging.WARNING)


# --- unmounting -----------------------------------------------------------------------------------


def find_mount(mountpoint: str) -> str | None:
    """The filesystem type mounted at `mountpoint` (from /proc/self/mountinfo), or None."""
    target = os.path.realpath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                left, _, right = line.partition(b" - ")
                fields = left.split()
                if len(fields) >= 5 and _unescape(fields[4]) == target:
                    found = right.split()[0].decode()
    except OSError:
        return None
    return found


def _unescape(field: bytes) -> str:
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def _is_dead(mountpoint: str) -> bool:
    try:
        os.statvfs(mountpoint)  # always reaches the daemon (stat may come from the attr cache)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _still_mounted(mountpoint: str) -> bool:
    fstype = find_mount(mountpoint)
    return fstype is not None and fstype.startswith("fuse")


def umount(mountpoint: str) -> None:
    """Unmount a snapfs mount; a mount whose process died is detached lazily."""
    fstype = find_mount(mountpoint)
    if fstype is None:
        raise MountError(f"{mountpoint} is not mounted")
    if not fstype.startswith("fuse"):
        raise MountError(f"{mountpoint} is a {fstype} mount, not snapfs")
    lazy = _is_dead(mountpoint)
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = []
    if fusermount:
        commands.append(
            [fusermount, "-u", "-z", mountpoint] if lazy else [fusermount, "-u", mountpoint]
        )
    if os.geteuid() == 0:
        commands.append(["umount", "-l", mountpoint] if lazy else ["umount", mountpoint])
    errors = []
    for cmd in commands:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0 and not _still_mounted(mountpoint):
            return
        errors.append(
            (result.stderr or result.stdout).strip() or f"{cmd[0]} exited {result.returncode}"
        )
    raise MountError(
        f"cannot unmount {mountpoint}: {errors[-1] if errors else 'no fusermount3 or umount found'}"
    )
