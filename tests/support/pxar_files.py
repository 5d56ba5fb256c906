"""A pxar archive in a plain file, opened again by a restore's worker processes.

restore/parallel.py hands each worker an `ArchiveOpener`; the command line's opens a snapshot's
archive in a datastore, this one a `.pxar` file, so the tests can restore archives they craft.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapfs.format.source import FileSource
from snapfs.pxar.accessor import Accessor


@dataclass(frozen=True)
class PxarFile:
    path: str
    key: bytes | None = None

    def open(self) -> Accessor:
        return Accessor(FileSource(self.path), name=self.path.rsplit("/", 1)[-1])
