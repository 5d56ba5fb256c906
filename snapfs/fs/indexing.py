"""When the mount indexes a pxar archive, and where it keeps the index. No FUSE here.

An archive is indexed by one background walk (snapfs.index.archive); until that finishes its
directories are decoded as they are asked for (a listing the walk is about to reach waits for it
rather than decode the same chunks twice: `IndexBuild.wait_for`). The walk starts once
someone walks the archive, not at an `ls` or two: the walk costs about one cold `find` of CPU
(and, over S3, downloads the archive), which would slow every other read of the mount meanwhile:
- after WALK_DIRS of its directories were listed, for an archive up to LARGE_ARCHIVE bytes (a
  split archive counts only its metadata stream, which is all the walk reads);
- after LARGE_WALK_DIRS for a larger one: browsing a huge archive by hand must not download it;
- at the first hard link met in an archive up to LARGE_ARCHIVE bytes: pxar records a link only
  at the link, so st_nlink of every member of its group is known only from a whole walk.

Indexes of unencrypted archives are kept in `directory` (default: the user's cache directory)
under their index checksum, so every later mount of the same archive starts indexed; those of
encrypted archives stay in memory for the mount's life (names must not reach the disk).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from snapfs.errors import SnapfsError
from snapfs.index.archive import (
    ArchiveIndex,
    BuildCancelled,
    BuildProgress,
    index_file_name,
    remove_other_schemas,
)
from snapfs.pxar.accessor import Accessor
from snapfs.store.readahead import ForwardReader, Readahead
from snapfs.store.stream import IndexStream

if TYPE_CHECKING:
    from snapfs.fs.archive import Archive
    from snapfs.pxar.entry import Entry

log = logging.getLogger("snapfs.fs")

WALK_DIRS = 16
LARGE_ARCHIVE = 4 << 30
LARGE_WALK_DIRS = 256
#: A listing the indexing walk will reach within this many bytes waits for it (the walk hands
#: over each directory as it completes) rather than decode the same chunks on another thread.
WAIT_AHEAD_BYTES = 64 << 20
#: ... but never longer than this; then it decodes for itself.
MAX_WAIT = 5.0
#: Threads decoding ahead of the indexing walk (zstd, AES-GCM and SHA-256 release the GIL).
INDEX_DECODERS = 2


def default_index_dir(cache_dir: str | None = None) -> str:
    """`<--cache-dir>/index`, else `$XDG_CACHE_HOME/snapfs/index` (`~/.cache/snapfs/index`)."""
    if cache_dir:
        return os.path.join(os.path.abspath(cache_dir), "index")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "snapfs", "index")


def build_index(
    accessor: Accessor, path: str | None, progress: BuildProgress | None = None
) -> ArchiveIndex:
    """The indexing walk, in the calling thread: the archive's metadata read front to back with
    INDEX_DECODERS threads decoding the chunks ahead of it, the index kept at `path`."""
    readahead = Readahead(INDEX_DECODERS, "snapfs-index-decode")
    try:
        # Its own Accessor over the same (thread-safe) stream: no lock shared with requests;
        # the payload stream of a split archive is not needed for metadata.
        walker = Accessor(ForwardReader(accessor.archive, readahead), name=accessor.name)
        return ArchiveIndex.build(walker, path, progress)
    finally:
        readahead.close()


class ArchiveIndexer:
    """The mount's policy for archive indexes: `directory` None keeps them in memory only;
    `enabled` False never builds one (every listing decodes, as without this module)."""

    def __init__(self, directory: str | None, *, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        self._lock = threading.Lock()
        self._running: dict[IndexBuild, threading.Thread] = {}
        self.counts = {"loaded": 0, "built": 0, "failed": 0}

    def summary(self) -> str:
        """One line for `.snapfs/stats`."""
        with self._lock:
            counts = dict(self.counts, building=len(self._running))
        where = self.directory or "memory only"
        if not self.enabled:
            return "archive indexes: off"
        return (
            "archive indexes: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" ({where})"
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the walks still running (the mount is ending) and wait for them a little; a
        walk stopped leaves nothing behind, the next mount walks again."""
        with self._lock:
            running = list(self._running.items())
        for build, _ in running:
            build.cancelled = True
        for _, thread in running:
            thread.join(timeout)

    def _path(self, accessor: Accessor, encrypted: bool) -> str | None:
        source = accessor.archive
        if self.directory is None or encrypted or not isinstance(source, IndexStream):
            return None
        return os.path.join(self.directory, index_file_name(source.index.index_csum))

    def load(self, accessor: Accessor, encrypted: bool) -> ArchiveIndex | None:
        """The index an earlier mount kept for this archive, if any (cheap: no decoding)."""
        path = self._path(accessor, encrypted) if self.enabled else None
        index = None if path is None else ArchiveIndex.load(path, name=accessor.name)
        if index is not None:
            with self._lock:
                self.counts["loaded"] += 1
        return index

    def should_build(
        self, accessor: Accessor, dirs_listed: int, *, hard_link_seen: bool = False
    ) -> bool:
        large = accessor.archive.size > LARGE_ARCHIVE
        if not self.enabled:
            return False
        return (hard_link_seen and not large) or dirs_listed >= (
            LARGE_WALK_DIRS if large else WALK_DIRS
        )

    def build_in_background(self, archive: Archive, encrypted: bool) -> IndexBuild:
        """Walk the archive in a thread; `archive.index` is set when the walk is done."""
        build = IndexBuild(archive)
        thread = threading.Thread(
            target=self._build,
            args=(archive, encrypted, build),
            name="snapfs-index",
            daemon=True,
        )
        with self._lock:
            self._running[build] = thread
        thread.start()
        return build

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1

    def _build(self, archive: Archive, encrypted: bool, build: IndexBuild) -> None:
        try:
            index = self._walk(archive, encrypted, build)
            if index is not None:
                archive.use_index(index)  # before `finish`: whoever waited then sees it
        finally:
            with self._lock:
                self._running.pop(build, None)
            build.finish()

    def _walk(self, archive: Archive, encrypted: bool, build: IndexBuild) -> ArchiveIndex | None:
        accessor = archive.accessor
        stream = accessor.archive
        if not isinstance(stream, IndexStream):
            return None
        start = time.perf_counter()
        try:
            index = build_index(accessor, self._path(accessor, encrypted), build)
        except BuildCancelled:
            return None
        except (SnapfsError, OSError, sqlite3.Error) as exc:
            self._count("failed")
            log.warning(
                "%s: not indexed, its directories are decoded as they are listed: %s",
                archive.node.path,
                exc,
            )
            return None
        self._count("built")
        log.info(
            "%s: indexed %d entries in %.1f s",
            archive.node.path,
            index.entries,
            time.perf_counter() - start,
        )
        if self.directory is not None and not encrypted:
            remove_other_schemas(self.directory, stream.index.index_csum)
        return index


