"""SOURCE strings to Backends: `/path/to/datastore` or `s3://BUCKET/STORE`, plus their options.

Every command that reads a datastore takes the same SOURCE and the same options (`BackendOptions`,
filled in by the command line in snapfs.cli._common); `open_backend` turns them into a Backend:
LocalBackend for a path, S3Backend for s3:// (optionally under a DiskCache), and `SourceOptions`
opens the Datastore on it. Code that needs a datastore (a command, `map`'s set-up) takes a
SourceOptions, never the parsed command line, so it can be called without one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from snapfs.errors import UsageError
from snapfs.logs import without_userinfo
from snapfs.store.backend import Backend, LocalBackend
from snapfs.store.cache import DEFAULT_CACHE_SIZE, FETCHING_AHEAD_CACHE_SIZE
from snapfs.store.datastore import Datastore

DEFAULT_CACHE_DIR_SIZE = 10 * 1024**3


@dataclass(frozen=True)
class BackendOptions:
    """The source options of the command line; the defaults are what an option left out means."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = False
    virtual_host_style: bool = False
    ca_bundle: str | None = None
    no_verify_tls: bool = False
    s3_connections: int | None = None
    rate_limit: int | None = None
    cache_dir: str | None = None
    cache_dir_size: int = DEFAULT_CACHE_DIR_SIZE
    refresh_interval: float | None = None
    provider: str | None = None


@dataclass(frozen=True)
class SourceOptions:
    """A SOURCE with its options: which datastore to read, and how to reach it."""

    source: str
    backend: BackendOptions = field(default_factory=BackendOptions)

    def open(self) -> Datastore:
        return Datastore(open_backend(self.source, options=self.backend))


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
    if options.virtual_host_style:
        argv.append("--virtual-host-style")
    if options.no_verify_tls:
        argv.append("--no-verify-tls")
    return argv


def chunk_cache_size(source: str, requested: int | None) -> int:
    """The chunk cache of a command that serves reads of SOURCE: `requested` (--cache-size), else
    the default for where SOURCE is."""
    if requested is not None:
        return requested
    return FETCHING_AHEAD_CACHE_SIZE if source.startswith("s3://") else DEFAULT_CACHE_SIZE


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
        virtual_host_style=bool(options.virtual_host_style),
        ca_bundle=options.ca_bundle,
        verify_tls=not options.no_verify_tls,
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
