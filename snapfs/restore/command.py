"""`snapfs restore` as the command line calls it: one archive name in, the right restore run.

The CLI glue of the restore package; the restores themselves take plain arguments.
"""

from __future__ import annotations

from typing import Any

from snapfs.errors import UsageError
from snapfs.progress import Progress
from snapfs.restore.report import RestoreReport
from snapfs.restore.tree import RestoreOptions, restore_pxar

__all__ = ["run_restore"]


def run_restore(args: Any, datastore: Any, crypt: Any) -> RestoreReport:
    """`snapfs restore`: dispatch on what ARCHIVE names (pxar path, image, blob)."""
    from snapfs.restore.image import ImageTarget, restore_blob, restore_image
    from snapfs.store.cache import ChunkCache
    from snapfs.store.datastore import parse_namespace, parse_snapshot
    from snapfs.views.archives import SnapshotReader, split_archive_path

    options = RestoreOptions(
        overwrite=args.overwrite,
        ignore_ownership=args.ignore_ownership,
        includes=tuple(args.include or ()),
        excludes=tuple(args.exclude or ()),
        dry_run=args.dry_run,
    )
    snapshot = parse_snapshot(args.snapshot, parse_namespace(args.ns))
    reader = SnapshotReader(datastore, snapshot, crypt, ChunkCache(256 * 1024 * 1024))
    archive, inner = split_archive_path(args.archive)
    progress = Progress.for_terminal(quiet=args.json)
    is_pxar = archive.endswith((".pxar", ".mpxar", ".ppxar", ".pxar.didx", ".mpxar.didx"))
    if inner is not None and not is_pxar:
        raise UsageError(f"{archive}: only pxar archives have paths inside them")
    if is_pxar:
        return restore_pxar(reader.pxar(archive), inner, args.target, options, progress)
    if args.target_device and archive.endswith(".blob"):
        raise UsageError("--target-device is for images")
    file = datastore.resolve_archive(snapshot, archive)
    if file.archive_type == "blob":
        return restore_blob(
            reader.blob(archive),
            args.target,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            source=f"{snapshot}/{file.filename}",
        )
    if args.include or args.exclude:
        raise UsageError("--include/--exclude apply to pxar archives only")
    try:
        return restore_image(
            reader.stream(archive),
            ImageTarget(args.target, device=args.target_device),
            resume=args.resume,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            progress=progress,
        )
    finally:
        progress.close()
