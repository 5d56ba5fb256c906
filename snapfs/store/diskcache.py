"""DiskCache: a Backend wrapper that keeps fetched chunks and files on local disk across runs.

The second tier under the in-memory ChunkCache, for remote sources where a fetch costs latency
and money. Bounded by bytes with least-recently-used eviction (recency survives restarts through
the files' mtimes), and it never fills the disk: before a write it keeps `min_free_bytes` free on
the cache's filesystem, evicting its own entries first and otherwise not caching. Every record
carries the SHA-256 of its payload, checked on every read back, so a corrupt or truncated cache
file is dropped and fetched again instead of reaching a decoder. Writes are temp file + rename, so
a crash or a second process sharing the folder never sees half a record.

Files (indexes, manifests, owners) are cached keyed by path and remembered with the ETag the
source gave; a cached copy is used as is when the source's current listing shows the same ETag,
and otherwise revalidated with a conditional GET, so a replaced object is noticed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable

from snapfs.errors import SnapfsError
from snapfs.store.backend import Backend, DirListing
from snapfs.store.stats import SourceStats, build_report

log = logging.getLogger(__name__)

_MAGIC = b"SNAPFSC1"
_HEADER = struct.Struct("<8s32sI")  # magic, sha256(payload), length of the metadata JSON
DEFAULT_MIN_FREE = 1024 * 1024 * 1024


def _cache_key(source_name: str) -> str:
    # One folder per source: encrypted chunk digests are keyed, so two stores must not mix.
    return hashlib.sha256(source_name.encode()).hexdigest()[:24]


class DiskCache(Backend):
    """Wraps any Backend; `read_chunk` and (where the backend can say versions) `read_file` cached."""

    def __init__(
        self,
        backend: Backend,
        cache_dir: str | os.PathLike[str],
        max_bytes: int,
        *,
        min_free_bytes: int = DEFAULT_MIN_FREE,
    ) -> None:
        if max_bytes <= 0:
            raise SnapfsError(f"cache size must be positive, got {max_bytes}")
        self.backend = backend
        self.name = backend.name
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.root = os.path.join(os.path.abspath(os.fspath(cache_dir)), _cache_key(backend.name))
        self.stats_counters = getattr(backend, "stats_counters", None) or SourceStats()
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # relative record path -> bytes
        self._bytes = 0
        self._warned = False
        try:
            os.makedirs(os.path.join(self.root, "chunks"), mode=0o700, exist_ok=True)
            os.makedirs(os.path.join(self.root, "files"), mode=0o700, exist_ok=True)
            with open(os.path.join(self.root, "SOURCE"), "w") as f:
                f.write(backend.name + "\n")  # for a human wondering what a folder holds
        except OSError as exc:
            raise SnapfsError(f"cache folder {self.root}: cannot create: {exc.strerror}") from None
        self._load()

    # -- index of what is on disk ----------------------------------------------------------------

    def _load(self) -> None:
        found = []
        for sub in ("chunks", "files"):
            base = os.path.join(self.root, sub)
            for dirpath, _dirnames, filenames in os.walk(base):
                for filename in filenames:
                    full = os.path.join(dirpath, filename)
                    if filename.startswith(".tmp-"):
                        _unlink(full)  # a write cut short by a crash
                        continue
                    try:
                        st = os.stat(full)
                    except OSError:
                        continue
                    found.append((st.st_mtime_ns, os.path.relpath(full, self.root), st.st_size))
        found.sort()
        for _, rel, size in found:
            self._entries[rel] = size
            self._bytes += size
        self._evict_to(self.max_bytes)

    def _evict_to(self, limit: int) -> None:
        victims = []
        with self._lock:
            while self._bytes > limit and self._entries:
                rel, size = self._entries.popitem(last=False)
                self._bytes -= size
                victims.append(rel)
        for rel in victims:
            _unlink(os.path.join(self.root, rel))
            self.stats_counters.add("disk_cache_evictions")

    def _forget(self, rel: str) -> None:
        with self._lock:
            size = self._entries.pop(rel, None)
            if size is not None:
                self._bytes -= size
        _unlink(os.path.join(self.root, rel))

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def _free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # -- records ---------------------------------------------------------------------------------

    def _read_record(self, rel: str) -> tuple[dict, bytes] | None:
        """(metadata, payload) of a record that checks out; a bad one is deleted and None returned."""
        full = os.path.join(self.root, rel)
        try:
            with open(full, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._forget(rel)
            return None
        except OSError as exc:
            log.warning("cache %s: cannot read %s: %s", self.root, rel, exc.strerror)
            return None
        try:
            magic, digest, meta_len = _HEADER.unpack_from(raw)
            if magic != _MAGIC:
                raise ValueError("bad magic")
            start = _HEADER.size + meta_len
            meta = json.loads(raw[_HEADER.size : start])
            payload = raw[start:]
            if hashlib.sha256(payload).digest() != digest:
                raise ValueError("checksum mismatch")
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            log.warning("cache %s: dropping corrupt %s (%s)", self.root, rel, exc)
            self.stats_counters.add("disk_cache_corrupt")
            self._forget(rel)
            return None
        with self._lock:
            if rel in self._entries:
                self._entries.move_to_end(rel)
        try:
            os.utime(full)  # recency for the next process's LRU order
        except OSError:
            pass
        return meta, payload

    def _write_record(self, rel: str, payload: bytes, meta: dict) -> None:
        meta_raw = json.dumps(meta).encode()
        header = _HEADER.pack(_MAGIC, hashlib.sha256(payload).digest(), len(meta_raw))
        size = len(header) + len(meta_raw) + len(payload)
        if size > self.max_bytes:
            self.stats_counters.add("disk_cache_skipped_writes")
            return
        with self._lock:
            old = self._entries.pop(rel, None)
            if old is not None:
                self._bytes -= old
        self._evict_to(self.max_bytes - size)
        try:
            short = self.min_free_bytes + size - self._free_bytes()
            if short > 0:
                self._evict_to(max(self._bytes - short, 0))
                if self.min_free_bytes + size > self._free_bytes():
                    self.stats_counters.add("disk_cache_skipped_writes")
                    return
            full = os.path.join(self.root, rel)
            os.makedirs(os.path.dirname(full), mode=0o700, exist_ok=True)
            tmp = os.path.join(os.path.dirname(full), f".tmp-{os.getpid()}-{threading.get_ident()}")
            try:
                with open(tmp, "wb") as f:
                    f.write(header)
                    f.write(meta_raw)
                    f.write(payload)
                os.replace(tmp, full)
            except BaseException:
                _unlink(tmp)
                raise
        except OSError as exc:
            # A full or read-only disk makes the cache useless, never the read: serve from the source.
            self.stats_counters.add("disk_cache_skipped_writes")
            if not self._warned:
                self._warned = True
                log.warning(
                    "cache %s: cannot write (%s); continuing without it", self.root, exc.strerror
                )
            return
        with self._lock:
            self._entries[rel] = size
            self._bytes += size

    # -- Backend ---------------------------------------------------------------------------------

    def list_dir(self, path: str) -> DirListing:
        return self.backend.list_dir(path)

    def list_chunks(self, prefix: str) -> set[bytes]:
        return self.backend.list_chunks(prefix)  # what the store holds, not what is cached

    def read_chunk(self, digest: bytes) -> bytes:
        hexdigest = digest.hex()
        rel = os.path.join("chunks", hexdigest[:4], hexdigest)
        if rel in self._entries:
            record = self._read_record(rel)
            if record is not None:
                self.stats_counters.add("disk_cache_hits")
                self.stats_counters.add("disk_cache_bytes_read", len(record[1]))
                return record[1]
        self.stats_counters.add("disk_cache_misses")
        data = self.backend.read_chunk(digest)
        self._write_record(rel, data, {})
        return data

    def read_file(self, path: str) -> bytes:
        conditional = getattr(self.backend, "read_file_conditional", None)
        if conditional is None:
            return self.backend.read_file(path)  # no versions to key on: a cache could go stale
        path = path.strip("/")
        rel = os.path.join("files", hashlib.sha256(path.encode()).hexdigest())
        record = self._read_record(rel) if rel in self._entries else None
        if record is not None:
            meta, payload = record
            if meta.get("path") == path and meta.get("etag"):
                if self.backend.known_version(path) == meta["etag"]:
                    self.stats_counters.add("disk_cache_hits")
                    self.stats_counters.add("disk_cache_bytes_read", len(payload))
                    return payload
                data, etag = conditional(path, meta["etag"])
                if data is None:
                    self.stats_counters.add("disk_cache_hits")
                    self.stats_counters.add("disk_cache_bytes_read", len(payload))
                    return payload
                self.stats_counters.add("disk_cache_misses")
                self._write_record(rel, data, {"path": path, "etag": etag})
                return data
        self.stats_counters.add("disk_cache_misses")
        data, etag = conditional(path, None)
        assert data is not None
        if etag:
            self._write_record(rel, data, {"path": path, "etag": etag})
        return data

    # -- pass-through extras ---------------------------------------------------------------------

    def prefetch(self, digests: Iterable[bytes]) -> None:
        prefetch = getattr(self.backend, "prefetch", None)
        if prefetch is None:
            return
        wanted = []
        for digest in digests:
            hexdigest = digest.hex()
            if os.path.join("chunks", hexdigest[:4], hexdigest) not in self._entries:
                wanted.append(digest)
        prefetch(wanted)

    def refresh(self) -> None:
        refresh = getattr(self.backend, "refresh", None)
        if refresh is not None:
            refresh()

    @property
    def memory_cache(self):
        return getattr(self.backend, "memory_cache", None)

    @memory_cache.setter
    def memory_cache(self, cache) -> None:
        if hasattr(self.backend, "memory_cache"):
            self.backend.memory_cache = cache

    def stats(self) -> dict:
        inner = getattr(self.backend, "stats", None)
        if inner is not None:
            report = inner()
        else:
            cache = self.memory_cache
            report = build_report(
                self.stats_counters.snapshot(),
                memory_hits=getattr(cache, "hits", 0),
                memory_misses=getattr(cache, "misses", 0),
            )
        report["disk_cache_bytes"] = self._bytes
        report["disk_cache_max_bytes"] = self.max_bytes
        return report

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
