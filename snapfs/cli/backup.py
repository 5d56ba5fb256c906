"""`snapfs backup`: write a snapshot from images, config files and directories."""

from __future__ import annotations

import argparse
import socket
import sys

from snapfs.cli._common import add_key_options, add_ns_option, key_options

EXAMPLES: dict[str, list[str]] = {
    "backup": [
        "snapfs backup /srv/datastore drive-scsi0.img:/var/lib/vz/vm-100-disk-0.raw "
        "qemu-server.conf:/etc/pve/qemu-server/100.conf --id 100",
        "snapfs backup /srv/datastore root.pxar:/etc --type host --id web1",
    ],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="create a snapshot from images, config files and directories")
    p.add_argument(
        "datastore", metavar="DATASTORE", help="datastore directory (created if missing)"
    )
    p.add_argument(
        "sources",
        metavar="NAME.EXT:PATH",
        nargs="+",
        help="drive-scsi0.img:/path/disk.raw, qemu-server.conf:/path/100.conf, root.pxar:/dir",
    )
    add_ns_option(p, "namespace (must exist or is created)")
    p.add_argument(
        "--type",
        dest="backup_type",
        choices=("vm", "ct", "host"),
        help="backup type (default: vm for images, host otherwise)",
    )
    p.add_argument(
        "--id",
        dest="backup_id",
        help="backup id (default: 100 for vm/ct, this host's name for host)",
    )
    p.add_argument(
        "--time", dest="backup_time", help="snapshot time YYYY-MM-DDTHH:MM:SSZ (default: now)"
    )
    p.add_argument(
        "--split", action="store_true", help="write pxar archives as split .mpxar/.ppxar pairs"
    )
    add_key_options(p)
    p.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    from snapfs.backup import backup, parse_backup_source
    from snapfs.store.datastore import parse_backup_time, parse_namespace

    sources = [parse_backup_source(s) for s in args.sources]
    backup_type = args.backup_type or ("vm" if any(s.kind == "image" for s in sources) else "host")
    backup_id = args.backup_id or (
        "100" if backup_type in ("vm", "ct") else socket.gethostname().split(".")[0]
    )
    backup_time = parse_backup_time(args.backup_time) if args.backup_time else None
    result = backup(
        args.datastore,
        sources,
        backup_type=backup_type,
        backup_id=backup_id,
        backup_time=backup_time,
        ns=parse_namespace(args.ns),
        crypt=key_options(args).crypt_config(),
        split=args.split,
    )
    for problem in result.problems:
        print(f"snapfs: warning: {problem}", file=sys.stderr)
    ns = f" (namespace {args.ns})" if args.ns else ""
    print(
        f"{result.snapshot}{ns}: {len(result.files)} files, {result.chunks_written} new chunks, {result.chunks_reused} reused"
    )
    return 0
