"""`snapfs map` and `snapfs unmap`: a backed-up disk image as a read-only loop device."""

from __future__ import annotations

import argparse
import sys

from snapfs.cli._common import (
    add_archive_arguments,
    add_cache_size_option,
    add_key_options,
    key_options,
    source_options,
)

EXAMPLES: dict[str, list[str]] = {
    "map": ["snapfs map /srv/datastore vm/100/2024-06-01T10:00:00Z drive-scsi0.img"],
    "unmap": ["snapfs unmap /dev/loop0", "snapfs unmap"],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "map", help="attach a disk image read-only as a loop device (/dev/loopNpM partitions)"
    )
    add_archive_arguments(p, "e.g. drive-scsi0.img", dest="image", metavar="IMAGE")
    add_key_options(p)
    add_cache_size_option(p)
    p.set_defaults(func=cmd_map)

    p = sub.add_parser(
        "unmap", help="remove a mapping; without DEVICE list them and clean up stale ones"
    )
    p.add_argument("device", metavar="DEVICE", nargs="?", help="e.g. /dev/loop0")
    p.set_defaults(func=cmd_unmap)


def cmd_map(args: argparse.Namespace) -> int:
    from snapfs.mapping import MapRequest, cleanup_stale, loop_partitions, map_image

    cleanup_stale()
    request = MapRequest(
        source_options(args),
        args.snapshot,
        args.image,
        ns=args.ns,
        key=key_options(args),
        cache_size=args.cache_size,
    )
    mapping = map_image(request)
    print(mapping.device)
    parts = loop_partitions(mapping.device)
    if parts:
        print(f"partitions: {' '.join(parts)}", file=sys.stderr)
    return 0


def cmd_unmap(args: argparse.Namespace) -> int:
    from snapfs.mapping import cleanup_stale, find_mapping, list_mappings, loop_partitions, unmap

    if args.device:
        unmap(find_mapping(args.device))
        return 0
    for m in cleanup_stale():
        print(f"{m.device}: stale (mount process gone), cleaned up", file=sys.stderr)
    for m in list_mappings():
        parts = " ".join(loop_partitions(m.device))
        ns = f" (namespace {m.ns})" if m.ns else ""
        print(f"{m.device}\t{m.snapshot}/{m.image}{ns}\t{m.source}\t{parts}")
    return 0
