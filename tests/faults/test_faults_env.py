"""Fault matrix, environment rows: full disks, unreadable keys and caches, busy or stale mount
points, no /dev/fuse, a killed mount process, a datastore changing under a mount.

Each test provokes the fault for real (a small tmpfs, another user via setpriv, a private mount
namespace, SIGKILL) and checks that snapfs says what is wrong in one line, changes nothing it was
not asked to change, and leaves a state the next command can recover from.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.mounting import error_line, is_mounted, mount_pids, mounted, snapfs, tmpfs
from support.vectors import IMAGE_SHA256

IMG = "vm/100/2024-06-01T10:00:00Z"
IMG_ENC = "vm/100/2024-06-01T14:00:00Z"
V1 = "host/testhost/2024-06-01T11:00:00Z"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture
def store(vectors, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(vectors / "datastore", copy)
    return copy


# --- restore targets ---------------------------------------------------------------------------------


def test_restore_onto_a_full_disk_fails_cleanly(vectors, tmp_path):
    with tmpfs(tmp_path / "small", "4m") as small:
        proc = snapfs("restore", vectors / "datastore", IMG, "drive-scsi0.img", small / "d.raw")
        error_line(proc, "No space left on device", "d.raw")

        proc = snapfs("restore", vectors / "datastore", V1, "root.pxar", small / "tree", "--json")
        assert proc.returncode == 1
        report = json.loads(proc.stdout)
        assert report["failures"] and all(
            "No space left on device" in f["message"] for f in report["failures"]
        )
        # What did get restored is exact: the small files made it before the disk filled.
        for path in (small / "tree").rglob("*"):
            if path.is_file() and path.stat().st_size and not path.is_symlink():
                rel = str(path.relative_to(small / "tree"))
                failed = {f.get("path", "").lstrip("/") for f in report["failures"]}
                if rel in failed:
                    continue
                truth = snapfs("cat", vectors / "datastore", V1, f"root.pxar/{rel}")
                assert path.read_text(errors="replace") == truth.stdout, rel


def test_restore_image_resumes_after_the_disk_is_grown(vectors, tmp_path):
    """The bad day goes on: after ENOSPC, --resume on a bigger disk completes the same file."""
    target = tmp_path / "disk.raw"
    with tmpfs(tmp_path / "small", "4m") as small:
        proc = snapfs("restore", vectors / "datastore", IMG, "drive-scsi0.img", small / "d.raw")
        error_line(proc, "No space left on device")
        shutil.copyfile(small / "d.raw", target)
    proc = snapfs("restore", vectors / "datastore", IMG, "drive-scsi0.img", target, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == IMAGE_SHA256


# --- keys and caches -------------------------------------------------------------------------------------


def test_unreadable_key_file_is_one_clear_error(vectors, tmp_path):
    key = tmp_path / "key.json"
    shutil.copy(vectors / "keys" / "key-pbkdf2.json", key)
    key.chmod(0o600)
    tmp_path.chmod(0o755)
    store = vectors / "datastore"
    env = {**os.environ, "SNAPFS_KEY_PASSWORD": "pbs-vector-password"}
    proc = subprocess.run(
        [*NOBODY, sys.executable, "-m", "snapfs", "cat", store, IMG_ENC, "qemu-server.conf"]
        + ["--keyfile", key],
        capture_output=True,
        text=True,
        env=env,
    )
    line = error_line(proc, str(key))
    assert "ermission denied" in line and "pbs-vector-password" not in proc.stderr
    for bad in (tmp_path / "missing.json", tmp_path):  # absent, and a directory
        proc = snapfs("cat", store, IMG_ENC, "qemu-server.conf", "--keyfile", bad, env=env)
        error_line(proc, str(bad))


def test_unwritable_cache_dir_is_refused(s3server, s3_vectors, tmp_path):
    """--cache-dir on a read-only filesystem: refused up front, in one line naming the folder."""
    env = s3server.reader_env()
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro], check=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snapfs", "cat", s3_vectors, IMG, "drive-scsi0.img"]
            + ["--endpoint-url", s3server.endpoint, "--path-style", "--cache-dir", ro / "cache"],
            capture_output=True,
            env=env,
            timeout=120,
        )
    finally:
        subprocess.run(["umount", "-l", ro], check=True)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b"", err
    assert err.startswith("snapfs: error: cache folder ") and err.count("\n") == 1, err
    assert str(ro / "cache") in err and "Read-only file system" in err


# --- mount points ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mount_on_a_busy_or_used_mount_point(vectors, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "keep.txt").write_text("underneath\n")
    with mounted(vectors / "datastore", mnt):
        assert sorted(os.listdir(mnt)) == ["ct", "host", "ns", "vm"]
        # A second mount on the same point is refused; the first keeps serving.
        proc = snapfs("mount", vectors / "datastore", mnt)
        error_line(proc, "already")
        assert (mnt / V1 / "root.pxar/dir_a/nested/notes.txt").read_bytes()
        # Busy: a process sits in the mount; umount says so and the mount stays usable.
        sitter = subprocess.Popen(["sleep", "600"], cwd=mnt / "vm")
        try:
            proc = snapfs("umount", mnt)
            error_line(proc, "busy")
            assert is_mounted(mnt) and os.listdir(mnt / "vm/100")
        finally:
            sitter.kill()
            sitter.wait()
    # The directory's own content was hidden, never touched.
    assert (mnt / "keep.txt").read_text() == "underneath\n"


@pytest.mark.slow
def test_mount_without_dev_fuse_fails_in_one_line(vectors, tmp_path):
    """A private mount namespace with an empty file bound over /dev/fuse (as in a container
    started without --device /dev/fuse)."""
    empty = tmp_path / "no-fuse"
    empty.write_bytes(b"")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (
        f"mount --bind {empty} /dev/fuse && "
        f"exec {sys.executable} -m snapfs mount {vectors / 'datastore'} {mnt}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    error_line(proc, str(mnt))
    assert not is_mounted(mnt)


@pytest.mark.slow
def test_killed_mount_process_is_recovered(vectors, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = snapfs("mount", vectors / "datastore", mnt)
    assert proc.returncode == 0, proc.stderr
    (pid,) = mount_pids(mnt)
    try:
        _kill_and_recover(vectors, mnt, pid)
    finally:
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", mnt])


def _kill_and_recover(vectors: Path, mnt: Path, pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    with pytest.raises(OSError) as exc:
        os.listdir(mnt)
    assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    # `snapfs mount` names the problem and the fix; `snapfs umount` applies it.
    proc = snapfs("mount", vectors / "datastore", mnt)
    error_line(proc, "snapfs umount")
    proc = snapfs("umount", mnt)
    assert proc.returncode == 0, proc.stderr
    assert not is_mounted(mnt)
    with mounted(vectors / "datastore", mnt):
        assert (mnt / IMG / "qemu-server.conf").read_bytes().startswith(b"boot:")


@pytest.mark.slow
def test_snapshot_pruned_and_chunks_collected_under_a_mount(store, tmp_path):
    """Reads of what vanished fail cleanly (ENOENT/EIO); everything else keeps working."""
    with mounted(store, tmp_path / "mnt") as mnt:
        conf = (mnt / IMG / "qemu-server.conf").read_bytes()
        assert conf.startswith(b"boot:")
        big = mnt / V1 / "root.pxar/big_random.bin"
        size = big.stat().st_size
        shutil.rmtree(store / IMG)  # prune
        with pytest.raises(OSError) as exc:
            (mnt / IMG / "drive-scsi0.img").read_bytes()
        assert exc.value.errno in (errno.ENOENT, errno.EIO)
        # garbage collection: every chunk goes (what is already decoded in memory may still be
        # served, and is right; what is not fails)
        for chunk in (store / ".chunks").rglob("*"):
            if chunk.is_file():
                chunk.unlink()
        with open(big, "rb") as f, pytest.raises(OSError) as exc:
            os.pread(f.fileno(), 4096, size // 2)
        assert exc.value.errno == errno.EIO
        # Metadata already known still answers; the manifest text is served from memory.
        assert (mnt / IMG_ENC / "index.json").read_bytes()


@pytest.mark.slow
def test_pruned_snapshot_leaves_listing_after_refresh(store, tmp_path):
    with mounted(store, tmp_path / "mnt", "--refresh-interval", "1") as mnt:
        assert "2024-06-01T10:00:00Z" in os.listdir(mnt / "vm/100")
        shutil.rmtree(store / IMG)
        deadline = time.monotonic() + 10
        while "2024-06-01T10:00:00Z" in os.listdir(mnt / "vm/100"):
            assert time.monotonic() < deadline, "pruned snapshot still listed"
            time.sleep(0.5)
