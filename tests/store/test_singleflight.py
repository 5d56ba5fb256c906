"""SingleFlight: concurrent callers of one key share one computation, its value or its error."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest
from support.flights import CountingCalls

from snapfs.store.singleflight import SingleFlight


def _in_threads(n: int, call) -> list:
    """`call()` in n threads at once; what each returned or raised."""
    out: list = [None] * n

    def one(i: int) -> None:
        try:
            out[i] = call()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_concurrent_callers_get_one_computation() -> None:
    flights: SingleFlight[str, bytes] = SingleFlight()
    flights._calls = table = CountingCalls()
    calls: list[int] = []

    def compute() -> bytes:
        calls.append(1)
        table.wait_for(8)  # every caller has arrived while this one computes
        return b"value"

    assert _in_threads(8, lambda: flights.run("k", compute)) == [b"value"] * 8
    assert calls == [1]
    assert "k" not in flights  # nothing is kept once the call is over
    assert flights.run("k", lambda: b"again") == b"again"


def test_an_error_reaches_every_caller_and_is_not_remembered() -> None:
    flights: SingleFlight[str, bytes] = SingleFlight()
    flights._calls = table = CountingCalls()
    calls: list[int] = []

    def failing() -> bytes:
        calls.append(1)
        table.wait_for(6)
        raise OSError("disk gone")

    results = _in_threads(6, lambda: flights.run("k", failing))
    assert calls == [1]
    assert all(isinstance(r, OSError) for r in results)
    assert len({id(r) for r in results}) == 1  # the very exception the computation raised
    assert flights.run("k", lambda: b"now") == b"now"  # the next caller computes again


def test_different_keys_do_not_wait_for_each_other() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    release = threading.Event()
    blocked = threading.Thread(target=flights.run, args=("slow", lambda: release.wait(30)))
    blocked.start()
    try:
        assert flights.run("fast", lambda: "done") == "done"
    finally:
        release.set()
        blocked.join(timeout=30)


def test_start_runs_in_the_background_and_run_joins_it() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    flights._calls = table = CountingCalls()
    calls: list[str] = []

    def compute() -> str:
        calls.append("background")
        table.wait_for(3)  # both starts and the waiter have looked the key up
        return "fetched"

    with ThreadPoolExecutor(1) as pool:
        assert flights.start("k", compute, pool) is True
        assert flights.start("k", compute, pool) is False  # already under way: not started again
        joined = _in_threads(1, lambda: flights.run("k", lambda: "own"))
    assert joined == ["fetched"] and calls == ["background"]
    assert "k" not in flights


def test_a_start_dropped_by_its_executor_releases_its_waiters() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    flights._calls = table = CountingCalls()
    release = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(release.wait, 30)  # the one worker is busy: the next job waits in the queue
    assert flights.start("queued", lambda: "never", pool)
    results: list = []
    waiter = threading.Thread(target=lambda: results.extend(_in_threads(1, call)))

    def call() -> str:
        return flights.run("queued", lambda: "own")

    waiter.start()
    table.wait_for(2)  # start's lookup, then the waiter's: it has joined the queued call
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    waiter.join(timeout=30)
    assert len(results) == 1 and isinstance(results[0], CancelledError)
    assert "queued" not in flights
    with pytest.raises(RuntimeError):  # a shut-down executor: refused, and nothing left behind
        flights.start("late", lambda: "never", pool)
    assert "late" not in flights
