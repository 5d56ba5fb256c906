"""POSIX ACLs between pxar's form and the kernel's `system.posix_acl_*` xattr values.

pxar stores ACLs split up (docs/formats.md §11.6): owner and other entries live in the mode, the
mode's group bits hold the mask when there is one, and ACL_GROUP_OBJ then holds the real
owning-group permissions. The kernel (and so `getfacl`, `setfacl`, `rsync -A`) wants the whole
list in one binary value: a u32 version (2), then `(u16 tag, u16 perm, u32 id)` records sorted by
tag and id. The encoder reads that form from disk, the mount shows it, restore writes it: one
module does both directions so the three cannot drift apart.
"""

from __future__ import annotations

import struct

from snapfs.errors import CorruptDataError
from snapfs.pxar.entry import Acl
from snapfs.pxar.format import ACL_NO_MASK

ACL_XATTR_ACCESS = b"system.posix_acl_access"
ACL_XATTR_DEFAULT = b"system.posix_acl_default"

POSIX_ACL_XATTR_VERSION = 2
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
_BASE_TAGS = (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER, ACL_MASK)

_HEADER = struct.Struct("<I")
_RECORD = struct.Struct("<HHI")


# --- kernel value -> records -> pxar Acl ------------------------------------------------------


def parse_acl_xattr(value: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) records of a kernel ACL xattr value; a malformed one is CorruptDataError."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _RECORD.size:
        raise CorruptDataError(f"POSIX ACL xattr of {len(value)} bytes is malformed")
    (version,) = _HEADER.unpack_from(value)
    if version != POSIX_ACL_XATTR_VERSION:
        raise CorruptDataError(
            f"POSIX ACL xattr version {version} is not {POSIX_ACL_XATTR_VERSION}"
        )
    return list(_RECORD.iter_unpack(memoryview(value)[_HEADER.size :]))


def _split(value: bytes) -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict[int, int]]:
    users, groups, base = [], [], {}
    for tag, perm, ident in parse_acl_xattr(value):
        if tag == ACL_USER:
            users.append((ident, perm))
        elif tag == ACL_GROUP:
            groups.append((ident, perm))
        elif tag in _BASE_TAGS:
            base[tag] = perm
        else:
            raise CorruptDataError(f"unexpected POSIX ACL tag {tag:#x}")
    return users, groups, base


def acl_from_xattrs(access: bytes | None, default: bytes | None) -> Acl | None:
    """The pxar ACL of these xattr values, built like upstream `process_acl` (docs/formats.md §11.6).

    Access ACL: named users/groups sorted by (id, perms); GROUP_OBJ only when a mask exists (then
    the mode's group bits hold the mask). Default ACL: the four base entries become one
    ACL_DEFAULT with absent ones as NO_MASK, plus sorted named entries. None when nothing needs
    to be stored.
    """
    users: list[tuple[int, int]] = []
    groups: list[tuple[int, int]] = []
    group_obj: int | None = None
    if access is not None:
        users, groups, base = _split(access)
        if ACL_MASK in base and ACL_GROUP_OBJ in base:
            group_obj = base[ACL_GROUP_OBJ]
    default_base: tuple[int, int, int, int] | None = None
    default_users: list[tuple[int, int]] = []
    default_groups: list[tuple[int, int]] = []
    if default is not None:
        default_users, default_groups, base = _split(default)
        if base:
            default_base = tuple(base.get(tag, ACL_NO_MASK) for tag in _BASE_TAGS)  # type: ignore[assignment]
    if not (
        users or groups or group_obj is not None or default_base or default_users or default_groups
    ):
        return None
    return Acl(
        users=tuple(sorted(users)),
        groups=tuple(sorted(groups)),
        group_obj=group_obj,
        default=default_base,
        default_users=tuple(sorted(default_users)),
        default_groups=tuple(sorted(default_groups)),
    )


# --- pxar Acl -> kernel value ---------------------------------------------------------------------


def _encode(records: list[tuple[int, int, int]]) -> bytes:
    records.sort(key=lambda r: (r[0], r[2]))
    out = [_HEADER.pack(POSIX_ACL_XATTR_VERSION)]
    out.extend(_RECORD.pack(tag, perm & 7, ident & 0xFFFFFFFF) for tag, perm, ident in records)
    return b"".join(out)


def has_access_acl(acl: Acl | None) -> bool:
    """True if the entry's access ACL says more than its mode does."""
    return acl is not None and bool(acl.users or acl.groups or acl.group_obj is not None)


def has_default_acl(acl: Acl | None) -> bool:
    return acl is not None and bool(
        acl.default is not None or acl.default_users or acl.default_groups
    )


def access_acl_xattr(mode: int, acl: Acl | None) -> bytes | None:
    """The `system.posix_acl_access` value of an entry, or None when its mode says it all."""
    if acl is None or not has_access_acl(acl):
        return None
    group_bits = (mode >> 3) & 7
    records = [
        (ACL_USER_OBJ, (mode >> 6) & 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, mode & 7, ACL_UNDEFINED_ID),
    ]
    records += [(ACL_USER, perm, uid) for uid, perm in acl.users]
    records += [(ACL_GROUP, perm, gid) for gid, perm in acl.groups]
    # With a stored GROUP_OBJ the mode's group bits are the mask; without one, named entries
    # still need a mask, and PBS's restore makes it equal to the group bits.
    group_obj = acl.group_obj if acl.group_obj is not None else group_bits
    records.append((ACL_GROUP_OBJ, group_obj, ACL_UNDEFINED_ID))
    records.append((ACL_MASK, group_bits, ACL_UNDEFINED_ID))
    return _encode(records)


def default_acl_xattr(acl: Acl | None) -> bytes | None:
    """The `system.posix_acl_default` value of a directory, or None when it has no default ACL."""
    if acl is None or not has_default_acl(acl):
        return None
    records = [
        (tag, perm, ACL_UNDEFINED_ID)
        for tag, perm in zip(_BASE_TAGS, acl.default or (ACL_NO_MASK,) * 4, strict=True)
        if perm != ACL_NO_MASK
    ]
    records += [(ACL_USER, perm, uid) for uid, perm in acl.default_users]
    records += [(ACL_GROUP, perm, gid) for gid, perm in acl.default_groups]
    return _encode(records)
