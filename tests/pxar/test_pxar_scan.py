"""The front-to-back scan (pxar/scan.py) against the goodbye-table walk: the upstream golden
archives give the same entries, and archives the encoder could not have written are refused."""

from __future__ import annotations

import os

import pytest
from support.mini_pxar import MiniPxar, every_kind

from snapfs.errors import CorruptDataError, SnapfsError
from snapfs.format.source import BytesSource, FileSource
from snapfs.index.archive import ArchiveIndex
from snapfs.pxar import accessor as accessor_module
from snapfs.pxar import decode
from snapfs.pxar import format as fmt
from snapfs.pxar import scan as scan_module
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.scan import scan

GOLDEN = [
    ("pxar/archive-v1.pxar", None),
    ("pxar/archive-v2.mpxar", "pxar/archive-v2.ppxar"),
    ("pxar/archive-v2-prelude.mpxar", "pxar/archive-v2.ppxar"),
    ("upstream-fixtures/backup-client-pxar-expected.mpxar", None),
    ("upstream-fixtures/backup-client-pxar-data.mpxar", None),
]


def open_golden(vectors, archive: str, payload: str | None) -> Accessor:
    return Accessor(
        FileSource(vectors / archive),
        FileSource(vectors / payload) if payload else None,
        name=archive,
    )


def open_bytes(data: bytes, payload: bytes | None = None) -> Accessor:
    return Accessor(
        BytesSource(data), BytesSource(payload) if payload is not None else None, name="t.pxar"
    )


def assert_scan_is_the_walk(acc: Accessor) -> list:
    """The scan yields the walk's entries, each with its parent, in the order it promises."""
    walked = list(acc.walk())
    scanned = list(scan(acc))
    assert {e.entry_offset: e for e, _ in scanned} == {e.entry_offset: e for e in walked}
    assert len(scanned) == len(walked)
    by_path = {e.path: e for e in walked}
    for entry, parent in scanned:
        if entry.path == b"/":
            assert parent == -1
        else:
            assert parent == by_path[os.path.dirname(entry.path)].entry_offset
    # Everything else in archive order, a directory after all it holds, the root last.
    position = {entry.entry_offset: i for i, (entry, _) in enumerate(scanned)}
    for entry in walked:
        if entry.is_dir:
            inside = [e for e in walked if entry.entry_offset < e.entry_offset < entry.entry_end]
            assert all(position[e.entry_offset] < position[entry.entry_offset] for e in inside)
    files = [e.entry_offset for e, _ in scanned if not e.is_dir]
    assert files == sorted(files)
    assert scanned[-1][0] == acc.root()
    return scanned


@pytest.mark.parametrize(("archive", "payload"), GOLDEN)
def test_golden_archives_scan_as_they_walk(vectors, archive, payload):
    acc = open_golden(vectors, archive, payload)
    assert len(assert_scan_is_the_walk(acc)) > 10


@pytest.mark.parametrize(("archive", "payload"), GOLDEN)
def test_regular_files_decoded_in_place_as_the_full_decoder_decodes_them(
    vectors, archive, payload, monkeypatch
):
    acc = open_golden(vectors, archive, payload)
    scanned, walked = list(scan(acc)), list(acc.walk())
    served = []
    original = decode.decode_regular_file

    def counted(*args):
        served.append(original(*args))
        return served[-1]

    for module in (scan_module, accessor_module):
        monkeypatch.setattr(module, "decode_regular_file", counted)
    assert list(scan(acc)) == scanned
    assert list(open_golden(vectors, archive, payload).walk()) == walked
    assert sum(entry is not None for entry in served) > 10  # in place, most of the files
    for module in (scan_module, accessor_module):
        monkeypatch.setattr(module, "decode_regular_file", lambda *args: None)
    assert list(scan(acc)) == scanned
    assert list(open_golden(vectors, archive, payload).walk()) == walked


@pytest.mark.parametrize("split", [False, True])
def test_every_kind_of_entry_scans_as_it_walks(split):
    data, payload = every_kind(split=split)
    assert_scan_is_the_walk(open_bytes(data, payload))


def archive_with(build) -> bytes:
    w = MiniPxar()
    w.file(b"first", b"1")
    build(w)
    w.file(b"last", b"2")
    return w.finish()[0]


def sibling_missing_from_the_table(w: MiniPxar) -> None:
    w.item(fmt.PXAR_FILENAME, b"hidden\0")  # items written, but no goodbye record
    w.item(fmt.PXAR_ENTRY, w.stat(0o100644))
    w.item(fmt.PXAR_PAYLOAD, b"secret")


def gap_between_siblings(w: MiniPxar) -> None:
    w.out += b"\0" * 32


def subdirectory_of_the_wrong_size(w: MiniPxar) -> None:
    w.begin_dir(b"sub")
    w.file(b"inner", b"x")
    w.end_dir()
    h, f, size = w.stack[-1][2][-1]
    w.stack[-1][2][-1] = (h, f, size - 1)


@pytest.mark.parametrize(
    "build", [sibling_missing_from_the_table, gap_between_siblings, subdirectory_of_the_wrong_size]
)
def test_an_archive_the_encoder_would_not_write_is_refused_and_indexed_by_walking(build):
    acc = open_bytes(archive_with(build))
    with pytest.raises(CorruptDataError, match="t.pxar: .*offset"):
        list(scan(acc))
    try:
        walked = list(acc.walk())
    except SnapfsError:
        return  # the walk refuses it too: nothing to index
    index = ArchiveIndex.build(acc, None)
    assert index.entries == len(walked)
    # Every listing as the walk lists it, none left over from the refused scan.
    directories = [e for e in walked if e.is_dir]
    for directory in directories:
        assert index.listing(directory.entry_offset) == tuple(
            (c.name, acc.resolve_hardlink(c)) for c in acc.listdir(directory)
        )
    after = index.listings_after(directories[0].entry_offset, 1000)
    assert [offset for offset, _ in after.listings] == [d.entry_offset for d in directories[1:]]


def bad_name(w: MiniPxar) -> None:
    f = w.item(fmt.PXAR_FILENAME, b"a/b\0")
    w.item(fmt.PXAR_ENTRY, w.stat(0o100644))
    w.item(fmt.PXAR_PAYLOAD, b"x")
    w._child(b"a/b", f)


def payload_of_a_directory(w: MiniPxar) -> None:
    w.file(b"dir", b"x", mode=0o40755)


def nanoseconds_out_of_range(w: MiniPxar) -> None:
    f = w.item(fmt.PXAR_FILENAME, b"late\0")
    w.item(fmt.PXAR_ENTRY, fmt.STAT_V2.pack(0o100644, 0, 0, 0, 1, 10**9, 0))
    w.item(fmt.PXAR_PAYLOAD, b"x")
    w._child(b"late", f)


def payload_past_the_end(w: MiniPxar) -> None:
    f = w.item(fmt.PXAR_FILENAME, b"big\0")
    w.item(fmt.PXAR_ENTRY, w.stat(0o100644))
    w.out += fmt.HEADER.pack(fmt.PXAR_PAYLOAD, 1 << 40)
    w._child(b"big", f)


@pytest.mark.parametrize(
    "build", [bad_name, payload_of_a_directory, nanoseconds_out_of_range, payload_past_the_end]
)
def test_a_bad_file_entry_gets_the_decoders_own_error(build):
    acc = open_bytes(archive_with(build))
    with pytest.raises(SnapfsError) as walked:
        list(acc.walk())
    with pytest.raises(SnapfsError) as scanned:
        list(scan(acc))
    assert type(scanned.value) is type(walked.value)
    assert str(scanned.value) == str(walked.value)
