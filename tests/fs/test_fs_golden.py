"""The golden datastore mounted for real, checked through the kernel against vectors/README.md.

Every pxar snapshot (v1, encrypted v1, split v2 in a namespace, sign-only) must show archive A
exactly as vectors/pxar/expected-listing.txt says: type, mode, owner, nanosecond mtime, size,
content sha256, symlink targets, device numbers, xattrs, ACLs (via getfacl) and hard links.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.golden_listing import PXAR_SNAPSHOTS, check_archive, parse_listing
from support.mounting import key_options, mounted, sha256_file

pytestmark = pytest.mark.slow

ENCRYPTED = {"host/testhost/2024-06-01T12:00:00Z", "vm/100/2024-06-01T14:00:00Z"}


@pytest.fixture(scope="module")
def expected(vectors) -> dict[bytes, dict]:
    listing = parse_listing(vectors / "pxar" / "expected-listing.txt")
    assert len(listing) == 24 and b"/" in listing
    return listing


@pytest.fixture(scope="module")
def report(vectors) -> dict:
    return json.loads((vectors / "report.json").read_text())


@pytest.fixture(scope="module")
def keyed_mount(vectors, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    with mounted(
        vectors / "datastore", tmp / "mnt", *key_options(vectors, tmp), "--log-file", tmp / "log"
    ) as mnt:
        yield mnt


@pytest.fixture(scope="module")
def keyless_mount(vectors, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden-nokey")
    log = tmp / "log"
    with mounted(vectors / "datastore", tmp / "mnt", "--log-file", log) as mnt:
        yield mnt, log


@pytest.mark.parametrize("snapshot", PXAR_SNAPSHOTS)
def test_pxar_archive_matches_expected_listing(keyed_mount, expected, snapshot):
    check_archive(keyed_mount / snapshot / "root.pxar", expected)


def test_datastore_layout(keyed_mount):
    mnt = keyed_mount
    assert sorted(os.listdir(mnt)) == ["ct", "host", "ns", "vm"]
    assert sorted(os.listdir(mnt / "vm" / "100")) == [
        "2024-06-01T10:00:00Z",
        "2024-06-01T14:00:00Z",
        "latest",
    ]
    assert os.readlink(mnt / "vm" / "100" / "latest") == "2024-06-01T14:00:00Z"
    assert os.readlink(mnt / "host" / "testhost" / "latest") == "2024-06-01T12:00:00Z"
    assert sorted(os.listdir(mnt / "ns")) == ["testns"]
    assert sorted(os.listdir(mnt / "ns" / "testns")) == ["host"]
    assert os.readlink(mnt / "ns/testns/host/splithost/latest") == "2024-06-01T13:00:00Z"
    assert sorted(os.listdir(mnt / "vm/100/2024-06-01T10:00:00Z")) == [
        "drive-scsi0.img",
        "drive-scsi0.img.parts",
        "index.json",
        "qemu-server.conf",
    ]
    assert sorted(os.listdir(mnt / "ct/200/2024-06-01T15:00:00Z")) == [
        "catalog.pcat1",
        "index.json",
        "pct.conf",
        "root.pxar",
    ]
    assert sorted(os.listdir(mnt / "ns/testns/host/splithost/2024-06-01T13:00:00Z")) == [
        "index.json",
        "root.pxar",
    ]
    snap = mnt / "vm/100/2024-06-01T10:00:00Z"
    st = os.stat(snap)
    assert stat.S_ISDIR(st.st_mode) and st.st_mtime_ns == 1717236000 * 10**9


def test_every_snapshot_file_decodes(keyed_mount, report):
    for snapshot, info in report["snapshots"].items():
        snap = keyed_mount / snapshot
        assert (snap / "index.json").read_text() == info["manifest"], snapshot
        assert os.stat(snap / "index.json").st_size == len(info["manifest"].encode())
        for filename, f in info["files"].items():
            if filename.endswith(".blob"):
                path = snap / filename.removesuffix(".blob")
                assert hashlib.sha256(path.read_bytes()).hexdigest() == f["payload_sha256"], path
            elif filename.endswith(".fidx") or filename == "catalog.pcat1.didx":
                path = snap / filename.rsplit(".", 1)[0]
                assert os.stat(path).st_size == f["size"]
                assert sha256_file(path) == f["reassembled_sha256"], path
        if "image_sha256" in info:
            assert sha256_file(snap / "drive-scsi0.img") == info["image_sha256"]


def test_archive_directory_carries_root_metadata(keyed_mount, expected):
    st = os.stat(keyed_mount / PXAR_SNAPSHOTS[0] / "root.pxar")
    assert st.st_mode == 0o40755 and st.st_mtime_ns == 1000000000_999999999
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_inode_numbers_stable_across_forget(keyed_mount):
    base = keyed_mount / PXAR_SNAPSHOTS[2] / "root.pxar"
    paths = [
        base / "dir_a" / "nested" / "deeper" / "hello.txt",
        base / "hardlink_b",
        base / "dir_a",
    ]
    before = [os.lstat(p).st_ino for p in paths]
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # dentries and inodes: the kernel forgets
    assert [os.lstat(p).st_ino for p in paths] == before
    assert os.lstat(base / "hardlink_a").st_ino == before[1]


def test_read_only(keyed_mount):
    base = keyed_mount / PXAR_SNAPSHOTS[0] / "root.pxar"
    for action in (
        lambda: os.open(base / "empty_file", os.O_WRONLY),
        lambda: os.mkdir(base / "newdir"),
        lambda: os.open(base / "newfile", os.O_WRONLY | os.O_CREAT),
        lambda: os.unlink(base / "empty_file"),
        lambda: os.setxattr(base / "empty_file", "user.x", b"1"),
        lambda: os.chmod(base / "empty_file", 0o600),
        lambda: os.mkdir(keyed_mount / "vm" / "101"),
    ):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.EROFS


def test_without_key_only_encrypted_archives_fail(keyless_mount, expected, report):
    mnt, log = keyless_mount
    with pytest.raises(PermissionError):
        (mnt / "vm/100/2024-06-01T14:00:00Z/drive-scsi0.img").read_bytes()
    with pytest.raises(PermissionError):
        os.listdir(mnt / "host/testhost/2024-06-01T12:00:00Z/root.pxar")
    with pytest.raises(PermissionError):
        (mnt / "vm/100/2024-06-01T14:00:00Z/qemu-server.conf").read_bytes()
    # The manifest is never encrypted; everything unencrypted stays readable.
    info = report["snapshots"]["vm/100/2024-06-01T14:00:00Z"]
    assert (mnt / "vm/100/2024-06-01T14:00:00Z/index.json").read_text() == info["manifest"]
    assert sha256_file(mnt / "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img") == info["image_sha256"]
    check_archive(mnt / PXAR_SNAPSHOTS[0] / "root.pxar", expected)
    check_archive(mnt / PXAR_SNAPSHOTS[3] / "root.pxar", expected)
    text = log.read_text()
    assert "drive-scsi0.img" in text and "--keyfile" in text
    assert "pbs-vector-password" not in text
