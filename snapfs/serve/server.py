"""Run `snapfs serve`: the model, the application, and hypercorn on trio until a signal.

The application is wrapped in one ASGI layer, `Guard`, that does what every request needs
whatever it asks for: authentication (off loopback it is required), the security headers, and
the one log line per request.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from snapfs.errors import UsageError
from snapfs.format.crypt import CryptConfig
from snapfs.serve.auth import Authenticator, read_auth_file, read_token_file
from snapfs.store.datastore import Datastore

log = logging.getLogger("snapfs.serve")

__all__ = ["DEFAULT_LISTEN", "Guard", "ServeOptions", "parse_listen", "serve"]

DEFAULT_LISTEN = "127.0.0.1:8200"
#: A proved Authorization header is remembered this long: scrypt costs tens of milliseconds,
#: too much for every request of a page and its downloads.
AUTH_MEMORY = 300.0
SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
}


@dataclass
class ServeOptions:
    source: str
    listen: str = DEFAULT_LISTEN
    cache_size: int | None = None  # None: the default for the source (chunk_cache_size)
    refresh_interval: float | None = None
    index_dir: str | None = None  # pxar archive indexes (None: memory only)
    search_index: str = ""  # the datastore's search index file
    ns: str = ""  # where the pages start, and what the search box searches
    auth_file: str | None = None
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid --listen {text!r} (HOST:PORT, e.g. 127.0.0.1:8200)")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI layer: authentication, security headers, one log line per request."""

    def __init__(self, app: Callable, auth: Authenticator, page_policy: str) -> None:
        self.app = app
        self.auth = auth
        self._policy = page_policy.encode()
        self._proved: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import anyio

        client = (scope.get("client") or ("?", 0))[0]
        started = time.monotonic()
        sent = {"status": 0, "bytes": 0}

        async def guarded_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS.items() if k not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", self._policy))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            if self.auth.required:
                header = dict(scope.get("headers", [])).get(b"authorization")
                if self.auth.blocked(client):
                    await _plain(guarded_send, 429, b"too many failed logins, try again later")
                    return
                user = self._remembered(header)
                if user is None:
                    text = header.decode("latin-1") if header else None
                    user = await anyio.to_thread.run_sync(self.auth.check, text, client)
                    if user is None:
                        await _plain(guarded_send, 401, b"authentication required", True)
                        return
                    self._remember(header, user)
            await self.app(scope, receive, guarded_send)
        finally:
            log.info(
                "%s %s %s %d %d bytes %.3f s",
                client,
                scope.get("method", "?"),
                scope.get("path", "?"),
                sent["status"],
                sent["bytes"],
                time.monotonic() - started,
            )

    def _remembered(self, header: bytes | None) -> str | None:
        if not header:
            return None
        key = hashlib.sha256(header).digest()
        with self._lock:
            found = self._proved.get(key)
            if found is None or time.monotonic() - found[1] > AUTH_MEMORY:
                return None
            return found[0]

    def _remember(self, header: bytes | None, user: str) -> None:
        if not header:
            return
        with self._lock:
            if len(self._proved) > 10_000:
                self._proved.clear()
            self._proved[hashlib.sha256(header).digest()] = (user, time.monotonic())


async def _plain(send: Callable, status: int, text: bytes, challenge: bool = False) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode()),
    ]
    if challenge:
        headers.append((b"www-authenticate", b'Basic realm="snapfs", charset="UTF-8"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def serve(
    open_source: Callable[[], Datastore],
    crypt: CryptConfig | None,
    opts: ServeOptions,
    announce: Callable[[str], None] = print,
) -> int:
    """Serve until SIGINT or SIGTERM; `announce` gets the URL once the socket listens."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from snapfs.fs.indexing import ArchiveIndexer
    from snapfs.fs.model import FsModel
    from snapfs.search.index import SearchIndex
    from snapfs.serve.app import PAGE_POLICY, SearchService, Site, build_app
    from snapfs.store.cache import ChunkCache
    from snapfs.store.sources import chunk_cache_size

    host, port = parse_listen(opts.listen)
    auth = Authenticator(
        read_auth_file(opts.auth_file) if opts.auth_file else {},
        read_token_file(opts.token_file) if opts.token_file else None,
    )
    if not _is_loopback(host) and not auth.required:
        raise UsageError(
            f"listening on {host} (not loopback) needs authentication: give --auth-file or "
            "--token-file (a backup holds everything an attacker wants)"
        )
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not _is_loopback(host) and not opts.tls_cert:
        print(
            f"snapfs: warning: serving {host} without TLS: passwords and backup contents cross "
            "the network in clear text (give --tls-cert and --tls-key, or a reverse proxy)",
            file=sys.stderr,
        )
    model = FsModel(
        open_source(),
        crypt,
        ChunkCache(chunk_cache_size(opts.source, opts.cache_size)),
        refresh_interval=opts.refresh_interval,
        indexer=ArchiveIndexer(opts.index_dir),
    )
    search = SearchService(SearchIndex(opts.search_index, crypt), model)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # Guard logs each request, in the snapfs log format
    config.errorlog = logging.getLogger("snapfs.serve.http")
    config.errorlog.setLevel(logging.WARNING)  # its "Running on" line: we print the URL
    config.include_server_header = False
    if opts.tls_cert:
        config.certfile, config.keyfile = opts.tls_cert, opts.tls_key

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()

            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        log.info("signal %d: stopping", signum)
                        stop.set()
                        return

            nursery.start_soon(on_signals)
            binds = await nursery.start(
                lambda task_status: hypercorn_serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            for url in binds:
                announce(f"{url}/browse/" + (_ns_path(opts.ns) if opts.ns else ""))
            await stop.wait()
            nursery.cancel_scope.deadline = trio.current_time() + 5

    site = Site(model, search, auth, opts.ns)
    app = Guard(build_app(site), auth, PAGE_POLICY)
    try:
        trio.run(main)
    finally:
        site.readahead.close()
        model.close()
        search.close()
    return 0


def _ns_path(ns: str) -> str:
    return "".join(f"ns/{part}/" for part in ns.split("/") if part)
