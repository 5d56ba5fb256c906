"""pxar encoder and tree walk: byte identity with upstream, round trips, error reporting."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import socket
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.vectors import extract_source_tree

from snapfs.errors import CorruptDataError, NotFoundError
from snapfs.format.source import BytesSource, FileSource
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.acl import acl_from_xattrs, parse_acl_xattr
from snapfs.pxar.encoder import EVENT_DIR_END, Encoder, EntryEvent, Metadata, goodbye_layout
from snapfs.pxar.entry import Acl, Entry, EntryKind
from snapfs.pxar.format import (
    ACL_NO_MASK,
    HEADER,
    PXAR_PAYLOAD,
    PXAR_PAYLOAD_START_MARKER,
    PXAR_PAYLOAD_TAIL_MARKER,
)
from snapfs.pxar.tree import encode_tree, pxar_flags_from_chattr

PRELUDE = b"# pxar v2 prelude test vector\n/excluded/by/pattern\n"
ROOT_MTIME_NS = 1_000_000_000_999_999_999
SOCKET_MTIME_NS = 1_601_900_800_716_049_358


# --- the archived tree, rebuilt from source-tree.tar -------------------------------------------


def _build_source_tree(vectors: Path, dest: Path) -> Path:
    dest.mkdir()
    extract_source_tree(vectors, dest)
    sock_path = dest / "unix_socket"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
    finally:
        sock.close()
    os.chmod(sock_path, 0o755)
    os.chown(sock_path, 0, 0, follow_symlinks=False)
    os.utime(sock_path, ns=(SOCKET_MTIME_NS, SOCKET_MTIME_NS), follow_symlinks=False)
    # Creating the socket touched the root; its metadata comes last (vectors/README.md).
    os.chmod(dest, 0o755)
    os.chown(dest, 0, 0)
    os.utime(dest, ns=(ROOT_MTIME_NS, ROOT_MTIME_NS))
    return dest


@pytest.fixture(scope="module")
def source_tree(vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _build_source_tree(vectors, tmp_path_factory.mktemp("pxar-src") / "tree")
    # The golden bytes depend on nanosecond mtimes surviving the extraction; fail loudly if not.
    assert os.lstat(root / "dir_a").st_mtime_ns == 1_600_604_800_864_197_523
    assert os.lstat(root / "hardlink_a").st_mtime_ns == 1_700_000_000_000_000_001
    assert os.lstat(root).st_mtime_ns == ROOT_MTIME_NS
    assert os.listxattr(root / "xattr_file") == ["user.comment", "user.binary", "user.empty"]
    return root


def _golden(vectors: Path, name: str) -> bytes:
    return (vectors / "pxar" / name).read_bytes()


def _first_difference(got: bytes, want: bytes) -> str:
    limit = min(len(got), len(want))
    at = next((i for i in range(limit) if got[i] != want[i]), limit)
    return f"lengths {len(got)}/{len(want)}, first difference at offset {at}"


# --- golden byte identity ----------------------------------------------------------------------


def test_tree_v1_is_byte_identical(source_tree: Path, vectors: Path) -> None:
    out = io.BytesIO()
    stats = encode_tree(source_tree, out)
    want = _golden(vectors, "archive-v1.pxar")
    got = out.getvalue()
    assert got == want, _first_difference(got, want)
    assert stats.errors == []
    assert (stats.directories, stats.files, stats.hardlinks) == (5, 12, 1)
    assert (stats.symlinks, stats.devices, stats.fifos, stats.sockets) == (2, 2, 1, 1)


def test_tree_v2_split_is_byte_identical(source_tree: Path, vectors: Path) -> None:
    meta, payload = io.BytesIO(), io.BytesIO()
    encode_tree(source_tree, meta, payload)
    for got, name in (
        (meta.getvalue(), "archive-v2.mpxar"),
        (payload.getvalue(), "archive-v2.ppxar"),
    ):
        want = _golden(vectors, name)
        assert got == want, f"{name}: {_first_difference(got, want)}"


def test_tree_v2_prelude_is_byte_identical(source_tree: Path, vectors: Path) -> None:
    meta, payload = io.BytesIO(), io.BytesIO()
    encode_tree(source_tree, meta, payload, prelude=PRELUDE)
    want = _golden(vectors, "archive-v2-prelude.mpxar")
    assert meta.getvalue() == want, _first_difference(meta.getvalue(), want)
    assert payload.getvalue() == _golden(vectors, "archive-v2.ppxar")


def test_tree_to_real_files(source_tree: Path, vectors: Path, tmp_path: Path) -> None:
    """Unbuffered raw files (partial writes possible) give the same bytes as BytesIO."""
    with open(tmp_path / "a.mpxar", "wb", buffering=0) as m, open(tmp_path / "a.ppxar", "wb") as p:
        encode_tree(source_tree, m, p)
    assert (tmp_path / "a.mpxar").read_bytes() == _golden(vectors, "archive-v2.mpxar")
    assert (tmp_path / "a.ppxar").read_bytes() == _golden(vectors, "archive-v2.ppxar")


def _escape(raw: bytes) -> str:
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x5C, 0x22) else f"\\x{b:02x}" for b in raw
    )


def test_entry_events_match_upstream_catalog(source_tree: Path, vectors: Path) -> None:
    """The on_entry stream carries what upstream's catalog writer received, in the same order."""
    archive = b"/root.pxar.didx"
    lines = [f"d {archive.decode()}"]
    stack = [archive]
    events: list[EntryEvent] = []

    def on_entry(event: EntryEvent) -> None:
        events.append(event)
        if event.kind == EVENT_DIR_END:
            stack.pop()
            return
        path = _escape(stack[-1] + b"/" + event.name)
        if event.kind == "f":
            lines.append(f"f size={event.size} mtime={event.mtime} {path}")
        else:
            lines.append(f"{event.kind} {path}")
        if event.kind == "d":
            stack.append(stack[-1] + b"/" + event.name)

    encode_tree(source_tree, io.BytesIO(), on_entry=on_entry)
    listing = (vectors / "catalog" / "catalog-listing.txt").read_text().splitlines()
    assert lines == [re.sub(r" start=\d+", "", line) for line in listing]
    assert stack == [archive]
    assert sum(e.kind == "d" for e in events) == sum(e.kind == EVENT_DIR_END for e in events) == 4


