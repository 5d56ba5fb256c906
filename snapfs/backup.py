"""`snapfs backup`: make PBS snapshots from local images, config files and directory trees.

Used for demo and test datastores, so its output must be what PBS itself writes: fixed 4 MiB
chunks for images, buzhash chunks for pxar streams, blobs for config files, a manifest (signed
when encrypting) written last.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from snapfs.errors import SnapfsError, UsageError
from snapfs.format.archive_names import (
    CATALOG_NAME,
    MANIFEST_NAME,
    ArchiveKind,
    PxarNames,
    archive_kind,
    manifest_name,
)
from snapfs.format.blob import encode_blob, encode_chunk
from snapfs.format.catalog import CatalogWriter
from snapfs.format.chunker import split_stream
from snapfs.format.crypt import CryptConfig, format_fingerprint
from snapfs.format.index import build_dynamic_index, build_fixed_index, parse_index
from snapfs.format.manifest import Manifest, ManifestFile
from snapfs.pxar.encoder import EVENT_DIR_END, EntryEvent
from snapfs.pxar.tree import encode_tree
from snapfs.store.datastore import Group, Snapshot
from snapfs.store.writer import DatastoreWriter

IMAGE_CHUNK_SIZE = 4 * 1024 * 1024
PXAR_AVG_CHUNK_SIZE = 4 * 1024 * 1024
CATALOG_AVG_CHUNK_SIZE = 512 * 1024  # docs/formats.md §9: the client chunks catalogs finer


@dataclass(frozen=True)
class BackupSource:
    """One `NAME.EXT:PATH` argument: what to store under which archive name."""

    archive: str  # e.g. "drive-scsi0.img", "qemu-server.conf", "root.pxar"
    path: str

    @property
    def kind(self) -> ArchiveKind:
        """IMAGE, PXAR or BLOB, by the archive's extension as PBS reads it."""
        full = manifest_name(self.archive)
        kind = archive_kind(full) if full is not None else None
        if kind in (ArchiveKind.IMAGE, ArchiveKind.PXAR, ArchiveKind.BLOB):
            return kind
        raise UsageError(
            f"archive {self.archive!r}: unknown type (use NAME.img, NAME.pxar or NAME.conf)"
        )


def parse_backup_source(text: str) -> BackupSource:
    name, sep, path = text.partition(":")
    if not sep or not name or not path or "/" in name:
        raise UsageError(
            f"invalid backup source {text!r} (expected NAME.img:PATH, NAME.pxar:DIR or NAME.conf:FILE)"
        )
    source = BackupSource(name, path)
    source.kind  # noqa: B018 - validates the extension early
    return source


@dataclass
class BackupResult:
    snapshot: Snapshot
    files: list[ManifestFile] = field(default_factory=list)
    chunks_written: int = 0
    chunks_reused: int = 0
    problems: list[str] = field(default_factory=list)


def _read_blocks(f: io.BufferedReader, size: int) -> Iterator[bytes]:
    while True:
        block = f.read(size)
        if not block:
            return
        while len(block) < size:
            more = f.read(size - len(block))
            if not more:
                break
            block += more
        yield block


class _Backup:
    def __init__(self, writer: DatastoreWriter, crypt: CryptConfig | None) -> None:
        self.writer = writer
        self.crypt = crypt
        self.crypt_mode = "encrypt" if crypt else "none"

    def store_chunk(self, data: bytes) -> bytes:
        digest, raw = encode_chunk(data, self.crypt, compress=True)
        self.writer.insert_chunk(digest, raw)
        return digest

    def image(self, path: str) -> tuple[bytes, int]:
        digests = []
        size = 0
        with open(path, "rb") as f:
            for block in _read_blocks(f, IMAGE_CHUNK_SIZE):
                digests.append(self.store_chunk(block))
                size += len(block)
        return build_fixed_index(digests, size, IMAGE_CHUNK_SIZE), size

    def dynamic(self, chunks: Iterable[bytes]) -> tuple[bytes, int]:
        entries = []
        end = 0
        for chunk in chunks:
            end += len(chunk)
            entries.append((end, self.store_chunk(chunk)))
        return build_dynamic_index(entries), end


def backup(
    datastore: str | os.PathLike[str],
    sources: list[BackupSource],
    *,
    backup_type: str,
    backup_id: str,
    backup_time: int | None = None,
    ns: tuple[str, ...] = (),
    crypt: CryptConfig | None = None,
    split: bool = False,
) -> BackupResult:
    """Write one snapshot holding every source; returns what was written."""
    if not sources:
        raise UsageError("nothing to back up: give at least one NAME.EXT:PATH")
    writer = DatastoreWriter(datastore)
    snapshot = Snapshot(Group(ns, backup_type, backup_id), backup_time or int(time.time()))
    result = BackupResult(snapshot)
    job = _Backup(writer, crypt)
    for source in sources:
        kind = source.kind
        if kind is ArchiveKind.IMAGE:
            index, size = job.image(source.path)
            filename = manifest_name(source.archive)
            _add_index(writer, result, snapshot, filename, index, job.crypt_mode)
        elif kind is ArchiveKind.BLOB:
            try:
                with open(source.path, "rb") as f:
                    payload = f.read()
            except OSError as exc:
                raise SnapfsError(f"{source.path}: cannot read: {exc.strerror}") from None
            raw = encode_blob(payload, crypt, compress=True)
            filename = manifest_name(source.archive)
            writer.write_snapshot_file(snapshot, filename, raw)
            result.files.append(
                ManifestFile(filename, job.crypt_mode, len(raw), hashlib.sha256(raw).digest())
            )
        else:
            _backup_tree(job, writer, result, snapshot, source, split=split)
    _finish_snapshot(writer, result, crypt)
    return result


