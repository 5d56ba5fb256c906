"""A real mount hands the kernel the files stored beside one just read (snapfs.fs.page_fill):
they are then read from the page cache, with the right bytes and without a READ, from a
unified archive and from a split one alike."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time

import pytest
from support.mounting import foreground_mount, is_mounted, mounted
from support.serving import backup_image
from support.stores import pxar_store

from snapfs.backup import IMAGE_CHUNK_SIZE as CHUNK
from snapfs.backup import backup, parse_backup_source
from snapfs.pxar.tree import encode_tree

pytestmark = pytest.mark.slow

ARCHIVE = "host/bad/2024-06-01T11:00:00Z/root.pxar"
TIME = 1717239600  # its snapshot's time


def stats(mnt) -> str:
    return (mnt / ".snapfs" / "stats").read_text()


def counter(mnt, pattern: str) -> int:
    return int(re.search(pattern, stats(mnt)).group(1))


def wait_for(mnt, done, what: str) -> None:
    deadline = time.monotonic() + 60
    while not done(stats(mnt)):
        assert time.monotonic() < deadline, f"{what}:\n{stats(mnt)}"
        time.sleep(0.05)


@pytest.fixture(params=["unified", "split"])
def small_files(tmp_path, request):
    """200 small files in 20 directories: the whole archive (or payload stream) is one chunk."""
    tree = tmp_path / "tree"
    for d in range(20):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (tree / f"d{d}" / f"f{f}").write_bytes(os.urandom(700 + 97 * f))  # no page size
    store = tmp_path / "store"
    if request.param == "split":
        source = parse_backup_source(f"root.pxar:{tree}")
        backup(store, [source], backup_type="host", backup_id="bad", backup_time=TIME, split=True)
        return tree, store
    out = io.BytesIO()
    encode_tree(tree, out)
    return tree, pxar_store(store, out.getvalue())


def test_files_beside_a_read_one_come_from_the_page_cache(tmp_path, small_files):
    tree, store = small_files
    with mounted(store, tmp_path / "mnt", "--index-dir", str(tmp_path / "index")) as mnt:
        root = mnt / ARCHIVE
        names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
        # Every directory listed: the kernel knows every file, and the archive gets indexed.
        subprocess.run(["find", str(root)], check=True, capture_output=True)
        wait_for(mnt, lambda text: "1 built" in text, "the archive was not indexed")

        first, *rest = names
        assert (root / first).read_bytes() == (tree / first).read_bytes()
        wait_for(
            mnt,
            lambda text: (
                re.search(r"before a read: (\d+) \(0 jobs pending\)", text)
                and int(re.search(r"before a read: (\d+)", text).group(1)) == len(rest)
            ),
            "the other files were not handed to the kernel",
        )
        reads = counter(mnt, r"archive and image reads sent by the kernel: (\d+)")
        for name in rest:
            assert (root / name).read_bytes() == (tree / name).read_bytes(), name
        assert counter(mnt, r"archive and image reads sent by the kernel: (\d+)") == reads


def test_files_of_a_directory_listed_during_a_tar_come_from_the_page_cache(tmp_path, small_files):
    """A reader going through the tree as `tar` does (list a directory, read its files, go on):
    once it reads in archive order, each directory it lists has its files handed over, and
    reading them sends no READ. No `find` first: the listings are the mount's own."""
    tree, store = small_files
    with mounted(store, tmp_path / "mnt", "--index-dir", str(tmp_path / "index")) as mnt:
        root = mnt / ARCHIVE
        first, *others = sorted(os.listdir(root))
        for name in sorted(os.listdir(root / first)):  # decodes the chunk; reads in order
            assert (root / first / name).read_bytes() == (tree / first / name).read_bytes()
        for directory in others:
            names = sorted(os.listdir(root / directory))
            wait_for(mnt, lambda text: "(0 jobs pending)" in text, "the filler is stuck")
            reads = counter(mnt, r"archive and image reads sent by the kernel: (\d+)")
            for name in names:
                path = f"{directory}/{name}"
                assert (root / path).read_bytes() == (tree / path).read_bytes(), path
            assert counter(mnt, r"archive and image reads sent by the kernel: (\d+)") == reads
        assert counter(mnt, r"before a read: (\d+)") >= 10 * len(others)


def test_reads_near_a_random_one_come_from_the_page_cache(tmp_path):
    """A random read of a disk image decodes its 4 MiB chunk; the rest of that chunk goes to
    the kernel, and reads elsewhere in it are answered without a READ."""
    data = os.urandom(4 * CHUNK)
    (tmp_path / "disk.raw").write_bytes(data)
    snapshot = backup_image(tmp_path / "ds", tmp_path / "disk.raw", "vm/100")
    with mounted(tmp_path / "ds", tmp_path / "mnt", "--index-dir", str(tmp_path / "index")) as mnt:
        fd = os.open(mnt / snapshot / "drive-scsi0.img", os.O_RDONLY)
        try:
            at = 2 * CHUNK + CHUNK // 2  # far from the start: not a sequential read
            assert os.pread(fd, 4096, at) == data[at : at + 4096]
            wait_for(
                mnt,
                lambda text: re.search(r"before a read: 2 \(0 jobs pending\)", text),
                "the rest of the chunk was not handed to the kernel",
            )
            reads = counter(mnt, r"archive and image reads sent by the kernel: (\d+)")
            for offset in (2 * CHUNK, at - 8192, 3 * CHUNK - 4096):
                assert os.pread(fd, 4096, offset) == data[offset : offset + 4096], offset
            assert counter(mnt, r"archive and image reads sent by the kernel: (\d+)") == reads
            other = CHUNK // 2  # another chunk: read through the mount as ever
            assert os.pread(fd, 4096, other) == data[other : other + 4096]
            assert counter(mnt, r"archive and image reads sent by the kernel: (\d+)") > reads
        finally:
            os.close(fd)


def test_a_mount_stopped_by_a_signal_while_reading_ends(tmp_path, small_files):
    """SIGTERM during a tar that has the filler handing files over: the mount stops the filler
    while it still answers READs, then ends and unmounts (no store left waiting)."""
    _, store = small_files
    mnt = tmp_path / "mnt"
    with foreground_mount(store, mnt, "--index-dir", tmp_path / "index") as proc:
        root = mnt / ARCHIVE
        subprocess.run(["find", str(root)], check=True, capture_output=True)
        wait_for(mnt, lambda text: "1 built" in text, "the archive was not indexed")
        with subprocess.Popen(["tar", "-C", str(root), "-cf", "/dev/null", "."]) as tar:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert not is_mounted(mnt)
            tar.wait(timeout=30)  # its reads fail once the mount is gone
