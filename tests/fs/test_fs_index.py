"""The mount's archive indexes (snapfs.fs.indexing): built by one background walk, kept by index
checksum, and then answering every lookup and listing without decoding the archive again."""

from __future__ import annotations

import os

import pytest
from support.fs_model import SPLIT, V1, listing, model_for, walk
from support.vectors import VECTOR_PASSWORD

from snapfs.errors import NotFoundError
from snapfs.fs import indexing
from snapfs.fs.indexing import ArchiveIndexer
from snapfs.index.archive import index_file_name
from snapfs.keysource import load_crypt_config

ENCRYPTED = "host/testhost/2024-06-01T12:00:00Z"


@pytest.fixture(autouse=True)
def autouse_walk_at_once(monkeypatch):
    """The vector archives have a few directories: index them at the first listing."""
    monkeypatch.setattr(indexing, "WALK_DIRS", 1)


def indexed(model, snapshot: str):
    """Open the archive, list its root (which starts the walk) and wait for the index."""
    root = walk(model, f"{snapshot}/root.pxar")
    listing(model, root)
    archive = root.archive
    assert archive.build is not None and archive.build.wait_finished(30)
    assert archive.index is not None
    return root


def everything(model, node, path=b"") -> list:
    """Every entry below node as (path, ino, attr), looked up by name as the kernel does."""
    out = []
    for item in listing(model, node):
        child = model.lookup(node, item.name)
        assert child.ino == item.node.ino and child.attr() == item.attr
        out.append((path + b"/" + item.name, item.node.ino, item.attr))
        if item.attr.is_dir:
            out += everything(model, child, path + b"/" + item.name)
    return out


def fetches(model) -> int:
    return sum(r.fetches for r in model.chunk_readers.values() if r is not None)


@pytest.mark.parametrize("snapshot", [V1, SPLIT])
def test_a_kept_index_answers_a_later_mount_without_decoding(vectors, tmp_path, snapshot):
    first = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)))
    expected = everything(first, indexed(first, snapshot))
    [kept] = os.listdir(tmp_path)
    assert oct(os.stat(tmp_path / kept).st_mode & 0o777) == "0o600"

    later = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)))
    root = walk(later, f"{snapshot}/root.pxar")
    assert root.archive.index is not None  # loaded at open: no walk
    opened = fetches(later)
    assert everything(later, root) == expected
    assert fetches(later) == opened  # not one chunk decoded for any lookup or listing


def test_an_index_of_another_schema_is_removed_once_this_one_is_built(vectors, tmp_path):
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)))
    csum = walk(model, f"{V1}/root.pxar").archive.accessor.archive.index.index_csum.hex()
    old = tmp_path / f"{csum}.v3.sqlite"
    other = tmp_path / f"{'0' * len(csum)}.v3.sqlite"  # another archive's: not ours to remove
    for path in (old, other):
        path.write_bytes(b"an index of an earlier version")
    indexed(model, V1)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [other.name, index_file_name(bytes.fromhex(csum))]
    )


def test_indexed_listings_are_the_decoded_ones_with_every_hard_link_counted(vectors, tmp_path):
    plain = model_for(vectors / "datastore")
    decoded = everything(plain, walk(plain, f"{V1}/root.pxar"))
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)))
    from_index = everything(model, indexed(model, V1))
    assert [(p, i) for p, i, _ in from_index] == [(p, i) for p, i, _ in decoded]
    for (path, _, ours), (_, _, theirs) in zip(from_index, decoded, strict=True):
        assert (ours.mode, ours.uid, ours.gid, ours.size, ours.mtime_ns, ours.rdev) == (
            theirs.mode,
            theirs.uid,
            theirs.gid,
            theirs.size,
            theirs.mtime_ns,
            theirs.rdev,
        ), path
    # The vector tree holds one hard link pair: both names show st_nlink 2 from the start,
    # where decoding counts a link only once it has been listed.
    linked = [(p, a) for p, _, a in from_index if a.nlink == 2]
    assert len(linked) == 2 and linked[0][1].ino == linked[1][1].ino


def test_an_encrypted_archive_is_indexed_in_memory_only(vectors, tmp_path):
    password = tmp_path / "pw"
    password.write_bytes(VECTOR_PASSWORD)
    crypt = load_crypt_config(vectors / "keys" / "key-scrypt.json", password_file=password)
    kept = tmp_path / "index"
    model = model_for(vectors / "datastore", crypt, indexer=ArchiveIndexer(str(kept)))
    root = indexed(model, ENCRYPTED)
    assert [p for p, _, _ in everything(model, root)]
    assert not kept.exists()  # no name of an encrypted archive reached the disk


def test_an_archive_is_indexed_only_once_it_is_walked(vectors, tmp_path, monkeypatch):
    monkeypatch.setattr(indexing, "LARGE_ARCHIVE", 0)
    monkeypatch.setattr(indexing, "LARGE_WALK_DIRS", 3)
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)))
    root = walk(model, f"{V1}/root.pxar")
    listing(model, root)
    dir_a = model.lookup(root, b"dir_a")
    listing(model, dir_a)
    assert root.archive.build is None  # an ls or two: decoded as asked, no walk
    listing(model, model.lookup(dir_a, b"nested"))
    assert root.archive.build is not None and root.archive.build.wait_finished(30)
    assert root.archive.index is not None


