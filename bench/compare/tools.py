"""The three tools under one interface: back up the data set, mount, unmount, restore.

Each tool runs as users run it, with its defaults (snapfs's 64 MiB chunk cache, restic's
local cache, borg's defaults), with its own state (caches, config) kept inside the work
directory so "cold" can empty it. Secrets go through the environment only: restic's password in
RESTIC_PASSWORD; borg's repository is unencrypted (`-e none`; snapfs's datastore is unencrypted
too; restic cannot make an unencrypted repository).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from .data import IMAGE_NAME, TREE_NAME

SNAPFS_TIME = "2024-06-01T10:00:00Z"
RESTIC_IMAGE_TIME = ("2024-06-01 10:00:00", "2024-06-01T10:00:00Z")
RESTIC_TREE_TIME = ("2024-06-01 11:00:00", "2024-06-01T11:00:00Z")
TIMEOUT = 3600
MOUNT_TIMEOUT = 120  # a mount command that has not returned by then is hung: a failure


def abandon_mount(mountpoint: str) -> None:
    """Takes down a mount whose server hangs: lazy unmount, then the server is killed."""
    pid = pid_serving(mountpoint)
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class ToolError(Exception):
    """A tool's command failed (message: the command and its stderr's last line)."""


def run(
    cmd: list[str], *, env: dict | None = None, cwd: str | None = None, timeout: float = TIMEOUT
) -> str:
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"{' '.join(cmd[:3])} ... did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise ToolError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {tail}")
    return proc.stdout


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def pid_serving(mountpoint: str, exclude: int | None = None) -> int | None:
    """The process whose command line names this mount point: the FUSE server."""
    target = os.fsencode(os.path.abspath(mountpoint))
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, exclude):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if target in args:
            return int(entry)
    return None


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie child (restic is ours) counts as gone once reaped.
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)


@dataclass
class Mount:
    """A running FUSE server: where it is mounted and its process (for RSS and profiling)."""

    tool: Tool
    mountpoint: str
    proc: subprocess.Popen | None = None  # when the tool stays in the foreground (restic)
    pid: int | None = None

    def find_pid(self) -> int | None:
        if self.pid is None:
            self.pid = self.proc.pid if self.proc else pid_serving(self.mountpoint)
        return self.pid

    def close(self) -> None:
        self.tool.unmount(self)


class Tool:
    name = ""

    def __init__(self, work: str, data_dir: str) -> None:
        self.work = work
        self.data_dir = data_dir
        self.repo = os.path.join(work, f"repo-{self.name}")

    # What each tool implements.
    def version(self) -> str:
        raise NotImplementedError

    def backup(self) -> None:
        raise NotImplementedError

    def start_mount(self, mountpoint: str) -> Mount:
        raise NotImplementedError

    def unmount(self, mount: Mount) -> None:
        raise NotImplementedError

    def tree_path(self, mountpoint: str) -> str:
        raise NotImplementedError

    def image_path(self, mountpoint: str) -> str:
        raise NotImplementedError

    def restore_tree(self, target: str) -> str:
        """Restores the tree into the empty dir target; returns the restored tree's root."""
        raise NotImplementedError

    def restore_image(self, target: str) -> str:
        """Restores the image into the empty dir target; returns the restored file."""
        raise NotImplementedError

    def clear_caches(self) -> None:
        """Empties the tool's own persistent caches (in-memory ones die with each mount)."""

    def backed_up(self, tag: str) -> bool:
        """Whether the repository holds this data set's backup (kept across runs with --work)."""
        try:
            with open(os.path.join(self.work, f".backed-up-{self.name}")) as f:
                return f.read().strip() == tag
        except OSError:
            return False

    def mark_backed_up(self, tag: str) -> None:
        with open(os.path.join(self.work, f".backed-up-{self.name}"), "w") as f:
            f.write(tag + "\n")


