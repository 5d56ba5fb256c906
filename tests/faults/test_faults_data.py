"""Fault matrix, data rows: every byte-level corruption class is detected, scoped, never served.

Each test works on a copy of the golden datastore (or on one made from golden pxar bytes), damages
one object in one way, and checks what a user sees through `snapfs cat`, `snapfs restore` and
`snapfs verify`: a non-zero exit, one line naming the damaged object, and never a wrong byte (what
was written before the failure is a prefix of the true content; restored files are either exactly
right or listed as failed). The mount row (EIO only for the affected range) is at the end.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from support.stores import pxar_store
from support.vectors import IMAGE_SHA256

from snapfs.cli import main
from snapfs.format.index import parse_index
from snapfs.format.source import BytesSource
from snapfs.pxar.accessor import Accessor

IMG = "vm/100/2024-06-01T10:00:00Z"
IMG_ENC = "vm/100/2024-06-01T14:00:00Z"
V1 = "host/testhost/2024-06-01T11:00:00Z"
CONF_SHA256 = "f761bfd3d0dabde4013a104a322bc6df7444cd0dbd63166d5b7772c275139ed1"
PXAR_SHA256 = "bfae751503a223401d7fe15865b4e40297535567f5b7d3f0af921bbd04eddc67"
CHUNK_SIZE = 4 * 1024 * 1024


# --- helpers -------------------------------------------------------------------------------------


def damage(path: Path, how: str, at: int | None = None) -> None:
    """Byte-level corruption classes that need nothing but the file itself (flip: at `at`,
    default the middle; negative counts from the end)."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2 if at is None else at] ^= 0x40
    elif how == "truncate":
        del data[len(data) // 2 :]
    elif how == "zero":
        data = bytearray(len(data))
    else:
        raise AssertionError(how)
    path.write_bytes(bytes(data))


def chunk_file(store: Path, digest: bytes) -> Path:
    return store / ".chunks" / digest.hex()[:4] / digest.hex()


def index_of(store: Path, snapshot: str, filename: str):
    return parse_index((store / snapshot / filename).read_bytes(), name=filename)


class Cli:
    """`snapfs` in-process: exit code, stdout bytes, stderr text."""

    def __init__(self, capsysbinary) -> None:
        self.cap = capsysbinary

    def __call__(self, *args) -> tuple[int, bytes, str]:
        code = main([str(a) for a in args])
        out, err = self.cap.readouterr()
        return code, out, err.decode()


@pytest.fixture
def cli(capsysbinary) -> Cli:
    return Cli(capsysbinary)


@pytest.fixture
def store(vectors, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(vectors / "datastore", copy)
    return copy


@pytest.fixture
def key_args(vectors, tmp_path, monkeypatch) -> list[str]:
    monkeypatch.delenv("SNAPFS_KEY_PASSWORD", raising=False)
    monkeypatch.delenv("PBS_ENCRYPTION_PASSWORD", raising=False)
    pw = tmp_path / "pw"
    pw.write_text("pbs-vector-password\n")
    return ["--keyfile", vectors / "keys" / "key-pbkdf2.json", "--password-file", pw]


@pytest.fixture(scope="module")
def golden_image(vectors) -> bytes:
    from snapfs.store.backend import LocalBackend
    from snapfs.store.datastore import Datastore, parse_snapshot
    from snapfs.views.archives import SnapshotReader

    reader = SnapshotReader(Datastore(LocalBackend(vectors / "datastore")), parse_snapshot(IMG))
    stream = reader.stream("drive-scsi0.img")
    data = stream.read_at(0, stream.size)
    assert hashlib.sha256(data).hexdigest() == IMAGE_SHA256
    return data


def one_line_error(err: str, *names: str) -> None:
    """The CLI's failure contract: one `snapfs: error:` line, naming the damaged object."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapfs: error: "), err
    assert "Traceback" not in err
    assert any(n in lines[0] for n in names), (names, err)


def assert_prefix(out: bytes, truth: bytes) -> None:
    """Whatever was delivered before a failure is the true content, byte for byte."""
    assert len(out) < len(truth)
    assert out == truth[: len(out)]


def verify_json(cli: Cli, store: Path, snapshot: str, *extra) -> dict:
    code, out, _ = cli("verify", store, snapshot, "--json", *extra)
    assert code == 1
    report = json.loads(out)
    (result,) = [s for s in report["snapshots"] if s["snapshot"] == snapshot]
    assert result["status"] == "failed"
    return result


# --- chunks ----------------------------------------------------------------------------------------

CHUNK_FAULTS = ["flip", "truncate", "zero", "swap", "foreign", "missing"]


def break_chunk(store: Path, snapshot: str, index_name: str, i: int, how: str) -> bytes:
    """Damage chunk i of an index; returns its digest. `swap` exchanges it with chunk 0's file,
    `foreign` overwrites it with a chunk of another snapshot (the v1 pxar's first chunk)."""
    index = index_of(store, snapshot, index_name)
    digest = index.digest(i)
    path = chunk_file(store, digest)
    if how in ("flip", "truncate", "zero"):
        damage(path, how)
    elif how == "swap":
        other = chunk_file(store, index.digest(0))
        a, b = path.read_bytes(), other.read_bytes()
        path.write_bytes(b)
        other.write_bytes(a)
    elif how == "foreign":
        foreign = index_of(store, V1, "root.pxar.didx").digest(0)
        path.write_bytes(chunk_file(store, foreign).read_bytes())
    elif how == "missing":
        path.unlink()
    else:
        raise AssertionError(how)
    return digest


@pytest.mark.parametrize("how", CHUNK_FAULTS)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_damaged_image_chunk_is_never_served(
    cli, store, key_args, golden_image, tmp_path, how, encrypted
):
    snapshot = IMG_ENC if encrypted else IMG
    keys = key_args if encrypted else []
    digest = break_chunk(store, snapshot, "drive-scsi0.img.fidx", 3, how)

    code, out, err = cli("cat", store, snapshot, "drive-scsi0.img", *keys)
    assert code == 1
    one_line_error(err, digest.hex())
    assert_prefix(out, golden_image)

    result = verify_json(cli, store, snapshot, *keys)
    bad = {b["digest"] for b in result["bad_chunks"]}
    assert digest.hex() in bad

    target = tmp_path / "disk.raw"
    code, out, err = cli("restore", store, snapshot, "drive-scsi0.img", target, "--json", *keys)
    assert code == 1
    report = json.loads(out)
    assert not report["ok"] and report["failures"]
    assert any(digest.hex() in f["message"] for f in report["failures"]), report["failures"]
    # Every 4 MiB range of the restored image is either the true content or reported failed.
    restored = target.read_bytes() if target.exists() else b""
    failed = " ".join(f["message"] for f in report["failures"])
    index = index_of(store, snapshot, "drive-scsi0.img.fidx")
    for i in range(index.chunk_count):
        start, end = index.chunk_range(i)
        piece = restored[start:end]
        if piece != golden_image[start:end]:
            assert index.digest(i).hex() in failed or piece == b"" or not any(piece), i


@pytest.mark.parametrize("how", ["flip", "missing"])
def test_damaged_pxar_chunk_fails_only_its_files(cli, store, vectors, tmp_path, how):
    """A bad chunk inside big_random.bin fails that file; every other file restores exactly."""
    index = index_of(store, V1, "root.pxar.didx")
    pxar = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    entry = Accessor(BytesSource(pxar), name="v1").lookup("/big_random.bin")
    i = index.chunk_at(entry.content_offset + entry.size // 2)
    digest = break_chunk(store, V1, "root.pxar.didx", i, how)

    good = tmp_path / "good"
    assert cli("restore", vectors / "datastore", V1, "root.pxar", good, "--json")[0] == 0
    target = tmp_path / "restored"
    code, out, err = cli("restore", store, V1, "root.pxar", target, "--json")
    assert code == 1
    report = json.loads(out)
    failed_paths = [f for f in report["failures"] if "big_random.bin" in json.dumps(f)]
    assert failed_paths and all(
        "big_random.bin" in json.dumps(f) or digest.hex() in f["message"]
        for f in report["failures"]
    )
    assert any(digest.hex() in f["message"] for f in report["failures"])
    for path in good.rglob("*"):
        rel = path.relative_to(good)
        if path.is_file() and not path.is_symlink() and path.name != "big_random.bin":
            assert (target / rel).read_bytes() == path.read_bytes(), rel
    damaged = target / "big_random.bin"
    if damaged.exists():  # a partial file may stay, but never with wrong bytes in it
        assert_prefix(damaged.read_bytes(), (good / "big_random.bin").read_bytes())

    code, out, err = cli("cat", store, V1, "root.pxar/dir_a/nested/notes.txt")
    assert code == 0 and out == (good / "dir_a/nested/notes.txt").read_bytes()


# --- indexes, blobs, manifests, catalogs -----------------------------------------------------------

BYTE_FAULTS = ["flip", "truncate", "zero"]


@pytest.mark.parametrize("how", BYTE_FAULTS)
@pytest.mark.parametrize(
    "snapshot,filename,archive",
    [(IMG, "drive-scsi0.img.fidx", "drive-scsi0.img"), (V1, "root.pxar.didx", "root.pxar/")],
    ids=["fidx", "didx"],
)
def test_damaged_index_is_detected(cli, store, snapshot, filename, archive, how):
    # A flip in the header's zero padding changes nothing a reader uses (upstream ignores it
    # too); flip a byte of the last chunk digest, which would send a reader to another chunk.
    damage(store / snapshot / filename, how, at=-20)
    code, out, err = cli("cat", store, snapshot, archive)
    assert code == 1 and out == b""
    one_line_error(err, filename)
    result = verify_json(cli, store, snapshot)
    assert any(filename in e for e in result["errors"]), result


@pytest.mark.parametrize("how", BYTE_FAULTS)
def test_damaged_blob_is_detected(cli, store, how):
    damage(store / IMG / "qemu-server.conf.blob", how)
    code, out, err = cli("cat", store, IMG, "qemu-server.conf")
    assert code == 1 and out == b""
    one_line_error(err, "qemu-server.conf.blob")
    result = verify_json(cli, store, IMG)
    assert any("qemu-server.conf.blob" in e for e in result["errors"]), result
    # The image of the same snapshot is untouched and still served.
    code, out, _ = cli("cat", store, IMG, "drive-scsi0.img")
    assert code == 0 and hashlib.sha256(out).hexdigest() == IMAGE_SHA256


@pytest.mark.parametrize("how", BYTE_FAULTS)
def test_damaged_manifest_is_detected_and_listed(cli, store, how):
    damage(store / IMG / "index.json.blob", how)
    code, out, err = cli("cat", store, IMG, "qemu-server.conf")
    assert code == 1 and out == b""
    one_line_error(err, "index.json.blob")
    code, out, _ = cli("snapshots", store, "--json")
    assert code == 0
    states = {r["snapshot"]: r["state"] for r in json.loads(out)}
    assert states[IMG] == "unreadable" and states[IMG_ENC] == "complete"
    result = verify_json(cli, store, IMG)
    assert any("index.json.blob" in e for e in result["errors"]), result


def test_replayed_older_manifest_is_refused(cli, store):
    """The 10:00 snapshot's files copied over the 14:00 one: every file is self-consistent, so
    only the manifest's own type/id/time can tell; serving it would deliver another snapshot."""
    newer = store / IMG_ENC
    shutil.rmtree(newer)
    shutil.copytree(store / IMG, newer)
    code, out, err = cli("cat", store, IMG_ENC, "qemu-server.conf")
    assert code == 1 and out == b""
    one_line_error(err, "index.json.blob")
    assert "2024-06-01T10:00:00Z" in err or "1717236000" in err
    verify_json(cli, store, IMG_ENC)
    code, _, _ = cli("cat", store, IMG, "qemu-server.conf")
    assert code == 0


def test_signed_manifest_replayed_from_other_snapshot_is_refused(cli, store, key_args):
    """Replaying only the manifest of the other signed snapshot: refused, never decoded."""
    enc_v1 = "host/testhost/2024-06-01T12:00:00Z"
    signed_ct = "ct/200/2024-06-01T15:00:00Z"
    shutil.copy(store / signed_ct / "index.json.blob", store / enc_v1 / "index.json.blob")
    code, out, err = cli("cat", store, enc_v1, "root.pxar/dir_a/nested/notes.txt", *key_args)
    assert code == 1 and out == b""
    one_line_error(err, "index.json.blob", "root.pxar.didx")


@pytest.mark.parametrize("how", BYTE_FAULTS + ["missing"])
def test_damaged_catalog_fails_find_only(cli, store, how):
    index = index_of(store, V1, "catalog.pcat1.didx")
    digest = index.digest(0)
    if how == "missing":
        chunk_file(store, digest).unlink()
    else:
        damage(chunk_file(store, digest), how)
    code, out, err = cli("find", store, V1, "root.pxar", "*.txt")
    assert code == 1 and out == b""
    one_line_error(err, digest.hex())
    # Listing and reading go through the archive itself, which is intact.
    code, out, _ = cli("ls", store, V1, "root.pxar", "/dir_a/nested")
    assert code == 0 and b"notes.txt" in out
    code, out, _ = cli("cat", store, V1, "root.pxar/dir_a/nested/notes.txt")
    assert code == 0 and out


@pytest.mark.parametrize("how", BYTE_FAULTS + ["unreadable-json"])
def test_damaged_key_file_is_refused(cli, store, vectors, tmp_path, key_args, how):
    key = tmp_path / "key.json"
    shutil.copy(vectors / "keys" / "key-pbkdf2.json", key)
    if how == "unreadable-json":
        key.write_bytes(key.read_bytes().replace(b'"data"', b'"dat\xff"'))
    else:
        damage(key, how)
    args = ["--keyfile", key, *key_args[2:]]
    code, out, err = cli("cat", store, IMG_ENC, "qemu-server.conf", *args)
    assert code == 1 and out == b""
    one_line_error(err, str(key))
    assert "pbs-vector-password" not in err


def test_wrong_key_is_refused_before_any_chunk(cli, store, tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPFS_KEY_PASSWORD", "another")
    other = tmp_path / "other.key"
    assert cli("key", "create", other, "--kdf", "pbkdf2")[0] == 0
    code, out, err = cli("cat", store, IMG_ENC, "drive-scsi0.img", "--keyfile", other)
    assert code == 1 and out == b""
    one_line_error(err, "a5:2d:a8:e7")
    assert "another" not in err


# --- pxar metadata -----------------------------------------------------------------------------------


def damage_pxar_entry(pxar: bytes, name: bytes, how: str) -> bytes:
    """Damage the metadata of the entry called `name`: its FILENAME item header and what follows."""
    data = bytearray(pxar)
    at = data.index(name + b"\0") - 16  # the FILENAME item's header
    if how == "flip":
        data[at] ^= 0x01
    elif how == "zero":
        data[at : at + 64] = bytes(64)
    elif how == "truncate":
        del data[at + 8 :]
    return bytes(data)


@pytest.mark.parametrize("how", BYTE_FAULTS)
def test_damaged_pxar_metadata_is_detected(cli, vectors, tmp_path, how):
    pxar = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    assert hashlib.sha256(pxar).hexdigest() == PXAR_SHA256
    store = pxar_store(tmp_path / "store", damage_pxar_entry(pxar, b"xattr_file", how))
    snap = "host/bad/2024-06-01T11:00:00Z"

    code, out, err = cli("ls", store, snap, "root.pxar", "/")
    assert code == 1
    one_line_error(err, "root.pxar")
    code, out, err = cli("cat", store, snap, "root.pxar/xattr_file")
    assert code == 1 and out == b""
    one_line_error(err, "root.pxar")

    target = tmp_path / "restored"
    code, out, err = cli("restore", store, snap, "root.pxar", target, "--json")
    assert code == 1
    if out:  # the damage was met on the way: reported, the rest restored
        report = json.loads(out)
        assert report["failures"] and not report["ok"]
    else:  # the archive's root itself is unreadable: one error, nothing restored
        one_line_error(err, "root.pxar")
    # Whatever was restored before the damage is exact.
    good = tmp_path / "good"
    assert cli("restore", vectors / "datastore", V1, "root.pxar", good, "--json")[0] == 0
    for path in target.rglob("*") if target.exists() else ():
        if path.is_file() and not path.is_symlink():
            assert path.read_bytes() == (good / path.relative_to(target)).read_bytes(), path


# --- through a mount -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_mount_returns_eio_only_for_the_damaged_range(store, golden_image, tmp_path):
    from support.mounting import mounted

    index = index_of(store, IMG, "drive-scsi0.img.fidx")
    damage(chunk_file(store, index.digest(3)), "flip")
    v1 = index_of(store, V1, "root.pxar.didx")
    v1_digests = {v1.digest(i) for i in range(v1.chunk_count)}
    with mounted(store, tmp_path / "mnt") as mnt:
        image = mnt / "vm/100/2024-06-01T10:00:00Z/drive-scsi0.img"
        fd = os.open(image, os.O_RDONLY)
        try:
            assert os.pread(fd, 65536, 0) == golden_image[:65536]
            assert os.pread(fd, 4096, CHUNK_SIZE * 2) == golden_image[CHUNK_SIZE * 2 :][:4096]
            for _ in range(2):  # and again: a failure is not cached as content
                with pytest.raises(OSError) as exc:
                    os.pread(fd, 4096, CHUNK_SIZE * 3 + 100)
                assert exc.value.errno == errno.EIO
            # The good chunks before it still read after the failure.
            assert os.pread(fd, 4096, CHUNK_SIZE - 4096) == golden_image[CHUNK_SIZE - 4096 :][:4096]
        finally:
            os.close(fd)
        # Other snapshots, sharing no chunk with the damaged one, are untouched.
        assert index.digest(3) not in v1_digests
        notes = mnt / "host/testhost/2024-06-01T11:00:00Z/root.pxar/dir_a/nested/notes.txt"
        assert notes.read_bytes()
