"""Random-access byte sources: the one interface every reader above the chunk layer reads through.

A `ByteSource` is anything with a `size` and `read_at(offset, size)`; a plain file, bytes in memory
and an index stream read through the chunk reader all are one. `read_at` returns fewer bytes than
asked only at the end of the source, never elsewhere.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class ByteSource(Protocol):
    size: int

    def read_at(self, offset: int, size: int) -> bytes: ...


class BytesSource:
    """A ByteSource over bytes already in memory."""

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "<memory>") -> None:
        self._data = memoryview(data).toreadonly()
        self.size = len(self._data)
        self.name = name

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"{self.name}: negative offset or size ({offset}, {size})")
        return bytes(self._data[offset : offset + size])


class FileSource:
    """A ByteSource over a file on disk, read with pread so it can be shared between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        self._fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"{self.name}: negative offset or size ({offset}, {size})")
        chunks = []
        while size > 0:
            data = os.pread(self._fd, size, offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
            size -= len(data)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
