"""Walk a real directory tree and feed it to the pxar `Encoder`, the way the PBS client does.

What is read, and why exactly this (the bytes of the archive depend on it; docs/formats.md §11.3,
§11.6 and tests/vectors/README.md, mirroring PBS `pbs-client/src/pxar/create.rs`):

* children sorted by raw name bytes; `lstat` metadata with the full `st_mode`;
* xattrs, POSIX ACLs, fcaps, chattr flags and the quota project ID only for regular files and
  directories (upstream opens everything else with O_PATH, which yields none of them); xattrs in
  `flistxattr` order, only `user.*`, `trusted.*` and `security.NTACL`;
* ACLs decoded from the kernel's `system.posix_acl_*` xattrs and mapped like upstream `process_acl`;
* hard links detected by (st_dev, st_ino) for regular files with st_nlink > 1, pointing at the
  archive-relative path of the first occurrence;
* devices split with `from_dev_t`.

Problems with single entries (permission denied, vanished files, read errors, files that shrink
while being read) are reported through `on_error` and in `EncodeStats.errors`; the entry is skipped
(or, once its header is written, padded with zeros like upstream) and the walk goes on.

The walk is iterative and keeps at most `_FD_WINDOW` directory descriptors open, so depth is
limited neither by the recursion limit nor by the descriptor limit.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import os
import stat as statmod
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from snapfs.errors import CorruptDataError, NotFoundError
from snapfs.pxar.acl import ACL_XATTR_ACCESS, ACL_XATTR_DEFAULT, acl_from_xattrs
from snapfs.pxar.encoder import Encoder, EntryEvent, Metadata
from snapfs.pxar.entry import Acl
from snapfs.pxar.format import device_from_dev_t

__all__ = [
    "EncodeStats",
    "encode_tree",
    "pxar_flags_from_chattr",
    "walk_tree",
]

ErrorCallback = Callable[[str, OSError], None]

#: Directory descriptors kept open along the current path; deeper ancestors are re-opened via "..".
_FD_WINDOW = 64

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a FIFO replaced the file since lstat, open must not hang the backup.
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_O_NOATIME = getattr(os, "O_NOATIME", 0)

# ioctls (linux/fs.h): FS_IOC_GETFLAGS is _IOR('f', 1, long); FS_IOC_FSGETXATTR is
# _IOR('X', 31, struct fsxattr) with the 28-byte struct whose fsx_projid sits at offset 12.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_FSGETXATTR = 0x801C581F
_UNSUPPORTED = {errno.ENOTTY, errno.ENOSYS, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL}

#: chattr bit -> pxar flag bit (docs/formats.md §11.4, PBS `Flags::from_chattr`).
_CHATTR_MAP = (
    (0x20, 0x10000),  # APPEND
    (0x80, 0x20000),  # NOATIME
    (0x4, 0x40000),  # COMPR
    (0x800000, 0x80000),  # NOCOW
    (0x40, 0x100000),  # NODUMP
    (0x10000, 0x200000),  # DIRSYNC
    (0x10, 0x400000),  # IMMUTABLE
    (0x8, 0x800000),  # SYNC
    (0x400, 0x1000000),  # NOCOMP
    (0x20000000, 0x2000000),  # PROJINHERIT
)

#: Filesystems PBS asks for quota project IDs (ext4, XFS, FUSE, ZFS).
_QUOTA_FS_MAGIC = {0xEF53, 0x58465342, 0x65735546, 0x2FC12FC1}

_ACL_XATTR_ACCESS = ACL_XATTR_ACCESS.decode()  # os.listxattr names are str
_ACL_XATTR_DEFAULT = ACL_XATTR_DEFAULT.decode()
_FCAPS_XATTR = "security.capability"


@dataclass(slots=True)
class EncodeStats:
    """What a tree walk wrote, and what it had to leave out."""

    directories: int = 0  # the root included
    files: int = 0
    file_bytes: int = 0
    hardlinks: int = 0
    symlinks: int = 0
    devices: int = 0
    fifos: int = 0
    sockets: int = 0
    #: (filesystem path, error) for every entry that was skipped or is incomplete.
    errors: list[tuple[str, OSError]] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return (
            self.directories
            + self.files
            + self.hardlinks
            + self.symlinks
            + self.devices
            + self.fifos
            + self.sockets
        )


# --- pure helpers -------------------------------------------------------------------------------


def pxar_flags_from_chattr(attr: int) -> int:
    """Map Linux inode flags (`FS_IOC_GETFLAGS`) to the pxar `flags` bits PBS stores."""
    flags = 0
    for chattr_bit, pxar_bit in _CHATTR_MAP:
        if attr & chattr_bit:
            flags |= pxar_bit
    return flags


# --- the walk -----------------------------------------------------------------------------------


class _FsMagic:
    """`fstatfs` filesystem type per device: PBS decides quota support by it."""

    def __init__(self) -> None:
        self._cache: dict[int, int] = {}
        try:
            self._fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
        except (OSError, AttributeError):
            self._fstatfs = None

    def __call__(self, fd: int, dev: int) -> int:
        magic = self._cache.get(dev)
        if magic is None:
            magic = 0
            if self._fstatfs is not None:
                buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
                if self._fstatfs(fd, buf) == 0:
                    magic = struct.unpack_from("l", buf.raw)[0] & 0xFFFFFFFF
            self._cache[dev] = magic
        return magic


class _FileContent:
    """Exactly `size` bytes of an open file: short reads and read errors are padded with zeros.

    Upstream does the same (the header with the size is already written), and reports it.
    """

    def __init__(self, fd: int, size: int, report: Callable[[OSError], None]) -> None:
        self._file = io.FileIO(fd, "rb", closefd=False)
        self._fd = fd
        self._size = size
        self._remaining = size
        self._report = report
        self._failed = False

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), self._remaining)
        if n == 0:
            return 0
        if not self._failed:
            try:
                got = self._file.readinto(view[:n]) or 0
            except OSError as exc:
                self._fail(exc)
                got = 0
            if got:
                self._remaining -= got
                return got
            if not self._failed:
                self._fail(OSError(errno.ENODATA, "file shrank while reading; padded with zeros"))
        view[:n] = bytes(n)
        self._remaining -= n
        return n

    def check_grown(self) -> None:
        if self._failed:
            return
        try:
            grown = os.pread(self._fd, 1, self._size)
        except OSError:
            return
        if grown:
            self._report(OSError(errno.EFBIG, "file grew while reading; archived the first bytes"))

    def _fail(self, exc: OSError) -> None:
        self._failed = True
        self._report(exc)


@dataclass(slots=True)
class _Frame:
    fd: int | None
    dev: int
    ino: int
    names: Iterator[bytes]
    #: Archive-relative path of the directory with a trailing slash (b"" for the root).
    prefix: bytes
    #: Filesystem path, for messages and as a fallback for re-opening.
    path: bytes


@dataclass
class _Walker:
    encoder: Encoder
    stats: EncodeStats
    on_error: ErrorCallback | None
    one_file_system: bool
    hardlinks: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)
    fs_magic: _FsMagic = field(default_factory=_FsMagic)
    stack: list[_Frame] = field(default_factory=list)
    root_dev: int = 0

    def report(self, path: bytes, exc: OSError) -> None:
        text = os.fsdecode(path)
        self.stats.errors.append((text, exc))
        if self.on_error is not None:
            self.on_error(text, exc)

    # -- driving --

    def run(self, root: bytes) -> None:
        try:
            fd = os.open(root, _O_DIR & ~os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(
                f"{os.fsdecode(root)}: no such directory ({exc.strerror})"
            ) from None
        try:
            st = os.fstat(fd)
            self.root_dev = st.st_dev
            meta = self.metadata(fd, st, root)
            names = self.list_dir(fd, root)
        except BaseException:
            os.close(fd)
            raise
        self.encoder.begin_directory(b"", meta)
        self.stats.directories += 1
        self.stack.append(_Frame(fd, st.st_dev, st.st_ino, iter(names), b"", root))
        try:
            while self.stack:
                frame = self.stack[-1]
                name = next(frame.names, None)
                if name is None:
                    self.encoder.end_directory()
                    self.pop()
                else:
                    self.child(frame, name)
        finally:
            for frame in self.stack:
                if frame.fd is not None:
                    os.close(frame.fd)
            self.stack.clear()

    def pop(self) -> None:
        frame = self.stack.pop()
        try:
            if self.stack and self.stack[-1].fd is None:
                self.reopen(self.stack[-1], frame.fd)
        finally:
            if frame.fd is not None:
                os.close(frame.fd)

    def reopen(self, frame: _Frame, child_fd: int | None) -> None:
        """Re-open an ancestor whose descriptor was closed to bound the number of open fds."""
        try:
            if child_fd is not None:
                fd = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=child_fd)
            else:
                fd = os.open(frame.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (frame.dev, frame.ino):
                os.close(fd)
                raise OSError(errno.ESTALE, "directory was moved while being archived")
        except OSError as exc:
            self.report(frame.path, exc)
            frame.names = iter(())
            return
        frame.fd = fd

    def push(self, frame: _Frame) -> None:
        self.stack.append(frame)
        old = len(self.stack) - 1 - _FD_WINDOW
        if old >= 0 and self.stack[old].fd is not None:
            os.close(self.stack[old].fd)  # type: ignore[arg-type]
            self.stack[old].fd = None

    # -- reading --

    def list_dir(self, fd: int, path: bytes) -> list[bytes]:
        try:
            return sorted(os.fsencode(n) for n in os.listdir(fd))
        except OSError as exc:
            self.report(path, exc)
            return []

    def metadata(self, fd: int | None, st: os.stat_result, path: bytes) -> Metadata:
        """Metadata as PBS stores it; `fd` is an open descriptor for files and directories only."""
        xattrs: list[tuple[bytes, bytes]] = []
        acl = None
        fcaps = None
        flags = 0
        projid = None
        if fd is not None:
            xattrs, acl, fcaps = self.xattrs(fd, st, path)
            flags = self.chattr(fd, path)
            projid = self.project_id(fd, st, path)
        return Metadata(
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            flags=flags,
            xattrs=tuple(xattrs),
            acl=acl,
            fcaps=fcaps,
            quota_project_id=projid,
        )

    def xattrs(
        self, fd: int, st: os.stat_result, path: bytes
    ) -> tuple[list[tuple[bytes, bytes]], Acl | None, bytes | None]:
        xattrs: list[tuple[bytes, bytes]] = []
        acl = None
        fcaps = None
        try:
            names = os.listxattr(fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EBADF):
                self.report(path, exc)
            return xattrs, acl, fcaps
        acl_done = False
        for name in names:
            try:
                if name == _FCAPS_XATTR:
                    fcaps = self.getxattr(fd, name)
                elif name in (_ACL_XATTR_ACCESS, _ACL_XATTR_DEFAULT):
                    if not acl_done:
                        acl_done = True
                        access = self.getxattr(fd, _ACL_XATTR_ACCESS)
                        default = (
                            self.getxattr(fd, _ACL_XATTR_DEFAULT)
                            if statmod.S_ISDIR(st.st_mode)
                            else None
                        )
                        acl = acl_from_xattrs(access, default)
                elif _is_stored_xattr(raw := os.fsencode(name)):
                    value = self.getxattr(fd, name)
                    if value is not None:
                        xattrs.append((raw, value))
            except CorruptDataError as exc:
                self.report(path, OSError(errno.EINVAL, f"{name}: {exc}"))
            except OSError as exc:
                self.report(path, exc)
        return xattrs, acl, fcaps

    @staticmethod
    def getxattr(fd: int, name: str) -> bytes | None:
        try:
            return os.getxattr(fd, name)
        except OSError as exc:
            # Removed since listing, or not applicable: upstream ignores both.
            if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.EBADF):
                return None
            raise

    def chattr(self, fd: int, path: bytes) -> int:
        try:
            buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\x00" * 8)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                self.report(path, exc)
            return 0
        return pxar_flags_from_chattr(struct.unpack_from("<I", buf)[0])

    def project_id(self, fd: int, st: os.stat_result, path: bytes) -> int | None:
        if self.fs_magic(fd, st.st_dev) not in _QUOTA_FS_MAGIC:
            return None
        try:
            buf = fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, b"\x00" * 28)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                self.report(path, exc)
            return None
        projid = struct.unpack_from("<I", buf, 12)[0]
        return projid or None

    # -- one child --

    def child(self, frame: _Frame, name: bytes) -> None:
        """Read one entry, then encode it.

        Only the reading is guarded: an OSError from the encoder is a failing output and must end
        the walk, not be reported as a problem of this entry.
        """
        path = frame.path.rstrip(b"/") + b"/" + name
        enc = self.encoder
        try:
            st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
            fmt = statmod.S_IFMT(st.st_mode)
            if fmt == statmod.S_IFDIR:
                fd, st, meta, names = self.read_directory(frame, name, path)
            elif fmt == statmod.S_IFREG:
                if st.st_nlink > 1 and (link := self.hardlinks.get((st.st_dev, st.st_ino))):
                    enc.add_hardlink(name, *link)
                    self.stats.hardlinks += 1
                    return
                fd, st, meta = self.read_file(frame, name, path)
            elif fmt == statmod.S_IFLNK:
                target = os.readlink(name, dir_fd=frame.fd)
            elif fmt not in _LEAF_TYPES:
                raise OSError(errno.EINVAL, f"unknown file type {fmt:#o}; skipped")
        except OSError as exc:
            self.report(path, exc)
            return
        if fmt == statmod.S_IFDIR:
            try:
                enc.begin_directory(name, meta)
            except BaseException:
                os.close(fd)
                raise
            self.stats.directories += 1
            self.push(
                _Frame(fd, st.st_dev, st.st_ino, iter(names), frame.prefix + name + b"/", path)
            )
        elif fmt == statmod.S_IFREG:
            self.encode_file(frame, name, path, fd, st, meta)
        elif fmt == statmod.S_IFLNK:
            enc.add_symlink(name, self.metadata(None, st, path), target)
            self.stats.symlinks += 1
        elif fmt in (statmod.S_IFBLK, statmod.S_IFCHR):
            enc.add_device(name, self.metadata(None, st, path), *device_from_dev_t(st.st_rdev))
            self.stats.devices += 1
        elif fmt == statmod.S_IFIFO:
            enc.add_fifo(name, self.metadata(None, st, path))
            self.stats.fifos += 1
        else:
            enc.add_socket(name, self.metadata(None, st, path))
            self.stats.sockets += 1

    def open_at(self, frame: _Frame, name: bytes, flags: int) -> int:
        if _O_NOATIME:
            try:
                return os.open(name, flags | _O_NOATIME, dir_fd=frame.fd)
            except PermissionError:
                pass  # O_NOATIME needs ownership or CAP_FOWNER; retry without it
        return os.open(name, flags, dir_fd=frame.fd)

    def read_directory(
        self, frame: _Frame, name: bytes, path: bytes
    ) -> tuple[int, os.stat_result, Metadata, list[bytes]]:
        fd = self.open_at(frame, name, _O_DIR)
        try:
            st = os.fstat(fd)
            meta = self.metadata(fd, st, path)
            if self.one_file_system and st.st_dev != self.root_dev:
                names: list[bytes] = []  # a mount point: kept, its contents are not
            else:
                names = self.list_dir(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd, st, meta, names

    def read_file(
        self, frame: _Frame, name: bytes, path: bytes
    ) -> tuple[int, os.stat_result, Metadata]:
        fd = self.open_at(frame, name, _O_FILE)
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                raise OSError(errno.ESTALE, "file was replaced while being archived; skipped")
            meta = self.metadata(fd, st, path)
        except BaseException:
            os.close(fd)
            raise
        return fd, st, meta

    def encode_file(
        self, frame: _Frame, name: bytes, path: bytes, fd: int, st: os.stat_result, meta: Metadata
    ) -> None:
        try:
            content = _FileContent(fd, st.st_size, lambda exc: self.report(path, exc))
            offset = self.encoder.add_file(name, meta, st.st_size, content)
            content.check_grown()
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.file_bytes += st.st_size
        if st.st_nlink > 1:
            self.hardlinks[(st.st_dev, st.st_ino)] = (frame.prefix + name, offset)


_LEAF_TYPES = frozenset(
    (statmod.S_IFLNK, statmod.S_IFBLK, statmod.S_IFCHR, statmod.S_IFIFO, statmod.S_IFSOCK)
)


def _is_stored_xattr(name: bytes) -> bool:
    """PBS (proxmox-sys `is_valid_xattr_name`): user.*, trusted.* and Samba's security.NTACL."""
    if not 0 < len(name) <= 255:
        return False
    return name.startswith((b"user.", b"trusted.")) or name == b"security.NTACL"


