"""snapfs restore of pxar archives: golden trees, filters, overwrite, safety, failures."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from support.restore_listing import expected_listing, fs_listing
from support.vectors import extract_source_tree

from snapfs.cli import main
from snapfs.errors import UsageError
from snapfs.format.index import parse_index
from snapfs.format.source import BytesSource, FileSource
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.acl import access_acl_xattr, default_acl_xattr
from snapfs.pxar.encoder import Encoder, Metadata
from snapfs.pxar.entry import Acl
from snapfs.restore.filters import PathFilter, check_name
from snapfs.restore.tree import RestoreOptions, restore_pxar

# dir_a/nested/deeper/hello.txt; its sha256 (25af1652...) is in expected-listing.txt
HELLO = b"hello pxar\n"

GOLDEN = [
    ([], "host/testhost/2024-06-01T11:00:00Z"),
    (["--keyfile", "KEY"], "host/testhost/2024-06-01T12:00:00Z"),
    (["--ns", "testns"], "host/splithost/2024-06-01T13:00:00Z"),
    (["--keyfile", "KEY"], "ct/200/2024-06-01T15:00:00Z"),
]


def _cli(vectors: Path, extra: list[str], *args: str) -> int:
    extra = [str(vectors / "keys" / "key-none.json") if a == "KEY" else a for a in extra]
    return main(["restore", str(vectors / "datastore"), *args, *extra])


@pytest.mark.parametrize(
    ("extra", "snapshot"), GOLDEN, ids=["v1", "encrypted", "split", "ct-signed"]
)
def test_golden_archive_restores_to_expected_listing(vectors, tmp_path, capsys, extra, snapshot):
    target = tmp_path / "out"
    assert _cli(vectors, extra, snapshot, "root.pxar", str(target)) == 0
    assert fs_listing(target) == expected_listing(vectors)
    assert "no failures" in capsys.readouterr().out
    a, b = os.stat(target / "hardlink_a"), os.stat(target / "hardlink_b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2


def test_restore_matches_tar_extraction_of_source_tree(vectors, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "tar"
    theirs.mkdir()
    extract_source_tree(vectors, theirs)
    accessor = Accessor(FileSource(vectors / "pxar" / "archive-v1.pxar"), name="archive-v1.pxar")
    assert restore_pxar(accessor, None, str(ours)).ok
    tar_root = theirs if (theirs / "dir_a").exists() else next(theirs.iterdir())
    ours_lines = [line for line in fs_listing(ours) if "unix_socket" not in line]
    tar_lines = fs_listing(tar_root)
    # tar does not restore the root directory's metadata from the archive it extracts into
    assert ours_lines[1:] == tar_lines[1:]


def test_unified_and_split_files_restore_the_same(vectors, tmp_path):
    v1 = Accessor(FileSource(vectors / "pxar" / "archive-v1.pxar"), name="v1")
    v2 = Accessor(
        FileSource(vectors / "pxar" / "archive-v2-prelude.mpxar"),
        FileSource(vectors / "pxar" / "archive-v2.ppxar"),
        name="v2",
    )
    assert restore_pxar(v1, None, str(tmp_path / "a")).ok
    assert restore_pxar(v2, None, str(tmp_path / "b")).ok
    assert fs_listing(tmp_path / "a") == fs_listing(tmp_path / "b") == expected_listing(vectors)


def _golden(vectors: Path) -> Accessor:
    return Accessor(FileSource(vectors / "pxar" / "archive-v1.pxar"), name="archive-v1.pxar")


def test_subtree_restore(vectors, tmp_path):
    target = tmp_path / "sub"
    report = restore_pxar(_golden(vectors), "/dir_a", str(target))
    assert report.ok
    got = fs_listing(target)
    expected = [
        line.replace('path="/dir_a', 'path="', 1).replace('path=""', 'path="/"', 1)
        for line in expected_listing(vectors)
        if line.startswith('path="/dir_a')
    ]
    assert got == expected


def test_single_file_restore_to_new_name_and_into_folder(vectors, tmp_path):
    report = restore_pxar(
        _golden(vectors), "/dir_a/nested/deeper/hello.txt", str(tmp_path / "h.txt")
    )
    assert report.ok and report.files == 1
    assert (tmp_path / "h.txt").read_bytes() == HELLO
    st = os.stat(tmp_path / "h.txt")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1000, 1001, 1600864000_234567890)
    assert restore_pxar(_golden(vectors), "/hardlink_b", str(tmp_path)).ok
    assert (tmp_path / "hardlink_b").stat().st_size == 24


def test_include_and_exclude(vectors, tmp_path):
    opts = RestoreOptions(includes=("*.txt",), excludes=("/dir_a/nested/deeper",))
    assert restore_pxar(_golden(vectors), None, str(tmp_path / "t"), opts).ok
    found = sorted(str(p.relative_to(tmp_path / "t")) for p in (tmp_path / "t").rglob("*"))
    assert found == [
        "dir_a",
        "dir_a/nested",
        "dir_a/nested/notes.txt",
        "non_utf8_\udcff\udcfe_name.txt",
        "utf8_name_äöü_€.txt",
    ]
    # directories created only to hold included files still get their archived metadata
    assert os.stat(tmp_path / "t" / "dir_a").st_mode == 0o42775


def test_exclude_directory_excludes_subtree(vectors, tmp_path):
    opts = RestoreOptions(excludes=("dir_a", "big_*"))
    report = restore_pxar(_golden(vectors), None, str(tmp_path / "t"), opts)
    assert report.ok
    names = {p.name for p in (tmp_path / "t").rglob("*")}
    assert "dir_a" not in names and "hello.txt" not in names and "big_random.bin" not in names
    assert "xattr_file" in names


def test_path_filter_rules():
    f = PathFilter(("/etc/*",), ("*.tmp",))
    assert f.included(b"/etc/hosts", b"hosts") and not f.included(b"/var/x", b"x")
    assert f.excluded(b"/a/b.tmp", b"b.tmp") and not f.excluded(b"/a/b", b"b")


def test_dry_run_writes_nothing(vectors, tmp_path):
    report = restore_pxar(_golden(vectors), None, str(tmp_path / "t"), RestoreOptions(dry_run=True))
    assert report.ok and report.dry_run
    assert report.files == len(expected_listing(vectors)) - 1  # every entry below the root
    assert report.bytes_total == sum(
        int(part[5:])
        for line in expected_listing(vectors)
        for part in line.split()
        if part.startswith("size=")
    )  # hardlink_b is a second name for hardlink_a, not more content
    assert not (tmp_path / "t").exists()


def test_overwrite_policies(vectors, tmp_path):
    target = tmp_path / "t"
    assert restore_pxar(_golden(vectors), None, str(target)).ok
    hello = target / "dir_a" / "nested" / "deeper" / "hello.txt"
    hello.chmod(0o644)
    hello.write_bytes(b"changed")
    again = restore_pxar(_golden(vectors), None, str(target))
    assert again.ok and "/dir_a/nested/deeper/hello.txt" in again.skipped
    assert hello.read_bytes() == b"changed"  # never: kept

    os.utime(hello, ns=(0, 2_000_000_000 * 10**9))  # newer than the archive's copy
    assert restore_pxar(
        _golden(vectors), None, str(target), RestoreOptions(overwrite="if-newer")
    ).ok
    assert hello.read_bytes() == b"changed"
    os.utime(hello, ns=(0, 10**9))  # older
    assert restore_pxar(
        _golden(vectors), None, str(target), RestoreOptions(overwrite="if-newer")
    ).ok
    assert hello.read_bytes() == HELLO

    hello.write_bytes(b"changed")
    report = restore_pxar(_golden(vectors), None, str(target), RestoreOptions(overwrite="always"))
    assert report.ok and not report.skipped
    assert fs_listing(target) == expected_listing(vectors)


def test_rerun_finishes_an_interrupted_restore(vectors, tmp_path):
    """What a killed restore leaves (its marker, a partial name, a directory not yet given its
    metadata, a hard link not yet made) is finished by the same restore run again; a complete
    name is kept, and the missing link links to it."""
    target = tmp_path / "t"
    assert restore_pxar(_golden(vectors), None, str(target)).ok
    (target / "hardlink_b").unlink()
    (target / ".snapfs-restore-incomplete").write_bytes(b"")
    (target / "dir_a" / "small.bin").unlink()  # killed while it was written: its partial name
    partial = (
        target
        / "dir_a"
        / f".snapfs-partial-{_golden(vectors).lookup('/dir_a/small.bin').entry_offset:x}"
    )
    partial.write_bytes(b"half a file")
    os.chmod(target / "dir_a", 0o700)
    os.utime(target / "dir_a" / "nested", ns=(1, 1))
    report = restore_pxar(_golden(vectors), None, str(target))
    assert report.ok and report.resumed and "finished an interrupted restore" in report.summary()
    assert "/hardlink_a" in report.skipped  # complete: kept
    assert not partial.exists()  # a partial name is removed by the entry it was made for
    assert fs_listing(target) == expected_listing(vectors)
    a, b = os.stat(target / "hardlink_a"), os.stat(target / "hardlink_b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2


def test_overwrite_never_replaces_through_a_symlink(vectors, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    target = tmp_path / "t"
    target.mkdir()
    (target / "empty_file").symlink_to(outside)
    report = restore_pxar(_golden(vectors), None, str(target), RestoreOptions(overwrite="always"))
    assert report.ok
    assert outside.read_bytes() == b"precious"
    assert not (target / "empty_file").is_symlink()


def test_bad_option_values():
    with pytest.raises(UsageError):
        RestoreOptions(overwrite="sometimes")
    for bad in (b"", b".", b"..", b"a/b", b"a\0b"):
        with pytest.raises(UsageError):
            check_name(bad, "test")


# --- crafted archives ---------------------------------------------------------------------------

D = Metadata(mode=0o40755, mtime_ns=10**18)
F = Metadata(mode=0o100644, mtime_ns=10**18)
L = Metadata(mode=0o120777, mtime_ns=10**18)


def _archive(build) -> Accessor:
    out = io.BytesIO()
    enc = Encoder(out)
    enc.begin_directory(b"", D)
    build(enc)
    enc.finish()
    return Accessor(BytesSource(out.getvalue()), name="crafted.pxar")


def test_sparse_file_gets_holes(tmp_path):
    content = os.urandom(4096) + bytes(1 << 20) + os.urandom(100) + bytes(64 * 1024)
    acc = _archive(lambda e: e.add_file(b"sparse.bin", F, len(content), [content]))
    report = restore_pxar(acc, None, str(tmp_path / "t"))
    assert report.ok
    path = tmp_path / "t" / "sparse.bin"
    assert path.read_bytes() == content
    assert report.bytes_sparse >= (1 << 20)
    assert os.stat(path).st_blocks * 512 < len(content) // 2


def test_symlinked_parent_created_by_the_archive_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()

    def build(enc: Encoder) -> None:
        enc.add_symlink(b"evil", L, os.fsencode(outside))
        enc.begin_directory(b"evil", D)  # a second entry with the same name
        enc.add_file(b"planted", F, 5, [b"owned"])
        enc.end_directory()

    for policy in ("never", "always"):
        target = tmp_path / f"t-{policy}"
        restore_pxar(_archive(build), None, str(target), RestoreOptions(overwrite=policy))
        assert list(outside.iterdir()) == []
    # with always, the symlink is replaced by the real directory, never followed
    assert (tmp_path / "t-always" / "evil" / "planted").read_bytes() == b"owned"
    assert not (tmp_path / "t-always" / "evil").is_symlink()


def test_dot_dot_and_slash_names_are_refused(tmp_path):
    def build(enc: Encoder) -> None:
        enc.add_file(b"XX", F, 4, [b"evil"])
        enc.add_file(b"aXb", F, 4, [b"evil"])
        enc.add_file(b"fine", F, 2, [b"ok"])

    out = io.BytesIO()
    enc = Encoder(out)
    enc.begin_directory(b"", D)
    build(enc)
    enc.finish()
    raw = out.getvalue().replace(b"XX\0", b"..\0").replace(b"aXb\0", b"a/b\0")
    acc = Accessor(BytesSource(raw), name="hostile.pxar")
    target = tmp_path / "deep" / "t"
    report = restore_pxar(acc, None, str(target))
    assert not report.ok
    assert (target / "fine").read_bytes() == b"ok"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "fine", "t"]


def test_hardlink_path_string_is_not_trusted(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")

    def build(enc: Encoder) -> None:
        off = enc.add_file(b"a", F, 3, [b"aaa"])
        enc.add_hardlink(b"b", b"../../" + os.fsencode(secret).lstrip(b"/"), off)

    target = tmp_path / "t"
    assert restore_pxar(_archive(build), None, str(target)).ok
    assert (target / "b").read_bytes() == b"aaa"
    assert os.stat(target / "b").st_ino == os.stat(target / "a").st_ino
    assert os.stat(secret).st_nlink == 1


def test_hardlink_whose_target_is_excluded_gets_a_copy(tmp_path):
    def build(enc: Encoder) -> None:
        off = enc.add_file(b"a", F, 3, [b"aaa"])
        enc.add_hardlink(b"b", b"a", off)
        enc.add_hardlink(b"c", b"a", off)

    target = tmp_path / "t"
    assert restore_pxar(_archive(build), None, str(target), RestoreOptions(excludes=("a",))).ok
    assert not (target / "a").exists()
    assert (target / "b").read_bytes() == (target / "c").read_bytes() == b"aaa"
    assert os.stat(target / "b").st_ino == os.stat(target / "c").st_ino


def test_acl_xattr_encoding():
    from snapfs.pxar.entry import Acl

    access = access_acl_xattr(0o100664, Acl(users=((1234, 6),), groups=((2345, 4),), group_obj=4))
    import struct

    entries = [struct.unpack_from("<HHI", access, 4 + 8 * i) for i in range((len(access) - 4) // 8)]
    assert entries == [
        (1, 6, 0xFFFFFFFF),
        (2, 6, 1234),
        (4, 4, 0xFFFFFFFF),
        (8, 4, 2345),
        (0x10, 6, 0xFFFFFFFF),
        (0x20, 4, 0xFFFFFFFF),
    ]
    assert access_acl_xattr(0o100644, Acl()) is None
    assert default_acl_xattr(Acl()) is None


# --- failures -----------------------------------------------------------------------------------


def test_missing_chunk_leaves_the_rest_and_names_the_files(vectors, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    snap = store / "host" / "testhost" / "2024-06-01T11:00:00Z"
    index = parse_index((snap / "root.pxar.didx").read_bytes(), name="root.pxar.didx")
    # a chunk in the middle of big_random.bin (the file spans most of the archive)
    digest = index.digest(index.chunk_at(1_500_000)).hex()
    (store / ".chunks" / digest[:4] / digest).unlink()
    target = tmp_path / "t"
    rc = main(
        [
            "restore",
            str(store),
            "host/testhost/2024-06-01T11:00:00Z",
            "root.pxar",
            str(target),
            "--json",
        ]
    )
    assert rc == 1
    out = capsys.readouterr().out
    assert "/big_random.bin" in out and digest in out
    assert (target / "dir_a" / "nested" / "deeper" / "hello.txt").read_bytes() == HELLO
    assert (target / "xattr_file").exists()


def test_a_file_ending_in_holes_gets_its_full_size(tmp_path):
    content = os.urandom(100) + bytes(5 << 20)  # the last read of the file writes nothing
    acc = _archive(lambda e: e.add_file(b"tail.bin", F, len(content), [content]))
    assert restore_pxar(acc, None, str(tmp_path / "t")).ok
    assert (tmp_path / "t" / "tail.bin").read_bytes() == content


def test_no_acl_is_inherited_from_a_target_with_a_default_acl(vectors, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    # The target gives new entries an ACL (user 4242 may write); the archive's entries without
    # an ACL must not keep it, in fresh subdirectories either.
    inherit = Acl(default=(7, 5, 5, 7), default_users=((4242, 7),))
    os.setxattr(target, "system.posix_acl_default", default_acl_xattr(inherit))
    probe = target / "probe"
    probe.touch()  # the file system does inherit it: otherwise this test proves nothing
    assert "system.posix_acl_access" in os.listxattr(probe)
    accessor = Accessor(FileSource(vectors / "pxar" / "archive-v1.pxar"), name="archive-v1.pxar")
    assert restore_pxar(accessor, None, str(target / "tree")).ok
    for entry in accessor.walk():
        if entry.kind.value not in ("file", "dir") or entry.acl is not None:
            continue
        path = target / "tree" / os.fsdecode(entry.path.lstrip(b"/"))
        assert b"system.posix_acl_access" not in map(os.fsencode, os.listxattr(path)), path


def test_a_small_prefetch_budget_never_stalls_the_batched_handoff(tmp_path):
    """The walker hands entries on in batches; when the byte budget makes it wait, it first
    hands on the batch it holds (the writer frees budget only for entries it has)."""
    import threading

    files = [(b"f%03d" % i, os.urandom(3000 + i)) for i in range(300)]

    def build(enc: Encoder) -> None:
        for name, data in files:
            enc.add_file(name, F, len(data), [data])

    reports = []
    job = threading.Thread(
        target=lambda: reports.append(
            restore_pxar(
                _archive(build), None, str(tmp_path / "t"), RestoreOptions(prefetch_bytes=10_000)
            )
        ),
        daemon=True,
    )
    job.start()
    job.join(timeout=60)
    assert reports and reports[0].ok, "the restore stalled"
    assert all((tmp_path / "t" / name.decode()).read_bytes() == data for name, data in files)
