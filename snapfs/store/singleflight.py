"""SingleFlight: one computation per key at a time; whoever asks meanwhile waits for its result.

When 16 FUSE readers, a readahead and a restore writer want the same chunk at once, fetching it
16 times costs 16 disk reads or, worse, 16 paid S3 GETs. The first caller for a key computes; the
callers that arrive before it is done wait on the same Future and get its value or its exception.
Nothing is kept once the call is over: remembering results is the cache's business, so a failed
fetch is tried again by the next caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """The calls under way, by key."""

    def __init__(self) -> None:
        self._calls: dict[K, Future[V]] = {}
        self._lock = threading.Lock()

    def run(self, key: K, compute: Callable[[], V]) -> V:
        """`compute()`'s value for `key`, computed in this thread; or, if a call for `key` is under
        way, that call's value (or its exception, raised here)."""
        future, owner = self._join(key)
        if owner:
            self._settle(key, future, compute)
        return future.result()

    def start(self, key: K, compute: Callable[[], V], executor: Executor) -> bool:
        """Compute `key` on `executor` unless a call for it is under way; False if one was.

        The call counts as under way from now on, so a `run` for the key joins it even before a
        worker picks it up. If the executor drops it (shut down with cancel_futures), the callers
        waiting on it get CancelledError rather than waiting for ever.
        """
        future, owner = self._join(key)
        if not owner:
            return False
        try:
            job = executor.submit(self._settle, key, future, compute)
        except BaseException:
            self._abandon(key, future)
            raise

        def dropped(job: Future[None]) -> None:
            if job.cancelled():
                self._abandon(key, future)

        job.add_done_callback(dropped)
        return True

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._calls

    def _join(self, key: K) -> tuple[Future[V], bool]:
        """The Future of the call for `key`, and whether the caller is to compute it."""
        with self._lock:
            future = self._calls.get(key)
            if future is not None:
                return future, False
            future = self._calls[key] = Future()
            return future, True

    def _settle(self, key: K, future: Future[V], compute: Callable[[], V]) -> None:
        try:
            value = compute()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)
        finally:
            # Published before leaving the table: a caller arriving in between still joins.
            with self._lock:
                del self._calls[key]

    def _abandon(self, key: K, future: Future[V]) -> None:
        with self._lock:
            del self._calls[key]
        future.cancel()
