"""snapfs restore of images and blobs: bytes, sparseness, resume, refusals."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.vectors import IMAGE_SHA256

from snapfs.cli import main
from snapfs.errors import UsageError
from snapfs.format.crypt import CryptConfig
from snapfs.restore import image
from snapfs.restore.holes import data_runs
from snapfs.restore.image import SPARSE_BLOCK, ImageTarget, WritebackStarter, restore_image
from snapfs.store.backend import LocalBackend
from snapfs.store.chunks import ChunkReader
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.store.stream import IndexStream

CONF_SHA256 = "f761bfd3d0dabde4013a104a322bc6df7444cd0dbd63166d5b7772c275139ed1"
KEY = bytes.fromhex("6bed763d839f13dd6855e5a9f69a15628c34100da6a5030d1e0a6a1935375e5a")
PLAIN, ENCRYPTED = "vm/100/2024-06-01T10:00:00Z", "vm/100/2024-06-01T14:00:00Z"
CHUNK3 = "803f1e37ee3026dc63265e3f20b110b5d68f043603cc4fc4d4785400503de524"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stream(store: Path, snapshot: str, crypt: CryptConfig | None = None) -> IndexStream:
    ds = Datastore(LocalBackend(store))
    snap = parse_snapshot(snapshot)
    file = ds.resolve_archive(snap, "drive-scsi0.img")
    return IndexStream(
        ds.open_index(snap, file), ChunkReader(ds.backend, crypt), f"{snap}/{file.filename}"
    )


@pytest.mark.parametrize("encrypted", [False, True])
def test_image_restore_is_exact_and_sparse(vectors, tmp_path, encrypted):
    target = tmp_path / "disk.raw"
    stream = _stream(
        vectors / "datastore",
        ENCRYPTED if encrypted else PLAIN,
        CryptConfig(KEY) if encrypted else None,
    )
    report = restore_image(stream, ImageTarget(str(target)))
    assert report.ok
    assert _sha(target) == IMAGE_SHA256
    # Chunks 1 and 2 are zero (8 MiB), and so are some 64 KiB blocks of the others: all holes.
    content = target.read_bytes()
    zero_blocks = sum(
        content[i : i + SPARSE_BLOCK] == bytes(len(content[i : i + SPARSE_BLOCK]))
        for i in range(0, len(content), SPARSE_BLOCK)
    )
    assert report.bytes_sparse >= 8 * 1024 * 1024
    assert report.bytes_sparse == zero_blocks * SPARSE_BLOCK
    assert report.bytes_written == len(content) - report.bytes_sparse
    assert os.stat(target).st_blocks * 512 <= report.bytes_written + 64 * 1024


def test_image_restore_starts_writeback_as_it_goes(vectors, tmp_path, monkeypatch):
    """The written bytes are handed to the kernel's writeback in order, in ranges of at least
    WRITEBACK_BYTES, before the closing fsync; the image is exact."""
    asked: list[tuple[int, int]] = []
    fadvise = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        asked.append((offset, offset + length))
        fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    monkeypatch.setattr(image, "WRITEBACK_BYTES", 4 * 1024 * 1024)
    target = tmp_path / "disk.raw"
    stream = _stream(vectors / "datastore", PLAIN)
    assert restore_image(stream, ImageTarget(str(target))).ok
    assert _sha(target) == IMAGE_SHA256
    assert asked and asked[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(asked))  # each where the last ended
    assert all(stop - start >= 4 * 1024 * 1024 for start, stop in asked)
    assert asked[-1][1] > stream.size - 4 * 1024 * 1024  # nothing larger than one range left


def test_writeback_starts_again_where_a_resume_skipped_chunks(monkeypatch):
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, offset, length, advice: asked.append((offset, length))
    )
    starter = WritebackStarter(-1)
    mib = 1024 * 1024
    starter.written(0, 4 * mib)  # less than WRITEBACK_BYTES: held back
    starter.written(12 * mib, 16 * mib)  # chunks 1 and 2 were already on disk
    starter.written(16 * mib, 20 * mib)
    assert asked == [(12 * mib, 8 * mib)]


@pytest.mark.parametrize(
    "layout",
    [
        [],  # nothing at all
        [0] * 4,  # all zero: nothing to write
        [1] * 4,  # no zero block: one run
        [1, 0, 0, 1, 1, 0],  # runs joined across adjacent blocks, holes between
        [0, 1, 0],
    ],
)
@pytest.mark.parametrize("as_view", [False, True])  # a tree restore hands it cached chunks
def test_data_runs_leave_out_exactly_the_zero_blocks(layout, as_view):
    block = 16
    data = b"".join(bytes(block) if b == 0 else b"\x00" * 7 + b"x" + b"\x00" * 8 for b in layout)
    data += b"\x01" if layout and layout[-1] else b""  # a short last block
    runs = data_runs(memoryview(data) if as_view else data, block)
    kept = bytearray(len(data))
    for start, stop in runs:
        kept[start:stop] = data[start:stop]
        assert start % block == 0
    assert bytes(kept) == data  # every non-zero byte is written
    for (_, stop), (start, _) in zip(runs, runs[1:], strict=False):
        assert stop < start  # joined when adjacent
    written = sum(stop - start for start, stop in runs)
    assert written == len(data) - block * sum(
        1 for i in range(0, len(data), block) if not any(data[i : i + block])
    )


def test_image_restore_cli_and_json(vectors, tmp_path, capsys):
    target = tmp_path / "disk.raw"
    rc = main(
        ["restore", str(vectors / "datastore"), PLAIN, "drive-scsi0.img", str(target), "--json"]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["bytes_total"] == 13635072
    assert _sha(target) == IMAGE_SHA256
    # an existing target is refused without --resume / --overwrite always
    assert main(["restore", str(vectors / "datastore"), PLAIN, "drive-scsi0.img", str(target)]) == 2
    assert (
        main(
            [
                "restore",
                str(vectors / "datastore"),
                PLAIN,
                "drive-scsi0.img",
                str(target),
                "--overwrite",
                "always",
            ]
        )
        == 0
    )
    assert _sha(target) == IMAGE_SHA256


def test_resume_after_interrupted_restore(vectors, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    chunk = store / ".chunks" / CHUNK3[:4] / CHUNK3
    saved = chunk.read_bytes()
    chunk.unlink()
    target = tmp_path / "disk.raw"
    args = ["restore", str(store), PLAIN, "drive-scsi0.img", str(target), "--json"]
    assert main(args) == 1
    failed = json.loads(capsys.readouterr().out)
    assert [f["digest"] for f in failed["failures"]] == [CHUNK3]
    assert failed["failures"][0]["start"] == 3 * 4 * 1024 * 1024
    assert _sha(target) != IMAGE_SHA256

    chunk.write_bytes(saved)
    # damage a byte of what the first run wrote: resume must find and rewrite that chunk
    with open(target, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    stream = _stream(store, PLAIN)
    report = restore_image(stream, ImageTarget(str(target)), resume=True)
    assert report.ok
    assert _sha(target) == IMAGE_SHA256
    assert report.bytes_reused == 2 * 4 * 1024 * 1024  # the zero chunks were verified in place
    assert report.bytes_written == 4 * 1024 * 1024 + 1052160
    assert stream.chunks.fetches == 2  # chunk 0 (damaged) and chunk 3 (missing); nothing else


def test_resume_of_a_complete_restore_fetches_nothing(vectors, tmp_path):
    target = tmp_path / "disk.raw"
    crypt = CryptConfig(KEY)
    assert restore_image(
        _stream(vectors / "datastore", ENCRYPTED, crypt), ImageTarget(str(target))
    ).ok
    stream = _stream(vectors / "datastore", ENCRYPTED, crypt)
    report = restore_image(stream, ImageTarget(str(target)), resume=True)
    assert report.ok and report.bytes_reused == 13635072 and stream.chunks.fetches == 0


def test_image_target_refusals(vectors, tmp_path):
    stream = _stream(vectors / "datastore", PLAIN)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError):
        restore_image(stream, ImageTarget(str(link)))
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(UsageError):
        restore_image(stream, ImageTarget(str(tmp_path / "file"), device=True))
    with pytest.raises(UsageError):
        restore_image(stream, ImageTarget("/dev/null"))


def test_blob_to_file_and_stdout(vectors, tmp_path, capfdbinary):
    key = str(vectors / "keys" / "key-none.json")
    target = tmp_path / "vm.conf"
    assert (
        main(
            [
                "restore",
                str(vectors / "datastore"),
                ENCRYPTED,
                "qemu-server.conf",
                str(target),
                "--keyfile",
                key,
            ]
        )
        == 0
    )
    assert _sha(target) == CONF_SHA256
    capfdbinary.readouterr()
    assert main(["restore", str(vectors / "datastore"), PLAIN, "qemu-server.conf", "-"]) == 0
    assert hashlib.sha256(capfdbinary.readouterr().out).hexdigest() == CONF_SHA256


def _losetup(path: Path) -> str:
    return subprocess.run(
        ["losetup", "-f", "--show", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.slow
def test_block_device_target(vectors, tmp_path):
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    dev = _losetup(backing)
    try:
        stream = _stream(vectors / "datastore", PLAIN)
        with pytest.raises(UsageError):  # a device needs --target-device
            restore_image(stream, ImageTarget(dev))
        with open(dev, "r+b") as f:  # garbage where the zero chunks go: must be overwritten
            f.write(b"\xff" * (8 * 1024 * 1024))
        assert restore_image(stream, ImageTarget(dev, device=True)).ok
        with open(dev, "rb") as f:
            assert hashlib.sha256(f.read(13635072)).hexdigest() == IMAGE_SHA256
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            with pytest.raises(UsageError, match="mounted"):
                restore_image(stream, ImageTarget(dev, device=True))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
