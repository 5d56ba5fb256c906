"""Open what a user names in a snapshot: a blob, an image, a pxar archive, or a file inside one.

Shared by `snapfs cat`, `ls`, `find`, the mount and restore. What the names mean (typed with or
without their .blob/.fidx/.didx suffix, `root.pxar` for a v1 archive or a split .mpxar/.ppxar
pair, `index.json` for the manifest) is snapfs.format.archive_names'.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from snapfs.errors import NotFoundError, UnsupportedFormatError
from snapfs.format.archive_names import (
    MANIFEST_ALIASES,
    MANIFEST_NAME,
    FileType,
    PxarNames,
    is_pxar_tree_name,
    short_name,
)
from snapfs.format.blob import decode_blob
from snapfs.format.crypt import CryptConfig
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Entry, EntryKind
from snapfs.store.cache import ChunkCache
from snapfs.store.chunks import ChunkReader
from snapfs.store.datastore import Datastore, Snapshot
from snapfs.store.spare_core import SpareCore
from snapfs.store.stream import IndexStream


@dataclass
class PxarFile:
    """One regular file inside a pxar archive, readable as a stream."""

    accessor: Accessor
    entry: Entry

    def iter_content(self, block: int = 4 * 1024 * 1024) -> Iterator[bytes]:
        offset = 0
        while offset < self.entry.size:
            data = self.accessor.read(self.entry, offset, min(block, self.entry.size - offset))
            if not data:
                break
            yield data
            offset += len(data)


class SnapshotReader:
    """Opens the archives of one snapshot through one ChunkReader (so they share its cache)."""

    def __init__(
        self,
        datastore: Datastore,
        snapshot: Snapshot,
        crypt: CryptConfig | None = None,
        cache: ChunkCache | None = None,
        *,
        spare: SpareCore | None = None,
    ) -> None:
        self.datastore = datastore
        self.snapshot = snapshot
        self.crypt = crypt
        self.manifest = datastore.manifest(snapshot)
        datastore.check_key(snapshot, crypt)
        self.chunks = ChunkReader(datastore.backend, crypt, cache, spare=spare)

    def manifest_text(self) -> bytes:
        raw = self.datastore.backend.read_file(f"{self.snapshot.path}/{MANIFEST_NAME}")
        return decode_blob(raw, None, name=f"{self.snapshot.path}/{MANIFEST_NAME}")

    def blob(self, name: str) -> bytes:
        file = self.datastore.resolve_archive(self.snapshot, name)
        if file.archive_type is not FileType.BLOB:
            raise UnsupportedFormatError(f"{self.snapshot}: {file.filename} is not a blob")
        return self.datastore.open_blob(self.snapshot, file, self.crypt)

    def stream(self, name: str) -> IndexStream:
        file = self.datastore.resolve_archive(self.snapshot, name)
        self.datastore._require_key(self.snapshot, file, self.crypt)
        index = self.datastore.open_index(self.snapshot, file)
        return IndexStream(index, self.chunks, f"{self.snapshot}/{file.filename}")

    def pxar(self, name: str) -> Accessor:
        """`root.pxar` (or `root.pxar.didx`, `root.mpxar.didx`) as an Accessor."""
        names = PxarNames.of(name)
        filenames = {f.filename for f in self.manifest.files}
        if names.unified in filenames:
            return Accessor(self.stream(names.unified), name=f"{self.snapshot}/{names.name}")
        if names.meta in filenames:
            payload = self.stream(names.payload) if names.payload in filenames else None
            return Accessor(
                self.stream(names.meta), payload, name=f"{self.snapshot}/{short_name(names.meta)}"
            )
        raise NotFoundError(f"snapshot {self.snapshot} has no pxar archive {name!r}")


def split_archive_path(name: str) -> tuple[str, str | None]:
    """`root.pxar/etc/hosts` -> ('root.pxar', '/etc/hosts'); `drive-scsi0.img` -> (name, None)."""
    head, sep, rest = name.partition("/")
    return (head, "/" + rest if sep else None)


def open_snapshot_file(
    datastore: Datastore, snapshot: Snapshot, name: str, crypt: CryptConfig | None
) -> bytes | IndexStream | PxarFile:
    """What `snapfs cat` prints for NAME: decoded blob, index stream, or a pxar file's content."""
    archive, inner = split_archive_path(name)
    reader = SnapshotReader(datastore, snapshot, crypt)
    if archive in MANIFEST_ALIASES and inner is None:
        return reader.manifest_text()
    # `root.pxar.didx` typed in full means the raw stream; `root.pxar[/path]` means the tree.
    if inner is not None or is_pxar_tree_name(archive):
        accessor = reader.pxar(archive)
        entry = accessor.lookup(inner or "/")
        if entry.kind is EntryKind.HARDLINK:
            entry = accessor.resolve_hardlink(entry)
        if entry.kind is not EntryKind.FILE:
            raise UnsupportedFormatError(
                f"{snapshot}/{archive}{inner or '/'} is a {entry.kind.name.lower()}, not a regular file"
            )
        return PxarFile(accessor, entry)
    file = datastore.resolve_archive(snapshot, archive)
    if file.archive_type is FileType.BLOB:
        return reader.blob(archive)
    return reader.stream(archive)


def write_stream(target: bytes | IndexStream | PxarFile, out: BinaryIO) -> None:
    if isinstance(target, bytes):
        out.write(target)
    elif isinstance(target, IndexStream):
        for block in target.iter_range():
            out.write(block)
    else:
        for block in target.iter_content():
            out.write(block)
    out.flush()
