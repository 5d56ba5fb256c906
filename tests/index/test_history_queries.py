"""HistoryIndex queries against the archives they were built from: what each archive holds, a
path's history and the changes between two archives, on random histories (archives added out of
order, pruned), and the query plans that keep them cheap on a long history."""

from __future__ import annotations

import random

import pytest

from snapfs.index import history as history_module
from snapfs.index.history import HistoryIndex, IndexedEntry, SearchFilter, Series

SERIES = Series("", "host", "web1", "root.pxar")


def entry(path: bytes, version: int) -> IndexedEntry:
    return IndexedEntry(
        path, "f", 0o100644, 0, 0, 10 + version, version, bytes([version]) * 32, None
    )


def random_history(rng: random.Random, archives: int) -> dict[int, dict[bytes, IndexedEntry]]:
    """Archive time -> its entries: paths come and go, change, and change back."""
    held: dict[bytes, IndexedEntry] = {}
    history = {}
    for time in range(100, 100 + 10 * archives, 10):
        for _ in range(rng.randrange(6)):
            path = b"/d/f%d" % rng.randrange(12)
            if path in held and rng.random() < 0.3:
                del held[path]
            else:
                held[path] = entry(path, rng.randrange(4))
        history[time] = dict(held)
    return history


def build(history: dict[int, dict[bytes, IndexedEntry]], order: list[int]) -> HistoryIndex:
    index = HistoryIndex.memory()
    for time in order:
        with index.snapshot("", "host", "web1", time, None) as writer:
            writer.add("root.pxar", time.to_bytes(8, "big"), history[time].values())
    return index


@pytest.mark.parametrize("whole", [False, True], ids=["from-spans", "whole-states"])
@pytest.mark.parametrize("seed", range(40))
def test_states_history_and_changes_match_the_archives(seed, whole, monkeypatch):
    # changes() either way: from the spans between the two archives, or the two archives whole
    monkeypatch.setattr(history_module, "_WHOLE_STATES_BELOW", 10**9 if whole else 0)
    rng = random.Random(seed)
    history = random_history(rng, rng.randrange(2, 12))
    times = list(history)
    order = times[:]
    if seed % 2:
        rng.shuffle(order)  # archives indexed out of order
    index = build(history, order)
    if seed % 3 == 0 and len(times) > 2:  # a pruned archive
        gone = rng.choice(times)
        index.forget_snapshot("", "host", "web1", gone)
        index.collect_garbage()
        times.remove(gone)
    for time in times:
        assert index.state(SERIES, time) == history[time]
    for a in times:
        for b in times:
            old, new = history[a], history[b]
            expected = {
                path: (old.get(path), new.get(path))
                for path in old.keys() | new.keys()
                if old.get(path) != new.get(path)
            }
            assert index.changes(SERIES, a, b) == expected
    for path in {p for held in history.values() for p in held}:
        found = [(hit.time, hit.entry) for hit in index.history([SERIES], path)]
        assert found == [(t, history[t][path]) for t in times if path in history[t]]


def test_path_queries_go_from_the_path_to_its_versions_and_their_spans():
    """history and search: not through every span of the series, which grows with snapshots x
    entries (children steps through the sorted paths: tests/index/test_history_children.py)."""
    index = build(random_history(random.Random(1), 5), [100, 110, 120, 130, 140])
    traced: list[str] = []
    index._db.set_trace_callback(traced.append)
    list(index.history([SERIES], b"/d/f1"))
    list(index.search(SearchFilter(name_glob="f1*")))
    index._db.set_trace_callback(None)
    queries = [q for q in traced if "FROM paths p" in q]
    assert len(queries) == 2
    for query in queries:
        plan = " / ".join(row[3] for row in index._db.execute("EXPLAIN QUERY PLAN " + query))
        assert "versions_by_path" in plan and "spans_by_version" in plan, plan
        assert "spans_by_series" not in plan, plan


def test_changes_of_adjacent_archives_read_only_the_spans_between_them():
    """1,000 paths over 20 archives, two changing per archive: a diff of two adjacent ones
    reads what changed between them, by index, not the series' spans."""
    held = {b"/f%04d" % i: entry(b"/f%04d" % i, 0) for i in range(1000)}
    history = {}
    for n, time in enumerate(range(100, 300, 10)):
        for i in (n, n + 500) if n else ():
            held[b"/f%04d" % i] = entry(b"/f%04d" % i, n % 4 + 1)
        history[time] = dict(held)
    index = build(history, list(history))
    traced: list[str] = []
    index._db.set_trace_callback(traced.append)
    changes = index.changes(SERIES, 280, 290)
    index._db.set_trace_callback(None)
    assert changes == {
        path: (history[280][path], history[290][path]) for path in (b"/f0019", b"/f0519")
    }
    (query,) = [q for q in traced if "UNION ALL" in q]
    plan = " / ".join(row[3] for row in index._db.execute("EXPLAIN QUERY PLAN " + query))
    assert "spans_by_series (series=? AND first>? AND first<?)" in plan, plan
    assert "spans_by_end (series=? AND last>? AND last<?)" in plan, plan
