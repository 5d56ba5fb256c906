"""`.snapfs/`: the mount's own files. PBS names never start with '.', so it cannot collide; it
is found by name in the root but not listed (like ZFS's `.zfs`), so `find` and rsync skip it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from snapfs.fs.content import BytesContent
from snapfs.fs.node import Attr, DatastoreDir, DatastoreFile, DatastoreNode

if TYPE_CHECKING:
    from snapfs.fs.model import FsModel

CONTROL_DIR = b".snapfs"


class ControlDirNode(DatastoreDir):
    """`.snapfs/` itself."""

    __slots__ = ()

    def _load(self) -> dict[bytes, DatastoreNode]:
        return {b"stats": StatsNode(self.model, self._child_path("stats"), self.mtime_ns)}


class StatsNode(DatastoreFile):
    """`.snapfs/stats`: the statistics as text, rendered anew on every stat.

    A read shows what the last stat measured: the kernel reads no further than the size that
    stat gave (the kernel stats the file before it opens or reads it, as its attributes are
    never cached), and its new mtime makes the kernel drop the pages it kept of the last one.
    """

    __slots__ = ("_shown",)
    live = True

    def __init__(self, model: FsModel, path: str, mtime_ns: int) -> None:
        super().__init__(model, path, mtime_ns)
        self._shown: bytes | None = None

    def render(self) -> bytes:
        self._shown = self.model.stats_text().encode()
        return self._shown

    def attr(self, load: bool = True) -> Attr:
        size = len(self.render()) if load else 0
        model = self.model
        return Attr(self.ino, self.mode, 1, model.uid, model.gid, size, 0, time.time_ns(), False)

    def open(self) -> BytesContent:
        return BytesContent(self.render() if self._shown is None else self._shown)
