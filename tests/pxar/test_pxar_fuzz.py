"""Hypothesis fuzzing of the pxar reader over mutated golden archives: only SnapfsError may escape."""

from __future__ import annotations

import contextlib
import functools
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.mini_pxar import MiniPxar

from snapfs.errors import SnapfsError
from snapfs.format.source import BytesSource
from snapfs.pxar import format as fmt
from snapfs.pxar.accessor import Accessor

INTERESTING = [
    0,
    1,
    8,
    15,
    16,
    17,
    24,
    40,
    56,
    64,
    255,
    4096,
    4097,
    1 << 31,
    1 << 63,
    (1 << 64) - 1,
]
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _mini_v1() -> bytes:
    w = MiniPxar()
    a = w.file(b"a", b"hello")
    w.hardlink(b"b", b"a", a)
    w.special(b"c", 0o20600, (fmt.PXAR_DEVICE, fmt.DEVICE.pack(1, 3)))
    w.begin_dir(b"d")
    w.special(b"fifo", 0o10644)
    w.special(b"link", 0o120777, (fmt.PXAR_SYMLINK, b"../a\0"))
    w.begin_dir(b"e")
    w.file(b"f", b"x" * 100)
    w.end_dir()
    w.end_dir()
    w.file(b"g", b"")
    return w.finish()[0]


@functools.cache
def _bases(vectors: Path) -> dict[str, tuple[bytes, bytes | None]]:
    pxar = vectors / "pxar"
    ppxar = (pxar / "archive-v2.ppxar").read_bytes()
    fixture = vectors / "upstream-fixtures" / "backup-client-pxar-expected.mpxar"
    return {
        "v2": ((pxar / "archive-v2.mpxar").read_bytes(), ppxar),
        "v2-prelude": ((pxar / "archive-v2-prelude.mpxar").read_bytes(), ppxar),
        "fixture": (fixture.read_bytes(), None),
        "mini-v1": (_mini_v1(), None),
    }


mutation = st.tuples(
    st.sampled_from(["byte", "u64", "u64-near", "truncate", "swap"]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(INTERESTING),
)


def _mutate(data: bytes, mutations: list) -> bytes:
    out = bytearray(data)
    for kind, where, byte, value in mutations:
        if len(out) < 16:
            break
        pos = int(where * (len(out) - 8))
        if kind == "byte":
            out[pos] = byte
        elif kind == "u64":
            struct.pack_into("<Q", out, pos, value)
        elif kind == "u64-near":
            old = struct.unpack_from("<Q", out, pos)[0]
            struct.pack_into("<Q", out, pos, (old + byte - 128) % (1 << 64))
        elif kind == "truncate":
            del out[max(pos, 1) :]
        else:
            other = int((byte / 255) * (len(out) - 8))
            out[pos : pos + 8], out[other : other + 8] = out[other : other + 8], out[pos : pos + 8]
    return bytes(out)


def _exercise(data: bytes, payload: bytes | None) -> None:
    """Touch every public operation; the count of entries is bounded by the archive size."""
    try:
        acc = Accessor(BytesSource(data), BytesSource(payload) if payload else None, name="fuzz")
    except SnapfsError:
        return
    errors: list[SnapfsError] = []
    for count, entry in enumerate(acc.walk(on_error=errors.append), start=1):
        # every entry but the root owns at least a FILENAME item of 18 bytes
        assert count <= len(data) // 18 + 1
        for op in (
            lambda e=entry: acc.lookup(e.path),
            lambda e=entry: acc.read(e, 0, 64) if e.is_file or e.is_hardlink else None,
            lambda e=entry: acc.read(e, max(e.size - 3, 0), 64) if e.is_file else None,
            lambda e=entry: acc.resolve_hardlink(e),
            lambda e=entry: acc.readlink(e) if e.is_symlink else None,
            lambda e=entry: acc.lookup_child(e, b"a") if e.is_dir else None,
        ):
            with contextlib.suppress(SnapfsError):
                op()
    with contextlib.suppress(SnapfsError):
        list(acc.listdir(acc.root()))


@pytest.mark.timeout(120)
@SETTINGS
@given(
    base=st.sampled_from(["v2", "v2-prelude", "fixture", "mini-v1"]),
    mutations=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_archives_raise_only_snapfs_errors(vectors, base, mutations):
    data, payload = _bases(vectors)[base]
    _exercise(_mutate(data, mutations), payload)


@pytest.mark.timeout(120)
@SETTINGS
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_payload_streams_raise_only_snapfs_errors(vectors, mutations):
    data, payload = _bases(vectors)["v2"]
    assert payload is not None
    head = _mutate(payload[:4096], mutations)
    _exercise(data, head + payload[4096:])


@pytest.mark.timeout(60)
@SETTINGS
@given(raw=st.binary(min_size=0, max_size=512))
def test_random_bytes_raise_only_snapfs_errors(raw):
    _exercise(raw, None)
    _exercise(fmt.HEADER.pack(fmt.PXAR_ENTRY, 56) + raw, None)
