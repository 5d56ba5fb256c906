"""Goodbye tables: how a pxar directory names its children without them being read (§11.7).

A directory ends with a table of (filename hash, offset, size) records, laid out as a binary search
tree in an array, and a tail pointing back at the directory's ENTRY. One small read from the
directory's end gets the tail and, for most directories, the whole table. Archives are untrusted:
the table's size, its tail and every record are checked against the range they must lie in before
anything is followed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from snapfs.errors import CorruptDataError, TruncatedDataError
from snapfs.pxar import format as fmt
from snapfs.pxar.entry import Entry

__all__ = [
    "GoodbyeTable",
    "child_start",
    "read_goodbye_table",
    "records_in_archive_order",
    "records_with_hash",
]

_HDR = fmt.HEADER.unpack_from
_GB = fmt.GOODBYE_ITEM.unpack_from
_GB_SIZE = fmt.GOODBYE_ITEM_SIZE
#: Bytes fetched from a directory's end: tail plus the whole table of a small directory.
_GOODBYE_WINDOW = 1024
#: No real directory has more children; the cap keeps a forged table size from costing memory.
_MAX_GOODBYE_SIZE = 16 + _GB_SIZE * (16 * 1024 * 1024 + 1)


@dataclass(frozen=True, slots=True)
class GoodbyeTable:
    """An opened goodbye table: `table` holds the N child records (the tail excluded)."""

    entry_start: int  # E: the directory's ENTRY header (0 for the root)
    goodbye_start: int  # G
    table: bytes
    count: int


def read_goodbye_table(
    directory: Entry, read_exact: Callable[[int, int], bytes], archive_size: int, name: str
) -> GoodbyeTable:
    """Read and validate a directory's goodbye table from its end offset; `name` is the archive's."""
    end = directory.entry_end
    is_root = directory.entry_offset == 0
    # ENTRY header position: for the root always 0 (even in v2), else right after FILENAME.
    expect_e = 0 if is_root else directory.entry_offset + fmt.HEADER_SIZE + len(directory.name) + 1
    where = f"{name}: directory {directory.path!r} ending at offset {end}"
    if end > archive_size:
        raise TruncatedDataError(f"{where}: past the end of the archive ({archive_size} bytes)")
    span = end - expect_e
    if span < fmt.ENTRY_V1_FULL_SIZE + 40:
        raise CorruptDataError(f"{where}: range of {span} bytes is too small")
    window = min(span, _GOODBYE_WINDOW)
    tail_block = read_exact(end - window, window)
    th, to, ts = _GB(tail_block, window - _GB_SIZE)
    if th != fmt.PXAR_GOODBYE_TAIL_MARKER:
        raise CorruptDataError(f"{where}: no goodbye tail marker at offset {end - _GB_SIZE}")
    if (
        ts < 40
        or (ts - 16) % _GB_SIZE
        or ts > span - fmt.ENTRY_V1_FULL_SIZE
        or ts > _MAX_GOODBYE_SIZE
    ):
        raise CorruptDataError(f"{where}: bad goodbye table size {ts} at offset {end - _GB_SIZE}")
    g = end - ts
    if to != g - expect_e:
        raise CorruptDataError(
            f"{where}: goodbye tail at offset {end - _GB_SIZE} points to {g - to}, not the ENTRY at {expect_e}"
        )
    table = tail_block[window - ts :] if ts <= window else read_exact(g, ts)
    htype, full_size = _HDR(table)
    if htype != fmt.PXAR_GOODBYE or full_size != ts:
        raise CorruptDataError(f"{where}: no GOODBYE item of {ts} bytes at offset {g}")
    body = table[fmt.HEADER_SIZE : ts - _GB_SIZE]
    return GoodbyeTable(
        entry_start=expect_e, goodbye_start=g, table=body, count=len(body) // _GB_SIZE
    )


def records_with_hash(d: GoodbyeTable, h: int) -> list[tuple[int, int]]:
    """(offset, size) of every record whose filename hash is `h`.

    Equal hashes may sit in both subtrees of a match, so the search does not stop at the first.
    """
    table, n = d.table, d.count
    candidates: list[tuple[int, int]] = []
    stack = [0]
    while stack:
        i = stack.pop()
        if i >= n:
            continue
        rh, roff, rsize = _GB(table, i * _GB_SIZE)
        if h < rh:
            stack.append(2 * i + 1)
        elif h > rh:
            stack.append(2 * i + 2)
        else:
            candidates.append((roff, rsize))
            stack.append(2 * i + 1)
            stack.append(2 * i + 2)
    return candidates


def child_start(d: GoodbyeTable, roff: int, name: str) -> int:
    """FILENAME position named by a goodbye record; it must lie inside the directory body."""
    f = d.goodbye_start - roff
    if roff > d.goodbye_start or f < d.entry_start + fmt.ENTRY_V1_FULL_SIZE:
        raise CorruptDataError(
            f"{name}: goodbye record in table at offset {d.goodbye_start} points outside "
            f"its directory (offset {roff})"
        )
    return f


def records_in_archive_order(d: GoodbyeTable) -> tuple[list[tuple[int, int]], list[int]]:
    """Child records as (FILENAME offset, record size) sorted by position,
    and the record offsets that point outside the directory."""
    g = d.goodbye_start
    lowest = d.entry_start + fmt.ENTRY_V1_FULL_SIZE
    records = []
    bad: list[int] = []
    for _h, roff, rsize in fmt.GOODBYE_ITEM.iter_unpack(d.table):
        f = g - roff
        if roff > g or f < lowest:
            bad.append(roff)
            continue
        records.append((f, rsize))
    records.sort()
    return records, bad
