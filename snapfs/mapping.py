"""`snapfs map` / `snapfs unmap`: a backed-up disk image as a read-only loop device, like PBS's map.

There is no kernel NBD client on the machines we target, so a mapping is a private snapfs FUSE
mount of the datastore plus `losetup -r -P` on the image file inside it; the kernel's partition
scan makes /dev/loopNpM appear. Each mapping lives in its own runtime folder:

    /run/snapfs/map-<id>/            (SNAPFS_RUN_DIR overrides /run/snapfs)
        mnt/                         the FUSE mount (a `snapfs mount --foreground` child process)
        state.json                   device, image, mount process id and start time
        mount.log                    the mount process's log

`unmap DEVICE` detaches the loop device, stops the mount process and removes the folder. A mapping
whose mount process died (killed, OOM) is stale: its loop device returns I/O errors; `unmap` with
no argument lists mappings and cleans up every stale one (detach, lazy unmount, remove).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from snapfs.errors import NotFoundError, SnapfsError, UsageError
from snapfs.format.archive_names import FileType, short_name
from snapfs.keysource import KeyOptions, read_password
from snapfs.linux.mountinfo import mount_at, mounts
from snapfs.store.sources import SourceOptions, source_option_argv

MOUNT_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class MapError(SnapfsError):
    """A mapping could not be set up or taken down (the message names the device or image)."""


def run_dir() -> Path:
    override = os.environ.get("SNAPFS_RUN_DIR")
    if override:
        return Path(override)
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "snapfs"
    return Path("/run/snapfs")


@dataclass(frozen=True)
class MapRequest:
    """What to map: an image of a snapshot (as the user named them), and how to read it."""

    source: SourceOptions
    snapshot: str
    image: str
    ns: str = ""
    key: KeyOptions = field(default_factory=KeyOptions)
    cache_size: int | None = None  # of the mount process (None: its default for the source)


@dataclass
class Mapping:
    id: str
    device: str
    source: str
    snapshot: str
    image: str
    ns: str
    image_path: str  # the image file inside the mount: the loop device's backing file
    mountpoint: str
    pid: int
    pid_start: str  # /proc/PID/stat start time: tells our process from a reused PID
    created: float

    @property
    def folder(self) -> Path:
        return Path(self.mountpoint).parent

    def save(self) -> None:
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.folder / "state.json")

    @classmethod
    def load(cls, folder: Path) -> Mapping | None:
        try:
            data = json.loads((folder / "state.json").read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


# --- processes and devices ------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def mount_alive(m: Mapping) -> bool:
    """The mount process runs (same PID and start time) and its mount answers."""
    if _process_start(m.pid) != m.pid_start:
        return False
    try:
        os.statvfs(m.mountpoint)
    except OSError as exc:
        return exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENOENT)
    return _fuse_mounted(m.mountpoint)


def _fuse_mounted(path: str) -> bool:
    mount = mount_at(path)
    return mount is not None and mount.fs_type.startswith("fuse")


def _loop_name(device: str) -> str:
    return os.path.basename(device)


def loop_backing_file(device: str) -> str | None:
    """What a loop device is attached to now (None: detached)."""
    try:
        with open(f"/sys/block/{_loop_name(device)}/loop/backing_file") as f:
            return f.read().rstrip("\n").removesuffix(" (deleted)")
    except OSError:
        return None


def loop_partitions(device: str) -> list[str]:
    name = _loop_name(device)
    try:
        return sorted(
            (f"/dev/{p}" for p in os.listdir(f"/sys/block/{name}") if p.startswith(name + "p")),
            key=lambda p: int(p.rsplit("p", 1)[1]),
        )
    except OSError:
        return []


def _run(cmd: list[str], what: str) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise MapError(f"{what}: {cmd[0]} not found (util-linux)") from None
    if result.returncode != 0:
        raise MapError(f"{what}: {(result.stderr or result.stdout).strip() or cmd[0] + ' failed'}")
    return result.stdout.strip()


# --- map --------------------------------------------------------------------------------------


def image_path_in_mount(mountpoint: str, snapshot, filename: str) -> str:
    """Where the mount shows an archive: ns/<a>/ns/<b>/<type>/<id>/<time>/<name without .fidx>."""
    return os.path.join(mountpoint, snapshot.path, short_name(filename))


def map_image(
    request: MapRequest, *, timeout: float = MOUNT_TIMEOUT, mount_argv: list[str] | None = None
) -> Mapping:
    """Mount the datastore privately, attach the image read-only with a partition scan."""
    from snapfs.store.datastore import parse_namespace, parse_snapshot

    if os.geteuid() != 0:
        raise UsageError("snapfs map needs root (loop devices)")
    ns = parse_namespace(request.ns)
    snapshot = parse_snapshot(request.snapshot, ns)
    datastore = request.source.open()
    file = datastore.resolve_archive(snapshot, request.image)
    if file.archive_type is not FileType.FIXED_INDEX:
        raise UsageError(f"{snapshot}/{file.filename} is not a disk image (.img.fidx)")
    crypt = request.key.crypt_config()
    datastore.check_key(snapshot, crypt)  # a wrong key fails here, not inside the mount

    base = run_dir()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    map_id = secrets.token_hex(4)
    folder = base / f"map-{map_id}"
    mnt = folder / "mnt"
    mnt.mkdir(parents=True, mode=0o700)
    proc = None
    device = None
    try:
        proc = _start_mount(request, folder, mnt, crypt is not None, mount_argv)
        image = image_path_in_mount(str(mnt), snapshot, file.filename)
        _wait_ready(proc, str(mnt), image, folder / "mount.log", timeout)
        device = _run(["losetup", "-r", "-P", "--find", "--show", image], f"losetup {image}")
        mapping = Mapping(
            map_id,
            device,
            request.source.source,
            str(snapshot),
            short_name(file.filename),
            request.ns,
            image,
            str(mnt),
            proc.pid,
            _process_start(proc.pid) or "",
            time.time(),
        )
        mapping.save()
        _scan_partitions(device, image)
        _wait_partition_nodes(device)
        return mapping
    except BaseException:
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        if proc is not None:
            _stop_process(proc.pid, _process_start(proc.pid))
            with contextlib.suppress(ChildProcessError):
                proc.wait(timeout=STOP_TIMEOUT)
        _unmount(str(mnt))
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _start_mount(
    request: MapRequest, folder: Path, mnt: Path, encrypted: bool, mount_argv: list[str] | None
) -> subprocess.Popen:
    argv = mount_argv or [sys.executable, "-m", "snapfs"]
    cmd = [*argv, "mount", "--foreground", "--log-file", str(folder / "mount.log")]
    # The same source as ours (S3 endpoint, cache...); credentials reach it through the
    # environment it inherits, never argv.
    cmd += source_option_argv(request.source.backend)
    if request.cache_size is not None:
        cmd += ["--cache-size", str(request.cache_size)]
    cmd += [request.source.source, str(mnt)]
    pass_fds: tuple[int, ...] = ()
    read_fd = None
    key = request.key
    if key.keyfile:
        cmd += ["--keyfile", os.path.abspath(key.keyfile)]
        if key.password_file:
            cmd += ["--password-file", os.path.abspath(key.password_file)]
        elif encrypted:
            password = read_password(prompt_for=key.keyfile)
            if password is not None:
                # Through a pipe, never argv or the environment of a long-lived process.
                read_fd, write_fd = os.pipe()
                os.write(write_fd, password + b"\n")
                os.close(write_fd)
                pass_fds = (read_fd,)
                cmd += ["--password-file", f"/dev/fd/{read_fd}"]
    try:
        # The child gets its own copy of the error file's descriptor; ours closes at once.
        with open(folder / "mount.err", "wb") as err:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a Ctrl-C at the map prompt must not reach the mount
                pass_fds=pass_fds,
                close_fds=True,
            )
    finally:
        if read_fd is not None:
            os.close(read_fd)


def _wait_ready(proc: subprocess.Popen, mnt: str, image: str, log: Path, timeout: float) -> None:
    """Until the image file inside the fresh mount answers a stat (or the mount process died)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        code = proc.poll()
        if code is not None:
            raise MapError(f"the mount of {mnt} failed (exit {code}): {_last_error(log)}")
        if _fuse_mounted(mnt):
            try:
                os.stat(image)
                return
            except FileNotFoundError:
                raise NotFoundError(f"{image} does not exist in the mount") from None
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise MapError(f"the mount of {mnt} was not ready after {timeout:.0f} s")
        time.sleep(delay)  # a mount has no readiness event to wait on from outside
        delay = min(delay * 2, 0.2)


