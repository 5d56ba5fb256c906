"""Files handed to the kernel's page cache before they are read (snapfs.fs.page_fill): which
files an archive hands over (Archive.files_beside, over the upstream vectors, unified and split),
how a split archive's file opens without blocking (Archive.cached_content), and the filler
thread's behaviour, here with a recording store in place of the kernel's (a store that waits
for a READ nobody answers is a fault a real mount cannot be made to show on demand; the real
mount is tested in test_page_fill_mount.py)."""

from __future__ import annotations

import dataclasses
import errno
import os
import threading

import pytest
from support.fs_model import SPLIT, V1, listing, model_for, walk
from support.serving import backup_image

from snapfs.backup import IMAGE_CHUNK_SIZE as CHUNK
from snapfs.errors import CorruptDataError
from snapfs.fs import indexing
from snapfs.fs.indexing import ArchiveIndexer
from snapfs.fs.page_fill import PENDING_JOBS, PageFiller
from snapfs.fs.page_store import (
    FUSE_NOTIFY_STORE,
    NOTIFY_STORE_OUT,
    OUT_HEADER,
    PageStoreProcess,
    fuse_device_fd,
)


@pytest.fixture(autouse=True)
def autouse_walk_at_once(monkeypatch):
    monkeypatch.setattr(indexing, "WALK_DIRS", 1)


def files_of(model, node) -> list:
    """Every regular file below node, as its node."""
    out = []
    for item in listing(model, node):
        child = model.lookup(node, item.name)
        if item.attr.is_dir:
            out += files_of(model, child)
        elif child.entry.is_file:
            out.append(child)
    return out


@pytest.fixture(params=[V1, SPLIT])
def indexed(vectors, request):
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(None))  # in memory
    root = walk(model, f"{request.param}/root.pxar")
    listing(model, root)  # starts the walk
    archive = root.archive
    assert archive.build is not None and archive.build.wait_finished(30)
    assert archive.index is not None
    return model, archive, files_of(model, root)


def chunk_mates(archive, file_node) -> dict[int, bytes]:
    """What the archive should hand over after a read of file_node: the other non-empty files
    whose content lies wholly in the chunk file_node's content starts in, by inode, with bytes
    (in a split archive, with the PAYLOAD header before it)."""
    split = archive.accessor.format_version != 1
    stream = archive.accessor.payload if split else archive.accessor.archive
    header = 16 if split else 0
    start, end = stream.index.chunk_range(stream.index.chunk_at(file_node.entry.content_offset))
    mates = {}
    for node in files_of(archive.model, archive.node):
        entry = node.entry
        inside = start <= entry.content_offset - header and entry.content_offset + entry.size <= end
        if inside and entry.size and node.ino != file_node.ino:
            mates[node.ino] = bytes(node.open().read(0, entry.size))
    return mates


def recording(handed: dict[int, bytes], refuse=()):
    """A hand that keeps what it takes, by inode (pieces at offset 0 only), and refuses the
    inodes of `refuse` as a kernel that does not know them yet."""

    def hand(pieces):
        taken = []
        for ino, offset, data in pieces:
            assert offset == 0
            taken.append(ino not in refuse)
            if ino not in refuse:
                handed[ino] = bytes(data)
        return taken

    return hand


def test_a_read_file_s_chunk_mates_are_handed_over_once_with_their_bytes(indexed):
    model, archive, files = indexed
    first = next(node for node in files if node.entry.size)
    content = first.open()
    content.read(0, first.entry.size)  # the chunk is decoded now, as after the mount's read
    expected = chunk_mates(archive, first)
    assert expected, "the vector archive keeps several files in one chunk"

    handed: dict[int, bytes] = {}
    job = content.files_beside()
    assert job is not None
    job(recording(handed))
    assert handed == expected
    assert content.files_beside() is None  # all of that chunk's files were taken


