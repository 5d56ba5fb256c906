"""Fault matrix, security rows: who may see a mount, archived modes, restore confinement, NBD on
loopback. Secrets kept out of output, logs, process titles and command lines: tests/cli/test_secrets.py.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.mounting import mounted, snapfs
from support.stores import pxar_store

V1 = "host/testhost/2024-06-01T11:00:00Z"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture
def public_dir() -> Path:
    """A folder every user can traverse (pytest's own tmp folders are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="snapfs-faults-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *map(str, argv)], capture_output=True, text=True, timeout=60)


# --- mounts: who sees what ---------------------------------------------------------------------------


@pytest.mark.slow
def test_other_users_are_shut_out_unless_allow_other(vectors, public_dir):
    assert as_nobody("ls", public_dir).returncode == 0
    with mounted(vectors / "datastore", public_dir / "mnt") as mnt:
        proc = as_nobody("ls", mnt)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr
        assert "allow_other" not in Path("/proc/self/mountinfo").read_text().split(str(mnt))[1]


@pytest.mark.slow
def test_archived_modes_are_enforced_with_allow_other(vectors, public_dir):
    """big_random.bin is 0600 uid 1000 in the archive: nobody gets EACCES, a 0644 file reads."""
    with mounted(vectors / "datastore", public_dir / "mnt", "--allow-other") as mnt:
        root = mnt / V1 / "root.pxar"
        assert (root / "big_random.bin").stat().st_mode & 0o777 == 0o600
        proc = as_nobody("cat", root / "big_random.bin")
        assert proc.returncode != 0 and "Permission denied" in proc.stderr
        proc = as_nobody("cat", root / "dir_a/nested/notes.txt")
        assert proc.returncode == 0 and proc.stdout == (root / "dir_a/nested/notes.txt").read_text()
        # Read-only for everyone, root included.
        with pytest.raises(OSError) as exc:
            (root / "empty_file").write_bytes(b"x")
        assert exc.value.errno in (errno.EROFS, errno.EACCES)


# --- restore confinement ----------------------------------------------------------------------------


def hostile_archive(pxar: bytes) -> bytes:
    """Names no honest archive has: `../ESCAP` (was acl_file, same length) and a hard link whose
    target climbs out (`../../../x`, was hardlink_a)."""
    data = bytearray(pxar)
    at = data.index(b"acl_file\0")
    data[at : at + 8] = b"../ESCAP"
    at = data.rindex(b"hardlink_a\0")  # the hardlink_b item's target, after hardlink_a's name
    data[at : at + 10] = b"../../../x"
    return bytes(data)


def test_restore_never_writes_outside_its_target(vectors, tmp_path):
    pxar = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    store = pxar_store(tmp_path / "store", hostile_archive(pxar))
    jail = tmp_path / "a" / "b"
    jail.mkdir(parents=True)
    target = jail / "target"
    before = {p for p in tmp_path.rglob("*") if "store" not in p.parts}
    proc = snapfs("restore", store, "host/bad/2024-06-01T11:00:00Z", "root.pxar", target, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    outside = (
        {p for p in tmp_path.rglob("*") if "store" not in p.parts and target not in p.parents}
        - before
        - {target}
    )
    assert outside == set()
    assert not Path("/x").exists() and not (tmp_path / "x").exists()
    if proc.stdout:
        report = json.loads(proc.stdout)
        assert report["failures"]


# --- network ------------------------------------------------------------------------------------------


def test_nbd_listens_on_loopback_by_default(tmp_path):
    """In a private network namespace (no clash on the default port): the default listener."""
    code = (
        "import subprocess; subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
        "from snapfs.nbd.listen import open_listener\n"
        "s = open_listener(None); print(s.getsockname()[0], s.getsockname()[1])\n"
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    host, port = proc.stdout.split()
    assert host == "127.0.0.1" and port == "10809"
