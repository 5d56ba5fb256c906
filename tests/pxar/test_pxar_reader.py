"""The pxar random-access reader against the upstream golden vectors, crafted trees and corruptions."""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
from pathlib import Path

import pytest
from support.mini_pxar import MiniPxar, bst_order

from snapfs.errors import (
    BadMagicError,
    CorruptDataError,
    NotFoundError,
    SnapfsError,
    TruncatedDataError,
    UnsupportedFormatError,
    UsageError,
)
from snapfs.format.source import BytesSource, FileSource
from snapfs.pxar import format as fmt
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.encoder import Encoder, Metadata
from snapfs.pxar.entry import Acl, Entry, EntryKind
from snapfs.store.backend import LocalBackend
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.views.archives import SnapshotReader

GOLDEN = [
    ("archive-v1.pxar", None, "upstream-decoder-dump-v1.txt"),
    ("archive-v2.mpxar", "archive-v2.ppxar", "upstream-decoder-dump-v2.txt"),
    ("archive-v2-prelude.mpxar", "archive-v2.ppxar", "upstream-decoder-dump-v2-prelude.txt"),
]
PRELUDE = b"# pxar v2 prelude test vector\n/excluded/by/pattern\n"


# --- helpers ----------------------------------------------------------------------------------


def esc(raw: bytes) -> str:
    """The listing's escaping: printable ASCII except backslash and quote, else \\xNN."""
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x5C, 0x22) else f"\\x{b:02x}" for b in raw
    )


def listing_line(acc: Accessor, e: Entry) -> str:
    """One line of expected-listing.txt, from an Entry and its content."""
    out = [f'path="{esc(e.path)}"']
    if e.kind is EntryKind.HARDLINK:
        out.append(f'type=hardlink target="{esc(e.link_target or b"")}"')
        return " ".join(out)
    if e.kind is EntryKind.FILE:
        out.append(f"type=file size={e.size}")
    elif e.kind is EntryKind.DEVICE:
        assert e.device is not None
        out.append(f"type=device major={e.device[0]} minor={e.device[1]}")
    elif e.kind is EntryKind.SYMLINK:
        out.append(f'type=symlink target="{esc(acc.readlink(e))}"')
    else:
        out.append(f"type={e.kind.value}")
    secs, nanos = e.mtime
    out.append(
        f"mode=0o{e.mode:o} uid={e.uid} gid={e.gid} mtime={secs}.{nanos:09d} flags={e.flags}"
    )
    out += [f'xattr["{esc(k)}"]="{esc(v)}"' for k, v in e.xattrs]
    if e.acl is not None:
        out += [f"acl_user={u}:0o{p:o}" for u, p in e.acl.users]
        out += [f"acl_group={g}:0o{p:o}" for g, p in e.acl.groups]
        if e.acl.group_obj is not None:
            out.append(f"acl_group_obj=0o{e.acl.group_obj:o}")
        if e.acl.default is not None:
            uo, go, ot, mk = e.acl.default
            out.append(f"acl_default=user_obj:{uo:x},group_obj:{go:x},other:{ot:x},mask:{mk:x}")
        out += [f"acl_default_user={u}:0o{p:o}" for u, p in e.acl.default_users]
        out += [f"acl_default_group={g}:0o{p:o}" for g, p in e.acl.default_groups]
    if e.kind is EntryKind.FILE:
        out.append("sha256=" + hashlib.sha256(read_all(acc, e)).hexdigest())
    return " ".join(out)


def read_all(acc: Accessor, e: Entry, block: int = 1 << 20) -> bytes:
    parts = []
    pos = 0
    while True:
        data = acc.read(e, pos, block)
        if not data:
            return b"".join(parts)
        parts.append(data)
        pos += len(data)


def open_golden(vectors: Path, archive: str, payload: str | None) -> Accessor:
    pxar = vectors / "pxar"
    return Accessor(
        FileSource(pxar / archive), FileSource(pxar / payload) if payload else None, name=archive
    )


def open_bytes(data: bytes, payload: bytes | None = None, name: str = "t.mpxar") -> Accessor:
    return Accessor(
        BytesSource(data, name), BytesSource(payload) if payload is not None else None, name=name
    )


def expected_listing(vectors: Path) -> list[str]:
    return (vectors / "pxar" / "expected-listing.txt").read_text().splitlines()


# --- format.py --------------------------------------------------------------------------------


def test_constants_are_siphash_of_their_key_strings():
    for name, key in fmt.PXAR_KEY_STRINGS.items():
        assert fmt.siphash24(key) == getattr(fmt, name), name


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x76614015F8D1BB6C),
        (b"a", 0x0C26E9067C2C7BCF),
        (b"folder_3", 0xFDAF848A2F2E8D0A),
        (b"file_7", 0x1EB9EA22FEF9C3D9),
        (b"__PROXMOX_FORMAT_ENTRY_V2__", 0xD5956474E588ACEF),
    ],
)
def test_filename_hash_vectors(data, expected):
    assert fmt.filename_hash(data) == expected


