"""Where the bytes of a datastore live: the only layer that does storage I/O.

A `Backend` answers three questions about a datastore and nothing else: what is in this folder,
what are the bytes of this file, what are the raw bytes of this chunk. It has no write method on
purpose: nothing built on a Backend (mount, restore, verify) can change a datastore. Paths are
'/'-separated and relative to the datastore root ("vm/100/2024-06-01T10:00:00Z/index.json.blob").
`LocalBackend` is here; `S3Backend` (s3.py) and the `DiskCache` wrapper (diskcache.py) derive from
the same base.
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

from snapfs.errors import MissingChunkError, NotFoundError, SnapfsError


@dataclass(frozen=True)
class DirListing:
    """The entries of one folder, split into folders and files, each sorted by name."""

    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


class Backend(ABC):
    """A datastore, read-only, wherever it is kept.

    Optional, used when a backend has them: `prefetch(digests)` (a hint: chunks a reader will want
    next), `refresh()` (forget cached listings), `stats()` (request counters and cost), `close()`.
    """

    name: str  # the datastore as the user gave it: a path, `s3://bucket/store`

    @abstractmethod
    def list_dir(self, path: str) -> DirListing:
        """The folder's entries; a missing folder is an empty listing (S3 has no empty folders)."""

    @abstractmethod
    def read_file(self, path: str) -> bytes:
        """A whole snapshot or group file; NotFoundError if it does not exist."""

    @abstractmethod
    def read_chunk(self, digest: bytes) -> bytes:
        """The raw DataBlob bytes of a chunk; MissingChunkError if the store lacks it."""

    @abstractmethod
    def list_chunks(self, prefix: str) -> set[bytes]:
        """The digests stored under `.chunks/<prefix>/`, `prefix` being 4 lower-case hex digits.

        One folder (one listing) at a time, as the store shards them: a whole store may hold
        hundreds of millions of chunks and is never listed in one go.
        """

    def _parts(self, path: str) -> list[str]:
        """The components of a datastore path. Paths come from our own model, but a listing may
        hold any name: never let one climb out of the datastore."""
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise NotFoundError(f"{self.name}: invalid path {path!r}")
        return parts

    def _missing_chunk(self, digest: bytes) -> MissingChunkError:
        return MissingChunkError(f"chunk {digest.hex()} is missing from {self.name}")


def chunk_prefix(digest: bytes) -> str:
    """The 4-hex folder PBS keeps a chunk in, one of 65,536."""
    return digest[:2].hex()


def parse_chunk_names(names: Iterable[str]) -> set[bytes]:
    """The digests among a chunk folder's names; anything else there (`.bad` copies) is not one."""
    found = set()
    for name in names:
        if len(name) == 64:
            try:
                found.add(bytes.fromhex(name))
            except ValueError:
                continue
    return found


def chunk_path(digest: bytes) -> str:
    """The relative path PBS stores a chunk at: `.chunks/<first 4 hex>/<64 hex>`."""
    return f".chunks/{chunk_prefix(digest)}/{digest.hex()}"


class LocalBackend(Backend):
    """A datastore directory on a local (or network) filesystem, opened read-only."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.name = self.root
        if not os.path.isdir(self.root):
            raise NotFoundError(f"datastore {self.root}: not a directory")
        if not os.path.isdir(os.path.join(self.root, ".chunks")):
            raise NotFoundError(f"datastore {self.root}: no .chunks folder, not a PBS datastore")

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, *self._parts(path))

    def list_dir(self, path: str) -> DirListing:
        dirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(self._abs(path)) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            dirs.append(entry.name)
                        elif entry.is_file(follow_symlinks=False):
                            files.append(entry.name)
                    except OSError:
                        continue  # vanished while listing (prune, GC): simply not there
        except FileNotFoundError:
            return DirListing()
        except NotADirectoryError:
            return DirListing()
        except OSError as exc:
            raise SnapfsError(f"{self._abs(path)}: cannot list: {exc.strerror}") from None
        dirs.sort()
        files.sort()
        return DirListing(dirs, files)

    def read_file(self, path: str) -> bytes:
        full = self._abs(path)
        try:
            with open(full, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFoundError(f"{full}: no such file") from None
        except OSError as exc:
            raise SnapfsError(f"{full}: cannot read: {exc.strerror}") from None

    def read_chunk(self, digest: bytes) -> bytes:
        full = os.path.join(self.root, chunk_path(digest))
        try:
            with open(full, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise self._missing_chunk(digest) from None
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise MissingChunkError(f"chunk {digest.hex()}: {full} is not a file") from None
            raise SnapfsError(f"chunk {digest.hex()}: cannot read {full}: {exc.strerror}") from None
        if not data:
            # An S3 datastore's cache keeps 0-byte files for evicted chunks (docs/formats.md §3).
            raise MissingChunkError(f"chunk {digest.hex()} is an empty placeholder in {self.root}")
        return data

    def list_chunks(self, prefix: str) -> set[bytes]:
        folder = os.path.join(self.root, ".chunks", prefix)
        try:
            return parse_chunk_names(os.listdir(folder))
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise SnapfsError(f"{folder}: cannot list: {exc.strerror}") from None
