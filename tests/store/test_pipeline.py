"""The ordered pipeline: results in the items' order, a bounded window ahead, errors per item."""

from __future__ import annotations

import random
import time

import pytest

from snapfs.store.pipeline import ordered


def test_results_come_back_in_the_items_order_whatever_finishes_first() -> None:
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.01) for _ in range(40)]

    def work(i: int) -> int:
        time.sleep(delays[i] if i % 3 else 0.02)  # every third item is the slowest
        return i * i

    got = [
        (i, f.result()) for i, f in ordered(range(40), work, workers=4, window=6, thread_name="t")
    ]
    assert got == [(i, i * i) for i in range(40)]


def test_never_more_than_the_window_ahead_of_the_consumer() -> None:
    taken: list[int] = []  # the pipeline pulls items in the consumer's thread
    most_ahead = 0

    def items():
        for i in range(30):
            taken.append(i)
            yield i

    def work(i: int) -> int:
        return i

    for i, future in ordered(items(), work, workers=3, window=4, thread_name="t"):
        assert future.result() == i
        most_ahead = max(most_ahead, len(taken) - i)  # i items were consumed before this one
    assert most_ahead == 4  # the item handed back and the three behind it, no more
    assert taken == list(range(30))


def test_an_error_reaches_the_consumer_for_its_item_and_the_rest_still_arrive() -> None:
    def work(i: int) -> int:
        if i == 5:
            raise OSError(f"item {i} failed")
        return i

    results = []
    for _, future in ordered(range(10), work, workers=2, window=3, thread_name="t"):
        try:
            results.append(future.result())
        except OSError as exc:
            results.append(str(exc))
    assert results == [0, 1, 2, 3, 4, "item 5 failed", 6, 7, 8, 9]


def test_an_error_raised_by_the_consumer_stops_the_pipeline() -> None:
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        time.sleep(0.005)
        return i

    def consume() -> None:
        for i, future in ordered(range(1000), work, workers=2, window=4, thread_name="t"):
            if future.result() == 3:
                raise KeyError(i)

    with pytest.raises(KeyError):
        consume()
    # The items queued behind the failure are cancelled, never run: at most one window more.
    assert max(started) < 3 + 4 + 1


def test_the_window_must_hold_an_item() -> None:
    with pytest.raises(ValueError):
        next(ordered([1], lambda i: i, workers=1, window=0, thread_name="t"))
