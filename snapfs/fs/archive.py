"""pxar archives as directories: the archive's node, the opened archive, and its entries' nodes.

Inodes: an entry gets `archive_id << 44 | entry_offset`, so it is stable for the life of the
mount without a global table; the model's table maps it back only while the kernel references it
(`counted`). A hard link is its target's inode. Its target's st_nlink counts every link once the
archive is indexed; before, the links seen so far (pxar records links only at the link), and
the first hard link met starts the indexing walk (`indexing.py`): every member of a link group
soon shows the group's size. Attributes are final otherwise, so the kernel keeps them (and the
listings, `listing_cache.py`) for good; each st_nlink that grows is pushed to it
(`FsModel.attrs_changed`).

Index: once the archive's ArchiveIndex exists (kept by an earlier mount, or built by the walk
`indexing.py` starts), lookups and listings come from it, inline and without decoding; until then
they decode the archive through the Accessor.

Threading: one pxar Accessor is not thread-safe, so its metadata calls hold the archive's lock;
file content is read from the archive's IndexStreams directly (at the entry's `content_offset`),
which are thread-safe, so concurrent readers of one archive do not serialise.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lru import LRU

from snapfs.errors import SnapfsError, TruncatedDataError, UnsupportedFormatError
from snapfs.format.archive_names import PxarNames
from snapfs.fs.content import ArchiveScan, Content, FilesJob, Hand, Piece
from snapfs.fs.listing import (
    CachedListingHandle,
    DecodingHandle,
    DirHandle,
    IndexedListingHandle,
    Listing,
)
from snapfs.fs.node import DOT_NAMES, Attr, DatastoreNode, Node
from snapfs.index.archive import ArchiveIndex
from snapfs.pxar import acl as aclmod
from snapfs.pxar.accessor import Accessor, check_payload_header
from snapfs.pxar.entry import Acl, Entry, EntryKind
from snapfs.pxar.format import HEADER_SIZE, is_payload_header
from snapfs.store.stream import IndexStream

if TYPE_CHECKING:
    from snapfs.fs.indexing import IndexBuild
    from snapfs.fs.model import FsModel
    from snapfs.fs.snapshot import SnapshotNode

ARCHIVE_SHIFT = 44
MAX_ARCHIVES = (1 << (63 - ARCHIVE_SHIFT)) - 1
#: Entry offsets an inode number holds; datastore-level nodes are numbered below it too.
OFFSET_MASK = (1 << ARCHIVE_SHIFT) - 1
#: Chunks an archive remembers having handed every file of (`files_beside`): 4 GiB of 4 MiB
#: chunks, about what a page cache keeps; a chunk read again after that hands them out again.
FILLED_CHUNKS = 1024
#: Chunks whose files were handed out in part, kept with the files left (a few hundred each).
PART_FILLED_CHUNKS = 32

#: A regular file's inode, where its content starts in its stream, and its size.
_StoredFile = tuple[int, int, int]

# An enum member read as a class attribute costs ~70 ns on Python 3.11 (measured), a module
# global ~15: the per-entry paths (every readdir item, every lookup) compare against these.
_DIRECTORY, _FILE, _SYMLINK, _HARDLINK = (
    EntryKind.DIRECTORY,
    EntryKind.FILE,
    EntryKind.SYMLINK,
    EntryKind.HARDLINK,
)


class ArchiveNode(DatastoreNode):
    """`root.pxar/`: the archive's root directory, opened when first entered or stat'ed."""

    __slots__ = ("snapshot_node", "name", "archive", "_lock")

    def __init__(self, model: FsModel, path: str, snapshot_node: SnapshotNode, name: str) -> None:
        super().__init__(model, path, snapshot_node.mtime_ns)
        self.snapshot_node = snapshot_node
        self.name = name
        self.archive: Archive | None = None
        self._lock = threading.Lock()

    def load(self) -> Archive:
        """Blocking on first call: reads the index(es) and the archive's root entry."""
        if self.archive is None:
            with self._lock:
                if self.archive is None:
                    state = self.snapshot_node.state()
                    parts = PxarNames.of(self.name).files
                    files = [f for f in state.reader.manifest.files if f.filename in parts]
                    for f in files:
                        state.require_key(f)
                    accessor = state.reader.pxar(self.name)
                    encrypted = any(f.crypt_mode == "encrypt" for f in files)
                    self.archive = Archive(self.model, self, accessor, encrypted=encrypted)
        return self.archive

    def attr(self, load: bool = True) -> Attr:
        archive = self.archive
        if archive is None and load:
            try:
                archive = self.load()
            except SnapfsError as exc:
                self.model.report(exc, self.path)
        if archive is None:
            return self.attr_of_size(0, final=False)
        return archive.entry_attr(archive.root, self.ino)

    def lookup(self, name: bytes) -> Node:
        archive = self.load()
        return archive.lookup(self, archive.root, name)

    def cached_lookup(self, name: bytes) -> Node | None:
        archive = self.archive
        if archive is None:
            return unknown_child(self, name)
        return archive.cached_lookup(self, archive.root, name)

    def opendir(self) -> DirHandle:
        archive = self.load()
        return archive.opendir(self, archive.root)

    def cached_opendir(self) -> DirHandle | None:
        archive = self.archive
        return None if archive is None else archive.cached_opendir(self, archive.root)

    def listing_never_changes(self) -> bool:
        return True


