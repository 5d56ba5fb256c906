"""The NBD server: golden images served exactly, protocol answers, bad requests, the overlay, and
real clients (nbdinfo, qemu-img, qemu-io, nbdcopy) against it."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.mounting import tmpfs
from support.nbd_client import NbdClientError
from support.nbd_serving import Served
from support.vectors import IMAGE_SHA256, VECTOR_PASSWORD

from snapfs.backup import backup, parse_backup_source
from snapfs.cli import main
from snapfs.errors import BadMagicError, MissingChunkError, UsageError
from snapfs.format.keyfile import KeyFile
from snapfs.nbd import protocol as P
from snapfs.nbd.exports import datastore_exports
from snapfs.nbd.listen import listener_url, open_listener
from snapfs.nbd.overlay import Overlay
from snapfs.nbd.server import NbdServer, reply_error
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore

GOLDEN_SIZE = 13635072
GOLDEN_PLAIN = "vm/100/2024-06-01T10:00:00Z"
GOLDEN_ENCRYPTED = "vm/100/2024-06-01T14:00:00Z"


@pytest.fixture
def golden(vectors):
    key = KeyFile.from_json((vectors / "keys" / "key-scrypt.json").read_bytes(), name="key")
    crypt = key.unlock(VECTOR_PASSWORD)
    ds = Datastore(LocalBackend(vectors / "datastore"))
    exports = datastore_exports(ds, None, ChunkCache(), [GOLDEN_PLAIN])
    exports += datastore_exports(ds, crypt, ChunkCache(), [GOLDEN_ENCRYPTED])
    served = Served(exports)
    yield served
    served.stop()


def _image(tmp_path: Path, size: int = 5 * 1024 * 1024 + 3 * 4096) -> bytes:
    rnd = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    data = bytearray(rnd[:size])
    data[1024 * 1024 : 3 * 1024 * 1024] = bytes(2 * 1024 * 1024)  # shared zero chunks
    return bytes(data)


@pytest.fixture
def local(tmp_path):
    """A datastore of our writer with one 5 MiB image; (datastore dir, image bytes)."""
    data = _image(tmp_path)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(data)
    store = tmp_path / "ds"
    backup(
        store,
        [parse_backup_source(f"drive-scsi0.img:{raw}")],
        backup_type="vm",
        backup_id="100",
        backup_time=1717236000,
    )
    return store, data


def _serve_local(store: Path, overlay: str | None = None, cache: ChunkCache | None = None):
    ds = Datastore(LocalBackend(store))
    return Served(datastore_exports(ds, None, cache or ChunkCache(), [], overlay=overlay))


# --- golden vectors -------------------------------------------------------------------------------


def test_golden_images_served_exactly(golden):
    for snap in (GOLDEN_PLAIN, GOLDEN_ENCRYPTED):
        c = golden.client(f"{snap}/drive-scsi0.img")
        assert c.size == GOLDEN_SIZE
        assert c.flags & P.TFLAG_READ_ONLY
        data = b"".join(c.read(o, min(1 << 20, GOLDEN_SIZE - o)) for o in range(0, c.size, 1 << 20))
        c.disconnect()
        assert hashlib.sha256(data).hexdigest() == IMAGE_SHA256
        line = b"vector image block 00000000: the quick brown fox jumps over the lazy dog\n"
        assert data.startswith(line)
        assert data[4194304 : 3 * 4194304] == bytes(2 * 4194304)


def test_golden_random_reads_across_chunk_borders(golden):
    c = golden.client(f"{GOLDEN_PLAIN}/drive-scsi0.img")
    whole = b"".join(c.read(o, min(1 << 22, c.size - o)) for o in range(0, c.size, 1 << 22))
    for offset, length in [(4194300, 10), (0, 1), (c.size - 1, 1), (12582911, 4097), (4096, 0)]:
        assert c.read(offset, length) == whole[offset : offset + length]
    c.disconnect()


def test_list_names_every_export(golden):
    c = golden.client(None)
    assert c.list_exports() == [
        f"{GOLDEN_PLAIN}/drive-scsi0.img",
        f"{GOLDEN_ENCRYPTED}/drive-scsi0.img",
    ]
    c.close()


def test_info_reports_size_flags_and_block_sizes(golden):
    c = golden.client(None)
    c.go(f"{GOLDEN_PLAIN}/drive-scsi0.img", option=P.OPT_INFO)
    assert c.size == GOLDEN_SIZE
    assert c.block_sizes == (1, 4096, P.MAX_PAYLOAD)
    c.go("")  # the empty name is the first export
    assert c.read(0, 6) == b"vector"
    c.disconnect()


def test_encrypted_image_without_key_is_refused(vectors):
    ds = Datastore(LocalBackend(vectors / "datastore"))
    with pytest.raises(Exception) as info:
        exports = datastore_exports(ds, None, ChunkCache(), [GOLDEN_ENCRYPTED])
        exports[0].source()
    assert "key" in str(info.value).lower()


# --- protocol errors ------------------------------------------------------------------------------


def test_unknown_export_is_an_error_reply(golden):
    c = golden.client(None)
    with pytest.raises(NbdClientError) as info:
        c.go("vm/999/none.img")
    assert info.value.code == P.REP_ERR_UNKNOWN
    c.go(f"{GOLDEN_PLAIN}/drive-scsi0.img")  # the connection stays usable
    assert c.read(0, 6) == b"vector"
    c.disconnect()


def test_unsupported_options_are_refused(golden):
    c = golden.client(None)
    for option in (P.OPT_STRUCTURED_REPLY, P.OPT_SET_META_CONTEXT, P.OPT_STARTTLS, 9999):
        c.send_option(option)
        _, reply, _ = c.recv_option_reply()
        assert reply == P.REP_ERR_UNSUP
    c.close()


def test_malformed_go_is_invalid(golden):
    c = golden.client(None)
    c.send_option(P.OPT_GO, struct.pack(">I", 1000) + b"x")
    assert c.recv_option_reply()[1] == P.REP_ERR_INVALID
    c.close()


def test_read_past_end_is_einval(golden):
    c = golden.client(f"{GOLDEN_PLAIN}/drive-scsi0.img")
    c.send_request(P.CMD_READ, GOLDEN_SIZE - 1, 2)
    assert c.recv_reply()[1] == P.EINVAL
    c.send_request(P.CMD_READ, 0, P.MAX_PAYLOAD + 1)
    assert c.recv_reply()[1] == P.EINVAL
    assert c.read(0, 6) == b"vector"
    c.disconnect()


def test_write_to_read_only_export_is_eperm(golden):
    c = golden.client(f"{GOLDEN_PLAIN}/drive-scsi0.img")
    with pytest.raises(NbdClientError) as info:
        c.write(0, b"boom")
    assert info.value.code == P.EPERM
    c.flush()  # a flush of a read-only export succeeds
    assert c.read(0, 6) == b"vector"
    c.disconnect()


def test_bad_magic_closes_connection(golden):
    c = golden.client(None)
    c.sock.sendall(struct.pack(">QII", 0x1234, P.OPT_GO, 0))
    assert c.sock.recv(1) == b""
    c.close()
    c = golden.client(f"{GOLDEN_PLAIN}/drive-scsi0.img")
    c.sock.sendall(P.REQUEST.pack(0xDEAD, 0, P.CMD_READ, 1, 0, 10))
    assert c.sock.recv(1) == b""
    c.close()


def test_unknown_client_flags_close_connection(golden):
    sock = socket.create_connection(golden.address)
    sock.recv(18)
    sock.sendall(struct.pack(">I", 0x80))
    assert sock.recv(1) == b""
    sock.close()


def test_export_name_option_and_zero_padding(golden):
    sock = socket.create_connection(golden.address)
    sock.recv(18, socket.MSG_WAITALL)
    sock.sendall(struct.pack(">I", P.FLAG_C_FIXED_NEWSTYLE))  # no NO_ZEROES: 124 zero bytes
    name = f"{GOLDEN_PLAIN}/drive-scsi0.img".encode()
    sock.sendall(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, len(name)) + name)
    reply = sock.recv(10 + 124, socket.MSG_WAITALL)
    size, flags = struct.unpack(">QH", reply[:10])
    assert (size, reply[10:]) == (GOLDEN_SIZE, bytes(124))
    assert flags & P.TFLAG_READ_ONLY
    sock.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=0, max_size=200))
def test_fuzzed_option_phase_never_kills_server(golden, garbage):
    sock = socket.create_connection(golden.address)
    sock.recv(18, socket.MSG_WAITALL)
    try:
        sock.sendall(struct.pack(">I", 3) + garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass  # the server may close (reset) as soon as it has read enough garbage
    sock.close()
    c = golden.client(f"{GOLDEN_PLAIN}/drive-scsi0.img")
    assert c.read(0, 6) == b"vector"
    c.disconnect()


# --- cache, overlay -------------------------------------------------------------------------------


def test_warm_small_read_is_served_from_memory(local):
    store, data = local
    cache = ChunkCache()
    served = _serve_local(store, cache=cache)
    try:
        c = served.client("drive-scsi0.img")
        assert c.read(3 * 1024 * 1024 + 5, 4096) == data[3 * 1024 * 1024 + 5 :][:4096]
        misses = cache.misses
        for offset in range(3 * 1024 * 1024, 4 * 1024 * 1024, 65536):
            assert c.read(offset, 4096) == data[offset : offset + 4096]
        # Every later read of that chunk is a hit: nothing decoded, nothing read from disk.
        assert cache.misses == misses
        c.disconnect()
    finally:
        served.stop()


def test_overlay_keeps_writes_and_leaves_backup_alone(local, tmp_path):
    store, data = local
    chunks_before = {p: p.read_bytes() for p in (store / ".chunks").rglob("*") if p.is_file()}
    ov = str(tmp_path / "overlay")
    served = _serve_local(store, overlay=ov)
    try:
        c = served.client("drive-scsi0.img")
        assert not c.flags & P.TFLAG_READ_ONLY
        c.write(4095, b"X" * 4098)  # partial blocks at both ends
        c.write(c.size - 3, b"END", flags=P.CMD_FLAG_FUA)
        c.send_request(P.CMD_WRITE_ZEROES, 100, 50)
        assert c.recv_reply()[1] == 0
        c.flush()
        expect = bytearray(data)
        expect[4095 : 4095 + 4098] = b"X" * 4098
        expect[-3:] = b"END"
        expect[100:150] = bytes(50)
        assert c.read(0, 16384) == bytes(expect[:16384])
        assert c.read(c.size - 10, 10) == bytes(expect[-10:])
        with pytest.raises(NbdClientError) as info:
            c.write(c.size - 1, b"ab")
        assert info.value.code == P.ENOSPC
        c.disconnect()
    finally:
        served.stop()
    # The overlay survives a restart; the datastore is byte-for-byte unchanged.
    served = _serve_local(store, overlay=ov)
    try:
        c = served.client("")
        whole = b"".join(c.read(o, min(1 << 20, c.size - o)) for o in range(0, c.size, 1 << 20))
        assert whole == bytes(expect)
        c.disconnect()
    finally:
        served.stop()
    assert {p: p.read_bytes() for p in (store / ".chunks").rglob("*") if p.is_file()} == (
        chunks_before
    )


def test_overlay_on_a_full_disk_answers_enospc(local, tmp_path):
    """The overlay's disk fills up: NBD_ENOSPC (the guest sees ENOSPC), not EIO; a write that
    failed leaves the guest's view as it was, and the connection goes on."""
    store, data = local
    mib = 1 << 20
    with tmpfs(tmp_path / "small", "256k") as small:
        served = _serve_local(store, overlay=str(small / "overlay"))
        try:
            c = served.client("drive-scsi0.img")
            c.write(8192, b"A" * 4096)
            with pytest.raises(NbdClientError) as info:
                c.write(mib, b"B" * mib)  # four times what the disk holds
            assert info.value.code == P.ENOSPC
            assert c.read(8192, 4096) == b"A" * 4096
            assert c.read(mib, 8192) == data[mib : mib + 8192]
            c.disconnect()
        finally:
            served.stop()


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (OSError(errno.ENOSPC, "full"), P.ENOSPC),
        (OSError(errno.EDQUOT, "quota"), P.ENOSPC),
        (OSError(errno.EFBIG, "too large"), P.ENOSPC),
        (OSError(errno.EIO, "bad disk"), P.EIO),
        (MissingChunkError("chunk"), P.EIO),
        (ValueError("a bug"), P.EIO),
    ],
)
def test_reply_error_follows_the_protocol(exc, code):
    assert reply_error(exc) == code


