"""Mount lifecycle: options, daemonizing, readiness, signals, unmount (also of dead mounts).

`mount()` returns only once the filesystem answers: the mount process opens its source, mounts,
stats its own mount point (a real round trip through the kernel and our handlers), tunes the
kernel's readahead, and only then reports "ready". Before each wait it names what it waits for
(the S3 endpoint, the kernel, its own first answer), through a pipe to whoever keeps the start-up
clock: the parent of a background mount, a thread of a foreground one. A failure comes back the
same way as one line. Past `MountOptions.timeout` the clock keeper ends the mount process, clears
the mount point and exits 1 with what was awaited: a mount never waits forever. SIGINT, SIGTERM
and SIGHUP end the main loop and unmount; they are held back while the mount is being made and
taken down, so none can leave a dead mount behind. `umount()` is bounded the same way: a mount
whose process hangs is detached lazily, not waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from snapfs import logs
from snapfs.errors import SnapfsError, UsageError
from snapfs.format.crypt import CryptConfig
from snapfs.linux.memory import collect_garbage_rarely, limit_malloc_arenas
from snapfs.linux.mounts import (
    CLEANUP_TIMEOUT,
    DEFAULT_TIMEOUT,
    PROBE_TIMEOUT,
    MountError,
    NoAnswer,
    answer,
    clear_mount,
    find_mount,
    mount_state,
    still_mounted,
)
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore

if TYPE_CHECKING:
    from snapfs.fs.operations import SnapfsOperations

log = logging.getLogger("snapfs.fs")

DEFAULT_READ_AHEAD_KB = 1024
#: Seconds before namespace/group/snapshot listings are re-read. A local datastore is cheap to
#: list; every S3 re-list is a paid LIST request, so remote sources wait longer.
DEFAULT_REFRESH_LOCAL = 10.0
DEFAULT_REFRESH_REMOTE = 60.0
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
#: Held while pyfuse3.init mounts: a foreground mount's watchdog takes it before it clears the
#: mount point and exits, so no mount can appear between its look and its exit.
_mounting = threading.Lock()


@dataclass
class MountOptions:
    source: str
    mountpoint: str
    cache_size: int | None = None  # None: the default for the source (chunk_cache_size)
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    foreground: bool = False
    debug: bool = False
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB
    log_file: str | None = None
    refresh_interval: float | None = None  # None or 0: list once for the mount's life
    timeout: float = DEFAULT_TIMEOUT  # seconds the start may take (the key prompt apart)
    endpoint_url: str | None = None  # the S3 endpoint, named if it does not answer
    index_dir: str | None = None  # where pxar archive indexes are kept (None: memory only)
    index: bool = True  # False: never index an archive, and no GROUP/.versions


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


def mount(
    open_source: Callable[[], Datastore], crypt: CryptConfig | None, opts: MountOptions
) -> int:
    """Mount and serve; in the background unless opts.foreground. Returns an exit code.

    `open_source` runs in the mount process, under the start-up clock: the fork comes before
    boto3 makes a client (or any thread), and an S3 endpoint that never answers is a named wait
    like the others.
    """
    if not is_remote(opts.source):
        opts.source = os.path.abspath(opts.source)
    opts.mountpoint = os.path.abspath(opts.mountpoint)
    if opts.log_file:
        opts.log_file = os.path.abspath(opts.log_file)
    if opts.index_dir:
        opts.index_dir = os.path.abspath(opts.index_dir)
    _check_mountpoint(opts.mountpoint, opts.timeout)
    read_fd, write_fd = _pipe()
    startup = _Startup(write_fd)
    if opts.foreground:
        _setup_logging(opts, background=False)
        _watch_foreground(read_fd, opts)
        try:
            return _serve(open_source, crypt, opts, startup)
        except BaseException as exc:
            startup.fail(exc)  # the watchdog stops; the CLI prints the error
            raise
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_mount_process(open_source, crypt, opts, startup)
    startup.close()
    return _watch_mount_process(pid, read_fd, opts)


def _pipe() -> tuple[int, int]:
    """os.pipe, its ends moved above 2. Started with stdio closed (`>&- 2>&-`), a process gets
    0, 1 or 2 from os.pipe, and the mount process puts /dev/null there before it reports ready:
    the report would be lost and, before issue 13's fix, the parent waited forever."""
    ends = []
    for fd in os.pipe():
        if fd <= 2:
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = moved
        ends.append(fd)
    return ends[0], ends[1]


def _check_mountpoint(mnt: str, timeout: float) -> None:
    """Refuse a mount point that is not a free directory. Every look is bounded: on a mount
    whose process hangs (or a dead network filesystem) a plain stat would hang too."""

    def look() -> tuple[str | None, bool]:
        fstype = find_mount(mnt)
        return fstype, fstype is None and os.path.isdir(mnt)

    try:
        fstype, is_dir = answer(timeout, look)
    except NoAnswer:
        raise MountError(
            f"mount point {mnt} does not answer (no stat reply in {timeout:g} s)"
        ) from None
    if fstype is not None:
        probe = min(PROBE_TIMEOUT, timeout)
        state = mount_state(mnt, probe)
        if state == "dead":
            raise MountError(
                f"{mnt}: a dead snapfs mount is still there; run `snapfs umount {mnt}` first"
            )
        if state == "hung":
            raise MountError(
                f"{mnt}: the mount there does not answer (no statfs reply in {probe:g} s); "
                f"run `snapfs umount {mnt}` first"
            )
        # Stacking a second mount would hide the first.
        raise MountError(f"{mnt} is already a mount point ({fstype}); unmount it first")
    if not is_dir:
        raise MountError(f"mount point {mnt} is not a directory")


