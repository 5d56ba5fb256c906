"""The one table of archive names: user (short) names <-> manifest (full) names, and their kinds."""

from __future__ import annotations

import pytest

from snapfs.format.archive_names import (
    CATALOG_NAME,
    MANIFEST_ALIASES,
    MANIFEST_NAME,
    ArchiveKind,
    FileType,
    PxarNames,
    archive_kind,
    file_type,
    is_pxar_tree_name,
    manifest_candidates,
    manifest_name,
    restores_as_pxar_tree,
    short_name,
)

# (what users type, what the manifest holds, what that file is)
TABLE = [
    ("root.pxar", "root.pxar.didx", ArchiveKind.PXAR),
    ("drive-scsi0.img", "drive-scsi0.img.fidx", ArchiveKind.IMAGE),
    ("qemu-server.conf", "qemu-server.conf.blob", ArchiveKind.BLOB),
    ("pct.conf", "pct.conf.blob", ArchiveKind.BLOB),
    ("client.log", "client.log.blob", ArchiveKind.BLOB),
    ("rsa-encrypted.key", "rsa-encrypted.key.blob", ArchiveKind.BLOB),
    ("index.json", MANIFEST_NAME, ArchiveKind.BLOB),
    ("catalog.pcat1", CATALOG_NAME, ArchiveKind.STREAM),
    ("root.mpxar", "root.mpxar.didx", ArchiveKind.PXAR_META),
    ("root.ppxar", "root.ppxar.didx", ArchiveKind.PXAR_PAYLOAD),
]


@pytest.mark.parametrize(("short", "full", "kind"), TABLE)
def test_the_name_table(short: str, full: str, kind: ArchiveKind) -> None:
    assert manifest_name(short) == full
    assert short_name(full) == short
    assert short_name(short) == short  # a short name stays as it is
    assert archive_kind(full) is kind
    assert manifest_candidates(full) == [full]
    assert full in manifest_candidates(short)


def test_the_split_pair_is_one_archive_by_its_unified_name() -> None:
    for name in (
        "root.pxar",
        "root.pxar.didx",
        "root.mpxar",
        "root.mpxar.didx",
        "root.ppxar",
        "root.ppxar.didx",
        "root",
    ):
        assert PxarNames.of(name) == PxarNames.of("root.pxar"), name
    names = PxarNames.of("root.pxar")
    assert names.name == "root.pxar"
    assert (names.unified, names.meta, names.payload) == (
        "root.pxar.didx",
        "root.mpxar.didx",
        "root.ppxar.didx",
    )
    assert names.files == (names.unified, names.meta, names.payload)
    assert PxarNames.of("my.data.pxar").unified == "my.data.pxar.didx"  # inner dots are kept


def test_file_types_by_suffix() -> None:
    assert file_type("drive-scsi0.img.fidx") is FileType.FIXED_INDEX
    assert file_type("root.pxar.didx") is FileType.DYNAMIC_INDEX
    assert file_type("qemu-server.conf.blob") is FileType.BLOB
    assert file_type("root.pxar") is None
    assert FileType.FIXED_INDEX == "fidx" and FileType.BLOB.suffix == ".blob"


def test_names_without_a_container() -> None:
    assert archive_kind("notes.txt") is None
    assert manifest_name("notes.txt") is None  # PBS has no container for it
    assert manifest_name("noextension") is None
    # A short name is tried as a blob, then a fixed, then a dynamic index.
    assert manifest_candidates("x.img") == ["x.img.blob", "x.img.fidx", "x.img.didx"]
    assert short_name("disk.fidx") == "disk"
    assert MANIFEST_ALIASES == ("index.json", "index.json.blob")


def test_only_pxar_streams_are_pxar() -> None:
    assert [k for k in ArchiveKind if k.is_pxar] == [
        ArchiveKind.PXAR,
        ArchiveKind.PXAR_META,
        ArchiveKind.PXAR_PAYLOAD,
    ]


def test_which_names_mean_a_tree_of_files() -> None:
    # `cat`/`ls`: the short name of a stream with metadata is the tree; full names are streams.
    assert is_pxar_tree_name("root.pxar") and is_pxar_tree_name("root.mpxar")
    assert not is_pxar_tree_name("root.ppxar")
    assert not is_pxar_tree_name("root.pxar.didx")
    assert not is_pxar_tree_name("drive-scsi0.img")
    # restore: every pxar name but the payload's full name.
    for name in ("root.pxar", "root.mpxar", "root.ppxar", "root.pxar.didx", "root.mpxar.didx"):
        assert restores_as_pxar_tree(name), name
    assert not restores_as_pxar_tree("root.ppxar.didx")
    assert not restores_as_pxar_tree("drive-scsi0.img")
    assert not restores_as_pxar_tree(CATALOG_NAME)
