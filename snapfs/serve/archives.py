"""A directory of the mount as one download: a streamed zip, or a pax tar compressed with zstd.

Both are synchronous generators of bytes chunks over the model's nodes (no HTTP here): the caller
iterates them in a worker thread and sends each chunk before asking for the next, so the
consumer's pace is the backpressure and memory stays flat whatever the tree's size. Nothing is
walked ahead: the first chunk goes out once the first entry (the directory itself) is written,
and files are read `READ_SIZE` bytes at a time through `Node.open`.

Entries come depth-first in listing order, the directory itself first as `top/`, everything
else as `top/relative/path`; `top` is the folder the download extracts into, a name the caller
chooses (the directory's own, usually).

zip (zip64 throughout, deflated with data descriptors, so nothing is read twice): directories,
regular files and symbolic links, with their mode bits (in the unix external attributes) and
mtime (the DOS field in UTC to 2 s, and the extended timestamp to the second; both clamped to
what they hold, 1980 to 2038). What zip cannot hold is left out: devices, FIFOs and sockets are
skipped, owners, xattrs and ACLs are not stored, and a hard link is stored as a second copy of
its file. Zip names are UTF-8 only, so a name that is not valid UTF-8 has each byte that does
not decode written as `%XX` (its hex value): it stays readable and distinct from its siblings.

tar.zst (POSIX pax): every kind but sockets (which tar cannot hold), with mode, numeric owner,
mtime to the nanosecond, symlink targets, device numbers, hard links (an `ino` met again is a
link to where it was first written; when an archive is not indexed yet, a link whose target was
listed before the link was seen is a second copy instead), xattrs as `SCHILY.xattr.<name>` and
POSIX ACLs as `SCHILY.acl.access`/`SCHILY.acl.default` text, which is what GNU tar and bsdtar
restore ACLs from (GNU tar ignores the binary `system.posix_acl_*` xattrs when extracting).
Names, link targets and xattr values are their exact bytes: a header holding bytes that are not
UTF-8 says `hdrcharset=BINARY` (GNU tar warns that it does not know the keyword, and extracts the
bytes as they are). Extract with `tar --zstd -xpf FILE --xattrs --xattrs-include='*' --acls
--numeric-owner` (without `--xattrs-include`, GNU tar restores only `user.*` xattrs).

An entry whose key was not given (an encrypted archive, image or blob in a download of a whole
datastore or snapshot) is left out, with a warning in the log; so that whoever unpacks the
download knows it is not whole, its last entry is then `top/SNAPFS-LEFT-OUT.txt`, one line per
entry left out and why.

Errors: once the first chunk is sent, a failure can no longer be an HTTP status. A node that
cannot be read (a corrupt or missing chunk, a file shorter than its size) raises its SnapfsError
out of the generator, so the server drops the connection: the client is left with a truncated
zip or tar, which its reader reports as broken, and never with wrong bytes.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator

import zstandard
from stream_zip import NO_COMPRESSION_64, ZIP_64, MemberFile, stream_zip

from snapfs.errors import CorruptDataError, CryptKeyError, TruncatedDataError
from snapfs.fs.listing import DirHandle, DirItem
from snapfs.fs.node import Attr, Node
from snapfs.pxar import acl as aclmod
from snapfs.pxar.format import validate_filename

__all__ = ["zip_stream", "tar_zst_stream"]

log = logging.getLogger("snapfs.serve")

#: Bytes read from a file at a time, and the size of the chunks the generators yield.
#: The last entry of a download that is not whole: what was left out, and why.
LEFT_OUT_NAME = "SNAPFS-LEFT-OUT.txt"
READ_SIZE = 1 << 20
CHUNK_SIZE = 1 << 20
#: Directory entries asked of a listing at a time (one batch is held per open directory level).
LIST_BATCH = 256
#: Deflate level of zip members: fast, because the zip is made while the client waits.
ZIP_LEVEL = 1
#: A block is deflated if these samples of it (at its start, middle and end) shrink by a tenth.
SAMPLE_SIZE = 4096

_UNDECODABLE_BYTE = re.compile("[\udc80-\udcff]")
#: The mtimes zip holds, in seconds: the DOS field starts in 1980, the extended timestamp is i32.
_ZIP_EARLIEST = 315_532_800
_ZIP_LATEST = 2**31 - 1

_TAR_TYPES = {
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}
_TAR_END = bytes(2 * tarfile.BLOCKSIZE)
_ACL_RECORDS = {
    aclmod.ACL_XATTR_ACCESS: "SCHILY.acl.access",
    aclmod.ACL_XATTR_DEFAULT: "SCHILY.acl.default",
}
_ACL_TAGS = {
    aclmod.ACL_USER_OBJ: "user",
    aclmod.ACL_USER: "user",
    aclmod.ACL_GROUP_OBJ: "group",
    aclmod.ACL_GROUP: "group",
    aclmod.ACL_MASK: "mask",
    aclmod.ACL_OTHER: "other",
}


def zip_stream(directory: Node, top: str) -> Iterator[bytes]:
    """`directory` and everything below it as a zip64 file, in chunks (see the module's doc).

    Memory: a few chunks, plus the central directory stream-zip keeps for the end of the file
    (about 350 bytes and the name per entry).
    """
    zipped = stream_zip(
        _zip_members(directory, _top_path(top)),
        chunk_size=CHUNK_SIZE,
        get_compressobj=_Deflater,
    )
    return _in_chunks(zipped)


def tar_zst_stream(directory: Node, top: str, level: int = 3) -> Iterator[bytes]:
    """`directory` and everything below it as a pax tar compressed with zstd at `level`, in
    chunks (see the module's doc).

    Memory: a block being read and the compressor's window, plus the path of each file with
    more than one link (to write later links as links to it).
    """
    return _in_chunks(_tar_zst_pieces(directory, _top_path(top), level))


# --- the walk -------------------------------------------------------------------------------------


def _top_path(top: str) -> bytes:
    """The archive's top folder as bytes (a name decoded with surrogateescape gets its bytes)."""
    return top.encode("utf-8", "surrogateescape")


def _entries(
    directory: Node, top: bytes, left_out: list[str]
) -> Iterator[tuple[bytes, Node, Attr]]:
    """(path, node, attributes) of `directory` as `top`, then of everything below it,
    depth-first in listing order. A directory is opened before its entry is given (one whose key
    was not given is left out, and said in `left_out`) and read only once its entry was taken."""
    yield top, directory, directory.attr()
    stack = [(top, _listed(directory.opendir()))]
    while stack:
        path, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        node = item.node
        validate_filename(item.name, where=node.where)  # a name must not reach out of `top`
        # A datastore-level listing gives placeholders for what is not loaded yet (an archive).
        child = path + b"/" + item.name
        try:
            attr = item.attr if item.attr.final else node.attr()
        except CryptKeyError as exc:
            left_out.append(_left_out(child, exc))
            continue
        listing = None
        if stat.S_ISDIR(attr.mode):
            try:
                listing = _listed(node.opendir())  # opened here, read in batches as walked
            except CryptKeyError as exc:
                left_out.append(_left_out(child, exc))
                continue
        yield child, node, attr
        if listing is not None:
            stack.append((child, listing))


def _listed(handle: DirHandle) -> Iterator[DirItem]:
    """Every entry of an open directory, read in batches."""
    start = 0
    while batch := handle.read(start, LIST_BATCH):
        yield from batch
        start = batch[-1].next_offset


def _left_out(path: bytes, exc: CryptKeyError) -> str:
    """The line `LEFT_OUT_NAME` gets for `path`, logged too."""
    line = f"{path.decode('utf-8', 'backslashreplace')}: {exc}"
    log.warning("left out of a download: %s", line)
    return line


def _left_out_note(top: bytes, left_out: list[str]) -> tuple[bytes, bytes]:
    """(path, content) of the last entry of a download that is not whole."""
    text = "Left out of this download (give snapfs serve the key with --keyfile):\n"
    return top + b"/" + LEFT_OUT_NAME.encode(), (text + "\n".join(left_out) + "\n").encode()


def _content(
    node: Node, size: int, path: bytes, left_out: list[str]
) -> Iterator[memoryview | bytes] | None:
    """A regular file's `size` bytes, `READ_SIZE` at a time; TruncatedDataError if it ends
    sooner (its size was promised in a header already).

    The file is opened and its first block read before the caller writes its header: a file
    whose key was not given (an encrypted image or blob in a datastore-wide download) is left
    out, None, the way the entries zip or tar cannot hold are, instead of cutting the whole
    download off after its header.
    """
    try:
        content = node.open()
        first = content.read(0, min(READ_SIZE, size)) if size else b""
    except CryptKeyError as exc:
        left_out.append(_left_out(path, exc))
        return None

    def blocks() -> Iterator[memoryview | bytes]:
        block, offset = first, 0
        while offset < size:
            if offset:
                block = content.read(offset, min(READ_SIZE, size - offset))
            if not block:
                raise TruncatedDataError(f"{node.where}: ended at {offset} of {size} bytes")
            offset += len(block)
            yield block

    return blocks()


def _in_chunks(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Pieces of any size (a zip header, a zstd block of zeros) as chunks of at least
    CHUNK_SIZE bytes, each a send, except the first, which goes out at once: the download
    starts before anything big was read."""
    pending: list[bytes] = []
    size = 0
    first = True
    for piece in pieces:
        if not piece:
            continue
        pending.append(piece)
        size += len(piece)
        if first or size >= CHUNK_SIZE:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            size = 0
            first = False
    if pending:
        yield b"".join(pending)


# --- zip --------------------------------------------------------------------------------------


def _zip_members(directory: Node, top: bytes) -> Iterator[MemberFile]:
    """stream-zip's members for the entries zip can hold; the others are skipped."""
    left_out: list[str] = []
    for path, node, attr in _entries(directory, top, left_out):
        name = _zip_name(path)
        when = _zip_time(attr.mtime_ns)
        kind = stat.S_IFMT(attr.mode)
        if kind == stat.S_IFDIR:
            yield f"{name}/", when, attr.mode, NO_COMPRESSION_64, ()
        elif kind == stat.S_IFREG:
            content = _content(node, attr.size, path, left_out)
            if content is not None:
                yield name, when, attr.mode, ZIP_64, content
        elif kind == stat.S_IFLNK:
            yield name, when, attr.mode, NO_COMPRESSION_64, (node.readlink(),)
    if left_out:
        path, text = _left_out_note(top, left_out)
        now = _zip_time(time.time_ns())
        yield _zip_name(path), now, 0o100644, ZIP_64, (text,)


class _Deflater:
    """A member's raw deflate stream, storing the blocks that do not compress.

    Deflating incompressible data (media, archives, encrypted files: much of a backup) is
    ~25 MB/s where storing it is GB/s. So each block (one file read) is judged on samples, and
    a run of blocks judged alike is one zlib stream at that level. A stream ends with a sync
    flush (byte-aligned, not final) before the next begins, so together they are one valid
    deflate stream; only the last is finished.
    """

    __slots__ = ("_level", "_zlib")

    def __init__(self) -> None:
        self._level = ZIP_LEVEL
        self._zlib = zlib.compressobj(ZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

    def compress(self, block: memoryview | bytes) -> bytes:
        level = ZIP_LEVEL if _compresses(block) else 0
        if level == self._level:
            return self._zlib.compress(block)
        ended = self._zlib.flush(zlib.Z_SYNC_FLUSH)
        self._level = level
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        return ended + self._zlib.compress(block)

    def flush(self) -> bytes:
        return self._zlib.flush()


def _compresses(block: memoryview | bytes) -> bool:
    """Whether deflate is worth its time on `block`, judged on three samples of it."""
    size = len(block)
    if size <= 3 * SAMPLE_SIZE:
        return True  # small: deflating it costs little either way
    sample = b"".join(
        block[start : start + SAMPLE_SIZE] for start in (0, size // 2, size - SAMPLE_SIZE)
    )
    return len(zlib.compress(sample, ZIP_LEVEL)) < 0.9 * len(sample)


def _zip_name(path: bytes) -> str:
    """The UTF-8 name of a path in the zip: each byte that does not decode becomes `%XX`."""
    text = path.decode("utf-8", "surrogateescape")
    return _UNDECODABLE_BYTE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


def _zip_time(mtime_ns: int) -> datetime.datetime:
    """The mtime as zip holds it (UTC, whole seconds), clamped to the years zip can say."""
    seconds = min(max(mtime_ns // 1_000_000_000, _ZIP_EARLIEST), _ZIP_LATEST)
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


# --- tar.zst ----------------------------------------------------------------------------------


def _tar_zst_pieces(directory: Node, top: bytes, level: int) -> Iterator[bytes]:
    """The compressor's output as it comes; a block is flushed after the first entry so the
    download starts."""
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    compress = compressor.compress
    first_links: dict[int, str] = {}  # ino -> where a file with more than one link was written
    first = True
    left_out: list[str] = []
    for path, node, attr in _entries(directory, top, left_out):
        info = _tar_info(path, node, attr, first_links)
        if info is None:
            continue
        content = None
        if info.type == tarfile.REGTYPE:  # opened even when empty: a blob fails to load here
            content = _content(node, info.size, path, left_out)
            if content is None:
                continue
        yield compress(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if content is not None:
            for block in content:
                yield compress(block)
            yield compress(bytes(-info.size % tarfile.BLOCKSIZE))
        if first:
            yield compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            first = False
    if left_out:
        path, text = _left_out_note(top, left_out)
        info = tarfile.TarInfo(path.decode("utf-8", "surrogateescape"))
        info.size, info.mode, info.mtime = len(text), 0o644, int(time.time())
        yield compress(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        yield compress(text + bytes(-len(text) % tarfile.BLOCKSIZE))
    yield compress(_TAR_END)
    yield compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def _tar_info(
    path: bytes, node: Node, attr: Attr, first_links: dict[int, str]
) -> tarfile.TarInfo | None:
    """The tar header of one entry; None for a socket, which tar cannot hold."""
    tar_type = _TAR_TYPES.get(stat.S_IFMT(attr.mode))
    if tar_type is None:
        return None
    name = path.decode("utf-8", "surrogateescape")
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(attr.mode)
    info.uid, info.gid = attr.uid, attr.gid
    info.mtime = attr.mtime_ns // 1_000_000_000
    info.pax_headers = {"mtime": _pax_time(attr.mtime_ns)}
    if tar_type == tarfile.REGTYPE and attr.nlink > 1:
        target = first_links.setdefault(attr.ino, name)
        if target != name:
            info.type, info.linkname = tarfile.LNKTYPE, target
            return info
    info.type = tar_type
    if tar_type == tarfile.REGTYPE:
        info.size = attr.size
    elif tar_type == tarfile.SYMTYPE:
        info.linkname = node.readlink().decode("utf-8", "surrogateescape")
    elif tar_type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(attr.rdev), os.minor(attr.rdev)
    info.pax_headers.update(_pax_xattrs(node))
    return info


def _pax_time(ns: int) -> str:
    """A time in nanoseconds as a pax decimal (`-1.5` for 1.5 s before the epoch)."""
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    return f"{'-' if ns < 0 else ''}{seconds}.{fraction:09d}"


def _pax_xattrs(node: Node) -> dict[str, str]:
    """The pax records of a node's xattrs: ACLs in their text form, the others by name, with
    `%` and `=` escaped as GNU tar does. Values keep their bytes (surrogateescape)."""
    records = {}
    for raw_name, value in node.xattrs():
        acl_record = _ACL_RECORDS.get(raw_name)
        if acl_record is not None:
            records[acl_record] = _acl_text(value)
            continue
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            # A pax keyword is UTF-8: this xattr has no name in a tar.
            log.warning("%s: xattr %r left out of the tar (not UTF-8)", node.where, raw_name)
            continue
        keyword = "SCHILY.xattr." + name.replace("%", "%25").replace("=", "%3D")
        records[keyword] = value.decode("utf-8", "surrogateescape")
    return records


def _acl_text(value: bytes) -> str:
    """A kernel ACL xattr value in the long text form (`user:1234:rw-`, one entry a line,
    numeric ids), which tar's `SCHILY.acl.*` records hold."""
    lines = []
    for tag, perm, ident in aclmod.parse_acl_xattr(value):
        label = _ACL_TAGS.get(tag)
        if label is None:
            raise CorruptDataError(f"unexpected POSIX ACL tag {tag:#x}")
        qualifier = str(ident) if tag in (aclmod.ACL_USER, aclmod.ACL_GROUP) else ""
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(f"{label}:{qualifier}:{rwx}\n")
    return "".join(lines)
