"""Hypothesis fuzzing of the pxar reader (v1 archives, and split .mpxar/.ppxar pairs) over mutated
golden archives: only SnapfsError may escape, memory does not follow a length field, and the
front-to-back scan never accepts what the goodbye-table walk would see differently."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import fuzz, mutate, mutations, within_memory
from support.mini_pxar import every_kind

from snapfs.errors import SnapfsError
from snapfs.format.source import BytesSource
from snapfs.pxar import format as fmt
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.scan import scan


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
        "mini-v1": every_kind(),
    }


def _exercise(data: bytes, payload: bytes | None) -> None:
    """Touch every public operation; the count of entries is bounded by the archive size."""
    try:
        acc = Accessor(BytesSource(data), BytesSource(payload) if payload else None, name="fuzz")
    except SnapfsError:
        return
    errors: list[SnapfsError] = []
    walked = {}
    for count, entry in enumerate(acc.walk(on_error=errors.append), start=1):
        walked[entry.entry_offset] = entry
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
    # The front-to-back scan refuses, or sees what the walk saw (never more, never other).
    try:
        scanned = {entry.entry_offset: entry for entry, _ in scan(acc)}
    except SnapfsError:
        return
    assert not errors
    assert scanned == walked


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