def walk_tree(
    root: str | os.PathLike[str] | bytes,
    encoder: Encoder,
    *,
    on_error: ErrorCallback | None = None,
    one_file_system: bool = False,
) -> EncodeStats:
    """Feed the tree at `root` (a directory; it becomes the archive root) into `encoder`.

    Closes the root directory but does not call `encoder.finish()`. With `one_file_system`,
    directories on other devices are kept as empty directories (PBS's mount point handling).
    """
    stats = EncodeStats()
    _Walker(encoder, stats, on_error, one_file_system).run(os.fsencode(root))
    return stats


def encode_tree(
    root: str | os.PathLike[str] | bytes,
    output: BinaryIO,
    payload_output: BinaryIO | None = None,
    *,
    prelude: bytes | None = None,
    on_error: ErrorCallback | None = None,
    on_entry: Callable[[EntryEvent], None] | None = None,
    one_file_system: bool = False,
) -> EncodeStats:
    """Archive the directory `root` as a pxar v1 archive, or split v2 with `payload_output`.

    `on_entry` sees every entry below the root (see `EntryEvent`), e.g. for a catalog writer;
    `on_error` sees every entry that was skipped or is incomplete. The outputs are flushed, not
    closed.
    """
    encoder = Encoder(output, payload_output, prelude=prelude, on_entry=on_entry)
    stats = walk_tree(root, encoder, on_error=on_error, one_file_system=one_file_system)
    encoder.finish()
    return stats
