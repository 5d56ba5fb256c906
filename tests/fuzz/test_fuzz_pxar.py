"""Hypothesis fuzzing of the pxar reader (v1 archives, and split .mpxar/.ppxar pairs) over mutated
golden archives: only SnapfsError may escape, and memory does not follow a length field."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import fuzz, mutate, mutations, within_memory
from support.mini_pxar import MiniPxar

from snapfs.errors import SnapfsError
from snapfs.format.source import BytesSource
from snapfs.pxar import format as fmt
from snapfs.pxar.accessor import Accessor


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
        "v1": ((pxar / "archive-v1.pxar").read_bytes(), None),
        "v2": ((pxar / "archive-v2.mpxar").read_bytes(), ppxar),
        "v2-prelude": ((pxar / "archive-v2-prelude.mpxar").read_bytes(), ppxar),
        "fixture": (fixture.read_bytes(), None),
        "mini-v1": (_mini_v1(), None),
    }


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


def _checked(data: bytes, payload: bytes | None) -> None:
    within_memory(lambda: _exercise(data, payload), len(data) + len(payload or b""))


@pytest.mark.timeout(120)
@fuzz(200)
@given(base=st.sampled_from(["v1", "v2", "v2-prelude", "fixture", "mini-v1"]), edits=mutations)
def test_fuzz_pxar_archive(vectors, base, edits):
    data, payload = _bases(vectors)[base]
    _checked(mutate(data, edits), payload)


@pytest.mark.timeout(120)
@fuzz(150)
@given(edits=mutations)
def test_fuzz_pxar_split_payload(vectors, edits):
    data, payload = _bases(vectors)["v2"]
    assert payload is not None
    head = mutate(payload[:4096], edits)
    _checked(data, head + payload[4096:])


@pytest.mark.timeout(60)
@fuzz(150)
@given(raw=st.binary(min_size=0, max_size=512))
def test_fuzz_pxar_random_bytes(raw):
    _checked(raw, None)
    _checked(fmt.HEADER.pack(fmt.PXAR_ENTRY, 56) + raw, None)
