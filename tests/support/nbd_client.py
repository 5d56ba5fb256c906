"""A minimal NBD client (fixed newstyle, NBD_OPT_GO, STARTTLS, simple replies), for tests and
benchmarks.

Not a general client: it speaks exactly what snapfs's server speaks, and lets a caller pipeline
requests (`send_read` many, then `recv_reply`) to measure the server rather than the round trip.
"""

from __future__ import annotations

import socket
import ssl
import struct

from snapfs.errors import SnapfsError
from snapfs.nbd import protocol as P


class NbdClientError(SnapfsError):
    """The server refused an option or answered a request with an error."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class NbdClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.size = 0
        self.flags = 0
        self.block_sizes: tuple[int, int, int] | None = None
        self._cookie = 0

    @classmethod
    def connect(cls, address: str | tuple[str, int]) -> NbdClient:
        """`address`: (host, port) or the path of a Unix socket."""
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(address)
        client = cls(sock)
        client.handshake()
        return client

    def recv_exactly(self, n: int) -> bytes:
        data = P.recv_exactly(self.sock, n)
        if data is None:
            raise NbdClientError(f"server closed the connection before {n} bytes were read")
        return data

    def handshake(self) -> int:
        magic, opt_magic, flags = struct.unpack(">QQH", self.recv_exactly(18))
        if magic != P.NBDMAGIC or opt_magic != P.IHAVEOPT:
            raise NbdClientError("not a newstyle NBD server")
        self.sock.sendall(struct.pack(">I", P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES))
        return flags

    def send_option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(P.OPTION_HEADER.pack(P.IHAVEOPT, option, len(data)) + data)

    def recv_option_reply(self) -> tuple[int, int, bytes]:
        magic, option, reply, length = P.OPTION_REPLY.unpack(self.recv_exactly(20))
        if magic != P.REPLY_MAGIC:
            raise NbdClientError(f"bad option reply magic 0x{magic:x}")
        return option, reply, self.recv_exactly(length)

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> None:
        """NBD_OPT_STARTTLS, then the TLS handshake; every later byte is encrypted."""
        self.send_option(P.OPT_STARTTLS)
        _, reply, data = self.recv_option_reply()
        if reply != P.REP_ACK:
            raise NbdClientError(f"STARTTLS: reply 0x{reply:x}: {data!r}", reply)
        # An end without TLS's close_notify is an error here, not a quiet end of the stream.
        self.sock = context.wrap_socket(
            self.sock, server_hostname=server_hostname, suppress_ragged_eofs=False
        )

    def list_exports(self) -> list[str]:
        self.send_option(P.OPT_LIST)
        names = []
        while True:
            _, reply, data = self.recv_option_reply()
            if reply == P.REP_ACK:
                return names
            if reply != P.REP_SERVER:
                raise NbdClientError(f"LIST: reply 0x{reply:x}: {data!r}", reply)
            (n,) = struct.unpack_from(">I", data)
            names.append(data[4 : 4 + n].decode())

    def go(self, name: str = "", option: int = P.OPT_GO) -> None:
        raw = name.encode()
        self.send_option(
            option,
            struct.pack(">I", len(raw)) + raw + struct.pack(">HH", 1, P.INFO_BLOCK_SIZE),
        )
        while True:
            _, reply, data = self.recv_option_reply()
            if reply == P.REP_ACK:
                return
            if reply & P.REP_FLAG_ERROR:
                raise NbdClientError(
                    f"export {name!r}: error 0x{reply:x}: {data.decode(errors='replace')}", reply
                )
            (info,) = struct.unpack_from(">H", data)
            if info == P.INFO_EXPORT:
                _, self.size, self.flags = P.INFO_EXPORT_STRUCT.unpack(data)
            elif info == P.INFO_BLOCK_SIZE:
                self.block_sizes = P.INFO_BLOCK_SIZE_STRUCT.unpack(data)[1:]

    # -- transmission ------------------------------------------------------------------------------

    def send_request(
        self, cmd: int, offset: int, length: int, payload: bytes = b"", flags: int = 0
    ) -> int:
        self._cookie += 1
        self.sock.sendall(
            P.REQUEST.pack(P.REQUEST_MAGIC, flags, cmd, self._cookie, offset, length) + payload
        )
        return self._cookie

    def recv_reply(self, length: int = 0) -> tuple[int, int, bytes]:
        """(cookie, error, data); `length` bytes of data follow a successful read reply."""
        magic, error, cookie = P.SIMPLE_REPLY.unpack(self.recv_exactly(16))
        if magic != P.SIMPLE_REPLY_MAGIC:
            raise NbdClientError(f"bad reply magic 0x{magic:x}")
        data = self.recv_exactly(length) if (length and not error) else b""
        return cookie, error, data

    def _check(self, what: str, error: int) -> None:
        if error:
            raise NbdClientError(f"{what}: server error {error}", error)

    def read(self, offset: int, length: int) -> bytes:
        self.send_request(P.CMD_READ, offset, length)
        _, error, data = self.recv_reply(length)
        self._check(f"read {length} at {offset}", error)
        return data

    def write(self, offset: int, data: bytes, flags: int = 0) -> None:
        self.send_request(P.CMD_WRITE, offset, len(data), data, flags)
        self._check(f"write {len(data)} at {offset}", self.recv_reply()[1])

    def flush(self) -> None:
        self.send_request(P.CMD_FLUSH, 0, 0)
        self._check("flush", self.recv_reply()[1])

    def disconnect(self) -> None:
        try:
            self.send_request(P.CMD_DISC, 0, 0)
        finally:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()
