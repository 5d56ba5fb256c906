"""Directories as streamed downloads: zip and tar.zst of the golden trees checked member by
member and by real `unzip` and `tar` extractions; zip64 past 4 GiB and 65535 entries; the first
chunk before the walk goes on; flat memory; a corrupt chunk mid-stream."""

from __future__ import annotations

import datetime
import hashlib
import io
import itertools
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import zstandard
from support.fs_model import SPLIT, V1, model_for, walk
from support.golden_listing import parse_listing
from support.restore_listing import expected_listing, fs_listing

from snapfs.backup import BackupSource, backup
from snapfs.errors import CorruptDataError, SnapfsError
from snapfs.fs.content import BytesContent
from snapfs.fs.listing import ChildrenHandle
from snapfs.fs.node import Attr, Node
from snapfs.serve.archives import tar_zst_stream, zip_stream
from snapfs.store.backend import chunk_path

GOLDEN = [V1, SPLIT]
#: What GNU tar says of the pax `hdrcharset=BINARY` records of non-UTF-8 names and values.
HDRCHARSET_WARNING = "tar: Ignoring unknown extended header keyword 'hdrcharset'"


def _golden_root(vectors: Path, snapshot: str) -> Node:
    return walk(model_for(vectors / "datastore"), f"{snapshot}/root.pxar")


def _zip_name(path: bytes) -> str:
    """The documented rule: UTF-8, each byte that does not decode as `%XX`."""
    text = path.decode("utf-8", "surrogateescape")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in text)


def _unix_mtime(info: zipfile.ZipInfo) -> int | None:
    """The extended timestamp's mtime (extra field 0x5455), if the member has one."""
    extra = info.extra
    while len(extra) >= 4:
        tag, size = struct.unpack_from("<HH", extra)
        if tag == 0x5455 and extra[4] & 1:
            return struct.unpack_from("<i", extra, 5)[0]
        extra = extra[4 + size :]
    return None


def _members(chunks) -> list[tarfile.TarInfo]:
    """The members of a tar.zst stream as Python's tarfile reads them (names surrogateescaped)."""
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b"".join(chunks)))
    with tarfile.open(fileobj=raw, mode="r|", encoding="utf-8", errors="surrogateescape") as t:
        return list(t)


