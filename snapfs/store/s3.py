"""S3Backend: a PBS 4.x datastore kept in an S3 bucket, read with GET and LIST only.

PBS stores chunks at `<store>/.chunks/<4hex>/<digest>` and every other file of the datastore at
`<store>/.cnt/<local path>` (docs/formats.md §3), so the local-form paths the Datastore model asks for map
one to one onto keys under `.cnt/`. Folders do not exist in S3; they are the common prefixes of a
ListObjectsV2 call with Delimiter="/" (a namespace keeps a `.namespace` object so it exists even
when empty).

Listings are cached (for the life of the backend, or `list_ttl` seconds); chunk GETs are
single-flight per digest and can be prefetched in parallel for sequential readers. The requests
themselves, read-only and retried, are S3Requests' (s3_requests.py).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from functools import partial

from snapfs.errors import NotFoundError, SnapfsError, UsageError
from snapfs.store.backend import Backend, DirListing, chunk_path, parse_chunk_names
from snapfs.store.readahead import Readahead
from snapfs.store.s3_requests import S3Requests, S3Settings
from snapfs.store.singleflight import SingleFlight
from snapfs.store.stats import build_report

__all__ = ["S3Backend", "parse_s3_source"]

_BACKUP_TYPES = ("vm", "ct", "host")


def parse_s3_source(source: str) -> tuple[str, str]:
    """`s3://bucket/store` -> ('bucket', 'store'); the store prefix is required (PBS always has one)."""
    if not source.startswith("s3://"):
        raise UsageError(f"not an S3 source: {source!r} (expected s3://BUCKET/STORE)")
    bucket, _, store = source[len("s3://") :].partition("/")
    store = store.strip("/")
    if not bucket or not store:
        raise UsageError(f"invalid S3 source {source!r} (expected s3://BUCKET/STORE)")
    if any(part in ("", ".", "..") for part in store.split("/")):
        raise UsageError(f"invalid S3 source {source!r}: bad store prefix {store!r}")
    return bucket, store


class S3Backend(S3Requests, Backend):
    """A Backend over `s3://bucket/store`."""

    def __init__(
        self,
        bucket: str,
        store: str,
        settings: S3Settings | None = None,
        *,
        client=None,
        check: bool = True,
    ) -> None:
        super().__init__(bucket, store, settings, client)
        self._listings: dict[str, tuple[float, DirListing]] = {}
        self._etags: dict[str, str] = {}
        self._listed: dict[str, tuple[str, int]] = {}  # (etag, size) from listings only
        self._list_lock = threading.Lock()
        self._flights: SingleFlight[bytes, bytes] = SingleFlight()
        self._ready: OrderedDict[bytes, bytes] = OrderedDict()
        self._ready_bytes = 0
        self._chunk_lock = threading.Lock()
        # Readers join the GETs it starts (one table of GETs in flight), never start their own.
        self._fetch_ahead = Readahead(
            max(self.settings.connections, 1), "snapfs-s3", flights=self._flights
        )
        self.memory_cache = None  # set by whoever owns the ChunkCache, for stats()
        if check:
            self.check_store()

    def _key(self, path: str) -> str:
        return "/".join((self.store, ".cnt", *self._parts(path)))

    # -- GET -------------------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        data, _ = self.read_file_conditional(path, None)
        assert data is not None
        return data

    def read_file_conditional(self, path: str, etag: str | None) -> tuple[bytes | None, str]:
        """(bytes, etag) of a file, or (None, etag) when it still has `etag` (HTTP 304)."""
        key = self._key(path)
        with self._list_lock:
            listed = self._listed.get(path.strip("/"))
        data, new_etag = self._get(
            key,
            f"file {path}",
            lambda: NotFoundError(f"{self.name}: no such file {path}"),
            if_none_match=etag,
            listed=listed,
        )
        if new_etag:
            with self._list_lock:
                self._etags[path.strip("/")] = new_etag
        return data, new_etag

    def known_version(self, path: str) -> str | None:
        """The ETag a cached, fresh listing gives for `path`, without any request; else None."""
        path = path.strip("/")
        parent = path.rpartition("/")[0]
        with self._list_lock:
            entry = self._listings.get(parent)
            if entry is None or not self._fresh(entry[0]):
                return None
            return self._etags.get(path)

    def read_chunk(self, digest: bytes) -> bytes:
        data = self._take_parked(digest)
        if data is not None:
            return data
        joined = True

        def fetch() -> bytes:
            nonlocal joined
            joined = False
            # A fetch-ahead may have parked it since the look above.
            parked = self._take_parked(digest)
            return parked if parked is not None else self._get_chunk(digest)

        data = self._flights.run(digest, fetch)
        if joined:  # a fetch-ahead: its parked copy is not needed again
            self._take_parked(digest)
        return data

    def _get_chunk(self, digest: bytes) -> bytes:
        data, _ = self._get(
            f"{self.store}/{chunk_path(digest)}",
            f"chunk {digest.hex()}",
            lambda: self._missing_chunk(digest),
        )
        return data

    def _get_and_park(self, digest: bytes) -> bytes:
        """GET a chunk for a reader to come and park it until that reader takes it.

        Parked before the result is published, so a reader that comes later finds it parked and
        one that waited on the fetch removes it: nothing lingers unread.
        """
        with self._chunk_lock:
            data = self._ready.get(digest)
        if data is not None:
            return data  # parked by a fetch-ahead that ended since prefetch looked
        data = self._get_chunk(digest)
        with self._chunk_lock:  # not parked meanwhile: no other fetch of it runs (SingleFlight)
            self._ready[digest] = data
            self._ready_bytes += len(data)
            while self._ready_bytes > self.settings.prefetch_bytes and self._ready:
                _, dropped = self._ready.popitem(last=False)
                self._ready_bytes -= len(dropped)
        return data

    def _take_parked(self, digest: bytes) -> bytes | None:
        with self._chunk_lock:
            data = self._ready.pop(digest, None)
            if data is not None:
                self._ready_bytes -= len(data)
            return data

    def prefetch(self, digests: Iterable[bytes]) -> None:
        """Start GETs for chunks a sequential reader will want next; read_chunk picks them up.

        At most `connections` GETs run at once and at most `prefetch_bytes` of fetched but unread
        chunks are kept (oldest dropped), so a reader that wanders off costs little.
        """
        for digest in digests:
            with self._chunk_lock:
                if digest in self._ready:
                    continue
            self._fetch_ahead.start(digest, partial(self._get_and_park, digest))

    # -- LIST ------------------------------------------------------------------------------------

    def _fresh(self, stamp: float) -> bool:
        ttl = self.settings.list_ttl
        return ttl is None or time.monotonic() - stamp < ttl

    def list_dir(self, path: str) -> DirListing:
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == ".chunks":
            return DirListing()  # 65536 prefixes of billions of objects: never listed
        path = "/".join(parts)
        with self._list_lock:
            entry = self._listings.get(path)
            if entry is not None and self._fresh(entry[0]):
                return entry[1]
        if _is_group_path(parts):
            self._list_tree(path)
        else:
            self._list_one(path)
        with self._list_lock:
            return self._listings[path][1]

    def list_chunks(self, prefix: str) -> set[bytes]:
        key_prefix = f"{self.store}/.chunks/{prefix}/"
        _, objects = self._list(key_prefix, None, f"listing chunks {prefix}")
        return parse_chunk_names(key[len(key_prefix) :] for key, *_ in objects)

    def _list_one(self, path: str) -> None:
        prefix = self._key(path) + "/"
        prefixes, objects = self._list(prefix, "/", f"listing {path or '/'}")
        names = (p[len(prefix) :].removesuffix("/") for p in prefixes if p.startswith(prefix))
        dirs = sorted({name for name in names if _is_name(name)})
        files: list[str] = []
        stamp = time.monotonic()
        with self._list_lock:
            for key, etag, size in objects:
                name = key[len(prefix) :]
                if key.startswith(prefix) and _is_name(name):
                    files.append(name)
                    rel = f"{path}/{name}" if path else name
                    self._etags[rel] = etag
                    self._listed[rel] = (etag, size)
            self._listings[path] = (stamp, DirListing(dirs, sorted(files)))

    def _list_tree(self, path: str) -> None:
        """One recursive listing for a whole group: its snapshot folders are then free to list."""
        prefix = self._key(path) + "/"
        _, objects = self._list(prefix, None, f"listing {path}")
        dirs: dict[str, set[str]] = {path: set()}
        files: dict[str, list[str]] = {path: []}
        etags: dict[str, str] = {}
        listed: dict[str, tuple[str, int]] = {}
        for key, etag, size in objects:
            rel = [p for p in key[len(prefix) :].split("/")]
            is_marker = rel[-1] == ""  # a "folder/" object some tools create
            names = [p for p in rel if p]
            if not names or not key.startswith(prefix) or not all(map(_is_name, names)):
                continue
            here = path
            for name in names[:-1] if not is_marker else names:
                dirs.setdefault(here, set()).add(name)
                files.setdefault(here, [])
                here = f"{here}/{name}"
                dirs.setdefault(here, set())
                files.setdefault(here, [])
            if not is_marker:
                files[here].append(names[-1])
                etags[f"{here}/{names[-1]}"] = etag
                listed[f"{here}/{names[-1]}"] = (etag, size)
        stamp = time.monotonic()
        with self._list_lock:
            for folder, sub in dirs.items():
                self._listings[folder] = (stamp, DirListing(sorted(sub), sorted(files[folder])))
            self._etags.update(etags)
            self._listed.update(listed)

    def refresh(self) -> None:
        """Forget every listing: the next list_dir asks the bucket again (new snapshots appear)."""
        with self._list_lock:
            self._listings.clear()
            self._etags.clear()
            self._listed.clear()

    def check_store(self) -> None:
        """Fail early, in one line, on a wrong endpoint, bucket, credentials, region or store."""
        prefixes, objects = self._list(f"{self.store}/", "/", "checking the datastore prefix")
        if prefixes or objects:
            return
        stores: list[str] = []
        try:
            top, _ = self._list("", "/", "listing the bucket")
            stores = [p.rstrip("/") for p in top][:10]
        except SnapfsError:
            pass
        hint = (
            f" (prefixes in the bucket: {', '.join(stores)})"
            if stores
            else " (the bucket is empty)"
        )
        raise NotFoundError(f"{self.name}: no such datastore: no objects under {self.store}/{hint}")

    # -- statistics ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters, hit ratios and estimated cost (see snapfs.store.stats.build_report)."""
        cache = self.memory_cache
        return build_report(
            self.stats_counters.snapshot(),
            memory_hits=getattr(cache, "hits", 0),
            memory_misses=getattr(cache, "misses", 0),
            provider=self.settings.provider,
        )

    def close(self) -> None:
        self._fetch_ahead.close()


def _is_name(name: str) -> bool:
    """Whether a piece of a key can be a file or folder name: an endpoint that answers a
    listing with keys outside the prefix asked for, or with `..` in them, gets them ignored."""
    return name not in ("", ".", "..") and "/" not in name


def _is_group_path(parts: list[str]) -> bool:
    """`[ns/X/...]<type>/<id>`: the folder of one backup group."""
    i = 0
    while i + 1 < len(parts) and parts[i] == "ns":
        i += 2
    rest = parts[i:]
    return len(rest) == 2 and rest[0] in _BACKUP_TYPES
