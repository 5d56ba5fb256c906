"""ArchiveIndex against the Accessor it is built from: the upstream-encoded vector archives (v1,
split, encrypted) must read back entry for entry, attribute for attribute, from the index."""

from __future__ import annotations

import io
import os
import sqlite3
import stat

import pytest
from support.fs_model import SPLIT, V1
from support.stores import pxar_store
from support.vectors import VECTOR_PASSWORD, accessor_for

from snapfs.errors import CorruptDataError, SnapfsError
from snapfs.index.archive import ArchiveIndex, BuildCancelled, BuildProgress, index_file_name
from snapfs.keysource import load_crypt_config
from snapfs.pxar.entry import EntryKind
from snapfs.pxar.tree import encode_tree
from snapfs.store.backend import LocalBackend
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.views.archives import SnapshotReader

ENCRYPTED = "host/testhost/2024-06-01T12:00:00Z"


@pytest.fixture(scope="module")
def crypt(vectors, tmp_path_factory):
    password = tmp_path_factory.mktemp("key") / "pw"
    password.write_bytes(VECTOR_PASSWORD)
    return load_crypt_config(vectors / "keys" / "key-scrypt.json", password_file=password)


class Recorder(BuildProgress):
    def __init__(self):
        self.done = {}

    def directory_done(self, directory, listing):
        self.done[directory.entry_offset] = listing


@pytest.mark.parametrize("snapshot", [V1, SPLIT, ENCRYPTED])
def test_index_reads_back_every_entry_as_the_accessor_decodes_it(vectors, crypt, snapshot):
    acc = accessor_for(vectors, snapshot, crypt if snapshot == ENCRYPTED else None)
    progress = Recorder()
    index = ArchiveIndex.build(acc, None, progress)
    entries = list(acc.walk())
    assert index.entries == len(entries)
    kinds = set()
    links: dict[int, int] = {}
    for entry in entries:
        kinds.add(entry.kind)
        assert index.entry(entry.entry_offset) == entry
        if entry.kind is EntryKind.HARDLINK:
            target = acc.resolve_hardlink(entry).entry_offset
            links[target] = links.get(target, 1) + 1
        if not entry.is_dir:
            continue
        expected = tuple((c.name, acc.resolve_hardlink(c)) for c in acc.listdir(entry))
        assert index.listing(entry.entry_offset) == expected
        assert progress.done[entry.entry_offset] == expected  # handed over as it completed
        for name, child in expected:
            assert index.child(entry.entry_offset, name) == child
        assert index.child(entry.entry_offset, b"no-such-name") is None
    # The vector tree has every kind, xattrs and ACLs: all of them went through the index.
    assert set(EntryKind) - {EntryKind.SOCKET} <= kinds
    assert any(e.xattrs for e in entries) and any(e.acl for e in entries)
    assert links and index.nlinks == links


@pytest.mark.parametrize("snapshot", [V1, SPLIT, ENCRYPTED])
def test_listings_after_list_each_following_directory_whole_in_archive_order(
    vectors, crypt, snapshot
):
    acc = accessor_for(vectors, snapshot, crypt if snapshot == ENCRYPTED else None)
    check_listings_after(acc)
    assert any(c.kind is EntryKind.HARDLINK for c in acc.listdir(acc.root()))


def test_listings_after_go_on_right_after_a_directory_of_files_only(tmp_path):
    tree = tmp_path / "tree"
    for name, files in (("a", 3), ("b", 2), ("b/c", 1), ("d", 0), ("e", 2)):
        (tree / name).mkdir(parents=True)
        for f in range(files):
            (tree / name / f"f{f}").write_bytes(b"x" * f)
    out = io.BytesIO()
    encode_tree(tree, out)
    store = pxar_store(tmp_path / "store", out.getvalue())
    reader = SnapshotReader(
        Datastore(LocalBackend(store)), parse_snapshot("host/bad/2024-06-01T11:00:00Z"), None
    )
    # a, b/c and d end where the next directory starts: a range that cut one of them goes on
    # from exactly there.
    check_listings_after(reader.pxar("root.pxar"))


def check_listings_after(acc) -> None:
    index = ArchiveIndex.build(acc, None)
    directories = [e for e in acc.walk() if e.is_dir]
    root = directories[0].entry_offset
    expected = {
        d.entry_offset: tuple((c.name, acc.resolve_hardlink(c)) for c in acc.listdir(d))
        for d in directories
    }
    # A window of one entry cuts nearly every directory it starts; a big one reads them all.
    for window in (1, 2, 3, 5, 1000):
        seen, after, windows = [], root, 0
        while after is not None:
            got = index.listings_after(after, window)
            offsets = [offset for offset, _ in got.listings]
            limit = float("inf") if got.read_to is None else got.read_to
            # The directories starting in the range read, whole, and none after it.
            assert offsets == [o for o in expected if after < o <= limit], (window, after)
            for offset, listing in got.listings:
                assert listing == expected[offset], (window, offset)
            seen += offsets
            after, windows = got.read_to, windows + 1
        assert seen == [d.entry_offset for d in directories[1:]]  # each once, in archive order
        # Each range goes on from the last, and once a range cuts a directory of files only,
        # the next starts after its files.
        most = (index.entries - 1) // window + 1
        assert windows < most if window == 1 else windows <= most


