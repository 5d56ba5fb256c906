"""What several `snapfs` commands share: the parser class, the options defined once, and the typed
option objects they become.

Each option a command shares with another (SOURCE and its S3 options, --ns, --keyfile and
--password-file, --json, --cache-size, the log options) is defined here once, so its flags, help and
parsing are the same everywhere. Command modules turn the parsed values into `SourceOptions` and
`KeyOptions` before calling domain code, which never sees an argparse.Namespace. Every size option
parses through `size_type`, so a value gets the same verdict from every command, and the code gets
bytes as an int.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from snapfs import logs
from snapfs.errors import UsageError
from snapfs.keysource import KeyOptions
from snapfs.store.cache import DEFAULT_CACHE_SIZE, FETCHING_AHEAD_CACHE_SIZE
from snapfs.store.sources import DEFAULT_CACHE_DIR_SIZE, BackendOptions, SourceOptions
from snapfs.store.stats import PRICE_TABLES

if TYPE_CHECKING:
    from snapfs.cluster import WorkPool
    from snapfs.format.crypt import CryptConfig
    from snapfs.store.workers import WorkerStore

EXIT_ERROR = 1
EXIT_USAGE = 2

#: One chunk (an image's fixed chunks are 4 MiB): a smaller memory cache never holds a full chunk,
#: so every read of one would fetch and decode it again.
MIN_CACHE_SIZE = 4 * 1024**2
#: One 4 MiB chunk as the disk cache stores it, with its blob and record headers (a little over
#: 4 MiB), rounded up: a smaller cache skips every full chunk.
MIN_CACHE_DIR_SIZE = 8 * 1024**2
#: Bytes per second: any positive rate works (slowly); 0 would never deliver a byte.
MIN_RATE_LIMIT = 1
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*", re.IGNORECASE)
_UNITS = " KMGT"  # the index is the power of 1024


class Parser(argparse.ArgumentParser):
    """Usage errors raise UsageError, so `main` prints them in one line, like every other error."""

    def error(self, message: str) -> None:
        raise UsageError(message)


def size_type(minimum: int) -> Callable[[str], int]:
    """An argparse `type=` for a size option: bytes as an int, at least `minimum`.

    `1048576`, `64M`, `10GiB`, `1.5G`: K/M/G/T are powers of 1024, and a fraction is rounded down
    to whole bytes. Raising ArgumentTypeError makes argparse name the option in its one-line error.
    """

    def parse(text: str) -> int:
        m = _SIZE.fullmatch(text)
        if not m:
            raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 256M, 1.5G, 1048576)")
        scale = 1024 ** _UNITS.index((m.group(2) or " ").upper())
        value = int(Fraction(m.group(1)) * scale)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is below the minimum of {_format_size(minimum)}"
            )
        return value

    return parse


def _format_size(value: int) -> str:
    """`value` bytes in the largest unit that writes it exactly, as a size option takes it: 4M."""
    power = next(p for p in range(len(_UNITS) - 1, -1, -1) if value % 1024**p == 0)
    return f"{value // 1024**power}{_UNITS[power].strip()}"


# --- options ---------------------------------------------------------------------------------------


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """--debug, --log-level and --log-file, given before the command."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        help="log events at this level and above (default: warning; debug with --debug)",
    )
    parser.add_argument(
        "--log-file",
        dest="global_log_file",
        metavar="FILE",
        help="also append log events here, one line each, with time and pid (never secrets)",
    )


def add_source(parser: argparse.ArgumentParser) -> None:
    """SOURCE, --ns and the S3 options: what every command that reads a datastore takes."""
    add_source_argument(parser)
    add_ns_option(parser, "namespace, e.g. prod/web (default: root)")
    add_source_options(parser)


def add_archive_arguments(
    parser: argparse.ArgumentParser,
    archive_help: str,
    *,
    dest: str = "archive",
    metavar: str = "ARCHIVE",
) -> None:
    """SOURCE (with its options), SNAPSHOT and the archive in it that the command reads: how
    cat, ls, find, restore and map begin."""
    add_source(parser)
    parser.add_argument(
        "snapshot", metavar="SNAPSHOT", help="TYPE/ID/TIME, e.g. vm/100/2024-06-01T10:00:00Z"
    )
    parser.add_argument(dest, metavar=metavar, help=archive_help)


def add_source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SOURCE", help="datastore directory, or s3://BUCKET/STORE"
    )


