"""The NBD server: handshake, option negotiation and the requests of the transmission phase.

Protocol: newstyle fixed handshake; NBD_OPT_EXPORT_NAME, LIST, INFO, GO (with NBD_INFO_EXPORT,
NAME, DESCRIPTION and BLOCK_SIZE), ABORT, STARTTLS; simple replies only (structured
replies, metadata contexts and extended headers are answered NBD_REP_ERR_UNSUP, which every client
handles). Commands: READ, CACHE, DISC, FLUSH, and with an overlay WRITE and WRITE_ZEROES.

Threads, not trio: each connection has one thread that reads requests; a read whose chunks are all
decoded in the cache is answered right there (a warm 4 KiB read costs one dict lookup and one
sendmsg), others go to a worker pool so a slow chunk (S3) does not hold up the requests behind it.
Replies may leave out of order, which NBD allows (the client matches them by cookie). zstd, AES and
SHA-256 release the GIL, so the workers and the readahead decode on both cores.

TLS (tls.py) is the protocol's FORCEDTLS mode: with a context, every option before
NBD_OPT_STARTTLS but ABORT is answered NBD_REP_ERR_TLS_REQD, NBD_OPT_EXPORT_NAME closes the
connection, and no export byte is sent in clear.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from snapfs.errors import SnapfsError
from snapfs.nbd import DEFAULT_WORKERS
from snapfs.nbd import protocol as P
from snapfs.nbd.exports import Export
from snapfs.nbd.tls import TlsStream
from snapfs.store.readahead import Readahead, SequentialWindow
from snapfs.store.stream import IndexStream

__all__ = ["NbdServer", "reply_error"]

log = logging.getLogger("snapfs.nbd")

READAHEAD_WORKERS = 2
MAX_OPTION_LENGTH = 64 * 1024
ZERO_BLOCK = bytes(1024 * 1024)


class ProtocolError(SnapfsError):
    """The client broke the NBD protocol; the connection is closed."""


#: Host errors that mean the overlay's disk is full; the protocol wants them all as NBD_ENOSPC.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def reply_error(exc: BaseException) -> int:
    """The one place a failed request's error becomes the NBD error value in its reply.

    NBD has its own short list of values (doc/proto.md, "Error values"): a full disk under the
    overlay is NBD_ENOSPC, so the guest's kernel reports ENOSPC and its filesystem can cope;
    anything else (a corrupt or missing chunk, a failing disk) is NBD_EIO.
    """
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return P.ENOSPC
    return P.EIO


class NbdServer:
    """Serves `exports` on listening sockets until `shutdown()`."""

    def __init__(
        self,
        exports: Iterable[Export],
        *,
        workers: int = DEFAULT_WORKERS,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.exports = list(exports)
        self.by_name: dict[str, Export] = {}
        for export in self.exports:
            self.by_name.setdefault(export.name, export)
        for export in self.exports:
            for alias in export.aliases:
                self.by_name.setdefault(alias, export)
        if self.exports:
            self.by_name.setdefault("", self.exports[0])
        self.tls = tls
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapfs-nbd")
        self.readahead = Readahead(READAHEAD_WORKERS, "snapfs-nbd-ahead")
        self._listeners: list[socket.socket] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reported: set[str] = set()

    def serve(self, listener: socket.socket) -> None:
        """Accept connections until shutdown(); each gets its own thread."""
        with self._lock:
            self._listeners.append(listener)
        while not self._stopping.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._run_connection, args=(conn, peer), daemon=True, name="snapfs-nbd-conn"
            ).start()

    def _run_connection(self, conn: socket.socket, peer: object) -> None:
        with self._lock:
            self._connections.add(conn)
        try:
            _Connection(self, conn, peer).run()
        except (OSError, ProtocolError) as exc:
            log.debug("connection %s ended: %s", peer, exc)
        except Exception:
            log.exception("connection %s failed", peer)
        finally:
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def stop_serving(self, listener: socket.socket) -> None:
        """Make `serve(listener)` return; takes no lock, so a signal handler may call it."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)

    def shutdown(self) -> None:
        self._stopping.set()
        with self._lock:
            for sock in self._listeners + list(self._connections):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.readahead.close(wait=True)
        for export in self.exports:
            export.close()

    def report(self, message: str) -> None:
        """Log an error once: a guest retrying a bad sector must not flood the log."""
        if message not in self._reported and len(self._reported) < 10_000:
            self._reported.add(message)
            log.error("%s", message)