def test_without_indexing_nothing_is_built_or_kept(vectors, tmp_path):
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path), enabled=False))
    root = walk(model, f"{V1}/root.pxar")
    everything(model, root)
    assert root.archive.build is None and root.archive.index is None
    assert os.listdir(tmp_path) == []


def handed_out(model, node) -> list:
    """Every entry below node as the kernel gets it from readdirplus: remembered, by inode."""
    out = []
    for item in listing(model, node):
        out.append((item.node.ino, item.node.entry, item.attr))
        model.remember(item.node)
        if item.attr.is_dir:
            out += handed_out(model, item.node)
    return out


@pytest.mark.parametrize("snapshot", [V1, SPLIT])
def test_an_indexed_archive_keeps_no_node_per_entry_and_makes_each_again(
    vectors, tmp_path, snapshot
):
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)))
    indexed(model, snapshot)
    later = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)), recent_nodes=2)
    root = walk(later, f"{snapshot}/root.pxar")
    given = handed_out(later, root)
    assert len({ino for ino, _, _ in given}) > 10
    assert later.entries_referenced == 0  # nothing counted: only the last two nodes kept
    for ino, entry, attr in given:  # long evicted: made again from the index, the same
        node = later.node(ino)
        assert node.ino == ino and node.entry == entry and node.attr() == attr
        later.forget(ino, 1)  # the kernel's forget of a node not kept is nothing
    assert later.node(given[0][0]).entry == given[0][1]
    with pytest.raises(NotFoundError):  # no entry starts there: never an inode handed out
        later.node(given[0][0] + 1)


def test_nodes_counted_before_the_index_are_given_up_once_it_is_there(
    vectors, tmp_path, monkeypatch
):
    monkeypatch.setattr(indexing, "LARGE_ARCHIVE", 0)  # no walk starts by itself: not at
    monkeypatch.setattr(indexing, "LARGE_WALK_DIRS", 1000)  # a hard link, not after listings
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(str(tmp_path)), recent_nodes=2)
    root = walk(model, f"{V1}/root.pxar")
    given = handed_out(model, root)
    inodes = {ino for ino, _, _ in given}
    assert model.entries_referenced == len(inodes)  # decoded, no index: each kept while held

    archive = root.archive
    assert archive.build is None
    archive.build = model.indexer.build_in_background(archive, archive.encrypted)
    assert archive.build.wait_finished(30) and archive.index is not None
    model.forget(given[0][0], 1)  # the next request on the FUSE thread gives them up
    assert model.entries_referenced == 0
    for ino, entry, attr in given:
        node = model.node(ino)
        assert node.entry == entry and node.attr() == attr


def listed_with_parents(model, node) -> list:
    """`handed_out`, each entry remembered with the directory it was listed in, as readdirplus
    remembers it."""
    out = []
    for item in listing(model, node):
        out.append((item.node.ino, item.node.entry, item.attr))
        model.remember(item.node, node)
        if item.attr.is_dir:
            out += listed_with_parents(model, item.node)
    return out


@pytest.mark.parametrize("snapshot", [V1, SPLIT])
def test_without_an_index_files_are_kept_as_where_they_were_found(vectors, snapshot):
    model = model_for(vectors / "datastore", recent_nodes=2, listing_cache_entries=0)
    root = walk(model, f"{snapshot}/root.pxar")
    given = listed_with_parents(model, root)
    inodes = {ino for ino, _, _ in given}
    assert model.entries_referenced == len(inodes)  # every one counted ...
    whole = [ino for ino, entry, _ in given if entry.is_dir or ino in model._entries]
    assert len(model._entries) == len(set(whole)) < len(inodes) // 2  # ... few kept whole
    for ino, entry, attr in given:  # evicted long ago: its directory is decoded again
        node = model.node(ino)
        assert node.ino == ino and node.entry == entry and node.attr() == attr
    for ino in inodes:
        model.forget(ino, model.references(ino))
    assert model.entries_referenced == 0
    with pytest.raises(NotFoundError):
        model.node(given[-1][0])


def test_a_file_then_known_as_a_hard_links_target_keeps_its_references(vectors):
    model = model_for(vectors / "datastore", recent_nodes=2)
    root = walk(model, f"{V1}/root.pxar")
    items = {i.name: i for i in listing(model, root)}
    target = items[b"hardlink_a"].node
    archive = root.archive
    met = dict(archive.links)
    archive.links.clear()  # as if the link had not been met yet: a plain file
    model.remember(target, root)
    assert target.ino in model._parents
    archive.links.update(met)
    model.remember(items[b"hardlink_b"].node, root)  # now known as a target: kept whole
    assert target.ino not in model._parents and model.references(target.ino) == 2
