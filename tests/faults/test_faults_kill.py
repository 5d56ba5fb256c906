"""`snapfs restore` killed with SIGKILL at random points, then run again.

After each kill no file in TARGET looks complete (the source's size and mtime) with other bytes,
and the tree restore's marker says it was interrupted; the same command (`--resume` for an image)
then finishes it, and the whole tree (bytes, modes, mtimes, owners, xattrs, hard links, symlinks,
FIFOs) or image is the source's. Kill points are observed by polling TARGET: a number of entries
made (tree) or of bytes written (image), drawn from a fixed seed.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
from support.mounting import SNAPFS, snapfs
from support.restore_listing import fs_listing

from snapfs.backup import BackupSource, backup

pytestmark = pytest.mark.slow

KILLS = 20  # kill points survived per kind; the figure in docs/guarantees.md
MAX_TRIES = 80  # a restore may finish before its kill point is seen: another point is drawn
SNAPSHOT = "host/h/2023-11-14T22:13:20Z"
MARKER = ".snapfs-restore-incomplete"


def make_tree(root: Path, rng: random.Random) -> None:
    """Nested directories with their own modes, owners, mtimes and xattrs; small and large files
    (one mostly zeros), hard link groups across directories, symlinks and a FIFO."""
    dirs = [root]
    for i in range(14):
        d = rng.choice(dirs) / f"dir{i}"
        d.mkdir()
        dirs.append(d)
    files = []
    for i in range(360):
        path = rng.choice(dirs) / f"f{i:03d}"
        path.write_bytes(rng.randbytes(rng.randint(0, 24_000)))
        files.append(path)
    for i in range(5):
        path = rng.choice(dirs) / f"big{i}"
        path.write_bytes(rng.randbytes(rng.randint(1 << 20, 3 << 20)))
        files.append(path)
    (root / "zeros").write_bytes(bytes(2 << 20) + b"tail" + bytes(1 << 20))
    for group in range(3):
        first = files[group * 7]
        for n in range(group + 1):
            os.link(first, rng.choice(dirs) / f"link{group}_{n}")
    os.symlink("f000", root / "rel_link")
    os.symlink("/nowhere/at/all", dirs[3] / "dangling")
    os.mkfifo(dirs[5] / "fifo")
    for path in files[::9]:
        os.setxattr(path, "user.note", rng.randbytes(12))
    os.setxattr(dirs[2], "user.dir", b"directory xattr")
    for path in files:
        os.chown(path, rng.randint(1000, 1003), rng.randint(1000, 1003))  # chown clears setuid
        os.chmod(path, rng.choice([0o644, 0o600, 0o755, 0o4755, 0o640]))
        os.utime(
            path,
            ns=(1, rng.randint(1_500_000_000, 1_700_000_000) * 10**9 + rng.randint(0, 10**9 - 1)),
        )
    for link in (root / "rel_link", dirs[3] / "dangling"):
        os.utime(link, ns=(1, 1_600_000_000_000_000_001), follow_symlinks=False)
    os.utime(dirs[5] / "fifo", ns=(1, 1_600_000_000_000_000_002))
    for d in reversed(dirs):  # deepest last made, first dated: children do not move it again
        os.chown(d, rng.randint(0, 1003), rng.randint(0, 1003))
        os.chmod(d, rng.choice([0o755, 0o750, 0o711, 0o555, 0o2775]))
        os.utime(d, ns=(1, rng.randint(1_500_000_000, 1_700_000_000) * 10**9 + 7))


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(datastore, source tree, source image): one snapshot with root.pxar and drive-scsi0.img."""
    base = tmp_path_factory.mktemp("kill")
    rng = random.Random(20261204)
    tree = base / "tree"
    tree.mkdir()
    make_tree(tree, rng)
    image = base / "disk.raw"
    with open(image, "wb") as f:  # random and all-zero 4 MiB chunks, and a short last one
        for i in range(10):
            f.write(bytes(4 << 20) if i in (2, 3, 7) else rng.randbytes(4 << 20))
        f.write(rng.randbytes(123_457))
    ds = base / "ds"
    result = backup(
        ds,
        [BackupSource("root.pxar", str(tree)), BackupSource("drive-scsi0.img", str(image))],
        backup_type="host",
        backup_id="h",
        backup_time=1_700_000_000,
    )
    assert not result.problems
    return ds, tree, image


