"""FaultProxy: an HTTP/1.1 proxy in front of a real S3 server that answers some requests wrongly,
and optionally terminates TLS for it.

The faults are those a healthy test server never produces: throttling (503 SlowDown, 429) for the
first N requests of a key, and a response whose Content-Length disagrees with its body. Every
other request goes to the upstream server unchanged (the Host header included, so SigV4 signatures
still match) and its answer comes back unchanged but for the framing: the body is read whole and
sent with its own Content-Length. With `tls`, the proxy speaks HTTPS to the client (stdlib ssl,
certificate chosen by the test) and plain HTTP to the server.
"""

from __future__ import annotations

import http.client
import http.server
import ssl
import threading
from dataclasses import dataclass

# Per-connection or framing headers: the proxy frames each answer itself.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
)


@dataclass
class Fault:
    """What to do to the next `times` requests whose target contains `match`.

    `status`: answer it without asking the server, with `body`. `length_delta`: ask the server,
    then send its body with a Content-Length that much off (more: the body ends early and the
    connection closes; less: only that many bytes are sent) and close the connection.
    """

    match: str
    times: int
    status: int = 0
    body: bytes = b""
    length_delta: int = 0


def s3_error(code: str) -> bytes:
    return (
        f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code>"
        f"<Message>injected by the test proxy</Message></Error>"
    ).encode()


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream` (host, port)."""

    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, target) of every request received
        self.injected = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self), tls)
        self.port = self._server.server_address[1]
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def take(self, method: str, target: str) -> Fault | None:
        """Note the request; the fault it gets, if any (each fault counts its own uses down)."""
        with self._lock:
            self.requests.append((method, target))
            for fault in self.faults:
                if fault.times > 0 and fault.match in target:
                    fault.times -= 1
                    self.injected += 1
                    return fault
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        super().__init__(address, handler)

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            # The handshake happens on the connection's own thread, at its first read.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, _request, _client_address) -> None:
        pass  # a client that gives up on our certificate is what the TLS tests expect


def _handler_for(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, *_args) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            fault = proxy.take(self.command, self.path)
            if fault is not None and fault.status:
                self._answer(fault.status, [("Content-Type", "application/xml")], fault.body)
                return
            status, reason, headers, data = self._ask_upstream(body)
            delta = fault.length_delta if fault is not None else 0
            if self.command == "HEAD" or status in (204, 304):
                self._answer(status, headers, b"", reason, keep_length=True)
            elif delta:
                sent = data[: len(data) + delta] if delta < 0 else data
                self._answer(status, headers, sent, reason, length=len(data) + delta)
                self.close_connection = True
            else:
                self._answer(status, headers, data, reason)

        def _ask_upstream(self, body: bytes | None):
            for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    self.upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in _HOP_BY_HOP or name.lower() == "content-length":
                            self.upstream.putheader(name, value)
                    self.upstream.endheaders(body)
                    response = self.upstream.getresponse()
                    data = response.read()
                except (http.client.HTTPException, OSError):
                    self.upstream.close()
                    self.upstream = None
                    if attempt == 2:
                        raise
                    continue
                return response.status, response.reason, response.getheaders(), data
            raise AssertionError("unreachable")

        def _answer(
            self,
            status: int,
            headers: list[tuple[str, str]],
            body: bytes,
            reason: str | None = None,
            *,
            length: int | None = None,
            keep_length: bool = False,
        ) -> None:
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP or (
                    keep_length and name.lower() == "content-length"
                ):
                    self.send_header(name, value)
            if not keep_length:
                self.send_header("Content-Length", str(len(body) if length is None else length))
            if length is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(body)

        do_GET = do_HEAD = _forward  # snapfs only reads

        def finish(self) -> None:
            super().finish()
            if self.upstream is not None:
                self.upstream.close()

    return Handler


def tls_context(cert_pem: bytes, key_pem: bytes, folder) -> ssl.SSLContext:
    """A server-side context for one certificate and key (written to `folder`: ssl reads files)."""
    cert, key = folder / "server.pem", folder / "server.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