class Snapfs(Tool):
    name = "snapfs"

    def __init__(self, work: str, data_dir: str) -> None:
        super().__init__(work, data_dir)
        self.cmd = [sys.executable, "-m", "snapfs"]

    def version(self) -> str:
        from importlib.metadata import version

        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        rev = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        return f"snapfs {version('snapfs')}" + (f" (git {rev})" if rev else "")

    def backup(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        image = os.path.join(self.data_dir, IMAGE_NAME)
        self.back_up(f"drive-scsi0.img:{image}", "vm", "1")
        self.back_up(f"root.pxar:{os.path.join(self.data_dir, TREE_NAME)}", "host", "tree")

    def back_up(self, source: str, backup_type: str, backup_id: str, *extra: str) -> None:
        """One `snapfs backup` of NAME.EXT:PATH into the bench's datastore, at SNAPFS_TIME."""
        run([*self.cmd, "backup", self.repo, source, "--type", backup_type, "--id", backup_id,
             "--time", SNAPFS_TIME, *extra])  # fmt: skip

    @property
    def index_dir(self) -> str:
        """The mount's kept pxar metadata indexes (by default under ~/.cache/snapfs)."""
        return os.path.join(self.work, "snapfs-index")

    def clear_caches(self) -> None:
        shutil.rmtree(self.index_dir, ignore_errors=True)

    def start_mount(self, mountpoint: str) -> Mount:
        try:  # returns once the mount answers
            run(
                [*self.cmd, "mount", self.repo, mountpoint, "--index-dir", self.index_dir],
                timeout=MOUNT_TIMEOUT,
            )
        except ToolError:
            abandon_mount(mountpoint)
            raise
        return Mount(self, mountpoint)

    def unmount(self, mount: Mount) -> None:
        pid = mount.find_pid()
        try:
            run([*self.cmd, "umount", mount.mountpoint], timeout=MOUNT_TIMEOUT)
        except ToolError:
            abandon_mount(mount.mountpoint)
            raise
        if pid:
            wait_gone(pid)

    def tree_path(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, "host", "tree", SNAPFS_TIME, "root.pxar")

    def image_path(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, "vm", "1", SNAPFS_TIME, "drive-scsi0.img")

    def restore_tree(self, target: str) -> str:
        out = os.path.join(target, "tree")
        run([*self.cmd, "restore", self.repo, f"host/tree/{SNAPFS_TIME}", "root.pxar", out])
        return out

    def restore_image(self, target: str) -> str:
        out = os.path.join(target, IMAGE_NAME)
        run([*self.cmd, "restore", self.repo, f"vm/1/{SNAPFS_TIME}", "drive-scsi0.img", out])
        return out


class Restic(Tool):
    name = "restic"

    def __init__(self, work: str, data_dir: str) -> None:
        super().__init__(work, data_dir)
        self.cache = os.path.join(work, "restic-cache")
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": self.repo,
            "RESTIC_PASSWORD": "snapfs-bench",  # a throwaway benchmark repository
            "RESTIC_CACHE_DIR": self.cache,
            "TZ": "UTC",  # snapshot directory names in the mount are local times
        }
        self._ids: dict[str, str] = {}

    def version(self) -> str:
        return run(["restic", "version"], env=self.env).split(" compiled")[0].strip()

    def backup(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        run(["restic", "init", "--repository-version", "2", "-q"], env=self.env)
        for name, (when, _) in ((IMAGE_NAME, RESTIC_IMAGE_TIME), (TREE_NAME, RESTIC_TREE_TIME)):
            run(
                ["restic", "backup", "-q", "--time", when, "--tag", name, name],
                env=self.env,
                cwd=self.data_dir,
            )

    def _root_in_snapshot(self) -> str:
        # restic 0.14 keeps a relative path as given (backups run in data_dir): no prefix.
        return ""

    def start_mount(self, mountpoint: str) -> Mount:
        proc = subprocess.Popen(
            ["restic", "mount", mountpoint],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return Mount(self, mountpoint, proc=proc)

    def unmount(self, mount: Mount) -> None:
        assert mount.proc is not None
        if mount.proc.poll() is None:
            mount.proc.send_signal(signal.SIGINT)  # restic unmounts and exits on Ctrl-C
            try:
                mount.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                mount.proc.kill()
                mount.proc.wait()
        if is_mounted(mount.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", mount.mountpoint], capture_output=True)

    def tree_path(self, mountpoint: str) -> str:
        return os.path.join(
            mountpoint, "snapshots", RESTIC_TREE_TIME[1], self._root_in_snapshot(), TREE_NAME
        )

    def image_path(self, mountpoint: str) -> str:
        return os.path.join(
            mountpoint, "snapshots", RESTIC_IMAGE_TIME[1], self._root_in_snapshot(), IMAGE_NAME
        )

    def _snapshot_id(self, tag: str) -> str:
        if tag not in self._ids:
            import json

            snaps = json.loads(run(["restic", "snapshots", "--json", "--tag", tag], env=self.env))
            self._ids[tag] = snaps[-1]["id"]
        return self._ids[tag]

    def restore_tree(self, target: str) -> str:
        run(
            ["restic", "restore", "-q", self._snapshot_id(TREE_NAME), "--target", target],
            env=self.env,
        )
        return os.path.join(target, self._root_in_snapshot(), TREE_NAME)

    def restore_image(self, target: str) -> str:
        run(
            ["restic", "restore", "-q", self._snapshot_id(IMAGE_NAME), "--target", target],
            env=self.env,
        )
        return os.path.join(target, self._root_in_snapshot(), IMAGE_NAME)

    def prefetch_ids(self) -> None:
        """Looks the snapshot ids up before the timed restores (restic needs them as arguments)."""
        self._snapshot_id(TREE_NAME)
        self._snapshot_id(IMAGE_NAME)

    def clear_caches(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)


class Borg(Tool):
    name = "borg"

    def __init__(self, work: str, data_dir: str) -> None:
        super().__init__(work, data_dir)
        self.home = os.path.join(work, "borg-home")
        self.env = {
            **os.environ,
            "BORG_BASE_DIR": self.home,
            "BORG_PASSPHRASE": "",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def version(self) -> str:
        return run(["borg", "--version"], env=self.env).strip()

    def backup(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        run(["borg", "init", "-e", "none", self.repo], env=self.env)
        for name in (IMAGE_NAME, TREE_NAME):
            archive = "image" if name == IMAGE_NAME else "tree"
            run(
                ["borg", "create", f"{self.repo}::{archive}", name], env=self.env, cwd=self.data_dir
            )

    def start_mount(self, mountpoint: str) -> Mount:
        try:  # daemonizes once mounted
            run(["borg", "mount", self.repo, mountpoint], env=self.env, timeout=MOUNT_TIMEOUT)
        except ToolError:
            abandon_mount(mountpoint)
            raise
        return Mount(self, mountpoint)

    def unmount(self, mount: Mount) -> None:
        pid = mount.find_pid()
        try:
            run(["borg", "umount", mount.mountpoint], env=self.env, timeout=MOUNT_TIMEOUT)
        except ToolError:
            abandon_mount(mount.mountpoint)
            raise
        if pid:
            wait_gone(pid)

    def tree_path(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, "tree", TREE_NAME)

    def image_path(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, "image", IMAGE_NAME)

    def restore_tree(self, target: str) -> str:
        run(["borg", "extract", f"{self.repo}::tree"], env=self.env, cwd=target)
        return os.path.join(target, TREE_NAME)

    def restore_image(self, target: str) -> str:
        # --sparse: holes for zero runs, as snapfs restore writes them (like for like).
        run(["borg", "extract", "--sparse", f"{self.repo}::image"], env=self.env, cwd=target)
        return os.path.join(target, IMAGE_NAME)

    def clear_caches(self) -> None:
        shutil.rmtree(os.path.join(self.home, ".cache"), ignore_errors=True)


TOOLS: dict[str, type[Tool]] = {"snapfs": Snapfs, "restic": Restic, "borg": Borg}