def restore(ds: Path, archive: str, target: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*SNAPFS, "restore", str(ds), SNAPSHOT, archive, str(target), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its worker processes die with it, as in a crash
    )


def kill_when(proc: subprocess.Popen, progress, point: int) -> bool:
    """SIGKILL the restore once `progress()` reaches `point`; whether it was killed (False: it
    finished first)."""
    while proc.poll() is None and progress() < point:
        time.sleep(0.001)  # polling TARGET for progress, not waiting for an outcome
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60) == -signal.SIGKILL


def entries(target: Path) -> int:
    """Names in TARGET so far, the marker and partial names included."""
    if not target.exists():
        return 0
    count = 0
    for _, dirnames, filenames in os.walk(target):
        count += len(dirnames) + len(filenames)
    return count


def size_of(target: Path) -> int:
    return target.stat().st_size if target.exists() else 0


def assert_nothing_looks_complete_but_is_not(target: Path, source: Path) -> int:
    """No regular file in TARGET has its source's size and mtime with other bytes; how many do."""
    complete = 0
    for dirpath, _, filenames in os.walk(target):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(target)
            try:
                st, want = path.lstat(), (source / rel).lstat()
            except FileNotFoundError:
                continue  # not a source name (the marker, a partial name)
            if not path.is_file() or path.is_symlink():
                continue
            if (st.st_size, st.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
                assert path.read_bytes() == (source / rel).read_bytes(), rel
                complete += 1
    return complete


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tree_restore_survives_sigkill_at_random_points(datastore, tmp_path, workers):
    """In one process, and cut into units restored by two worker processes."""
    ds, tree, _ = datastore
    expected = fs_listing(tree)
    total = len(expected) - 1
    rng = random.Random(1)
    killed = tries = mid_entry = 0
    while killed < KILLS:
        tries += 1
        assert tries <= MAX_TRIES, f"only {killed} of {KILLS} restores were killed mid-way"
        target = tmp_path / f"t{tries}"
        point = rng.randint(1, total)
        proc = restore(ds, "root.pxar", target, "--workers", workers)
        if not kill_when(proc, partial(entries, target), point):
            continue
        killed += 1
        assert (target / MARKER).is_file(), "an interrupted restore must say so"
        assert_nothing_looks_complete_but_is_not(target, tree)
        mid_entry += any(
            name.startswith(".snapfs-partial-") for _, _, names in os.walk(target) for name in names
        )
        rerun = snapfs("restore", ds, SNAPSHOT, "root.pxar", target, "--workers", workers)
        assert rerun.returncode == 0, rerun.stderr
        assert "finished an interrupted restore" in rerun.stdout
        assert fs_listing(target) == expected, f"kill point {point}"
    print(f"tree restore: {killed} kills survived in {tries} runs, {mid_entry} mid-entry")
    assert mid_entry, "no kill landed while an entry was being written"


def test_image_restore_survives_sigkill_at_random_points(datastore, tmp_path):
    ds, _, image = datastore
    size = image.stat().st_size
    want = hashlib.sha256(image.read_bytes()).hexdigest()
    rng = random.Random(2)
    killed = tries = short = 0
    while killed < KILLS:
        tries += 1
        assert tries <= MAX_TRIES, f"only {killed} of {KILLS} restores were killed mid-way"
        target = tmp_path / f"i{tries}.raw"
        point = rng.randint(1, size - 1)
        proc = restore(ds, "drive-scsi0.img", target)
        if not kill_when(proc, partial(size_of, target), point):
            continue
        killed += 1
        data = target.read_bytes()
        assert len(data) < size or hashlib.sha256(data).hexdigest() == want
        if len(data) < size:
            short += 1
            again = snapfs("restore", ds, SNAPSHOT, "drive-scsi0.img", target)
            assert again.returncode != 0 and "--resume" in again.stderr, again.stderr
            assert f"holds {len(data)} of the image's {size} bytes" in again.stderr
        rerun = snapfs("restore", ds, SNAPSHOT, "drive-scsi0.img", target, "--resume")
        assert rerun.returncode == 0, rerun.stderr
        assert target.stat().st_size == size
        assert hashlib.sha256(target.read_bytes()).hexdigest() == want, f"kill point {point}"
    print(f"image restore: {killed} kills survived in {tries} runs, {short} left it short")
    assert short
