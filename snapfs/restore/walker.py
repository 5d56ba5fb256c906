"""The walker thread of a pxar restore, and the chunk prefetch it drives.

The walker runs ahead of the writer with its own Accessor: it filters entries, and for every file
it passes on it asks worker threads to fetch and decode the chunks that hold the content, bounded
by a byte budget, so the writer mostly finds chunks already in the cache.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from snapfs.errors import SnapfsError
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Entry
from snapfs.restore.filters import PathFilter

__all__ = ["WALK_DONE", "ByteBudget", "Prefetcher", "walk_ahead"]


class ByteBudget:
    """Bounds the file bytes the walker may announce ahead of the writer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()
        self.stopped = False

    def acquire(self, n: int) -> bool:
        n = min(n, self.limit)
        with self.cond:
            while self.used + n > self.limit and self.used > 0 and not self.stopped:
                self.cond.wait()
            self.used += n
            return not self.stopped

    def release(self, n: int) -> None:
        n = min(n, self.limit)
        with self.cond:
            self.used = max(0, self.used - n)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class Prefetcher:
    """Warms the chunk cache with the chunks holding the content of files about to be written."""

    def __init__(self, source: object, workers: int) -> None:
        # Only an IndexStream has chunks to warm; a plain file or bytes source needs nothing.
        self.index = getattr(source, "index", None)
        self.chunks = getattr(source, "chunks", None)
        self.enabled = self.index is not None and self.chunks is not None and workers > 0
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="snapfs-prefetch"
        )
        self._recent: deque[bytes] = deque(maxlen=4096)
        self._recent_set: set[bytes] = set()

    def schedule(self, start: int, end: int) -> None:
        if not self.enabled or end <= start:
            return
        try:
            first, last = self.index.chunk_at(start), self.index.chunk_at(end - 1)
        except SnapfsError:
            return  # the writer's own read will report it
        for i in range(first, last + 1):
            digest = self.index.digest(i)
            if digest in self._recent_set:
                continue
            if len(self._recent) == self._recent.maxlen:
                self._recent_set.discard(self._recent[0])
            self._recent.append(digest)
            self._recent_set.add(digest)
            self._pool.submit(self._load, digest)

    def _load(self, digest: bytes) -> None:
        # A failure here is reported, with the file it belongs to, when the writer reads it.
        with contextlib.suppress(SnapfsError):
            self.chunks.read_chunk(digest)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


WALK_DONE = object()


@dataclass(frozen=True, slots=True)
class _Item:
    entry: Entry
    selected: bool  # False: a directory kept only in case something below it is included


def walk_ahead(
    accessor: Accessor,
    root: Entry,
    filt: PathFilter,
    out: queue.Queue,
    budget: ByteBudget,
    prefetch: Prefetcher,
) -> None:
    """Walk ahead of the writer: filter, announce content to the prefetcher, hand entries on."""
    errors: list[SnapfsError] = []
    try:
        skip_prefix: bytes | None = None
        included_prefixes: list[bytes] = []
        for entry in accessor.walk(root, on_error=errors.append):
            while errors:
                out.put(errors.pop(0))
            if budget.stopped:
                return
            if entry is root:
                out.put(_Item(entry, True))
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
                if not budget.acquire(entry.size):
                    return
                prefetch.schedule(entry.content_offset, entry.content_offset + entry.size)
            out.put(_Item(entry, selected))
        while errors:
            out.put(errors.pop(0))
    except SnapfsError as exc:
        out.put(exc)
    except BaseException as exc:  # never leave the writer waiting on a dead walker
        out.put(exc)
    finally:
        out.put(WALK_DONE)