# --- vectors made by upstream pxar 1.0.0 (docs/formats.md §12) -------------------------------

MINIMAL_PXAR = bytes.fromhex(
    "efac88e5746495d53800000000000000ed410000000000000000000000000000"
    "000000000000000000000000000000000000000000000000b317390621117016"
    "12000000000000006100efac88e5746495d53800000000000000a48100000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000251a7c0b1b7a1428130000000000000068690a1d73d542a64fec2f400000"
    "0000000000cf7b2c7c06e9260c5d000000000000005d0000000000000055153e"
    "755bed5eef95000000000000004000000000000000"
)
MINIMAL_MPXAR = bytes.fromhex(
    "0da416df756c0f73180000000000000002000000000000001b777b9f9dd709e3"
    "12000000000000007b7defac88e5746495d53800000000000000ed4100000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000b31739062111701612000000000000006100efac88e5746495d538000000"
    "00000000a4810000000000000000000000000000000000000000000000000000"
    "0000000000000000000000007e97bac46b3d9d41200000000000000010000000"
    "0000000003000000000000001d73d542a64fec2f4000000000000000cf7b2c7c"
    "06e9260c6a000000000000006d0000000000000055153e755bed5eefcc000000"
    "000000004000000000000000"
)
MINIMAL_PPXAR = bytes.fromhex(
    "d24e4a19c2684c831000000000000000251a7c0b1b7a14281300000000000000"
    "68690ab5814c988bb7726c1000000000000000"
)


def _encode_minimal(out: io.BytesIO, payload: io.BytesIO | None, prelude: bytes | None) -> None:
    enc = Encoder(out, payload, prelude=prelude)
    enc.begin_directory(b"", Metadata(mode=0o40755))
    assert enc.add_file(b"a", Metadata(mode=0o100644), 3, [b"h", b"i\n"]) == 56 + (
        42 if payload is not None else 0
    )
    enc.end_directory()
    enc.finish()


def test_minimal_unified_matches_spec_vector() -> None:
    out = io.BytesIO()
    _encode_minimal(out, None, None)
    assert out.getvalue() == MINIMAL_PXAR


def test_minimal_split_with_prelude_matches_spec_vector() -> None:
    out, payload = io.BytesIO(), io.BytesIO()
    _encode_minimal(out, payload, b"{}")
    assert out.getvalue() == MINIMAL_MPXAR
    assert payload.getvalue() == MINIMAL_PPXAR


