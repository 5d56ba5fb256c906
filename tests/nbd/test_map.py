"""`snapfs map` / `unmap`: a backed-up disk as a loop device whose partition mounts; no loop device
or mount is left behind, also when the mount process was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.guest import build_disk

pytestmark = pytest.mark.slow
SNAPSHOT = "vm/100/2024-06-01T10:00:00Z"
FILES = {"hello.txt": b"mapped partition content\n", "data.bin": os.urandom(300_000)}


def _snapfs(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snapfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def mapped_store(tmp_path):
    disk = tmp_path / "disk.raw"
    build_disk(disk, FILES, size_mb=16)
    store = tmp_path / "ds"
    env = {**os.environ, "SNAPFS_RUN_DIR": str(tmp_path / "run")}
    r = _snapfs(
        env, "backup", str(store), f"drive-scsi0.img:{disk}", "--time", "2024-06-01T10:00:00Z"
    )
    assert r.returncode == 0, r.stderr
    yield store, env, tmp_path
    _snapfs(env, "unmap")  # whatever a failed test left


def _attached_to(run_dir: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if str(run_dir) in line]


def _state(run_dir: Path) -> dict:
    (state,) = list(run_dir.glob("map-*/state.json"))
    return json.loads(state.read_text())


def test_map_partition_mounts_and_unmap_cleans_up(mapped_store):
    store, env, tmp = mapped_store
    r = _snapfs(env, "map", str(store), SNAPSHOT, "drive-scsi0.img")
    assert r.returncode == 0, r.stderr
    device = r.stdout.strip()
    assert device.startswith("/dev/loop")
    assert os.path.exists(f"{device}p1")
    listing = _snapfs(env, "unmap")
    assert device in listing.stdout and f"{SNAPSHOT}/drive-scsi0.img" in listing.stdout
    mnt = tmp / "p1"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", f"{device}p1", str(mnt)], check=True, timeout=30)
    try:
        for name, data in FILES.items():
            assert (mnt / name).read_bytes() == data
        busy = _snapfs(env, "unmap", device)
        assert busy.returncode != 0 and "mounted" in busy.stderr
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    assert _snapfs(env, "unmap", device).returncode == 0
    assert _attached_to(tmp / "run") == []
    assert not os.path.exists(f"{device}p1")
    assert list((tmp / "run").glob("map-*")) == []
    # Only our own mounts: other snapfs mounts may be running on the machine.
    assert str(tmp / "run") not in Path("/proc/self/mounts").read_text()


def test_unmap_cleans_up_after_killed_mount_process(mapped_store):
    store, env, tmp = mapped_store
    r = _snapfs(env, "map", str(store), SNAPSHOT, "drive-scsi0.img")
    assert r.returncode == 0, r.stderr
    device = r.stdout.strip()
    os.kill(_state(tmp / "run")["pid"], signal.SIGKILL)
    r = _snapfs(env, "unmap")
    assert r.returncode == 0, r.stderr
    assert "stale" in r.stderr
    assert _attached_to(tmp / "run") == []
    assert list((tmp / "run").glob("map-*")) == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp / "run") not in mounts
    assert not os.path.exists(f"{device}p1")


def test_map_unknown_image_fails_cleanly(mapped_store):
    store, env, tmp = mapped_store
    r = _snapfs(env, "map", str(store), SNAPSHOT, "drive-virtio9.img")
    assert r.returncode == 1
    assert "drive-virtio9.img" in r.stderr
    assert list((tmp / "run").glob("map-*")) == []


def test_unmap_of_unknown_device_is_an_error(mapped_store):
    _, env, _ = mapped_store
    r = _snapfs(env, "unmap", "/dev/loop999")
    assert r.returncode == 1 and "not a snapfs mapping" in r.stderr
