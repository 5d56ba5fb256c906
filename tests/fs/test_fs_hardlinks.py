"""Hard links, end to end: every member of every link group shows the group's st_nlink through a
real mount (v1 and split archives, our writer's and the upstream vectors'), and `snapfs restore`
makes each group one inode again.

A group is what the archive holds: names of one source inode inside the backed-up tree (a link
from outside the tree does not count). pxar records a link only at the link, so a mount that has
not indexed the archive counts the links it has seen; the first link met starts the index walk,
and the kernel re-reads a file's attributes within a second until then. A mount that finds the
index an earlier mount kept is exact from its first stat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.mounting import mounted, snapfs

from snapfs.backup import BackupSource, backup

pytestmark = pytest.mark.slow

SNAPSHOT = "host/h/2023-11-14T22:13:20Z"


@pytest.fixture(scope="module")
def linked_tree(tmp_path_factory) -> Path:
    """Groups of 2, 3 and 4 names, in one directory and across directories at several depths,
    one whose first name in archive order is not the first made, and a file also linked from
    outside the tree (one name inside: a group of one)."""
    base = tmp_path_factory.mktemp("links")
    root = base / "tree"
    for d in ("same", "d1", "d2/sub", "d3/a/b", "zz", "aa"):
        (root / d).mkdir(parents=True)
    (root / "same/one").write_bytes(b"pair in one directory\n")
    os.link(root / "same/one", root / "same/two")
    (root / "d1/three").write_bytes(os.urandom(70_000))
    os.link(root / "d1/three", root / "d2/three_link")
    os.link(root / "d1/three", root / "d2/sub/three_deep")
    (root / "zz/made_first").write_bytes(b"x" * 5000)  # in archive order, aa/ comes first
    for name in ("aa/l1", "d3/a/b/l2", "d3/l3"):
        os.link(root / "zz/made_first", root / name)
    os.chmod(root / "zz/made_first", 0o640)
    os.utime(root / "zz/made_first", ns=(1, 1_650_000_000_123_456_789))
    (base / "outside").write_bytes(b"linked from outside the tree\n")
    os.link(base / "outside", root / "d1/from_outside")
    for i in range(30):
        (root / "d2" / f"plain{i}").write_bytes(os.urandom(100 + i))
    return root


def link_groups(root: Path) -> dict[str, list[str]]:
    """Each inode inside `root` with its names there (relative paths), by the name first listed."""
    groups: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            groups.setdefault((st.st_dev, st.st_ino), []).append(os.path.relpath(path, root))
    return {names[0]: names for names in groups.values()}


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "split"])
def linked_store(request, linked_tree, tmp_path_factory) -> Path:
    ds = tmp_path_factory.mktemp("ds") / "store"
    result = backup(
        ds,
        [BackupSource("root.pxar", str(linked_tree))],
        backup_type="host",
        backup_id="h",
        backup_time=1_700_000_000,
        split=request.param,
    )
    assert not result.problems
    return ds


def assert_groups(archive: Path, source: Path, groups: dict[str, list[str]]) -> None:
    """Every member of every group: the group's inode, st_nlink = its size, the source's bytes."""
    for names in groups.values():
        stats = [os.lstat(archive / name) for name in names]
        assert {st.st_ino for st in stats} == {stats[0].st_ino}, names
        assert [st.st_nlink for st in stats] == [len(names)] * len(names), names
        want = (source / names[0]).read_bytes()
        for name in names:
            assert (archive / name).read_bytes() == want, name


def wait_for_nlinks(archive: Path, groups: dict[str, list[str]]) -> None:
    """Poll (bounded) until every member shows its group's size; a lower bound meanwhile."""
    deadline = time.monotonic() + 30
    while True:
        seen = {name: os.lstat(archive / name).st_nlink for n in groups.values() for name in n}
        want = {name: len(n) for n in groups.values() for name in n}
        assert all(1 <= seen[k] <= want[k] for k in want), (seen, want)
        if seen == want:
            return
        assert time.monotonic() < deadline, (seen, want)
        time.sleep(0.1)


def test_mount_shows_every_group_size(linked_store, linked_tree, tmp_path):
    groups = link_groups(linked_tree)
    assert sorted(len(n) for n in groups.values() if len(n) > 1) == [2, 3, 4]
    assert (
        len(groups["d1/from_outside"]) == 1
        and os.lstat(linked_tree / "d1/from_outside").st_nlink == 2
    )
    options = ("--index-dir", str(tmp_path / "index"))
    with mounted(linked_store, tmp_path / "m1", *options) as mnt:
        archive = mnt / SNAPSHOT / "root.pxar"
        firsts = {first: [first] for first in groups}
        for first in firsts:  # the names the archive stores the files under, links unseen
            assert os.lstat(archive / first).st_nlink == 1
        # One link of one group, looked up: the mount starts the index walk, after which every
        # group's first name shows its size, though no other link was ever looked up.
        os.lstat(archive / "d2/three_link")
        deadline = time.monotonic() + 30
        while (seen := {n: os.lstat(archive / n).st_nlink for n in firsts}) != {
            n: len(names) for n, names in groups.items()
        }:
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        assert_groups(archive, linked_tree, groups)
    assert os.listdir(tmp_path / "index")  # the walk the first link started was kept
    with mounted(linked_store, tmp_path / "m2", *options) as mnt:
        # Indexed before: exact from the first stat of each name, no waiting.
        assert_groups(mnt / SNAPSHOT / "root.pxar", linked_tree, groups)


def test_restore_makes_each_group_one_inode(linked_store, linked_tree, tmp_path):
    target = tmp_path / "out"
    proc = snapfs("restore", linked_store, SNAPSHOT, "root.pxar", target)
    assert proc.returncode == 0, proc.stderr
    assert_groups(target, linked_tree, link_groups(linked_tree))
    assert link_groups(target) == link_groups(linked_tree)
    made_first = os.lstat(target / "aa/l1")
    assert made_first.st_mode & 0o7777 == 0o640
    assert made_first.st_mtime_ns == 1_650_000_000_123_456_789


VECTOR_ARCHIVES = {
    "v1": "host/testhost/2024-06-01T11:00:00Z/root.pxar",
    "split": "ns/testns/host/splithost/2024-06-01T13:00:00Z/root.pxar",
}


@pytest.mark.parametrize("kind", VECTOR_ARCHIVES)
def test_upstream_vector_pair_in_a_mount(vectors, tmp_path, kind):
    """The upstream encoder's hard link pair (hardlink_b -> hardlink_a), v1 and split."""
    pair = {"hardlink_a": ["hardlink_a", "hardlink_b"]}
    with mounted(vectors / "datastore", tmp_path / "m", "--index-dir", str(tmp_path / "i")) as mnt:
        archive = mnt / VECTOR_ARCHIVES[kind]
        wait_for_nlinks(archive, pair)
        a, b = os.lstat(archive / "hardlink_a"), os.lstat(archive / "hardlink_b")
        assert a.st_ino == b.st_ino and a.st_size == b.st_size == 24
        assert (archive / "hardlink_a").read_bytes() == (archive / "hardlink_b").read_bytes()
