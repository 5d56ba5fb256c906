"""`snapfs verify`: check every chunk, index and manifest of the selected snapshots."""

from __future__ import annotations

import argparse
import sys

from snapfs.cli._common import (
    EXIT_ERROR,
    add_json_option,
    add_key_options,
    add_source,
    add_work_options,
    key_options,
    print_json,
    source_options,
    work_pool,
    worker_store,
)

EXAMPLES: dict[str, list[str]] = {
    "verify": [
        "snapfs verify /srv/datastore",
        "snapfs verify /srv/datastore vm/100 --keyfile /root/pbs.key --json",
        "snapfs verify s3://bucket/store --subset 1/7 --resume /var/lib/snapfs/verify.state",
        "snapfs verify s3://bucket/store --cluster tcp://scheduler:8786",
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
    add_work_options(p, default="one per core")
    p.add_argument(
        "--subset",
        metavar="n/t|P%",
        help="check only the n-th of t slices of the chunk folders (the same slice every run, "
        "so t runs cover the store), or a random P%% of them",
    )
    p.add_argument(
        "--resume",
        metavar="STATE",
        help="keep finished shards in STATE; after a crash or Ctrl-C the same command "
        "continues where it stopped (a finished run's STATE starts afresh)",
    )
    add_json_option(p, "machine-readable report on stdout")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from snapfs.progress import Progress
    from snapfs.store.datastore import parse_namespace
    from snapfs.verify import select_snapshots, verify
    from snapfs.verify.shards import ShardContext

    source = source_options(args)
    keys = key_options(args)
    datastore = source.open()
    snapshots = select_snapshots(datastore, parse_namespace(args.ns), args.snapshot)
    crypt = keys.crypt_config()
    context = ShardContext(worker_store(source, keys, crypt))
    progress = Progress.for_terminal(quiet=args.json, desc="verify", unit="chunk")
    problems = gets = checked_bytes = 0

    def shard_done(result) -> None:
        nonlocal problems, gets, checked_bytes
        problems += len(result.bad)
        gets += result.gets
        checked_bytes += result.bytes
        progress.note(f"{checked_bytes / 1e6:,.0f} MB, {gets} GETs, {problems} bad")
        progress.update(result.checked)

    with work_pool(args, crypt) as pool:
        try:
            report = verify(
                datastore,
                snapshots,
                crypt,
                context=context,
                pool=pool,
                subset=args.subset,
                state_path=args.resume,
                selection=f"{args.ns}:{args.snapshot or ''}",
                on_plan=progress.start,
                on_shard=shard_done,
            )
        except KeyboardInterrupt:
            if args.resume:
                print(
                    f"snapfs: finished shards are kept in {args.resume}: "
                    "run the same command to continue",
                    file=sys.stderr,
                )
            raise
        finally:
            progress.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else EXIT_ERROR
