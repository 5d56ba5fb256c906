"""The `snapfs` command as users run it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

SNAPFS = [sys.executable, "-m", "snapfs"]


def run(*args, env=None, check_ok=True):
    proc = subprocess.run([*SNAPFS, *map(str, args)], capture_output=True, env=env, timeout=120)
    if check_ok:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def fail(*args, env=None):
    proc = run(*args, env=env, check_ok=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert err.startswith("snapfs: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


@pytest.fixture(scope="module")
def report(vectors):
    return json.loads((vectors / "report.json").read_text())


@pytest.fixture
def key_env(vectors):
    return {**os.environ, "SNAPFS_KEY_PASSWORD": "pbs-vector-password"}


def test_snapshots_json_lists_everything(vectors, report):
    out = json.loads(run("snapshots", vectors / "datastore", "--json").stdout)
    names = {("ns/" + r["ns"] + "/" if r["ns"] else "") + r["snapshot"] for r in out}
    assert names == set(report["snapshots"])
    by_name = {r["snapshot"]: r for r in out}
    enc = by_name["vm/100/2024-06-01T14:00:00Z"]
    assert enc["encrypted"] and enc["state"] == "complete"
    assert {f["filename"]: f["size"] for f in enc["files"]} == {
        "qemu-server.conf.blob": 144,
        "drive-scsi0.img.fidx": 13635072,
    }


def test_snapshots_text_and_namespace_filter(vectors):
    text = run("snapshots", vectors / "datastore").stdout.decode()
    assert "testns:host/splithost/2024-06-01T13:00:00Z" in text
    only = json.loads(run("snapshots", vectors / "datastore", "--ns", "testns", "--json").stdout)
    assert [r["snapshot"] for r in only] == ["host/splithost/2024-06-01T13:00:00Z"]


@pytest.mark.parametrize("snapshot", ["vm/100/2024-06-01T10:00:00Z", "vm/100/2024-06-01T14:00:00Z"])
def test_cat_image_blob_and_manifest(vectors, report, key_env, snapshot):
    key = ["--keyfile", vectors / "keys/key-scrypt.json"] if "14:00" in snapshot else []
    image = run("cat", vectors / "datastore", snapshot, "drive-scsi0.img", *key, env=key_env).stdout
    assert hashlib.sha256(image).hexdigest() == report["snapshots"][snapshot]["image_sha256"]
    conf = run(
        "cat", vectors / "datastore", snapshot, "qemu-server.conf.blob", *key, env=key_env
    ).stdout
    assert (
        hashlib.sha256(conf).hexdigest()
        == "f761bfd3d0dabde4013a104a322bc6df7444cd0dbd63166d5b7772c275139ed1"
    )
    manifest = run("cat", vectors / "datastore", snapshot, "index.json").stdout
    assert manifest == report["snapshots"][snapshot]["manifest"].encode()


def test_cat_pxar_stream_as_a_whole(vectors, report):
    out = run(
        "cat", vectors / "datastore", "host/testhost/2024-06-01T11:00:00Z", "root.pxar.didx"
    ).stdout
    assert hashlib.sha256(out).hexdigest() == report["pxar_v1_stream_sha256"]


def test_errors_are_one_line(vectors, tmp_path, key_env):
    ds = vectors / "datastore"
    assert "not a directory" in fail("snapshots", tmp_path / "nope")
    assert "not a PBS datastore" in fail("snapshots", tmp_path)
    assert "unknown backup type" in fail("cat", ds, "lxc/100/2024-06-01T10:00:00Z", "x")
    assert "invalid snapshot time" in fail("cat", ds, "vm/100/yesterday", "x")
    assert "not found" in fail("cat", ds, "vm/100/2030-01-01T00:00:00Z", "drive-scsi0.img")
    assert "no archive" in fail("cat", ds, "vm/100/2024-06-01T10:00:00Z", "drive-virtio9.img")
    assert "--keyfile" in fail("cat", ds, "vm/100/2024-06-01T14:00:00Z", "drive-scsi0.img")
    bad = {**key_env, "SNAPFS_KEY_PASSWORD": "wrong"}
    err = fail(
        "cat",
        ds,
        "vm/100/2024-06-01T14:00:00Z",
        "drive-scsi0.img",
        "--keyfile",
        vectors / "keys/key-pbkdf2.json",
        env=bad,
    )
    assert "password" in err and "wrong" not in err.replace("wrong password", "")
    assert "usage" in fail("frobnicate").lower() or "invalid choice" in fail("frobnicate")


def test_backup_image_round_trip(tmp_path):
    image = tmp_path / "disk.raw"
    data = os.urandom(5 * 1024 * 1024 + 123) + bytes(4 * 1024 * 1024) + b"tail" * 1000
    image.write_bytes(data)
    conf = tmp_path / "100.conf"
    conf.write_text("memory: 512\n")
    ds = tmp_path / "ds"
    run(
        "backup",
        ds,
        f"drive-scsi0.img:{image}",
        f"qemu-server.conf:{conf}",
        "--time",
        "2024-01-02T03:04:05Z",
    )
    out = run("cat", ds, "vm/100/2024-01-02T03:04:05Z", "drive-scsi0.img").stdout
    assert out == data
    assert (
        run("cat", ds, "vm/100/2024-01-02T03:04:05Z", "qemu-server.conf").stdout == b"memory: 512\n"
    )