def test_files_the_kernel_does_not_know_yet_are_handed_at_the_next_read(indexed):
    model, archive, files = indexed
    first = next(node for node in files if node.entry.size)
    content = first.open()
    content.read(0, first.entry.size)
    expected = chunk_mates(archive, first)
    refused = min(expected)
    content.files_beside()(recording({}, refuse={refused}))
    handed: dict[int, bytes] = {}
    content.files_beside()(recording(handed))
    assert handed == {refused: expected[refused]}
    assert content.files_beside() is None


def test_a_split_file_whose_payload_header_is_not_its_own_is_not_handed_over(vectors):
    model = model_for(vectors / "datastore", indexer=ArchiveIndexer(None))
    root = walk(model, f"{SPLIT}/root.pxar")
    listing(model, root)
    archive = root.archive
    assert archive.build.wait_finished(30) and archive.index is not None
    nodes = {node.ino: node for node in files_of(model, root)}
    first = next(node for node in nodes.values() if node.entry.size)
    content = first.open()
    content.read(0, first.entry.size)
    expected = chunk_mates(archive, first)
    moved = max(expected)
    # What a PAYLOAD_REF pointing one byte into its content would give (the index records it).
    archive.index._db.execute(
        "UPDATE entries SET content_offset = content_offset + 1 WHERE offset = ?",
        (nodes[moved].entry.entry_offset,),
    )
    stream = archive.accessor.payload
    chunk = stream.index.chunk_range(stream.index.chunk_at(first.entry.content_offset))
    listed = {offset for offset, _, _ in archive.index.files_within(*chunk)}
    assert nodes[moved].entry.entry_offset in listed  # still in the chunk: the header decides
    handed: dict[int, bytes] = {}
    content.files_beside()(recording(handed))
    assert handed == {ino: data for ino, data in expected.items() if ino != moved}


def read_in_order(nodes) -> None:
    """Read each file whole, as `tar` does through the mount (the read, then the readahead the
    mount asks for after a sequential read)."""
    for node in nodes:
        content = node.open()
        content.read(0, node.entry.size)
        content.readahead(0, node.entry.size)


def chunk_of(archive, node) -> int | None:
    """The chunk the file's bytes (and a split file's PAYLOAD header) lie in, if only one."""
    split = archive.accessor.format_version != 1
    stream = archive.accessor.payload if split else archive.accessor.archive
    i = stream.index.chunk_at(node.entry.content_offset - (16 if split else 0))
    inside = node.entry.content_offset + node.entry.size <= stream.index.chunk_range(i)[1]
    return i if inside else None


def in_decoded_chunk(archive, node) -> bool:
    """Whether the file's bytes lie in one chunk, decoded."""
    i = chunk_of(archive, node)
    split = archive.accessor.format_version != 1
    stream = archive.accessor.payload if split else archive.accessor.archive
    return i is not None and stream.chunks.cache.peek(stream.index.digest(i)) is not None


def test_files_a_listing_names_are_handed_while_files_are_read_in_order(indexed):
    model, archive, files = indexed
    files = [node for node in files if node.entry.size]
    assert archive.files_listed(files) is None  # nothing read yet: a `find`, not a `tar`
    for node in files:  # every chunk decoded (the vector archive is a few MiB)
        node.open().read(0, node.entry.size)
    read_in_order(files[:2])
    listed = files[2:]
    job = archive.files_listed(listed)
    assert job is not None
    expected = {
        node.ino: bytes(node.open().read(0, node.entry.size))
        for node in listed
        if in_decoded_chunk(archive, node)
    }
    assert expected, "the vector archive keeps files after the second in a decoded chunk"
    handed: dict[int, bytes] = {}
    job(recording(handed))
    assert handed == expected


