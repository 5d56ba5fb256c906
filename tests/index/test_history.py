"""HistoryIndex against a brute-force model: whatever order snapshots are added and pruned in,
the state of every remaining archive is exactly what was added for it, and search finds
exactly the (snapshot, entry) pairs a scan of every archive finds."""

from __future__ import annotations

import fnmatch
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapfs.index.history import HistoryIndex, IndexedEntry, SearchFilter, Series

SERIES = (Series("", "host", "web1", "root.pxar"), Series("prod/db", "ct", "101", "root.pxar"))
NAMES = (b"/a.txt", b"/b.conf", b"/dir", b"/dir/c.txt", b"/dir/d.conf")


def _entry(path: bytes, variant: int) -> IndexedEntry:
    kind = "d" if path == b"/dir" else ("l" if variant == 3 else "f")
    return IndexedEntry(
        path,
        kind,
        0o644 | (variant == 2) << 3,
        0,
        0,
        10 * variant,
        1_700_000_000 * 10**9 + variant,
        bytes([variant]) * 32 if kind == "f" else None,
        None,
    )


# One archive: for each path, absent (None) or one of four versions.
archive_state = st.fixed_dictionaries({p: st.one_of(st.none(), st.integers(0, 3)) for p in NAMES})
operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 1), st.integers(0, 12), archive_state),
    st.tuples(st.just("prune"), st.integers(0, 1), st.integers(0, 12)),
)


def _entries(state: dict) -> dict[bytes, IndexedEntry]:
    return {p: _entry(p, v) for p, v in state.items() if v is not None}


def _apply(index: HistoryIndex, model: dict, op: tuple) -> None:
    series = SERIES[op[1]]
    when = 1_717_200_000 + op[2] * 86400
    key = (series.ns, series.type, series.id, when)
    if op[0] == "add":
        if key in model:
            return  # a snapshot's time is unique in its group
        entries = _entries(op[3])
        with index.snapshot(*key, None) as writer:
            writer.add(series.archive, repr(sorted(op[3].items())).encode(), entries.values())
        model[key] = entries
    elif key in model:
        index.forget_snapshot(*key)
        index.collect_garbage()
        del model[key]


def _check(index: HistoryIndex, model: dict) -> None:
    assert set(index.done_snapshots()) == set(model)
    for (ns, type_, bid, when), entries in model.items():
        assert index.state(Series(ns, type_, bid, "root.pxar"), when) == entries
    for (ns, type_, bid, a), old in model.items():
        for (ns_b, type_b, bid_b, b), new in model.items():
            if (ns, type_, bid) != (ns_b, type_b, bid_b):
                continue
            changes = index.changes(Series(ns, type_, bid, "root.pxar"), a, b)
            assert changes == {
                p: (old.get(p), new.get(p))
                for p in old.keys() | new.keys()
                if old.get(p) != new.get(p)
            }
    found = {
        ((hit.series.ns, hit.series.type, hit.series.id, hit.time), hit.entry)
        for hit in index.search(SearchFilter(name_glob="*.conf"))
    }
    expected = {
        (key, entry)
        for key, entries in model.items()
        for entry in entries.values()
        if fnmatch.fnmatchcase(entry.name.decode(), "*.conf")
    }
    assert found == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=25))
def test_any_order_of_adds_and_prunes_keeps_every_state(ops):
    index = HistoryIndex.memory()
    model: dict = {}
    for op in ops:
        _apply(index, model, op)
    _check(index, model)


def test_an_unchanged_entry_is_one_version_and_one_span(tmp_path):
    index = HistoryIndex.open(str(tmp_path / "i.sqlite"))
    series = SERIES[0]
    for day in range(30):
        state = {b"/a.txt": 0, b"/b.conf": day}  # a.txt never changes, b.conf always does
        with index.snapshot("", "host", "web1", day * 86400, None) as writer:
            writer.add(series.archive, bytes([day]), _entries(state).values())
    db = sqlite3.connect(tmp_path / "i.sqlite")
    (a_versions,) = db.execute(
        "SELECT count(*) FROM versions v JOIN paths p ON p.id = v.path WHERE p.path = ?",
        (b"/a.txt",),
    ).fetchone()
    (spans,) = db.execute("SELECT count(*) FROM spans").fetchone()
    assert a_versions == 1
    assert spans == 1 + 30  # a.txt: one open span; b.conf: one per day
    history = list(index.history([series], b"/a.txt"))
    assert [hit.time for hit in history] == [day * 86400 for day in range(30)]