class IndexBuild(BuildProgress):
    """One archive's indexing walk, as the mount's requests see it: each directory it completes
    goes into the listing cache at once, and a listing just ahead of it can wait for it."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._changed = threading.Condition()
        self._finished = False

    def directory_done(self, directory: Entry, listing: tuple[tuple[bytes, Entry], ...]) -> None:
        self._archive.keep_listing(directory, listing)
        with self._changed:
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def wait_finished(self, timeout: float) -> bool:
        """Wait for the walk to end (built or failed); False if it is still running."""
        with self._changed:
            return self._changed.wait_for(lambda: self._finished, timeout)

    def wait_for(self, directory: Entry) -> None:
        """Return once the walk has handed over `directory`, has ended, or is not about to reach
        it (more than WAIT_AHEAD_BYTES to go, or MAX_WAIT passed): the caller then looks in the
        listing cache and decodes for itself if it is not there."""
        listings = self._archive.model.listings
        key = (self._archive.id, directory.entry_offset)
        deadline = time.monotonic() + MAX_WAIT
        with self._changed:
            while not self._finished and listings.get(key) is None:
                remaining = deadline - time.monotonic()
                if directory.entry_end - self.position > WAIT_AHEAD_BYTES or remaining <= 0:
                    return
                self._changed.wait(remaining)