@pytest.mark.parametrize(
    ("n", "layout"),
    [
        (0, []),
        (1, [0]),
        (2, [1, 0]),
        (3, [1, 0, 2]),
        (4, [2, 1, 3, 0]),
        (5, [3, 1, 4, 0, 2]),
        (6, [3, 1, 5, 0, 2, 4]),
        (7, [3, 1, 5, 0, 2, 4, 6]),
        (8, [4, 2, 6, 1, 3, 5, 7, 0]),
        (10, [6, 3, 8, 1, 5, 7, 9, 0, 2, 4]),
        (16, [8, 4, 12, 2, 6, 10, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0]),
    ],
)
def test_goodbye_layout_matches_spec_table(n: int, layout: list[int]) -> None:
    assert goodbye_layout(n) == layout


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=3000))
def test_goodbye_layout_is_a_search_tree(n: int) -> None:
    slots = goodbye_layout(n)
    assert sorted(slots) == list(range(n))
    for i, value in enumerate(slots):
        if 2 * i + 1 < n:
            assert slots[2 * i + 1] < value
        if 2 * i + 2 < n:
            assert slots[2 * i + 2] > value


def test_negative_mtime_is_floor_split() -> None:
    out = io.BytesIO()
    enc = Encoder(out)
    enc.begin_directory(b"", Metadata(mode=0o40755, mtime_ns=-1_500_000_000))
    enc.finish()
    secs, nanos = (
        int.from_bytes(out.getvalue()[40:48], "little", signed=True),
        out.getvalue()[48:52],
    )
    assert (secs, int.from_bytes(nanos, "little")) == (-2, 500_000_000)


# --- ACL helpers ------------------------------------------------------------------------------

# The kernel's xattr values of the vectors' acl_file and dir_a/nested (read back after tar -x).
ACCESS_ACL = bytes.fromhex(
    "0200000001000600ffffffff02000600d204000004000400ffffffff"
    "080004002909000010000600ffffffff20000400ffffffff"
)
DEFAULT_ACL = bytes.fromhex(
    "0200000001000700ffffffff02000700d204000004000500ffffffff10000700ffffffff20000000ffffffff"
)