def test_a_kept_index_is_private_and_reloads(vectors, tmp_path):
    acc = accessor_for(vectors, V1)
    path = tmp_path / "index" / index_file_name(acc.archive.index.index_csum)
    built = ArchiveIndex.build(acc, str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    loaded = ArchiveIndex.load(str(path), name="root.pxar")
    assert loaded is not None and loaded.entries == built.entries
    root = acc.root()
    assert loaded.listing(root.entry_offset) == built.listing(root.entry_offset)


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE meta SET value = 999 WHERE key = 'schema'",
        "DELETE FROM meta WHERE key = 'format_version'",  # files_within could not pick its query
    ],
)
def test_an_index_of_another_schema_or_not_sqlite_is_ignored(vectors, tmp_path, change):
    acc = accessor_for(vectors, V1)
    path = tmp_path / "i.sqlite"
    ArchiveIndex.build(acc, str(path))
    assert ArchiveIndex.load(str(path), name="root.pxar") is not None
    db = sqlite3.connect(path)
    db.execute(change)
    db.commit()
    db.close()
    assert ArchiveIndex.load(str(path), name="root.pxar") is None
    path.write_bytes(b"not a database at all" * 100)
    assert ArchiveIndex.load(str(path), name="root.pxar") is None
    assert ArchiveIndex.load(str(tmp_path / "absent.sqlite"), name="root.pxar") is None


def test_an_index_damaged_under_a_mount_is_a_named_error_not_sqlites(vectors, tmp_path):
    acc = accessor_for(vectors, V1)
    path = tmp_path / "i.sqlite"
    ArchiveIndex.build(acc, str(path))
    loaded = ArchiveIndex.load(str(path), name="root.pxar")
    assert loaded is not None
    with open(path, "r+b") as f:  # every page after the first overwritten, as a bad disk would
        size = f.seek(0, os.SEEK_END)
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))
    root = acc.root().entry_offset
    for query in (lambda: loaded.listing(root), lambda: loaded.child(root, b"dir_a")):
        with pytest.raises(CorruptDataError, match="root.pxar: its metadata index cannot be read"):
            query()


@pytest.mark.parametrize(
    "packed",
    [
        b"\xff\x00garbage",  # not msgpack
        b"\x91\x92\xc4\x01x\x01",  # msgpack, but a child with too few columns
        b"",  # cut off
    ],
)
def test_a_damaged_packed_listing_names_its_directory(vectors, tmp_path, packed):
    acc = accessor_for(vectors, V1)
    path = tmp_path / "i.sqlite"
    built = ArchiveIndex.build(acc, str(path))
    root = acc.root().entry_offset
    directory = next(e for _, e in built.listing(root) if e.is_dir).entry_offset
    db = sqlite3.connect(path)
    db.execute("UPDATE listings SET packed = ? WHERE directory = ?", (packed, directory))
    db.commit()
    db.close()
    loaded = ArchiveIndex.load(str(path), name="root.pxar")
    assert loaded is not None and loaded.listing(root) == built.listing(root)  # the others read
    message = f"root.pxar: the listing of the directory at offset {directory} in its metadata"
    with pytest.raises(CorruptDataError, match=message):
        loaded.listing(directory)
    with pytest.raises(CorruptDataError, match=message):
        loaded.listings_after(root, 1000)


def test_a_corrupt_chunk_fails_the_build_and_leaves_no_file(tmp_path):
    tree = tmp_path / "tree"
    for d in range(8):  # 8 x 300 files of 1 KiB: entries in every 256 KiB chunk
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(300):
            (tree / f"d{d}" / f"f{f}").write_bytes(os.urandom(1024))
    out = io.BytesIO()
    encode_tree(tree, out)
    store = pxar_store(tmp_path / "store", out.getvalue())
    reader = SnapshotReader(
        Datastore(LocalBackend(store)), parse_snapshot("host/bad/2024-06-01T11:00:00Z"), None
    )
    index = reader.pxar("root.pxar").archive.index
    digest = index.digest(index.chunk_count // 2)
    chunk = store / ".chunks" / digest.hex()[:4] / digest.hex()
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    fresh = SnapshotReader(Datastore(LocalBackend(store)), reader.snapshot, None)
    built = tmp_path / "index" / "x.sqlite"
    with pytest.raises(SnapfsError, match=digest.hex()):
        ArchiveIndex.build(fresh.pxar("root.pxar"), str(built))
    assert not built.exists() and os.listdir(built.parent) == []


def test_a_cancelled_build_stops_and_leaves_no_file(vectors, tmp_path):
    class Cancelling(BuildProgress):
        def directory_done(self, directory, listing):
            self.cancelled = True  # the mount is ending: stop at the next entry

    out = tmp_path / "index" / "x.sqlite"
    with pytest.raises(BuildCancelled):
        ArchiveIndex.build(accessor_for(vectors, V1), str(out), Cancelling())
    assert os.listdir(out.parent) == []
