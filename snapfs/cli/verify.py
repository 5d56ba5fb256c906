"""`snapfs verify`: check every chunk, index and manifest of the selected snapshots."""

from __future__ import annotations

import argparse

from snapfs.cli._common import (
    EXIT_ERROR,
    add_json_option,
    add_key_options,
    add_source,
    key_options,
    print_json,
    source_options,
)

EXAMPLES: dict[str, list[str]] = {
    "verify": [
        "snapfs verify /srv/datastore",
        "snapfs verify /srv/datastore vm/100 --keyfile /root/pbs.key --json",
    ],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check every chunk, index and manifest of the selected snapshots"
    )
    add_source(p)
    p.add_argument(
        "snapshot",
        metavar="SNAPSHOT",
        nargs="?",
        help="TYPE/ID/TIME or TYPE/ID (default: all in --ns and below)",
    )
    add_key_options(p)
    add_json_option(p, "machine-readable report on stdout")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from snapfs.progress import Progress
    from snapfs.store.datastore import parse_namespace
    from snapfs.verify import select_snapshots, verify

    datastore = source_options(args).open()
    snapshots = select_snapshots(datastore, parse_namespace(args.ns), args.snapshot)
    progress = Progress.for_terminal(quiet=args.json, desc="verify")
    progress.start(total_bytes=None)
    try:
        report = verify(
            datastore,
            snapshots,
            key_options(args).crypt_config(),
            on_chunk=lambda n: progress.update(n, 1),
        )
    finally:
        progress.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else EXIT_ERROR
