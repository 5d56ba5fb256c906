"""`GROUP/.versions`: each file of a group's archives as a directory of its distinct versions.

A tree backed up three times (a file that changes and changes back, one deleted, one added, one
unchanged, a symlink retargeted, a file that becomes a directory). Model-level tests (the refresh
clock stepped by hand) check the layout, inodes, content and refresh; the slow real-mount tests
compare `.versions` with a brute-force walk of every snapshot's tree through the kernel, for a
v1, a split and an encrypted archive, and check `--no-index` and a snapshot added while mounted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from support.mounting import key_options, mounted, snapfs

from snapfs.backup import BackupSource, backup
from snapfs.errors import NotDirectoryError, NotFoundError
from snapfs.fs.archive import ARCHIVE_SHIFT, PxarNode
from snapfs.fs.model import FsModel
from snapfs.fs.versions import VERSIONS_DIR, FileVersionsNode, UnionDirNode, VersionsIndex
from snapfs.search.index import default_index_path
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore, parse_backup_time

T1, T2, T3, T4 = (f"2024-06-0{day}T10:00:00Z" for day in range(1, 5))
MTIME_ONE = 1_700_000_000_123_456_789


def evolve(src: Path, step: int) -> None:
    """The source tree as backed up at T1, T2, T3 and (while mounted) T4."""
    changes = src / "changes.txt"
    if step == 1:
        (src / "sub").mkdir(parents=True)
        (src / "same.txt").write_text("never changes\n")
        (src / "gone.txt").write_text("deleted after T2\n")
        (src / "flip").write_text("a file, then a directory\n")
        (src / "sub" / "deep.txt").write_text("deep\n")
        os.setxattr(src / "sub" / "deep.txt", "user.note", b"kept")
        owned = src / "sub" / "owned"
        owned.write_text("someone else's\n")
        os.chown(owned, 1000, 1001)
        owned.chmod(0o640)
        os.symlink("same.txt", src / "link")
        os.mkfifo(src / "fifo")
        changes.write_text("one\n")
        os.utime(changes, ns=(MTIME_ONE, MTIME_ONE))
    elif step == 2:
        changes.write_text("two, longer\n")
        (src / "link").unlink()
        os.symlink("sub/deep.txt", src / "link")
        (src / "flip").unlink()
        (src / "flip").mkdir()
        (src / "flip" / "inner").write_text("inside\n")
    elif step == 3:
        changes.write_text("one\n")  # back to T1's version, mtime included
        os.utime(changes, ns=(MTIME_ONE, MTIME_ONE))
        (src / "gone.txt").unlink()
        (src / "new.txt").write_text("added at T3\n")
    else:
        changes.write_text("three\n")
        (src / "newer.txt").write_text("added at T4\n")


#: What `.versions/root.pxar` shows after T3: path -> version names; a directory: None.
AFTER_T3 = {
    "same.txt": [T1],
    "changes.txt": [T1, T2],
    "gone.txt": [T1],
    "new.txt": [T3],
    "link": [T1, T2],
    "fifo": [T1],
    "flip": None,  # a file at T1, a directory since: a directory
    "flip/inner": [T2],
    "sub": None,
    "sub/deep.txt": [T1],
    "sub/owned": [T1],
}


def backup_at(store: Path, src: Path, when: str, group: str = "web", **kw) -> None:
    backup(
        store,
        [BackupSource("root.pxar", str(src))],
        backup_type="host",
        backup_id=group,
        backup_time=parse_backup_time(when),
        **kw,
    )


@pytest.fixture
def store(tmp_path) -> tuple[Path, Path]:
    src, store = tmp_path / "src", tmp_path / "store"
    for step, when in enumerate((T1, T2, T3), start=1):
        evolve(src, step)
        backup_at(store, src, when)
    return store, src


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_model(store: Path, index: Path | None, interval: float | None = 10.0):
    model = FsModel(
        Datastore(LocalBackend(store)),
        None,
        ChunkCache(64 << 20),
        refresh_interval=interval,
        versions_index=None if index is None else VersionsIndex(str(index)),
    )
    model.clock = clock = Clock()
    return model, clock


def walk(model: FsModel, path: str):
    node = model.root
    for part in path.split("/"):
        node = model.remember(model.lookup(node, part.encode()))
    return node


def names(model: FsModel, node) -> list[bytes]:
    return [item.name for item in model.readdir(model.opendir(node), 0, 10_000)]


def read(model: FsModel, node) -> bytes:
    return bytes(model.open(node).read(0, 1 << 20))


def versions_shown(model: FsModel, top: str) -> dict:
    """`top` walked through the model as `AFTER_T3` spells it."""
    found = {}

    def visit(node, rel: str) -> None:
        for item in model.readdir(model.opendir(node), 0, 10_000):
            path = f"{rel}{item.name.decode()}"
            if isinstance(item.node, FileVersionsNode):
                found[path] = [name.decode() for name in names(model, item.node)]
            else:
                assert isinstance(item.node, UnionDirNode)
                found[path] = None
                visit(item.node, path + "/")

    visit(walk(model, top), "")
    return found


def test_versions_of_each_file_named_by_first_snapshot(store, tmp_path):
    store, src = store
    model, _ = make_model(store, tmp_path / "index.sqlite")
    group = walk(model, "host/web")
    assert VERSIONS_DIR not in names(model, group)  # found by name, never listed
    assert names(model, walk(model, "host/web/.versions")) == [b"root.pxar"]
    assert versions_shown(model, "host/web/.versions/root.pxar") == AFTER_T3

    # Each version is its snapshot's file: bytes, mode, owner, size, mtime.
    top = "host/web/.versions/root.pxar"
    for path, when in (("changes.txt", T1), ("changes.txt", T2), ("sub/owned", T1)):
        version = walk(model, f"{top}/{path}/{when}")
        archived = walk(model, f"host/web/{when}/root.pxar/{path}")
        assert read(model, version) == read(model, archived)
        mine, theirs = model.attr(version), model.attr(archived)
        assert (mine.mode, mine.uid, mine.gid, mine.size, mine.mtime_ns) == (
            theirs.mode,
            theirs.uid,
            theirs.gid,
            theirs.size,
            theirs.mtime_ns,
        )
    assert model.attr(walk(model, f"{top}/sub/owned/{T1}")).uid == 1000
    assert model.xattrs(walk(model, f"{top}/sub/deep.txt/{T1}")) == [(b"user.note", b"kept")]
    assert model.readlink(walk(model, f"{top}/link/{T1}")) == b"same.txt"
    assert model.readlink(walk(model, f"{top}/link/{T2}")) == b"sub/deep.txt"
    assert model.attr(walk(model, f"{top}/link/{T2}")).size == len(b"sub/deep.txt")
    assert stat.S_ISFIFO(model.attr(walk(model, f"{top}/fifo/{T1}")).mode)
    with pytest.raises(NotFoundError):
        model.lookup(walk(model, f"{top}/changes.txt"), T3.encode())  # T1's version again
    with pytest.raises(NotDirectoryError):
        model.lookup(walk(model, f"{top}/same.txt/{T1}"), b"x")
    # The directories of the union carry their newest version's mode; those of versions are
    # plain 0555 directories.
    assert model.attr(walk(model, f"{top}/sub")).mode == os.stat(src / "sub").st_mode
    assert model.attr(walk(model, f"{top}/same.txt")).mode == stat.S_IFDIR | 0o555


def test_inodes_are_their_own_and_stable_while_referenced(store, tmp_path):
    store, _ = store
    model, _ = make_model(store, tmp_path / "index.sqlite")
    top = "host/web/.versions/root.pxar"
    nodes = [walk(model, f"{top}/{path}") for path in AFTER_T3]
    nodes += [walk(model, f"{top}/changes.txt/{when}") for when in (T1, T2)]
    archived = walk(model, f"host/web/{T1}/root.pxar/changes.txt")
    assert isinstance(archived, PxarNode)
    inos = {node.ino for node in nodes}
    assert len(inos) == len(nodes) and archived.ino not in inos
    assert len({ino >> ARCHIVE_SHIFT for ino in inos}) == 1  # an archive id of their own
    assert archived.ino >> ARCHIVE_SHIFT != nodes[0].ino >> ARCHIVE_SHIFT
    # Looked up again while the kernel holds them: the same nodes, in the inode table.
    for node, path in zip(nodes, AFTER_T3, strict=False):
        assert walk(model, f"{top}/{path}") is node and model.node(node.ino) is node
    # Forgotten: out of the table, and a later lookup gets a number never used before.
    version = nodes[-1]
    model.forget(version.ino, version.lookups)
    with pytest.raises(NotFoundError):
        model.node(version.ino)
    del nodes, version
    again = walk(model, f"{top}/changes.txt/{T2}")
    assert again.ino not in inos


def test_a_new_snapshot_shows_after_the_refresh_interval(store, tmp_path):
    store, src = store
    model, clock = make_model(store, tmp_path / "index.sqlite", interval=10.0)
    changes = walk(model, "host/web/.versions/root.pxar/changes.txt")
    assert names(model, changes) == [T1.encode(), T2.encode()]
    evolve(src, 4)
    backup_at(store, src, T4)
    clock.now += 9.9
    assert names(model, changes) == [T1.encode(), T2.encode()]  # not yet
    clock.now += 0.2
    assert names(model, changes) == [T1.encode(), T2.encode(), T4.encode()]
    assert read(model, walk(model, f"host/web/.versions/root.pxar/changes.txt/{T4}")) == b"three\n"
    assert names(model, walk(model, "host/web/.versions/root.pxar/newer.txt")) == [T4.encode()]
    # Pruned: a version's name is the first snapshot still holding it.
    shutil.rmtree(store / "host" / "web" / T1)
    clock.now += 10
    assert names(model, walk(model, "host/web/.versions/root.pxar/same.txt")) == [T2.encode()]
    assert names(model, changes) == [T2.encode(), T3.encode(), T4.encode()]
    with pytest.raises(NotFoundError):
        walk(model, "host/web/.versions/root.pxar/gone.txt/" + T1)


def test_snapshots_the_cli_indexed_are_not_indexed_again(store, tmp_path, monkeypatch):
    store, _ = store
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    proc = snapfs("index", store)
    assert proc.returncode == 0, proc.stderr
    model, _ = make_model(store, Path(default_index_path(str(store))))
    assert names(model, walk(model, "host/web/.versions/root.pxar/changes.txt")) == [
        T1.encode(),
        T2.encode(),
    ]
    assert "0 snapshots added" in model.stats_text()  # the CLI indexed them already


def test_without_a_search_index_there_is_no_versions_directory(store):
    store, _ = store
    model, _ = make_model(store, None)
    with pytest.raises(NotFoundError):
        walk(model, "host/web/.versions")
    assert "group versions (.versions): off" in model.stats_text()


# --- real mounts (slow) ---------------------------------------------------------------------------


def tree_of(root: Path) -> dict[str, tuple]:
    """Every entry below `root` as lstat and the kernel show it: path -> (kind, what makes a
    version: mode, owner, size, mtime, bytes' hash or link target, xattrs)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ("d", None)
                continue
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = None
            xattrs = tuple(
                sorted(
                    (key, os.getxattr(path, key, follow_symlinks=False))
                    for key in os.listxattr(path, follow_symlinks=False)
                )
            )
            look = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, what, xattrs)
            found[rel] = ("-", look)
    return found