def test_acl_mapping_follows_process_acl() -> None:
    assert acl_from_xattrs(ACCESS_ACL, None) == Acl(
        users=((1234, 6),), groups=((2345, 4),), group_obj=4
    )
    assert acl_from_xattrs(None, DEFAULT_ACL) == Acl(
        default=(7, 5, 0, 7), default_users=((1234, 7),)
    )
    # No mask: the group bits of the mode are the owning group's, nothing extra is stored.
    plain = bytes.fromhex("0200000001000600ffffffff04000400ffffffff20000400ffffffff")
    assert acl_from_xattrs(plain, None) is None
    # A default ACL without a mask marks the missing entry NO_MASK.
    no_mask = bytes.fromhex("0200000001000700ffffffff04000500ffffffff20000000ffffffff")
    assert acl_from_xattrs(None, no_mask) == Acl(default=(7, 5, 0, ACL_NO_MASK))
    # Named entries are sorted by (id, permissions) whatever the xattr order.
    unsorted = bytes.fromhex("0200000002000700090000000200040003000000")
    assert acl_from_xattrs(unsorted, None) == Acl(users=((3, 4), (9, 7)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00\x00",
        b"\x01\x00\x00\x00",
        ACCESS_ACL[:-1],
        b"\x02\x00\x00\x00" + b"\x40" + bytes(7),
    ],
)
def test_malformed_acl_xattr_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptDataError):
        acl_from_xattrs(data, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_acl_decoding_fuzz(data: bytes, as_default: bool) -> None:
    with contextlib.suppress(CorruptDataError):
        acl_from_xattrs(None, data) if as_default else acl_from_xattrs(data, None)
    with contextlib.suppress(CorruptDataError):
        parse_acl_xattr(data)


def test_chattr_flags_mapping() -> None:
    assert pxar_flags_from_chattr(0) == 0
    assert pxar_flags_from_chattr(0x80000) == 0  # ext4 "extents" has no pxar flag
    assert pxar_flags_from_chattr(0x10 | 0x20) == 0x400000 | 0x10000
    assert pxar_flags_from_chattr(0x20000000 | 0x800000) == 0x2000000 | 0x80000


# --- encoder misuse ---------------------------------------------------------------------------


def _open_root(out: io.BytesIO | None = None, payload: io.BytesIO | None = None) -> Encoder:
    enc = Encoder(out or io.BytesIO(), payload)
    enc.begin_directory(b"", Metadata(mode=0o40755))
    return enc


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\x00b", b"x" * 4097])
def test_invalid_names_are_rejected(name: bytes) -> None:
    with pytest.raises(ValueError, match="invalid file name"):
        _open_root().add_fifo(name, Metadata(mode=0o10644))


def test_content_length_must_match_size() -> None:
    with pytest.raises(ValueError, match="short"):
        _open_root().add_file(b"f", Metadata(mode=0o100644), 5, [b"abc"])
    with pytest.raises(ValueError, match="longer"):
        _open_root().add_file(b"f", Metadata(mode=0o100644), 2, [b"abc"])
    with pytest.raises(ValueError, match="short"):
        _open_root().add_file(b"f", Metadata(mode=0o100644), 5, io.BytesIO(b"abc"))


def test_call_order_is_enforced() -> None:
    enc = Encoder(io.BytesIO())
    with pytest.raises(ValueError, match="no open directory"):
        enc.add_fifo(b"p", Metadata(mode=0o10644))
    with pytest.raises(ValueError, match="root has no name"):
        enc.begin_directory(b"x", Metadata(mode=0o40755))
    with pytest.raises(ValueError, match="without an archive root"):
        enc.finish()
    enc = _open_root()
    enc.begin_directory(b"sub", Metadata(mode=0o40755))
    with pytest.raises(ValueError, match="still open"):
        enc.finish()
    with pytest.raises(ValueError, match="prelude"):
        Encoder(io.BytesIO(), prelude=b"x")
    with pytest.raises(ValueError, match="split"):
        _open_root().add_payload_ref(b"f", Metadata(mode=0o100644), 1, 16)


def test_kind_and_mode_must_agree_for_bare_entries() -> None:
    with pytest.raises(ValueError, match="not a FIFO"):
        _open_root().add_fifo(b"p", Metadata(mode=0o40755))
    with pytest.raises(ValueError, match="not a socket"):
        _open_root().add_socket(b"s", Metadata(mode=0o10644))


def test_hardlink_must_point_backwards() -> None:
    enc = _open_root()
    with pytest.raises(ValueError, match="not before"):
        enc.add_hardlink(b"h", b"later", 10_000)


def test_payload_refs_must_increase() -> None:
    enc = _open_root(io.BytesIO(), io.BytesIO())
    enc.add_payload_ref(b"a", Metadata(mode=0o100644), 3, 16)
    with pytest.raises(ValueError, match="does not increase"):
        enc.add_payload_ref(b"b", Metadata(mode=0o100644), 3, 16)


# --- tree walk: problems are reported, not fatal ------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_vanished_file_is_reported_and_skipped(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("a", "b", "c"):
        (sub / name).write_bytes(name.encode())
    events: list[EntryEvent] = []
    reported: list[tuple[str, OSError]] = []

    def on_entry(event: EntryEvent) -> None:
        events.append(event)
        if event.name == b"sub" and event.kind == "d":
            (sub / "b").unlink()  # listed already, gone before it is read

    stats = encode_tree(
        tmp_path, io.BytesIO(), on_entry=on_entry, on_error=lambda p, e: reported.append((p, e))
    )
    assert [(p, e.errno) for p, e in reported] == [(str(sub / "b"), errno.ENOENT)]
    assert stats.errors == reported
    assert [e.name for e in events if e.kind == "f"] == [b"a", b"c"]


def test_shrinking_file_is_padded_and_reported(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    reported: list[tuple[str, OSError]] = []

    def on_entry(event: EntryEvent) -> None:
        if event.kind == "f":
            os.truncate(tmp_path / "f", 1000)  # after the size was announced

    meta, payload = io.BytesIO(), io.BytesIO()
    stats = encode_tree(
        tmp_path, meta, payload, on_entry=on_entry, on_error=lambda p, e: reported.append((p, e))
    )
    assert [(p, e.errno) for p, e in reported] == [(str(tmp_path / "f"), errno.ENODATA)]
    assert stats.files == 1
    ppxar = payload.getvalue()
    assert HEADER.unpack_from(ppxar, 16) == (PXAR_PAYLOAD, 16 + len(data))
    assert ppxar[32:-16] == data[:1000] + bytes(len(data) - 1000)


def test_growing_file_is_cut_and_reported(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    reported: list[tuple[str, OSError]] = []

    def on_entry(event: EntryEvent) -> None:
        if event.kind == "f":
            with open(tmp_path / "f", "ab") as f:
                f.write(b"678")

    meta, payload = io.BytesIO(), io.BytesIO()
    encode_tree(
        tmp_path, meta, payload, on_entry=on_entry, on_error=lambda p, e: reported.append((p, e))
    )
    assert [e.errno for _, e in reported] == [errno.EFBIG]
    assert payload.getvalue()[32:-16] == b"12345"


def test_missing_root_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        encode_tree(tmp_path / "nope", io.BytesIO())


class _FailingOutput(io.RawIOBase):
    def __init__(self, fail_after: int) -> None:
        self.left = fail_after

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        if self.left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), self.left)
        self.left -= n
        return n


def test_output_errors_end_the_walk(source_tree: Path) -> None:
    """A failing output is not an entry problem: it propagates and leaks no descriptors."""
    before = _fd_count()
    reported: list[tuple[str, OSError]] = []
    with pytest.raises(OSError) as info:
        encode_tree(
            source_tree, _FailingOutput(2 << 20), on_error=lambda p, e: reported.append((p, e))
        )
    assert info.value.errno == errno.ENOSPC
    assert reported == []
    assert _fd_count() == before


def _make_deep(root: Path, depth: int) -> None:
    """Nest `depth` directories named d with a file at the bottom (pathlib.mkdir would recurse)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        if level == 10:
            # A sibling after the deep chain: read with a descriptor that had to be re-opened.
            z = os.open("z", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(z, b"after")
            os.close(z)
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"bottom")
    os.close(leaf)
    os.close(fd)


def _remove_deep(root: Path) -> None:
    """Delete a tree of any depth bottom-up (shutil.rmtree and pytest's cleanup would recurse)."""
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        while True:
            try:
                fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
            except FileNotFoundError:
                break
        while fds:
            fd = fds.pop()
            for name in os.listdir(fd):
                os.unlink(name, dir_fd=fd)
            os.close(fd)
            if fds:
                os.rmdir("d", dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


@pytest.fixture
def deep_root(tmp_path: Path):
    root = tmp_path / "deep"
    root.mkdir()
    _make_deep(root, 1000)
    yield root
    _remove_deep(root)


def test_deep_tree_is_walked_without_recursion(deep_root: Path) -> None:
    """1000 levels: no recursion limit, and directory descriptors stay bounded."""
    root = deep_root
    events: list[EntryEvent] = []
    peak = [0]

    def on_entry(event: EntryEvent) -> None:
        events.append(event)
        peak[0] = max(peak[0], _fd_count())

    before = _fd_count()
    out = io.BytesIO()
    stats = encode_tree(root, out, on_entry=on_entry)
    assert stats.errors == []
    assert stats.directories == 1001 and stats.files == 2
    kinds = [(e.kind, e.name) for e in events]
    assert kinds == (
        [("d", b"d")] * 1000
        + [("f", b"leaf")]
        + [(EVENT_DIR_END, b"d")] * 990
        + [("f", b"z")]
        + [(EVENT_DIR_END, b"d")] * 10
    )
    assert peak[0] - before < 100
    assert _fd_count() == before


# --- performance --------------------------------------------------------------------------------


@pytest.mark.slow
def test_large_file_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = 200 << 20
    block = os.urandom(1 << 20)
    with open(tmp_path / "big", "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
    digest = hashlib.sha256()

    class _Hashing(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # noqa: ANN001
            digest.update(data)
            return len(data)

    start = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        encode_tree(tmp_path, devnull)
    elapsed = time.perf_counter() - start
    encode_tree(tmp_path, io.BytesIO(), _Hashing())
    with capsys.disabled():
        print(f"\npxar encode of a 200 MiB file: {size / elapsed / 1e6:.0f} MB/s")
    want = hashlib.sha256()
    want.update(HEADER.pack(PXAR_PAYLOAD_START_MARKER, 16) + HEADER.pack(PXAR_PAYLOAD, 16 + size))
    for _ in range(size >> 20):
        want.update(block)
    want.update(HEADER.pack(PXAR_PAYLOAD_TAIL_MARKER, 16))
    (tmp_path / "big").unlink()  # 200 MiB should not wait for pytest's retention
    assert digest.hexdigest() == want.hexdigest()


# --- reader round trips -------------------------------------------------------------------------


def _content(acc: Accessor, entry: Entry, block: int = 1 << 20):
    for off in range(0, entry.size, block):
        yield acc.read(entry, off, block)


def reencode(acc: Accessor, out: io.BytesIO, payload: io.BytesIO | None = None) -> None:
    """Write a decoded archive again with the low-level encoder (iteratively, archive order)."""
    enc = Encoder(out, payload, prelude=acc.prelude)
    root = acc.root()
    enc.begin_directory(b"", Metadata.from_entry(root))
    link_offsets: dict[int, int] = {}
    stack = [acc.listdir(root)]
    while stack:
        e = next(stack[-1], None)
        if e is None:
            stack.pop()
            enc.end_directory()
            continue
        if e.kind is EntryKind.HARDLINK:
            target = acc.resolve_hardlink(e)
            assert e.link_target is not None
            enc.add_hardlink(e.name, e.link_target, link_offsets[target.entry_offset])
            continue
        meta = Metadata.from_entry(e)
        if e.kind is EntryKind.DIRECTORY:
            enc.begin_directory(e.name, meta)
            stack.append(acc.listdir(e))
        elif e.kind is EntryKind.FILE:
            link_offsets[e.entry_offset] = enc.add_file(e.name, meta, e.size, _content(acc, e))
        elif e.kind is EntryKind.SYMLINK:
            assert e.link_target is not None
            enc.add_symlink(e.name, meta, e.link_target)
        elif e.kind is EntryKind.DEVICE:
            assert e.device is not None
            enc.add_device(e.name, meta, *e.device)
        elif e.kind is EntryKind.FIFO:
            enc.add_fifo(e.name, meta)
        else:
            enc.add_socket(e.name, meta)
    enc.finish()


@pytest.mark.parametrize(
    ("meta_name", "payload_name"),
    [
        ("archive-v1.pxar", None),
        ("archive-v2.mpxar", "archive-v2.ppxar"),
        ("archive-v2-prelude.mpxar", "archive-v2.ppxar"),
    ],
)
def test_golden_decoded_and_reencoded_is_identical(
    vectors: Path, meta_name: str, payload_name: str | None
) -> None:
    """upstream bytes -> our reader -> our encoder -> the same bytes."""
    d = vectors / "pxar"
    acc = Accessor(
        FileSource(d / meta_name),
        FileSource(d / payload_name) if payload_name else None,
        name=meta_name,
    )
    out = io.BytesIO()
    payload = io.BytesIO() if payload_name else None
    reencode(acc, out, payload)
    assert out.getvalue() == (d / meta_name).read_bytes()
    if payload_name:
        assert payload is not None
        assert payload.getvalue() == (d / payload_name).read_bytes()


def _open(out: io.BytesIO, payload: io.BytesIO | None) -> Accessor:
    return Accessor(
        BytesSource(out.getvalue()), BytesSource(payload.getvalue()) if payload else None
    )


def _read_all(acc: Accessor, entry: Entry) -> bytes:
    return b"".join(_content(acc, entry))


FCAPS = bytes.fromhex("01000002" + "00040000" + "00000000" + "00000000" + "00000000")
_FS_IOC_SETFLAGS = 0x40086602


def _make_all_kinds(root: Path) -> dict[bytes, bytes]:
    """A tree with every entry kind and metadata item the walk can read; returns file contents."""
    import fcntl
    import struct

    contents = {
        b"empty": b"",
        b"small.txt": b"hello\n",
        b"big.bin": os.urandom(5 * (1 << 20) + 123),  # several copy blocks, odd tail
        b"non_utf8_\xff\xfe.txt": b"raw name",
        b"L" * 255: b"long name",
        b"sub/inner.txt": b"inner",
        b"sub/deeper/x": b"x" * 70000,
    }
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "emptydir").mkdir(mode=0o1777)
    for rel, data in contents.items():
        with open(os.path.join(os.fsencode(root), rel), "wb") as f:
            f.write(data)
    os.chmod(root / "sub", 0o2775)
    os.link(root / "small.txt", root / "sub" / "hard1")
    os.link(root / "small.txt", root / "zz_hard2")
    os.symlink("sub/inner.txt", root / "rel_link")
    os.symlink("/does/not/exist", root / "abs_link")
    os.lchown(root / "abs_link", 1002, 1003)
    os.mkfifo(root / "fifo", 0o600)
    os.mknod(root / "chr", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "blk", 0o640 | stat.S_IFBLK, os.makedev(259, 70000))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    os.chown(root / "big.bin", 1000, 1001)
    os.setxattr(root / "small.txt", "user.b", b"2")
    os.setxattr(root / "small.txt", "user.a", b"\x00\xff")
    os.setxattr(root / "small.txt", "trusted.t", b"")
    os.setxattr(root / "sub", "user.dir", b"d")
    os.setxattr(root / "big.bin", "security.capability", FCAPS)
    os.setxattr(root / "sub" / "inner.txt", "system.posix_acl_access", ACCESS_ACL)
    os.setxattr(root / "sub", "system.posix_acl_default", DEFAULT_ACL)
    fd = os.open(root / "sub" / "deeper" / "x", os.O_RDONLY)
    try:
        flags = struct.unpack("<I", fcntl.ioctl(fd, 0x80086601, bytes(8))[:4])[0]
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("<Q", flags | 0x40))  # chattr +d
    finally:
        os.close(fd)
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)):
        os.utime(p, ns=(0, 1_500_000_000_000_000_000 + i * 1_000_000_007), follow_symlinks=False)
    os.utime(root, ns=(0, -1_500_000_000))
    return contents


def _check_against_fs(acc: Accessor, root: Path, contents: dict[bytes, bytes]) -> int:
    rootb = os.fsencode(root)
    seen = 0
    for e in acc.walk():
        seen += 1
        fs_path = rootb + e.path if e.path != b"/" else rootb
        st_ = os.lstat(fs_path)
        if e.kind is EntryKind.HARDLINK:
            target = acc.resolve_hardlink(e)
            assert os.path.samefile(fs_path, rootb + target.path)
            assert _read_all(acc, target) == contents[b"small.txt"]
            assert acc.read(e, 0, 100) == contents[b"small.txt"]
            continue
        assert (e.mode, e.uid, e.gid, e.mtime_ns) == (
            st_.st_mode,
            st_.st_uid,
            st_.st_gid,
            st_.st_mtime_ns,
        )
        want_kind = {
            stat.S_IFDIR: EntryKind.DIRECTORY,
            stat.S_IFREG: EntryKind.FILE,
            stat.S_IFLNK: EntryKind.SYMLINK,
            stat.S_IFCHR: EntryKind.DEVICE,
            stat.S_IFBLK: EntryKind.DEVICE,
            stat.S_IFIFO: EntryKind.FIFO,
            stat.S_IFSOCK: EntryKind.SOCKET,
        }[stat.S_IFMT(st_.st_mode)]
        assert e.kind is want_kind, e.path
        if e.kind is EntryKind.FILE:
            assert _read_all(acc, e) == contents[e.path[1:]]
        elif e.kind is EntryKind.SYMLINK:
            assert e.link_target == os.readlink(fs_path)
        elif e.kind is EntryKind.DEVICE:
            assert e.device == (os.major(st_.st_rdev), os.minor(st_.st_rdev))
        if e.kind in (EntryKind.FILE, EntryKind.DIRECTORY):
            want_x = [
                (os.fsencode(n), os.getxattr(fs_path, n))
                for n in os.listxattr(fs_path)
                if n.startswith(("user.", "trusted."))
            ]
            assert list(e.xattrs) == want_x, e.path
        else:
            assert e.xattrs == () and e.acl is None and e.fcaps is None
    by_path = {e.path: e for e in acc.walk()}
    assert by_path[b"/small.txt"].xattrs == (
        (b"user.b", b"2"),
        (b"user.a", b"\x00\xff"),
        (b"trusted.t", b""),
    )
    assert by_path[b"/big.bin"].fcaps == FCAPS
    assert by_path[b"/sub/inner.txt"].acl == Acl(
        users=((1234, 6),), groups=((2345, 4),), group_obj=4
    )
    assert by_path[b"/sub"].acl == Acl(default=(7, 5, 0, 7), default_users=((1234, 7),))
    assert by_path[b"/sub/deeper/x"].flags == 0x100000
    assert by_path[b"/blk"].device == (259, 70000)
    assert by_path[b"/"].mtime_ns == -1_500_000_000
    assert by_path[b"/zz_hard2"].kind is EntryKind.HARDLINK
    assert by_path[b"/zz_hard2"].link_target == b"small.txt"
    assert by_path[b"/sub/hard1"].kind is EntryKind.HARDLINK
    return seen


@pytest.mark.parametrize("split", [False, True])
def test_generated_tree_round_trip(tmp_path: Path, split: bool) -> None:
    root = tmp_path / "t"
    root.mkdir()
    contents = _make_all_kinds(root)
    out, payload = io.BytesIO(), (io.BytesIO() if split else None)
    stats = encode_tree(root, out, payload)
    assert stats.errors == []
    acc = _open(out, payload)
    assert acc.format_version == (2 if split else 1)
    assert _check_against_fs(acc, root, contents) == stats.entries
    # our writer -> our reader -> our writer: stable bytes
    again, again_payload = io.BytesIO(), (io.BytesIO() if split else None)
    reencode(acc, again, again_payload)
    assert again.getvalue() == out.getvalue()
    if split:
        assert again_payload is not None and payload is not None
        assert again_payload.getvalue() == payload.getvalue()


def test_deep_tree_round_trip(deep_root: Path) -> None:
    root = deep_root
    meta, payload = io.BytesIO(), io.BytesIO()
    encode_tree(root, meta, payload)
    acc = _open(meta, payload)
    entries = list(acc.walk())
    assert len(entries) == 1003
    leaf = entries[-2]
    assert entries[-1].path == b"/d" * 10 + b"/z"
    assert acc.read(entries[-1], 0, 100) == b"after"
    assert leaf.path == b"/d" * 1000 + b"/leaf"
    assert acc.read(leaf, 0, 100) == b"bottom"
    assert acc.lookup(leaf.path).entry_offset == leaf.entry_offset


_names = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\x00" not in n and n not in (b".", b"..")
)
_meta = st.builds(
    Metadata,
    mode=st.just(0),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    mtime_ns=st.integers(-(2**62), 2**62),
    flags=st.integers(0, 2**64 - 1),
    xattrs=st.lists(
        st.tuples(
            st.binary(min_size=1, max_size=8).filter(lambda n: b"\x00" not in n),
            st.binary(max_size=8),
        ),
        max_size=3,
    ).map(tuple),
    fcaps=st.none() | st.binary(max_size=24),
    quota_project_id=st.none() | st.integers(0, 2**64 - 1),
)
_leaf = st.one_of(
    st.tuples(st.just("f"), _meta, st.binary(max_size=300)),
    st.tuples(
        st.just("l"), _meta, st.binary(min_size=1, max_size=40).filter(lambda t: b"\x00" not in t)
    ),
    st.tuples(st.just("p"), _meta, st.none()),
    st.tuples(st.just("s"), _meta, st.none()),
    st.tuples(st.just("c"), _meta, st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
)
_tree = st.recursive(
    _leaf,
    lambda children: st.tuples(st.just("d"), _meta, st.dictionaries(_names, children, max_size=6)),
    max_leaves=25,
)
_MODES = {"f": 0o100644, "l": 0o120777, "p": 0o10600, "s": 0o140755, "c": 0o20600, "d": 0o40755}


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_names, _tree, max_size=8), st.booleans())
def test_encoded_trees_decode_to_what_was_written(tree: dict, split: bool) -> None:
    out, payload = io.BytesIO(), (io.BytesIO() if split else None)
    enc = Encoder(out, payload)
    enc.begin_directory(b"", Metadata(mode=0o40755))
    expected: dict[bytes, tuple] = {}
    work = [(b"", iter(sorted(tree.items())))]
    while work:
        prefix, items = work[-1]
        item = next(items, None)
        if item is None:
            work.pop()
            enc.end_directory()
            continue
        name, (kind, meta, arg) = item
        meta = Metadata(**{**{f: getattr(meta, f) for f in meta.__slots__}, "mode": _MODES[kind]})
        path = prefix + b"/" + name
        expected[path] = (kind, meta, arg)
        if kind == "d":
            enc.begin_directory(name, meta)
            work.append((path, iter(sorted(arg.items()))))
        elif kind == "f":
            enc.add_file(name, meta, len(arg), [arg[:7], arg[7:]])
        elif kind == "l":
            enc.add_symlink(name, meta, arg)
        elif kind == "c":
            enc.add_device(name, meta, *arg)
        elif kind == "p":
            enc.add_fifo(name, meta)
        else:
            enc.add_socket(name, meta)
    enc.finish()
    acc = _open(out, payload)
    decoded = {e.path: e for e in acc.walk() if e.path != b"/"}
    assert sorted(decoded) == sorted(expected)
    for path, (kind, meta, arg) in expected.items():
        e = decoded[path]
        assert Metadata.from_entry(e) == meta
        if kind == "f":
            assert _read_all(acc, e) == arg
        elif kind == "l":
            assert e.link_target == arg
        elif kind == "c":
            assert e.device == arg
        assert acc.lookup(path).entry_offset == e.entry_offset
