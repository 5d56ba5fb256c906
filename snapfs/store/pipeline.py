"""The ordered pipeline: work on many items in worker threads, handed back in the items' order.

A stream is consumed in order (written to a disk, copied to stdout, checked), but fetching and
decoding one chunk at a time leaves the second core and the network idle: zstd, AES-GCM and
SHA-256 release the GIL, and an S3 GET is mostly waiting. So the work runs ahead of the consumer
on a few threads, never more than `window` items ahead, which bounds memory however long the
input is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["ordered"]

T = TypeVar("T")
R = TypeVar("R")


def ordered(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    workers: int,
    window: int,
    thread_name: str,
) -> Iterator[tuple[T, Future[R]]]:
    """(item, future of `work(item)`) for each item, in the items' order.

    At most `window` items are submitted and not yet handed back. Items are taken from `items`
    only as the window frees up, so a generator may do per-item work (a prefetch hint) just in
    time. The consumer calls `future.result()`: an error in `work` reaches it there, for the item
    that failed, and the pipeline goes on if the consumer does. When the consumer stops early,
    the items not started are cancelled and the ones running are waited for.
    """
    if window < 1:
        raise ValueError(f"the window must hold at least one item, not {window}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
        pending: deque[tuple[T, Future[R]]] = deque()
        source = iter(items)
        try:
            for item in source:
                pending.append((item, pool.submit(work, item)))
                if len(pending) >= window:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for _, future in pending:
                future.cancel()
