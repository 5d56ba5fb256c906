"""`snapfs ls` and `snapfs find`: look inside a pxar archive without mounting it."""

from __future__ import annotations

import fnmatch
import stat
import time
from collections.abc import Iterator

from snapfs.format.archive_names import CATALOG_NAME, PxarNames
from snapfs.format.catalog import CatalogReader
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.entry import Entry, EntryKind
from snapfs.views.archives import SnapshotReader

_KIND_NAMES = {
    EntryKind.DIRECTORY: "dir",
    EntryKind.FILE: "file",
    EntryKind.SYMLINK: "symlink",
    EntryKind.HARDLINK: "hardlink",
    EntryKind.DEVICE: "device",
    EntryKind.FIFO: "fifo",
    EntryKind.SOCKET: "socket",
}


def show_name(name: bytes) -> str:
    """A file name for a terminal: undecodable bytes as \\xNN, never a crash."""
    return name.decode("utf-8", "backslashreplace")


def list_directory(accessor: Accessor, path: str) -> tuple[Entry, Iterator[Entry]]:
    """The entry at `path` and, if it is a directory, its children (streamed)."""
    entry = accessor.lookup(path or "/")
    if entry.kind is EntryKind.DIRECTORY:
        return entry, accessor.listdir(entry)
    return entry, iter([entry])


def entry_record(entry: Entry) -> dict:
    """An entry as JSON-friendly data (names as text with \\xNN escapes)."""
    record = {
        "path": show_name(entry.path),
        "name": show_name(entry.name),
        "type": _KIND_NAMES[entry.kind],
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime_ns": entry.mtime_ns,
        "size": entry.size,
    }
    if entry.link_target is not None:
        record["target"] = show_name(entry.link_target)
    if entry.device is not None:
        record["device"] = list(entry.device)
    if entry.xattrs:
        record["xattrs"] = {show_name(k): v.hex() for k, v in entry.xattrs}
    return record


def long_line(entry: Entry) -> str:
    """One `ls -l`-like line: mode, owner, size, mtime, name, link target."""
    mode = stat.filemode(entry.mode) if entry.kind is not EntryKind.HARDLINK else "h---------"
    size = f"{entry.device[0]},{entry.device[1]}" if entry.device else str(entry.size)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.mtime_ns // 10**9))
    line = f"{mode} {entry.uid:>6} {entry.gid:>6} {size:>12} {when} {show_name(entry.name or b'/')}"
    if entry.kind is EntryKind.SYMLINK:
        line += f" -> {show_name(entry.link_target or b'')}"
    elif entry.kind is EntryKind.HARDLINK:
        line += f" => {show_name(entry.link_target or b'')}"
    return line


def find_paths(reader: SnapshotReader, archive: str, pattern: str) -> Iterator[str]:
    """Archive paths whose last component matches the glob; uses the catalog when there is one.

    The catalog is a few KiB where the archive may be GiBs, so it answers without touching the
    archive's chunks. Split archives have no catalog: the archive's metadata stream is walked.
    """
    unified = PxarNames.of(archive).unified
    catalog_root = f"/{unified}".encode()
    filenames = {f.filename for f in reader.manifest.files}
    pat = pattern.encode("utf-8", "surrogateescape")
    if CATALOG_NAME in filenames and unified in filenames:
        stream = reader.stream(CATALOG_NAME)
        catalog = CatalogReader(
            stream.read_at(0, stream.size), name=f"{reader.snapshot}/{CATALOG_NAME}"
        )
        for path, entry in catalog.walk():
            if path.startswith(catalog_root + b"/") and fnmatch.fnmatchcase(entry.name, pat):
                yield show_name(path[len(catalog_root) :])
        return
    accessor = reader.pxar(archive)
    for entry in accessor.walk():
        if entry.name and fnmatch.fnmatchcase(entry.name, pat):
            yield show_name(entry.path)