def test_siphash_reference_vector():
    k0, k1 = struct.unpack("<QQ", bytes(range(16)))
    assert fmt.siphash24(bytes(range(15)), k0, k1) == 0xA129CA6149BE45E5


def test_bst_layout_matches_spec_table():
    assert bst_order(list(range(10))) == [6, 3, 8, 1, 5, 7, 9, 0, 2, 4]


def test_device_numbers_round_trip():
    for major, minor in [(8, 1), (1, 3), (259, 70000), (4095, 255)]:
        assert fmt.device_from_dev_t(fmt.device_to_dev_t(major, minor)) == (major, minor)


# --- golden vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_golden_listing_matches_exactly(vectors, archive, payload, dump):
    acc = open_golden(vectors, archive, payload)
    got = [listing_line(acc, e) for e in acc.walk()]
    assert got == expected_listing(vectors)


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_golden_header_items(vectors, archive, payload, dump):
    acc = open_golden(vectors, archive, payload)
    lines = (vectors / "pxar" / dump).read_text().splitlines()
    if archive.endswith(".pxar"):
        assert (acc.format_version, acc.prelude) == (1, None)
        assert not lines[0].startswith("VERSION")
    else:
        assert acc.format_version == 2
        assert lines[0] == "VERSION Version2"
        assert acc.prelude == (PRELUDE if "prelude" in archive else None)
        if acc.prelude is not None:
            assert lines[1] == "PRELUDE " + esc(acc.prelude)


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_payload_offsets_agree_with_upstream_decoder(vectors, archive, payload, dump):
    acc = open_golden(vectors, archive, payload)
    expected = {}
    for line in (vectors / "pxar" / dump).read_text().splitlines():
        m = re.match(r'path="(.*?)" type=file .*payload_offset=(None|Some\((\d+)\))', line)
        if m:
            expected[m.group(1)] = None if m.group(3) is None else int(m.group(3))
    got = {}
    for e in acc.walk():
        if e.is_file:
            assert e.content_offset is not None
            got[esc(e.path)] = e.content_offset - 16 if acc.format_version == 2 else None
    assert got == expected
    assert len(got) == 12


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_lookup_every_path(vectors, archive, payload, dump):
    acc = open_golden(vectors, archive, payload)
    entries = list(acc.walk())
    for e in entries:
        assert acc.lookup(e.path) == e
        if e.path != b"/":
            assert acc.lookup(e.path + b"/") == e
            assert acc.lookup(b"./" + e.path.lstrip(b"/")) == e
    for e in entries:
        if e.is_dir:
            for child in acc.listdir(e):
                assert acc.lookup_child(e, child.name) == child
            assert acc.lookup_child(e, b"does-not-exist") is None
    assert acc.lookup("/utf8_name_äöü_€.txt").size == 11
    assert acc.lookup(b"/non_utf8_\xff\xfe_name.txt").size == 14
    with pytest.raises(NotFoundError, match=archive):
        acc.lookup("/dir_a/missing")
    with pytest.raises(NotFoundError):
        acc.lookup("/dir_a/small.bin/below_a_file")
    with pytest.raises(NotFoundError):
        acc.lookup("/dir_a/../dir_a")


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_read_at_random_offsets(vectors, archive, payload, dump):
    acc = open_golden(vectors, archive, payload)
    rng = random.Random(archive)
    for e in acc.walk():
        if not e.is_file:
            continue
        full = read_all(acc, e, block=7919)
        assert len(full) == e.size
        for _ in range(25):
            off = rng.randrange(0, e.size + 10)
            n = rng.choice([0, 1, 15, 16, 4096, 70000, e.size + 5])
            assert acc.read(e, off, n) == full[off : off + n]
            assert bytes(acc.read_view(e, off, n)) == full[off : off + n]


def test_read_view_is_read_without_a_copy_from_a_datastore(vectors):
    ds = Datastore(LocalBackend(vectors / "datastore"))
    snapshot = parse_snapshot("host/testhost/2024-06-01T11:00:00Z")
    acc = SnapshotReader(ds, snapshot).pxar("root.pxar")
    files = [e for e in acc.walk() if e.is_file and e.size]
    assert files
    for e in files:
        view = acc.read_view(e, 0, e.size)
        assert bytes(view) == acc.read(e, 0, e.size)
        start, end = e.content_offset, e.content_offset + e.size
        index = acc.archive.index
        if index.chunk_at(start) == index.chunk_at(end - 1):  # in one chunk: the cached bytes
            assert isinstance(view, memoryview)


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_hardlink_symlink_and_special_entries(vectors, archive, payload, dump):
    acc = open_golden(vectors, archive, payload)
    link = acc.lookup("/hardlink_b")
    assert link.kind is EntryKind.HARDLINK and link.link_target == b"hardlink_a"
    target = acc.resolve_hardlink(link)
    assert target == acc.lookup("/hardlink_a")
    assert acc.read(link, 0, 100) == acc.read(target, 0, 100)
    assert acc.readlink(acc.lookup("/symlink_rel")) == b"dir_a/nested/notes.txt"
    assert acc.lookup("/fifo").kind is EntryKind.FIFO
    assert acc.lookup("/unix_socket").kind is EntryKind.SOCKET
    assert acc.lookup("/block_dev").device == (8, 1)
    root = acc.root()
    assert (root.path, root.name, root.entry_offset, root.entry_end) == (
        b"/",
        b"",
        0,
        acc.archive.size,
    )
    offsets = [e.entry_offset for e in acc.walk()]
    assert len(set(offsets)) == len(offsets)
    with pytest.raises(UsageError):
        acc.readlink(target)
    with pytest.raises(UsageError):
        acc.read(root, 0, 1)


