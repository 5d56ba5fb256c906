"""The walker thread of a pxar restore, which drives the readahead of file content.

The walker runs ahead of the writer with its own Accessor: it filters entries, and for every file
it passes on it announces the byte range of its content (`warm`: a Readahead decoding the chunks
that hold it), bounded by a byte budget, so the writer mostly finds chunks already in the cache.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from snapfs.errors import SnapfsError
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Entry
from snapfs.restore.filters import PathFilter

__all__ = ["WALK_DONE", "ByteBudget", "unbatched", "walk_ahead"]


class ByteBudget:
    """Bounds the file bytes the walker may announce ahead of the writer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()
        self.stopped = False
        self._waiting = False  # the walker waits: a release must wake it

    def acquire(self, n: int) -> bool:
        n = min(n, self.limit)
        with self.cond:
            while self.used + n > self.limit and self.used > 0 and not self.stopped:
                self._waiting = True
                self.cond.wait()
            self._waiting = False
            self.used += n
            return not self.stopped

    def would_block(self, n: int) -> bool:
        """Whether `acquire(n)` would wait now (only the writer's releases change that)."""
        n = min(n, self.limit)
        with self.cond:
            return self.used + n > self.limit and self.used > 0 and not self.stopped

    def release(self, n: int) -> None:
        n = min(n, self.limit)
        with self.cond:
            self.used = max(0, self.used - n)
            if self._waiting:  # once per file: notify_all costs more than the rest of this
                self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


WALK_DONE = object()
#: Entries handed to the writer at once: each handoff wakes the other thread and passes the
#: interpreter lock, which per entry cost more than the entry's own syscalls.
BATCH = 64


class _Outbox:
    """What the walker hands on, in batches (lists) of up to BATCH items."""

    def __init__(self, out: queue.Queue) -> None:
        self.out = out
        self.batch: list[object] = []

    def put(self, item: object) -> None:
        self.batch.append(item)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.out.put(self.batch)
            self.batch = []


def unbatched(items: queue.Queue) -> Iterator[object]:
    """The writer's side: the walker's items one by one, ending with WALK_DONE."""
    while True:
        yield from items.get()


@dataclass(frozen=True, slots=True)
class _Item:
    entry: Entry
    selected: bool  # False: a directory kept only in case something below it is included


def walk_ahead(
    accessor: Accessor,
    roots: tuple[Entry, ...],
    filt: PathFilter,
    out: queue.Queue,
    budget: ByteBudget,
    warm: Callable[[int, int], None],
) -> None:
    """Walk ahead of the writer: filter, announce content to `warm(start, end)`, hand entries on
    (in batches: the writer reads them with `unbatched`)."""
    errors: list[SnapfsError] = []
    outbox = _Outbox(out)
    try:
        skip_prefix: bytes | None = None
        included_prefixes: list[bytes] = []
        for entry, is_root in _walk_each(accessor, roots, errors.append):
            while errors:
                outbox.put(errors.pop(0))
            if budget.stopped:
                return
            if is_root and entry.is_dir:  # a file as root (a worker's unit) is warmed below
                outbox.put(_Item(entry, True))
                continue
            path = entry.path
            if skip_prefix is not None and path.startswith(skip_prefix):
                continue
            skip_prefix = None
            if filt.excluded(path, entry.name):
                if entry.is_dir:
                    skip_prefix = path + b"/"
                continue
            selected = True
            if filt.has_includes:
                while included_prefixes and not path.startswith(included_prefixes[-1]):
                    included_prefixes.pop()
                selected = bool(included_prefixes) or filt.included(path, entry.name)
                if selected and entry.is_dir and not included_prefixes:
                    included_prefixes.append(path + b"/")
                if not selected and not entry.is_dir:
                    continue
            if selected and entry.is_file and entry.size > 0 and entry.content_offset is not None:
                if budget.would_block(entry.size):
                    outbox.flush()  # the writer releases budget only for entries it has
                if not budget.acquire(entry.size):
                    return
                warm(entry.content_offset, entry.content_offset + entry.size)
            outbox.put(_Item(entry, selected))
        while errors:
            outbox.put(errors.pop(0))
    except SnapfsError as exc:
        outbox.put(exc)
    except BaseException as exc:  # never leave the writer waiting on a dead walker
        outbox.put(exc)
    finally:
        outbox.put(WALK_DONE)
        outbox.flush()


def _walk_each(
    accessor: Accessor, roots: tuple[Entry, ...], on_error: Callable[[SnapfsError], None]
) -> Iterator[tuple[Entry, bool]]:
    """Every entry below each root in turn, roots included: (entry, whether it is a root)."""
    for root in roots:
        walk = accessor.walk(root, on_error=on_error)
        yield next(walk), True  # a walk starts with its root
        for entry in walk:
            yield entry, False
