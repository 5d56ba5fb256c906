"""`snapfs index`, `search`, `diff`, `versions`: which snapshot holds a file, what changed, and
a file's history, from the datastore's search index (snapfs.search)."""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING

from snapfs.cli._common import (
    add_json_option,
    add_key_options,
    add_ns_option,
    add_source,
    add_source_argument,
    add_source_options,
    add_work_options,
    key_options,
    print_json,
    size_type,
    source_options,
    work_pool,
    worker_store,
)
from snapfs.errors import UsageError

if TYPE_CHECKING:
    from snapfs.cluster import WorkPool
    from snapfs.search.index import SearchIndex
    from snapfs.store.datastore import Datastore

EXAMPLES: dict[str, list[str]] = {
    "index": [
        "snapfs index /srv/datastore",
        "snapfs index s3://pbs-bucket/store1 --endpoint-url https://s3.example.com --keyfile pbs.key",
        "snapfs index s3://pbs-bucket/store1 --workers 4",
    ],
    "search": [
        "snapfs search /srv/datastore 'invoice-*.pdf'",
        "snapfs search /srv/datastore '/etc/nginx/*' --ns prod --newer 2024-06-01 --json",
    ],
    "diff": [
        "snapfs diff /srv/datastore host/web1/2024-06-01T11:00:00Z host/web1/2024-06-02T11:00:00Z",
        "snapfs diff /srv/datastore vm/100/2024-06-01T10:00:00Z vm/100/2024-06-02T10:00:00Z "
        "drive-scsi0.img --json",
    ],
    "versions": ["snapfs versions /srv/datastore host/web1 root.pxar/etc/hosts"],
}
_RELATIVE = re.compile(r"([0-9]+)([smhdw])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _add_index_options(p: argparse.ArgumentParser, refresh: bool = True) -> None:
    p.add_argument(
        "--index",
        metavar="FILE",
        help="the search index file (default: under ~/.cache/snapfs/search, one per SOURCE)",
    )
    if refresh:
        p.add_argument(
            "--no-refresh",
            action="store_true",
            help="answer from the index as it is, without looking for new or pruned snapshots",
        )
    add_key_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="build or refresh the search index of a datastore (outside the datastore)"
    )
    add_source(p)
    _add_index_options(p, refresh=False)
    add_work_options(p, default="1: in this process")
    add_json_option(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find files by name in every snapshot of a datastore")
    add_source(p)
    p.add_argument(
        "pattern",
        metavar="PATTERN",
        help="glob on the name, e.g. '*.conf'; on the whole path if it holds a /, e.g. '/etc/*'",
    )
    p.add_argument("--type", choices=tuple("fdlcbps"), help="f file, d directory, l symlink, ...")
    p.add_argument(
        "--newer",
        type=_time_type,
        metavar="TIME",
        help="mtime at or after TIME (2024-07-01, 2024-07-01T04:00:00Z, or an age: 7d, 12h)",
    )
    p.add_argument("--older", type=_time_type, metavar="TIME", help="mtime at or before TIME")
    p.add_argument("--min-size", type=size_type(0), metavar="SIZE", help="at least SIZE bytes")
    p.add_argument("--max-size", type=size_type(0), metavar="SIZE", help="at most SIZE bytes")
    _add_index_options(p)
    add_json_option(p, "one JSON object a line per snapshot holding a match")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("diff", help="what changed between two snapshots")
    add_source_argument(p)
    p.add_argument("snapshot_a", metavar="SNAP_A", help="TYPE/ID/TIME")
    p.add_argument("snapshot_b", metavar="SNAP_B", help="TYPE/ID/TIME")
    p.add_argument(
        "archive", metavar="ARCHIVE[/PATH]", nargs="?", help="one archive, or a path inside one"
    )
    add_ns_option(p, "namespace of SNAP_A (and of SNAP_B unless --ns-b)")
    p.add_argument("--ns-b", help="namespace of SNAP_B")
    add_source_options(p)
    p.add_argument(
        "--content",
        action="store_true",
        help="confirm each changed file and image chunk by comparing its bytes in the store",
    )
    _add_index_options(p)
    add_json_option(p, "one JSON object a line per change")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("versions", help="every distinct version of one file across a group")
    add_source(p)
    p.add_argument("group", metavar="GROUP", help="TYPE/ID, e.g. host/web1")
    p.add_argument("path", metavar="ARCHIVE/PATH", help="e.g. root.pxar/etc/hosts")
    _add_index_options(p)
    add_json_option(p, "one JSON object a line per version")
    p.set_defaults(func=cmd_versions)


def _time_type(text: str) -> int:
    """A time as epoch nanoseconds: a date, a backup time, or an age before now."""
    relative = _RELATIVE.match(text)
    if relative:
        seconds = int(relative.group(1)) * _SECONDS[relative.group(2)]
        return int((time.time() - seconds) * 10**9)
    for form in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(text, form)) * 10**9
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(
        f"invalid time {text!r} (e.g. 2024-07-01, 2024-07-01T04:00:00Z, 7d)"
    )


