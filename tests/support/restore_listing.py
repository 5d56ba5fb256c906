"""The golden `expected-listing.txt` format, produced from a directory on disk.

Used by the restore tests to compare what a restore left on disk with what the upstream vectors say
the archived tree was, and with what `tar` extracts from `source-tree.tar`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct

_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 2, 4, 8, 0x10
_TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFBLK: "device",
    stat.S_IFCHR: "device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def escape(raw: bytes) -> str:
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x5C, 0x22) else f"\\x{b:02x}" for b in raw
    )


def _acl_entries(raw: bytes) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("<HHI", raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]


def _xattr(path: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _line(root: bytes, rel: bytes, seen: dict[tuple[int, int], bytes]) -> str:
    full = root + rel if rel != b"/" else root
    st = os.lstat(full)
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    path = f'path="{escape(rel)}"'
    if kind == "file" and st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return f'{path} type=hardlink target="{escape(seen[key].lstrip(b"/"))}"'
        seen[key] = rel
    parts = [path, f"type={kind}"]
    if kind == "file":
        parts.append(f"size={st.st_size}")
    if kind == "symlink":
        parts.append(f'target="{escape(os.readlink(full))}"')
    if kind == "device":
        parts.append(f"major={os.major(st.st_rdev)} minor={os.minor(st.st_rdev)}")
    parts.append(f"mode=0o{st.st_mode:o} uid={st.st_uid} gid={st.st_gid}")
    parts.append(f"mtime={st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d} flags=0")
    if kind in ("file", "dir"):
        for name in os.listxattr(full, follow_symlinks=False):
            if name.startswith(("user.", "trusted.")):
                value = os.getxattr(full, name, follow_symlinks=False)
                parts.append(f'xattr["{name}"]="{escape(value)}"')
        access = _xattr(full, "system.posix_acl_access")
        if access:
            entries = _acl_entries(access)
            parts += [f"acl_user={i}:0o{p:o}" for t, p, i in entries if t == _ACL_USER]
            parts += [f"acl_group={i}:0o{p:o}" for t, p, i in entries if t == _ACL_GROUP]
            if any(t == _ACL_MASK for t, _, _ in entries):
                parts += [f"acl_group_obj=0o{p:o}" for t, p, _ in entries if t == _ACL_GROUP_OBJ]
        default = _xattr(full, "system.posix_acl_default")
        if default:
            entries = _acl_entries(default)
            by_tag = {t: p for t, p, _ in entries if t in (1, 4, 0x10, 0x20)}
            parts.append(
                "acl_default="
                + ",".join(
                    f"{label}:{by_tag.get(tag, 0xFFFFFFFFFFFFFFFF):x}"
                    for label, tag in (
                        ("user_obj", 1),
                        ("group_obj", 4),
                        ("other", 0x20),
                        ("mask", 0x10),
                    )
                )
            )
            parts += [f"acl_default_user={i}:0o{p:o}" for t, p, i in entries if t == _ACL_USER]
            parts += [f"acl_default_group={i}:0o{p:o}" for t, p, i in entries if t == _ACL_GROUP]
    if kind == "file":
        with open(full, "rb") as f:
            parts.append(f"sha256={hashlib.sha256(f.read()).hexdigest()}")
    return " ".join(parts)


def fs_listing(root: str | bytes, skip: tuple[bytes, ...] = ()) -> list[str]:
    """Lines in the golden format for the tree at root, pre-order, names sorted by raw bytes."""
    base = os.fsencode(root).rstrip(b"/")
    seen: dict[tuple[int, int], bytes] = {}
    lines = [_line(base, b"/", seen)]

    def visit(rel_dir: bytes) -> None:
        for name in sorted(os.listdir(base + rel_dir + b"/")):
            rel = rel_dir + b"/" + name
            if rel in skip:
                continue
            lines.append(_line(base, rel, seen))
            if stat.S_ISDIR(os.lstat(base + rel).st_mode):
                visit(rel)

    visit(b"")
    return lines


def expected_listing(vectors) -> list[str]:
    text = (vectors / "pxar" / "expected-listing.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]