def _last_error(log: Path) -> str:
    lines = []
    for path in (log, log.with_name("mount.err")):
        with contextlib.suppress(OSError):
            lines += [line for line in path.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _scan_partitions(device: str, image: str) -> None:
    """Add the partitions ourselves when the kernel's scan found none.

    Some kernels (Firecracker's, minimal cloud kernels) are built without partition-table parsers:
    `losetup -P` then adds nothing, but BLKPG (partx -a) still works from a table read in user
    space. We only call it when our own parser sees a table, so a bare filesystem stays quiet.
    """
    if loop_partitions(device):
        return
    from snapfs.format.partitions import read_partition_table
    from snapfs.format.source import FileSource

    try:
        with FileSource(image) as disk:
            table = read_partition_table(disk, name=image)
    except (OSError, SnapfsError):
        return  # not our business to judge the image; the device is there, unscanned
    if table is not None and table.partitions:
        _run(["partx", "-a", device], f"partx -a {device}")


def _wait_partition_nodes(device: str, timeout: float = 5.0) -> None:
    """devtmpfs creates /dev/loopNpM shortly after the scan; callers expect them on return."""
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in loop_partitions(device)):
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)


# --- unmap ----------------------------------------------------------------------------------------


def list_mappings() -> list[Mapping]:
    base = run_dir()
    found = []
    with contextlib.suppress(OSError):
        for folder in sorted(base.glob("map-*")):
            m = Mapping.load(folder)
            if m is not None:
                found.append(m)
    return found


