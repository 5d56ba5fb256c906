"""One archive of a snapshot restored by its name: a pxar path, an image or a blob."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from snapfs.errors import UsageError
from snapfs.format.archive_names import FileType, file_type, restores_as_pxar_tree
from snapfs.progress import Progress
from snapfs.restore.image import ImageTarget, restore_blob, restore_image
from snapfs.restore.report import RestoreReport
from snapfs.restore.tree import RestoreOptions, restore_pxar
from snapfs.store.cache import ChunkCache
from snapfs.views.archives import SnapshotReader, split_archive_path

if TYPE_CHECKING:
    from snapfs.format.crypt import CryptConfig
    from snapfs.pxar.accessor import Accessor
    from snapfs.store.datastore import Datastore, Snapshot
    from snapfs.store.workers import WorkerStore

#: Decoded chunks kept while restoring a pxar tree: its walker decodes the chunks of the files
#: ahead of the writer, which reads them again from here.
RESTORE_CACHE_SIZE = 256 * 1024 * 1024
#: An image is written in index order as its chunks are decoded, each read once: the cache only
#: saves decoding a repeated chunk (a run of zeros) again. 256 MiB held the peak RSS of a restore
#: of the bench image at 380 MiB for nothing, and made every chunk's buffer new memory to fault
#: in: 16 MiB restores it faster, in 100 MiB.
IMAGE_RESTORE_CACHE_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class SnapshotArchive:
    """A pxar archive of a snapshot, opened again by a restore's worker processes
    (restore/parallel.py); `key` reaches them when they start, and is never pickled."""

    store: WorkerStore
    snapshot: Snapshot
    archive: str
    key: bytes | None = field(default=None, repr=False, compare=False)

    def open(self) -> Accessor:
        datastore, crypt = self.store.open()
        cache = ChunkCache(RESTORE_CACHE_SIZE // 2)  # one per worker process
        return SnapshotReader(datastore, self.snapshot, crypt, cache).pxar(self.archive)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "key": None}


def restore_archive(
    datastore: Datastore,
    crypt: CryptConfig | None,
    snapshot: Snapshot,
    archive_path: str,
    target: str,
    options: RestoreOptions,
    *,
    target_device: bool = False,
    resume: bool = False,
    progress: Progress,
    store: WorkerStore | None = None,
) -> RestoreReport:
    """Restore what `archive_path` names (a pxar path, an image, a blob) of `snapshot` to `target`.

    `target_device` and `resume` apply to images only. With `store` (how a worker process opens
    the same datastore), a large pxar tree is restored by `options.processes` processes.
    """
    archive, inner = split_archive_path(archive_path)
    is_pxar = restores_as_pxar_tree(archive)
    cache = ChunkCache(RESTORE_CACHE_SIZE if is_pxar else IMAGE_RESTORE_CACHE_SIZE)
    reader = SnapshotReader(datastore, snapshot, crypt, cache)
    if inner is not None and not is_pxar:
        raise UsageError(f"{archive}: only pxar archives have paths inside them")
    if is_pxar:
        if store is not None and options.processes > 1:
            key = crypt.key if crypt is not None else None
            options = replace(options, opener=SnapshotArchive(store, snapshot, archive, key))
        return restore_pxar(reader.pxar(archive), inner, target, options, progress)
    if target_device and file_type(archive) is FileType.BLOB:
        raise UsageError("--target-device is for images")
    file = datastore.resolve_archive(snapshot, archive)
    if file.archive_type is FileType.BLOB:
        return restore_blob(
            reader.blob(archive),
            target,
            overwrite=options.overwrite,
            dry_run=options.dry_run,
            source=f"{snapshot}/{file.filename}",
        )
    if options.includes or options.excludes:
        raise UsageError("--include/--exclude apply to pxar archives only")
    try:
        return restore_image(
            reader.stream(archive),
            ImageTarget(target, device=target_device),
            resume=resume,
            overwrite=options.overwrite,
            dry_run=options.dry_run,
            progress=progress,
        )
    finally:
        progress.close()
