"""NBD wire constants and structs (newstyle fixed handshake, simple replies), shared by the
server (server.py) and the small client the tests and benchmark use (tests/support/nbd_client.py).

Names follow the protocol document (github.com/NetworkBlockDevice/nbd doc/proto.md).
"""

from __future__ import annotations

import struct
from typing import Protocol

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9  # option replies
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# option reply types
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1
REP_ERR_POLICY = REP_FLAG_ERROR | 2
REP_ERR_INVALID = REP_FLAG_ERROR | 3
REP_ERR_TLS_REQD = REP_FLAG_ERROR | 5
REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6

# NBD_REP_INFO types
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_CAN_MULTI_CONN = 1 << 8
TFLAG_SEND_CACHE = 1 << 10

# commands and command flags
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_FLAG_FUA = 1 << 0

# errno values on the wire (fixed by the protocol, not the host's)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # REPLY_MAGIC, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
INFO_EXPORT_STRUCT = struct.Struct(">HQH")  # type, size, transmission flags
INFO_BLOCK_SIZE_STRUCT = struct.Struct(">HIII")  # type, minimum, preferred, maximum payload

#: Largest request payload we accept and advertise (qemu and libnbd default to 32 MiB too).
MAX_PAYLOAD = 32 * 1024 * 1024
PREFERRED_BLOCK = 4096


class Receiver(Protocol):
    """What bytes are read from: a socket, or the TLS stream over one (tls.py)."""

    def recv_into(self, buffer: memoryview, nbytes: int, /) -> int: ...


#: recv_exactly allocates at most this much ahead of the bytes that have arrived.
RECV_PIECE = 1024 * 1024


def recv_exactly(sock: Receiver, n: int) -> bytes | None:
    """Exactly n bytes from the socket, or None if the peer closes the connection first.

    The buffer grows with what arrives, a piece at a time: a request whose length field claims
    32 MiB and sends 10 bytes costs a piece, not 32 MiB.
    """
    buf = bytearray(min(n, RECV_PIECE))
    view = memoryview(buf)
    got = 0
    while got < n:
        if got == len(buf):
            view.release()
            buf.extend(bytes(min(n - got, len(buf))))  # doubles, up to n
            view = memoryview(buf)
        r = sock.recv_into(view[got:], len(buf) - got)
        if r == 0:
            return None
        got += r
    view.release()
    return bytes(buf)
