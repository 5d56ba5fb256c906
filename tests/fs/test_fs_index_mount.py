"""A real mount keeps the index of an archive it walked, and the next mount lists it without
decoding: the same `find` output, with chunk reads only for opening the archive."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time

import pytest
from support.mounting import mounted
from support.stores import pxar_store

from snapfs.pxar.tree import encode_tree

pytestmark = pytest.mark.slow

ARCHIVE = "host/bad/2024-06-01T11:00:00Z/root.pxar"


def stats(mnt) -> str:
    return (mnt / ".snapfs" / "stats").read_text()


def chunks_read(mnt) -> int:
    return int(re.search(r"chunks read from the source: (\d+)", stats(mnt)).group(1))


def find(mnt) -> str:
    return subprocess.run(
        ["find", str(mnt / ARCHIVE), "-printf", "%P %y %m %U %G %s %n %T@\\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_the_next_mount_walks_the_kept_index(tmp_path):
    tree = tmp_path / "tree"
    for d in range(20):  # 2,400 small files in 20 directories: entries in every chunk
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(120):
            (tree / f"d{d}" / f"f{f}").write_bytes(os.urandom(1000 + f))
    os.link(tree / "d0" / "f1", tree / "d17" / "link")
    out = io.BytesIO()
    encode_tree(tree, out)
    store = pxar_store(tmp_path / "store", out.getvalue())
    index_dir = tmp_path / "index"
    options = ("--index-dir", str(index_dir))

    with mounted(store, tmp_path / "m1", *options) as mnt:
        first = find(mnt)  # lists all 21 directories: a walk, so the archive is indexed
        deadline = time.monotonic() + 60
        while "1 built" not in stats(mnt):  # the walk runs in the background
            assert time.monotonic() < deadline, stats(mnt)
            time.sleep(0.05)
        decoded = chunks_read(mnt)
    [kept] = os.listdir(index_dir)
    assert kept.endswith(".sqlite") and os.stat(index_dir / kept).st_mode & 0o777 == 0o600

    with mounted(store, tmp_path / "m2", *options) as mnt:
        (mnt / ARCHIVE).stat()  # opens the archive: its first and last chunks
        opened = chunks_read(mnt)
        assert "1 loaded" in stats(mnt)
        again = find(mnt)
        assert chunks_read(mnt) == opened < decoded
        # Only the archive's root listing was asked of the index alone: the 20 directories after
        # it came with it, read ahead in one query (snapfs.fs.listing_ahead).
        assert "listings read from archive indexes: 1 alone; read-ahead windows: 1" in stats(mnt)
    # The same entries and attributes; st_nlink of the hard link pair is 2 on both names from the
    # start (decoding, the first mount counted a link only once it had listed it).
    assert without_nlink(again) == without_nlink(first)
    nlinks = {line.split()[0]: line.split()[6] for line in again.splitlines() if line.split()}
    assert nlinks["d0/f1"] == nlinks["d17/link"] == "2"


def without_nlink(listing: str) -> list:
    return [line.split()[:6] + line.split()[7:] for line in listing.splitlines()]