class _Connection:
    def __init__(self, server: NbdServer, sock: socket.socket, peer: object) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.send_lock = threading.Lock()
        self.no_zeroes = False
        self.tls: TlsStream | None = None  # after STARTTLS every byte goes through it
        self.refused_clear = False
        self.pending = 0
        self.idle = threading.Condition()
        self.next_offset = -1
        self.window = SequentialWindow()  # a connection reads one export

    # -- plumbing ----------------------------------------------------------------------------------

    def recv_exactly(self, n: int) -> bytes:
        data = P.recv_exactly(self.tls or self.sock, n)
        if data is None:
            raise ProtocolError(f"client closed the connection before {n} bytes were read")
        return data

    def send(self, *buffers: bytes | memoryview) -> None:
        with self.send_lock:
            if self.tls is not None:
                self.tls.sendall(*buffers)
                return
            todo = [memoryview(b).cast("B") for b in buffers if len(b)]
            while todo:
                sent = self.sock.sendmsg(todo)
                while todo and sent >= len(todo[0]):
                    sent -= len(todo[0])
                    todo.pop(0)
                if todo and sent:
                    todo[0] = todo[0][sent:]

    def option_reply(self, option: int, reply: int, data: bytes = b"") -> None:
        self.send(P.OPTION_REPLY.pack(P.REPLY_MAGIC, option, reply, len(data)), data)

    # -- handshake ---------------------------------------------------------------------------------

    def run(self) -> None:
        self.send(
            struct.pack(">QQH", P.NBDMAGIC, P.IHAVEOPT, P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES)
        )
        (client_flags,) = struct.unpack(">I", self.recv_exactly(4))
        if client_flags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES):
            raise ProtocolError(f"unknown client flags 0x{client_flags:x}")
        self.no_zeroes = bool(client_flags & P.FLAG_C_NO_ZEROES)
        export = self.negotiate()
        if export is not None:
            self.transmit(export)
        if self.tls is not None:
            self.tls.close_notify()

    def negotiate(self) -> Export | None:
        while True:
            magic, option, length = P.OPTION_HEADER.unpack(self.recv_exactly(16))
            if magic != P.IHAVEOPT:
                raise ProtocolError(f"bad option magic 0x{magic:x}")
            if length > MAX_OPTION_LENGTH:
                raise ProtocolError(f"option {option} of {length} bytes is too long")
            data = self.recv_exactly(length)
            if self.server.tls is not None and self.tls is None:
                if option == P.OPT_EXPORT_NAME:  # cannot be answered with an error
                    self.refuse_clear()
                    raise ProtocolError("NBD_OPT_EXPORT_NAME before STARTTLS")
                if option not in (P.OPT_STARTTLS, P.OPT_ABORT):
                    self.refuse_clear()
                    self.option_reply(option, P.REP_ERR_TLS_REQD, b"TLS is required")
                    continue
            if option == P.OPT_EXPORT_NAME:
                export = self.lookup(data.decode("utf-8", "replace"))
                if export is None:
                    raise ProtocolError("NBD_OPT_EXPORT_NAME of an unknown export")
                try:
                    size = export.source().size
                except SnapfsError as exc:
                    self.server.report(f"export {export.name}: {exc}")
                    raise ProtocolError(str(exc)) from None
                self.send(
                    struct.pack(">QH", size, export.transmission_flags()),
                    b"" if self.no_zeroes else bytes(124),
                )
                return export
            if option == P.OPT_ABORT:
                with contextlib.suppress(OSError):
                    self.option_reply(option, P.REP_ACK)
                return None
            if option == P.OPT_LIST:
                if data:
                    self.option_reply(option, P.REP_ERR_INVALID, b"LIST takes no data")
                    continue
                for export in self.server.exports:
                    name = export.name.encode()
                    self.option_reply(option, P.REP_SERVER, struct.pack(">I", len(name)) + name)
                self.option_reply(option, P.REP_ACK)
            elif option in (P.OPT_INFO, P.OPT_GO):
                export = self.info(option, data)
                if export is not None and option == P.OPT_GO:
                    return export
            elif option == P.OPT_STARTTLS:
                self.starttls(data)
            else:
                self.option_reply(option, P.REP_ERR_UNSUP, b"not supported by snapfs")

    def lookup(self, name: str) -> Export | None:
        return self.server.by_name.get(name)

    def info(self, option: int, data: bytes) -> Export | None:
        if len(data) < 6:
            self.option_reply(option, P.REP_ERR_INVALID, b"option data too short")
            return None
        (name_len,) = struct.unpack_from(">I", data)
        if 4 + name_len + 2 > len(data):
            self.option_reply(option, P.REP_ERR_INVALID, b"export name length out of range")
            return None
        name = data[4 : 4 + name_len]
        (count,) = struct.unpack_from(">H", data, 4 + name_len)
        if len(data) != 4 + name_len + 2 + 2 * count:
            self.option_reply(option, P.REP_ERR_INVALID, b"information request list malformed")
            return None
        wanted = set(struct.unpack_from(f">{count}H", data, 4 + name_len + 2))
        export = self.lookup(name.decode("utf-8", "replace"))
        if export is None:
            self.option_reply(option, P.REP_ERR_UNKNOWN, b"no such export: " + name[:200])
            return None
        try:
            size = export.source().size
        except SnapfsError as exc:
            self.server.report(f"export {export.name}: {exc}")
            self.option_reply(option, P.REP_ERR_UNKNOWN, str(exc).encode()[:1000])
            return None
        reply = P.REP_INFO
        self.option_reply(
            option,
            reply,
            P.INFO_EXPORT_STRUCT.pack(P.INFO_EXPORT, size, export.transmission_flags()),
        )
        self.option_reply(
            option,
            reply,
            P.INFO_BLOCK_SIZE_STRUCT.pack(P.INFO_BLOCK_SIZE, 1, P.PREFERRED_BLOCK, P.MAX_PAYLOAD),
        )
        if P.INFO_NAME in wanted:
            self.option_reply(option, reply, struct.pack(">H", P.INFO_NAME) + export.name.encode())
        if P.INFO_DESCRIPTION in wanted and export.description:
            self.option_reply(
                option,
                reply,
                struct.pack(">H", P.INFO_DESCRIPTION) + export.description.encode()[:4096],
            )
        self.option_reply(option, P.REP_ACK)
        return export

    def refuse_clear(self) -> None:
        """Log (once per connection) that a client tried to go on without TLS."""
        if not self.refused_clear:
            self.refused_clear = True
            log.warning("client %s refused: it did not start TLS", _peer_name(self.peer))

    def starttls(self, data: bytes) -> None:
        if self.server.tls is None:
            self.option_reply(P.OPT_STARTTLS, P.REP_ERR_UNSUP, b"TLS is not configured")
            return
        if self.tls is not None:
            self.option_reply(P.OPT_STARTTLS, P.REP_ERR_INVALID, b"TLS is already on")
            return
        if data:
            self.option_reply(P.OPT_STARTTLS, P.REP_ERR_INVALID, b"STARTTLS takes no data")
            return
        self.option_reply(P.OPT_STARTTLS, P.REP_ACK)
        stream = TlsStream(self.sock, self.server.tls)
        try:
            stream.handshake()
        except OSError as exc:  # ssl.SSLError, or the client hung up (it may distrust our CA)
            log.warning(
                "client %s refused: TLS handshake failed: %s",
                _peer_name(self.peer),
                _handshake_failure(exc),
            )
            stream.send_alert()  # after the log line: a client that sees it finds the line
            raise ProtocolError("TLS handshake failed") from None
        self.tls = stream  # nothing negotiated before STARTTLS is kept: there is no such state
        name = stream.peer_name()
        certificate = "no client certificate" if name is None else f"certificate of {name!r}"
        log.info("client %s started TLS (%s)", _peer_name(self.peer), certificate)

    # -- transmission ------------------------------------------------------------------------------

    def transmit(self, export: Export) -> None:
        size = export.source().size
        server = self.server
        try:
            while True:
                magic, flags, cmd, cookie, offset, length = P.REQUEST.unpack(
                    self.recv_exactly(P.REQUEST.size)
                )
                if magic != P.REQUEST_MAGIC:
                    raise ProtocolError(f"bad request magic 0x{magic:x}")
                if cmd == P.CMD_READ:
                    error = self.check_range(offset, length, size)
                    if error:
                        self.reply(cookie, error)
                        continue
                    data = export.read(offset, length, block=False)
                    if data is not None:
                        self.reply(cookie, 0, data)
                    else:
                        self.start(self.read_job, export, cookie, offset, length)
                    if offset == self.next_offset:
                        self.read_ahead(export, offset + length)
                    self.next_offset = offset + length
                elif cmd in (P.CMD_WRITE, P.CMD_WRITE_ZEROES):
                    if cmd == P.CMD_WRITE and length > P.MAX_PAYLOAD:
                        raise ProtocolError(f"write of {length} bytes is over the payload limit")
                    payload = self.recv_exactly(length) if cmd == P.CMD_WRITE else None
                    self.reply(
                        cookie, self.write(export, cmd, flags, offset, length, size, payload)
                    )
                elif cmd == P.CMD_FLUSH:
                    self.wait_idle()
                    self.reply(cookie, self.flush(export))
                elif cmd == P.CMD_CACHE:
                    error = self.check_range(offset, length, size, limit=False)
                    source = export.source()
                    if not error and length and isinstance(source, IndexStream):
                        server.readahead.warm_range(source, offset, offset + length)
                    self.reply(cookie, error)
                elif cmd == P.CMD_DISC:
                    return
                else:
                    self.reply(cookie, P.EINVAL)
        finally:
            self.wait_idle()

    def read_ahead(self, export: Export, end: int) -> None:
        """A read ended at `end` and continued the previous one: decode what comes next."""
        source = export.opened
        if isinstance(source, IndexStream):
            chunks = self.window.after(source, end, source.size)
            self.server.readahead.warm(source.chunks, chunks)

    @staticmethod
    def check_range(offset: int, length: int, size: int, limit: bool = True) -> int:
        if offset + length > size:
            return P.EINVAL
        if limit and length > P.MAX_PAYLOAD:
            return P.EINVAL
        return 0

    def reply(self, cookie: int, error: int, data: bytes | memoryview = b"") -> None:
        self.send(P.SIMPLE_REPLY.pack(P.SIMPLE_REPLY_MAGIC, error, cookie), data)

    def start(self, job: Callable, *args: object) -> None:
        with self.idle:
            self.pending += 1
        try:
            self.server.pool.submit(self._run_job, job, *args)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._job_done()
            raise ProtocolError("server is shutting down") from None

    def _run_job(self, job: Callable, *args: object) -> None:
        try:
            job(*args)
        except OSError as exc:
            log.debug("reply not sent: %s", exc)
        finally:
            self._job_done()

    def _job_done(self) -> None:
        with self.idle:
            self.pending -= 1
            if self.pending == 0:
                self.idle.notify_all()

    def wait_idle(self) -> None:
        with self.idle:
            while self.pending:
                self.idle.wait()

    def read_job(self, export: Export, cookie: int, offset: int, length: int) -> None:
        try:
            data = export.read(offset, length)
        except (OSError, SnapfsError) as exc:
            self.server.report(f"export {export.name}: read at {offset}: {exc}")
            self.reply(cookie, reply_error(exc))
            return
        except Exception as exc:
            log.exception("export %s: read at %d failed", export.name, offset)
            self.reply(cookie, reply_error(exc))
            return
        self.reply(cookie, 0, data)

    def write(
        self,
        export: Export,
        cmd: int,
        flags: int,
        offset: int,
        length: int,
        size: int,
        payload: bytes | None,
    ) -> int:
        overlay = export.overlay
        if overlay is None:
            return P.EPERM
        if offset + length > size:
            return P.ENOSPC
        fua = bool(flags & P.CMD_FLAG_FUA)
        try:
            if payload is not None:
                if length:
                    overlay.write(offset, payload, fua)
            else:
                pos = offset
                while pos < offset + length:
                    n = min(len(ZERO_BLOCK), offset + length - pos)
                    overlay.write(pos, memoryview(ZERO_BLOCK)[:n], fua)
                    pos += n
        except (OSError, SnapfsError) as exc:
            self.server.report(f"export {export.name}: write at {offset}: {exc}")
            return reply_error(exc)
        return 0

    def flush(self, export: Export) -> int:
        if export.overlay is None:
            return 0
        try:
            export.overlay.flush()
        except OSError as exc:
            self.server.report(f"export {export.name}: flush: {exc}")
            return reply_error(exc)
        return 0


def _peer_name(peer: object) -> str:
    """host:port of a TCP peer; a Unix socket's peer has no name."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "on the Unix socket"


def _handshake_failure(exc: OSError) -> str:
    """Why a TLS handshake failed, in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "the client presented no certificate"
        return str(exc.reason or exc)
    if isinstance(exc, TimeoutError):
        return "no handshake within the time allowed"
    return f"{exc.strerror or exc} (does the client trust this server's certificate?)"
