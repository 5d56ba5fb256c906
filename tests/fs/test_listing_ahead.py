"""ListingReadahead over a real index of the upstream vector archive: the listings a walk asks
for next reach the listing cache before it asks, a window at a time; a damaged index only stops
the readahead (the walk reports the error when it reads the listing itself)."""

from __future__ import annotations

import sqlite3

import pytest
from support.fs_model import V1
from support.vectors import accessor_for

from snapfs.errors import CorruptDataError
from snapfs.fs.listing import ListingCache
from snapfs.fs.listing_ahead import ListingReadahead
from snapfs.index.archive import ArchiveIndex

ARCHIVE = 7  # the archive id the cache keys listings by
WINDOW = 5  # entries: the vector's first window after its root holds three directories


@pytest.fixture
def walk(vectors, tmp_path):
    """(index, directory offsets in archive order, each directory's listing) of the V1 vector."""
    acc = accessor_for(vectors, V1)
    index = ArchiveIndex.build(acc, str(tmp_path / "index.sqlite"))
    directories = [e for e in acc.walk() if e.is_dir]
    listings = {d.entry_offset: index.listing(d.entry_offset) for d in directories}
    assert len(directories) >= 5  # enough for windows of a few entries to chain
    return index, [d.entry_offset for d in directories], listings


def cached(cache: ListingCache) -> set[int]:
    return {offset for (archive, offset) in cache._lists if archive == ARCHIVE}


def test_a_listing_read_alone_brings_the_window_after_it_and_a_walk_the_next(walk):
    index, offsets, listings = walk
    cache = ListingCache()
    ahead = ListingReadahead(cache, window=WINDOW)
    ahead.read_after(ARCHIVE, index, offsets[0])
    first = index.listings_after(offsets[0], WINDOW)
    assert len(first.listings) == 3 and cached(cache) == {offset for offset, _ in first.listings}
    for offset, _ in first.listings:
        assert cache.get((ARCHIVE, offset)) == listings[offset]
    assert "1 alone; read-ahead windows: 1" in ahead.summary()
    # Read on the thread once the walk is past the middle of the window.
    second = index.listings_after(first.read_to, WINDOW)
    middle = first.listings[len(first.listings) // 2][0]
    assert middle != first.listings[0][0] and second.listings
    for offset, _ in first.listings:
        if offset < middle:
            ahead.listed(ARCHIVE, index, offset)  # before the middle: nothing more is read
    assert ahead.windows == 1
    ahead.listed(ARCHIVE, index, middle)
    ahead.close()  # lets the window being read finish
    assert ahead.windows == 2
    for offset, listing in second.listings:
        assert cache.get((ARCHIVE, offset)) == listings[offset] == listing
    ahead.listed(ARCHIVE, index, second.listings[-1][0])  # closed: nothing more
    ahead.read_after(ARCHIVE, index, offsets[0])
    assert ahead.windows == 2


def test_a_damaged_index_stops_the_readahead_and_the_walk_reports_it(walk, tmp_path):
    index, offsets, _ = walk
    cache = ListingCache()
    ahead = ListingReadahead(cache)
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("DROP TABLE listings")  # as a disk error would leave it, under the mount
    db.commit()
    db.close()
    ahead.read_after(ARCHIVE, index, offsets[0])  # a hint: no error here
    assert cached(cache) == set()
    with pytest.raises(CorruptDataError, match="its metadata index cannot be read"):
        index.listing(offsets[1])
