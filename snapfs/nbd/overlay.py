"""Copy-on-write overlay: guest writes go to a local file, the backup is never touched.

`snapfs nbd --overlay FILE` lets a VM boot and run from a backup at once; a later `qemu-img convert
nbd://...` (served with the same overlay) or `snapfs restore` plus replaying makes it permanent.

File layout (one file, reopened across runs so a VM can be restarted on its own writes):

    0        header: magic "SNAPFSOV", version, block size, image size, the image's identity
    4096     bitmap, one bit per block: 1 = the block's bytes are in this file
    data     block i at data_offset + i * block_size (sparse: unwritten blocks take no space)

Crash order: a block's data is written before its bit, so a torn write leaves the old bit (the
backup's bytes) or the new data; `flush` fsyncs both. So does a disk that fills up mid-write: the
write raises OSError(ENOSPC) before it sets its bits, and the blocks it would have added to the
overlay still show the backup's bytes.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable

from snapfs.errors import BadMagicError, SnapfsError, UsageError

MAGIC = b"SNAPFSOV"
VERSION = 1
BLOCK_SIZE = 4096
HEADER = struct.Struct("<8sIIQ256s")  # magic, version, block size, image size, identity
BITMAP_OFFSET = 4096


class Overlay:
    """Blocks written by the guest, over a read-only base (`read_base(offset, size)`)."""

    def __init__(
        self,
        path: str,
        size: int,
        identity: str,
        read_base: Callable[[int, int], bytes],
        *,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.path = path
        self.size = size
        self.block_size = block_size
        self.read_base = read_base
        self.blocks = (size + block_size - 1) // block_size
        bitmap_bytes = (self.blocks + 7) // 8
        self.data_offset = _align(BITMAP_OFFSET + bitmap_bytes, 1 << 20)
        self._lock = threading.Lock()
        ident = identity.encode()[:256]
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SnapfsError(f"overlay {path}: cannot open: {exc.strerror}") from None
        try:
            header = os.pread(self._fd, HEADER.size, 0)
            if not header:
                _pwrite_all(self._fd, HEADER.pack(MAGIC, VERSION, block_size, size, ident), 0)
                os.ftruncate(self._fd, self.data_offset + size)
                self.bitmap = bytearray(bitmap_bytes)
            else:
                self._check_header(header, ident)
                self.bitmap = bytearray(os.pread(self._fd, bitmap_bytes, BITMAP_OFFSET))
                self.bitmap.extend(bytes(bitmap_bytes - len(self.bitmap)))
        except BaseException:
            os.close(self._fd)
            raise

    def _check_header(self, header: bytes, ident: bytes) -> None:
        if len(header) < HEADER.size:
            raise BadMagicError(f"overlay {self.path}: too short for an overlay header")
        magic, version, block_size, size, stored = HEADER.unpack(header)
        if magic != MAGIC:
            raise BadMagicError(f"overlay {self.path}: not a snapfs overlay file")
        if version != VERSION or block_size != self.block_size:
            raise BadMagicError(
                f"overlay {self.path}: version {version}, block size {block_size} not supported"
            )
        owner = stored.rstrip(b"\0")
        if size != self.size or owner != ident:
            raise UsageError(
                f"overlay {self.path} belongs to {owner.decode(errors='replace')} ({size} bytes), "
                "not to this image; use another overlay file"
            )

    def _dirty(self, block: int) -> bool:
        return bool(self.bitmap[block >> 3] & (1 << (block & 7)))

    def read(self, offset: int, size: int) -> bytes:
        """The image as the guest sees it: overlay blocks where written, the base elsewhere."""
        end = min(offset + size, self.size)
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        if not any(self._dirty(b) for b in range(first, last + 1)):
            return self.read_base(offset, end - offset)
        parts = []
        pos = offset
        block = first
        while pos < end:
            dirty = self._dirty(block)
            run_end = block + 1
            while run_end <= last and self._dirty(run_end) == dirty:
                run_end += 1
            stop = min(end, run_end * bs)
            if dirty:
                parts.append(os.pread(self._fd, stop - pos, self.data_offset + pos))
            else:
                parts.append(self.read_base(pos, stop - pos))
            pos = stop
            block = run_end
        return b"".join(parts)

    def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        bs = self.block_size
        end = offset + len(data)
        with self._lock:
            first, last = offset // bs, (end - 1) // bs
            # Partly covered edge blocks not yet in the overlay start as the base's bytes.
            for block in {first, last}:
                bstart = block * bs
                bend = min(bstart + bs, self.size)
                if not self._dirty(block) and (offset > bstart or end < bend):
                    _pwrite_all(
                        self._fd, self.read_base(bstart, bend - bstart), self.data_offset + bstart
                    )
            _pwrite_all(self._fd, data, self.data_offset + offset)
            lo, hi = first >> 3, last >> 3
            for block in range(first, last + 1):
                self.bitmap[block >> 3] |= 1 << (block & 7)
            _pwrite_all(self._fd, bytes(self.bitmap[lo : hi + 1]), BITMAP_OFFSET + lo)
            if fua:
                os.fdatasync(self._fd)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of `data` at `offset`. A filling disk first shows as a short write and only the
    next call raises OSError(ENOSPC), the error the NBD client must be told (not a vague EIO)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if not written:  # no progress and no error: never loop forever on it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
        offset += written


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
