"""Where independent pieces of work run: here, in local worker processes, or on a Dask cluster.

`snapfs verify` splits a store into shards that need nothing from each other (the chunk folders
PBS already shards by). A `WorkPool` runs one function over such shards and hands back each
outcome as it finishes, in whatever order they finish:

- `InlinePool`: in this process, one shard after another (`--workers 1`; no start-up cost).
- `ProcessPool`: local worker processes, one per core by default; the standard library's
  process pool, restarted when a worker dies so its shards run again.
- `DaskPool`: the workers of a Dask distributed scheduler (`--cluster tcp://host:8786`), which
  retries the shards of a worker that dies on another. Dask is optional
  (`pip install 'snapfs[cluster]'`).

No scheduler of our own: the pools only bound how many shards are in flight (each carries its
list of chunks, so submitting a million at once would copy them all up front) and say what failed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from snapfs.errors import SnapfsError, UsageError

T = TypeVar("T")
R = TypeVar("R")

#: A pool whose worker process dies is started again this many times before its remaining shards
#: are reported as failed: one crash is bad luck, four in a row is a shard that kills its worker.
PROCESS_POOL_RESTARTS = 3
#: Dask runs a shard again on another worker when its worker dies; a task that raises is retried
#: this many times (a flaky network), then reported.
DASK_RETRIES = 2
#: How long `--cluster` waits for the scheduler to answer and to have a worker.
DASK_CONNECT_TIMEOUT = 30.0


class ShardFailed(SnapfsError):
    """A shard could not be run to its end (its worker kept dying, or it raised)."""


class WorkPool(ABC):
    """Runs `work(item)` for each item somewhere; yields (item, result or the exception)."""

    #: How many shards run at once (a hint for how to split the work, and for the progress bar).
    workers: int
    #: What the pool is, for the report: "this process", "2 local processes", "tcp://...".
    where: str

    @abstractmethod
    def run(
        self, work: Callable[[T], R], items: Iterable[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        """Each item with `work(item)`'s value or exception, as they finish. `work` must be a
        picklable module-level callable (or a functools.partial of one) for the process pools.

        Items are taken from `items` only as a worker frees up, so a generator may make each
        one just in time (the search index ships the content hashes known at that moment)."""

    def close(self) -> None:  # noqa: B027 (only the pools with workers have any to let go)
        """Let the workers go."""

    def __enter__(self) -> WorkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlinePool(WorkPool):
    """This process, one item after another."""

    workers = 1
    where = "this process"

    def run(
        self, work: Callable[[T], R], items: Iterable[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        for item in items:
            try:
                outcome: R | BaseException = work(item)
            except SnapfsError as exc:
                outcome = exc
            yield item, outcome


class ProcessPool(WorkPool):
    """Local worker processes (spawned, so no thread or open connection of ours is inherited)."""

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        self.workers = workers
        self.where = f"{workers} local process{'es' if workers > 1 else ''}"
        self._initializer = initializer
        self._initargs = initargs

    def _executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._initializer, self._initargs),
        )

    def run(
        self, work: Callable[[T], R], items: Iterable[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        source = enumerate(items)
        unfinished: dict[int, T] = {}  # submitted, no outcome yet: run again if the pool breaks

        def feed() -> Iterator[tuple[int, T]]:
            yield from list(unfinished.items())
            for i, item in source:
                unfinished[i] = item
                yield i, item

        restarts = 0
        while True:
            broken: BaseException | None = None
            progressed = False
            executor = self._executor()

            def submit(
                fn: Callable[[T], R], item: T, executor: ProcessPoolExecutor = executor
            ) -> Future:
                try:
                    return executor.submit(fn, item)
                except BrokenProcessPool as exc:  # a worker died between two submits
                    failed: Future = Future()
                    failed.set_exception(exc)
                    return failed

            try:
                for i, outcome in _bounded(submit, work, feed(), self.workers, _Finished()):
                    if isinstance(outcome, BrokenProcessPool):
                        broken = outcome
                        break
                    progressed = True
                    yield unfinished.pop(i), outcome
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
            if broken is None:
                return
            restarts = 1 if progressed else restarts + 1
            if restarts > PROCESS_POOL_RESTARTS:
                failure = ShardFailed(
                    f"a worker process died {restarts} times in a row ({broken}); "
                    f"{len(unfinished)} shards and the ones after them not run"
                )
                for i, _ in feed():
                    yield unfinished.pop(i), failure
                return


class DaskPool(WorkPool):
    """The workers of a running Dask distributed scheduler."""

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise UsageError(
                "--cluster needs Dask distributed: pip install 'snapfs[cluster]'"
            ) from None
        try:
            self._client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SnapfsError(
                f"cannot reach the Dask scheduler at {address}: {exc.__class__.__name__}: {exc}"
            ) from None
        try:
            self._client.wait_for_workers(1, timeout=DASK_CONNECT_TIMEOUT)
        except TimeoutError:
            self._client.close()
            raise SnapfsError(
                f"the Dask scheduler at {address} has no worker "
                f"(start some with: dask worker {address})"
            ) from None
        self.workers = max(sum(self._client.nthreads().values()), 1)
        self.where = f"Dask scheduler {address} ({self.workers} worker threads)"

    def run(
        self, work: Callable[[T], R], items: Iterable[T]
    ) -> Iterator[tuple[T, R | BaseException]]:
        taken: dict[int, T] = {}

        def numbered() -> Iterator[tuple[int, T]]:
            for i, item in enumerate(items):
                taken[i] = item
                yield i, item

        def submit(fn: Callable[[T], R], item: T) -> Future:
            # pure=False: two shards with equal lists must still both run (and Dask must not
            # hash a megabyte of digests to name the task).
            return self._client.submit(fn, item, pure=False, retries=DASK_RETRIES)

        from distributed import as_completed

        finished = as_completed(loop=self._client.loop)
        for i, outcome in _bounded(submit, work, numbered(), self.workers, finished):
            yield taken.pop(i), outcome

    def close(self) -> None:
        self._client.close()


def open_pool(
    workers: int | None,
    cluster: str | None,
    *,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> WorkPool:
    """The pool the command line asks for: `--cluster`, else `--workers` (default: one per core).

    `initializer(*initargs)` runs once in each local worker process (the in-process pool and a
    cluster get what they need elsewhere: a cluster's workers bring their own credentials).
    """
    if cluster:
        if workers is not None:
            raise UsageError("--workers and --cluster exclude each other: a cluster has its own")
        return DaskPool(cluster)
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count < 1:
        raise UsageError("--workers must be at least 1")
    if count == 1:
        return InlinePool()
    return ProcessPool(count, initializer, initargs)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    # Ctrl-C reaches the whole process group; the parent decides what stops, and says so once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _bounded(
    submit: Callable[..., Any],
    work: Callable[[T], R],
    items: Iterator[tuple[int, T]],
    workers: int,
    finished: _Finished,
) -> Iterator[tuple[int, R | BaseException]]:
    """Submit each numbered item, never more than two per worker in flight, and yield
    (number, value or exception) as each finishes. `finished` hands back futures as they finish:
    concurrent.futures' and Dask's alike."""
    window = 2 * workers
    pending: dict[Any, int] = {}
    try:
        while True:
            for i, item in items:
                future = submit(work, item)
                pending[future] = i
                finished.add(future)
                if len(pending) >= window:
                    break
            if not pending:
                return
            future = next(finished)
            i = pending.pop(future)
            try:
                outcome: R | BaseException = future.result()
            except Exception as exc:  # the shard's own failure, reported as its outcome
                outcome = exc
            yield i, outcome
    finally:
        for future in pending:
            future.cancel()


class _Finished:
    """concurrent.futures futures, handed back one at a time as they finish (the interface of
    Dask's `as_completed`, which the Dask pool uses instead)."""

    def __init__(self) -> None:
        self._waiting: set[Future] = set()
        self._done: list[Future] = []

    def add(self, future: Future) -> None:
        self._waiting.add(future)

    def __next__(self) -> Future:
        if not self._done:
            done, self._waiting = wait(self._waiting, return_when=FIRST_COMPLETED)
            self._done = list(done)
        return self._done.pop()