class Archive:
    """One opened pxar archive: its Accessor (behind a lock), id, and hard-link counts; and,
    once it is built, its ArchiveIndex, which then answers every lookup and listing."""

    def __init__(
        self, model: FsModel, node: ArchiveNode, accessor: Accessor, *, encrypted: bool
    ) -> None:
        self.model = model
        self.node = node
        self.accessor = accessor
        self.encrypted = encrypted
        self.lock = threading.Lock()
        self.id = model.add_archive(self)
        self.root = accessor.root()
        self.links: dict[int, set[int]] = {}  # target entry_offset -> link entry_offsets seen
        self.index: ArchiveIndex | None = model.indexer.load(accessor, encrypted)
        self._dirs_listed = 0
        self._indexing = self.index is not None
        self.build: IndexBuild | None = None  # the indexing walk, once one started
        self.scan = ArchiveScan()  # files read in archive order get the stream read ahead
        #: Chunks whose files `files_beside` found in the index all handed out lately.
        self._filled: LRU = LRU(FILLED_CHUNKS)
        #: Files to hand at the next read in their chunk, by chunk: listed before the chunk was
        #: decoded, or refused by the kernel (changed by the filler thread only).
        self._awaiting: LRU = LRU(PART_FILLED_CHUNKS)
        #: Set once directory listings hand files over (`files_listed`).
        self._fill_by_listing = False

    def ino(self, entry: Entry) -> int:
        return self.ino_at(entry.entry_offset)

    def ino_at(self, entry_offset: int) -> int:
        """The inode of the entry at `entry_offset`."""
        if entry_offset == 0:
            return self.node.ino
        if entry_offset > OFFSET_MASK:
            raise UnsupportedFormatError(
                f"{self.accessor.name}: entry at offset {entry_offset} is beyond what inode numbers hold"
            )
        return (self.id << ARCHIVE_SHIFT) | entry_offset

    def node_at(self, entry_offset: int) -> PxarNode | None:
        """The node of the entry at `entry_offset`, made from the index (blocking: SQLite);
        None without an index, or if no entry an inode can name starts there (a hard link is
        its target's inode, never its own)."""
        index = self.index
        entry = None if index is None else index.entry(entry_offset)
        if entry is None or entry.kind is _HARDLINK:
            return None
        return self.entry_node(entry)

    def entry_node(self, entry: Entry) -> PxarNode:
        """The node of a (resolved) entry, of the class its kind needs."""
        kind = entry.kind
        if kind is _DIRECTORY:
            return PxarDirNode(self, entry)
        if kind is _FILE:
            return PxarFileNode(self, entry)
        if kind is _SYMLINK:
            return PxarSymlinkNode(self, entry)
        return PxarNode(self, entry)

    def path(self, entry: Entry) -> str:
        """The entry's path in the mount, for messages."""
        path = entry.path
        return f"{self.node.path}{os.fsdecode(path if path.startswith(b'/') else b'/' + path)}"

    def resolve(self, entry: Entry) -> Entry:
        """A hard link's target (recording the link); anything else as is. Caller holds the lock."""
        if entry.kind is not _HARDLINK:
            return entry
        target = self.accessor.resolve_hardlink(entry)
        seen = self.links.setdefault(target.entry_offset, set())
        if entry.entry_offset not in seen:
            seen.add(entry.entry_offset)
            self.model.attrs_changed([self.ino_at(target.entry_offset)])
        if not self._indexing and self.model.indexer.should_build(
            self.accessor, self._dirs_listed, hard_link_seen=True
        ):
            self._indexing = True
            self.build = self.model.indexer.build_in_background(self, self.encrypted)
        return target

    def lookup(self, parent: Node, directory: Entry, name: bytes) -> PxarNode:
        """The child `name` of a directory entry (blocking)."""
        found = self.cached_lookup(parent, directory, name)
        if found is not None:
            return found
        with self.lock:
            found = self.accessor.lookup_child(directory, name)
            if found is None:
                raise parent.no_entry(name)
            found = self.resolve(found)
        return self.entry_node(found)

    def cached_lookup(self, parent: Node, directory: Entry, name: bytes) -> PxarNode | None:
        """The child `name` from the index (no decoding); None while there is no index."""
        index = self.index
        if index is None:
            return unknown_child(parent, name)
        found = index.child(directory.entry_offset, name)
        if found is None:
            raise parent.no_entry(name)
        return self.entry_node(found)

    def opendir(self, node: Node, directory: Entry) -> DirHandle:
        """A handle on a directory entry: from the listing cache or the index, else decoding as
        it goes (blocking). Counts the listing towards indexing the archive."""
        self._note_listing()
        key = (self.id, directory.entry_offset)
        listing = self.model.listings.get(key)
        build = self.build
        if listing is None and build is not None and self.index is None:
            build.wait_for(directory)
            listing = self.model.listings.get(key)
        if listing is not None:
            return CachedListingHandle(node, self, directory, listing)
        if self.index is None:
            return DecodingHandle(node, self, directory)
        return IndexedListingHandle(node, self, directory)

    def indexed_listing(self, directory: Entry) -> Listing:
        """A directory entry's listing read from the index (blocking), kept for the next open,
        and the listings that follow it read ahead (snapfs.fs.listing_ahead)."""
        index = self.index
        assert index is not None
        listing = index.listing(directory.entry_offset)
        self.keep_listing(directory, listing)
        self.model.listing_readahead.read_after(self.id, index, directory.entry_offset)
        return listing

    def cached_listing_read(self, directory: Entry) -> None:
        """A cached listing is read from its start (never blocks): a walk through listings
        read ahead may be due the next window. Not at its opening: a kernel that keeps the
        listing opens the directory but reads nothing."""
        index = self.index
        if index is not None:
            self.model.listing_readahead.listed(self.id, index, directory.entry_offset)

    def _note_listing(self) -> None:
        """Start indexing once the indexer's policy says this archive is being browsed."""
        if self._indexing:
            return
        self._dirs_listed += 1
        indexer = self.model.indexer
        with self.lock:
            if self._indexing or not indexer.should_build(self.accessor, self._dirs_listed):
                return
            self._indexing = True
        self.build = indexer.build_in_background(self, self.encrypted)

    def cached_opendir(self, node: Node, directory: Entry) -> DirHandle | None:
        """A handle on a directory entry whose listing is cached or indexed (never blocks: an
        indexed listing is read at the handle's first read); else None."""
        listing = self.model.listings.get((self.id, directory.entry_offset))
        if listing is not None:
            return CachedListingHandle(node, self, directory, listing)
        if self.index is not None:
            return IndexedListingHandle(node, self, directory)
        return None

    def keep_listing(self, directory: Entry, listing: Listing) -> None:
        """A directory entry was listed to its end: later handles serve it from memory."""
        self.model.listings.put((self.id, directory.entry_offset), listing)

    def use_index(self, index: ArchiveIndex) -> None:
        """From now on lookups and listings come from `index`, and every st_nlink is exact."""
        self.index = index
        self.model.attrs_changed(self.ino_at(offset) for offset in index.nlinks)
        self.model.archive_indexed(self.id)

    def entry_attr(self, entry: Entry, ino: int | None = None) -> Attr:
        model = self.model
        size = 0
        nlink = 1
        if entry.kind is _FILE:
            size = entry.size
            index = self.index
            if index is None:
                nlink += len(self.links.get(entry.entry_offset, ()))
            else:
                nlink = index.nlinks.get(entry.entry_offset, 1)
        elif entry.kind is _SYMLINK:
            size = len(entry.link_target or b"")
        rdev = os.makedev(*entry.device) if entry.device is not None else 0
        uid, gid = (model.uid, model.gid) if model.map_owner else (entry.uid, entry.gid)
        return Attr(
            self.ino(entry) if ino is None else ino,
            entry.mode,
            nlink,
            uid,
            gid,
            size,
            rdev,
            entry.mtime_ns,
        )

    def content(self, entry: Entry) -> Content:
        """A regular file's bytes as a window on the stream that holds them. No I/O for a v1
        archive; a split archive's content starts where the PAYLOAD header its entry points at
        ends, and that header is read and checked first (blocking)."""
        content = self._content(entry)
        if self.accessor.format_version != 1 and entry.size:
            with self.lock:
                self.accessor.read(entry, 0, 1)  # reads and checks the header
        return content

    def cached_content(self, entry: Entry) -> Content | None:
        """`content` without blocking: None for a split archive's file whose PAYLOAD header is
        not in a chunk decoded already. A reader going through the archive nearly always finds
        it there (in the chunk of the file before, or one read ahead), and the event loop then
        opens the file without a thread."""
        content = self._content(entry)
        if self.accessor.format_version != 1 and entry.size:
            pos = content.base - HEADER_SIZE
            if pos < 0 or content.base + entry.size > content.stream.size:
                return None  # `content` names what is wrong
            head = content.stream.view_at(pos, HEADER_SIZE, block=False)
            if head is None:
                return None
            check_payload_header(entry, head, self.accessor.payload_name)
        return content

    def _content(self, entry: Entry) -> Content:
        acc = self.accessor
        if entry.kind is not _FILE or entry.content_offset is None:
            raise UnsupportedFormatError(f"{acc.name}: {entry.path!r} is not a regular file")
        source = self._content_stream()
        if source is None:
            raise UnsupportedFormatError(
                f"{acc.name}: content of {entry.path!r} is not in an index stream"
            )
        if acc.format_version == 1 and entry.content_offset + entry.size > source.size:
            raise TruncatedDataError(
                f"{acc.name}: content of {entry.path!r} ({entry.size} bytes at offset "
                f"{entry.content_offset}) runs past the end of the archive"
            )
        return Content(
            source, entry.content_offset, entry.size, self.path(entry), self.scan, self.files_beside
        )

    def files_listed(self, nodes: Iterable[PxarNode]) -> FilesJob | None:
        """While a reader goes through this archive's files in order (`tar`, `cp -r`): the job
        that hands over the files of `nodes`, entries a directory listing just gave the kernel.
        The kernel knows their inodes from that listing, and the reader comes to them next: it
        then reads them from the page cache, with no READ and no wait.

        Nothing is decoded for it. A file whose chunk is not decoded yet waits for it: the
        first read in that chunk hands it over (`files_beside`). A reader that lists without
        reading (`find`, `ls`) is not going through the files in order: nothing is handed."""
        if not self.scan.in_order:
            return None
        stream = self._content_stream()
        if stream is None:
            return None
        files = [
            (node.ino, entry.content_offset, entry.size)
            for node in nodes
            if (entry := node.entry).kind is _FILE
            and entry.size
            and entry.content_offset is not None
        ]
        if not files:
            return None
        self._fill_by_listing = True
        chunks = stream.index

        def hand_over(hand: Hand) -> None:
            by_chunk: dict[int, list[_StoredFile]] = {}
            for file in files:
                by_chunk.setdefault(chunks.chunk_at(self._stored_at(file[1])), []).append(file)
            decoded = []
            for i, inside in by_chunk.items():
                data = stream.chunks.cache.peek(chunks.digest(i))
                if data is None:
                    self._await_chunk(i, inside)
                else:
                    decoded.append((i, data, inside))
            self._hand_over(hand, stream, decoded)

        return hand_over

    def files_beside(self, content: Content) -> FilesJob | None:
        """For a file of this archive read from its start (`content`), once the chunk it starts
        in is decoded: the job that hands over other files stored in that chunk.

        While directory listings drive the handing (`files_listed`), those are the files listed
        before their chunk was decoded. Otherwise (the kernel had the listings already, from a
        `find` before) they are the other files stored wholly in the chunk, found in the
        archive's index; the kernel takes only files it knows, those of directories already
        listed: the others are kept for the next read in the chunk, which comes once their
        directory is. None without an index."""
        stream, base = content.stream, content.base
        chunks = stream.index
        i = chunks.chunk_at(base)
        index = self.index
        by_index = not self._fill_by_listing and index is not None and i not in self._filled
        if i not in self._awaiting and not by_index:
            return None
        data = stream.chunks.cache.peek(chunks.digest(i))
        if data is None:
            return None

        def hand_over(hand: Hand) -> None:
            files = self._awaiting.pop(i, None)
            if files is None:
                if not by_index or i in self._filled:  # by a job queued before this one
                    return
                start, end = chunks.chunk_range(i)
                found = index.files_within(start, end)  # type: ignore[union-attr]
                files = [(self.ino_at(offset), at, size) for offset, at, size in found]
            files = [f for f in files if f[1] != base]  # being read: the kernel has it
            self._hand_over(hand, stream, [(i, data, files)])
            if by_index and i not in self._awaiting:  # all taken: the index is not asked again
                self._filled[i] = True

        return hand_over

    def _hand_over(
        self, hand: Hand, stream: IndexStream, decoded: list[tuple[int, bytes, list[_StoredFile]]]
    ) -> None:
        """Hand `hand` the files of each (chunk index, decoded chunk, files) at once; those the
        kernel refuses (it has not linked them yet) wait for the next read in their chunk."""
        handed, pieces = [], []
        for i, data, files in decoded:
            kept, found = self._pieces(stream, i, data, files)
            handed += [(i, file) for file in kept]
            pieces += found
        taken = hand(pieces) if pieces else []
        for (i, file), ok in zip(handed, taken, strict=True):
            if not ok:
                self._await_chunk(i, [file])

    def _await_chunk(self, i: int, files: list[_StoredFile]) -> None:
        """Keep listed files for the first read in chunk `i` (`files_beside`) to hand over."""
        self._awaiting[i] = self._awaiting.get(i, []) + files

    def _content_stream(self) -> IndexStream | None:
        """The stream files' bytes lie in: the archive (v1), or the payload stream."""
        acc = self.accessor
        stream = acc.archive if acc.format_version == 1 else acc.payload
        return stream if isinstance(stream, IndexStream) else None

    def _stored_at(self, content_offset: int) -> int:
        """Where a file stored at `content_offset` starts in its stream: a split archive's
        PAYLOAD header comes before its content, and must lie in the same chunk."""
        return content_offset - HEADER_SIZE if self.accessor.format_version != 1 else content_offset

    def _pieces(
        self, stream: IndexStream, i: int, data: bytes, files: list[_StoredFile]
    ) -> tuple[list[_StoredFile], list[Piece]]:
        """Of `files`, those stored wholly in chunk `i` of `stream`, decoded as `data`, and the
        piece to hand for each. A split archive's file goes over only if the PAYLOAD header
        before its content is the one its entry names (what opening it checks)."""
        start, end = stream.index.chunk_range(i)
        split = self.accessor.format_version != 1
        view = memoryview(data)
        kept, pieces = [], []
        for file in files:
            ino, content, size = file
            at = content - start
            if self._stored_at(content) < start or content + size > end:
                continue  # in part in another chunk: read as ever
            if split and not is_payload_header(view[at - HEADER_SIZE : at], size):
                continue  # not what its entry names: opening the file says so
            kept.append(file)
            pieces.append((ino, 0, view[at : at + size]))
        return kept, pieces


