"""What `snapfs nbd` serves: images by name, read-only or over an overlay, each opened late.

An image's index is read when a client first attaches it, so serving every image of a namespace
starts at once and costs only the images clients use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from snapfs.errors import NotFoundError, SnapfsError, UsageError
from snapfs.format.archive_names import FileType, short_name
from snapfs.format.source import ByteSource
from snapfs.nbd import protocol as P
from snapfs.nbd.overlay import Overlay
from snapfs.store.spare_core import SPARE_CORE
from snapfs.store.stream import IndexStream

__all__ = ["Export", "datastore_exports"]


@dataclass
class Export:
    """One image clients can attach by name. `open` runs on first use (reads the index)."""

    name: str
    open: Callable[[], ByteSource]
    description: str = ""
    aliases: tuple[str, ...] = ()
    overlay_path: str | None = None
    _source: ByteSource | None = field(default=None, repr=False)
    _overlay: Overlay | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def source(self) -> ByteSource:
        if self._source is None:
            with self._lock:
                if self._source is None:
                    source = self.open()
                    if self.overlay_path is not None:
                        self._overlay = Overlay(
                            self.overlay_path, source.size, self.name, source.read_at
                        )
                    self._source = source
        return self._source

    @property
    def opened(self) -> ByteSource | None:
        """The source if a client has opened it already; None, without opening it, if not."""
        return self._source

    @property
    def overlay(self) -> Overlay | None:
        return self._overlay

    @property
    def writable(self) -> bool:
        return self.overlay_path is not None

    def transmission_flags(self) -> int:
        flags = P.TFLAG_HAS_FLAGS | P.TFLAG_SEND_FLUSH | P.TFLAG_CAN_MULTI_CONN | P.TFLAG_SEND_CACHE
        if self.writable:
            return flags | P.TFLAG_SEND_FUA | P.TFLAG_SEND_WRITE_ZEROES
        return flags | P.TFLAG_READ_ONLY

    def read(self, offset: int, size: int, block: bool = True) -> bytes | memoryview | None:
        """Bytes the client sees; None if not block and a chunk would have to be fetched."""
        overlay = self._overlay
        if overlay is not None:
            return overlay.read(offset, size) if block else None
        source = self.source()
        if isinstance(source, IndexStream):
            return source.view_at(offset, size, block=block)
        return source.read_at(offset, size) if block else None

    def close(self) -> None:
        if self._overlay is not None:
            self._overlay.close()


def parse_export_args(tokens: list[str], ns: tuple[str, ...]) -> list[tuple[object, list[str]]]:
    """`SNAPSHOT [IMAGE...] [SNAPSHOT [IMAGE...]]...` -> [(Snapshot, [image names])].

    An empty image list means every image of that snapshot.
    """
    from snapfs.store.datastore import parse_snapshot

    groups: list[tuple[object, list[str]]] = []
    for token in tokens:
        if token.count("/") >= 2:
            groups.append((parse_snapshot(token, ns), []))
        elif not groups:
            raise UsageError(f"image {token!r} given before a SNAPSHOT (e.g. vm/100/2024-...Z)")
        else:
            groups[-1][1].append(token)
    return groups


def datastore_exports(
    datastore,
    crypt,
    cache,
    tokens: list[str],
    ns: tuple[str, ...] = (),
    overlay: str | None = None,
) -> list[Export]:
    """The exports `snapfs nbd SOURCE [SNAPSHOT [IMAGE...]]...` serves.

    Names: `vm/100/2024-06-01T10:00:00Z/drive-scsi0.img`; the bare image name (`drive-scsi0.img`)
    works too when only one snapshot has an image of that name, and the empty name means the first.
    Without SNAPSHOT, every image of every snapshot in the namespace (indexes open on first use).
    """
    from snapfs.views.archives import SnapshotReader

    groups = parse_export_args(tokens, ns)
    if not groups:
        for group in datastore.groups(ns):
            groups.extend((s, []) for s in datastore.snapshots(group))
    readers: dict[object, SnapshotReader] = {}
    lock = threading.Lock()

    def reader_for(snapshot) -> SnapshotReader:
        with lock:
            if snapshot not in readers:
                readers[snapshot] = SnapshotReader(
                    datastore, snapshot, crypt, cache, spare=SPARE_CORE
                )
            return readers[snapshot]

    exports: list[Export] = []
    for snapshot, images in groups:
        if images:
            files = [datastore.resolve_archive(snapshot, name) for name in images]
        else:
            info = datastore.snapshot_info(snapshot)
            if info.manifest is None:
                if tokens:
                    raise SnapfsError(
                        f"snapshot {snapshot}: {info.problem or 'incomplete (no manifest)'}"
                    )
                continue
            files = [f for f in info.manifest.files if f.archive_type is FileType.FIXED_INDEX]
        for file in files:
            if file.archive_type is FileType.BLOB:
                raise UsageError(f"{snapshot}/{file.filename} is a blob, not a disk image")
            image = short_name(file.filename)

            def opener(snapshot=snapshot, filename=file.filename) -> ByteSource:
                return reader_for(snapshot).stream(filename)

            exports.append(
                Export(
                    f"{snapshot}/{image}",
                    opener,
                    description=f"snapfs {snapshot}/{image} ({file.size} bytes)",
                    aliases=(image,),
                )
            )
    if not exports:
        raise NotFoundError("no disk images to export")
    short = [e.aliases[0] for e in exports]
    for export in exports:
        if short.count(export.aliases[0]) > 1:
            export.aliases = ()
    if overlay is not None:
        if len(exports) != 1:
            raise UsageError(
                f"--overlay needs exactly one image to export, not {len(exports)}; name it"
            )
        exports[0].overlay_path = overlay
    return exports
