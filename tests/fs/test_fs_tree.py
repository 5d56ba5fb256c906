"""The FUSE model without a mount: nodes, inode table, listings, content, ACL xattrs."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fs_model import SPLIT, V1, listing, model_for, walk
from support.vectors import IMAGE_SHA256

from snapfs.backup import BackupSource, backup
from snapfs.errors import CorruptDataError, KeyRequiredError, MissingChunkError, NotFoundError
from snapfs.fs.archive import ARCHIVE_SHIFT, ArchiveNode, PxarNode
from snapfs.fs.content import Content
from snapfs.fs.image import StreamNode
from snapfs.fs.model import ROOT_INODE, FsModel
from snapfs.fs.snapshot import SnapshotNode
from snapfs.keysource import load_crypt_config
from snapfs.pxar import acl as aclmod
from snapfs.pxar.acl import acl_from_xattrs
from snapfs.pxar.entry import Acl
from snapfs.store.backend import chunk_path


@pytest.fixture
def golden(vectors) -> FsModel:
    return model_for(vectors / "datastore")


def test_root_is_lazy_and_inode_one(golden):
    assert golden.root.ino == ROOT_INODE
    assert golden.root._children is None  # nothing listed at mount time
    names = [i.name for i in listing(golden, golden.root)]
    assert names == [b"vm", b"ct", b"host", b"ns"]


def test_snapshot_manifest_read_on_first_listing(golden):
    snap = walk(golden, "vm/100/2024-06-01T10:00:00Z")
    assert isinstance(snap, SnapshotNode) and snap._children is None
    names = [i.name for i in listing(golden, snap)]
    assert names == [
        b"drive-scsi0.img",
        b"drive-scsi0.img.parts",
        b"index.json",
        b"qemu-server.conf",
    ]
    image = golden.lookup(snap, b"drive-scsi0.img")
    assert isinstance(image, StreamNode) and image.attr().size == 13635072
    assert image._stream is None  # the index is read only on open


def test_latest_points_to_newest_complete_snapshot(golden, tmp_path, vectors):
    assert golden.readlink(walk(golden, "vm/100/latest")) == b"2024-06-01T14:00:00Z"
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    (store / "vm/100/2024-06-01T14:00:00Z/index.json.blob").unlink()  # now incomplete
    model = model_for(store)
    assert model.readlink(walk(model, "vm/100/latest")) == b"2024-06-01T10:00:00Z"
    assert listing(model, walk(model, "vm/100/2024-06-01T14:00:00Z")) == []


def test_image_content_zero_copy_and_readahead(golden):
    node = walk(golden, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
    content = golden.open(node)
    assert isinstance(content, Content)
    assert content.read(0, 4096, block=False) is None  # not decoded yet: the caller must thread it
    first = content.read(0, 4096)
    assert isinstance(first, memoryview) and bytes(first[:25]) == b"vector image block 000000"
    ahead = content.readahead(0, 4096)
    assert ahead == [content.stream.index.digest(i) for i in (1, 3)]  # chunk 2 is chunk 1 again
    assert content.readahead(4096, 4096) == []  # already handed out
    h = hashlib.sha256()
    for offset in range(0, node.attr().size, 1 << 20):
        h.update(content.read(offset, 1 << 20))
    assert h.hexdigest() == IMAGE_SHA256
    assert content.read(13635072, 10) == b""
    # A read across a chunk boundary joins the two pieces.
    assert bytes(content.read(4194304 - 3, 6)) == bytes(content.read(4194304 - 3, 3)) + b"\0\0\0"


def test_pxar_inodes_derive_from_entry_offsets(golden):
    root = walk(golden, f"{V1}/root.pxar")
    assert isinstance(root, ArchiveNode) and root.archive is not None
    child = golden.remember(golden.lookup(root, b"dir_a"))
    assert isinstance(child, PxarNode)
    assert child.ino == (root.archive.id << ARCHIVE_SHIFT) | child.entry.entry_offset
    again = golden.lookup(root, b"dir_a")
    assert again.ino == child.ino


def test_forget_frees_pxar_nodes(golden):
    root = walk(golden, f"{V1}/root.pxar")
    items = listing(golden, root)
    for item in items:
        golden.remember(item.node)
    assert len(items) == 18
    assert golden.entries_referenced == 17  # two children are one inode (hard link)
    hard = [i for i in items if i.name in (b"hardlink_a", b"hardlink_b")]
    assert hard[0].node.ino == hard[1].node.ino and golden.node(hard[0].node.ino).lookups == 2
    for item in items:
        golden.forget(item.node.ino, 1)
    assert golden.entries_referenced == 0
    with pytest.raises(NotFoundError):
        golden.node(items[0].node.ino)
    golden.forget(root.ino, 5)  # datastore-level nodes are permanent
    assert golden.node(root.ino) is root


def test_hardlink_counts_links_once_listed(golden):
    root = walk(golden, f"{SPLIT}/root.pxar")
    items = {i.name: i for i in listing(golden, root)}
    a, b = items[b"hardlink_a"], items[b"hardlink_b"]
    assert a.node.ino == b.node.ino and b.attr.nlink == 2
    assert golden.attr(a.node).nlink == 2 and a.attr.size == 24


def test_readdir_resumes_at_any_offset(golden):
    root = walk(golden, f"{V1}/root.pxar")
    full = [(i.name, i.attr.ino) for i in listing(golden, root)]
    handle = golden.opendir(root)
    for start in (0, 5, 3, 17, 18, 1):  # forward, backwards (rewinddir), the end
        got = golden.readdir(handle, start, 4)
        assert [(i.name, i.attr.ino) for i in got] == full[start : start + 4]
        assert [i.next_offset for i in got] == list(range(start + 1, start + 1 + len(got)))
    small = [(i.name, i.attr.ino) for i in listing(golden, root, batch=1)]
    assert small == full


def test_xattrs_and_acls_in_kernel_format(golden):
    root = walk(golden, f"{V1}/root.pxar")
    acl_file = golden.lookup(root, b"acl_file")
    xattrs = dict(golden.xattrs(acl_file))
    records = aclmod.parse_acl_xattr(xattrs[aclmod.ACL_XATTR_ACCESS])
    u = aclmod.ACL_UNDEFINED_ID
    assert records == [
        (aclmod.ACL_USER_OBJ, 6, u),
        (aclmod.ACL_USER, 6, 1234),
        (aclmod.ACL_GROUP_OBJ, 4, u),
        (aclmod.ACL_GROUP, 4, 2345),
        (aclmod.ACL_MASK, 6, u),
        (aclmod.ACL_OTHER, 4, u),
    ]
    xattr_file = dict(golden.xattrs(golden.lookup(root, b"xattr_file")))
    assert xattr_file == {
        b"user.comment": b"hello xattr",
        b"user.binary": b"\x00\xff\x10",
        b"user.empty": b"",
    }
    assert golden.xattrs(golden.root) == []


def test_split_archive_content(golden):
    node = walk(golden, f"{SPLIT}/root.pxar/dir_a/nested/deeper/hello.txt")
    content = golden.open(node)
    data = bytes(content.read(0, 100))
    assert (
        hashlib.sha256(data).hexdigest()
        == "25af16527a44113eba1cd214c69be7f5b157e99fc1f0732e3bbd0c52fbea1e00"
    )
    big = golden.open(walk(golden, f"{SPLIT}/root.pxar/big_random.bin"))
    h = hashlib.sha256()
    for offset in range(0, big.size, 100_000):
        h.update(big.read(offset, 100_000))
    assert h.hexdigest() == "37681c77c203e37a25894e7d8684ad78e70f00e9f5018bcc9bf4d7ff1a17c66c"


def test_encrypted_snapshot_without_key(golden):
    snap = walk(golden, "vm/100/2024-06-01T14:00:00Z")
    with pytest.raises(KeyRequiredError):
        golden.open(golden.lookup(snap, b"drive-scsi0.img"))
    conf = golden.lookup(snap, b"qemu-server.conf")
    assert conf.attr().final is False  # placeholder, not cached by the kernel
    archive = walk(golden, "host/testhost/2024-06-01T12:00:00Z/root.pxar")
    with pytest.raises(KeyRequiredError):
        golden.opendir(archive)
    assert golden.opendir(walk(golden, f"{V1}/root.pxar")) is not None


def test_wrong_key_keeps_unencrypted_snapshots(vectors, tmp_path):
    from snapfs.format.crypt import CryptConfig

    other = CryptConfig(bytes(range(32)))
    model = model_for(vectors / "datastore", other)
    snap = walk(model, "vm/100/2024-06-01T14:00:00Z")
    with pytest.raises(Exception) as info:
        model.open(model.lookup(snap, b"drive-scsi0.img"))
    assert "key" in str(info.value)
    image = walk(model, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
    assert len(model.open(image).read(0, 10)) == 10


def test_key_opens_encrypted_snapshots(vectors, tmp_path):
    password = tmp_path / "pw"
    password.write_text("pbs-vector-password\n")
    crypt = load_crypt_config(vectors / "keys" / "key-pbkdf2.json", password_file=password)
    model = model_for(vectors / "datastore", crypt)
    content = model.open(walk(model, "vm/100/2024-06-01T14:00:00Z/drive-scsi0.img"))
    h = hashlib.sha256()
    for offset in range(0, content.size, 4 << 20):
        h.update(content.read(offset, 4 << 20))
    assert h.hexdigest() == IMAGE_SHA256


@pytest.fixture
def corrupt_store(vectors, tmp_path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    return store


def test_corrupt_chunk_fails_only_its_reads(corrupt_store):
    digest = bytes.fromhex(
        "803f1e37ee3026dc63265e3f20b110b5d68f043603cc4fc4d4785400503de524"
    )  # image chunk 3
    path = corrupt_store / chunk_path(digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(raw)
    model = model_for(corrupt_store)
    content = model.open(walk(model, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img"))
    assert len(content.read(0, 4096)) == 4096
    with pytest.raises(CorruptDataError) as info:
        content.read(3 * 4194304 + 10, 10)
    assert digest.hex() in str(info.value)


def test_missing_chunk_is_missing_chunk_error(corrupt_store):
    digest = bytes.fromhex(
        "3b7b2f9af426fcce03e16e1a94ff2cf5cd275c2aaa48983c6904e9d6055f888f"
    )  # image chunk 0
    (corrupt_store / chunk_path(digest)).unlink()
    model = model_for(corrupt_store)
    content = model.open(walk(model, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img"))
    with pytest.raises(MissingChunkError):
        content.read(0, 10)
    assert len(content.read(4194304, 10)) == 10


def test_owner_mapping(vectors):
    model = model_for(vectors / "datastore", uid=4321, gid=8765)
    attr = model.attr(walk(model, f"{V1}/root.pxar/big_random.bin"))
    assert (attr.uid, attr.gid) == (4321, 8765)
    assert (model.root.attr().uid, model.root.attr().gid) == (4321, 8765)
    plain = model_for(vectors / "datastore")
    attr = plain.attr(walk(plain, f"{V1}/root.pxar/big_random.bin"))
    assert (attr.uid, attr.gid, stat.S_IMODE(attr.mode)) == (1000, 1001, 0o600)


def test_large_directory_streams(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    store = tmp_path / "store"
    backup(
        store,
        [BackupSource("root.pxar", str(src))],
        backup_type="host",
        backup_id="big",
        backup_time=1717236000,
    )
    model = model_for(store)
    root = walk(model, "host/big/2024-06-01T10:00:00Z/root.pxar")
    handle = model.opendir(root)
    names, start = [], 0
    while batch := model.readdir(handle, start, 37):
        names += [i.name for i in batch]
        start = batch[-1].next_offset
        assert len(handle._pending) <= 37  # bounded, not the whole directory
    assert names == [f"f{i:05d}".encode() for i in range(3000)]
    assert len({model.lookup(root, n).ino for n in names[:50]}) == 50


# --- ACL xattr encoding -------------------------------------------------------------------------

perm = st.integers(0, 7)
ids = st.lists(
    st.tuples(st.integers(0, 2**32 - 2), perm), max_size=4, unique_by=lambda t: t[0]
).map(lambda x: tuple(sorted(x)))


@settings(max_examples=200, deadline=None)
@given(users=ids, groups=ids, group_obj=perm, mode_bits=st.integers(0, 0o777))
def test_access_acl_round_trips_through_the_encoders_decoder(users, groups, group_obj, mode_bits):
    acl = Acl(users=users, groups=groups, group_obj=group_obj)
    value = aclmod.access_acl_xattr(stat.S_IFREG | mode_bits, acl)
    assert acl_from_xattrs(value, None) == acl


@settings(max_examples=200, deadline=None)
@given(users=ids, groups=ids, base=st.tuples(perm, perm, perm, perm))
def test_default_acl_round_trips(users, groups, base):
    acl = Acl(default=base, default_users=users, default_groups=groups)
    assert acl_from_xattrs(None, aclmod.default_acl_xattr(acl)) == acl


def test_acl_xattr_sorted_by_tag_then_id():
    value = aclmod.access_acl_xattr(0o100750, Acl(users=((7, 4), (3, 6))))
    records = aclmod.parse_acl_xattr(value)
    assert [r[0] for r in records] == sorted(r[0] for r in records)
    assert [r[2] for r in records if r[0] == aclmod.ACL_USER] == [3, 7]
    assert (aclmod.ACL_MASK, 5, aclmod.ACL_UNDEFINED_ID) in records  # named entries need a mask
    with pytest.raises(CorruptDataError):
        aclmod.parse_acl_xattr(value[:-1])


def test_no_acl_means_no_acl_xattr():
    assert not aclmod.has_access_acl(None) and not aclmod.has_access_acl(Acl())
    assert aclmod.has_default_acl(Acl(default_users=((1, 7),)))
    assert os.path.basename(aclmod.ACL_XATTR_DEFAULT.decode()) == "system.posix_acl_default"
