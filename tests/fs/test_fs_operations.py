"""The pyfuse3 adapter against the golden model, without mounting: errno mapping and handlers."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import time

import pyfuse3
import pytest
import trio
from support.fs_model import ops_for, resolve
from support.vectors import IMAGE_SHA256

from snapfs.errors import (
    ChecksumMismatchError,
    CorruptDataError,
    KeyRequiredError,
    MissingChunkError,
    NotFoundError,
    SnapfsError,
    UsageError,
    WrongKeyError,
)
from snapfs.fs.model import ROOT_INODE, FsModel
from snapfs.fs.mount import MountOptions, mount_options
from snapfs.fs.operations import SnapfsOperations, errno_for
from snapfs.store.backend import LocalBackend, chunk_path
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore

V1 = "host/testhost/2024-06-01T11:00:00Z"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFoundError("x"), errno.ENOENT),
        (KeyRequiredError("x"), errno.EACCES),
        (WrongKeyError("x"), errno.EACCES),
        (MissingChunkError("x"), errno.EIO),
        (CorruptDataError("x"), errno.EIO),
        (ChecksumMismatchError("x"), errno.EIO),
        (UsageError("x"), errno.EINVAL),
        (SnapfsError("x"), errno.EIO),
    ],
)
def test_errno_mapping(exc, code):
    assert errno_for(exc) == code


def test_handlers(vectors):
    ops = ops_for(vectors / "datastore")

    async def main():
        root = await ops.getattr(ROOT_INODE)
        assert root.st_mode == 0o40555
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.lookup(ROOT_INODE, b"nothing")
        assert info.value.errno == errno.ENOENT
        latest = await resolve(ops, "vm/100/latest")
        assert await ops.readlink(latest.st_ino) == b"2024-06-01T14:00:00Z"
        image = await resolve(ops, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
        fi = await ops.open(image.st_ino, os.O_RDONLY)
        h = hashlib.sha256()
        for off in range(0, image.st_size, 1 << 20):
            h.update(await ops.read(fi.fh, off, 1 << 20))
        assert h.hexdigest() == IMAGE_SHA256
        await ops.release(fi.fh)
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(image.st_ino, os.O_RDWR)
        assert info.value.errno == errno.EROFS
        xattr_file = await resolve(ops, f"{V1}/root.pxar/xattr_file")
        assert set(await ops.listxattr(xattr_file.st_ino)) == {
            b"user.comment",
            b"user.binary",
            b"user.empty",
        }
        assert await ops.getxattr(xattr_file.st_ino, b"user.binary") == b"\x00\xff\x10"
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getxattr(xattr_file.st_ino, b"user.none")
        assert info.value.errno == pyfuse3.ENOATTR
        encrypted = await resolve(ops, "vm/100/2024-06-01T14:00:00Z/drive-scsi0.img")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(encrypted.st_ino, os.O_RDONLY)
        assert info.value.errno == errno.EACCES
        archive = await resolve(ops, "host/testhost/2024-06-01T12:00:00Z/root.pxar")
        assert archive.attr_timeout == 0  # unreadable without the key: never cached as final
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.opendir(archive.st_ino)
        assert info.value.errno == errno.EACCES
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.mkdir(ROOT_INODE, b"x", 0o755, None)
        assert info.value.errno == errno.EROFS
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getattr(1 << 50)
        assert info.value.errno == errno.ENOENT

    trio.run(main)


def test_missing_chunk_is_eio_and_logged_once(vectors, tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    digest = "803f1e37ee3026dc63265e3f20b110b5d68f043603cc4fc4d4785400503de524"
    (store / chunk_path(bytes.fromhex(digest))).unlink()
    ops = ops_for(store)

    async def main():
        image = await resolve(ops, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
        fi = await ops.open(image.st_ino, os.O_RDONLY)
        assert len(await ops.read(fi.fh, 0, 4096)) == 4096
        for _ in range(3):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.read(fi.fh, 3 * 4194304, 4096)
            assert info.value.errno == errno.EIO

    trio.run(main)
    lines = [r.getMessage() for r in caplog.records if digest in r.getMessage()]
    assert len(lines) == 1 and "drive-scsi0.img" in lines[0]


def test_reads_by_inode(vectors, monkeypatch):
    """With the kernel opening files itself, `open` says ENOSYS and `read` gets the inode: the
    right bytes per file, a bounded set of kept contents, `.snapfs/stats` as its last stat."""
    import snapfs.fs.operations as operations

    monkeypatch.setattr(operations, "OPEN_FILES", 2)
    ops = ops_for(vectors / "datastore")
    ops.reads_by_inode = True

    async def main():
        image = await resolve(ops, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(image.st_ino, os.O_RDONLY)
        assert info.value.errno == errno.ENOSYS
        h = hashlib.sha256()
        for off in range(0, image.st_size, 1 << 20):
            h.update(await ops.read(image.st_ino, off, 1 << 20))
        assert h.hexdigest() == IMAGE_SHA256
        texts = {}
        with tarfile.open(vectors / "source-tree.tar") as source:
            for name in ("big_random.bin", "dir_a/nested/notes.txt", "empty_file", "xattr_file"):
                attr = await resolve(ops, f"{V1}/root.pxar/{name}")
                texts[attr.st_ino] = source.extractfile(f"./{name}").read()
        for ino, text in texts.items():
            assert bytes(await ops.read(ino, 0, 1 << 22)) == text
        assert len(ops._by_inode) == 2
        for ino, text in texts.items():  # opened again after the kept ones were dropped
            assert bytes(await ops.read(ino, 1, 1 << 22)) == text[1:]
        stats = await resolve(ops, ".snapfs/stats")
        shown = await ops.getattr(stats.st_ino)
        text = bytes(await ops.read(stats.st_ino, 0, 1 << 20))
        assert len(text) == shown.st_size and text.endswith(b"\n")
        assert b"file opens sent by the kernel: 1\n" in text

    trio.run(main)


def test_a_sequential_read_decodes_the_next_chunks_in_the_background(vectors):
    ops = ops_for(vectors / "datastore")

    async def main():
        image = await resolve(ops, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
        fi = await ops.open(image.st_ino, os.O_RDONLY)
        assert len(await ops.read(fi.fh, 0, 4096)) == 4096
        return fi.fh

    fh = trio.run(main)
    stream = ops._files[fh].stream
    ahead = [stream.index.digest(i) for i in range(1, stream.index.chunk_count)]
    deadline = time.monotonic() + 30
    while not all(d in stream.chunks.cache for d in ahead) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert all(d in stream.chunks.cache for d in ahead)
    ops.close()  # the mount's end: the readahead threads stop, reads still work without them

    async def read_on():
        assert len(await ops.read(fh, 4096, 4096)) == 4096

    trio.run(read_on)


def test_mount_options_always_read_only_with_kernel_permission_checks():
    plain = mount_options(MountOptions(source="/srv/store,x", mountpoint="/mnt"))
    assert {"ro", "default_permissions"} <= plain and "allow_other" not in plain
    assert "fsname=snapfs:/srv/store_x" in plain  # a comma would split the option list
    assert "allow_other" in mount_options(
        MountOptions(source="/s", mountpoint="/m", allow_other=True)
    )


def test_a_file_given_up_before_indexing_is_found_again_in_its_directory(vectors):
    """No index, one node kept, no listing kept: the table holds only where each file was
    found, and a request on one long evicted decodes its directory again, in a thread."""
    model = FsModel(
        Datastore(LocalBackend(vectors / "datastore")),
        None,
        ChunkCache(64 << 20),
        recent_nodes=1,
        listing_cache_entries=0,
    )
    ops = SnapfsOperations(model)

    async def main():
        xattr_file = await resolve(ops, f"{V1}/root.pxar/xattr_file")
        small = await resolve(ops, f"{V1}/root.pxar/dir_a/small.bin")  # evicts xattr_file
        assert model.cached_node(xattr_file.st_ino) is None  # its directory must be decoded
        again = await ops.getattr(xattr_file.st_ino)
        assert (again.st_ino, again.st_size, again.st_mtime_ns) == (
            xattr_file.st_ino,
            xattr_file.st_size,
            xattr_file.st_mtime_ns,
        )
        assert await ops.getxattr(xattr_file.st_ino, b"user.binary") == b"\x00\xff\x10"
        await ops.lookup(ROOT_INODE, b"vm")  # evicts it again
        fi = await ops.open(small.st_ino, os.O_RDONLY)
        assert len(await ops.read(fi.fh, 0, small.st_size + 10)) == small.st_size
        assert model.references(xattr_file.st_ino) == 1
        await ops.forget([(xattr_file.st_ino, 1)])
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getattr(xattr_file.st_ino)
        assert info.value.errno == errno.ENOENT

    trio.run(main)
