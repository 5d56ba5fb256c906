"""Each node kind's plain requests, without FUSE: lookup, attr, listing, open/read, readlink,
xattrs, the `cached_` twins that never block, and the error each kind answers for a request that
does not fit it."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys

import pytest
from support.fs_model import SPLIT, V1, model_for, walk
from support.vectors import IMAGE_SHA256

from snapfs.errors import (
    IsDirectoryError,
    KeyRequiredError,
    NotDirectoryError,
    NotFoundError,
    NotRegularFileError,
    NotSymlinkError,
)
from snapfs.format.partitions import Partition
from snapfs.fs.archive import ArchiveNode, PxarDirNode, PxarFileNode, PxarNode, PxarSymlinkNode
from snapfs.fs.content import BytesContent, Content
from snapfs.fs.control import CONTROL_DIR, ControlDirNode, StatsNode
from snapfs.fs.image import PartitionNode, PartsNode, StreamNode
from snapfs.fs.model import FsModel
from snapfs.fs.namespace import (
    GroupNode,
    NamespaceListNode,
    NamespaceNode,
    RootNode,
    SymlinkNode,
    TypeNode,
)
from snapfs.fs.node import Node
from snapfs.fs.snapshot import BlobNode, ManifestNode, SnapshotNode
from snapfs.keysource import load_crypt_config

IMG = "vm/100/2024-06-01T10:00:00Z"
ENCRYPTED_IMG = "vm/100/2024-06-01T14:00:00Z"
ENCRYPTED_PXAR = "host/testhost/2024-06-01T12:00:00Z"

#: One path of every node kind in the golden datastore, and what it is.
DIRS = {
    RootNode: "",
    TypeNode: "vm",
    GroupNode: "vm/100",
    SnapshotNode: IMG,
    PartsNode: f"{IMG}/drive-scsi0.img.parts",
    NamespaceListNode: "ns",
    NamespaceNode: "ns/testns",
    ControlDirNode: ".snapfs",
    ArchiveNode: f"{V1}/root.pxar",
    PxarDirNode: f"{V1}/root.pxar/dir_a",
}
FILES = {
    StreamNode: f"{IMG}/drive-scsi0.img",
    ManifestNode: f"{IMG}/index.json",
    BlobNode: f"{IMG}/qemu-server.conf",
    StatsNode: ".snapfs/stats",
    PxarFileNode: f"{V1}/root.pxar/dir_a/small.bin",
}
LINKS = {SymlinkNode: "vm/100/latest", PxarSymlinkNode: f"{V1}/root.pxar/symlink_rel"}
SPECIALS = {PxarNode: f"{V1}/root.pxar/fifo"}
PXAR_DIRS = (ArchiveNode, PxarDirNode)


@pytest.fixture
def golden(vectors) -> FsModel:
    return model_for(vectors / "datastore")


def at(model: FsModel, path: str) -> Node:
    return walk(model, path) if path else model.root


def read_all(node: Node) -> bytes:
    content = node.open()
    size = node.attr().size
    return b"".join(bytes(content.read(off, 1 << 20)) for off in range(0, size, 1 << 20))


def test_the_model_imports_neither_fuse_nor_trio():
    """The model is what other views (web, search, diff) reuse: no FUSE stack comes with it."""
    code = (
        "import sys, snapfs.fs.model; "
        "print(sorted(m for m in ('pyfuse3', 'trio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("cls", "path"), [*DIRS.items(), *FILES.items(), *LINKS.items()])
def test_every_path_is_the_kind_it_shows(golden, cls, path):
    node = at(golden, path)
    assert type(node) is cls
    mode = node.attr().mode
    if cls in DIRS:
        assert stat.S_ISDIR(mode)
    elif cls in FILES:
        assert stat.S_ISREG(mode)
    else:
        assert stat.S_ISLNK(mode)
    assert golden.node(node.ino) is node


@pytest.mark.parametrize(("cls", "path"), DIRS.items())
def test_directory_lists_what_lookup_finds(golden, cls, path):
    node = at(golden, path)
    handle = node.opendir()
    items = handle.read(0, 10_000)
    assert [i.next_offset for i in items] == list(range(1, len(items) + 1))
    for item in items:
        child = node.lookup(item.name)
        assert child.ino == item.node.ino and child.attr().mode == item.attr.mode
        cached = node.cached_lookup(item.name)  # listed: known from memory unless in pxar
        assert cached is child if cls not in PXAR_DIRS else cached is None
    with pytest.raises(NotFoundError):
        node.lookup(b"missing")
    for dot in (b".", b".."):
        with pytest.raises(NotFoundError):
            node.cached_lookup(dot)
    with pytest.raises(IsDirectoryError):
        node.open()
    with pytest.raises(IsDirectoryError):
        node.cached_open()
    with pytest.raises(NotSymlinkError):
        node.readlink()


@pytest.mark.parametrize(("cls", "path"), [*FILES.items(), *LINKS.items(), *SPECIALS.items()])
def test_non_directory_refuses_lookup_and_listing(golden, cls, path):
    node = at(golden, path)
    for call in (
        lambda: node.lookup(b"x"),
        lambda: node.cached_lookup(b"x"),
        node.opendir,
        node.cached_opendir,
    ):
        with pytest.raises(NotDirectoryError):
            call()
    with pytest.raises(NotFoundError):
        node.cached_lookup(b".")  # known not to be there before knowing it is no directory


@pytest.mark.parametrize(("cls", "path"), [*LINKS.items(), *SPECIALS.items()])
def test_only_regular_files_open(golden, cls, path):
    node = at(golden, path)
    with pytest.raises(NotRegularFileError):
        node.open()
    with pytest.raises(NotRegularFileError):
        node.cached_open()


@pytest.mark.parametrize(("cls", "path"), [*DIRS.items(), *FILES.items(), *SPECIALS.items()])
def test_only_symlinks_readlink(golden, cls, path):
    with pytest.raises(NotSymlinkError):
        at(golden, path).readlink()


def test_symlinks_read_their_target(golden):
    latest = at(golden, LINKS[SymlinkNode])
    assert latest.readlink() == b"2024-06-01T14:00:00Z"
    assert latest.attr().size == len(latest.readlink())
    rel = at(golden, LINKS[PxarSymlinkNode])
    assert rel.attr().size == len(rel.readlink()) > 0


def test_datastore_nodes_have_no_xattrs(golden):
    for path in [*DIRS.values(), *FILES.values(), *LINKS.values()]:
        node = at(golden, path)
        if not isinstance(node, PxarNode):
            assert node.xattrs() == []
            assert node.xattr(b"user.comment") is None


def test_pxar_entry_xattrs_one_by_one(golden):
    node = at(golden, f"{V1}/root.pxar/xattr_file")
    assert node.xattr(b"user.comment") == b"hello xattr"
    assert node.xattr(b"user.empty") == b""
    assert node.xattr(b"user.none") is None
    assert at(golden, f"{V1}/root.pxar/dir_a/small.bin").xattr(b"user.comment") is None


def test_datastore_directories_answer_from_memory_once_loaded(golden):
    group = walk(golden, "vm/100")
    assert group.cached_lookup(b"latest") is None and group.cached_opendir() is None
    latest = group.lookup(b"latest")
    assert group.cached_lookup(b"latest") is latest
    with pytest.raises(NotFoundError):
        group.cached_lookup(b"missing")
    handle = group.cached_opendir()
    assert handle is not None and handle.in_memory
    assert [i.name for i in handle.read(0, 100)] == [
        b"2024-06-01T10:00:00Z",
        b"2024-06-01T14:00:00Z",
        b"latest",
    ]
    assert golden.root.cached_lookup(CONTROL_DIR) is golden.root.control  # found, never listed
    assert CONTROL_DIR not in [i.name for i in golden.root.opendir().read(0, 100)]


def test_pxar_directories_decode_lookups_and_cache_complete_listings(golden):
    archive = walk(golden, f"{V1}/root.pxar")
    assert archive.cached_lookup(b"dir_a") is None  # found only by decoding
    dir_a = archive.lookup(b"dir_a")
    assert isinstance(dir_a, PxarDirNode) and dir_a.cached_lookup(b"small.bin") is None
    assert dir_a.cached_opendir() is None
    handle = dir_a.opendir()
    assert not handle.in_memory
    names = [i.name for i in handle.read(0, 100)]
    assert names == [b"nested", b"small.bin"]
    cached = dir_a.cached_opendir()
    assert cached is not None and cached.in_memory
    assert [i.name for i in cached.read(0, 100)] == names
    assert dir_a.opendir().in_memory  # a blocking opendir serves the cache as well


def test_archive_not_opened_yet_answers_placeholders(golden):
    archive = golden.lookup(walk(golden, V1), b"root.pxar")
    assert isinstance(archive, ArchiveNode) and archive.archive is None
    placeholder = archive.attr(load=False)
    assert placeholder.is_dir and not placeholder.final
    assert archive.cached_opendir() is None and archive.archive is None
    with pytest.raises(IsDirectoryError):
        archive.open()  # known a directory without opening it
    assert archive.attr().final and archive.archive is not None


def test_blob_and_manifest_decode_once_then_open_from_memory(golden):
    snap = walk(golden, IMG)
    for name in (b"qemu-server.conf", b"index.json"):
        node = golden.lookup(snap, name)
        assert node.cached_open() is None and not node.attr(load=False).final
        content = node.open()
        assert isinstance(content, BytesContent)
        again = node.cached_open()
        assert isinstance(again, BytesContent) and bytes(again.read(0, 1 << 20)) == bytes(
            content.read(0, 1 << 20)
        )
        assert node.attr(load=False).size == len(content.data) > 0
    manifest = json.loads(read_all(golden.lookup(snap, b"index.json")))
    assert {f["filename"] for f in manifest["files"]} >= {"drive-scsi0.img.fidx"}


def test_streams_and_partitions_read_windows_of_the_image(golden):
    image = walk(golden, FILES[StreamNode])
    assert image.cached_open() is None  # the index is read in a worker thread
    assert hashlib.sha256(read_all(image)).hexdigest() == IMAGE_SHA256
    window = Partition(number=1, start=4096, size=8192, type="0x83")
    part = PartitionNode(golden, f"{image.path}.parts/part1", image, window)
    assert part.attr().size == 8192 and part.cached_open() is None
    content = part.open()
    assert isinstance(content, Content)
    assert bytes(content.read(0, 8192)) == bytes(image.open().read(4096, 8192))
    assert bytes(content.read(8000, 1000)) == bytes(image.open().read(12096, 192))
    assert walk(golden, DIRS[PartsNode]).opendir().read(0, 10) == []  # no partition table


def test_stats_are_live(golden):
    stats = walk(golden, FILES[StatsNode])
    assert stats.live and not any(at(golden, p).live for p in FILES.values() if p != stats.path)
    assert stats.cached_open() is None
    text = read_all(stats).decode()
    assert text.startswith("source: ") and not stats.attr(load=False).final


def test_pxar_file_opens_without_io_in_v1_and_in_split_once_its_header_is_decoded(golden):
    v1 = walk(golden, f"{V1}/root.pxar/big_random.bin")
    split = walk(golden, f"{SPLIT}/root.pxar/big_random.bin")
    assert isinstance(v1.cached_open(), Content)
    assert read_all(v1) == read_all(split)  # the split file's payload chunk is decoded now
    assert isinstance(split.cached_open(), Content)


def test_encrypted_nodes_need_the_key(golden):
    conf = golden.lookup(walk(golden, ENCRYPTED_IMG), b"qemu-server.conf")
    assert not conf.attr().final  # unreadable: a placeholder the kernel does not cache
    with pytest.raises(KeyRequiredError):
        conf.open()
    archive = walk(golden, f"{ENCRYPTED_PXAR}/root.pxar")
    with pytest.raises(KeyRequiredError):
        archive.lookup(b"dir_a")


def test_scrypt_key_opens_what_the_plain_snapshots_hold(vectors, tmp_path):
    password = tmp_path / "pw"
    password.write_bytes(b"pbs-vector-password")
    crypt = load_crypt_config(vectors / "keys" / "key-scrypt.json", password_file=password)
    model = model_for(vectors / "datastore", crypt)
    plain = model_for(vectors / "datastore")
    conf = walk(model, f"{ENCRYPTED_IMG}/qemu-server.conf")
    assert conf.attr().final and read_all(conf) == read_all(walk(plain, f"{IMG}/qemu-server.conf"))
    encrypted = walk(model, f"{ENCRYPTED_PXAR}/root.pxar")
    assert [i.name for i in encrypted.opendir().read(0, 100)] == [
        i.name for i in walk(plain, f"{V1}/root.pxar").opendir().read(0, 100)
    ]
    notes = "root.pxar/dir_a/nested/notes.txt"
    assert read_all(walk(model, f"{ENCRYPTED_PXAR}/{notes}")) == read_all(
        walk(plain, f"{V1}/{notes}")
    )


def test_a_vanished_inode_is_not_found(golden):
    with pytest.raises(NotFoundError):
        golden.node(1 << 50)
