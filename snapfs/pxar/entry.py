"""The decoded view of one pxar archive entry, independent of how it was found.

An `Entry` is immutable and self-contained: everything the FUSE layer and restore need to answer
getattr/readlink/listxattr, plus the offsets the accessor needs to come back to it (read its
content, list it, resolve it). It holds no reference to the accessor or its byte sources.
"""

from __future__ import annotations

import enum
import stat
from dataclasses import dataclass


class EntryKind(enum.Enum):
    DIRECTORY = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    DEVICE = "device"
    FIFO = "fifo"
    SOCKET = "socket"


@dataclass(frozen=True)
class Acl:
    """POSIX ACL as pxar stores it (docs/formats.md §11.6); permissions are the raw u64 values.

    `group_obj` is present only when the access ACL has a mask (the mode's group bits then hold the
    mask). `default` is (user_obj, group_obj, other, mask); ACL_NO_MASK marks an absent one.
    """

    users: tuple[tuple[int, int], ...] = ()
    groups: tuple[tuple[int, int], ...] = ()
    group_obj: int | None = None
    default: tuple[int, int, int, int] | None = None
    default_users: tuple[tuple[int, int], ...] = ()
    default_groups: tuple[tuple[int, int], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (
            self.users
            or self.groups
            or self.group_obj is not None
            or self.default is not None
            or self.default_users
            or self.default_groups
        )


@dataclass(slots=True)
class Entry:
    """One archive entry: a value, never changed once made (`dataclasses.replace` makes another).

    Not a frozen dataclass: its constructor sets every field through `object.__setattr__`, 1.5 us
    more per entry (18 fields), and a walk or a listing makes one per entry, 100,000 at a time.

    `entry_offset` is the position of the entry's FILENAME item (0 for the root, which has none):
    unique per archive, so usable as an inode key, and the base a HARDLINK offset is relative to.
    `entry_end` is the end of the entry's items; for a directory the end of its goodbye table, from
    which the directory is reopened. `content_offset` is where the file bytes start: in the archive
    for unified (v1) archives, in the payload stream for split (v2) archives.
    """

    path: bytes
    name: bytes
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    flags: int
    size: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    acl: Acl | None
    fcaps: bytes | None
    quota_project_id: int | None
    link_target: bytes | None
    device: tuple[int, int] | None
    entry_offset: int
    entry_end: int
    content_offset: int | None

    @classmethod
    def without_metadata(
        cls,
        path: bytes,
        name: bytes,
        kind: EntryKind,
        entry_offset: int,
        entry_end: int,
        *,
        mode: int = 0,
        link_target: bytes | None = None,
    ) -> Entry:
        """An entry with no ENTRY item of its own: a hardlink (it is the entry it points at), or
        the root before its items are read. Every other field is zero or absent."""
        zeros = dict.fromkeys(("uid", "gid", "mtime_ns", "flags", "size"), 0)
        absent = dict.fromkeys(("acl", "fcaps", "quota_project_id", "device", "content_offset"))
        return cls(
            path=path,
            name=name,
            kind=kind,
            mode=mode,
            xattrs=(),
            link_target=link_target,
            entry_offset=entry_offset,
            entry_end=entry_end,
            **zeros,
            **absent,
        )

    is_dir = property(lambda self: self.kind is EntryKind.DIRECTORY)
    is_file = property(lambda self: self.kind is EntryKind.FILE)
    is_symlink = property(lambda self: self.kind is EntryKind.SYMLINK)
    is_hardlink = property(lambda self: self.kind is EntryKind.HARDLINK)

    @property
    def mtime(self) -> tuple[int, int]:
        """(seconds, nanoseconds) with 0 <= nanoseconds < 10**9, floor-based like statx."""
        return divmod(self.mtime_ns, 1_000_000_000)


_TYPE_LETTERS = {
    stat.S_IFDIR: "d",
    stat.S_IFREG: "f",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def type_letter(mode: int) -> str:
    """The letter `find -type` uses for a mode's file type: f d l c b p s (`?` for none)."""
    return _TYPE_LETTERS.get(stat.S_IFMT(mode), "?")
