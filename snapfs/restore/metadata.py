"""Owner, mode, xattrs, ACLs, capabilities and mtime of one restored entry, in an order that sticks.

Per entry, after its content: owner first (chown clears setuid/setgid and file capabilities),
then mode, xattrs, ACLs, capabilities, and mtime last. An item that cannot be set does not undo the
entry: each failure is named in the list returned, and the caller reports the entry as restored
without it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from snapfs.pxar.acl import ACL_XATTR_ACCESS, ACL_XATTR_DEFAULT, access_acl_xattr, default_acl_xattr
from snapfs.pxar.entry import Entry

__all__ = ["apply_fd_metadata", "apply_path_metadata"]


def apply_fd_metadata(
    fd: int,
    entry: Entry,
    *,
    ignore_ownership: bool,
    inherited_acls: bool = True,
    owner: tuple[int, int] | None = None,
    mode: int | None = None,
) -> list[str]:
    """Set the entry's metadata on an open file or directory; the items that failed.

    What the caller knows of a file it just created saves syscalls: `inherited_acls` False, no
    ACL to remove; `owner`, the (uid, gid) it has; `mode`, the permission bits it has.
    """
    errors: list[str] = []
    perm = entry.mode & 0o7777
    if not ignore_ownership and owner != (entry.uid, entry.gid):
        _try(errors, "owner", os.fchown, fd, entry.uid, entry.gid)
    # A new entry inherits the default ACL of an existing parent; the archive's ACL (or its
    # absence) must win, so drop inherited ones before the mode is set.
    access = access_acl_xattr(entry.mode, entry.acl)
    default = default_acl_xattr(entry.acl) if entry.is_dir else None
    if access is None and inherited_acls:
        _remove_acl(errors, fd, ACL_XATTR_ACCESS)
    if default is None and entry.is_dir and inherited_acls:
        _remove_acl(errors, fd, ACL_XATTR_DEFAULT)
    if mode != perm:
        _try(errors, "mode", os.fchmod, fd, perm)
    for xname, value in entry.xattrs:
        _try(errors, f"xattr {xname!r}", os.setxattr, fd, xname, value)
    if access is not None:
        _try(errors, "ACL", os.setxattr, fd, ACL_XATTR_ACCESS, access)
    if default is not None:
        _try(errors, "default ACL", os.setxattr, fd, ACL_XATTR_DEFAULT, default)
    if entry.fcaps is not None:
        _try(errors, "file capabilities", os.setxattr, fd, b"security.capability", entry.fcaps)
    _try(errors, "mtime", os.utime, fd, ns=(entry.mtime_ns, entry.mtime_ns))
    return errors


def apply_path_metadata(
    pfd: int, name: bytes, entry: Entry, *, symlink: bool, ignore_ownership: bool
) -> list[str]:
    """Set what a symlink or node can carry, by name in its parent; the items that failed."""
    errors: list[str] = []
    if not ignore_ownership:
        _try(
            errors,
            "owner",
            os.chown,
            name,
            entry.uid,
            entry.gid,
            dir_fd=pfd,
            follow_symlinks=False,
        )
    if not symlink:  # Linux has no symlink modes; chmod of a node we just made is safe
        _try(errors, "mode", os.chmod, name, entry.mode & 0o7777, dir_fd=pfd)
    _try(
        errors,
        "mtime",
        os.utime,
        name,
        ns=(entry.mtime_ns, entry.mtime_ns),
        dir_fd=pfd,
        follow_symlinks=False,
    )
    return errors


def _try(errors: list[str], what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        errors.append(f"{what} ({exc.strerror or exc})")


def _remove_acl(errors: list[str], fd: int, name: bytes) -> None:
    try:
        os.removexattr(fd, name)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            errors.append(f"inherited ACL ({exc.strerror or exc})")