def test_overlay_of_another_image_is_refused(tmp_path):
    path = str(tmp_path / "ov")
    Overlay(path, 8192, "vm/100/a/drive-scsi0.img", lambda o, n: bytes(n)).close()
    with pytest.raises(UsageError):
        Overlay(path, 8192, "vm/101/b/drive-scsi0.img", lambda o, n: bytes(n))
    with pytest.raises(UsageError):
        Overlay(path, 4096, "vm/100/a/drive-scsi0.img", lambda o, n: bytes(n))


def test_overlay_file_that_is_not_one_is_refused(tmp_path):
    path = tmp_path / "ov"
    path.write_bytes(b"not an overlay at all" * 20)
    with pytest.raises(BadMagicError):
        Overlay(str(path), 8192, "x", lambda o, n: bytes(n))


def test_overlay_needs_exactly_one_export(vectors, tmp_path):
    ds = Datastore(LocalBackend(vectors / "datastore"))
    with pytest.raises(UsageError):
        datastore_exports(ds, None, ChunkCache(), [], overlay=str(tmp_path / "ov"))


def test_image_before_snapshot_is_a_usage_error(vectors):
    ds = Datastore(LocalBackend(vectors / "datastore"))
    with pytest.raises(UsageError):
        datastore_exports(ds, None, ChunkCache(), ["drive-scsi0.img"])


