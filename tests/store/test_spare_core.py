"""SpareCore: a decode running alone gets a helper thread, one among others does not."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from snapfs.errors import ChecksumMismatchError
from snapfs.format.blob import encode_chunk
from snapfs.store.backend import LocalBackend, chunk_path
from snapfs.store.chunks import ChunkReader
from snapfs.store.spare_core import SpareCore


def test_only_a_lone_decode_gets_the_helper():
    spare = SpareCore()
    with spare.lent() as first:
        assert first is not None
        assert first.submit(os.getpid).result() == os.getpid()
        with spare.lent() as second:
            assert second is None  # the cores are busy already
    with spare.lent() as again:
        assert again is first  # one thread, kept


def _use_in_child(spare: SpareCore, out) -> None:
    with spare.lent() as pool:
        out.send(pool.submit(lambda: 6 * 7).result(timeout=10))


def test_a_forked_child_makes_its_own_helper():
    """A child forked after the helper started has the pool but not its thread."""
    spare = SpareCore()
    with spare.lent() as pool:
        pool.submit(int).result()
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_use_in_child, args=(spare, send))
    child.start()
    assert receive.poll(30), "the child's decode never got its helper's answer"
    assert receive.recv() == 42
    child.join(30)
    assert child.exitcode == 0


def test_a_chunk_read_alone_is_checked_on_the_helper(tmp_path):
    """A waiting reader's ChunkReader decoding one chunk shares the work with the spare core's
    helper thread, and a damaged chunk is still named with its fault; a reader without one (a
    restore, a verify) never starts it."""
    data = bytes(range(256)) * 8192
    digest, raw = encode_chunk(data)
    path = tmp_path / chunk_path(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    unshared = SpareCore()
    assert ChunkReader(LocalBackend(tmp_path)).read_chunk(digest) == data
    assert unshared._pool is None
    spare = SpareCore()
    reader = ChunkReader(LocalBackend(tmp_path), spare=spare)
    assert reader.read_chunk(digest) == data
    assert spare._pool is not None and spare._pool.submit(threading.get_ident).result() in {
        t.ident for t in threading.enumerate() if t.name.startswith("snapfs-decode-helper")
    }
    damaged = bytearray(raw)
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    reader = ChunkReader(LocalBackend(tmp_path), spare=spare)
    with pytest.raises(ChecksumMismatchError, match=digest.hex()):
        reader.read_chunk(digest)