def _run_mount_process(
    open_source: Callable[[], Datastore],
    crypt: CryptConfig | None,
    opts: MountOptions,
    startup: _Startup,
) -> NoReturn:
    """The forked mount process: serve until unmounted; report a failure before ready through
    the pipe, one after it in the log."""
    code = 1
    try:
        os.setsid()
        code = _serve(open_source, crypt, opts, startup)
    except BaseException as exc:
        if not startup.fail(exc):
            log.error("%s", _describe(exc))
    finally:
        os._exit(code)


def _watch_mount_process(pid: int, read_fd: int, opts: MountOptions) -> int:
    """The parent of a background mount: 0 once the mount process is ready. Otherwise nothing
    stays behind (no process, no mount) and the error says what it said, or what it waited for."""
    try:
        kind, text = _await_ready(read_fd, opts)
    except BaseException:  # the deadline passed, or the user gave up (Ctrl-C)
        _abandon(pid, opts.mountpoint)
        raise
    finally:
        os.close(read_fd)
    if kind == "ready":
        return 0
    _abandon(pid, opts.mountpoint)
    if kind == "usage":
        raise UsageError(text)
    raise MountError(
        text or f"{opts.mountpoint}: the mount process exited before the mount was ready"
    )


def _watch_foreground(read_fd: int, opts: MountOptions) -> None:
    """A thread keeps a foreground mount's start-up clock, as the parent does for a background
    one. Past the deadline the main thread may be stuck in a wait it cannot leave, so the thread
    itself says what was awaited, clears the mount point and ends the process with 1."""

    def watch() -> None:
        # Process signals go to the main thread, which holds them back while it mounts; here
        # they would take the default action (the end of the process) around that.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            _await_ready(read_fd, opts)
        except MountError as exc:
            with _mounting:
                _give_up(exc, opts.mountpoint)
        finally:
            os.close(read_fd)

    threading.Thread(target=watch, name="snapfs-startup", daemon=True).start()


def _give_up(exc: MountError, mountpoint: str) -> NoReturn:
    """End a foreground mount that is not ready in time: its error line, no mount, exit 1."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"snapfs: error: {logs.redact(str(exc))}\n")
        sys.stderr.flush()
    log.error("mount: failed: %s", exc, extra={"file_only": True})
    if still_mounted(mountpoint):
        clear_mount(mountpoint)
    os._exit(1)


class _Startup:
    """The mount process's half of the start-up: it names each wait, then says ready or why not.

    Lines go through a pipe to whoever keeps the clock: `wait WHAT` before each wait, then
    `ready`, or `error MESSAGE` / `usage MESSAGE`. After the last word the pipe is closed, so
    nothing later can land in whatever file reuses the descriptor.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def pending(self) -> bool:
        """True until the mount was reported ready or failed."""
        return self._fd is not None

    def waiting_for(self, what: str) -> None:
        self._send(f"wait {what}")

    def ready(self) -> None:
        self._send("ready")
        self.close()

    def fail(self, exc: BaseException) -> bool:
        """Report `exc` if the start-up is still on; False once it is over (only a log can tell)."""
        if not self.pending:
            return False
        self._send(f"{'usage' if isinstance(exc, UsageError) else 'error'} {_describe(exc)}")
        self.close()
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _send(self, line: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # the clock keeper may be gone (Ctrl-C)
                os.write(self._fd, line.replace("\n", " ").encode() + b"\n")


def _await_ready(fd: int, opts: MountOptions) -> tuple[str, str]:
    """The mount process's last word: ("ready", ""), ("error" or "usage", message), or ("", "")
    if it ended without one. Past opts.timeout: MountError naming what it was waiting for."""
    deadline = time.monotonic() + opts.timeout
    waiting = "the mount process to start"
    pending = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise MountError(
                f"mount at {opts.mountpoint} not ready after {opts.timeout:g} s: "
                f"waiting for {waiting}"
            )
        data = os.read(fd, 4096)
        if not data:
            return "", ""
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            kind, _, text = line.decode("utf-8", "replace").partition(" ")
            if kind != "wait":
                return kind, text
            waiting = text


def _abandon(pid: int, mountpoint: str) -> None:
    """End a mount process that did not get ready, then clear what it mounted: killed first, so
    it cannot mount after the mount point was cleared."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    if still_mounted(mountpoint):
        clear_mount(mountpoint)


def _reap(pid: int) -> None:
    """Collect a killed child, waiting at most CLEANUP_TIMEOUT for it to go."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone already (or a kernel without pidfds: then do not wait)
        return
    try:
        select.select([fd], [], [], CLEANUP_TIMEOUT)
    finally:
        os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SnapfsError) else f"{type(exc).__name__}: {exc}"