def test_workers_below_one_is_a_usage_error(vectors, capsys):
    code = main(["nbd", str(vectors / "datastore"), "--workers", "0"])
    assert code == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


# --- real clients ---------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed (scripts/setup installs qemu-utils and libnbd-bin)")
    return path


def test_qemu_img_compare_equal_to_original(local, tmp_path):
    store, data = local
    raw = tmp_path / "disk.raw"
    served = _serve_local(store)
    try:
        url = served.url("vm/100/2024-06-01T10:00:00Z/drive-scsi0.img")
        result = subprocess.run(
            [_tool("qemu-img"), "compare", "-f", "raw", "-F", "raw", str(raw), url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = subprocess.run(
            [_tool("nbdinfo"), "--json", url], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert f'"export-size": {len(data)}' in out.stdout
        copy = tmp_path / "copy.raw"
        subprocess.run([_tool("nbdcopy"), url, str(copy)], check=True, timeout=60)
        assert copy.read_bytes() == data
    finally:
        served.stop()


def test_qemu_io_writes_through_overlay_over_unix_socket(local, tmp_path):
    store, data = local
    ds = Datastore(LocalBackend(store))
    sock_path = str(tmp_path / "nbd.sock")
    listener = open_listener(None, sock_path)
    server = NbdServer(datastore_exports(ds, None, ChunkCache(), [], overlay=str(tmp_path / "ov")))
    thread = threading.Thread(target=server.serve, args=(listener,))
    thread.start()
    try:
        url = listener_url(listener, "drive-scsi0.img")
        result = subprocess.run(
            [_tool("qemu-io"), "-f", "raw", "-c", "write -P 0xab 1000 70000", "-c", "flush", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        copy = tmp_path / "merged.raw"
        subprocess.run(
            [_tool("qemu-img"), "convert", "-f", "raw", "-O", "raw", url, str(copy)],
            check=True,
            timeout=60,
        )
        merged = copy.read_bytes()
        assert merged[1000:71000] == b"\xab" * 70000
        assert merged[:1000] == data[:1000] and merged[71000:] == data[71000:]
    finally:
        server.shutdown()
        thread.join(10)
    assert os.path.exists(tmp_path / "ov")
