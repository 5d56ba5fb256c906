"""The one mountinfo reader: records with escapes undone, the top mount of a stacked point."""

from __future__ import annotations

import os
from pathlib import Path

from snapfs.linux.mountinfo import Mount, mount_at, mounts

# Shaped like the kernel's lines (proc(5)), with optional fields, and a path with a space, a tab,
# a newline and a backslash in it, which the kernel writes as \040, \011, \012 and \134.
TABLE = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:35 / /mnt/my\\040data rw,nosuid,nodev - fuse.snapfs snapfs:/srv/pbs\\040store ro\n"
    "41 22 7:3 / /mnt/odd\\011tab\\012nl\\134bs rw - ext4 /dev/loop3p1 rw\n"
    "42 22 0:36 / /mnt/stack rw shared:5 master:2 - tmpfs tmpfs rw\n"
    "43 42 0:37 / /mnt/stack ro - fuse.snapfs snapfs:/srv/other ro\n"
    "malformed line without the separator\n"
    "44 22 x:y / /mnt/bad-device rw - ext4 /dev/bad rw\n"
)


def table(tmp_path: Path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(TABLE)
    return str(path)


def test_each_line_becomes_a_record_with_escapes_undone(tmp_path: Path) -> None:
    assert mounts(table(tmp_path)) == [
        Mount("/", "ext4", "/dev/sda1", os.makedev(8, 1)),
        Mount("/mnt/my data", "fuse.snapfs", "snapfs:/srv/pbs store", os.makedev(0, 35)),
        Mount("/mnt/odd\ttab\nnl\\bs", "ext4", "/dev/loop3p1", os.makedev(7, 3)),
        Mount("/mnt/stack", "tmpfs", "tmpfs", os.makedev(0, 36)),
        Mount("/mnt/stack", "fuse.snapfs", "snapfs:/srv/other", os.makedev(0, 37)),
    ]  # the malformed lines are passed over


def test_mount_at_a_path_with_a_space_and_the_top_of_a_stack(tmp_path: Path) -> None:
    info = table(tmp_path)
    found = mount_at("/mnt/my data", info)
    assert found is not None and found.fs_type == "fuse.snapfs"
    stacked = mount_at("/mnt/stack", info)
    assert stacked is not None and stacked.source == "snapfs:/srv/other"  # the later one
    assert mount_at("/mnt/my\\040data", info) is None  # compared unescaped, never raw
    assert mount_at("/mnt", info) is None


def test_mount_at_resolves_symlinks(tmp_path: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to("/")
    found = mount_at(str(link), table(tmp_path))
    assert found is not None and found.mount_point == "/"


def test_the_real_table_has_the_root_mount_and_an_unreadable_one_is_empty(tmp_path: Path) -> None:
    assert any(m.mount_point == "/" for m in mounts())
    assert mount_at("/") is not None
    assert mounts(str(tmp_path / "no-such-file")) == []
