"""`snapfs serve`: browse, search and download a datastore from a web browser."""

from __future__ import annotations

import argparse
import dataclasses
import os

from snapfs.cli._common import (
    add_cache_size_option,
    add_key_options,
    add_ns_option,
    add_source_options,
    backend_options,
    key_options,
)
from snapfs.errors import UsageError
from snapfs.store.sources import SourceOptions

EXAMPLES: dict[str, list[str]] = {
    "serve": [
        "snapfs serve /srv/datastore",
        "snapfs serve s3://pbs-bucket/store1 --endpoint-url https://s3.example.com "
        "--keyfile /root/pbs.key --cache-dir /var/cache/snapfs",
        "snapfs serve /srv/datastore --listen 0.0.0.0:8443 --auth-file /etc/snapfs/users "
        "--tls-cert /etc/snapfs/cert.pem --tls-key /etc/snapfs/key.pem",
        "snapfs serve --auth-file /etc/snapfs/users --add-user alice",
    ],
}


def register(sub: argparse._SubParsersAction) -> None:
    from snapfs.serve.server import DEFAULT_LISTEN

    p = sub.add_parser(
        "serve", help="browse, search and download a datastore from a web browser (read-only)"
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        nargs="?",
        help="datastore directory, or s3://BUCKET/STORE (not with --add-user)",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_LISTEN}; anything but loopback needs "
        "--auth-file or --token-file)",
    )
    add_ns_option(p, "the namespace the pages start at and the search box searches")
    add_key_options(p)
    add_source_options(p)
    add_cache_size_option(p)
    p.add_argument(
        "--auth-file",
        metavar="FILE",
        help="users allowed in (HTTP basic auth), one `USER:scrypt$...` line each",
    )
    p.add_argument(
        "--add-user",
        metavar="USER",
        help="add USER to --auth-file (password from --user-password-file or a prompt) and exit",
    )
    p.add_argument(
        "--user-password-file", metavar="FILE", help="the new user's password, for --add-user"
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="a secret token (at least 16 characters): `Authorization: Bearer TOKEN`, or as "
        "the password of any user name",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="... and this private key (PEM)")
    p.add_argument(
        "--index",
        metavar="FILE",
        help="the search index file (default: the one `snapfs search` uses for SOURCE)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.add_user:
        return _add_user(args)
    if not args.source:
        raise UsageError("give SOURCE, the datastore to serve")
    from snapfs.fs.indexing import default_index_dir
    from snapfs.fs.mount import default_refresh_interval
    from snapfs.search.index import default_index_path
    from snapfs.serve.server import ServeOptions, serve
    from snapfs.store.datastore import parse_namespace

    backend = backend_options(args)
    if backend.refresh_interval is None:
        backend = dataclasses.replace(
            backend, refresh_interval=default_refresh_interval(args.source)
        )
    opts = ServeOptions(
        source=args.source,
        listen=args.listen,
        cache_size=args.cache_size,
        refresh_interval=backend.refresh_interval,
        index_dir=default_index_dir(args.cache_dir),
        search_index=args.index or default_index_path(args.source, args.endpoint_url),
        ns="/".join(parse_namespace(args.ns)),
        auth_file=args.auth_file,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    if args.log_level is None and not args.debug:
        from snapfs import logs

        logs.configure("info", args.global_log_file)  # one line per request: the access log
    crypt = key_options(args).crypt_config()
    return serve(
        SourceOptions(args.source, backend).open,
        crypt,
        opts,
        announce=lambda url: print(f"snapfs: serving {args.source} at {url}", flush=True),
    )


def _add_user(args: argparse.Namespace) -> int:
    from snapfs.keysource import read_password
    from snapfs.serve.auth import hash_password, read_auth_file

    if not args.auth_file:
        raise UsageError("--add-user needs --auth-file, the file to add the user to")
    user = args.add_user
    if not user or ":" in user or any(c.isspace() for c in user):
        raise UsageError(f"invalid user name {user!r} (no colon, no spaces)")
    users = read_auth_file(args.auth_file) if os.path.exists(args.auth_file) else {}
    # Not the key's password variables: this is a new password of its own.
    password = read_password(
        password_file=args.user_password_file, environ={}, prompt_for=f"user {user}"
    )
    if not password or len(password) < 8:
        raise UsageError("the password must be at least 8 characters")
    verb = "updated" if user in users else "added"
    users[user] = hash_password(password)
    fd = os.open(args.auth_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(f"{name}:{stored}\n" for name, stored in users.items())
    os.replace(args.auth_file + ".tmp", args.auth_file)
    print(f"{args.auth_file}: user {user} {verb}")
    return 0
