"""ChunkReader: digest in, verified plaintext out, through the shared ChunkCache.

fetch (Backend) -> decode + verify (format.blob; for a waiting reader, on two cores when it runs
alone: store.spare_core) -> cache. Exactly one fetch per digest is in
flight however many threads want it (SingleFlight): latecomers wait for the first fetch's result
instead of issuing their own, which matters when 16 readers or a readahead hit the same chunk, and
much more when each fetch is an S3 GET.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Executor

from snapfs.errors import SnapfsError
from snapfs.format.blob import decode_chunk
from snapfs.format.crypt import CryptConfig
from snapfs.store.backend import Backend
from snapfs.store.cache import ChunkCache
from snapfs.store.singleflight import SingleFlight
from snapfs.store.spare_core import SpareCore


class ChunkReader:
    def __init__(
        self,
        backend: Backend,
        crypt: CryptConfig | None = None,
        cache: ChunkCache | None = None,
        *,
        spare: SpareCore | None = None,
    ) -> None:
        self.backend = backend
        self.crypt = crypt
        self.cache = cache if cache is not None else ChunkCache()
        # For readers that wait on each chunk (a mount, NBD): a decode that runs alone borrows
        # the spare core. Restore and verify keep the cores busy on their own.
        self.spare = spare
        self._flights: SingleFlight[bytes, bytes] = SingleFlight()
        self.fetches = 0

    def read_chunk(self, digest: bytes) -> bytes:
        """The decoded, digest-verified bytes of one chunk."""
        data = self.cache.get(digest)
        if data is not None:
            return data
        return self._flights.run(digest, lambda: self._fetch(digest))

    @property
    def fetches_ahead(self) -> bool:
        """Whether the backend fetches named chunks ahead (S3: a round trip per chunk to hide)."""
        return hasattr(self.backend, "prefetch")

    def prefetch(self, digests: list[bytes]) -> None:
        """Tell a backend that can fetch ahead (S3) which chunks a reader will want next.

        A hint only: local disks gain nothing from it, so a backend without `prefetch` ignores it.
        """
        if not self.fetches_ahead:
            return
        wanted = [d for d in digests if d not in self.cache]
        if wanted:
            self.backend.prefetch(wanted)  # type: ignore[attr-defined]

    def _fetch(self, digest: bytes) -> bytes:
        """Fetch, decode and cache one chunk; its result is published only once it is cached."""
        self.fetches += 1
        raw = self.backend.read_chunk(digest)
        try:
            with self._helper() as helper:
                data = decode_chunk(
                    raw, digest, self.crypt, name=f"chunk {digest.hex()}", helper=helper
                )
        except SnapfsError:
            raise
        except Exception as exc:  # a decoder bug must still name the chunk, never pass bytes on
            raise SnapfsError(f"chunk {digest.hex()}: cannot decode: {exc}") from exc
        self.cache.put(digest, data)
        return data

    def _helper(self) -> contextlib.AbstractContextManager[Executor | None]:
        return self.spare.lent() if self.spare is not None else contextlib.nullcontext()
