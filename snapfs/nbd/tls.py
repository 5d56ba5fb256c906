"""TLS for `snapfs nbd`: the server's SSL context from the files the user names, and the
encrypted stream a connection switches to after NBD_OPT_STARTTLS.

Why not `ssl.SSLSocket`: a connection's thread reads requests while worker threads send replies
(server.py), and OpenSSL forbids using one SSL object from two threads at once; CPython's
SSLSocket can crash under a concurrent recv and send. `TlsStream` keeps the SSL object behind a
lock and moves bytes between it and the socket through memory BIOs with the lock released, so a
reader blocked on the socket never holds up a reply, and the stdlib still does all the TLS.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from snapfs.errors import UsageError

__all__ = ["HANDSHAKE_TIMEOUT", "TlsStream", "tls_context"]

#: A client that sends STARTTLS and then stalls must not hold a thread forever.
HANDSHAKE_TIMEOUT = 30.0
_RECV_SIZE = 256 * 1024


def tls_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """The server context: TLS 1.2 or later with `cert` and its `key`; with `ca`, every client
    must present a certificate signed by it.

    Each file is checked first so that a bad one gets an error naming it (OpenSSL's own errors
    name neither the file nor the option), and an encrypted key is refused instead of prompting
    for its passphrase on the terminal.
    """
    _load_certificates("--tls-cert", cert)
    _load_key(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key, password=lambda: _no_passphrase(key))
    except OSError:  # ssl.SSLError included: both parsed above, so they do not belong together
        raise UsageError(
            f"--tls-key {key} is not the private key of the certificate in --tls-cert {cert}"
        ) from None
    if ca is not None:
        _load_certificates("--tls-ca", ca)
        try:
            ctx.load_verify_locations(cafile=ca)
        except OSError:
            raise UsageError(f"--tls-ca {ca}: OpenSSL cannot use these certificates") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror}") from None


def _load_certificates(option: str, path: str) -> None:
    try:
        x509.load_pem_x509_certificates(_read(option, path))
    except ValueError:
        raise UsageError(f"{option} {path} holds no PEM certificate") from None


def _load_key(path: str) -> None:
    try:
        serialization.load_pem_private_key(_read("--tls-key", path), password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise UsageError(
            f"--tls-key {path} is encrypted with a passphrase; give an unencrypted key "
            "readable only by the user snapfs runs as"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"--tls-key {path} holds no PEM private key") from None


def _no_passphrase(path: str) -> bytes:
    """OpenSSL asks for a passphrase: never prompt on the terminal of a server."""
    raise UsageError(f"--tls-key {path} is encrypted with a passphrase")


class TlsStream:
    """The server side of one TLS session over a connected socket, safe for one reading thread
    and any number of sending threads.

    `recv_into` has the socket method's meaning (0 at the end of the stream), so
    `protocol.recv_exactly` reads from either.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()  # the SSL object and its BIOs
        self._send_lock = threading.Lock()  # taken before _lock: bytes leave in the order made

    def handshake(self) -> None:
        """Complete the handshake the client starts within HANDSHAKE_TIMEOUT seconds, or raise
        (ssl.SSLError, TimeoutError, ...); then `send_alert` tells the client why."""
        self.sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            while True:
                try:
                    with self._lock:
                        self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    self._fill()
        finally:
            self.sock.settimeout(None)
        self._flush()

    def send_alert(self) -> None:
        """Send what a failed handshake left to say (TLS's alert), if the client still listens."""
        with contextlib.suppress(OSError):
            self._flush()

    def recv_into(self, buffer: memoryview, nbytes: int) -> int:
        while True:
            with self._lock:
                try:
                    got: int | None = self._tls.read(nbytes, buffer)
                except ssl.SSLWantReadError:
                    got = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    got = 0  # close_notify, or the client just closed the socket
                answer = self._outgoing.pending  # TLS 1.3 may answer a message it read
            if answer:
                self._flush()
            if got is not None:
                return got
            self._fill()

    def sendall(self, *buffers: bytes | memoryview) -> None:
        with self._send_lock:
            with self._lock:
                for buf in buffers:
                    view = memoryview(buf).cast("B")
                    while view:
                        view = view[self._tls.write(view) :]
                data = self._outgoing.read()
            self.sock.sendall(data)

    def close_notify(self) -> None:
        """End the TLS session politely (the protocol asks for it after NBD_CMD_DISC); the
        client's own close_notify is not waited for."""
        with self._send_lock:
            with self._lock:
                with contextlib.suppress(ssl.SSLError):
                    self._tls.unwrap()
                data = self._outgoing.read()
            with contextlib.suppress(OSError):
                self.sock.sendall(data)

    def peer_name(self) -> str | None:
        """The common name of the client's certificate, for the log (None without one)."""
        with self._lock:
            cert = self._tls.getpeercert()
        if not cert:
            return None
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        return names[0] if names else ""

    def _fill(self) -> None:
        """Block for bytes from the socket and hand them to the SSL object."""
        data = self.sock.recv(_RECV_SIZE)
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                data = self._outgoing.read()
            if data:
                self.sock.sendall(data)