def unknown_child(directory: Node, name: bytes) -> None:
    """`cached_lookup` of a pxar directory: a child is found only by decoding (None), but `.`
    and `..` are never children."""
    if name in DOT_NAMES:
        raise directory.no_entry(name)


def kernel_xattrs(
    xattrs: Iterable[tuple[bytes, bytes]],
    fcaps: bytes | None,
    acl: Acl | None,
    mode: int,
    is_dir: bool,
) -> list[tuple[bytes, bytes]]:
    """An archived entry's extended attributes as the kernel names them: its xattrs, the file
    capabilities, and the ACLs in the kernel's binary form (a default ACL on a directory only)."""
    out = list(xattrs)
    if fcaps is not None:
        out.append((b"security.capability", fcaps))
    if aclmod.has_access_acl(acl):
        out.append((aclmod.ACL_XATTR_ACCESS, aclmod.access_acl_xattr(mode, acl)))
    if is_dir and aclmod.has_default_acl(acl):
        out.append((aclmod.ACL_XATTR_DEFAULT, aclmod.default_acl_xattr(acl)))
    return out


class PxarNode(Node):
    """An entry inside an archive, as long as the kernel references it. This class is the
    device, FIFO or socket; the kinds with more to answer are its subclasses."""

    __slots__ = ("archive", "entry", "ino", "lookups")
    counted = True

    def __init__(self, archive: Archive, entry: Entry) -> None:
        self.archive = archive
        self.entry = entry
        self.ino = archive.ino(entry)
        self.lookups = 0

    @property
    def path(self) -> str:
        return self.archive.path(self.entry)

    @property
    def reproducible(self) -> bool:  # type: ignore[override]
        return self.archive.index is not None

    @property
    def found_by_listing(self) -> bool:  # type: ignore[override]
        # Not a hard link's target seen so far: one of its names may lie in another directory.
        entry = self.entry
        return entry.kind is not _DIRECTORY and entry.entry_offset not in self.archive.links

    def attr(self, load: bool = True) -> Attr:
        return self.archive.entry_attr(self.entry, self.ino)

    def xattrs(self) -> list[tuple[bytes, bytes]]:
        entry = self.entry
        return kernel_xattrs(
            entry.xattrs, entry.fcaps, entry.acl, entry.mode, entry.kind is _DIRECTORY
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} ino={self.ino} lookups={self.lookups}>"


class PxarDirNode(PxarNode):
    """A directory entry: children found by name or listed by decoding the archive."""

    __slots__ = ()

    def lookup(self, name: bytes) -> Node:
        return self.archive.lookup(self, self.entry, name)

    def cached_lookup(self, name: bytes) -> Node | None:
        return self.archive.cached_lookup(self, self.entry, name)

    def opendir(self) -> DirHandle:
        return self.archive.opendir(self, self.entry)

    def cached_opendir(self) -> DirHandle | None:
        return self.archive.cached_opendir(self, self.entry)

    def listing_never_changes(self) -> bool:
        return True


class PxarFileNode(PxarNode):
    """A regular file entry: its bytes are a window on one of the archive's streams."""

    __slots__ = ()

    def open(self) -> Content:
        return self.archive.content(self.entry)

    def cached_open(self) -> Content | None:
        return self.archive.cached_content(self.entry)


class PxarSymlinkNode(PxarNode):
    __slots__ = ()

    def readlink(self) -> bytes:
        return self.entry.link_target or b""
