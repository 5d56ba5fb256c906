"""SOURCE strings to Backends: `/path/to/datastore` or `s3://BUCKET/STORE`, plus their options.

Every command that reads a datastore takes the same SOURCE and the same options, so the argparse
options live here once (`add_source_options`, and `add_cache_size_option` for the commands that
serve reads) and `open_backend` turns the parsed values into a Backend: LocalBackend for a path,
S3Backend for s3:// (optionally under a DiskCache). Every size option parses through `size_type`,
so a value gets the same verdict from every command, and the code gets bytes as an int.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from snapfs.errors import UsageError
from snapfs.logs import without_userinfo
from snapfs.store.backend import Backend, LocalBackend
from snapfs.store.cache import DEFAULT_CACHE_SIZE

DEFAULT_CACHE_DIR_SIZE = 10 * 1024**3
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


def add_cache_size_option(parser: argparse.ArgumentParser) -> None:
    """--cache-size, the memory cache of decoded chunks of the commands that serve reads."""
    parser.add_argument(
        "--cache-size",
        type=size_type(MIN_CACHE_SIZE),
        default=DEFAULT_CACHE_SIZE,
        metavar="SIZE",
        help=f"decoded chunks kept in memory (default {_format_size(DEFAULT_CACHE_SIZE)}, "
        f"at least {_format_size(MIN_CACHE_SIZE)})",
    )


@dataclass(frozen=True)
class BackendOptions:
    """The source options of the command line; the defaults are what an option left out means."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = False
    ca_bundle: str | None = None
    s3_connections: int | None = None
    rate_limit: int | None = None
    cache_dir: str | None = None
    cache_dir_size: int = DEFAULT_CACHE_DIR_SIZE
    refresh_interval: float | None = None
    provider: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BackendOptions:
        """The options `add_source_options` added; absent attributes keep their defaults."""
        values = {}
        for name in cls.__dataclass_fields__:
            value = getattr(args, name, None)
            if value is not None:
                values[name] = value
        return cls(**values)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The S3 and cache options shared by every command that takes a SOURCE."""
    from snapfs.store.stats import PRICE_TABLES

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
        help="address the bucket as https://ENDPOINT/BUCKET/KEY instead of https://BUCKET.ENDPOINT/KEY",
    )
    g.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="CA certificates (PEM) to check the endpoint's TLS certificate with",
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


def source_option_argv(options: BackendOptions) -> list[str]:
    """The command-line options that reproduce `options`, for a child `snapfs` process.

    Secrets are never options (boto3 reads them from the environment or ~/.aws), so a child that
    inherits the environment gets the same source without a secret in its argv. An endpoint's
    `user:password@` is left out: botocore never sends it, and argv is readable by every user.
    """
    default = BackendOptions()
    argv: list[str] = []
    flags = {
        "endpoint_url": "--endpoint-url",
        "region": "--region",
        "profile": "--profile",
        "ca_bundle": "--ca-bundle",
        "s3_connections": "--s3-connections",
        "rate_limit": "--rate-limit",
        "cache_dir": "--cache-dir",
        "cache_dir_size": "--cache-dir-size",
        "refresh_interval": "--refresh-interval",
        "provider": "--price-table",
    }
    for name, flag in flags.items():
        value = getattr(options, name)
        if value is None or value == getattr(default, name):
            continue
        if name in ("ca_bundle", "cache_dir"):
            value = os.path.abspath(value)  # the child may run elsewhere
        elif name == "endpoint_url":
            value = without_userinfo(value)
        argv += [flag, str(value)]
    if options.path_style:
        argv.append("--path-style")
    return argv


def open_backend(source: str, *, options: BackendOptions | None = None) -> Backend:
    """The Backend for SOURCE: a datastore directory, or `s3://BUCKET/STORE`."""
    options = options or BackendOptions()
    if source.startswith("s3://"):
        return _open_s3(source, options)
    if "://" in source:
        raise UsageError(
            f"unsupported SOURCE {source!r} (a datastore directory or s3://BUCKET/STORE)"
        )
    return LocalBackend(source)


def _open_s3(source: str, options: BackendOptions) -> Backend:
    from snapfs.store.s3 import S3Backend, parse_s3_source
    from snapfs.store.s3_requests import DEFAULT_CONNECTIONS, S3Settings
    from snapfs.store.stats import DEFAULT_PROVIDER

    bucket, store = parse_s3_source(source)
    connections = (
        options.s3_connections if options.s3_connections is not None else DEFAULT_CONNECTIONS
    )
    if connections < 1:
        raise UsageError("--s3-connections must be at least 1")
    if options.refresh_interval is not None and options.refresh_interval < 0:
        raise UsageError("--refresh-interval must not be negative")
    settings = S3Settings(
        endpoint_url=options.endpoint_url,
        region=options.region,
        profile=options.profile,
        path_style=bool(options.path_style),
        ca_bundle=options.ca_bundle,
        connections=connections,
        rate_limit=options.rate_limit,
        list_ttl=options.refresh_interval or None,
        provider=options.provider or DEFAULT_PROVIDER,
    )
    backend: Backend = S3Backend(bucket, store, settings)
    if options.cache_dir:
        from snapfs.store.diskcache import DiskCache

        backend = DiskCache(backend, options.cache_dir, options.cache_dir_size)
    return backend
