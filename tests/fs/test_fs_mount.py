"""Real mounts of datastores made by `snapfs backup`, compared with tools nobody here wrote.

diff and rsync compare a backed-up tree with its source; the kernel's own ext4 driver reads a
partitioned disk image through the mount; 16 threads hammer one image and one archive with
random reads. Also the mount lifecycle: readiness, signals, dead mounts, errors, EIO isolation.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.mounting import foreground_mount, is_mounted, mounted, snapfs

from snapfs.format.index import parse_index
from snapfs.store.backend import chunk_path

pytestmark = pytest.mark.slow
TIME = "2024-06-01T10:00:00Z"


def backup(store: Path, *sources: str, extra=()) -> None:
    proc = snapfs("backup", store, *sources, "--time", TIME, *extra, timeout=600)
    assert proc.returncode == 0, proc.stderr


def make_tree(src: Path) -> None:
    """A tree with every kind of entry and metadata a backup must keep."""
    rng = random.Random(7)
    src.mkdir()
    (src / "big.bin").write_bytes(rng.randbytes(9 * 1024 * 1024 + 123))
    (src / "zeros.bin").write_bytes(bytes(5 * 1024 * 1024))
    (src / "empty").write_bytes(b"")
    (src / "text.txt").write_text("hello\n" * 1000)
    deep = src / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    for i in range(200):
        (deep / f"file{i:03d}").write_bytes(rng.randbytes(i * 13))
    (src / "utf8_äöü_€").write_text("unicode name\n")
    (src / os.fsdecode(b"raw_\xff\xfe")).write_text("non-utf8 name\n")
    (src / ("N" * 255)).write_text("long name\n")
    os.symlink("a/b/c", src / "rel_link")
    os.symlink("/nonexistent/target", src / "dangling")
    os.link(src / "text.txt", src / "hardlink_to_text")
    os.mkfifo(src / "fifo")
    os.mknod(src / "nulldev", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    (src / "xattrs").write_text("has xattrs\n")
    os.setxattr(src / "xattrs", "user.one", b"1")
    os.setxattr(src / "xattrs", "user.bin", b"\x00\xff")
    os.setxattr(src / "a", "user.dir", b"dir value")
    (src / "acl").write_text("acl\n")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:2345:r", str(src / "acl")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(src / "a" / "b")], check=True)
    (src / "setuid").write_text("#!/bin/sh\n")
    os.chmod(src / "setuid", 0o4755)
    os.chmod(src / "a" / "b" / "c", 0o2750)
    os.chown(src / "text.txt", 1000, 1001)
    os.lchown(src / "rel_link", 1002, 1003)
    for i, path in enumerate(sorted(src.rglob("*"))):
        os.utime(
            path,
            ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i * 1_000_000_007),
            follow_symlinks=False,
        )
    os.utime(src, ns=(1_000_000_000_999_999_999, 1_000_000_000_999_999_999))


@pytest.fixture(scope="module")
def tree_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tree")
    src = tmp / "src"
    make_tree(src)
    store = tmp / "store"
    backup(store, f"root.pxar:{src}", extra=("--type", "host", "--id", "tree"))
    backup(store, f"root.pxar:{src}", extra=("--type", "host", "--id", "split", "--split"))
    return src, store, tmp


@pytest.mark.parametrize("group", ["tree", "split"])
def test_backed_up_tree_equals_source(tree_store, group):
    src, store, tmp = tree_store
    with mounted(store, tmp / f"mnt-{group}") as mnt:
        archive = mnt / "host" / group / "latest" / "root.pxar"
        # diff reports any two fifos or devices as "different"; rsync -D below compares them.
        diff = ["diff", "-r", "--no-dereference", "--exclude=fifo", "--exclude=nulldev"]
        proc = subprocess.run([*diff, f"{src}/", f"{archive}/"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
        proc = subprocess.run(
            [
                "rsync",
                "-anHAX",
                "--checksum",
                "--numeric-ids",
                "--itemize-changes",
                f"{src}/",
                f"{archive}/",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "", proc.stdout
        # rsync -t compares seconds only: nanoseconds and the hard link are checked here.
        for path in [src, *src.rglob("*")]:
            rel = path.relative_to(src)
            a, b = os.lstat(path), os.lstat(archive / rel)
            assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (
                b.st_mode,
                b.st_uid,
                b.st_gid,
                b.st_mtime_ns,
            ), rel
            if not stat.S_ISDIR(a.st_mode):
                assert a.st_nlink == b.st_nlink, rel
        assert (
            os.lstat(archive / "text.txt").st_ino == os.lstat(archive / "hardlink_to_text").st_ino
        )


def _listings_read(mnt: Path) -> int:
    stats = (mnt / ".snapfs" / "stats").read_text()
    return int(re.search(r"^directory listings read by the kernel: (\d+)$", stats, re.M).group(1))


@pytest.mark.parametrize("group", ["tree", "split"])
def test_kernel_keeps_archive_listings_but_not_snapshot_lists(tree_store, group):
    """A second listing inside an archive never reaches snapfs (the kernel keeps the first);
    a listing of the group (it changes with the next backup) always does."""
    src, store, tmp = tree_store
    with mounted(store, tmp / f"mnt-cache-{group}") as mnt:
        snapshots = mnt / "host" / group
        archive = snapshots / "latest" / "root.pxar"
        first = {d: sorted(os.listdir(archive / d)) for d in ("", "a", "a/b")}
        read = _listings_read(mnt)
        for d, names in first.items():
            assert sorted(os.listdir(archive / d)) == names == sorted(os.listdir(src / d))
            assert [os.lstat(archive / d / n).st_mode for n in names] == [
                os.lstat(src / d / n).st_mode for n in names
            ]
        assert _listings_read(mnt) == read
        os.listdir(snapshots)
        read = _listings_read(mnt)
        assert sorted(os.listdir(snapshots)) == [TIME, "latest"]
        assert _listings_read(mnt) == read + 1


def test_the_kernel_opens_files_itself_and_stats_stay_current(tree_store):
    """After the first, no `open` reaches snapfs (reads name the inode), every file still reads
    its own bytes, and `.snapfs/stats` (rendered per stat) never shows a stale page."""
    src, store, tmp = tree_store
    with mounted(store, tmp / "mnt-no-open") as mnt:
        archive = mnt / "host" / "tree" / "latest" / "root.pxar"
        stats = mnt / ".snapfs" / "stats"
        chunks_read = re.compile(r"^chunks read from the source: (\d+)$", re.M)
        before = stats.read_text()
        deep = Path("a/b/c/d")
        names = sorted(os.listdir(src / deep))
        for name in names:  # and again: the second time from the page cache
            assert (archive / deep / name).read_bytes() == (src / deep / name).read_bytes()
        assert (archive / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
        with open(archive / "text.txt", "rb") as one, open(archive / "text.txt", "rb") as two:
            assert one.read(7) == b"hello\nh" and two.read() == (src / "text.txt").read_bytes()
            assert one.read() == (src / "text.txt").read_bytes()[7:]
        after = stats.read_text()
        assert after.splitlines()[-1].startswith("listings ")  # all of it, none cut off
        assert int(chunks_read.search(after).group(1)) > int(chunks_read.search(before).group(1))
        opens = int(re.search(r"^file opens sent by the kernel: (\d+)$", after, re.M).group(1))
        assert opens == 1  # the first, answered "the kernel may open files itself"


def _partition(loop: str) -> str:
    part = f"{loop}p1"
    if not os.path.exists(part):
        # No udev in containers: ask the kernel for the partition nodes explicitly.
        subprocess.run(["partx", "-a", loop], capture_output=True)
    assert os.path.exists(part), f"{part} missing"
    return part


def test_partitioned_ext4_image_through_the_mount(tmp_path):
    disk = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "72M", str(disk)], check=True)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\n,,L\n", check=True)
    rng = random.Random(3)
    files = {
        f"dir{i}/file{j}": rng.randbytes(rng.randrange(1, 300_000))
        for i in range(4)
        for j in range(10)
    }
    inner = tmp_path / "inner"
    inner.mkdir()
    loop = subprocess.run(
        ["losetup", "-f", "--show", "-P", str(disk)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        part = _partition(loop)
        subprocess.run(["mkfs.ext4", "-q", part], check=True)
        subprocess.run(["mount", part, str(inner)], check=True)
        try:
            for name, data in files.items():
                (inner / name).parent.mkdir(exist_ok=True)
                (inner / name).write_bytes(data)
        finally:
            subprocess.run(["umount", str(inner)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)

    store = tmp_path / "store"
    backup(store, f"drive-scsi0.img:{disk}", extra=("--type", "vm", "--id", "300"))
    with mounted(store, tmp_path / "mnt") as mnt:
        image = mnt / "vm" / "300" / TIME / "drive-scsi0.img"
        assert os.stat(image).st_size == os.stat(disk).st_size
        loop = subprocess.run(
            ["losetup", "-r", "-f", "--show", "-P", str(image)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        try:
            part = _partition(loop)
            subprocess.run(["mount", "-o", "ro", part, str(inner)], check=True)
            try:
                for name, data in files.items():
                    assert (inner / name).read_bytes() == data, name
            finally:
                subprocess.run(["umount", str(inner)], check=True)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)


def test_sixteen_concurrent_random_readers(tmp_path):
    rng = random.Random(11)
    image_bytes = (
        rng.randbytes(24 * 1024 * 1024) + bytes(8 * 1024 * 1024) + rng.randbytes(1_234_567)
    )
    disk = tmp_path / "disk.raw"
    disk.write_bytes(image_bytes)
    src = tmp_path / "src"
    src.mkdir()
    file_bytes = rng.randbytes(20 * 1024 * 1024 + 77)
    (src / "data.bin").write_bytes(file_bytes)
    store = tmp_path / "store"
    backup(
        store, f"drive-scsi0.img:{disk}", f"root.pxar:{src}", extra=("--type", "vm", "--id", "400")
    )
    with mounted(store, tmp_path / "mnt", "--cache-size", "16M") as mnt:
        snap = mnt / "vm" / "400" / TIME
        targets = [
            (snap / "drive-scsi0.img", image_bytes),
            (snap / "root.pxar" / "data.bin", file_bytes),
        ]
        mismatches: list[str] = []
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            r = random.Random(seed)
            path, expected = targets[seed % 2]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT if seed % 4 == 0 else os.O_RDONLY)
                try:
                    for _ in range(60):
                        if seed % 4 == 0:  # O_DIRECT: aligned, bypasses the page cache
                            off = r.randrange(0, len(expected) // 4096) * 4096
                            size = r.choice([4096, 65536, 1 << 20])
                        else:
                            off = r.randrange(0, len(expected))
                            size = r.randrange(1, 2 << 20)
                        got = os.pread(fd, size, off)
                        if got != expected[off : off + size]:
                            mismatches.append(f"{path.name} {off} {size}")
                finally:
                    os.close(fd)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert mismatches == []


def test_large_directory_streams_through_the_kernel(tmp_path):
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    names = [f"entry-{i:06d}" for i in range(100_000)]
    for name in names:
        (src / "many" / name).touch()
    store = tmp_path / "store"
    backup(store, f"root.pxar:{src}", extra=("--type", "host", "--id", "many"))
    with mounted(store, tmp_path / "mnt") as mnt:
        many = mnt / "host" / "many" / TIME / "root.pxar" / "many"
        with os.scandir(many) as it:
            listed = sorted(e.name for e in it)
        assert listed == names
        inodes = {os.lstat(many / n).st_ino for n in names[:1000]}
        assert len(inodes) == 1000
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("2\n")  # forget them all
        assert {os.lstat(many / n).st_ino for n in names[:1000]} == inodes


def test_mount_returns_fast_with_thousands_of_snapshots(tmp_path, vectors):
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    for g in range(500):
        for s in range(8):
            (store / "vm" / f"{1000 + g}" / f"2024-06-{s + 1:02d}T10:00:00Z").mkdir(parents=True)
    started = time.monotonic()
    with mounted(store, tmp_path / "mnt") as mnt:
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, elapsed
        assert len(os.listdir(mnt / "vm")) == 501
        assert len(os.listdir(mnt / "vm" / "1234")) == 8  # no manifest anywhere: no `latest`
        assert os.listdir(mnt / "vm" / "1234" / "2024-06-03T10:00:00Z") == []


def test_corrupt_chunk_is_eio_for_that_file_only(tmp_path, vectors):
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    digest = (
        "803f1e37ee3026dc63265e3f20b110b5d68f043603cc4fc4d4785400503de524"  # vm/100 image chunk 3
    )
    path = store / chunk_path(bytes.fromhex(digest))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(raw)
    log = tmp_path / "log"
    with mounted(store, tmp_path / "mnt", "--log-file", log) as mnt:
        image = mnt / "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img"
        with open(image, "rb", buffering=0) as f:
            assert len(f.read(1 << 20)) == 1 << 20
            for _ in range(3):
                f.seek(3 * 4194304 + 4096)
                with pytest.raises(OSError) as info:
                    f.read(4096)
                assert info.value.errno == 5  # EIO
        assert hashlib.sha256(
            (mnt / "vm/100/2024-06-01T10:00:00Z/qemu-server.conf").read_bytes()
        ).hexdigest()
        assert len(os.listdir(mnt / "host/testhost/2024-06-01T11:00:00Z/root.pxar")) == 18
    lines = [line for line in log.read_text().splitlines() if digest in line]
    assert len(lines) == 1, lines
    assert "drive-scsi0.img" in lines[0]


def test_foreground_mount_unmounts_on_sigterm_and_sigint(tmp_path, vectors):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with foreground_mount(vectors / "datastore", mnt) as proc:
            assert sorted(os.listdir(mnt)) == ["ct", "host", "ns", "vm"]
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0
            assert not is_mounted(mnt)


def _daemon_pid(mnt: Path) -> int:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in cmdline and os.fsencode(mnt) in cmdline and int(pid) != os.getpid():
            return int(pid)
    raise AssertionError("mount process not found")


def test_umount_of_a_mount_whose_process_died(tmp_path, vectors):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = snapfs("mount", vectors / "datastore", mnt)
    assert proc.returncode == 0, proc.stderr
    try:
        os.kill(_daemon_pid(mnt), signal.SIGKILL)
        with pytest.raises(OSError):
            os.listdir(mnt)
        again = snapfs("mount", vectors / "datastore", mnt)
        assert again.returncode != 0 and "umount" in again.stderr
    finally:
        done = snapfs("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == []


def test_mount_errors_are_one_line(tmp_path, vectors):
    for args in (
        [vectors / "datastore", tmp_path / "missing"],
        [tmp_path, tmp_path],  # not a datastore
    ):
        proc = snapfs("mount", *args)
        assert proc.returncode != 0
        assert proc.stderr.startswith("snapfs: error: ") and proc.stderr.count("\n") == 1, (
            proc.stderr
        )
    proc = snapfs("umount", tmp_path)
    assert proc.returncode != 0 and "not mounted" in proc.stderr


def test_a_cache_smaller_than_the_readahead_and_a_chunk_decodes_each_chunk_once(tmp_path):
    """With the smallest cache (--cache-size 4M), reading an image and an archive's big file
    front to back fetches each of their chunks once (the archive's few shared with its root's
    listing twice): the readahead names no more than the cache can keep beside the chunk being
    read, and a chunk larger than the whole cache stays while it is read, 128 KiB at a time."""
    rng = random.Random(23)
    image_bytes = rng.randbytes(8 * 4 * 1024 * 1024)  # 8 chunks of 4 MiB
    disk = tmp_path / "disk.raw"
    disk.write_bytes(image_bytes)
    src = tmp_path / "src"
    src.mkdir()
    file_bytes = rng.randbytes(40 * 1024 * 1024)
    (src / "data.bin").write_bytes(file_bytes)
    store = tmp_path / "store"
    backup(
        store, f"drive-scsi0.img:{disk}", f"root.pxar:{src}", extra=("--type", "vm", "--id", "401")
    )
    snapshot = store / "vm" / "401" / TIME
    fixed = parse_index((snapshot / "drive-scsi0.img.fidx").read_bytes(), name="image")
    dynamic = parse_index((snapshot / "root.pxar.didx").read_bytes(), name="archive")
    sizes = [stop - start for start, stop, _ in dynamic.chunks()]
    assert max(sizes) > 4 * 1024 * 1024, sizes  # the archive has a chunk larger than the cache
    with mounted(store, tmp_path / "mnt", "--cache-size", "4M", "--no-index") as mnt:
        snap = mnt / "vm" / "401" / TIME
        assert read_in_order(snap / "drive-scsi0.img") == image_bytes
        image_fetches = chunks_read(mnt)
        assert image_fetches == fixed.chunk_count  # 18 before: the readahead overran the cache
        assert read_in_order(snap / "root.pxar" / "data.bin") == file_bytes
        # Three chunks are read twice: the root's listing and the file's lookup read the first
        # and last ones before the file's bytes do. Before, a chunk larger than the cache was
        # read again for each 128 KiB asked for: 260 reads of 10 chunks.
        assert chunks_read(mnt) - image_fetches <= dynamic.chunk_count + 3


def read_in_order(path: Path, piece: int = 128 * 1024) -> bytes:
    """A file read front to back one request at a time (O_DIRECT: no kernel readahead beside it,
    whose parallel requests can reach a chunk boundary out of order), so that what the mount
    fetched can be counted exactly."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        pieces = []
        while block := os.pread(fd, piece, piece * len(pieces)):
            pieces.append(block)
        return b"".join(pieces)
    finally:
        os.close(fd)


def chunks_read(mnt: Path) -> int:
    stats = (mnt / ".snapfs" / "stats").read_text()
    return int(re.search(r"chunks read from the source: (\d+)", stats).group(1))
