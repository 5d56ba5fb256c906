"""Index archives shown as files (fidx images, plain didx streams), and an image's partitions.

`drive-scsi0.img.parts/` holds `part<N>` per partition of the image, each a window on the image's
stream, so a partition is readable without `losetup -P`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from snapfs.errors import CorruptDataError
from snapfs.format.manifest import ManifestFile
from snapfs.format.partitions import Partition, read_partition_table
from snapfs.fs.content import Content
from snapfs.fs.node import Attr, DatastoreDir, DatastoreFile, DatastoreNode
from snapfs.store.stream import IndexStream

if TYPE_CHECKING:
    from snapfs.fs.model import FsModel
    from snapfs.fs.snapshot import SnapshotNode


class StreamNode(DatastoreFile):
    """An image (fidx) or other non-pxar didx archive: its size is in the manifest."""

    __slots__ = ("snapshot_node", "file", "_stream", "_lock")

    def __init__(
        self, model: FsModel, path: str, snapshot_node: SnapshotNode, file: ManifestFile
    ) -> None:
        super().__init__(model, path, snapshot_node.mtime_ns)
        self.snapshot_node = snapshot_node
        self.file = file
        self._stream: IndexStream | None = None
        self._lock = threading.Lock()

    def attr(self, load: bool = True) -> Attr:
        return self.attr_of_size(self.file.size)

    def stream(self) -> IndexStream:
        """Blocking on first call: reads and checks the index file."""
        if self._stream is None:
            with self._lock:
                if self._stream is None:
                    state = self.snapshot_node.state()
                    state.require_key(self.file)
                    self._stream = state.reader.stream(self.file.filename)
        return self._stream

    def open(self) -> Content:
        stream = self.stream()
        return Content(stream, 0, stream.size, self.path)


class PartsNode(DatastoreDir):
    """`drive-scsi0.img.parts/`: `part<N>` per partition, the table read on first use.

    A damaged table is logged and shows an empty directory: the image itself stays readable
    (and `losetup -P` may still make sense of it). Errors reading the image (no key, missing
    chunk) fail the listing instead, like the image would.
    """

    __slots__ = ("image",)

    def __init__(self, model: FsModel, path: str, image: StreamNode) -> None:
        super().__init__(model, path, image.mtime_ns)
        self.image = image

    def _load(self) -> dict[bytes, DatastoreNode]:
        stream = self.image.stream()
        try:
            table = read_partition_table(stream, name=self.image.path)
        except CorruptDataError as exc:
            self.model.report(exc, self.path)
            return {}
        if table is None:
            return {}
        return {
            f"part{p.number}".encode(): PartitionNode(
                self.model, self._child_path(f"part{p.number}"), self.image, p
            )
            for p in sorted(table.partitions, key=lambda p: p.number)
        }


class PartitionNode(DatastoreFile):
    """One partition of an image: a window [start, start+size) on the image's stream."""

    __slots__ = ("image", "partition")

    def __init__(self, model: FsModel, path: str, image: StreamNode, partition: Partition) -> None:
        super().__init__(model, path, image.mtime_ns)
        self.image = image
        self.partition = partition

    def attr(self, load: bool = True) -> Attr:
        return self.attr_of_size(self.partition.size)

    def open(self) -> Content:
        p = self.partition
        return Content(self.image.stream(), p.start, p.size, self.path)