def _source_wait(opts: MountOptions) -> str:
    """What opening the source waits for, as a start-up error names it."""
    if not is_remote(opts.source):
        return f"the datastore directory {opts.source} to answer"
    endpoint = logs.without_userinfo(opts.endpoint_url) if opts.endpoint_url else "of AWS"
    return f"the S3 endpoint {endpoint} to answer ({opts.source})"


def _serve(
    open_source: Callable[[], Datastore],
    crypt: CryptConfig | None,
    opts: MountOptions,
    startup: _Startup,
) -> int:
    import pyfuse3
    import trio

    from snapfs.fs import inode_reads, listing_cache
    from snapfs.fs.handler_table import HandlerTable
    from snapfs.fs.indexing import ArchiveIndexer
    from snapfs.fs.model import FsModel
    from snapfs.fs.operations import SnapfsOperations
    from snapfs.fs.versions import VersionsIndex
    from snapfs.search.index import default_index_path
    from snapfs.store.sources import chunk_cache_size

    limit_malloc_arenas()
    collect_garbage_rarely()
    versions_index = None
    if opts.index:  # the search index file `snapfs index`, `search` and `versions` use
        path = os.path.abspath(default_index_path(opts.source, opts.endpoint_url))
        versions_index = VersionsIndex(path, crypt)
    startup.waiting_for(_source_wait(opts))
    model = FsModel(
        open_source(),
        crypt,
        ChunkCache(chunk_cache_size(opts.source, opts.cache_size)),
        uid=opts.uid,
        gid=opts.gid,
        refresh_interval=opts.refresh_interval,
        indexer=ArchiveIndexer(opts.index_dir, enabled=opts.index),
        versions_index=versions_index,
    )
    ops = SnapfsOperations(model)
    startup.waiting_for(f"the kernel to mount FUSE on {opts.mountpoint}")
    # Held back until _on_signals takes them, and again after it: see there.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        with _mounting:
            try:
                pyfuse3.init(ops, opts.mountpoint, mount_options(opts))
            except RuntimeError as exc:
                raise MountError(
                    f"cannot mount on {opts.mountpoint}: {exc} (see the message above)"
                ) from None
        ops.attach()
        table = HandlerTable.find()
        if table is None:
            log.info(
                "pyfuse3 out of reach: directory listings are not cached by the kernel and "
                "every file is opened through FUSE"
            )
        else:
            listing_cache.enable(table, ops.listing_never_changes)
            inode_reads.enable(table)
            ops.reads_by_inode = True
        unmounted = False
        try:
            trio.run(_main, opts, startup, ops)
            unmounted = True
        finally:
            ops.detach()
            pyfuse3.close(unmount=not unmounted or still_mounted(opts.mountpoint))
            ops.close()  # the readahead threads: nothing reads any more
            model.close()
            _report_stats(model, opts)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
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


async def _main(opts: MountOptions, startup: _Startup, ops: SnapfsOperations) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, ops)
        nursery.start_soon(_announce_ready, opts, startup)
        nursery.start_soon(ops.idle_memory.run)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    if startup.pending:
        raise MountError(
            f"the mount on {opts.mountpoint} was stopped (signal or unmount) before it was ready"
        )


async def _on_signals(ops: SnapfsOperations) -> None:
    """SIGINT, SIGTERM and SIGHUP end the main loop, and with it the mount.

    The page cache filler stops first, while the loop still answers: a store it is in may be
    waiting for a READ that only the loop answers (snapfs.fs.page_fill).

    They are blocked from just before the mount is made (`_serve`) until this receiver takes
    them, and again once it is gone: no signal can kill the process between mounting and
    unmounting and leave a dead mount behind.
    """
    import pyfuse3
    import trio

    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        try:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                await trio.to_thread.run_sync(ops.stop_filling)
                pyfuse3.terminate()
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


async def _announce_ready(opts: MountOptions, startup: _Startup) -> None:
    import trio

    startup.waiting_for(f"the new mount to answer its first request (stat {opts.mountpoint})")
    # Our own main loop answers this stat. If the loop ends first (a signal, a failing handler),
    # a thread we must wait for would wait for it forever: the start-up hang of issue 13.
    st = await trio.to_thread.run_sync(os.stat, opts.mountpoint, abandon_on_cancel=True)
    set_read_ahead(st.st_dev, opts.read_ahead_kb)
    if not opts.foreground:
        _daemonise(opts)
    startup.ready()
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


def _daemonise(opts: MountOptions) -> None:
    """A ready background mount lets go of its caller: terminal, directory, stderr logging.

    Not before: the source's relative paths (--cache-dir, --ca-bundle) are opened in the
    caller's directory, and a start-up failure may still need the caller's terminal.
    """
    _setup_logging(opts, background=True)
    _detach_stdio()
    os.chdir("/")  # do not keep the caller's directory busy


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
