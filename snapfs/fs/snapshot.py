"""A snapshot as a directory, and its small files decoded whole (blobs, the manifest).

What a snapshot's manifest lists becomes its children: fidx (and plain didx) archives as files
(`image.py`), each image's partitions under `<image>.parts/`, blobs decoded, `index.json` the
manifest text, and pxar archives (v1, or split .mpxar+.ppxar) as directories (`archive.py`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapfs.errors import CryptKeyError, SnapfsError
from snapfs.format.archive_names import (
    MANIFEST_NAME,
    ArchiveKind,
    PxarNames,
    archive_kind,
    short_name,
)
from snapfs.format.manifest import ManifestFile
from snapfs.fs.archive import ArchiveNode
from snapfs.fs.content import BytesContent
from snapfs.fs.image import PartsNode, StreamNode
from snapfs.fs.node import Attr, DatastoreDir, DatastoreFile, DatastoreNode
from snapfs.store.datastore import Snapshot
from snapfs.views.archives import SnapshotReader

if TYPE_CHECKING:
    from snapfs.fs.model import FsModel


class SnapshotNode(DatastoreDir):
    """A snapshot: its manifest is read when the directory is first listed or looked into."""

    __slots__ = ("snapshot", "_state", "_state_lock")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, snapshot: Snapshot) -> None:
        super().__init__(model, path, snapshot.time * 1_000_000_000)
        self.snapshot = snapshot
        self._state: SnapshotState | None = None
        self._state_lock = threading.Lock()

    def _stale(self) -> bool:
        # A finished snapshot never changes; an incomplete one (empty) may be finished since.
        return not self._children and super()._stale()

    def _load(self) -> dict[bytes, DatastoreNode]:
        ds = self.model.datastore
        if MANIFEST_NAME not in ds.backend.list_dir(self.snapshot.path).files:
            return {}  # incomplete (being written or aborted): shown, but empty
        manifest = ds.manifest(self.snapshot)
        out: dict[bytes, DatastoreNode] = {
            b"index.json": ManifestNode(self.model, self._child_path("index.json"), self)
        }
        names = {f.filename for f in manifest.files}
        images: list[StreamNode] = []
        for f in manifest.files:
            kind = archive_kind(f.filename)
            shown = short_name(f.filename)
            node: DatastoreNode | None = None
            if kind is ArchiveKind.BLOB:
                node = BlobNode(self.model, self._child_path(shown), self, f)
            elif kind is ArchiveKind.IMAGE:
                node = StreamNode(self.model, self._child_path(shown), self, f)
                images.append(node)
            elif kind is ArchiveKind.PXAR:
                node = ArchiveNode(self.model, self._child_path(shown), self, shown)
            elif kind is ArchiveKind.PXAR_META:
                pxar = PxarNames.of(f.filename)
                if pxar.unified in names:
                    continue  # a v1 archive of the same name wins; should not happen
                shown = pxar.name
                node = ArchiveNode(self.model, self._child_path(shown), self, shown)
            elif kind is ArchiveKind.STREAM:
                node = StreamNode(self.model, self._child_path(shown), self, f)
            # else the payload half of a split archive (served through its .mpxar), or unknown
            if node is not None and shown and shown.encode() not in out:
                out[shown.encode()] = node
        for image in images:
            parts = image.path.rpartition("/")[2] + ".parts"
            if parts.encode() not in out:  # a real file of that name wins
                out[parts.encode()] = PartsNode(self.model, self._child_path(parts), image)
        return dict(sorted(out.items()))

    def details(self) -> dict[str, str]:
        info = self.model.datastore.snapshot_info(self.snapshot)
        manifest = info.manifest
        out = {
            "state": "complete" if manifest else ("unreadable" if info.problem else "incomplete")
        }
        if manifest is not None:
            out["size"] = str(sum(f.size for f in manifest.files))
            modes = sorted({f.crypt_mode for f in manifest.files})
            out["crypt"] = ", ".join(modes) or "none"
        if info.protected:
            out["protected"] = "yes"
        if info.problem:
            out["problem"] = info.problem
        return out

    def state(self) -> SnapshotState:
        """The snapshot's reader (blocking: reads the manifest, checks the key)."""
        if self._state is None:
            with self._state_lock:
                if self._state is None:
                    self._state = SnapshotState.open(self.model, self.snapshot)
        return self._state


@dataclass
class SnapshotState:
    reader: SnapshotReader
    key_error: SnapfsError | None  # why the given key was not used for this snapshot

    @classmethod
    def open(cls, model: FsModel, snapshot: Snapshot) -> SnapshotState:
        """Read the snapshot's manifest with the mount's key, or without it if it is another
        snapshot's key; its chunks through the model's shared reader for that key."""
        key_error = None
        crypt = model.crypt
        try:
            reader = SnapshotReader(model.datastore, snapshot, crypt, model.cache)
        except CryptKeyError as exc:
            if crypt is None:
                raise
            # A key for another snapshot must not hide this one's unencrypted archives.
            key_error = exc
            crypt = None
            reader = SnapshotReader(model.datastore, snapshot, None, model.cache)
        shared = model.chunk_readers[crypt is not None]
        if shared is not None:
            reader.chunks = shared
        return cls(reader, key_error)

    def require_key(self, file: ManifestFile) -> None:
        if self.key_error is not None and file.crypt_mode == "encrypt":
            raise self.key_error


class LazyFileNode(DatastoreFile):
    """A snapshot file whose bytes are small and decoded whole (blob, manifest)."""

    __slots__ = ("snapshot_node", "_data", "_lock")

    def __init__(self, model: FsModel, path: str, snapshot_node: SnapshotNode) -> None:
        super().__init__(model, path, snapshot_node.mtime_ns)
        self.snapshot_node = snapshot_node
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def data(self) -> bytes:
        """Blocking on first call; errors are not remembered (a retry may succeed)."""
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = self._load()
        return self._data

    def _load(self) -> bytes:
        raise NotImplementedError

    def attr(self, load: bool = True) -> Attr:
        data = self._data
        if data is None and load:
            try:
                data = self.data()
            except SnapfsError as exc:
                self.model.report(exc, self.path)
        if data is None:
            return self.attr_of_size(self.stored_size(), final=False)
        return self.attr_of_size(len(data))

    def stored_size(self) -> int:
        """The size shown while the data cannot be decoded: not 0 if it can be helped, since the
        kernel reads nothing of an empty file, and a read must fail with the reason (EACCES
        for a missing key), not show an empty file."""
        return 0

    def open(self) -> BytesContent:
        return BytesContent(self.data())

    def cached_open(self) -> BytesContent | None:
        data = self._data
        return None if data is None else BytesContent(data)


class ManifestNode(LazyFileNode):
    __slots__ = ()

    def _load(self) -> bytes:
        return self.snapshot_node.state().reader.manifest_text()


class BlobNode(LazyFileNode):
    __slots__ = ("file",)

    def __init__(
        self, model: FsModel, path: str, snapshot_node: SnapshotNode, file: ManifestFile
    ) -> None:
        super().__init__(model, path, snapshot_node)
        self.file = file

    def stored_size(self) -> int:
        return self.file.size  # what the blob takes in the datastore, as the manifest says

    def _load(self) -> bytes:
        state = self.snapshot_node.state()
        state.require_key(self.file)
        return state.reader.blob(self.file.filename)
