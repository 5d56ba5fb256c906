"""Fuzzing of the NBD server's parsers: the handshake, option haggling and the requests of the
transmission phase, each fed arbitrary and mutated bytes through a real socket pair to the
server's own connection handler. A connection ends normally or with the server's ProtocolError
(a SnapfsError); memory follows the bytes that arrive, never what a length field claims."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.fuzzing import INTERESTING, fuzz, mutate, mutations, within_memory

from snapfs.nbd import protocol as P
from snapfs.nbd.exports import datastore_exports
from snapfs.nbd.server import NbdServer, _Connection
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore

GOLDEN_PLAIN = "vm/100/2024-06-01T10:00:00Z"
EXPORT = f"{GOLDEN_PLAIN}/drive-scsi0.img"
GOLDEN_SIZE = 13635072


@pytest.fixture(scope="module")
def servers(vectors, tmp_path_factory):
    """A read-only server and one with a copy-on-write overlay, over the golden image."""
    ds = Datastore(LocalBackend(vectors / "datastore"))
    overlay = str(tmp_path_factory.mktemp("nbd-fuzz") / "overlay")
    made = {
        "read-only": NbdServer(datastore_exports(ds, None, ChunkCache(), [GOLDEN_PLAIN])),
        "overlay": NbdServer(
            datastore_exports(ds, None, ChunkCache(), [GOLDEN_PLAIN], overlay=overlay)
        ),
    }
    yield made
    for server in made.values():
        server.shutdown()


def _converse(server: NbdServer, sent: bytes) -> int:
    """Run one connection of `server` on a socket pair whose client side sends `sent` and then
    closes for writing; the client reads every reply. Returns the bytes of replies."""
    ours, theirs = socket.socketpair()
    received = [0]

    def client() -> None:
        try:
            ours.sendall(sent)
            ours.shutdown(socket.SHUT_WR)
            while data := ours.recv(1 << 20):
                received[0] += len(data)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server closed with input left unread: the kernel resets the pair

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        _Connection(server, theirs, "fuzz").run()
    finally:
        theirs.close()
        thread.join(30)
        ours.close()
    assert not thread.is_alive()
    return received[0]


def _option(option: int, data: bytes) -> bytes:
    return P.OPTION_HEADER.pack(P.IHAVEOPT, option, len(data)) + data


def _go(name: str = EXPORT, option: int = P.OPT_GO) -> bytes:
    raw = name.encode()
    return _option(option, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))


FLAGS = struct.pack(">I", P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)

options = st.lists(
    st.tuples(
        st.sampled_from([*range(0, 13), 0x7FFFFFFF, 0xFFFFFFFF]),
        st.binary(max_size=64),
        st.booleans(),
    ),
    max_size=4,
)

requests = st.lists(
    st.tuples(
        st.sampled_from([0, 1, P.CMD_FLAG_FUA, 0xFFFF]),
        st.sampled_from([*range(0, 8), 0xFFFF]),
        st.integers(0, (1 << 64) - 1),
        st.one_of(st.sampled_from(INTERESTING), st.integers(0, GOLDEN_SIZE + 4096)),
        st.one_of(st.sampled_from(INTERESTING), st.integers(0, 128 * 1024)),
    ),
    max_size=6,
)


def _options_bytes(items) -> bytes:
    out = b""
    for option, data, as_go in items:
        out += _go(data.decode("latin-1"), option) if as_go else _option(option, data)
    return out


def _requests_bytes(items) -> bytes:
    out = b""
    for flags, cmd, cookie, offset, length in items:
        length %= 1 << 32
        out += P.REQUEST.pack(P.REQUEST_MAGIC, flags, cmd, cookie, offset % (1 << 64), length)
        if cmd == P.CMD_WRITE and length <= 4096:
            out += bytes(length)
    return out


def _check(server: NbdServer, sent: bytes) -> None:
    within_memory(lambda: _converse(server, sent), len(sent))


@pytest.mark.timeout(180)
@fuzz(500)
@given(
    which=st.sampled_from(["read-only", "overlay"]),
    opts=options,
    go=st.booleans(),
    reqs=requests,
    edits=st.one_of(st.just([]), mutations),
)
@example(
    which="read-only", opts=[], go=True, reqs=[(0, P.CMD_WRITE, 1, 0, P.MAX_PAYLOAD)], edits=[]
)
@example(which="overlay", opts=[], go=True, reqs=[(0, P.CMD_WRITE, 1, 0, P.MAX_PAYLOAD)], edits=[])
@example(which="overlay", opts=[], go=True, reqs=[(0, P.CMD_WRITE, 1, 0, (1 << 32) - 1)], edits=[])
def test_fuzz_nbd_conversation(servers, which, opts, go, reqs, edits):
    sent = FLAGS + _options_bytes(opts) + (_go() if go else b"") + _requests_bytes(reqs)
    sent = mutate(sent, edits) if edits else sent
    _check(servers[which], sent)
    assert len(sent) <= (1 << 20)  # the inputs stay small: the memory bound above is honest


@pytest.mark.timeout(120)
@fuzz(300)
@given(raw=st.binary(max_size=300), after_go=st.booleans())
def test_fuzz_nbd_random_bytes(servers, raw, after_go):
    _check(servers["overlay"], (FLAGS + _go() if after_go else b"") + raw)


def test_fuzz_nbd_server_still_serves(servers):
    """After the fuzzing, a well-formed read answers with the image's bytes."""
    read = P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 7, 0, 4096)
    disc = P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_DISC, 8, 0, 0)
    received = _converse(servers["read-only"], FLAGS + _go() + read + disc)
    assert received >= 4096 + P.SIMPLE_REPLY.size