def test_listed_files_the_kernel_refuses_are_handed_at_the_next_read_in_their_chunk(indexed):
    """A listing's job can run before the kernel has linked the listing's entries: a file it
    refuses then goes over at the next read in its chunk."""
    model, archive, files = indexed
    files = [node for node in files if node.entry.size]
    for node in files:
        node.open().read(0, node.entry.size)
    read_in_order(files[:2])
    by_chunk: dict[int, list] = {}
    for node in files[2:]:
        by_chunk.setdefault(chunk_of(archive, node), []).append(node)
    first, refused, *_ = next(
        nodes for chunk, nodes in by_chunk.items() if chunk is not None and len(nodes) > 2
    )
    handed: dict[int, bytes] = {}
    archive.files_listed(files[2:])(recording(handed, refuse={refused.ino}))
    assert refused.ino not in handed and first.ino in handed
    content = first.open()
    content.read(0, first.entry.size)  # the next read in that chunk
    again: dict[int, bytes] = {}
    content.files_beside()(recording(again))
    assert again == {refused.ino: bytes(refused.open().read(0, refused.entry.size))}


def test_listed_files_whose_chunk_is_not_decoded_are_handed_at_its_first_read(indexed):
    model, archive, files = indexed
    files = [node for node in files if node.entry.size]
    read_in_order(files[:2])
    job = archive.files_listed(files[2:])
    model.cache.clear()  # none of their chunks is decoded now
    nothing: dict[int, bytes] = {}
    job(recording(nothing))
    assert nothing == {}
    # A chunk holding several of the listed files wholly: the first read of one decodes it.
    by_chunk: dict[int, list] = {}
    for node in files[2:]:
        by_chunk.setdefault(chunk_of(archive, node), []).append(node)
    first, *mates = next(
        nodes for chunk, nodes in by_chunk.items() if chunk is not None and len(nodes) > 2
    )
    content = first.open()
    content.read(0, first.entry.size)  # as the mount's READ of it
    waiting = content.files_beside()
    assert waiting is not None
    handed: dict[int, bytes] = {}
    waiting(recording(handed))
    assert handed == {node.ino: bytes(node.open().read(0, node.entry.size)) for node in mates}
    assert content.files_beside() is None  # handed once


@pytest.mark.parametrize("archive", [V1, SPLIT])
def test_nothing_is_handed_over_before_the_chunk_is_decoded_or_without_an_index(vectors, archive):
    model = model_for(vectors / "datastore", cache_size=4 << 20)
    root = walk(model, f"{archive}/root.pxar")  # no listing: no walk, no index
    node = next(n for n in files_of(model, root) if n.entry.size)
    content = node.open()
    content.read(0, node.entry.size)
    assert root.archive.index is None and content.files_beside() is None


def test_a_split_file_opens_without_blocking_once_its_payload_header_is_decoded(vectors):
    model = model_for(vectors / "datastore")
    node = next(n for n in files_of(model, walk(model, f"{SPLIT}/root.pxar")) if n.entry.size)
    model.cache.clear()
    assert node.cached_open() is None  # its payload chunk not decoded: a thread opens it
    expected = bytes(node.open().read(0, node.entry.size))
    content = node.cached_open()
    assert content is not None and bytes(content.read(0, node.entry.size)) == expected
    elsewhere = dataclasses.replace(node.entry, content_offset=node.entry.content_offset + 1)
    with pytest.raises(CorruptDataError, match="expected PAYLOAD of"):
        node.archive.cached_content(elsewhere)
    with pytest.raises(CorruptDataError, match="expected PAYLOAD of"):
        node.archive.content(elsewhere)


@pytest.fixture
def image(tmp_path):
    """A disk image of three full chunks and a last one that ends inside a page, backed up;
    (its bytes, its content as a mount opens it)."""
    data = os.urandom(3 * CHUNK + 5000)
    (tmp_path / "disk.raw").write_bytes(data)
    snapshot = backup_image(tmp_path / "ds", tmp_path / "disk.raw", "vm/100")
    model = model_for(tmp_path / "ds", cache_size=2 * CHUNK)
    return data, walk(model, f"{snapshot}/drive-scsi0.img").open()


