"""`snapfs mount` and `snapfs umount`: a datastore as a read-only FUSE filesystem."""

from __future__ import annotations

import argparse
import dataclasses

from snapfs.cli._common import (
    add_cache_size_option,
    add_key_options,
    add_source_argument,
    add_source_options,
    backend_options,
    key_options,
    seconds_type,
)
from snapfs.errors import UsageError
from snapfs.store.sources import SourceOptions

EXAMPLES: dict[str, list[str]] = {
    "mount": [
        "snapfs mount /srv/datastore /mnt/pbs --keyfile /root/pbs.key --password-file /root/pbs.pw",
        "snapfs mount s3://pbs-bucket/store1 /mnt/pbs --endpoint-url https://s3.example.com "
        "--refresh-interval 300",
        "snapfs umount /mnt/pbs",
    ],
    "umount": ["snapfs umount /mnt/pbs"],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a datastore as a read-only filesystem (FUSE)")
    add_source_argument(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    add_key_options(p)
    add_source_options(p)
    add_cache_size_option(p)
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the mount (modes still apply)",
    )
    p.add_argument(
        "--index-dir",
        metavar="DIR",
        help="keep the metadata indexes of unencrypted pxar archives here (default: "
        "CACHE-DIR/index with --cache-dir, else ~/.cache/snapfs/index); encrypted archives "
        "are indexed in memory only",
    )
    p.add_argument(
        "--no-index",
        action="store_true",
        help="never index pxar archives (every listing decodes the archive), and no "
        "GROUP/.versions (which reads the search index of `snapfs index`)",
    )
    p.add_argument(
        "--uid", help="show every file as owned by this user (for mounts by non-root users)"
    )
    p.add_argument("--gid", help="show every file as owned by this group")
    p.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground until unmounted"
    )
    p.add_argument(
        "--debug",
        dest="mount_debug",
        action="store_true",
        help="debug logs (and --foreground stderr)",
    )
    p.add_argument(
        "--read-ahead-kb",
        type=int,
        default=1024,
        help="kernel readahead for the mount (default 1024)",
    )
    p.add_argument(
        "--log-file", help="log here (default: stderr in the foreground, syslog in the background)"
    )
    _add_timeout(
        p,
        "give up a start that waits longer than this for anything (the key password, the "
        "source, the kernel): exit 1, nothing left mounted",
    )
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a snapfs mount (also one whose process died)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_timeout(p, "give up after this long; a mount whose process hangs is detached lazily")
    p.set_defaults(func=cmd_umount)


def _add_timeout(p: argparse.ArgumentParser, help_text: str) -> None:
    from snapfs.linux.mounts import DEFAULT_TIMEOUT

    p.add_argument(
        "--timeout",
        type=seconds_type,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"{help_text} (default {DEFAULT_TIMEOUT:g})",
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from snapfs.fs.indexing import default_index_dir
    from snapfs.fs.mount import MountOptions, default_refresh_interval, mount, parse_id

    backend = backend_options(args)
    if backend.refresh_interval is None:  # also the S3 listing cache's lifetime
        backend = dataclasses.replace(
            backend, refresh_interval=default_refresh_interval(args.source)
        )
    if backend.refresh_interval < 0:
        raise UsageError("--refresh-interval must not be negative (0: never refresh)")

    opts = MountOptions(
        source=args.source,
        mountpoint=args.mountpoint,
        cache_size=args.cache_size,
        allow_other=args.allow_other,
        uid=parse_id(args.uid, "uid"),
        gid=parse_id(args.gid, "gid"),
        foreground=args.foreground,
        debug=args.debug or args.mount_debug or args.log_level == "debug",
        read_ahead_kb=args.read_ahead_kb,
        log_file=args.log_file or args.global_log_file,
        refresh_interval=backend.refresh_interval,
        timeout=args.timeout,
        endpoint_url=args.endpoint_url,
        index_dir=None if args.no_index else args.index_dir or default_index_dir(args.cache_dir),
        index=not args.no_index,
    )
    # `--timeout` bounds the password prompt too: a start never waits forever.
    crypt = key_options(args).crypt_config(prompt_timeout=args.timeout)
    # The source is opened by the mount process, under the start-up clock.
    return mount(SourceOptions(args.source, backend).open, crypt, opts)


def cmd_umount(args: argparse.Namespace) -> int:
    from snapfs.linux.mounts import umount

    umount(args.mountpoint, args.timeout)
    return 0
