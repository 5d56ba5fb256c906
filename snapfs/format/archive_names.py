"""Archive names: what a manifest calls a snapshot's files, and what users call them.

The manifest lists each file by its full server name: the archive name plus the suffix of its
container, `.blob` (a DataBlob), `.fidx` (a fixed index: a disk image) or `.didx` (a dynamic
index: a pxar stream, the catalog). Users type the short name (`root.pxar`, `drive-scsi0.img`,
`qemu-server.conf`), and `root.pxar` also names a split archive, which the manifest holds as the
pair `root.mpxar.didx` (metadata) + `root.ppxar.didx` (payload) (docs/formats.md §2). The mount,
`cat`, restore, verify, NBD, map and backup all turn one kind of name into the other; they all ask
here, so the rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "CATALOG_NAME",
    "MANIFEST_ALIASES",
    "MANIFEST_NAME",
    "ArchiveKind",
    "FileType",
    "PxarNames",
    "archive_kind",
    "file_type",
    "is_pxar_tree_name",
    "manifest_candidates",
    "manifest_name",
    "restores_as_pxar_tree",
    "short_name",
]

MANIFEST_NAME = "index.json.blob"
#: What users may call the manifest: its short name too.
MANIFEST_ALIASES = ("index.json", MANIFEST_NAME)
CATALOG_NAME = "catalog.pcat1.didx"


class FileType(StrEnum):
    """The container a manifest file is, told by its suffix."""

    BLOB = "blob"
    FIXED_INDEX = "fidx"
    DYNAMIC_INDEX = "didx"

    @property
    def suffix(self) -> str:
        return f".{self.value}"


#: The suffixes, in the order a short name is tried against the manifest.
_SUFFIXES = tuple(t.suffix for t in FileType)


class ArchiveKind(StrEnum):
    """What a manifest file is to a reader."""

    BLOB = "blob"  # decoded whole: `qemu-server.conf.blob`
    IMAGE = "image"  # any fixed index, a disk image: `drive-scsi0.img.fidx`
    PXAR = "pxar"  # a unified pxar archive: `root.pxar.didx`
    PXAR_META = "pxar-meta"  # the metadata half of a split one: `root.mpxar.didx`
    PXAR_PAYLOAD = "pxar-payload"  # and its payload half: `root.ppxar.didx`
    STREAM = "stream"  # any other dynamic index, read as bytes: `catalog.pcat1.didx`

    @property
    def is_pxar(self) -> bool:
        """A stream of a pxar archive: a unified one, or either half of a split one."""
        return self in (ArchiveKind.PXAR, ArchiveKind.PXAR_META, ArchiveKind.PXAR_PAYLOAD)


#: The extensions of pxar streams, and the kind of stream each names.
_PXAR_EXTENSIONS = {
    ".pxar": ArchiveKind.PXAR,
    ".mpxar": ArchiveKind.PXAR_META,
    ".ppxar": ArchiveKind.PXAR_PAYLOAD,
}
#: PBS's rule for the container of a short name, by its extension (pbs-client tools/mod.rs).
_CONTAINERS = {
    "img": FileType.FIXED_INDEX,
    **dict.fromkeys(("pxar", "mpxar", "ppxar", "pcat1"), FileType.DYNAMIC_INDEX),
    **dict.fromkeys(("conf", "json", "key", "log"), FileType.BLOB),
}


def file_type(filename: str) -> FileType | None:
    """The container a full name says (`root.pxar.didx`: DYNAMIC_INDEX); None for a short name."""
    for kind in FileType:
        if filename.endswith(kind.suffix):
            return kind
    return None


def short_name(filename: str) -> str:
    """A full name without its container suffix: `drive-scsi0.img.fidx` -> `drive-scsi0.img`,
    `root.mpxar.didx` -> `root.mpxar`; a short name unchanged."""
    kind = file_type(filename)
    return filename if kind is None else filename.removesuffix(kind.suffix)


def manifest_name(name: str) -> str | None:
    """The full name PBS gives the archive a user calls `name` (`root.pxar` -> `root.pxar.didx`,
    `drive-scsi0.img` -> `drive-scsi0.img.fidx`, `qemu-server.conf` -> `qemu-server.conf.blob`);
    None for an extension PBS has no container for. A split `root.pxar` is `PxarNames`' business.
    """
    container = _CONTAINERS.get(name.rpartition(".")[2]) if "." in name else None
    return None if container is None else name + container.suffix


def manifest_candidates(name: str) -> list[str]:
    """The full names `name` may stand for, in the order to look for them in a manifest: itself
    if it has a container suffix, else it with each suffix."""
    return [name] if name.endswith(_SUFFIXES) else [name + suffix for suffix in _SUFFIXES]


def archive_kind(filename: str) -> ArchiveKind | None:
    """What the manifest file `filename` is; None if it has no container suffix."""
    kind = file_type(filename)
    if kind is FileType.BLOB:
        return ArchiveKind.BLOB
    if kind is FileType.FIXED_INDEX:
        return ArchiveKind.IMAGE
    if kind is FileType.DYNAMIC_INDEX:
        stream = short_name(filename)
        for extension, pxar in _PXAR_EXTENSIONS.items():
            if stream.endswith(extension):
                return pxar
        return ArchiveKind.STREAM
    return None


def is_pxar_tree_name(name: str) -> bool:
    """`root.pxar` or `root.mpxar`: a short name that means the archive's tree of files (`cat`,
    `ls`); `root.ppxar` and every full name mean the raw stream instead."""
    return name.endswith((".pxar", ".mpxar"))


def restores_as_pxar_tree(name: str) -> bool:
    """Whether `snapfs restore` writes `name` out as a tree of files: any name of a pxar archive,
    short or full, except the full name of a split archive's payload (restored as a raw stream)."""
    return name.endswith((*_PXAR_EXTENSIONS, ".pxar.didx", ".mpxar.didx"))


@dataclass(frozen=True)
class PxarNames:
    """The names of pxar archive `<base>.pxar` and of the manifest files it may be stored as:
    one unified stream, or a split metadata + payload pair."""

    name: str  # what users and the mount call it, however it is stored: `root.pxar`
    unified: str  # `root.pxar.didx`
    meta: str  # `root.mpxar.didx`
    payload: str  # `root.ppxar.didx`

    @classmethod
    def of(cls, name: str) -> PxarNames:
        """From any name of the archive or of one of its streams, short or full: `root.pxar`,
        `root.mpxar.didx`, `root.ppxar`, ... (a name with no pxar extension is the base itself)."""
        base = name.removesuffix(FileType.DYNAMIC_INDEX.suffix)
        for extension in (".mpxar", ".ppxar", ".pxar"):
            if base.endswith(extension):
                base = base.removesuffix(extension)
                break
        return cls(f"{base}.pxar", f"{base}.pxar.didx", f"{base}.mpxar.didx", f"{base}.ppxar.didx")

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.unified, self.meta, self.payload)
