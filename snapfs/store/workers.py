"""How a worker process opens the datastore its coordinator names, with no secret in the task.

Work that runs elsewhere (a local worker process, a Dask worker on another host) is told *which*
store and key to use, never the credentials or the key itself: a `WorkerStore` names the SOURCE
and its options, where the key file is and which key it must be. The worker opens the store with
its own S3 credentials (environment, AWS profile) and unlocks its own copy of the key file (its
password from the worker's SNAPFS_KEY_PASSWORD). A local worker process may be handed the key the
coordinator unlocked over the pipe between the two (`give_key`), so a password typed once is not
asked for again. The store is opened once per worker process and kept for the tasks that follow.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from snapfs.errors import WrongKeyError
from snapfs.format.crypt import CryptConfig, format_fingerprint
from snapfs.keysource import KeyOptions
from snapfs.store.datastore import Datastore
from snapfs.store.sources import SourceOptions


@dataclass(frozen=True)
class WorkerStore:
    """Which store and key a worker uses: no password, no S3 key, no key material."""

    source: SourceOptions
    key: KeyOptions | None = None
    fingerprint: bytes | None = None  # of the key the coordinator uses: the worker's must match

    def open(self) -> tuple[Datastore, CryptConfig | None]:
        """The store and key, opened on the first call in this process."""
        with _lock:
            found = _opened.get(self)
            if found is not None:
                return found
            datastore = self.source.open()
            crypt = None
            if _given_key is not None:
                crypt = CryptConfig(_given_key)
            elif self.key is not None:
                crypt = self.key.crypt_config()
            expected = self.fingerprint
            if crypt is not None and expected is not None and crypt.fingerprint != expected:
                raise WrongKeyError(
                    f"this worker's key {format_fingerprint(crypt.fingerprint)} is not the "
                    f"key the coordinator uses ({format_fingerprint(expected)})"
                )
            _opened[self] = (datastore, crypt)
            return datastore, crypt

    def adopt(self, datastore: Datastore, crypt: CryptConfig | None) -> None:
        """Work run in the coordinator's own process uses its open store, key and counters."""
        with _lock:
            _opened[self] = (datastore, crypt)


_lock = threading.Lock()
_opened: dict[WorkerStore, tuple[Datastore, CryptConfig | None]] = {}
_given_key: bytes | None = None


def give_key(key: bytes | None) -> None:
    """A local worker process's initializer: the key its parent unlocked (None: no key)."""
    global _given_key
    _given_key = key