def test_metadata_only_mode_lists_but_refuses_content(vectors):
    acc = open_golden(vectors, "archive-v2.mpxar", None)
    lines = [re.sub(r" sha256=\w+", "", listing_line(_FakeEmpty(), e)) for e in acc.walk()]  # type: ignore[arg-type]
    assert lines == [re.sub(r" sha256=\w+", "", line) for line in expected_listing(vectors)]
    with pytest.raises(NotFoundError, match=r"archive-v2\.ppxar"):
        acc.read(acc.lookup("/dir_a/small.bin"), 0, 10)


class _FakeEmpty:
    def read(self, entry, offset, size):
        return b""

    def readlink(self, entry):
        return entry.link_target


def test_lookup_costs_a_handful_of_reads(vectors):
    acc = open_golden(vectors, "archive-v1.pxar", None)
    before = acc.stats.reads
    entry = acc.lookup("/dir_a/nested/deeper/hello.txt")
    reads = acc.stats.reads - before
    assert entry.size == 11
    # per component: goodbye tail+table (one read for small tables) and one entry window
    assert reads <= 2 * 4
    assert acc.stats.bytes < 16 * 1024


# --- upstream PBS fixtures --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture", ["backup-client-pxar-data.mpxar", "backup-client-pxar-expected.mpxar"]
)
def test_upstream_fixtures_parse_completely(vectors, fixture):
    path = vectors / "upstream-fixtures" / fixture
    acc = Accessor(FileSource(path), name=fixture)
    assert acc.format_version == 2
    assert acc.prelude == (b"" if "expected" in fixture else None)
    entries = list(acc.walk())
    assert len(entries) == 1 + 10 + 100
    root = entries[0]
    assert (root.mode, root.uid, root.gid, root.mtime_ns) == (0o40777, 1000, 1000, 0)
    files = [e for e in entries if e.is_file]
    assert [e.path for e in files] == [
        f"/folder_{i}/file_{j}".encode() for i in range(10) for j in range(10)
    ]
    assert all(e.size == 1 << 20 and e.mode == 0o100777 for e in files)
    first = 16 if "data" in fixture else 32
    # payloads are written back to back, each a 16-byte header plus 1 MiB
    assert [e.content_offset - 16 for e in files] == [
        first + k * (16 + (1 << 20)) for k in range(100)
    ]
    for e in entries:
        assert acc.lookup(e.path) == e
    with pytest.raises(NotFoundError, match="ppxar"):
        acc.read(files[0], 0, 1)


def test_upstream_fixture_worked_example(vectors):
    """The numbers of docs/formats.md §12's worked lookup in backup-client-pxar-expected.mpxar."""
    fixture = "backup-client-pxar-expected.mpxar"
    acc = Accessor(FileSource(vectors / "upstream-fixtures" / fixture), name=fixture)
    folder = acc.lookup("/folder_3")
    assert (folder.entry_offset, folder.entry_end) == (4509, 5980)
    f7 = acc.lookup("/folder_3/file_7")
    assert (f7.entry_offset, f7.content_offset - 16, f7.size) == (5367, 38797936, 1 << 20)
    assert f7.entry_end == 5478


# --- crafted trees ----------------------------------------------------------------------------


def test_deep_tree_walk_and_lookup():
    depth = 1200
    w = MiniPxar()
    for i in range(depth):
        w.begin_dir(b"d%d" % i)
    w.file(b"leaf", b"bottom")
    data, _ = w.finish()
    acc = open_bytes(data, name="deep.pxar")
    entries = list(acc.walk())
    assert len(entries) == depth + 2
    leaf_path = b"/" + b"/".join(b"d%d" % i for i in range(depth)) + b"/leaf"
    assert entries[-1].path == leaf_path
    fresh = open_bytes(data, name="deep.pxar")
    before = fresh.stats.reads
    leaf = fresh.lookup(leaf_path)
    assert fresh.read(leaf, 0, 100) == b"bottom"
    assert fresh.stats.reads - before <= 3 * (depth + 1) + 2


