"""The errno programs see for a wrong request: a missing name is ENOENT, a path through a file
ENOTDIR, reading a directory EISDIR, readlink of anything else EINVAL, a write EROFS, a missing
xattr ENOATTR; EIO is kept for data that cannot be read or verified (tests/faults/test_faults_data.py).

Through a real mount with plain `os` calls, for every kind of node the mount has, and without the
kernel for the requests its VFS normally answers itself: the model then raises an error that
names the mistake, the adapter maps it to the errno, and nothing is logged (the datastore is fine).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import pytest
import trio
from support.fs_model import model_for, ops_for, resolve, walk
from support.mounting import mounted

from snapfs.errors import SnapfsError
from snapfs.fs.operations import errno_for

IMG = "vm/100/2024-06-01T10:00:00Z"
V1 = "host/testhost/2024-06-01T11:00:00Z"

DIRS = {
    "namespace": "ns/testns",
    "type": "vm",
    "group": "vm/100",
    "snapshot": IMG,
    "image parts": f"{IMG}/drive-scsi0.img.parts",
    "pxar archive": f"{V1}/root.pxar",
    "pxar dir": f"{V1}/root.pxar/dir_a",
    "latest symlink": "vm/100/latest",  # followed: its snapshot directory
}
FILES = {
    "config blob": f"{IMG}/qemu-server.conf",
    "index.json": f"{IMG}/index.json",
    "image": f"{IMG}/drive-scsi0.img",
    "pxar file": f"{V1}/root.pxar/dir_a/small.bin",
    "pxar symlink": f"{V1}/root.pxar/symlink_rel",  # followed: dir_a/nested/notes.txt
}
SYMLINKS = {"latest symlink": "vm/100/latest", "pxar symlink": f"{V1}/root.pxar/symlink_rel"}


def errno_of(call: Callable[[], object]) -> int:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


def open_to_write(path: Path, mode: str = "w") -> None:
    with open(path, mode):
        pass


def read_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 4096)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def mnt(vectors, tmp_path_factory):
    with mounted(vectors / "datastore", tmp_path_factory.mktemp("errno") / "mnt") as mnt:
        yield mnt


# --- through a real mount --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rel", DIRS.values(), ids=DIRS.keys())
def test_directory_errnos(mnt, rel):
    path = mnt / rel
    assert errno_of(lambda: os.stat(path / "missing")) == errno.ENOENT
    assert errno_of(lambda: os.listdir(path / "missing")) == errno.ENOENT
    assert errno_of(lambda: read_directory(path)) == errno.EISDIR
    assert errno_of(lambda: open_to_write(path)) == errno.EISDIR
    assert errno_of(lambda: open_to_write(path / "new")) == errno.EROFS
    assert errno_of(lambda: os.mkdir(path / "new")) == errno.EROFS
    if rel not in SYMLINKS.values():
        assert errno_of(lambda: os.readlink(path)) == errno.EINVAL


@pytest.mark.slow
@pytest.mark.parametrize("rel", FILES.values(), ids=FILES.keys())
def test_file_errnos(mnt, rel):
    path = mnt / rel
    assert errno_of(lambda: os.stat(path / "x")) == errno.ENOTDIR
    assert errno_of(lambda: os.stat(path / "x" / "y")) == errno.ENOTDIR
    assert errno_of(lambda: os.listdir(path)) == errno.ENOTDIR
    assert errno_of(lambda: os.open(path, os.O_RDONLY | os.O_DIRECTORY)) == errno.ENOTDIR
    assert errno_of(lambda: open_to_write(path)) == errno.EROFS
    assert errno_of(lambda: open_to_write(path, "ab")) == errno.EROFS
    assert errno_of(lambda: os.truncate(path, 0)) == errno.EROFS
    if rel not in SYMLINKS.values():
        assert errno_of(lambda: os.readlink(path)) == errno.EINVAL
    with open(path, "rb") as f:  # and the file itself reads
        assert f.read(16)


@pytest.mark.slow
@pytest.mark.parametrize("rel", SYMLINKS.values(), ids=SYMLINKS.keys())
def test_symlink_errnos(mnt, rel):
    path = mnt / rel
    assert os.readlink(path)
    assert errno_of(lambda: os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) == errno.ELOOP
    assert errno_of(lambda: os.unlink(path)) == errno.EROFS
    assert errno_of(lambda: os.symlink("elsewhere", path.with_name("new"))) == errno.EROFS


@pytest.mark.slow
def test_missing_names_are_enoent_at_every_level(mnt):
    for rel in (
        "missing",
        "vm/999",
        "vm/100/2024-06-01T09:00:00Z",
        f"{IMG}/missing.img",
        ".snapfs/missing",
    ):
        assert errno_of(lambda rel=rel: os.stat(mnt / rel)) == errno.ENOENT, rel
    assert errno_of(lambda: os.readlink(mnt / "vm/100/missing")) == errno.ENOENT
    assert errno_of(lambda: os.getxattr(mnt / IMG, "user.missing")) == errno.ENODATA


# --- the requests the kernel answers itself, asked of the adapter directly -----------------------------


def test_adapter_answers_wrong_kind_requests_without_logging(vectors, caplog):
    ops = ops_for(vectors / "datastore")

    async def fuse_errno(call) -> int:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        return info.value.errno

    async def main():
        for rel in FILES.values():
            file = await resolve(ops, rel)
            assert await fuse_errno(ops.lookup(file.st_ino, b"x")) == errno.ENOTDIR, rel
            assert await fuse_errno(ops.opendir(file.st_ino)) == errno.ENOTDIR, rel
        for rel in sorted(set(DIRS.values()) - set(SYMLINKS.values())):  # the kernel follows
            folder = await resolve(ops, rel)
            assert await fuse_errno(ops.open(folder.st_ino, os.O_RDONLY)) == errno.EISDIR, rel
            assert await fuse_errno(ops.lookup(folder.st_ino, b"missing")) == errno.ENOENT, rel
            assert await fuse_errno(ops.readlink(folder.st_ino)) == errno.EINVAL, rel
        fifo = await resolve(ops, f"{V1}/root.pxar/fifo")
        assert await fuse_errno(ops.open(fifo.st_ino, os.O_RDONLY)) == errno.EINVAL
        image = await resolve(ops, f"{IMG}/drive-scsi0.img")
        assert await fuse_errno(ops.getxattr(image.st_ino, b"user.x")) == pyfuse3.ENOATTR

    with caplog.at_level(logging.ERROR):
        trio.run(main)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_model_names_the_mistake(vectors):
    """What the model raises says what is wrong with the request; the adapter only maps it."""
    model = model_for(vectors / "datastore")
    blob = walk(model, f"{IMG}/qemu-server.conf")
    pxar_file = walk(model, f"{V1}/root.pxar/dir_a/small.bin")
    pxar_dir = walk(model, f"{V1}/root.pxar/dir_a")
    snapshot = walk(model, IMG)
    for call, code in (
        (lambda: model.lookup(blob, b"x"), errno.ENOTDIR),
        (lambda: model.lookup(pxar_file, b"x"), errno.ENOTDIR),
        (lambda: model.opendir(blob), errno.ENOTDIR),
        (lambda: model.opendir(pxar_file), errno.ENOTDIR),
        (lambda: model.open(snapshot), errno.EISDIR),
        (lambda: model.open(pxar_dir), errno.EISDIR),
        (lambda: model.readlink(blob), errno.EINVAL),
        (lambda: model.readlink(pxar_dir), errno.EINVAL),
        (lambda: model.lookup(snapshot, b"missing"), errno.ENOENT),
        (lambda: model.lookup(pxar_dir, b"missing"), errno.ENOENT),
    ):
        with pytest.raises(SnapfsError) as info:
            call()
        assert errno_for(info.value) == code, info.value
