"""End to end: a real Linux guest boots under QEMU from a backed-up disk served by `snapfs nbd`,
through a qcow2 overlay; it reads a known file and writes a new one; the backup stays unchanged.
Also: qemu-img compare of the image via nbd:// and via the FUSE file against the original.

Fails (never skips) when QEMU or the kernel packages are missing: scripts/setup installs them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.guest import (
    MARK_DONE,
    MARK_READ,
    MARK_WROTE,
    boot_guest,
    build_disk,
    build_initramfs,
    guest_init,
    guest_kit,
)

pytestmark = pytest.mark.slow
SNAPSHOT = "vm/100/2024-06-01T10:00:00Z"
KNOWN = b"snapfs guest test: known content 7f3a\n"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed (scripts/setup installs qemu-system-x86 qemu-utils)")
    return path


def _snapfs(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snapfs", *args], capture_output=True, text=True, timeout=120, **kw
    )


class NbdProcess:
    """`snapfs nbd` as a user runs it; the first stdout line is the export's URL."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snapfs", "nbd", *args, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("nbd://"):
            self.stop()
            pytest.fail(f"snapfs nbd did not start: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    """A GPT disk with an ext4 partition, backed up; (work dir, datastore, disk path, sha256)."""
    _tool("mkfs.ext4")
    work = tmp_path_factory.mktemp("guest")
    disk = work / "disk.raw"
    build_disk(disk, {"hello.txt": KNOWN})
    store = work / "ds"
    result = _snapfs(
        "backup", str(store), f"drive-scsi0.img:{disk}", "--time", "2024-06-01T10:00:00Z"
    )
    assert result.returncode == 0, result.stderr
    return work, store, disk, hashlib.sha256(disk.read_bytes()).hexdigest()


def _chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in store.rglob("*") if p.is_file()}


@pytest.mark.timeout(300)
def test_guest_boots_from_backup_through_qcow2_overlay(backed_up):
    work, store, disk, digest = backed_up
    _tool("qemu-system-x86_64")
    qemu_img = _tool("qemu-img")
    kit = guest_kit()
    initrd = build_initramfs(
        kit, guest_init(kit, "hello.txt", "new.txt", "written by the guest"), work / "initrd"
    )
    before = _chunk_files(store)
    server = NbdProcess(str(store), SNAPSHOT, "drive-scsi0.img")
    try:
        overlay = work / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            [qemu_img, "create", "-q", "-f", "qcow2", "-b", server.url, "-F", "raw", str(overlay)],
            check=True,
            timeout=60,
        )
        console, seconds = boot_guest(kit, initrd, str(overlay), timeout=90)
        assert f"{MARK_READ}{KNOWN.decode().strip()}" in console, console[-3000:]
        assert MARK_WROTE in console, console[-3000:]
        assert MARK_DONE in console, console[-3000:]
        assert seconds < 60, f"guest took {seconds:.1f} s"
        # The guest's write is in the overlay: flatten it and read the new file with debugfs.
        flat = work / "flat.raw"
        subprocess.run(
            [qemu_img, "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(flat)],
            check=True,
            timeout=120,
        )
    finally:
        server.stop()
    from snapfs.format.partitions import read_partition_table
    from snapfs.format.source import FileSource

    with FileSource(flat) as src:
        part = read_partition_table(src, name=str(flat)).partition(1)
        (work / "p1.ext4").write_bytes(src.read_at(part.start, part.size))
    cat = subprocess.run(
        ["debugfs", "-R", "cat /new.txt", str(work / "p1.ext4")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cat.stdout == "written by the guest\n", cat.stderr
    # The backup did not change: same files, and the image still reads back as the original.
    assert _chunk_files(store) == before
    verify = _snapfs("verify", str(store))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    out = subprocess.run(
        [sys.executable, "-m", "snapfs", "cat", str(store), SNAPSHOT, "drive-scsi0.img"],
        capture_output=True,
        timeout=120,
    )
    assert hashlib.sha256(out.stdout).hexdigest() == digest


@pytest.mark.timeout(180)
def test_qemu_img_compare_nbd_and_fuse_file_equal_original(backed_up):
    work, store, disk, _ = backed_up
    qemu_img = _tool("qemu-img")
    server = NbdProcess(str(store))
    try:
        result = subprocess.run(
            [qemu_img, "compare", "-f", "raw", "-F", "raw", str(disk), server.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        server.stop()
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    mounted = _snapfs("mount", str(store), str(mnt))
    assert mounted.returncode == 0, mounted.stderr
    try:
        image = mnt / SNAPSHOT / "drive-scsi0.img"
        result = subprocess.run(
            [qemu_img, "compare", "-f", "raw", "-F", "raw", str(disk), str(image)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        assert _snapfs("umount", str(mnt)).returncode == 0
    assert not os.path.ismount(mnt)