def test_split_tree_with_hardlink_and_specials():
    w = MiniPxar(split=True, prelude=b"{}")
    f = w.file(b"a", b"hi\n")
    w.hardlink(b"b", b"/a", f)
    w.special(b"dev", 0o20600, (fmt.PXAR_DEVICE, fmt.DEVICE.pack(1, 3)))
    w.special(b"p", 0o10644)
    w.special(b"s", 0o140755)
    w.begin_dir(b"z")
    w.file(b"empty", b"")
    w.end_dir()
    data, payload = w.finish()
    acc = open_bytes(data, payload)
    assert acc.prelude == b"{}"
    kinds = [(e.path, e.kind) for e in acc.walk()]
    assert kinds == [
        (b"/", EntryKind.DIRECTORY),
        (b"/a", EntryKind.FILE),
        (b"/b", EntryKind.HARDLINK),
        (b"/dev", EntryKind.DEVICE),
        (b"/p", EntryKind.FIFO),
        (b"/s", EntryKind.SOCKET),
        (b"/z", EntryKind.DIRECTORY),
        (b"/z/empty", EntryKind.FILE),
    ]
    assert acc.read(acc.lookup("/b"), 0, 10) == b"hi\n"
    assert acc.resolve_hardlink(acc.lookup("/b")).path == b"/a"
    assert acc.read(acc.lookup("/z/empty"), 0, 10) == b""


def test_duplicate_names_and_hash_collisions():
    w = MiniPxar()
    first = w.file(b"same", b"first")
    w.file(b"same", b"second")
    w.file(b"other", b"x")
    data, _ = w.finish()
    acc = open_bytes(data)
    children = list(acc.listdir(acc.root()))
    assert [c.name for c in children] == [b"same", b"same", b"other"]
    found = acc.lookup("/same")
    assert found.entry_offset == first and acc.read(found, 0, 10) == b"first"
    assert acc.lookup("/other").size == 1


def test_large_directory_listing_streams():
    n = 20000
    w = MiniPxar()
    for i in range(n):
        w.special(b"f%06d" % i, 0o10644)
    data, _ = w.finish()
    acc = open_bytes(data)
    it = acc.listdir(acc.root())
    before = acc.stats.bytes
    first = next(it)
    assert first.name == b"f000000"
    # the goodbye table (24 bytes/entry) plus one window, not the whole directory
    assert acc.stats.bytes - before <= 24 * (n + 1) + 16 + 2 * 16384
    assert sum(1 for _ in it) == n - 1
    fresh = open_bytes(data)
    before = fresh.stats.reads
    assert fresh.lookup("/f012345").name == b"f012345"
    assert fresh.stats.reads - before <= 3


def test_negative_mtime_and_entry_v1():
    w = MiniPxar()
    f = w.file(b"old", b"x")
    data = bytearray(w.finish()[0])
    # ENTRY of "old" starts after its FILENAME item (16 + 4 bytes)
    struct.pack_into("<qI", data, f + 20 + 16 + 24, -2, 500_000_000)
    acc = open_bytes(bytes(data))
    assert acc.lookup("/old").mtime_ns == -1_500_000_000
    assert acc.lookup("/old").mtime == (-2, 500_000_000)

    # The same tree with stat v1 records for root and child.
    out = bytearray()
    out += fmt.HEADER.pack(fmt.PXAR_ENTRY_V1, 48) + fmt.STAT_V1.pack(
        0o40755, 0, 1, 2, 5 * 10**9 + 7
    )
    f = len(out)
    out += fmt.HEADER.pack(fmt.PXAR_FILENAME, 18) + b"a\0"
    out += fmt.HEADER.pack(fmt.PXAR_ENTRY_V1, 48) + fmt.STAT_V1.pack(0o100600, 0, 3, 4, 10**9)
    out += fmt.HEADER.pack(fmt.PXAR_PAYLOAD, 19) + b"hi\n"
    g = len(out)
    out += fmt.HEADER.pack(fmt.PXAR_GOODBYE, 64)
    out += fmt.GOODBYE_ITEM.pack(fmt.filename_hash(b"a"), g - f, g - f)
    out += fmt.GOODBYE_ITEM.pack(fmt.PXAR_GOODBYE_TAIL_MARKER, g, 64)
    acc = open_bytes(bytes(out), name="v1stat.pxar")
    assert acc.root().mtime_ns == 5 * 10**9 + 7
    a = acc.lookup("/a")
    assert (a.uid, a.gid, a.mode, a.mtime_ns) == (3, 4, 0o100600, 10**9)
    assert acc.read(a, 0, 10) == b"hi\n"


# --- hostile archives -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2(vectors) -> tuple[bytes, bytes]:
    pxar = vectors / "pxar"
    return (pxar / "archive-v2.mpxar").read_bytes(), (pxar / "archive-v2.ppxar").read_bytes()


