"""`.snapfs/`: the mount's own files. PBS names never start with '.', so it cannot collide; it
is found by name in the root but not listed (like ZFS's `.zfs`), so `find` and rsync skip it."""

from __future__ import annotations

import time

from snapfs.fs.content import BytesContent
from snapfs.fs.node import Attr, DatastoreDir, DatastoreFile, DatastoreNode

CONTROL_DIR = b".snapfs"


class ControlDirNode(DatastoreDir):
    """`.snapfs/` itself."""

    __slots__ = ()

    def _load(self) -> dict[bytes, DatastoreNode]:
        return {b"stats": StatsNode(self.model, self._child_path("stats"), self.mtime_ns)}


class StatsNode(DatastoreFile):
    """`.snapfs/stats`: the statistics as text, rendered anew on every open and stat."""

    __slots__ = ()
    live = True

    def render(self) -> bytes:
        return self.model.stats_text().encode()

    def attr(self, load: bool = True) -> Attr:
        size = len(self.render()) if load else 0
        model = self.model
        return Attr(self.ino, self.mode, 1, model.uid, model.gid, size, 0, time.time_ns(), False)

    def open(self) -> BytesContent:
        return BytesContent(self.render())