# --- zip of the golden trees ------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", GOLDEN, ids=["v1", "split"])
def test_zip_holds_the_golden_tree(vectors, snapshot):
    data = b"".join(zip_stream(_golden_root(vectors, snapshot), "root"))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None  # every member's CRC
    members = {info.filename: info for info in archive.infolist()}
    expected = parse_listing(vectors / "pxar" / "expected-listing.txt")
    names = []
    for path, e in expected.items():
        if e["type"] in ("device", "fifo", "socket"):
            continue  # zip cannot hold them: skipped
        name = "root" + _zip_name(path.rstrip(b"/")) + ("/" if e["type"] == "dir" else "")
        names.append(name)
        info = members[name]
        if e["type"] == "hardlink":  # a second copy of its target
            e = expected[b"/" + e["target"]]
        assert info.external_attr >> 16 == int(e["mode"], 8), name
        seconds = int(e["mtime"].split(".")[0])
        utc = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        assert info.date_time == (*utc.timetuple()[:5], utc.second // 2 * 2), name
        assert _unix_mtime(info) == seconds, name
        content = archive.read(info)
        if e["type"] == "file":
            assert hashlib.sha256(content).hexdigest() == e["sha256"], name
        elif e["type"] == "symlink":
            assert content == e["target"], name
        else:
            assert content == b"", name
    assert list(members) == names  # nothing else, in listing order
    assert "root/non_utf8_%FF%FE_name.txt" in members


def test_unzip_extracts_symlinks_and_modes(vectors, tmp_path):
    (tmp_path / "in.zip").write_bytes(b"".join(zip_stream(_golden_root(vectors, V1), "root")))
    subprocess.run(["unzip", "-qK", "in.zip", "-d", "out"], cwd=tmp_path, check=True)
    root = tmp_path / "out" / "root"
    assert os.readlink(root / "symlink_rel") == "dir_a/nested/notes.txt"
    assert os.readlink(root / "symlink_abs_dangling") == "/nonexistent/absolute/target"
    assert (root / "symlink_rel").read_bytes() == (root / "dir_a/nested/notes.txt").read_bytes()
    assert stat.S_IMODE(os.lstat(root / "big_random.bin").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(root / "empty_dir").st_mode) == 0o1777  # -K: sticky, setuid
    assert stat.S_IMODE(os.lstat(root / "setuid_prog").st_mode) == 0o4755
    assert (root / "dir_a/nested/deeper/hello.txt").read_bytes() == b"hello pxar\n"


# --- tar.zst of the golden trees --------------------------------------------------------------


def _untar(chunks, dest: Path) -> str:
    """Extract a tar.zst stream with GNU tar and every bit of metadata; tar's stderr."""
    dest.mkdir()
    tar = subprocess.Popen(
        [
            *("tar", "--zstd", "-xpf", "-", "--xattrs", "--xattrs-include=*", "--acls"),
            *("--numeric-owner", "-C", str(dest)),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for chunk in chunks:
        tar.stdin.write(chunk)
    tar.stdin.close()
    stderr = tar.stderr.read().decode()
    assert tar.wait() == 0, stderr
    return stderr


@pytest.mark.parametrize("snapshot", GOLDEN, ids=["v1", "split"])
def test_tar_zst_extracts_to_the_golden_listing(vectors, tmp_path, snapshot):
    stderr = _untar(tar_zst_stream(_golden_root(vectors, snapshot), "root"), tmp_path / "out")
    # Everything but the socket, which tar cannot hold: owners, modes, mtimes to the ns,
    # devices, xattrs, ACLs, the hard link, the non-UTF-8 name's bytes.
    expected = [line for line in expected_listing(vectors) if "type=socket" not in line]
    assert fs_listing(tmp_path / "out" / "root") == expected
    # Only the non-UTF-8 name and the binary xattr value need `hdrcharset=BINARY`.
    assert stderr.splitlines() == [HDRCHARSET_WARNING] * 2


def test_tar_zst_records(vectors):
    """What the pax headers say, as Python's tarfile reads them."""
    members = {m.name: m for m in _members(tar_zst_stream(_golden_root(vectors, V1), "root"))}
    hello = members["root/dir_a/nested/deeper/hello.txt"]
    assert hello.pax_headers["mtime"] == "1600864000.234567890"
    assert (hello.uid, hello.gid, hello.mode) == (1000, 1001, 0o644)
    link = members["root/hardlink_b"]
    assert link.islnk() and link.linkname == "root/hardlink_a"
    assert members["root/acl_file"].pax_headers["SCHILY.acl.access"] == (
        "user::rw-\nuser:1234:rw-\ngroup::r--\ngroup:2345:r--\nmask::rw-\nother::r--\n"
    )
    assert "root/non_utf8_\udcff\udcfe_name.txt" in members
    block = members["root/block_dev"]
    assert block.isblk() and (block.devmajor, block.devminor) == (8, 1)
    assert "root/unix_socket" not in members


# --- trees made up in memory --------------------------------------------------------------------


class Tree(Node):
    """A node of a tree made up in memory; `log` records which directories were listed."""

    _inos = itertools.count(1)

    def __init__(self, path: str, mode: int, log: list[str], **kw) -> None:
        self.path = path
        self.mode = mode
        self.log = log
        self.children: list[tuple[bytes, Tree]] = []
        self.data: bytes = kw.pop("data", b"")
        self.mtime_ns: int = kw.pop("mtime_ns", 1_700_000_000_000_000_000)
        self.nlink: int = kw.pop("nlink", 1)
        self.ino: int = kw.pop("ino", next(self._inos))
        self.fail_at: int | None = kw.pop("fail_at", None)
        assert not kw

    def add(self, name: str, mode: int, **kw) -> Tree:
        child = Tree(f"{self.path}/{name}", mode, self.log, **kw)
        self.children.append((name.encode(), child))
        return child

    def attr(self, load: bool = True) -> Attr:
        return Attr(self.ino, self.mode, self.nlink, 0, 0, len(self.data), 0, self.mtime_ns)

    def opendir(self) -> ChildrenHandle:
        self.log.append(self.path)
        return ChildrenHandle(self, self.children)

    def open(self) -> BytesContent:
        if self.fail_at is not None:
            return FailingContent(self.data, self.fail_at)
        return BytesContent(self.data)


class FailingContent(BytesContent):
    """Content whose bytes from `fail_at` on are corrupt."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def read(self, offset: int, size: int, block: bool = True) -> memoryview:
        if offset + size > self.fail_at:
            raise CorruptDataError("chunk 0123 is corrupt")
        return super().read(offset, size)


def _tree() -> Tree:
    root = Tree("top", stat.S_IFDIR | 0o755, [])
    first = root.add("first", stat.S_IFDIR | 0o700)
    first.add("a.txt", stat.S_IFREG | 0o644, data=b"a" * 3000)
    second = root.add("second", stat.S_IFDIR | 0o755)
    second.add("b.txt", stat.S_IFREG | 0o644, data=b"b")
    return root


@pytest.mark.parametrize("stream", [zip_stream, tar_zst_stream])
def test_first_chunk_comes_before_any_listing(stream):
    root = _tree()
    chunks = stream(root, "top")
    assert next(chunks)
    assert root.log == []  # not even the top directory was listed yet
    assert b"".join(chunks)
    assert root.log == ["top", "top/first", "top/second"]  # depth-first, each once


@pytest.mark.parametrize("stream", [zip_stream, tar_zst_stream])
def test_chunks_are_sends_not_pieces(stream):
    """Many small entries come out as a few big chunks (each is one send), not one per entry."""
    root = Tree("top", stat.S_IFDIR | 0o755, [])
    for i in range(2000):
        root.add(f"f{i}", stat.S_IFREG | 0o644, data=random.Random(i).randbytes(1000))
    sizes = [len(c) for c in stream(root, "top")]
    assert len(sizes) <= 5 and sizes[0] < 1000


def test_zip64_with_more_than_65535_entries():
    root = Tree("top", stat.S_IFDIR | 0o755, [])
    for i in range(70_000):
        root.add(f"{i:05d}", stat.S_IFREG | 0o644, data=b"%d" % i)
    data = b"".join(zip_stream(root, "top"))
    assert data[-22:-18] == b"PK\x05\x06" and data[-12:-10] == b"\xff\xff"  # count is in zip64
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = archive.infolist()
    assert len(infos) == 70_001
    assert archive.read(infos[-1]) == b"69999"


def test_zip_times_are_clamped_tar_times_are_not():
    root = Tree("top", stat.S_IFDIR | 0o755, [], mtime_ns=-1_500_000_000)
    root.add("future", stat.S_IFREG | 0o644, mtime_ns=4_102_444_800_123_456_789)  # 2100
    infos = zipfile.ZipFile(io.BytesIO(b"".join(zip_stream(root, "top")))).infolist()
    assert infos[0].date_time == (1980, 1, 1, 0, 0, 0)
    assert infos[1].date_time == (2038, 1, 19, 3, 14, 6) and _unix_mtime(infos[1]) == 2**31 - 1
    mtimes = [m.pax_headers["mtime"] for m in _members(tar_zst_stream(root, "top"))]
    assert mtimes == ["-1.500000000", "4102444800.123456789"]


def test_tar_links_a_file_met_again_anywhere_in_the_tree():
    root = Tree("top", stat.S_IFDIR | 0o755, [])
    shared = dict(data=b"same", nlink=2, ino=10**9)
    root.add("a", stat.S_IFDIR | 0o755).add("x", stat.S_IFREG | 0o644, **shared)
    root.add("b", stat.S_IFDIR | 0o755).add("y", stat.S_IFREG | 0o644, **shared)
    root.add("socket", stat.S_IFSOCK | 0o755)
    root.add("pipe", stat.S_IFIFO | 0o600)
    members = _members(tar_zst_stream(root, "top"))
    assert [m.name for m in members] == ["top", "top/a", "top/a/x", "top/b", "top/b/y", "top/pipe"]
    assert members[4].islnk() and members[4].linkname == "top/a/x"
    assert members[5].isfifo() and members[5].mode == 0o600


@pytest.mark.parametrize("stream", [zip_stream, tar_zst_stream])
def test_unreadable_file_aborts_the_stream_after_a_good_prefix(stream):
    """A failure mid-stream raises (the server drops the connection); what went out before is
    exactly what a good stream starts with, never bytes of the broken file."""
    data = random.Random(7).randbytes(5 << 20)
    good, bad = _tree(), _tree()
    good.add("big.bin", stat.S_IFREG | 0o644, data=data)
    bad.add("big.bin", stat.S_IFREG | 0o644, data=data, fail_at=3 << 20)
    expected = b"".join(stream(good, "top"))
    sent = []
    with pytest.raises(CorruptDataError):
        sent.extend(stream(bad, "top"))
    partial = b"".join(sent)
    assert sent and expected.startswith(partial) and len(partial) < len(expected)


# --- datastores made with snapfs backup -------------------------------------------------------


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """A pxar snapshot of ~200 MiB: three files of 64 MiB (random, text, random) and 300 small."""
    base = tmp_path_factory.mktemp("big")
    src = base / "src"
    (src / "small").mkdir(parents=True)
    rng = random.Random(1)
    (src / "a.bin").write_bytes(rng.randbytes(64 << 20))
    lines = b"".join(b"line %d of a log file, level=INFO\n" % i for i in range(2_000_000))
    (src / "b.log").write_bytes(lines[: 64 << 20])
    (src / "c.bin").write_bytes(rng.randbytes(64 << 20))
    for i in range(300):
        (src / "small" / f"{i:03d}.txt").write_bytes(b"small file %d\n" % i * (i + 1))
    store = base / "store"
    backup(
        store,
        [BackupSource("root.pxar", str(src))],
        backup_type="host",
        backup_id="big",
        backup_time=1_700_000_000,
    )
    shutil.rmtree(src)
    return store


BIG_ROOT = "host/big/2023-11-14T22:13:20Z/root.pxar"

_MEASURE = textwrap.dedent(
    """
    import sys
    from support.fs_model import model_for, walk
    from snapfs.serve.archives import tar_zst_stream, zip_stream

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith(key))

    store, which = sys.argv[1], sys.argv[2]
    node = walk(model_for(store, cache_size=16 << 20), "{root}")
    stream = zip_stream(node, "root") if which == "zip" else tar_zst_stream(node, "root")
    chunk = next(stream)  # the libraries' lazy set-up counts in the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS starts again from here
    before = status("VmRSS:")
    total = len(chunk) + sum(len(chunk) for chunk in stream)
    print(total, status("VmHWM:") - before)
    """
).format(root=BIG_ROOT)


@pytest.mark.parametrize("which", ["zip", "tar"])
def test_memory_stays_flat(big_store, which):
    """Peak RSS of a fresh process streaming ~200 MiB grows by less than 64 MiB, the model's
    chunk cache (16 MiB here) included."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(big_store), which],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total, growth = map(int, out.split())
    assert total > 64 << 20  # streamed it all (compressed: the random files do not shrink)
    assert growth < 64 << 20, f"peak RSS grew by {growth >> 20} MiB"


def test_corrupt_chunk_mid_file_aborts_both_streams(big_store, tmp_path):
    model = model_for(big_store)
    node = walk(model, BIG_ROOT)
    good = {
        "zip": b"".join(zip_stream(node, "root")),
        "tar": b"".join(tar_zst_stream(node, "root")),
    }
    store = tmp_path / "store"
    shutil.copytree(big_store, store)
    content = walk(model, BIG_ROOT + "/c.bin").open()
    index = content.stream.index
    digest = index.digest(index.chunk_at(content.base + (32 << 20)))
    path = store / chunk_path(digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(raw)
    broken = {"zip": _zip_is_broken, "tar": _tar_is_broken}  # as their readers see them
    for which, stream in (("zip", zip_stream), ("tar", tar_zst_stream)):
        sent = []
        with pytest.raises(SnapfsError) as info:
            sent.extend(stream(walk(model_for(store), BIG_ROOT), "root"))
        assert digest.hex() in str(info.value)
        partial = b"".join(sent)
        assert good[which].startswith(partial) and len(partial) > 64 << 20, which
        broken[which](partial)


def _zip_is_broken(data: bytes) -> None:
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(data))


def _tar_is_broken(data: bytes) -> None:
    listed = subprocess.run(["tar", "--zstd", "-tf", "-"], input=data, capture_output=True)
    assert listed.returncode != 0 and b"root/a.bin" in listed.stdout


@pytest.mark.parametrize("stream", [zip_stream, tar_zst_stream])
def test_damaged_blob_aborts_the_stream_not_an_empty_file(vectors, tmp_path, stream):
    """A blob that fails to load stats as an empty file: the stream must fail, not store that."""
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    blob = store / "vm/100/2024-06-01T10:00:00Z/qemu-server.conf.blob"
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    with pytest.raises(SnapfsError, match="qemu-server.conf"):
        b"".join(stream(walk(model_for(store), "vm/100/2024-06-01T10:00:00Z"), "snap"))


@pytest.mark.slow
def test_zip64_of_an_image_past_4_gib(tmp_path):
    """A 4.2 GiB image (zeros but for markers at both ends) zipped from its snapshot folder:
    zip64 sizes and offsets, the content checked as it streams out of zipfile."""
    size = (4 << 30) + (200 << 20)
    markers = {0: b"first bytes", size - 13: b"last 13 bytes"}
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)
        for offset, marker in markers.items():
            f.seek(offset)
            f.write(marker)
    store = tmp_path / "store"
    backup(
        store,
        [BackupSource("drive-scsi0.img", str(image))],
        backup_type="vm",
        backup_id="100",
        backup_time=1_700_000_000,
    )
    image.unlink()
    snapshot = walk(model_for(store), "vm/100/2023-11-14T22:13:20Z")
    data = b"".join(zip_stream(snapshot, "snap"))  # zeros deflate ~1000:1: a few MiB
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = archive.getinfo("snap/drive-scsi0.img")
    assert info.file_size == size and info.external_attr >> 16 == stat.S_IFREG | 0o444
    offset = 0
    zeros = bytes(4 << 20)
    with archive.open(info) as member:  # checks the CRC at the end
        while block := member.read(4 << 20):
            expected = bytearray(zeros[: len(block)])
            for at, marker in markers.items():
                if offset <= at < offset + len(block):
                    expected[at - offset : at - offset + len(marker)] = marker
            assert block == expected, offset
            offset += len(block)
    assert offset == size