def find_mapping(name: str) -> Mapping:
    """By device (/dev/loop3, loop3) or mapping id."""
    for m in list_mappings():
        if name in (m.device, _loop_name(m.device), m.id, f"map-{m.id}"):
            return m
    raise NotFoundError(f"{name} is not a snapfs mapping (see `snapfs unmap` for the list)")


def unmap(m: Mapping) -> None:
    """Detach the loop device, stop the mount process, unmount, remove the runtime folder."""
    mounted = {mount.source: mount.mount_point for mount in mounts()}
    for dev in [m.device, *loop_partitions(m.device)]:
        if dev in mounted:
            raise MapError(f"{dev} is mounted on {mounted[dev]}; unmount it first")
    if loop_backing_file(m.device) == m.image_path:
        _run(["losetup", "-d", m.device], f"detach {m.device}")
        _wait_detached(m.device)
    _stop_process(m.pid, m.pid_start)
    _unmount(m.mountpoint)
    shutil.rmtree(m.folder, ignore_errors=True)


def _wait_detached(device: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while loop_backing_file(device) is not None:
        if time.monotonic() > deadline:
            raise MapError(f"{device} is still attached after losetup -d (in use?)")
        time.sleep(0.02)


def _stop_process(pid: int, start: str | None) -> None:
    if start is None or _process_start(pid) != start:
        return  # gone, or the PID now belongs to someone else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _process_start(pid) == start:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def _unmount(mountpoint: str) -> None:
    from snapfs.linux.mounts import MountError, umount

    if mount_at(mountpoint) is not None:
        with contextlib.suppress(MountError):
            umount(mountpoint)


def cleanup_stale() -> list[Mapping]:
    """Unmap every mapping whose mount process died; returns them."""
    cleaned = []
    for m in list_mappings():
        if not mount_alive(m):
            with contextlib.suppress(MapError):
                unmap(m)
                cleaned.append(m)
    return cleaned