def pieces(job) -> list[tuple[int, int, bytes]]:
    handed = []

    def hand(batch):
        handed.extend((ino, offset, bytes(data)) for ino, offset, data in batch)
        return [True] * len(batch)

    job(hand)
    return handed


def test_a_random_read_hands_the_rest_of_its_chunk_in_whole_pages(image):
    data, content = image
    at = CHUNK + 3 * 4096
    assert content.rest_of_chunk(7, at, 4096) is None  # the chunk is not decoded yet
    assert bytes(content.read(at, 4096)) == data[at : at + 4096]
    handed = pieces(content.rest_of_chunk(7, at, 4096))
    # The chunk before the read and after it, in file offsets; the read's own page left out.
    assert [(ino, offset, len(b)) for ino, offset, b in handed] == [
        (7, CHUNK, 3 * 4096),
        (7, at + 4096, 2 * CHUNK - at - 4096),
    ]
    assert all(b == data[offset : offset + len(b)] for _, offset, b in handed)


def test_pieces_end_at_the_file_s_end_and_where_the_read_starts(image):
    data, content = image
    last = 3 * CHUNK
    content.read(last, 4096)
    assert pieces(content.rest_of_chunk(1, last, 4096)) == [(1, last + 4096, data[last + 4096 :])]
    content.read(CHUNK - 4096, 4096)  # the last page of chunk 0
    assert pieces(content.rest_of_chunk(1, CHUNK - 4096, 4096)) == [(1, 0, data[: CHUNK - 4096])]


def test_a_chunk_dropped_from_the_cache_is_not_handed(image):
    data, content = image
    content.read(4096, 4096)
    content.read(CHUNK, 4096)
    content.read(2 * CHUNK, 4096)  # the cache holds two chunks: chunk 0 is gone
    assert content.rest_of_chunk(1, 4096, 4096) is None
    assert pieces(content.rest_of_chunk(1, 2 * CHUNK, 4096))[0][1] == 2 * CHUNK + 4096


class Recorder:
    """A store that records what it is given, refuses some inodes, and can be held."""

    def __init__(self, unknown=(), fail_with=None):
        self.stored: list[int] = []
        self.offsets: list[int] = []
        self.unknown = set(unknown)
        self.fail_with = fail_with
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, ino, offset, data):
        self.entered.set()
        self.release.wait()
        if ino in self.unknown:
            raise OSError(errno.ENOENT, "not known")
        if self.fail_with is not None:
            raise OSError(self.fail_with, "refused")
        self.stored.append(ino)
        self.offsets.append(offset)


def job_of(inos, taken=None, done=None, offset=0):
    def job(hand):
        try:
            oks = hand([(ino, offset, memoryview(b"x")) for ino in inos])
            if taken is not None:
                taken.update(zip(inos, oks, strict=True))
        finally:
            if done is not None:
                done.set()

    return job


def test_the_filler_hands_every_file_and_says_which_the_kernel_did_not_take():
    store = Recorder(unknown={2})
    filler = PageFiller(store)
    taken: dict[int, bool] = {}
    done = threading.Event()
    filler.submit(job_of([1, 2, 3], taken, done))
    assert done.wait(10) and filler.stop(10)
    assert store.stored == [1, 3] and taken == {1: True, 2: False, 3: True}
    assert filler.handed == 2 and filler.pending == 0


def test_the_filler_stores_each_piece_at_the_offset_it_is_handed():
    store = Recorder()
    filler = PageFiller(store)
    done = threading.Event()
    filler.submit(job_of([5], done=done, offset=3 * 4096))
    assert done.wait(10) and filler.stop(10)
    assert store.stored == [5] and store.offsets == [3 * 4096] and filler.handed == 1