def backup_pxar_stream(
    datastore: str | os.PathLike[str],
    stream: BinaryIO,
    *,
    archive: str = "root.pxar",
    backup_type: str,
    backup_id: str,
    backup_time: int | None = None,
    ns: tuple[str, ...] = (),
    crypt: CryptConfig | None = None,
) -> BackupResult:
    """Write one snapshot holding an already encoded v1 pxar stream as `ARCHIVE.didx`.

    For archives built without a directory tree on disk (benchmarks drive the `Encoder` with
    synthetic entries); chunked exactly as `backup` chunks a tree. No catalog is written: one
    would have to be rebuilt from the stream, and PBS snapshots may lack it.
    """
    if not archive.endswith(".pxar") or "/" in archive:
        raise UsageError(f"archive name {archive!r} must be NAME.pxar")
    writer = DatastoreWriter(datastore)
    snapshot = Snapshot(Group(ns, backup_type, backup_id), backup_time or int(time.time()))
    result = BackupResult(snapshot)
    job = _Backup(writer, crypt)
    _store_pxar_stream(job, writer, result, snapshot, PxarNames.of(archive).unified, stream)
    _finish_snapshot(writer, result, crypt)
    return result


def _finish_snapshot(
    writer: DatastoreWriter, result: BackupResult, crypt: CryptConfig | None
) -> None:
    """Write the manifest last: its presence marks the snapshot finished."""
    snapshot = result.snapshot
    manifest = Manifest(
        backup_type=snapshot.group.type,
        backup_id=snapshot.group.id,
        backup_time=snapshot.time,
        files=result.files,
        signature=None,
        unprotected={"key-fingerprint": format_fingerprint(crypt.fingerprint)} if crypt else {},
        unknown_fields={},
    )
    writer.write_snapshot_file(
        snapshot, MANIFEST_NAME, encode_blob(manifest.to_json(crypt), None, compress=True)
    )
    result.chunks_written = writer.chunks_written
    result.chunks_reused = writer.chunks_reused


def _backup_tree(
    job: _Backup,
    writer: DatastoreWriter,
    result: BackupResult,
    snapshot: Snapshot,
    source: BackupSource,
    *,
    split: bool,
) -> None:
    """A directory as a pxar archive (v1 plus catalog, or a split pair), chunked with buzhash.

    The archive is encoded to a temporary file first: the encoder wants a seekable-free stream
    but the chunker reads at its own pace, and a file keeps memory flat whatever the tree's size.
    """
    pxar = PxarNames.of(source.archive)
    catalog = None if split else CatalogWriter()
    problems = result.problems

    def on_error(path: str, exc: OSError) -> None:
        problems.append(f"{source.archive}: {path}: {exc.strerror or exc}")

    def on_entry(event: EntryEvent) -> None:
        if catalog is None:
            return
        kind = event.kind
        if kind == "d":
            catalog.start_directory(event.name)
        elif kind == EVENT_DIR_END:
            catalog.end_directory()
        elif kind == "f":
            catalog.add_file(event.name, event.size, event.mtime)
        else:
            _CATALOG_ADDERS[kind](catalog, event.name)

    if catalog is not None:
        catalog.start_directory(pxar.unified.encode())
    with tempfile.TemporaryFile() as meta, tempfile.TemporaryFile() as payload:
        try:
            encode_tree(
                source.path, meta, payload if split else None, on_error=on_error, on_entry=on_entry
            )
        except OSError as exc:
            raise SnapfsError(f"{source.path}: cannot back up: {exc.strerror or exc}") from None
        streams = [(pxar.meta, meta), (pxar.payload, payload)] if split else [(pxar.unified, meta)]
        for filename, f in streams:
            f.seek(0)
            _store_pxar_stream(job, writer, result, snapshot, filename, f)
    if catalog is not None:
        catalog.end_directory()
        index, _ = job.dynamic(split_stream(io.BytesIO(catalog.finish()), CATALOG_AVG_CHUNK_SIZE))
        _add_index(writer, result, snapshot, CATALOG_NAME, index, job.crypt_mode)


def _store_pxar_stream(
    job: _Backup,
    writer: DatastoreWriter,
    result: BackupResult,
    snapshot: Snapshot,
    filename: str,
    stream: BinaryIO,
) -> None:
    """Chunk a pxar (or mpxar/ppxar) stream with buzhash and add its `.didx` to the snapshot."""
    index, _ = job.dynamic(split_stream(stream, PXAR_AVG_CHUNK_SIZE))
    _add_index(writer, result, snapshot, filename, index, job.crypt_mode)


_CATALOG_ADDERS = {
    "l": CatalogWriter.add_symlink,
    "h": CatalogWriter.add_hardlink,
    "b": CatalogWriter.add_block_device,
    "c": CatalogWriter.add_char_device,
    "p": CatalogWriter.add_fifo,
    "s": CatalogWriter.add_socket,
}


def _add_index(
    writer: DatastoreWriter,
    result: BackupResult,
    snapshot: Snapshot,
    filename: str,
    index: bytes,
    crypt_mode: str,
) -> None:
    parsed = parse_index(index, name=filename)
    writer.write_snapshot_file(snapshot, filename, index)
    result.files.append(ManifestFile(filename, crypt_mode, parsed.size, parsed.index_csum))
