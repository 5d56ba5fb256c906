"""The golden pxar listing (vectors/pxar/expected-listing.txt): parsed, and checked against an
archive mounted for real, through the kernel (stat, content sha256, xattrs, getfacl, hard links)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

from support.mounting import sha256_file

# The golden datastore's pxar snapshots: v1, encrypted v1, split v2 in a namespace, sign-only.
PXAR_SNAPSHOTS = [
    "host/testhost/2024-06-01T11:00:00Z",
    "host/testhost/2024-06-01T12:00:00Z",
    "ns/testns/host/splithost/2024-06-01T13:00:00Z",
    "ct/200/2024-06-01T15:00:00Z",
]
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