def test_a_store_that_fails_otherwise_ends_the_filling():
    store = Recorder(fail_with=errno.ENODEV)  # the connection is gone
    filler = PageFiller(store)
    done = threading.Event()
    filler.submit(job_of([1, 2], done=done))
    assert done.wait(10)
    filler.submit(job_of([3]))  # stopped by the failure: dropped
    assert filler.stop(10)
    assert store.stored == [] and filler.handed == 0
    filler.submit(job_of([4]))  # stopped: dropped
    assert filler.pending == 0


def test_jobs_past_the_pending_bound_are_dropped():
    store = Recorder()
    store.release.clear()
    filler = PageFiller(store)
    filler.submit(job_of([0]))
    assert store.entered.wait(10)  # the thread holds job 0 in its store
    for ino in range(1, PENDING_JOBS + 3):
        filler.submit(job_of([ino]))
    store.release.set()
    assert filler.stop(10)
    # Job 0 ran; of the others only PENDING_JOBS could wait, and stop dropped those not started.
    assert store.stored[0] == 0 and len(store.stored) <= 1 + PENDING_JOBS


def test_stop_waits_for_a_store_and_says_if_it_is_still_held():
    store = Recorder()
    store.release.clear()
    filler = PageFiller(store)
    filler.submit(job_of([1, 2, 3]))
    assert store.entered.wait(10)
    assert filler.stop(0.2) is False  # the store waits (for a READ only the main loop answers)
    store.release.set()
    assert filler.stop(10) is True
    assert store.stored == [1]  # nothing more was handed once stopping


def notify_messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """FUSE_NOTIFY_STORE messages as /dev/fuse would get them: (inode, offset, bytes) each."""
    out = []
    while data:
        length, code, unique = OUT_HEADER.unpack_from(data)
        assert code == FUSE_NOTIFY_STORE and unique == 0
        ino, offset, size, _ = NOTIFY_STORE_OUT.unpack_from(data, OUT_HEADER.size)
        body = data[OUT_HEADER.size + NOTIFY_STORE_OUT.size : length]
        assert len(body) == size
        out.append((ino, offset, body))
        data = data[length:]
    return out


def test_the_page_store_process_writes_one_notify_store_message_per_piece():
    """The process writes to the descriptor it is given as to /dev/fuse: here a pipe, read
    back message by message."""
    read_end, write_end = os.pipe()
    store = PageStoreProcess(write_end)
    try:
        pieces = [(5, 0, memoryview(b"abc")), (9, 4096, memoryview(os.urandom(20_000)))]
        assert store.store(pieces[:1]) == [0]
        assert store.store(pieces) == [0, 0]  # the memory file is reused, larger (within the pipe)
    finally:
        store.close()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        got = notify_messages(f.read())
    expected = [(ino, offset, bytes(data)) for ino, offset, data in [pieces[0], *pieces]]
    assert got == expected


def test_a_page_store_that_cannot_write_says_so_for_every_piece():
    read_end, write_end = os.pipe()
    store = PageStoreProcess(read_end)  # not writable: as a connection gone
    try:
        assert (
            store.store([(1, 0, memoryview(b"a")), (2, 0, memoryview(b"b"))]) == [errno.EBADF] * 2
        )
    finally:
        store.close()
        os.close(read_end)
        os.close(write_end)


def test_a_page_store_process_that_is_gone_is_an_error():
    read_end, write_end = os.pipe()
    store = PageStoreProcess(write_end)
    try:
        store._proc.kill()
        store._proc.wait()
        with pytest.raises(OSError):
            store.store([(1, 0, memoryview(b"a"))])
    finally:
        store.close()
        os.close(read_end)
        os.close(write_end)


def test_the_fuse_device_is_found_among_open_descriptors():
    assert fuse_device_fd() is None
    fd = os.open("/dev/fuse", os.O_RDWR)
    try:
        assert fuse_device_fd() == fd
    finally:
        os.close(fd)