def brute_force(group: Path) -> tuple[dict[str, list[str] | None], dict]:
    """What `.versions/root.pxar` must show, from every snapshot's tree: path -> the names of its
    versions (None for a directory); and (path, name) -> what that version looks like."""
    shown: dict[str, list[str] | None] = {}
    looks: dict[tuple[str, str], tuple] = {}
    first: dict[tuple[str, tuple], str] = {}
    snapshots = sorted(name for name in os.listdir(group) if name[:4].isdigit())
    for when in snapshots:
        for path, (kind, look) in tree_of(group / when / "root.pxar").items():
            if kind == "d":
                shown[path] = None
            elif (path, look) not in first:
                first[path, look] = when
                looks[path, when] = look
    for (path, _), when in sorted(first.items(), key=lambda item: item[1]):
        if path in shown and shown[path] is None:
            del looks[path, when]  # a directory in some snapshot: a directory
            continue
        shown.setdefault(path, []).append(when)
    return shown, looks


def versions_tree(top: Path) -> tuple[dict[str, list[str] | None], dict]:
    """`.versions/root.pxar` as the kernel shows it, in the shape `brute_force` returns."""
    shown: dict[str, list[str] | None] = {}
    looks: dict[tuple[str, str], tuple] = {}
    for path, (kind, look) in tree_of(top).items():
        parent, _, name = path.rpartition("/")
        if kind == "d" and not (parent in shown and shown[parent] is not None):
            shown[path] = None  # a directory of the union, until it turns out to hold versions
        else:
            shown[parent] = sorted([*(shown.get(parent) or []), name])
            looks[parent, name] = look
    return shown, looks


