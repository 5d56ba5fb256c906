"""Cached pxar directory listings (warm `find`/`ls -l`) and open without I/O on v1 archives."""

from __future__ import annotations

import pytest
from support.fs_model import SPLIT, V1, listing, model_for, walk

from snapfs.errors import NotFoundError
from snapfs.fs.listing import ListingCache
from snapfs.pxar.entry import EntryKind


@pytest.fixture
def golden(vectors):
    return model_for(vectors / "datastore")


def _no_decoding(monkeypatch, accessor) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of served from the listing cache")

    monkeypatch.setattr(accessor, "listdir", fail)


def _seen(items) -> list:
    return [(i.name, i.node.ino, i.attr, i.next_offset) for i in items]


def test_second_listing_served_from_cache(golden, vectors, monkeypatch):
    root = walk(golden, f"{V1}/root.pxar")
    first = listing(golden, root, batch=5)
    assert golden.cached_opendir(root) is not None
    _no_decoding(monkeypatch, root.archive.accessor)
    again = listing(golden, root, batch=7)
    # What a second, decoded listing shows (hard links seen the first time now count in nlink).
    uncached = model_for(vectors / "datastore", listing_cache_entries=0)
    plain_root = walk(uncached, f"{V1}/root.pxar")
    listing(uncached, plain_root)
    assert uncached.cached_opendir(plain_root) is None
    assert _seen(again) == _seen(listing(uncached, plain_root))
    assert [i.name for i in again] == [i.name for i in first]
    inline = golden.cached_opendir(root)
    assert inline is not None and inline.listing is not None
    assert [i.name for i in golden.readdir(inline, 3, 2)] == [i.name for i in first[3:5]]


def test_subdirectory_cached_after_read_to_the_end(golden):
    dir_a = walk(golden, f"{V1}/root.pxar/dir_a")
    assert golden.cached_opendir(dir_a) is None
    handle = golden.opendir(dir_a)
    assert golden.readdir(handle, 0, 1)  # not read to the end yet: nothing cached
    assert golden.cached_opendir(dir_a) is None
    names = [i.name for i in listing(golden, dir_a)]
    cached = golden.cached_opendir(dir_a)
    assert cached is not None and [name for name, _ in cached.listing] == names


def test_cached_listing_counts_kernel_references_as_before(golden):
    root = walk(golden, f"{V1}/root.pxar")
    for _ in range(2):  # decoded, then cached: each item is one more kernel reference
        for item in listing(golden, root):
            golden.remember(item.node)
    file_items = [i for i in listing(golden, root) if i.name == b"acl_file"]
    ino = file_items[0].node.ino
    assert golden.node(ino).lookups == 2
    golden.forget(ino, 1)
    assert golden.node(ino).lookups == 1
    golden.forget(ino, 1)
    with pytest.raises(NotFoundError):
        golden.node(ino)


def test_hard_link_in_cached_listing_is_its_target(golden):
    root = walk(golden, f"{V1}/root.pxar")
    first = {i.name: i for i in listing(golden, root)}
    again = {i.name: i for i in listing(golden, root)}
    assert again[b"hardlink_b"].node.ino == first[b"hardlink_b"].node.ino
    assert again[b"hardlink_b"].node.ino == again[b"hardlink_a"].node.ino


def test_listing_cache_bounded_by_entry_count():
    cache = ListingCache(max_entries=10)
    cache.put((1, 0), tuple((b"x", None) for _ in range(6)))
    cache.put((1, 1), tuple((b"y", None) for _ in range(4)))
    assert cache.entries == 10 and len(cache) == 2
    assert cache.get((1, 0)) is not None  # now the most recently used
    cache.put((1, 2), ((b"z", None),))
    assert cache.get((1, 1)) is None and cache.get((1, 0)) is not None
    assert cache.entries == 7
    cache.put((1, 3), tuple((b"w", None) for _ in range(11)))  # larger than the whole cache
    assert cache.get((1, 3)) is None and cache.entries == 7
    for i in range(20):  # empty directories count 1 each: the number of keys is bounded too
        cache.put((2, i), ())
    assert len(cache) <= 10


def test_small_listing_cache_keeps_serving_correctly(vectors):
    model = model_for(vectors / "datastore", listing_cache_entries=5)
    root = walk(model, f"{V1}/root.pxar")
    first = listing(model, root)
    assert len(first) > 5 and model.cached_opendir(root) is None
    assert [i.name for i in listing(model, root)] == [i.name for i in first]


def test_v1_open_reads_nothing_split_open_checks_payload(golden, monkeypatch):
    v1 = walk(golden, f"{V1}/root.pxar/acl_file")
    split = walk(golden, f"{SPLIT}/root.pxar/acl_file")
    calls = []
    for node in (v1, split):
        acc = node.archive.accessor
        monkeypatch.setattr(acc, "read", lambda *a, _r=acc.read: calls.append(a) or _r(*a))
    assert v1.entry.kind is EntryKind.FILE
    assert bytes(golden.open(v1).read(0, 100)) == bytes(golden.open(split).read(0, 100))
    assert len(calls) == 1 and calls[0][0] is split.entry


@pytest.mark.parametrize("archive", [V1, SPLIT])
def test_a_hard_link_seen_tells_the_kernel_its_targets_nlink_grew(vectors, archive):
    """The kernel keeps attributes for good: each rise of st_nlink is pushed to it, once."""
    model = model_for(vectors / "datastore")
    told: list[int] = []
    model.notify_attrs_changed = told.append
    root = walk(model, f"{archive}/root.pxar")
    target = walk(model, f"{archive}/root.pxar/hardlink_a")
    assert model.attr(target).nlink == 1 and told == []  # its link not decoded yet
    link = walk(model, f"{archive}/root.pxar/hardlink_b")
    assert link.ino == target.ino and told == [target.ino]
    assert model.attr(target).nlink == 2
    listing(model, root)  # meets the link again: nothing new to tell
    assert told == [target.ino]


def test_a_directory_inside_an_archive_never_changes_a_group_may(golden):
    assert walk(golden, f"{V1}/root.pxar").listing_never_changes()
    assert walk(golden, f"{V1}/root.pxar/dir_a").listing_never_changes()
    assert not walk(golden, "host/testhost").listing_never_changes()
    assert not walk(golden, "host").listing_never_changes()


def test_handler_table_needs_a_mounted_session():
    """Before `pyfuse3.init` (or after `close`) there is no libfuse copy to change: refused."""
    from snapfs.fs.handler_table import HandlerTable

    assert HandlerTable.find() is None
