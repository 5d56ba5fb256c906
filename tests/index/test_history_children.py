"""HistoryIndex.children and .versions (what `GROUP/.versions` lists) against a brute force over
the archives they were built from: names that sort around '/' and '0', other series sharing the
paths, versions that come back, pruned snapshots."""

from __future__ import annotations

import random

from snapfs.index.history import HistoryIndex, IndexedEntry, Series

WEB = Series("", "host", "web", "root.pxar")
DB = Series("", "host", "db", "root.pxar")
# Names that sort between a directory and what lies below it ('-' '.' < '/' < '0'), or right
# after it, and one with a byte no UTF-8 has.
NAMES = [b"a", b"a-b", b"a.txt", b"a0", b"ab", b"a\xff", b"b"]


def entry(path: bytes, type: str, content: bytes = b"") -> IndexedEntry:
    return IndexedEntry(path, type, 0o100644 if type == "f" else 0o40755, 0, 0, 1, 7, content, None)


def random_archive(rng: random.Random) -> dict[bytes, IndexedEntry]:
    """A tree over NAMES two levels deep; files hold one of two contents, so versions recur."""
    tree = {b"/": entry(b"/", "d")}
    for name in NAMES:
        if rng.random() < 0.2:
            continue
        path = b"/" + name
        if rng.random() < 0.5:
            tree[path] = entry(path, "d")
            for inner in rng.sample(NAMES, 3):
                tree[path + b"/" + inner] = entry(path + b"/" + inner, "f", rng.choice(b"xy"))
        else:
            tree[path] = entry(path, "f", rng.choice([b"x", b"y"]))
    return tree


def add(index: HistoryIndex, series: Series, time: int, tree: dict) -> None:
    with index.snapshot(series.ns, series.type, series.id, time, None) as writer:
        writer.add(series.archive, time.to_bytes(8, "big") + series.id.encode(), tree.values())


def expected(archives: dict[int, dict], directory: bytes) -> dict:
    """Brute force: every archive's entries right below `directory`, each distinct one at the
    first time it appears."""
    prefix = directory.rstrip(b"/") + b"/"
    found: dict[bytes, dict[IndexedEntry, int]] = {}
    for time in sorted(archives):
        for path, e in archives[time].items():
            rest = path[len(prefix) :]
            if path.startswith(prefix) and rest and b"/" not in rest:
                found.setdefault(rest, {}).setdefault(e, time)
    return {
        name: sorted(((t, e) for e, t in held.items()), key=lambda v: v[0])
        for name, held in found.items()
    }


def test_children_and_versions_equal_brute_force_through_prune():
    rng = random.Random(3)
    index = HistoryIndex.memory()
    archives = {1000 + i: random_archive(rng) for i in range(8)}
    for time, tree in archives.items():
        add(index, WEB, time, tree)
        add(index, DB, time, random_archive(rng))  # other series share the paths table
    directories = [b"/", *(b"/" + name for name in NAMES), b"/nowhere"]

    def check() -> None:
        for directory in directories:
            want = expected(archives, directory)
            assert index.children(WEB, directory) == want, directory
            for name, versions in want.items():
                path = directory.rstrip(b"/") + b"/" + name
                assert index.versions(WEB, path) == versions

    check()
    for time in (1000, 1003):  # prune: a version's first time moves to the next archive
        index.forget_snapshot("", "host", "web", time)
        del archives[time]
        check()
        index.collect_garbage()
        check()
    assert index.children(Series("", "host", "none", "root.pxar"), b"/") == {}
    assert index.versions(WEB, b"/not-there") == []


def test_a_version_that_comes_back_is_one_version_at_its_first_time():
    index = HistoryIndex.memory()
    one, two = entry(b"/f", "f", b"1"), entry(b"/f", "f", b"2")
    for time, version in ((10, one), (20, two), (30, one)):
        add(index, WEB, time, {b"/": entry(b"/", "d"), b"/f": version})
    assert index.children(WEB, b"/") == {b"f": [(10, one), (20, two)]}
