"""`snapfs nbd`: serve backed-up disk images over NBD until SIGINT/SIGTERM/SIGHUP."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from snapfs.cli._common import (
    add_cache_size_option,
    add_key_options,
    add_source,
    key_options,
    source_options,
)
from snapfs.errors import UsageError
from snapfs.nbd import DEFAULT_WORKERS
from snapfs.nbd.listen import DEFAULT_PORT

EXAMPLES: dict[str, list[str]] = {
    "nbd": [
        "snapfs nbd /srv/datastore vm/100/2024-06-01T10:00:00Z drive-scsi0.img "
        "--overlay /var/tmp/vm100.overlay",
        "snapfs nbd /srv/datastore vm/100/2024-06-01T10:00:00Z --listen 0.0.0.0:10809 "
        "--tls-cert /etc/snapfs/nbd-cert.pem --tls-key /etc/snapfs/nbd-key.pem "
        "--tls-ca /etc/snapfs/ca-cert.pem",
    ],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nbd", help="serve disk images over NBD (qemu, qemu-img, nbdinfo), read-only or overlaid"
    )
    add_source(p)
    p.add_argument(
        "images",
        metavar="SNAPSHOT [IMAGE...]",
        nargs="*",
        help="e.g. vm/100/2024-06-01T10:00:00Z drive-scsi0.img (default: every image)",
    )
    add_key_options(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"TCP address (default 127.0.0.1:{DEFAULT_PORT}; port 0 picks a free one)",
    )
    p.add_argument("--socket", metavar="PATH", help="listen on a Unix socket instead")
    p.add_argument(
        "--overlay",
        metavar="FILE",
        help="accept writes into this copy-on-write file (created if missing); the backup "
        "is never written",
    )
    add_cache_size_option(p)
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"parallel chunk fetches (default {DEFAULT_WORKERS})",
    )
    g = p.add_argument_group("TLS (NBD STARTTLS; with --tls-cert a client without TLS is refused)")
    g.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="server certificate (PEM, with any intermediates after it); clients connect "
        "with nbds:// URLs",
    )
    g.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM, unencrypted)")
    g.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA certificate(s) (PEM): every client must present a certificate signed by one",
    )
    p.set_defaults(func=cmd_nbd)


def cmd_nbd(args: argparse.Namespace) -> int:
    """Serve until a signal; one URL per export on stdout once listening."""
    from snapfs.nbd.exports import datastore_exports
    from snapfs.nbd.listen import listener_url, open_listener
    from snapfs.nbd.server import NbdServer
    from snapfs.nbd.tls import tls_context
    from snapfs.store.cache import ChunkCache
    from snapfs.store.datastore import parse_namespace
    from snapfs.store.sources import chunk_cache_size

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.listen and args.socket:
        raise UsageError("give --listen or --socket, not both")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_ca and not args.tls_cert:
        raise UsageError("--tls-ca needs --tls-cert and --tls-key (the server's own certificate)")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    cache = ChunkCache(chunk_cache_size(args.source, args.cache_size))
    exports = datastore_exports(
        source_options(args).open(),
        key_options(args).crypt_config(),
        cache,
        args.images,
        parse_namespace(args.ns),
        overlay=args.overlay,
    )
    listener = open_listener(args.listen, args.socket)
    server = NbdServer(exports, workers=args.workers, tls=tls)

    def stop(signum: int, frame: object) -> None:
        server.stop_serving(listener)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    for export in exports:
        print(listener_url(listener, export.name, tls=tls is not None), flush=True)
    mode = f"overlay {args.overlay}" if args.overlay else "read-only"
    if tls is not None:
        mode += ", TLS required" + (", client certificates from --tls-ca" if args.tls_ca else "")
    print(
        f"snapfs: serving {len(exports)} image(s) on "
        f"{listener_url(listener, tls=tls is not None)} ({mode}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve(listener)
    finally:
        server.shutdown()
        if args.socket:
            with contextlib.suppress(OSError):
                os.unlink(args.socket)
    return 0
