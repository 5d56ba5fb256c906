"""`snapfs restore`: a pxar archive (or a path in it), an image or a blob of a snapshot to disk."""

from __future__ import annotations

import argparse
import os
import sys

from snapfs.cli._common import (
    EXIT_ERROR,
    add_archive_arguments,
    add_json_option,
    add_key_options,
    key_options,
    print_json,
    source_options,
    worker_store,
)
from snapfs.errors import UsageError

#: Processes a tree restore uses by default: past a few, the target disk is what limits it.
MAX_DEFAULT_WORKERS = 8

EXAMPLES: dict[str, list[str]] = {
    "restore": [
        "snapfs restore /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar/etc /tmp/etc",
        "snapfs restore /srv/datastore vm/100/2024-06-01T10:00:00Z drive-scsi0.img /dev/sdb "
        "--target-device --keyfile /root/pbs.key",
    ],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore", help="restore a pxar archive (or a path in it), an image or a blob"
    )
    add_archive_arguments(
        p,
        "e.g. root.pxar, root.pxar/etc, drive-scsi0.img, qemu-server.conf",
        metavar="ARCHIVE[/PATH]",
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="folder (pxar), file or block device (image), file or - (blob)",
    )
    add_key_options(p)
    p.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="restore only matching paths (glob, repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="skip matching paths (glob, repeatable)",
    )
    p.add_argument(
        "--overwrite",
        choices=("never", "if-newer", "always"),
        default="never",
        help="existing files (default: never)",
    )
    p.add_argument(
        "--ignore-ownership", action="store_true", help="do not restore owners (for non-root users)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be restored, write nothing"
    )
    p.add_argument(
        "--target-device",
        action="store_true",
        help="TARGET is a block device (images; refused if mounted)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="images: keep verified chunks already in TARGET, write the rest",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that restore a pxar tree (default: one per core, at most "
        f"{MAX_DEFAULT_WORKERS}, for trees of 64 MiB and more; 1: this process only)",
    )
    add_json_option(p, "machine-readable report on stdout")
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    from snapfs.progress import Progress
    from snapfs.restore.archive import restore_archive
    from snapfs.restore.tree import PARALLEL_MIN_BYTES, RestoreOptions
    from snapfs.store.datastore import parse_namespace, parse_snapshot

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    source = source_options(args)
    keys = key_options(args)
    datastore = source.open()
    crypt = keys.crypt_config()
    store = worker_store(source, keys, crypt)
    options = RestoreOptions(
        overwrite=args.overwrite,
        ignore_ownership=args.ignore_ownership,
        includes=tuple(args.include or ()),
        excludes=tuple(args.exclude or ()),
        dry_run=args.dry_run,
        processes=args.workers or min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS),
        # asked for by name, workers are used for any tree; by default only for a large one
        parallel_min_bytes=0 if args.workers else PARALLEL_MIN_BYTES,
    )
    report = restore_archive(
        datastore,
        crypt,
        parse_snapshot(args.snapshot, parse_namespace(args.ns)),
        args.archive,
        args.target,
        options,
        target_device=args.target_device,
        resume=args.resume,
        progress=Progress.for_terminal(quiet=args.json),
        store=store,
    )
    if args.json:
        print_json(report.to_dict())
    else:
        for failure in report.failures:
            print(f"snapfs: failed: {failure['message']}", file=sys.stderr)
        if args.target != "-" or report.failures:
            print(report.summary(), file=sys.stderr if args.target == "-" else sys.stdout)
    return 0 if report.ok else EXIT_ERROR
