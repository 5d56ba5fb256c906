"""Where `snapfs nbd` listens: TCP (loopback unless told otherwise) or a Unix socket, and the
nbd:// (nbds:// with TLS) URL a client is given for it. TLS itself is in tls.py.
"""

from __future__ import annotations

import contextlib
import os
import socket

from snapfs.errors import SnapfsError, UsageError

__all__ = ["DEFAULT_PORT", "listener_url", "open_listener"]

DEFAULT_PORT = 10809


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:10809`, `[::1]:10809`, `0.0.0.0` (port 10809), `:0` (any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid --listen {text!r} (HOST:PORT, e.g. 127.0.0.1:10809)")
    return host, int(port)


def open_listener(listen: str | None = None, unix_path: str | None = None) -> socket.socket:
    """A listening socket: on the Unix socket `unix_path` (replacing one no server holds any
    more), else on TCP `listen` (default 127.0.0.1:10809)."""
    if unix_path is not None:
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(unix_path) and not _socket_in_use(unix_path):
                os.unlink(unix_path)
        return _listen(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), unix_path, unix_path)
    host, port = parse_listen(listen or f"127.0.0.1:{DEFAULT_PORT}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --listen host {host!r}: {exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return _listen(sock, addr, f"{host}:{port}")


def _listen(sock: socket.socket, addr: str | tuple, shown: str) -> socket.socket:
    """Bind and listen, or close the socket and say which address could not be had."""
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise SnapfsError(f"cannot listen on {shown}: {exc.strerror}") from None
    sock.listen(16)
    return sock


def _socket_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def listener_url(sock: socket.socket, export: str = "", tls: bool = False) -> str:
    """The nbd:// (or nbd+unix://) URL qemu and libnbd take for this listener; nbds:// (or
    nbds+unix://) when it requires TLS, the scheme by which libnbd insists on TLS."""
    scheme = "nbds" if tls else "nbd"
    if sock.family == socket.AF_UNIX:
        return f"{scheme}+unix:///{export}?socket={sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}/{export}"
