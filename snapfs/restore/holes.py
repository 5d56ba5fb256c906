"""Where data is worth writing: the runs of a buffer that are not all-zero blocks.

A restore leaves aligned all-zero blocks as holes (a file that was sized first reads them as
zeros): free space in a VM disk or a sparse file then costs neither writes nor disk space.
"""

from __future__ import annotations

__all__ = ["data_runs"]


def _zeros(n: int, _cache: dict[int, bytes] = {}) -> bytes:  # noqa: B006 - a deliberate memo
    z = _cache.get(n)
    if z is None:
        if len(_cache) > 16:
            _cache.clear()
        z = _cache[n] = bytes(n)
    return z


def _is_zero(data: bytes | memoryview) -> bool:
    # bytes == bytes is a memcmp; a memoryview compares element by element, 25x slower than
    # copying the block to bytes first.
    if not isinstance(data, bytes):
        data = data.tobytes()
    return data == _zeros(len(data))


def data_runs(data: bytes | memoryview, block: int) -> list[tuple[int, int]]:
    """The [start, stop) ranges of `data` that are not all-zero `block`s, adjacent ones joined."""
    runs: list[tuple[int, int]] = []
    size = len(data)
    for start in range(0, size, block):
        stop = min(start + block, size)
        # The two end bytes first: random or text data is never sliced and compared in full.
        if data[start] == 0 and data[stop - 1] == 0 and _is_zero(data[start:stop]):
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs
