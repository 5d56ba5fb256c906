"""The mount as a live view: image partitions as files, listings that refresh, `.snapfs/stats`.

Model-level tests here run without FUSE (the refresh clock is stepped by hand); the real-mount
tests at the end are slow-marked and check the same through the kernel: a GPT partition mounted
with `mount -o loop` from `.parts/`, a backup and a prune seen by a running mount.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.mounting import SNAPFS, is_mounted, mounted, snapfs

from snapfs.backup import BackupSource, backup
from snapfs.cli import build_parser
from snapfs.cli._common import backend_options
from snapfs.errors import NotFoundError
from snapfs.fs.content import BytesContent, Content
from snapfs.fs.control import CONTROL_DIR
from snapfs.fs.image import PartitionNode, PartsNode
from snapfs.fs.model import FsModel
from snapfs.fs.snapshot import SnapshotNode
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore, parse_backup_time
from snapfs.store.sources import BackendOptions, source_option_argv

T1, T2, T3 = "2024-06-01T10:00:00Z", "2024-06-02T10:00:00Z", "2024-06-03T10:00:00Z"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_model(store: Path, interval: float | None = 10.0, backend=None) -> tuple[FsModel, Clock]:
    model = FsModel(
        Datastore(backend or LocalBackend(store)), None, ChunkCache(64 << 20),
        refresh_interval=interval,
    )  # fmt: skip
    clock = Clock()
    model.clock = clock
    model._backend_refreshed_at = clock.now
    return model, clock


def walk(model: FsModel, path: str):
    node = model.root
    for part in path.split("/"):
        node = model.remember(model.lookup(node, part.encode()))
    return node


def names(model: FsModel, node) -> list[bytes]:
    return [item.name for item in model.readdir(model.opendir(node), 0, 10_000)]


def sfdisk_layout(disk: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition, as util-linux (not our parser) reads them."""
    out = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    table = json.loads(out)["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [(p["start"] * sector, p["size"] * sector) for p in table["partitions"]]


def gpt_image(path: Path, seed: int = 5) -> bytes:
    """A 6 MiB disk with a GPT of two partitions, each filled with its own random bytes."""
    path.write_bytes(bytes(6 * 1024 * 1024))
    subprocess.run(["sfdisk", "-q", str(path)], input=b"label: gpt\n,1M,L\n,,L\n", check=True)
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for start, size in sfdisk_layout(path):
        data[start : start + size] = rng.randbytes(size)
    path.write_bytes(data)
    return bytes(data)


def image_store(tmp: Path, image: Path, backup_id: str = "300") -> Path:
    store = tmp / "store"
    backup(
        store,
        [BackupSource("drive-scsi0.img", str(image))],
        backup_type="vm",
        backup_id=backup_id,
        backup_time=parse_backup_time(T1),
    )
    return store


# --- .parts ---------------------------------------------------------------------------------------


def test_gpt_partitions_are_files_matching_the_image(tmp_path):
    disk = tmp_path / "disk.raw"
    data = gpt_image(disk)
    layout = sfdisk_layout(disk)
    model, _ = make_model(image_store(tmp_path, disk))
    snap = walk(model, f"vm/300/{T1}")
    assert b"drive-scsi0.img.parts" in names(model, snap)
    parts = walk(model, f"vm/300/{T1}/drive-scsi0.img.parts")
    assert isinstance(parts, PartsNode) and parts._children is None  # read on first use only
    assert names(model, parts) == [b"part1", b"part2"]
    for number, (start, size) in enumerate(layout, start=1):
        node = model.lookup(parts, f"part{number}".encode())
        assert isinstance(node, PartitionNode) and model.attr(node).size == size
        content = model.open(node)
        assert isinstance(content, Content)
        got = b"".join(bytes(content.read(off, 300_000)) for off in range(0, size, 300_000))
        assert hashlib.sha256(got).digest() == hashlib.sha256(data[start : start + size]).digest()
        assert content.read(size, 10) == b""  # never past the partition into the next one
        # Readahead stays inside the partition window too.
        assert content.readahead(size - 1, 1) == []


def test_image_without_a_table_has_an_empty_parts_directory(vectors):
    model, _ = make_model(vectors / "datastore")
    parts = walk(model, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img.parts")
    assert names(model, parts) == []


def test_damaged_table_is_logged_and_the_directory_empty(tmp_path, caplog):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(2 * 1024 * 1024))
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\n,,L\n", check=True)
    with open(disk, "r+b") as f:
        f.seek(446)
        f.write(b"\x42")  # status byte of partition 1: neither 0x00 nor 0x80
    model, _ = make_model(image_store(tmp_path, disk))
    with caplog.at_level(logging.ERROR, logger="snapfs.fs"):
        parts = walk(model, f"vm/300/{T1}/drive-scsi0.img.parts")
        assert names(model, parts) == []
    assert any("invalid status byte" in r.getMessage() for r in caplog.records)
    image = walk(model, f"vm/300/{T1}/drive-scsi0.img")
    assert bytes(model.open(image).read(0, 512)) == disk.read_bytes()[:512]  # image still reads


# --- refresh --------------------------------------------------------------------------------------


def add_snapshot(store: Path, src: Path, when: str, backup_id: str = "100") -> None:
    backup(
        store,
        [BackupSource("qemu-server.conf", str(src))],
        backup_type="vm",
        backup_id=backup_id,
        backup_time=parse_backup_time(when),
    )


@pytest.fixture
def small_store(tmp_path) -> tuple[Path, Path]:
    conf = tmp_path / "100.conf"
    conf.write_text("memory: 1024\n")
    store = tmp_path / "store"
    add_snapshot(store, conf, T1)
    add_snapshot(store, conf, T2)
    return store, conf


def test_listings_refresh_after_the_interval_keeping_inodes(small_store):
    store, conf = small_store
    model, clock = make_model(store, interval=10.0)
    group = walk(model, "vm/100")
    old_snap = walk(model, f"vm/100/{T1}")
    kept_snap = walk(model, f"vm/100/{T2}")
    conf_node = walk(model, f"vm/100/{T2}/qemu-server.conf")
    latest = walk(model, "vm/100/latest")
    assert model.readlink(latest) == T2.encode()
    ino_before = {n: n.ino for n in (model.root, group, kept_snap, latest, conf_node)}
    # The interval is measured in the kernel's cache time of these entries, too.
    assert model.attr(kept_snap).timeout == 10.0 and model.attr(latest).timeout == 10.0
    assert model.attr(conf_node).timeout is None  # inside a snapshot nothing changes

    shutil.rmtree(store / "vm" / "100" / T1)  # prune
    add_snapshot(store, conf, T3)  # a new backup
    add_snapshot(store, conf, T1, backup_id="101")  # a new group
    clock.now += 9.9
    assert names(model, group) == [T1.encode(), T2.encode(), b"latest"]  # not yet
    clock.now += 0.2
    assert names(model, group) == [T2.encode(), T3.encode(), b"latest"]
    assert names(model, walk(model, "vm")) == [b"100", b"101"]
    assert model.readlink(walk(model, "vm/100/latest")) == T3.encode()
    for node, ino in ino_before.items():
        assert node.ino == ino and model.node(ino) is node
    assert walk(model, "vm/100/latest") is latest
    assert walk(model, f"vm/100/{T2}/qemu-server.conf") is conf_node
    # The pruned snapshot and what was loaded below it are gone from the inode table.
    with pytest.raises(NotFoundError):
        model.node(old_snap.ino)
    with pytest.raises(NotFoundError):
        model.lookup(group, T1.encode())


def test_no_interval_means_listed_once(small_store):
    store, conf = small_store
    model, clock = make_model(store, interval=None)
    group = walk(model, "vm/100")
    assert names(model, group) == [T1.encode(), T2.encode(), b"latest"]
    assert model.attr(group).timeout is None
    add_snapshot(store, conf, T3)
    clock.now += 1e9
    assert names(model, group) == [T1.encode(), T2.encode(), b"latest"]


def test_incomplete_snapshot_fills_in_once_finished(small_store):
    store, _ = small_store
    manifest = store / "vm" / "100" / T2 / "index.json.blob"
    hidden = manifest.with_name("manifest.tmp")
    manifest.rename(hidden)  # being written: no manifest yet
    model, clock = make_model(store, interval=5.0)
    snap = walk(model, f"vm/100/{T2}")
    assert names(model, snap) == []
    assert model.readlink(walk(model, "vm/100/latest")) == T1.encode()
    hidden.rename(manifest)
    clock.now += 5
    assert b"qemu-server.conf" in names(model, snap)
    assert model.readlink(walk(model, "vm/100/latest")) == T2.encode()
    assert isinstance(snap, SnapshotNode) and walk(model, f"vm/100/{T2}") is snap


class RefreshCounting(LocalBackend):
    """A local backend that pretends to cache listings like S3Backend (refresh, stats)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.refreshes = 0
        self.memory_cache = None

    def refresh(self) -> None:
        self.refreshes += 1

    def stats(self) -> dict:
        from snapfs.store.stats import build_report

        return build_report({"get_requests": 7, "list_requests": 3})


def test_backend_refresh_at_most_once_per_interval(small_store):
    store, _ = small_store
    backend = RefreshCounting(store)
    model, clock = make_model(store, interval=10.0, backend=backend)
    assert backend.memory_cache is model.cache  # the mount hands the source its cache
    walk(model, f"vm/100/{T1}")
    assert backend.refreshes == 0
    clock.now += 10
    names(model, model.root)
    names(model, walk(model, "vm"))
    names(model, walk(model, "vm/100"))
    assert backend.refreshes == 1  # three stale listings, one refresh of the source


def test_failed_refresh_keeps_the_last_listing(small_store, caplog):
    store, _ = small_store
    backend = RefreshCounting(store)
    model, clock = make_model(store, interval=10.0, backend=backend)
    group = walk(model, "vm/100")
    before = names(model, group)

    def broken(path):
        raise NotFoundError("s3://bucket/store: cannot reach S3 endpoint (test)")

    backend.list_dir = broken
    clock.now += 10
    with caplog.at_level(logging.ERROR, logger="snapfs.fs"):
        assert names(model, group) == before
    assert any("cannot reach" in r.getMessage() for r in caplog.records)


# --- .snapfs/stats --------------------------------------------------------------------------------


def test_stats_file_is_found_but_not_listed(vectors):
    model, _ = make_model(vectors / "datastore")
    assert CONTROL_DIR not in names(model, model.root)
    control = model.lookup(model.root, CONTROL_DIR)
    assert names(model, control) == [b"stats"]
    stats = model.lookup(control, b"stats")
    with pytest.raises(NotFoundError):
        model.lookup(walk(model, "vm"), CONTROL_DIR)  # only at the top
    image = model.open(walk(model, "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img"))
    image.read(0, 4096)
    image.read(0, 4096)  # the same chunk again: a memory cache hit
    attr = model.attr(stats)
    assert not attr.final  # never cached by the kernel: it changes
    content = model.open(stats)
    assert isinstance(content, BytesContent)
    text = bytes(content.read(0, 1 << 20)).decode()
    assert attr.size == len(text.encode())
    assert f"source: {vectors / 'datastore'}" in text
    assert "chunks read from the source: 1" in text
    assert "memory cache: " in text and "listings refreshed every 10 s" in text


def test_stats_of_a_remote_source_show_its_requests(small_store):
    store, _ = small_store
    model, _ = make_model(store, backend=RefreshCounting(store))
    text = model.stats_text()
    assert "requests: GET 7, LIST 3" in text and "estimated cost" in text


# --- map: the child mount gets the same source --------------------------------------------------


def test_source_options_round_trip_to_a_child_command(tmp_path):
    parser = build_parser()
    argv = [
        "map",
        "s3://bucket/store",
        "vm/100/2024-06-01T10:00:00Z",
        "drive-scsi0.img",
        "--endpoint-url",
        "http://127.0.0.1:9000",
        "--region",
        "eu-west-1",
        "--path-style",
        "--ca-bundle",
        "ca.pem",
        "--no-verify-tls",
        "--virtual-host-style",
        "--s3-connections",
        "3",
        "--rate-limit",
        "10M",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--cache-dir-size",
        "2G",
        "--refresh-interval",
        "30",
        "--price-table",
        "r2",
        "--profile",
        "backup",
    ]
    options = backend_options(parser.parse_args(argv))
    child = source_option_argv(options)
    again = backend_options(parser.parse_args(["mount", "s3://b/s", "/mnt", *child]))
    assert again == BackendOptions(**{**options.__dict__, "ca_bundle": os.path.abspath("ca.pem")})
    assert source_option_argv(BackendOptions()) == []


# --- real mounts (slow) ---------------------------------------------------------------------------


def _files_in(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "lost+found" not in p.parts
    }


@pytest.mark.slow
def test_gpt_ext4_partition_mounts_from_the_parts_directory(tmp_path):
    disk = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "40M", str(disk)], check=True)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: gpt\n,2M,L\n,,L\n", check=True)
    start, size = sfdisk_layout(disk)[1]
    fs = tmp_path / "fs.raw"
    subprocess.run(["truncate", "-s", str(size), str(fs)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-E", "root_owner=0:0", str(fs)], check=True)
    rng = random.Random(9)
    files = {
        f"d{i}/f{j}": rng.randbytes(rng.randrange(1, 200_000)) for i in range(3) for j in range(8)
    }
    inner = tmp_path / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-o", "loop", str(fs), str(inner)], check=True)
    try:
        for name, data in files.items():
            (inner / name).parent.mkdir(exist_ok=True)
            (inner / name).write_bytes(data)
    finally:
        subprocess.run(["umount", str(inner)], check=True)
    with open(disk, "r+b") as out, open(fs, "rb") as src:
        out.seek(start)
        shutil.copyfileobj(src, out)
    store = tmp_path / "store"
    proc = snapfs(
        "backup", store, f"drive-scsi0.img:{disk}", "--type", "vm", "--id", "300", "--time", T1
    )
    assert proc.returncode == 0, proc.stderr
    with mounted(store, tmp_path / "mnt") as mnt:
        parts = mnt / "vm" / "300" / T1 / "drive-scsi0.img.parts"
        assert sorted(os.listdir(parts)) == ["part1", "part2"]
        assert os.stat(parts / "part2").st_size == size
        subprocess.run(["mount", "-o", "ro,loop", str(parts / "part2"), str(inner)], check=True)
        try:
            assert _files_in(inner) == files
        finally:
            subprocess.run(["umount", str(inner)], check=True)


def _wait_for(predicate, what: str, timeout: float = 30.0):
    """Poll until `predicate()` is truthy; the mount re-lists on its own clock, not ours."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling an external process's state, not synchronising with it


@pytest.mark.slow
def test_running_mount_sees_new_and_pruned_snapshots(tmp_path):
    conf = tmp_path / "100.conf"
    conf.write_text("memory: 2048\n")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(random.Random(1).randbytes(12 * 1024 * 1024))  # three 4 MiB chunks
    store = tmp_path / "store"
    for when in (T1, T2):
        proc = snapfs(
            "backup", store, f"qemu-server.conf:{conf}", f"drive-scsi0.img:{disk}",
            "--type", "vm", "--id", "100", "--time", when,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    # The smallest memory cache holds one chunk: of two chunks, one comes from the datastore.
    options = ("--refresh-interval", "0.5", "--cache-size", "4M")
    with mounted(store, tmp_path / "mnt", *options) as mnt:
        group = mnt / "vm" / "100"
        assert sorted(os.listdir(group)) == [T1, T2, "latest"]
        kept_ino = os.stat(group / T2).st_ino
        with open(group / T1 / "drive-scsi0.img", "rb") as held:
            assert held.read(4096) == disk.read_bytes()[:4096]
            proc = snapfs(
                "backup",
                store,
                f"qemu-server.conf:{conf}",
                "--type",
                "vm",
                "--id",
                "100",
                "--time",
                T3,
            )
            assert proc.returncode == 0, proc.stderr
            shutil.rmtree(store / "vm" / "100" / T1)
            shutil.rmtree(store / ".chunks")  # and GC: nothing of the old snapshot is left
            (store / ".chunks").mkdir()
            _wait_for(lambda: sorted(os.listdir(group)) == [T2, T3, "latest"], "the new listing")
            assert os.readlink(group / "latest") == T3
            assert (group / "latest" / "qemu-server.conf").read_text() == "memory: 2048\n"
            assert os.stat(group / T2).st_ino == kept_ino
            # The open image of the pruned (and collected) snapshot fails cleanly: EIO.
            errors = []
            for offset in (4 * 1024 * 1024, 8 * 1024 * 1024):
                try:
                    os.pread(held.fileno(), 4096, offset)
                except OSError as exc:
                    errors.append(exc.errno)
            assert errno.EIO in errors
        _wait_for(lambda: not (group / T1).exists(), "the pruned snapshot to vanish")


@pytest.mark.slow
def test_stats_file_and_unmount_summary_of_a_foreground_mount(tmp_path, vectors):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*SNAPFS, "mount", "--foreground", str(vectors / "datastore"), str(mnt)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: is_mounted(mnt) or proc.poll() is not None, "the mount")
        assert proc.poll() is None, proc.stderr.read()
        assert ".snapfs" not in os.listdir(mnt)
        image = mnt / "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img"
        assert len(image.read_bytes()) == os.stat(image).st_size
        first = (mnt / ".snapfs" / "stats").read_text()
        assert "chunks read from the source: " in first and "memory cache size: " in first
        image.read_bytes()  # page cache: no new chunk requests, but the file must not be stale
        assert (mnt / ".snapfs" / "stats").read_text().startswith("source: ")
        done = snapfs("umount", mnt)
        assert done.returncode == 0, done.stderr
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            snapfs("umount", mnt)
    assert proc.returncode == 0
    assert "statistics of the mount" in err and "chunks read from the source: " in err