def goodbye_records(data: bytes, dir_end: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    """(G, [(record position, hash, offset, size)]) of the directory ending at dir_end."""
    ts = struct.unpack_from("<Q", data, dir_end - 8)[0]
    g = dir_end - ts
    n = (ts - 16) // 24 - 1
    recs = []
    for i in range(n):
        pos = g + 16 + 24 * i
        recs.append((pos, *fmt.GOODBYE_ITEM.unpack_from(data, pos)))
    return g, recs


def record_for(data: bytes, dir_end: int, name: bytes) -> tuple[int, int, int, int]:
    h = fmt.filename_hash(name)
    _, recs = goodbye_records(data, dir_end)
    return next(r for r in recs if r[1] == h)


def mutated(data: bytes, pos: int, value: bytes) -> bytes:
    out = bytearray(data)
    out[pos : pos + len(value)] = value
    return bytes(out)


def list_with_errors(acc: Accessor) -> tuple[list[bytes], list[SnapfsError]]:
    errors: list[SnapfsError] = []
    paths = [e.path for e in acc.walk(on_error=errors.append)]
    return paths, errors


def test_not_a_pxar_archive():
    with pytest.raises(BadMagicError, match="junk"):
        open_bytes(bytes(range(256)) * 4, name="junk")


def test_too_small_archive():
    with pytest.raises(TruncatedDataError):
        open_bytes(b"\0" * 10)


def test_unknown_format_version(v2):
    data, payload = v2
    with pytest.raises(UnsupportedFormatError, match="offset 0"):
        open_bytes(mutated(data, 16, fmt.U64.pack(3)), payload)


def test_truncated_archives_fail_cleanly(v2, vectors):
    data, payload = v2
    for cut in (1, 24, 100, len(data) // 2, len(data) - 60):
        with pytest.raises(CorruptDataError):
            open_bytes(data[:-cut], payload)
    v1 = (vectors / "pxar" / "archive-v1.pxar").read_bytes()
    with pytest.raises(CorruptDataError):
        open_bytes(v1[:-1], name="v1.pxar")


def test_trailing_garbage_after_root_goodbye(v2):
    data, payload = v2
    with pytest.raises(CorruptDataError, match="tail marker"):
        open_bytes(data + b"\0" * 24, payload)


def test_root_tail_pointing_elsewhere(v2):
    data, payload = v2
    tail = len(data) - 24
    bad = mutated(data, tail + 8, fmt.U64.pack(struct.unpack_from("<Q", data, tail + 8)[0] - 1))
    with pytest.raises(CorruptDataError, match="not the ENTRY"):
        open_bytes(bad, payload)


def test_absurd_goodbye_size(v2):
    data, payload = v2
    tail = len(data) - 24
    bad = mutated(data, tail + 16, fmt.U64.pack(16 + 24 * 10**9))
    with pytest.raises(CorruptDataError, match="goodbye table size"):
        open_bytes(bad, payload)


def test_goodbye_record_pointing_to_itself_is_scoped(v2):
    data, payload = v2
    g, _ = goodbye_records(data, len(data))
    pos = record_for(data, len(data), b"fifo")[0]
    bad = mutated(data, pos + 8, fmt.U64.pack(0))  # F == G: the record's own table
    acc = open_bytes(bad, payload, name="self.mpxar")
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1 and "self.mpxar" in str(errors[0]) and f"offset {g}" in str(errors[0])
    assert b"/fifo" not in paths and b"/xattr_file" in paths and len(paths) == 23
    with pytest.raises(CorruptDataError):
        list(acc.listdir(acc.root()))
    assert acc.lookup("/dir_a/nested/notes.txt").size == 1300


def test_goodbye_record_past_the_start(v2):
    data, payload = v2
    pos = record_for(data, len(data), b"fifo")[0]
    bad = mutated(data, pos + 8, fmt.U64.pack(10**12))
    acc = open_bytes(bad, payload)
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1 and len(paths) == 23
    with pytest.raises(CorruptDataError, match="outside its directory"):
        acc.lookup("/fifo")


def test_goodbye_record_looping_to_parent(v2):
    """A subdirectory record pointing back at an ancestor's FILENAME must not recurse."""
    data, payload = v2
    acc = open_bytes(data, payload)
    dir_a = acc.lookup("/dir_a")
    nested = acc.lookup("/dir_a/nested")
    g, _ = goodbye_records(data, nested.entry_end)
    pos = record_for(data, nested.entry_end, b"deeper")[0]
    bad = mutated(data, pos + 8, fmt.U64.pack(g - dir_a.entry_offset))
    acc = open_bytes(bad, payload)
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1
    assert b"/dir_a/nested/notes.txt" in paths and b"/dir_a/nested/deeper" not in paths


def test_subdirectory_size_overshooting_parent(v2):
    data, payload = v2
    pos = record_for(data, len(data), b"dir_a")[0]
    bad = mutated(data, pos + 16, fmt.U64.pack(10**9))
    acc = open_bytes(bad, payload)
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1 and "outside its parent" in str(errors[0])
    assert b"/empty_dir" in paths and b"/dir_a" not in paths


def test_overlapping_sibling_directories(v2):
    """A record making empty_dir start inside dir_a's range is rejected, not listed twice."""
    data, payload = v2
    acc = open_bytes(data, payload)
    nested = acc.lookup("/dir_a/nested")
    g, _ = goodbye_records(data, len(data))
    pos = record_for(data, len(data), b"empty_dir")[0]
    bad = mutated(data, pos + 8, fmt.U64.pack(g - nested.entry_offset))
    acc = open_bytes(bad, payload)
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1 and "inside a sibling" in str(errors[0])
    assert paths.count(b"/dir_a/nested") == 1


def test_oversized_filename_item(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    f = acc.lookup("/fifo").entry_offset
    bad = mutated(data, f + 8, fmt.U64.pack(10**6))
    acc = open_bytes(bad, payload, name="big.mpxar")
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1 and f"offset {f}" in str(errors[0]) and "exceeds" in str(errors[0])
    assert len(paths) == 23


def test_oversized_xattr_and_wrong_entry_size(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    xf = acc.lookup("/xattr_file")
    xattr_pos = xf.entry_offset + 16 + len(b"xattr_file") + 1 + 56
    assert struct.unpack_from("<Q", data, xattr_pos)[0] == fmt.PXAR_XATTR
    bad = mutated(data, xattr_pos + 8, fmt.U64.pack(70000))
    with pytest.raises(CorruptDataError, match="exceeds"):
        open_bytes(bad, payload).lookup("/xattr_file")
    bad = mutated(data, xf.entry_offset + 27 + 8, fmt.U64.pack(55))
    with pytest.raises(CorruptDataError, match="is not 40"):
        open_bytes(bad, payload).lookup("/xattr_file")


def test_name_containing_slash(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    f = acc.lookup("/setuid_prog").entry_offset
    bad = mutated(data, f + 16 + 3, b"/")
    acc = open_bytes(bad, payload)
    paths, errors = list_with_errors(acc)
    assert len(errors) == 1 and "'/'" in str(errors[0])
    assert b"/symlink_rel" in paths and len(paths) == 23


@pytest.mark.parametrize("name", [b".", b"..", b"a\0b"])
def test_invalid_names(name):
    w = MiniPxar()
    w.file(b"good", b"1")
    w.file(name, b"2")
    data, _ = w.finish()
    acc = open_bytes(data)
    paths, errors = list_with_errors(acc)
    assert paths == [b"/", b"/good"] and len(errors) == 1
    assert isinstance(errors[0], CorruptDataError)


def test_mode_kind_mismatch(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    f = acc.lookup("/empty_file").entry_offset
    mode_pos = f + 16 + len(b"empty_file") + 1 + 16
    bad = mutated(data, mode_pos, fmt.U64.pack(0o40755))
    with pytest.raises(CorruptDataError, match="does not match"):
        open_bytes(bad, payload).lookup("/empty_file")


def test_unknown_item_inside_entry(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    xf = acc.lookup("/xattr_file")
    xattr_pos = xf.entry_offset + 16 + len(b"xattr_file") + 1 + 56
    bad = mutated(data, xattr_pos, fmt.U64.pack(0x1234))
    with pytest.raises(CorruptDataError, match="unexpected"):
        open_bytes(bad, payload).lookup("/xattr_file")
    bad = mutated(data, xattr_pos, fmt.U64.pack(fmt.PXAR_FORMAT_VERSION))
    with pytest.raises(CorruptDataError):
        open_bytes(bad, payload).lookup("/xattr_file")


def test_payload_ref_mismatch_is_per_file(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    small = acc.lookup("/dir_a/small.bin")
    ref_pos = small.entry_offset + 16 + len(b"small.bin") + 1 + 56
    assert struct.unpack_from("<Q", data, ref_pos)[0] == fmt.PXAR_PAYLOAD_REF
    po = small.content_offset - 16
    for value in (po + 1, 10**12):
        acc = open_bytes(mutated(data, ref_pos + 16, fmt.U64.pack(value)), payload, name="x.mpxar")
        with pytest.raises(CorruptDataError, match=r"x\.ppxar"):
            acc.read(acc.lookup("/dir_a/small.bin"), 0, 10)
        assert (
            acc.read(acc.lookup("/dir_a/nested/notes.txt"), 0, 5)
            == payload[acc.lookup("/dir_a/nested/notes.txt").content_offset :][:5]
        )
    acc = open_bytes(mutated(data, ref_pos + 24, fmt.U64.pack(small.size + 1)), payload)
    with pytest.raises(CorruptDataError, match="expected PAYLOAD"):
        acc.read(acc.lookup("/dir_a/small.bin"), 0, 10)


def test_wrong_payload_stream(v2, vectors):
    data, _ = v2
    with pytest.raises(BadMagicError, match="ppxar"):
        open_bytes(data, b"\0" * 64, name="a.mpxar")


def test_truncated_payload_stream(v2):
    data, payload = v2
    acc = open_bytes(data, payload[: len(payload) // 2])
    with pytest.raises(CorruptDataError, match="outside the payload stream"):
        acc.read(acc.lookup("/xattr_file"), 0, 10)
    assert acc.read(acc.lookup("/acl_file"), 0, 8) == payload[74:82]


def test_payload_item_in_split_archive_and_ref_in_unified():
    w = MiniPxar(split=True)
    w.file(b"a", b"data")
    data, payload = w.finish()
    out = bytearray(data)
    pos = out.find(fmt.U64.pack(fmt.PXAR_PAYLOAD_REF))
    out[pos : pos + 8] = fmt.U64.pack(fmt.PXAR_PAYLOAD)
    with pytest.raises(CorruptDataError, match="inline PAYLOAD"):
        open_bytes(bytes(out), payload).lookup("/a")
    w = MiniPxar()
    w.file(b"a", b"0123456789abcdef")
    data, _ = w.finish()
    out = bytearray(data)
    pos = out.find(fmt.U64.pack(fmt.PXAR_PAYLOAD))
    out[pos : pos + 16] = fmt.HEADER.pack(fmt.PXAR_PAYLOAD_REF, 32)
    with pytest.raises(CorruptDataError, match="PAYLOAD_REF in a unified"):
        open_bytes(bytes(out)).lookup("/a")


def test_hardlink_offsets(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    link = acc.lookup("/hardlink_b")
    target = acc.lookup("/hardlink_a")
    off_pos = link.entry_offset + 16 + len(b"hardlink_b") + 1 + 16
    assert struct.unpack_from("<Q", data, off_pos)[0] == link.entry_offset - target.entry_offset
    # A broken offset falls back to the stored path, which names a regular file.
    for value in (0, link.entry_offset + 1, 3):
        acc = open_bytes(mutated(data, off_pos, fmt.U64.pack(value)), payload)
        assert acc.resolve_hardlink(acc.lookup("/hardlink_b")) == acc.lookup("/hardlink_a")
    # Offset 0 (the link itself) with a path naming the link itself: a loop, reported.
    bad = mutated(data, off_pos, fmt.U64.pack(0))
    bad = mutated(bad, off_pos + 8 + len(b"hardlink_"), b"b")
    acc = open_bytes(bad, payload, name="loop.mpxar")
    with pytest.raises(CorruptDataError, match="loop.mpxar"):
        acc.resolve_hardlink(acc.lookup("/hardlink_b"))
    with pytest.raises(CorruptDataError):
        acc.read(acc.lookup("/hardlink_b"), 0, 1)


def test_hardlink_to_directory_or_chain():
    w = MiniPxar()
    w.begin_dir(b"d")
    w.end_dir()
    data_f = w.file(b"f", b"content")
    w.hardlink(b"l1", b"f", data_f)
    l1 = w.stack[-1][2][-1][1]
    w.hardlink(b"l2", b"l1", l1)
    data, _ = w.finish()
    acc = open_bytes(data)
    assert acc.read(acc.lookup("/l2"), 0, 100) == b"content"
    w = MiniPxar()
    w.begin_dir(b"d")
    w.end_dir()
    d_f = w.stack[-1][2][-1][1]
    w.hardlink(b"l", b"d", d_f)
    data, _ = w.finish()
    acc = open_bytes(data)
    with pytest.raises(CorruptDataError):
        acc.resolve_hardlink(acc.lookup("/l"))


def test_second_singleton_metadata_item():
    w = MiniPxar()
    f = w.item(fmt.PXAR_FILENAME, b"x\0")
    w.item(fmt.PXAR_ENTRY, w.stat(0o100644))
    w.item(fmt.PXAR_FCAPS, b"\1" * 20)
    w.item(fmt.PXAR_FCAPS, b"\2" * 20)
    w.item(fmt.PXAR_PAYLOAD, b"")
    w._child(b"x", f)
    w.file(b"y", b"ok")
    data, _ = w.finish()
    acc = open_bytes(data)
    paths, errors = list_with_errors(acc)
    assert paths == [b"/", b"/y"] and "second PXAR_FCAPS" in str(errors[0])


def test_all_metadata_kinds_decode():
    w = MiniPxar()
    f = w.item(fmt.PXAR_FILENAME, b"m\0")
    w.item(fmt.PXAR_ENTRY, w.stat(0o40700))
    w.item(fmt.PXAR_XATTR, b"user.k\0v\0w")
    w.item(fmt.PXAR_ACL_USER, fmt.ACL_USER.pack(5, 7))
    w.item(fmt.PXAR_ACL_GROUP, fmt.ACL_USER.pack(6, 4))
    w.item(fmt.PXAR_ACL_GROUP_OBJ, fmt.U64.pack(5))
    w.item(fmt.PXAR_ACL_DEFAULT, fmt.ACL_DEFAULT.pack(7, 5, 0, fmt.ACL_NO_MASK))
    w.item(fmt.PXAR_ACL_DEFAULT_USER, fmt.ACL_USER.pack(8, 6))
    w.item(fmt.PXAR_ACL_DEFAULT_GROUP, fmt.ACL_USER.pack(9, 2))
    w.item(fmt.PXAR_FCAPS, b"caps")
    w.item(fmt.PXAR_QUOTA_PROJID, fmt.U64.pack(42))
    w.stack.append((f, f + 18, [], b"m"))
    w.end_dir()
    data, _ = w.finish()
    m = open_bytes(data).lookup("/m")
    assert m.is_dir and m.xattrs == ((b"user.k", b"v\0w"),)
    assert m.acl is not None
    assert (m.acl.users, m.acl.groups, m.acl.group_obj) == (((5, 7),), ((6, 4),), 5)
    assert m.acl.default == (7, 5, 0, fmt.ACL_NO_MASK)
    assert (m.acl.default_users, m.acl.default_groups) == (((8, 6),), ((9, 2),))
    assert (m.fcaps, m.quota_project_id) == (b"caps", 42)


def test_short_reads_from_the_source_are_truncation(v2):
    data, payload = v2

    class Lying(BytesSource):
        def __init__(self, raw: bytes) -> None:
            super().__init__(raw)
            self.size = len(raw) + 4096

    with pytest.raises(CorruptDataError):
        Accessor(Lying(data + b"\0" * 0), BytesSource(payload), name="lie")


def test_negative_read_arguments(v2):
    data, payload = v2
    acc = open_bytes(data, payload)
    with pytest.raises(UsageError):
        acc.read(acc.lookup("/xattr_file"), -1, 5)


# --- our encoder -> our reader ----------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_encoder_round_trip(split):
    acl = Acl(users=((7, 6),), group_obj=4, default=(7, 5, 0, fmt.ACL_NO_MASK))
    out, pout = io.BytesIO(), io.BytesIO() if split else None
    enc = Encoder(out, pout, prelude=b"{}" if split else None)
    enc.begin_directory(b"", Metadata(mode=0o40755, mtime_ns=-1))
    f_off = enc.add_file(
        b"f", Metadata(mode=0o100600, uid=3, xattrs=((b"user.x", b"1"),), acl=acl), 5, [b"hello"]
    )
    enc.add_hardlink(b"h", b"f", f_off)
    depth = 1100
    for i in range(depth):
        enc.begin_directory(b"n%d" % i, Metadata(mode=0o40700, fcaps=b"c" if i == 0 else None))
    enc.add_file(b"leaf", Metadata(mode=0o100644, quota_project_id=9), 3, [b"abc"])
    for _ in range(depth):
        enc.end_directory()
    enc.add_symlink(b"s", Metadata(mode=0o120777), b"f")
    enc.finish()
    acc = open_bytes(out.getvalue(), pout.getvalue() if pout else None)
    assert acc.format_version == (2 if split else 1)
    assert acc.root().mtime_ns == -1
    f = acc.lookup("/f")
    assert (f.uid, f.xattrs, f.acl, acc.read(f, 1, 10)) == (3, ((b"user.x", b"1"),), acl, b"ello")
    assert acc.resolve_hardlink(acc.lookup("/h")) == f
    assert acc.lookup("/n0").fcaps == b"c"
    leaf_path = b"/" + b"/".join(b"n%d" % i for i in range(depth)) + b"/leaf"
    leaf = acc.lookup(leaf_path)
    assert (leaf.quota_project_id, acc.read(leaf, 0, 10)) == (9, b"abc")
    paths = [e.path for e in acc.walk()]
    assert len(paths) == depth + 5 and paths[-1] == b"/s" and paths[-2] == leaf_path


@pytest.mark.parametrize(("archive", "payload", "dump"), GOLDEN)
def test_records_and_children_at_give_what_listdir_gives(vectors, archive, payload, dump):
    """A tree restore cuts a directory from its records alone and hands runs of them to
    workers: each run decodes to the very entries listdir gives."""
    acc = open_golden(vectors, archive, payload)
    for directory in (e for e in acc.walk() if e.is_dir):
        children = list(acc.listdir(directory))
        records = acc.records(directory)
        assert [f for f, _ in records] == [c.entry_offset for c in children]
        for child, (_, size) in zip(children, records, strict=True):
            if child.is_dir:
                assert size == child.entry_end - child.entry_offset
        for start in range(len(records)):
            run = [f for f, _ in records[start : start + 2]]
            assert list(acc.children_at(directory, run)) == children[start : start + 2]
    root = acc.root()
    with pytest.raises(CorruptDataError, match=f"{archive}: no goodbye record .* offset 1"):
        acc.children_at(root, [1])


def test_a_run_of_children_may_not_start_inside_the_sibling_before_it():
    """children_at checks a run's first entry against the sibling before it, as listdir does:
    a forged record pointing into a file's content decodes to nothing."""
    inner = MiniPxar()
    c = inner.file(b"c", b"")
    items = bytes(inner.out[c:])  # c's FILENAME, ENTRY and PAYLOAD
    w = MiniPxar()
    a = w.file(b"a", items)  # ... as a's content
    w.file(b"b", b"y")
    forged = a + 18 + fmt.ENTRY_FULL_SIZE + 16  # where c's items lie inside a's payload
    w.stack[-1][2].append((fmt.filename_hash(b"c"), forged, len(items)))
    acc = open_bytes(w.finish()[0])
    root = acc.root()
    assert forged in [f for f, _ in acc.records(root)]
    listed_errors: list = []
    assert [e.name for e in acc.listdir(root, on_error=listed_errors.append)] == [b"a", b"b"]
    errors: list = []
    assert list(acc.children_at(root, [forged], on_error=errors.append)) == []
    assert [str(e) for e in errors] == [str(e) for e in listed_errors]
    assert "inside a sibling" in str(errors[0])
