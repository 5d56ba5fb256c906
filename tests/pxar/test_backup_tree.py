"""`snapfs backup root.pxar:DIR` of a real tree, read back through the datastore: identical tree."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from snapfs.backup import BackupSource, backup
from snapfs.format.crypt import CryptConfig
from snapfs.pxar.entry import EntryKind
from snapfs.store.backend import LocalBackend
from snapfs.store.datastore import Datastore
from snapfs.views.archives import SnapshotReader


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """A copy of real system files, plus every entry kind and metadata the format carries."""
    root = tmp_path_factory.mktemp("src") / "tree"
    shutil.copytree("/etc", root / "etc", symlinks=True)
    docs = sorted(d for d in os.listdir("/usr/share/doc") if os.path.isdir(f"/usr/share/doc/{d}"))[
        :80
    ]
    for d in docs:
        shutil.copytree(f"/usr/share/doc/{d}", root / "doc" / d, symlinks=True)
    (root / "doc-git").mkdir()
    (root / "doc-git/copyright").write_text("a copyright file\n" * 100)
    (root / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    (root / "zeros.bin").write_bytes(bytes(5 * 1024 * 1024))
    (root / "hl_a").write_text("linked\n")
    os.link(root / "hl_a", root / "hl_b")
    os.symlink("doc-git/copyright", root / "rel_link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.mkfifo(root / "fifo")
    os.mknod(root / "nulldev", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    (root / "x").write_text("attrs\n")
    os.setxattr(root / "x", "user.comment", b"hello")
    os.setxattr(root / "x", "user.bin", b"\x00\xff")
    subprocess.run(["setfacl", "-m", "u:1234:rw-,g:2345:r--", str(root / "x")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(root / "etc")], check=True)
    os.chown(root / "x", 1000, 1001)
    os.chmod(root / "hl_a", 0o4755)
    (root / os.fsdecode(b"non_utf8_\xff")).write_text("bytes name\n")
    os.utime(root / "x", ns=(1, 1_600_000_000_123_456_789))
    return root


def _fs_listing(root) -> dict[bytes, tuple]:
    listing = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames.sort()
        for name in [b"", *sorted(dirnames), *sorted(filenames)]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = b"/" + os.path.relpath(path, os.fsencode(root)).lstrip(b".")
            rel = rel.replace(b"//", b"/") if rel != b"/" else rel
            if name == b"" and dirpath != os.fsencode(root):
                continue
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in inodes:
                listing[rel] = ("hardlink", inodes[key])
                continue
            inodes[key] = rel.lstrip(b"/")
            xattrs = {}
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                for x in os.listxattr(path, follow_symlinks=False):
                    if x.startswith(("user.", "trusted.")):
                        xattrs[x.encode()] = os.getxattr(path, x, follow_symlinks=False)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            rdev = (
                (os.major(st.st_rdev), os.minor(st.st_rdev))
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else None
            )
            listing[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
                content,
                target,
                rdev,
                xattrs,
            )
    return listing


def _archive_listing(accessor) -> dict[bytes, tuple]:
    listing = {}
    for entry in accessor.walk():
        if entry.kind is EntryKind.HARDLINK:
            listing[entry.path] = ("hardlink", entry.link_target)
            continue
        content = None
        if entry.kind is EntryKind.FILE:
            h = hashlib.sha256()
            offset = 0
            while offset < entry.size:
                block = accessor.read(entry, offset, min(1 << 20, entry.size - offset))
                h.update(block)
                offset += len(block)
            content = h.hexdigest()
        listing[entry.path] = (
            entry.mode,
            entry.uid,
            entry.gid,
            entry.mtime_ns,
            content,
            entry.link_target if entry.kind is EntryKind.SYMLINK else None,
            entry.device,
            dict(entry.xattrs),
        )
    return listing


@pytest.mark.parametrize("split", [False, True], ids=["v1", "split"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_tree_round_trip(tmp_path, source_tree, split, encrypted):
    crypt = CryptConfig(os.urandom(32)) if encrypted else None
    ds = tmp_path / "ds"
    result = backup(
        ds,
        [BackupSource("root.pxar", str(source_tree))],
        backup_type="host",
        backup_id="h",
        backup_time=1_700_000_000,
        crypt=crypt,
        split=split,
    )
    assert not result.problems
    names = {f.filename for f in result.files}
    assert names == (
        {"root.mpxar.didx", "root.ppxar.didx"}
        if split
        else {"root.pxar.didx", "catalog.pcat1.didx"}
    )
    store = Datastore(LocalBackend(ds))
    reader = SnapshotReader(store, result.snapshot, crypt)
    accessor = reader.pxar("root.pxar")
    assert _archive_listing(accessor) == _fs_listing(source_tree)
    acl_entry = accessor.lookup("/x")
    assert acl_entry.acl is not None and (1234, 6) in [(u, p) for u, p in acl_entry.acl.users]
    assert accessor.lookup("/etc").acl.default_users


def test_cli_ls_and_find(tmp_path, source_tree):
    ds = tmp_path / "ds"
    backup(
        ds,
        [BackupSource("root.pxar", str(source_tree))],
        backup_type="host",
        backup_id="h",
        backup_time=1_700_000_000,
    )
    snap = "host/h/2023-11-14T22:13:20Z"

    def snapfs(*args):
        return subprocess.run(
            [sys.executable, "-m", "snapfs", *map(str, args)], capture_output=True, check=True
        ).stdout.decode()

    names = snapfs("ls", ds, snap, "root.pxar").split("\n")
    assert "doc-git" in names and "hl_b" in names and "non_utf8_\\xff" in names
    long = snapfs("ls", ds, snap, "root.pxar", "/", "--long")
    assert "rel_link -> doc-git/copyright" in long and "prw-r--r--" in long
    found = snapfs("find", ds, snap, "root.pxar", "*.gz").split()
    want = sorted(
        "/" + os.path.relpath(os.path.join(d, f), source_tree)
        for d, _, fs in os.walk(source_tree)
        for f in fs
        if f.endswith(".gz")
    )
    assert want and sorted(found) == want
    content = subprocess.run(
        [sys.executable, "-m", "snapfs", "cat", ds, snap, "root.pxar/doc-git/copyright"],
        capture_output=True,
        check=True,
    ).stdout
    assert content == (source_tree / "doc-git/copyright").read_bytes()