def _index_path(args: argparse.Namespace) -> str:
    from snapfs.search.index import default_index_path

    return args.index or default_index_path(args.source, args.endpoint_url)


def _open(args: argparse.Namespace) -> tuple[Datastore, SearchIndex]:
    from snapfs.search.index import SearchIndex

    datastore = source_options(args).open()
    return datastore, SearchIndex(_index_path(args), key_options(args).crypt_config())


def _refresh(
    args: argparse.Namespace,
    datastore: Datastore,
    index: SearchIndex,
    ns: tuple,
    pool: WorkPool | None = None,
):
    from snapfs.progress import Progress

    if getattr(args, "no_refresh", False):
        return None
    progress = Progress.for_terminal(quiet=args.json, desc="index", unit="snapshot")
    store = None
    if pool is not None:
        keys = key_options(args)
        crypt = index.crypt
        store = worker_store(source_options(args), keys, crypt)
    report = index.refresh(datastore, ns, progress, pool=pool, store=store)
    for line in report.warnings():
        print(f"snapfs: warning: {line}", file=sys.stderr)
    return report


def _print_lines(records) -> None:
    for record in records:
        sys.stdout.write(json.dumps(record) + "\n")


def cmd_index(args: argparse.Namespace) -> int:
    from snapfs.store.datastore import parse_namespace

    datastore, index = _open(args)
    try:
        with work_pool(args, index.crypt, default_workers=1) as pool:
            report = _refresh(args, datastore, index, parse_namespace(args.ns), pool)
    finally:
        index.close()
    assert report is not None
    if args.json:
        print_json({"index": index.path, **report.to_value()})
        return 0
    print(
        f"{index.path}: {report.snapshots} snapshots, {report.indexed} added "
        f"({report.archives} archives read, {report.copied} already known, {report.entries} "
        f"entries; {report.hashed} files hashed, {report.reused_hashes} by place), "
        f"{report.pruned} pruned, in {report.seconds:.1f} s"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from snapfs.index.history import SearchFilter
    from snapfs.search.report import format_hits, hit_record
    from snapfs.store.datastore import parse_namespace

    ns = parse_namespace(args.ns)
    query = SearchFilter.for_pattern(
        args.pattern,
        ns="/".join(ns) or None,
        type=args.type,
        newer_ns=args.newer,
        older_ns=args.older,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    datastore, index = _open(args)
    try:
        _refresh(args, datastore, index, ns)
        hits = index.search(query)
    finally:
        index.close()
    if args.json:
        _print_lines(hit_record(hit) for hit in hits)
    else:
        sys.stdout.write(format_hits(hits))
    return 0 if hits else 1


def cmd_diff(args: argparse.Namespace) -> int:
    from snapfs.search.diff import diff_snapshots
    from snapfs.search.report import change_line, change_record
    from snapfs.store.datastore import parse_namespace, parse_snapshot
    from snapfs.views.archives import split_archive_path

    ns_a = parse_namespace(args.ns)
    ns_b = parse_namespace(args.ns_b) if args.ns_b is not None else ns_a
    a = parse_snapshot(args.snapshot_a, ns_a)
    b = parse_snapshot(args.snapshot_b, ns_b)
    archive, inner = split_archive_path(args.archive) if args.archive else (None, None)
    datastore, index = _open(args)
    try:
        for snapshot in (a, b):
            datastore.check_exists(snapshot)
        for ns in sorted({ns_a, ns_b}):
            _refresh(args, datastore, index, ns)
        changes = diff_snapshots(
            index,
            datastore,
            a,
            b,
            archive=archive,
            path=None if inner is None else os.fsencode(inner),
            crypt=index.crypt,
            content=args.content,
        )
        for change in changes:
            if args.json:
                _print_lines([change_record(change)])
            else:
                print(change_line(change))
    finally:
        index.close()
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from snapfs.index.history import Series
    from snapfs.search.report import distinct_versions, version_line, version_record
    from snapfs.store.datastore import parse_namespace, parse_snapshot
    from snapfs.views.archives import split_archive_path

    ns = parse_namespace(args.ns)
    group = parse_snapshot(f"{args.group.strip('/')}/1970-01-01T00:00:00Z", ns).group
    archive, inner = split_archive_path(args.path)
    if inner is None:
        raise UsageError(f"{args.path!r}: give ARCHIVE/PATH, e.g. root.pxar/etc/hosts")
    datastore, index = _open(args)
    try:
        _refresh(args, datastore, index, ns)
        series = Series("/".join(ns), group.type, group.id, _pxar_name(archive))
        found = distinct_versions(index.history([series], os.fsencode(inner.rstrip("/") or "/")))
    finally:
        index.close()
    if not found:
        print(f"snapfs: {args.group} has no {args.path} in any indexed snapshot", file=sys.stderr)
        return 1
    if args.json:
        _print_lines(version_record(v) for v in found)
    else:
        print(f"{args.path}: {len(found)} version{'s' if len(found) != 1 else ''}")
        for version in found:
            print(version_line(version))
    return 0


def _pxar_name(archive: str) -> str:
    from snapfs.format.archive_names import PxarNames

    return PxarNames.of(archive).name
