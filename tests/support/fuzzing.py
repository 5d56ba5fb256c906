"""The fuzzing harness of tests/fuzz: hypothesis profiles, byte mutations of valid inputs, and the
two properties every parser of outside bytes must keep.

(1) Whatever the bytes, a parser returns a value or raises a `SnapfsError`; nothing else escapes.
(2) Memory does not follow a length field: the peak of Python allocations during one parse stays
    below `MEMORY_BASE` plus a small multiple of the input (`within_memory`).

Profiles: the suite runs `fuzz-ci` (derandomized, no example database, the example count each
test names), so CI is reproducible and the fuzz set stays within its time budget. `scripts/fuzz`
sets SNAPFS_FUZZ_EXAMPLES, which selects `fuzz-long`: that many random examples per test.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from snapfs.errors import SnapfsError

MiB = 1024 * 1024
#: What a parse may allocate whatever its input claims (a chunk, a table, the interpreter's own).
MEMORY_BASE = 16 * MiB
#: Lengths that break parsers: zero, around powers of two, the signed and unsigned maxima.
INTERESTING = (
    0,
    1,
    7,
    8,
    16,
    255,
    256,
    4095,
    4096,
    65535,
    65536,
    (1 << 20) + 1,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)
_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]

LONG_EXAMPLES = os.environ.get("SNAPFS_FUZZ_EXAMPLES")
settings.register_profile(
    "fuzz-ci", derandomize=True, database=None, deadline=None, suppress_health_check=_CHECKS
)
settings.register_profile(
    "fuzz-long",
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=_CHECKS,
    max_examples=int(LONG_EXAMPLES or 1),
    print_blob=True,
)


def fuzz(examples: int) -> settings:
    """The settings of one fuzz test: `examples` in the suite, SNAPFS_FUZZ_EXAMPLES under
    scripts/fuzz."""
    if LONG_EXAMPLES:
        return settings(settings.get_profile("fuzz-long"))
    return settings(settings.get_profile("fuzz-ci"), max_examples=examples)


# -- mutations --------------------------------------------------------------------------------------

#: One edit: (kind, where in [0, 1], a byte, an interesting value, width, big-endian, aligned).
mutation = st.tuples(
    st.sampled_from(["flip", "byte", "int", "int", "truncate", "splice", "delete", "insert"]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(INTERESTING),
    st.sampled_from([2, 4, 8]),
    st.booleans(),
    st.booleans(),
)
mutations = st.lists(mutation, min_size=1, max_size=4)


def mutate(data: bytes, edits: list[tuple]) -> bytes:
    """`data` with `edits` applied in order: bit flips, bytes, integer fields set to interesting
    values (little or big endian, at any or an aligned offset), cuts, splices of a run copied
    from elsewhere, deletions and insertions."""
    out = bytearray(data)
    for kind, where, byte, value, width, big, aligned in edits:
        if not out:
            out += bytes([byte])
            continue
        pos = int(where * (len(out) - 1))
        if aligned:
            pos -= pos % width
        if kind == "flip":
            out[pos] ^= 1 << (byte & 7)
        elif kind == "byte":
            out[pos] = byte
        elif kind == "int":
            field = (value % (1 << (8 * width))).to_bytes(width, "big" if big else "little")
            out[pos : pos + width] = field
        elif kind == "truncate":
            del out[pos:]
        elif kind == "splice":
            other = int((byte / 255) * (len(out) - 1))
            out[pos : pos + width * 4] = out[other : other + width * 4]
        elif kind == "delete":
            del out[pos : pos + 1 + byte % 64]
        else:
            out[pos:pos] = bytes([byte]) * (1 + value % 64)
    return bytes(out)


def put_u64(data: bytes, offset: int, value: int) -> bytes:
    """`data` with the little-endian u64 at `offset` set to `value` (for regression examples)."""
    out = bytearray(data)
    struct.pack_into("<Q", out, offset, value)
    return bytes(out)


# -- the properties ---------------------------------------------------------------------------------


def only_snapfs_errors(call: Callable[[], Any]) -> Any:
    """The value of `call()`, or None when it raised a SnapfsError; any other exception fails
    the test (it propagates, and hypothesis shrinks the input that raised it)."""
    try:
        return call()
    except SnapfsError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"error message not one line: {message!r}"
        return None


def within_memory(
    call: Callable[[], Any], input_size: int, *, factor: int = 4, held: int = 0
) -> Any:
    """`only_snapfs_errors(call)`, asserting that the peak of Python allocations meanwhile stays
    below MEMORY_BASE + factor * input_size + held: no length field makes a parser allocate.
    `held` is what the caller knows may be kept legitimately (a cache's bound, say)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        result = only_snapfs_errors(call)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    limit = MEMORY_BASE + factor * input_size + held
    assert peak <= limit, f"parse of {input_size} bytes allocated {peak} bytes (limit {limit})"
    return result
