"""/proc/self/mountinfo, read into records: what is mounted where, from which source and device.

The mount, the loop mappings and the image restore all ask the kernel the same question (is this
path a mount point, of what type; is this device mounted), so they share one reader of the file
(proc(5)): a line is `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE
SUPER_OPTIONS`, where the kernel writes space, tab, newline and backslash in paths as octal
escapes (`\\040`), undone here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["Mount", "mount_at", "mounts"]

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo."""

    mount_point: str
    fs_type: str  # e.g. "ext4", "fuse.snapfs"
    source: str  # e.g. "/dev/loop0p1", "snapfs:/srv/datastore"
    device: int  # st_dev of the files in it (os.makedev of MAJOR:MINOR)


def mounts(path: str = MOUNTINFO) -> list[Mount]:
    """Every mount, in the kernel's order (a later one stacked on the same mount point hides an
    earlier one); empty if the file cannot be read (no /proc)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, sep, right = line.partition(b" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        major, _, minor = fields[2].partition(b":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        found.append(
            Mount(
                mount_point=_unescape(fields[4]),
                fs_type=_unescape(tail[0]),
                source=_unescape(tail[1]),
                device=os.makedev(int(major), int(minor)),
            )
        )
    return found


def mount_at(path: str, table: str = MOUNTINFO) -> Mount | None:
    """The mount whose mount point `path` is, the top one if several are stacked there; None if
    `path` is not a mount point.

    The path as given is looked up first, touching no filesystem: resolving it (realpath stats
    every component, the mount's root too) would hang on a mount whose process hangs. Only a
    path not found so (one through a symbolic link) is resolved.
    """
    top = {mount.mount_point: mount for mount in mounts(table)}
    found = top.get(os.path.abspath(path))
    return found if found is not None else top.get(os.path.realpath(path))


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))
