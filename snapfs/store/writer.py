"""Writing datastores, for `snapfs backup`, the demo and the tests. Never used by read paths.

Kept apart from the Backend on purpose: mount, restore and verify hold a Backend, which has no way
to write. Files are written as PBS writes them: chunks create-only under `.chunks/`, snapshot files
through a temporary name and a rename, the manifest last (its presence marks a finished snapshot).
"""

from __future__ import annotations

import os
import tempfile

from snapfs.store.backend import chunk_path
from snapfs.store.datastore import Group, Snapshot

OWNER = "root@pam"


class DatastoreWriter:
    """Creates a datastore directory, or adds to one."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(os.path.join(self.root, ".chunks"), exist_ok=True)
        lock = os.path.join(self.root, ".lock")
        if not os.path.exists(lock):
            open(lock, "a").close()
        self.chunks_written = 0
        self.chunks_reused = 0

    def insert_chunk(self, digest: bytes, raw: bytes) -> bool:
        """Store a chunk unless an equal one is there; True if it was written."""
        path = os.path.join(self.root, chunk_path(digest))
        try:
            if os.path.getsize(path) > 0:
                self.chunks_reused += 1
                return False
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._write_atomic(path, raw)
        self.chunks_written += 1
        return True

    def create_group(self, group: Group, owner: str = OWNER) -> None:
        path = os.path.join(self.root, group.path)
        os.makedirs(path, exist_ok=True)
        owner_file = os.path.join(path, "owner")
        if not os.path.exists(owner_file):
            self._write_atomic(owner_file, f"{owner}\n".encode())

    def write_snapshot_file(self, snapshot: Snapshot, filename: str, data: bytes) -> None:
        self.create_group(snapshot.group)
        folder = os.path.join(self.root, snapshot.path)
        os.makedirs(folder, exist_ok=True)
        self._write_atomic(os.path.join(folder, filename), data)

    @staticmethod
    def _write_atomic(path: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
