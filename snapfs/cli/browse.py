"""`snapfs snapshots`, `cat`, `ls`, `find`: looking into a datastore without writing anything."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from snapfs.cli._common import (
    add_archive_arguments,
    add_json_option,
    add_key_options,
    add_source,
    key_options,
    print_json,
    source_options,
)

if TYPE_CHECKING:
    from snapfs.format.crypt import CryptConfig
    from snapfs.store.datastore import Datastore, Snapshot
    from snapfs.views.archives import SnapshotReader

EXAMPLES: dict[str, list[str]] = {
    "snapshots": [
        "snapfs snapshots /mnt/pbs-disk/datastore",
        "snapfs snapshots s3://pbs-bucket/store1 --endpoint-url https://s3.eu-central-003.backblazeb2.com --json",
    ],
    "cat": [
        "snapfs cat /srv/datastore vm/100/2024-06-01T10:00:00Z qemu-server.conf",
        "snapfs cat /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar/etc/hosts",
    ],
    "ls": ["snapfs ls /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar /etc -l"],
    "find": ["snapfs find /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar '*.conf' --json"],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshots", help="list every snapshot with its archives")
    add_source(p)
    add_json_option(p)
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser(
        "cat", help="write an archive's decoded content (or a file inside a pxar archive) to stdout"
    )
    add_archive_arguments(
        p, "e.g. drive-scsi0.img, qemu-server.conf, index.json, root.pxar/etc/hosts"
    )
    add_key_options(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("ls", help="list a directory inside a pxar archive")
    add_archive_arguments(p, "e.g. root.pxar")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
    p.add_argument(
        "-l", "--long", action="store_true", help="mode, owner, size, mtime, link target"
    )
    add_json_option(p, help=None)
    add_key_options(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("find", help="find paths in a pxar archive by a glob on their name")
    add_archive_arguments(p, "e.g. root.pxar")
    p.add_argument(
        "pattern", metavar="PATTERN", help="glob matched against each name, e.g. '*.conf'"
    )
    add_json_option(p)
    add_key_options(p)
    p.set_defaults(func=cmd_find)


def cmd_snapshots(args: argparse.Namespace) -> int:
    from snapfs.store.datastore import parse_namespace
    from snapfs.views.listing import format_snapshot_records, snapshot_records

    datastore = source_options(args).open()
    records = snapshot_records(datastore, parse_namespace(args.ns))
    if args.json:
        print_json(records)
    else:
        sys.stdout.write(format_snapshot_records(records))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    from snapfs.views.archives import open_snapshot_file, write_stream

    datastore, snapshot, crypt = _open_snapshot(args)
    write_stream(open_snapshot_file(datastore, snapshot, args.archive, crypt), sys.stdout.buffer)
    return 0


def _open_snapshot(args: argparse.Namespace) -> tuple[Datastore, Snapshot, CryptConfig | None]:
    """SOURCE's datastore, SNAPSHOT in --ns, and the key: what `cat`, `ls` and `find` read with."""
    from snapfs.store.datastore import parse_namespace, parse_snapshot

    datastore = source_options(args).open()
    snapshot = parse_snapshot(args.snapshot, parse_namespace(args.ns))
    return datastore, snapshot, key_options(args).crypt_config()


def _snapshot_reader(args: argparse.Namespace) -> SnapshotReader:
    from snapfs.views.archives import SnapshotReader

    return SnapshotReader(*_open_snapshot(args))


def cmd_ls(args: argparse.Namespace) -> int:
    from snapfs.views.browse import entry_record, list_directory, long_line, show_name

    accessor = _snapshot_reader(args).pxar(args.archive)
    _, entries = list_directory(accessor, args.path)
    if args.json:
        print_json([entry_record(e) for e in entries])
        return 0
    for entry in entries:
        print(long_line(entry) if args.long else show_name(entry.name or b"/"))
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from snapfs.views.browse import find_paths

    paths = find_paths(_snapshot_reader(args), args.archive, args.pattern)
    if args.json:
        print_json(list(paths))
        return 0
    for path in paths:
        print(path)
    return 0
