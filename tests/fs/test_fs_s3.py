"""The golden datastore in a real S3 server, mounted (from SeaweedFS and from moto) and mapped
(from SeaweedFS) through the kernel.

snapfs runs with the read-only identity only, given through the environment: the secret must
never appear on a command line, neither ours nor that of the mount process.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from support.golden_listing import PXAR_SNAPSHOTS, check_archive, parse_listing
from support.mounting import key_options, mount_pids, mounted, sha256_file, snapfs
from support.s3server import READER_SECRET

pytestmark = pytest.mark.slow


def test_golden_datastore_mounted_from_s3(any_s3server, any_s3_vectors, vectors, tmp_path):
    report = json.loads((vectors / "report.json").read_text())
    env = any_s3server.reader_env()
    options = [
        "--endpoint-url",
        any_s3server.endpoint,
        "--cache-dir",
        str(tmp_path / "cache"),
        *key_options(vectors, tmp_path),
        "--log-file",
        str(tmp_path / "log"),
    ]
    mnt = tmp_path / "mnt"
    with mounted(any_s3_vectors, mnt, *options, env=env):
        (pid,) = mount_pids(mnt)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert READER_SECRET.encode() not in cmdline and b"--endpoint-url" in cmdline

        images = 0
        for snapshot, info in report["snapshots"].items():
            if "image_sha256" in info:
                assert sha256_file(mnt / snapshot / "drive-scsi0.img") == info["image_sha256"]
                images += 1
        assert images >= 2  # the plain and the encrypted image
        expected = parse_listing(vectors / "pxar" / "expected-listing.txt")
        check_archive(mnt / PXAR_SNAPSHOTS[0] / "root.pxar", expected)  # v1
        check_archive(mnt / PXAR_SNAPSHOTS[2] / "root.pxar", expected)  # split, in a namespace

        stats = (mnt / ".snapfs" / "stats").read_text()
        gets = int(re.search(r"requests: GET (\d+), LIST (\d+)", stats).group(1))
        assert gets > 0, stats
        assert f"source: {any_s3_vectors}" in stats and "disk cache: " in stats
        ratio = re.search(r"memory cache: \d+ hits, \d+ misses \(([0-9.]+)%\)", stats)
        assert ratio is not None, stats  # the mount handed its cache to the source
    assert mount_pids(mnt) == []
    assert READER_SECRET not in (tmp_path / "log").read_text()


def test_map_over_s3_passes_the_source_options(s3server, s3_vectors, vectors, tmp_path):
    report = json.loads((vectors / "report.json").read_text())
    snapshot = "vm/100/2024-06-01T10:00:00Z"
    env = {**s3server.reader_env(), "SNAPFS_RUN_DIR": str(tmp_path / "run")}
    r = snapfs(
        "map",
        s3_vectors,
        snapshot,
        "drive-scsi0.img",
        "--endpoint-url",
        s3server.endpoint,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    device = r.stdout.strip()
    try:
        (state,) = (tmp_path / "run").glob("map-*/state.json")
        pid = json.loads(state.read_text())["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"--endpoint-url" in cmdline and READER_SECRET.encode() not in cmdline
        with open(device, "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == report["snapshots"][snapshot]["image_sha256"]
    finally:
        done = snapfs("unmap", device, env=env)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "run").glob("map-*")) == []
    losetup = subprocess.run(["losetup", "-l", "-n"], capture_output=True, text=True).stdout
    assert str(tmp_path / "run") not in losetup