def check_against_the_snapshots(mnt: Path, group: str) -> None:
    want, want_looks = brute_force(mnt / group)
    got, got_looks = versions_tree(mnt / group / ".versions" / "root.pxar")
    assert got == want
    assert got_looks == want_looks  # bytes, mode, owner, size, mtime, link target, xattrs


def wait_for(predicate, what: str, timeout: float = 30.0):
    """Poll until `predicate()` is truthy: the mount re-lists on its own clock, not ours."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling another process's state, not synchronising with it


def backup_cli(store: Path, src: Path, when: str, group: str, *extra) -> None:
    proc = snapfs(
        "backup", store, f"root.pxar:{src}", "--type", "host", "--id", group, "--time", when,
        *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_mounted_versions_equal_a_brute_force_walk_of_the_snapshots(tmp_path, vectors):
    store, env = tmp_path / "store", {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    keys = key_options(vectors, tmp_path)
    groups = {"web": (), "split": ("--split",), "secret": tuple(keys)}
    for group, extra in groups.items():
        src = tmp_path / f"src-{group}"
        for step, when in enumerate((T1, T2, T3), start=1):
            evolve(src, step)
            backup_cli(store, src, when, group, *extra)

    with mounted(store, tmp_path / "mnt", "--refresh-interval", "0.5", env=env) as mnt:
        assert ".versions" not in os.listdir(mnt / "host" / "web")
        for group in ("web", "split"):
            check_against_the_snapshots(mnt, f"host/{group}")
        assert os.listdir(mnt / "host" / "secret" / ".versions") == []  # no key, no archive

        # A backup made while mounted shows after the refresh interval.
        evolve(tmp_path / "src-web", 4)
        backup_cli(store, tmp_path / "src-web", T4, "web")
        changes = mnt / "host" / "web" / ".versions" / "root.pxar" / "changes.txt"
        wait_for(lambda: T4 in os.listdir(changes), "the new version")
        assert sorted(os.listdir(changes)) == [T1, T2, T4]
        assert (changes / T4).read_text() == "three\n"
        check_against_the_snapshots(mnt, "host/web")

    with mounted(store, tmp_path / "mnt", *keys, env=env) as mnt:  # the sealed part, with the key
        assert os.listdir(mnt / "host" / "secret" / ".versions") == ["root.pxar"]
        check_against_the_snapshots(mnt, "host/secret")

    with mounted(store, tmp_path / "mnt", "--no-index", env=env) as mnt:
        assert os.path.isdir(mnt / "host" / "web" / T1)
        assert not os.path.exists(mnt / "host" / "web" / ".versions")

    # The mounts kept what they indexed where the CLI looks: nothing is left to add.
    proc = snapfs("index", store, env=env)
    assert proc.returncode == 0 and ", 0 added" in proc.stdout, proc.stdout + proc.stderr