def add_ns_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--ns", default="", help=help)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The S3 and cache options of a SOURCE; `source_options` reads them back."""
    g = parser.add_argument_group("S3 source options (SOURCE = s3://BUCKET/STORE)")
    g.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint, e.g. https://s3.example.com:9000 (default: AWS)",
    )
    g.add_argument(
        "--region", help="S3 region (default: from the AWS configuration, else us-east-1)"
    )
    g.add_argument("--profile", help="AWS profile from ~/.aws/config and ~/.aws/credentials")
    g.add_argument(
        "--path-style",
        action="store_true",
        default=None,
        help="address the bucket as https://ENDPOINT/BUCKET/KEY (the default with --endpoint-url; "
        "AWS itself gets https://BUCKET.ENDPOINT/KEY)",
    )
    g.add_argument(
        "--virtual-host-style",
        action="store_true",
        default=None,
        help="address the bucket as https://BUCKET.ENDPOINT/KEY also with --endpoint-url, for "
        "servers that only serve buckets as host names",
    )
    g.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="CA certificates (PEM) to check the endpoint's TLS certificate with "
        "(default: AWS_CA_BUNDLE, else the system's)",
    )
    g.add_argument(
        "--no-verify-tls",
        action="store_true",
        default=None,
        help="do not check the endpoint's TLS certificate (warns; for a test endpoint only)",
    )
    g.add_argument(
        "--s3-connections", type=int, metavar="N", help="parallel S3 connections (default: 8)"
    )
    g.add_argument(
        "--rate-limit",
        type=size_type(MIN_RATE_LIMIT),
        metavar="BYTES/S",
        help="download bandwidth limit, e.g. 50M",
    )
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep fetched chunks and indexes on disk here, across runs",
    )
    g.add_argument(
        "--cache-dir-size",
        type=size_type(MIN_CACHE_DIR_SIZE),
        metavar="SIZE",
        help=f"bound of the --cache-dir cache (default: {_format_size(DEFAULT_CACHE_DIR_SIZE)}, "
        f"at least {_format_size(MIN_CACHE_DIR_SIZE)})",
    )
    g.add_argument(
        "--refresh-interval",
        type=float,
        metavar="SECONDS",
        help="re-read listings after this many seconds, 0 for never (mount: default 60 for S3, "
        "10 for a local datastore; other commands list once per run)",
    )
    g.add_argument(
        "--price-table",
        dest="provider",
        choices=sorted(PRICE_TABLES),
        help="provider whose list prices estimate the request cost in the statistics (default: aws)",
    )


def add_cache_size_option(parser: argparse.ArgumentParser) -> None:
    """--cache-size, the memory cache of decoded chunks of the commands that serve reads."""
    parser.add_argument(
        "--cache-size",
        type=size_type(MIN_CACHE_SIZE),
        metavar="SIZE",
        help=f"decoded chunks kept in memory (default {_format_size(DEFAULT_CACHE_SIZE)}, "
        f"{_format_size(FETCHING_AHEAD_CACHE_SIZE)} for an s3:// SOURCE, "
        f"at least {_format_size(MIN_CACHE_SIZE)})",
    )


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """--keyfile and --password-file of the commands that read or write encrypted data."""
    parser.add_argument("--keyfile", help="encryption key file (JSON, as PBS writes it)")
    parser.add_argument(
        "--password-file",
        help="file holding the key file's password (else SNAPFS_KEY_PASSWORD, "
        "PBS_ENCRYPTION_PASSWORD, or a prompt on a terminal)",
    )


def add_work_options(parser: argparse.ArgumentParser, default: str) -> None:
    """--workers and --cluster: where the work of `verify` and `index` runs (`work_pool`)."""
    g = parser.add_argument_group("where the work runs")
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"local worker processes (default: {default}; 1 = in this process)",
    )
    g.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on a Dask distributed scheduler, e.g. tcp://scheduler:8786 "
        "(pip install 'snapfs[cluster]'); each worker needs snapfs, its own S3 credentials "
        "and, for encrypted backups, the key file at the same path",
    )


def add_json_option(
    parser: argparse.ArgumentParser, help: str | None = "machine-readable output"
) -> None:
    parser.add_argument("--json", action="store_true", help=help)


# --- typed options ---------------------------------------------------------------------------------


def backend_options(args: argparse.Namespace) -> BackendOptions:
    """The options `add_source_options` added; absent attributes keep their defaults."""
    values = {}
    for name in BackendOptions.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return BackendOptions(**values)


def source_options(args: argparse.Namespace) -> SourceOptions:
    return SourceOptions(args.source, backend_options(args))


def key_options(args: argparse.Namespace) -> KeyOptions:
    return KeyOptions(args.keyfile, args.password_file)


def worker_store(source: SourceOptions, keys: KeyOptions, crypt: CryptConfig | None) -> WorkerStore:
    """How worker processes open the store and key this command uses (no secret in it)."""
    from snapfs.store.workers import WorkerStore

    return WorkerStore(
        source,
        keys if keys.keyfile else None,
        crypt.fingerprint if crypt is not None else None,
    )


def work_pool(
    args: argparse.Namespace, crypt: CryptConfig | None, default_workers: int | None = None
) -> WorkPool:
    """The pool --workers/--cluster ask for; local worker processes get the unlocked key from
    this process (a cluster's workers unlock their own copy: snapfs.store.workers)."""
    from snapfs.cluster import open_pool
    from snapfs.store.workers import give_key

    workers = args.workers if args.workers is not None or args.cluster else default_workers
    return open_pool(
        workers,
        args.cluster,
        initializer=give_key,
        initargs=(crypt.key if crypt is not None else None,),
    )


def print_json(value: Any) -> None:
    """A --json result on stdout: indented, with a final newline."""
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def seconds_type(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r} (e.g. 60)")
    return value