def test_an_archive_with_a_known_checksum_is_copied_not_parsed():
    index = HistoryIndex.memory()
    entries = _entries({b"/a.txt": 1, b"/dir": 0})
    with index.snapshot("", "host", "web1", 100, None) as writer:
        writer.add("root.pxar", b"same", entries.values())
    assert index.has_csum(b"same")
    with index.snapshot("", "host", "web2", 200, None) as writer:
        assert writer.add("root.pxar", b"same", None) == 2
    assert index.state(Series("", "host", "web2", "root.pxar"), 200) == entries


def test_a_failure_inside_a_snapshot_keeps_nothing_of_it(tmp_path):
    path = str(tmp_path / "i.sqlite")
    index = HistoryIndex.open(path)
    with index.snapshot("", "host", "web1", 100, None) as writer:
        writer.add("root.pxar", b"one", _entries({b"/a.txt": 1}).values())

    def broken():
        yield _entry(b"/a.txt", 2)
        raise OSError("chunk read failed")

    with pytest.raises(OSError), index.snapshot("", "host", "web1", 200, None) as writer:
        writer.add("root.pxar", b"two", broken())
    index.close()
    reopened = HistoryIndex.open(path)
    assert set(reopened.done_snapshots()) == {("", "host", "web1", 100)}
    assert reopened.archive_times(SERIES[0]) == [100]
    assert reopened.state(SERIES[0], 100) == _entries({b"/a.txt": 1})


def test_children_is_the_union_of_a_directory_over_the_series():
    index = HistoryIndex.memory()
    for when, state in (
        (100, {b"/dir": 0, b"/dir/c.txt": 1}),
        (200, {b"/dir": 0, b"/dir/d.conf": 2}),
    ):
        with index.snapshot("", "host", "web1", when, None) as writer:
            writer.add("root.pxar", bytes([when % 256]), _entries(state).values())
    children = index.children(SERIES[0], b"/dir")
    assert {name: [t for t, _ in held] for name, held in children.items()} == {
        b"c.txt": [100],
        b"d.conf": [200],
    }
    assert set(index.children(SERIES[0], b"/")) == {b"dir"}


def test_an_index_of_another_schema_is_refused_with_its_path(tmp_path):
    path = tmp_path / "i.sqlite"
    HistoryIndex.open(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    db.commit()
    with pytest.raises(Exception, match=str(path)):
        HistoryIndex.open(str(path))


def test_content_hashes_by_place_are_kept_only_while_they_may_recur(tmp_path):
    """A v1 archive's small files change places with every backup: the table of hashes by place
    holds what the series' last two archives used, not a row per file per snapshot."""
    index = HistoryIndex.open(str(tmp_path / "i.sqlite"))
    for day in range(20):
        with index.snapshot("", "host", "web1", day * 86400, None) as writer:
            lookup, store = writer.places("root.pxar")
            assert lookup(b"stable-place") in (None, b"h" * 32)
            store(b"stable-place", b"h" * 32)  # a big file that never moves
            for n in range(50):
                place = f"{day}:{n}".encode()  # small files: a new place every day
                assert lookup(place) is None
                store(place, bytes(32))
            writer.add("root.pxar", bytes([day]), _entries({b"/a.txt": 0}).values())
    db = sqlite3.connect(tmp_path / "i.sqlite")
    (rows,) = db.execute("SELECT count(*) FROM payload_hashes").fetchone()
    assert rows == 1 + 2 * 50
    stable = db.execute(
        "SELECT content FROM payload_hashes WHERE place = ?", (b"stable-place",)
    ).fetchone()
    assert stable == (b"h" * 32,)
