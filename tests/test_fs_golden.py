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
import re
import stat
import subprocess
from pathlib import Path

import pytest
from support.mounting import key_options, mounted, sha256_file

pytestmark = pytest.mark.slow

PXAR_SNAPSHOTS = [
    "host/testhost/2024-06-01T11:00:00Z",
    "host/testhost/2024-06-01T12:00:00Z",
    "ns/testns/host/splithost/2024-06-01T13:00:00Z",
    "ct/200/2024-06-01T15:00:00Z",
]
ENCRYPTED = {"host/testhost/2024-06-01T12:00:00Z", "vm/100/2024-06-01T14:00:00Z"}
_TOKEN = re.compile(
    r'(\w+(?:\["(?:[^"\\]|\\x[0-9a-f]{2})*"\])?)=("(?:[^"\\]|\\x[0-9a-f]{2})*"|\S+)'
)


def _unescape(text: str) -> bytes:
    raw = text.encode("ascii")
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


def parse_listing(path: Path) -> dict[bytes, dict]:
    entries = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        fields: dict = {
            "xattrs": {},
            "acl_user": [],
            "acl_group": [],
            "acl_default_user": [],
            "acl_default_group": [],
        }
        for key, value in _TOKEN.findall(line):
            if value.startswith('"'):
                value = _unescape(value[1:-1])
            if key.startswith("xattr["):
                fields["xattrs"][_unescape(key[7:-2])] = value
            elif key in ("acl_user", "acl_group", "acl_default_user", "acl_default_group"):
                fields[key].append(value)
            else:
                fields[key] = value
        entries[fields["path"]] = fields
    return entries


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


def getfacl(path: bytes) -> set[str]:
    out = subprocess.run(
        ["getfacl", "-n", "-c", "-p", "--", path], capture_output=True, check=True
    ).stdout
    return {line for line in out.decode().splitlines() if line and not line.startswith("#")}


def _perm(bits: int) -> str:
    return "".join(c if bits & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))


def expected_acl(e: dict) -> set[str]:
    mode = int(e["mode"], 8)
    lines = {f"user::{_perm(mode >> 6)}", f"other::{_perm(mode)}"}
    for spec in e["acl_user"]:
        uid, perm = spec.split(":")
        lines.add(f"user:{uid}:{_perm(int(perm, 8))}")
    for spec in e["acl_group"]:
        gid, perm = spec.split(":")
        lines.add(f"group:{gid}:{_perm(int(perm, 8))}")
    if "acl_group_obj" in e:
        lines.add(f"group::{_perm(int(e['acl_group_obj'], 8))}")
        lines.add(f"mask::{_perm(mode >> 3)}")
    else:
        lines.add(f"group::{_perm(mode >> 3)}")
    if "acl_default" in e:
        parts = dict(p.split(":") for p in e["acl_default"].split(","))
        for key, tag in (
            ("user_obj", "user::"),
            ("group_obj", "group::"),
            ("other", "other::"),
            ("mask", "mask::"),
        ):
            if parts[key] != "ffffffffffffffff":
                lines.add(f"default:{tag}{_perm(int(parts[key], 16))}")
        for spec in e["acl_default_user"]:
            uid, perm = spec.split(":")
            lines.add(f"default:user:{uid}:{_perm(int(perm, 8))}")
    return lines


def check_archive(root: Path, expected: dict[bytes, dict]) -> None:
    rootb = os.fsencode(root)
    # The whole tree, as the kernel lists it.
    seen = set()
    for dirpath, dirnames, filenames in os.walk(rootb):
        rel = dirpath[len(rootb) :] or b"/"
        seen.add(rel)
        for name in dirnames + filenames:
            seen.add(rel.rstrip(b"/") + b"/" + name)
    assert seen == set(expected)

    for path, e in expected.items():
        full = rootb + (path if path != b"/" else b"")
        if e["type"] == "hardlink":
            target = os.lstat(rootb + b"/" + e["target"])
            st = os.lstat(full)
            assert st.st_ino == target.st_ino and st.st_nlink == target.st_nlink == 2, path
            continue
        st = os.lstat(full)
        assert st.st_mode == int(e["mode"], 8), path
        assert (st.st_uid, st.st_gid) == (int(e["uid"]), int(e["gid"])), path
        sec, nsec = e["mtime"].split(".")
        mtime_ns = int(sec) * 1_000_000_000 + int(nsec)
        assert (
            st.st_mtime_ns == mtime_ns and st.st_ctime_ns == mtime_ns and st.st_atime_ns == mtime_ns
        ), path
        kind = e["type"]
        if kind == "dir":
            assert stat.S_ISDIR(st.st_mode)
        elif kind == "file":
            assert stat.S_ISREG(st.st_mode) and st.st_size == int(e["size"]), path
            assert sha256_file(full) == e["sha256"], path
        elif kind == "symlink":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(full) == e["target"], path
            assert st.st_size == len(e["target"])
        elif kind == "device":
            assert stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (
                int(e["major"]),
                int(e["minor"]),
            ), path
        elif kind == "fifo":
            assert stat.S_ISFIFO(st.st_mode)
        elif kind == "socket":
            assert stat.S_ISSOCK(st.st_mode)
        else:
            raise AssertionError(f"unknown type {kind}")
        names = os.listxattr(full, follow_symlinks=False)
        user_names = {os.fsencode(n) for n in names if n.startswith("user.")}
        assert user_names == set(e["xattrs"]), path
        for name, value in e["xattrs"].items():
            assert os.getxattr(full, name, follow_symlinks=False) == value, (path, name)
        has_acl = bool(
            e["acl_user"] or e["acl_group"] or "acl_default" in e or "acl_group_obj" in e
        )
        assert has_acl == any(n.startswith("system.posix_acl") for n in names), path
        if kind in ("dir", "file"):
            assert getfacl(full) == expected_acl(e), path


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
