"""A tree restore spread over worker processes leaves exactly what the one-process restore leaves.

Real worker processes (spawned) restore real archives: the upstream golden snapshots through a
datastore, and crafted archives whose hard links, directory mtimes and overwrite cases cross the
units the tree is cut into.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from support.pxar_files import PxarFile
from support.restore_listing import expected_listing, fs_listing

from snapfs.errors import SnapfsError
from snapfs.keysource import KeyOptions
from snapfs.progress import Progress
from snapfs.pxar.encoder import Encoder, Metadata
from snapfs.restore import tree
from snapfs.restore.archive import restore_archive
from snapfs.restore.parallel import restore_in_parallel
from snapfs.restore.tree import RestoreOptions, restore_pxar
from snapfs.store.datastore import parse_namespace, parse_snapshot
from snapfs.store.sources import SourceOptions
from snapfs.store.workers import WorkerStore

D = Metadata(mode=0o40755, mtime_ns=10**18)
F = Metadata(mode=0o100644, mtime_ns=2 * 10**18)
L = Metadata(mode=0o120777, mtime_ns=10**18)

#: Every tree is worth splitting, into as many units as it has room for.
SPLIT = {"processes": 2, "parallel_min_bytes": 0}

GOLDEN = [
    (None, None, "host/testhost/2024-06-01T11:00:00Z"),
    ("key-none.json", None, "host/testhost/2024-06-01T12:00:00Z"),
    (None, "testns", "host/splithost/2024-06-01T13:00:00Z"),
    ("key-none.json", None, "ct/200/2024-06-01T15:00:00Z"),
]


@pytest.mark.parametrize(("key", "ns", "snapshot"), GOLDEN)
def test_golden_snapshots_restore_the_same_on_worker_processes(
    vectors, tmp_path, monkeypatch, key, ns, snapshot
):
    """The upstream snapshots (unified, split, encrypted) through a datastore and real workers."""
    from snapfs.restore import parallel

    split = []
    monkeypatch.setattr(
        parallel,
        "restore_in_parallel",
        lambda job, root, work: split.append(restore_in_parallel(job, root, work)),
    )
    keys = KeyOptions(str(vectors / "keys" / key)) if key else None
    crypt = keys.crypt_config() if keys else None
    source = SourceOptions(str(vectors / "datastore"))
    store = WorkerStore(source, keys, crypt.fingerprint if crypt else None)
    report = restore_archive(
        source.open(),
        crypt,
        parse_snapshot(snapshot, parse_namespace(ns)),
        "root.pxar",
        str(tmp_path / "t"),
        RestoreOptions(**SPLIT),
        progress=Progress.disabled(),
        store=store,
    )
    assert report.ok, report.failures
    assert split == [None]
    assert fs_listing(tmp_path / "t") == expected_listing(vectors)


def _tree(enc: Encoder) -> None:
    """Four top-level directories, each with files, a nested directory and links across them."""
    targets = {}
    for d in range(4):
        name = b"d%d" % d
        enc.begin_directory(name, Metadata(mode=0o40750, mtime_ns=(d + 1) * 10**17))
        for i in range(30):
            data = os.urandom(3000 + 97 * i) if i % 3 else bytes(9000)
            off = enc.add_file(b"f%02d" % i, F, len(data), [data])
            targets[(d, i)] = (b"/" + name + b"/f%02d" % i, off)
        enc.begin_directory(b"nested", D)
        enc.add_symlink(b"up", L, b"../f01")
        for i in range(5):
            enc.add_file(b"n%d" % i, F, 5, [b"hello"])
        enc.end_directory()
        if d:  # a hard link to a file of the previous directory: another unit restores it
            path, off = targets[(d - 1, 4)]
            enc.add_hardlink(b"link-to-previous", path, off)
        path, off = targets[(d, 7)]
        enc.add_hardlink(b"link-here", path, off)
        enc.end_directory()
    enc.add_file(b"top.txt", F, 3, [b"top"])


def _archive_file(tmp_path: Path, build=_tree) -> PxarFile:
    out = io.BytesIO()
    enc = Encoder(out)
    enc.begin_directory(b"", D)
    build(enc)
    enc.finish()
    path = tmp_path / "crafted.pxar"
    path.write_bytes(out.getvalue())
    return PxarFile(str(path))


def _restore(archive: PxarFile, target: Path, **options) -> object:
    return restore_pxar(
        archive.open(), None, str(target), RestoreOptions(opener=archive, **options)
    )


def test_a_split_restore_equals_the_one_process_restore(tmp_path):
    archive = _archive_file(tmp_path)
    one = _restore(archive, tmp_path / "one")
    split = _restore(archive, tmp_path / "split", **SPLIT)
    assert one.ok and split.ok, split.failures
    assert split.files == one.files and split.bytes_total == one.bytes_total
    assert fs_listing(tmp_path / "split") == fs_listing(tmp_path / "one")
    # the link to another unit's file is a link, and its directory's mtime is the archive's
    linked = tmp_path / "split" / "d1" / "link-to-previous"
    assert os.stat(linked).st_ino == os.stat(tmp_path / "split" / "d0" / "f04").st_ino
    assert os.stat(tmp_path / "split" / "d1").st_mtime_ns == 2 * 10**17
    assert os.stat(tmp_path / "split").st_mtime_ns == D.mtime_ns


def test_the_tree_is_cut_below_big_directories(tmp_path, monkeypatch):
    """A tree with one big directory is cut inside it, not handed whole to one worker."""
    from snapfs.restore import parallel

    def one_big(enc: Encoder) -> None:
        enc.begin_directory(b"srv", D)
        for i in range(40):
            enc.add_file(b"f%02d" % i, F, 4096, [os.urandom(4096)])
        enc.end_directory()

    seen: list[tuple[bytes, int]] = []
    real = tree.restore_unit

    def counting(unit):
        seen.append((unit.parent_path, len(unit.children)))
        return real(unit)

    monkeypatch.setattr(parallel, "open_pool", _inline_pool)
    monkeypatch.setattr(tree, "restore_unit", counting)
    archive = _archive_file(tmp_path, one_big)
    assert _restore(archive, tmp_path / "t", **SPLIT).ok
    assert len(seen) >= 4 and {parent for parent, _ in seen} == {b"/srv"}
    assert sum(n for _, n in seen) == 40
    assert sorted(os.listdir(tmp_path / "t" / "srv")) == [f"f{i:02d}" for i in range(40)]


def _inline_pool(processes, cluster, **kwargs):
    from snapfs.cluster import InlinePool

    return InlinePool()


def test_a_rerun_finishes_an_interrupted_split_restore(tmp_path):
    archive = _archive_file(tmp_path)
    target = tmp_path / "t"
    assert _restore(archive, target, **SPLIT).ok
    reference = fs_listing(target)
    (target / ".snapfs-restore-incomplete").write_bytes(b"")
    (target / "d2" / "f05").unlink()
    (target / "d3" / "link-to-previous").unlink()
    os.utime(target / "d1", ns=(1, 1))
    report = _restore(archive, target, **SPLIT)
    assert report.ok and report.resumed, report.failures
    assert fs_listing(target) == reference
    assert not (target / ".snapfs-restore-incomplete").exists()


def test_overwrite_never_keeps_what_exists_across_units(tmp_path):
    archive = _archive_file(tmp_path)
    target = tmp_path / "t"
    (target / "d1").mkdir(parents=True)
    (target / "d1" / "f03").write_bytes(b"mine")
    report = _restore(archive, target, **SPLIT)
    assert report.ok and "/d1/f03" in report.skipped
    assert (target / "d1" / "f03").read_bytes() == b"mine"
    assert (target / "d3" / "f04").stat().st_size == 3000 + 97 * 4


def test_a_worker_that_fails_names_what_it_did_not_restore(tmp_path, monkeypatch):
    from snapfs.restore import parallel

    def failing(unit):
        if unit.parent_path == b"/d2":
            raise SnapfsError("disk gone")
        return parallel_real(unit)

    parallel_real = tree.restore_unit
    monkeypatch.setattr(parallel, "open_pool", _inline_pool)
    monkeypatch.setattr(tree, "restore_unit", failing)
    report = _restore(_archive_file(tmp_path), tmp_path / "t", **SPLIT)
    assert not report.ok
    assert all("not restored: disk gone" in f["message"] for f in report.failures)
    assert any(f["path"].startswith("/d2/") for f in report.failures)
    assert (tmp_path / "t" / ".snapfs-restore-incomplete").exists() is False
    assert (tmp_path / "t" / "d1" / "f01").exists()


def test_filters_and_dry_runs_stay_in_one_process(tmp_path, monkeypatch):
    from snapfs.restore import parallel

    def refuse(*args):
        raise AssertionError("not to be split")

    monkeypatch.setattr(parallel, "restore_in_parallel", refuse)
    archive = _archive_file(tmp_path)
    assert _restore(archive, tmp_path / "a", excludes=("d1",), **SPLIT).ok
    assert _restore(archive, tmp_path / "b", dry_run=True, **SPLIT).ok
    assert not (tmp_path / "a" / "d1").exists()
    assert restore_in_parallel is not refuse


@pytest.mark.parametrize("split", [False, True])
def test_the_command_line_restores_a_large_tree_on_workers(tmp_path, monkeypatch, split):
    """`snapfs restore --workers 2` of an encrypted backup large enough to be split (unified and
    split archives): the tree backed up, from worker processes that were handed the key."""
    from snapfs.cli import main
    from snapfs.restore import parallel

    source = tmp_path / "src"
    for d in range(8):
        folder = source / f"dir{d}" / "sub"
        folder.mkdir(parents=True)
        (source / f"dir{d}" / "big.bin").write_bytes(bytes(9 << 20) + os.urandom(1000))
        for i in range(40):
            (folder / f"f{i}").write_bytes(os.urandom(200 + i))
        if d:
            os.link(source / "dir0" / "big.bin", source / f"dir{d}" / "same-as-dir0")
    ds, key = tmp_path / "ds", tmp_path / "key.json"
    monkeypatch.setenv("SNAPFS_KEY_PASSWORD", "restore-test")
    assert main(["key", "create", str(key), "--kdf", "pbkdf2"]) == 0
    backup = ["backup", str(ds), f"root.pxar:{source}", "--keyfile", str(key)]
    assert (
        main([*backup, "--id", "h", "--time", "2024-01-01T00:00:00Z", *(["--split"] * split)]) == 0
    )
    split_runs = []
    monkeypatch.setattr(
        parallel,
        "restore_in_parallel",
        lambda job, root, work: split_runs.append(restore_in_parallel(job, root, work)),
    )
    target = tmp_path / "out"
    restore = ["restore", str(ds), "host/h/2024-01-01T00:00:00Z", "root.pxar", str(target)]
    assert main([*restore, "--keyfile", str(key), "--workers", "2"]) == 0
    assert split_runs == [None]
    assert fs_listing(target) == fs_listing(source)
    linked = os.stat(target / "dir5" / "same-as-dir0")
    assert linked.st_ino == os.stat(target / "dir0" / "big.bin").st_ino and linked.st_nlink == 8
