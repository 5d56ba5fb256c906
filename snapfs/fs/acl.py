"""POSIX ACLs as the kernel's `system.posix_acl_access` / `system.posix_acl_default` xattr values.

pxar stores ACLs split up (docs/pxar-format.md §8.2): the owner and other entries live in the mode,
the mode's group bits hold the mask when there is one, and ACL_GROUP_OBJ then holds the real
owning-group permissions. The kernel (and so `getfacl`, `rsync -A`) wants the whole list in one
binary blob: a u32 version (2), then `(u16 tag, u16 perm, u32 id)` records sorted by tag and id.
"""

from __future__ import annotations

import struct

from snapfs.pxar.entry import Acl

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
#: pxar's "entry absent" value in ACL_DEFAULT.
ACL_NO_MASK = 0xFFFFFFFFFFFFFFFF

_HEADER = struct.Struct("<I")
_RECORD = struct.Struct("<HHI")


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


def access_acl_xattr(mode: int, acl: Acl) -> bytes:
    """The `system.posix_acl_access` value of an entry with this mode and ACL."""
    group_bits = (mode >> 3) & 7
    records = [
        (ACL_USER_OBJ, (mode >> 6) & 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, mode & 7, ACL_UNDEFINED_ID),
    ]
    records += [(ACL_USER, perm, uid) for uid, perm in acl.users]
    records += [(ACL_GROUP, perm, gid) for gid, perm in acl.groups]
    if acl.group_obj is not None:
        records.append((ACL_GROUP_OBJ, acl.group_obj, ACL_UNDEFINED_ID))
        records.append((ACL_MASK, group_bits, ACL_UNDEFINED_ID))
    else:
        records.append((ACL_GROUP_OBJ, group_bits, ACL_UNDEFINED_ID))
        if acl.users or acl.groups:
            # A named entry needs a mask; PBS restore adds one equal to the group bits too.
            records.append((ACL_MASK, group_bits, ACL_UNDEFINED_ID))
    return _encode(records)


def default_acl_xattr(acl: Acl) -> bytes:
    """The `system.posix_acl_default` value of a directory with this ACL."""
    user_obj, group_obj, other, mask = acl.default or (ACL_NO_MASK,) * 4
    records = []
    for tag, perm in (
        (ACL_USER_OBJ, user_obj),
        (ACL_GROUP_OBJ, group_obj),
        (ACL_OTHER, other),
        (ACL_MASK, mask),
    ):
        if perm != ACL_NO_MASK:
            records.append((tag, perm, ACL_UNDEFINED_ID))
    records += [(ACL_USER, perm, uid) for uid, perm in acl.default_users]
    records += [(ACL_GROUP, perm, gid) for gid, perm in acl.default_groups]
    return _encode(records)


def parse_acl_xattr(value: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) records of a kernel ACL xattr; for tests and diagnostics."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _RECORD.size:
        raise ValueError(f"ACL xattr of {len(value)} bytes is not a header plus whole records")
    (version,) = _HEADER.unpack_from(value)
    if version != POSIX_ACL_XATTR_VERSION:
        raise ValueError(f"ACL xattr version {version}, expected {POSIX_ACL_XATTR_VERSION}")
    return [rec for rec in _RECORD.iter_unpack(value[_HEADER.size :])]
