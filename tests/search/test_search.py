"""`snapfs index`, `search`, `diff` and `versions` on stores built here, checked against a
brute-force walk of the source trees as they were at each backup."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.delayproxy import DelayProxy
from support.mounting import SNAPFS, snapfs
from support.s3server import BUCKET, s3_keys_for, upload_datastore

from snapfs.backup import backup, parse_backup_source
from snapfs.format.keyfile import create_keyfile
from snapfs.index.history import HistoryIndex, Series
from snapfs.keysource import KeyOptions
from snapfs.store.datastore import format_backup_time

DAY = 86400
T0 = 1717200000  # 2024-06-01T00:00:00Z


@dataclass(frozen=True)
class Seen:
    """An entry of a source tree as a brute-force walk sees it."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    content: str | None  # sha256 of a file, target of a symlink
    xattrs: tuple


def tree_state(root: Path) -> dict[str, Seen]:
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            ["", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]
        ):
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = "/" + os.path.relpath(path, root) if path != str(root) else "/"
            content, size, xattrs = None, 0, ()
            if stat.S_ISREG(st.st_mode):
                kind, size = "f", st.st_size
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                kind = "d"
            else:
                kind, content = "l", os.readlink(path)
            if kind != "l":
                xattrs = tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
            state[rel] = Seen(
                kind, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, content, xattrs
            )
    return state


def expected_change(old: Seen | None, new: Seen | None) -> str | None:
    if old == new:
        return None
    if old is None:
        return "+"
    if new is None:
        return "-"
    if old.type != new.type:
        return "T"
    if old.content != new.content:
        if old.type == "f" and (old.size, old.mtime_ns) == (new.size, new.mtime_ns):
            return "?"
        return "M"
    return "U"


def expected_diff(old: dict[str, Seen], new: dict[str, Seen]) -> set[tuple[str, str]]:
    changes = {(expected_change(old.get(p), new.get(p)), p) for p in old.keys() | new.keys()}
    return {(c, p) for c, p in changes if c is not None}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass
class Store:
    path: Path
    states: dict[tuple[str, str, int], dict[str, Seen]]  # (ns, group, time) -> tree state
    keyfile: Path
    env: dict[str, str]
    image_changes: list[int]

    def run(self, *args: object, key: bool = False) -> subprocess.CompletedProcess:
        extra = ["--keyfile", self.keyfile] if key else []
        return snapfs(*args, *extra, env=self.env)

    def lines(self, *args: object, key: bool = False) -> list[dict]:
        proc = self.run(*args, "--json", key=key)
        assert proc.returncode in (0, 1), proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]


def _snapshot_name(group: str, when: int) -> str:
    return f"{group}/{format_backup_time(when)}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """host/web1 in four snapshots (the second split) with renames, a type change, hard links,
    xattr- and ACL-only changes and a change behind an unchanged size and mtime; the same tree in
    namespace prod/db; an encrypted group; a VM image whose chunks 1 and 3 change; an incomplete
    and a protected snapshot."""
    base = tmp_path_factory.mktemp("search")
    ds, tree = base / "ds", base / "tree"
    states: dict = {}

    def take(group: str, when: int, ns: tuple[str, ...] = (), split: bool = False, crypt=None):
        kind, bid = group.split("/")
        backup(
            ds,
            [parse_backup_source(f"root.pxar:{tree}")],
            backup_type=kind,
            backup_id=bid,
            backup_time=when,
            ns=ns,
            crypt=crypt,
            split=split,
        )
        states[("/".join(ns), group, when)] = tree_state(tree)

    _write(tree / "etc/hosts", b"127.0.0.1 localhost\n")
    _write(tree / "etc/conf.d/a.conf", b"a=1\n")
    _write(tree / "etc/conf.d/b.conf", b"b=1\n")
    _write(tree / "data/big.bin", os.urandom(3 << 20))
    _write(tree / "data/hl1", b"linked twice\n")
    os.link(tree / "data/hl1", tree / "data/hl2")
    os.symlink("etc/hosts", tree / "link")
    _write(tree / "x", b"a file that becomes a directory\n")
    _write(tree / "old-name.txt", b"renamed later\n")
    _write(tree / "attrs.txt", b"xattr only\n")
    _write(tree / "acl.txt", b"acl only\n")
    _write(tree / "sneaky.txt", b"original!\n")
    take("host/web1", T0)
    take("host/web1", T0, ns=("prod", "db"))

    _write(tree / "etc/conf.d/a.conf", b"a=2, longer\n")
    (tree / "old-name.txt").rename(tree / "new-name.txt")
    (tree / "x").unlink()
    _write(tree / "x/child.conf", b"now a directory\n")
    os.setxattr(tree / "attrs.txt", "user.tag", b"blue")
    subprocess.run(["setfacl", "-m", "u:1234:r", tree / "acl.txt"], check=True)
    before = os.stat(tree / "sneaky.txt")
    _write(tree / "sneaky.txt", b"tampered!\n")
    os.utime(tree / "sneaky.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    (tree / "etc/conf.d/b.conf").unlink()
    _write(tree / "data/new.conf", b"new\n")
    os.chmod(tree / "etc/hosts", 0o600)
    take("host/web1", T0 + DAY, split=True)

    _write(tree / "data/hl1", b"both links change\n")
    take("host/web1", T0 + 2 * DAY)
    take("host/web1", T0 + 3 * DAY)  # nothing changed

    keyfile = base / "pbs.key"
    keyfile.write_bytes(create_keyfile(os.urandom(32), None, None).to_json())
    crypt = KeyOptions(str(keyfile), None).crypt_config()
    shutil.rmtree(tree)
    _write(tree / "secret-plan.conf", b"the plan\n")
    take("host/vault", T0, crypt=crypt)

    image = base / "disk.raw"
    image.write_bytes(os.urandom(16 << 20))
    backup(
        ds,
        [parse_backup_source(f"drive-scsi0.img:{image}")],
        backup_type="vm",
        backup_id="100",
        backup_time=T0,
    )
    with open(image, "r+b") as f:
        for chunk in (1, 3):
            f.seek(chunk * (4 << 20) + 100)
            f.write(b"changed")
    backup(
        ds,
        [parse_backup_source(f"drive-scsi0.img:{image}")],
        backup_type="vm",
        backup_id="100",
        backup_time=T0 + DAY,
    )

    (ds / "host/web1" / format_backup_time(T0 + 10 * DAY)).mkdir()  # incomplete: no manifest
    (ds / "host/web1" / format_backup_time(T0) / ".protected").touch()
    env = dict(os.environ, XDG_CACHE_HOME=str(base / "cache"))
    return Store(ds, states, keyfile, env, [1, 3])


def _expected_hits(store: Store, glob: str, ns: str = "", encrypted: bool = False) -> set:
    found = set()
    for (space, group, when), state in store.states.items():
        if (group == "host/vault") != encrypted and group == "host/vault":
            continue
        if ns and not (space == ns or space.startswith(ns + "/")):
            continue
        for path, seen in state.items():
            if fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], glob):
                found.add(
                    (
                        space,
                        _snapshot_name(group, when),
                        path,
                        seen.type,
                        seen.content if seen.type == "f" else None,
                    )
                )
    return found


def _hits(records: list[dict]) -> set:
    return {(r["ns"], r["snapshot"], r["path"], r["type"], r.get("sha256")) for r in records}


def test_search_finds_every_snapshot_holding_a_match(store):
    proc = store.run("search", store.path, "*.conf", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _hits([json.loads(line) for line in proc.stdout.splitlines()]) == _expected_hits(
        store, "*.conf"
    )
    # What it could not search says so: the encrypted group, the incomplete snapshot.
    assert "encrypted with key" in proc.stderr and "host/vault" in proc.stderr
    assert "incomplete snapshot" in proc.stderr

    scoped = store.lines("search", store.path, "*.conf", "--ns", "prod", "--no-refresh")
    assert _hits(scoped) == _expected_hits(store, "*.conf", ns="prod")
    assert {r["ns"] for r in scoped} == {"prod/db"}

    by_path = store.lines("search", store.path, "/etc/conf.d/*", "--no-refresh", "--type", "f")
    assert {r["path"] for r in by_path} == {"/etc/conf.d/a.conf", "/etc/conf.d/b.conf"}
    big = store.lines("search", store.path, "*", "--min-size", "1M", "--no-refresh")
    assert {r["path"] for r in big} == {"/data/big.bin"}
    assert len(big) == 5  # four web1 snapshots and prod/db's one

    text = store.run("search", store.path, "a.conf", "--no-refresh")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == "/etc/conf.d/a.conf"
    assert text.stdout.count("sha256:") == 2  # two versions, each with its snapshots

    nothing = store.run("search", store.path, "no-such-file", "--no-refresh")
    assert nothing.returncode == 1 and nothing.stdout == ""


def test_encrypted_archives_are_searched_with_their_key_and_never_written_in_plain_text(store):
    hits = store.lines("search", store.path, "secret-*", key=True)
    assert _hits(hits) == _expected_hits(store, "secret-*", encrypted=True)
    index_dir = Path(store.env["XDG_CACHE_HOME"]) / "snapfs/search"
    files = sorted(index_dir.iterdir())
    assert any(f.name.endswith(".sealed") for f in files)
    for f in files:
        assert f.stat().st_mode & 0o077 == 0, f
        assert b"secret-plan" not in f.read_bytes(), f
    # Without the key: not found, and stderr says which key would find more.
    proc = store.run("search", store.path, "secret-*")
    assert proc.returncode == 1 and "host/vault" in proc.stderr


def test_diff_matches_a_brute_force_comparison_of_the_trees(store):
    states = {
        when: s for (ns, group, when), s in store.states.items() if (ns, group) == ("", "host/web1")
    }
    for a, b in (
        (T0, T0 + DAY),
        (T0 + DAY, T0 + 2 * DAY),
        (T0 + 2 * DAY, T0 + 3 * DAY),
        (T0, T0 + 3 * DAY),
    ):
        changes = store.lines(
            "diff", store.path, _snapshot_name("host/web1", a), _snapshot_name("host/web1", b)
        )
        assert {(c["change"], c["path"]) for c in changes} == expected_diff(states[a], states[b])
        assert {c["archive"] for c in changes} <= {"root.pxar"}
    first = {
        c["path"]: c["change"]
        for c in store.lines(
            "diff",
            store.path,
            _snapshot_name("host/web1", T0),
            _snapshot_name("host/web1", T0 + DAY),
        )
    }
    # The cases the store was built for, named so a failure says which one broke.
    assert first["/sneaky.txt"] == "?"
    assert first["/x"] == "T" and first["/x/child.conf"] == "+"
    assert first["/old-name.txt"] == "-" and first["/new-name.txt"] == "+"
    assert first["/attrs.txt"] == first["/acl.txt"] == "U"
    assert "/data/big.bin" not in first and "/data/hl2" not in first
    second = {
        c["path"]: c["change"]
        for c in store.lines(
            "diff",
            store.path,
            _snapshot_name("host/web1", T0 + DAY),
            _snapshot_name("host/web1", T0 + 2 * DAY),
        )
    }
    assert second["/data/hl1"] == second["/data/hl2"] == "M"


def test_diff_with_content_confirms_by_the_bytes_and_limits_to_a_path(store):
    a, b = _snapshot_name("host/web1", T0), _snapshot_name("host/web1", T0 + DAY)
    plain = store.lines("diff", store.path, a, b, "--no-refresh")
    confirmed = store.lines("diff", store.path, a, b, "--no-refresh", "--content")
    assert confirmed == plain
    below = store.lines("diff", store.path, a, b, "root.pxar/etc", "--no-refresh")
    assert {c["path"] for c in below} == {c["path"] for c in plain if c["path"].startswith("/etc")}
    across = store.lines("diff", store.path, a, a, "--ns-b", "prod/db", "--no-refresh")
    assert across == []  # the same tree backed up into another namespace


def test_diff_of_an_image_names_its_changed_chunks(store):
    changes = store.lines(
        "diff", store.path, "vm/100/2024-06-01T00:00:00Z", "vm/100/2024-06-02T00:00:00Z"
    )
    assert changes == [
        {
            "change": "M",
            "archive": "drive-scsi0.img",
            "chunks": store.image_changes,
            "bytes": 2 * (4 << 20),
        }
    ]
    text = store.run(
        "diff", store.path, "vm/100/2024-06-01T00:00:00Z", "host/web1/2024-06-01T00:00:00Z"
    )
    assert text.returncode == 0, text.stderr
    assert set(text.stdout.split()) >= {"+", "-", "root.pxar", "drive-scsi0.img"}


def test_versions_lists_each_distinct_version_with_its_snapshots(store):
    versions = store.lines("versions", store.path, "host/web1", "root.pxar/etc/conf.d/a.conf")
    assert [(v["first"], v["last"], v["snapshots"]) for v in versions] == [
        (_snapshot_name("host/web1", T0), _snapshot_name("host/web1", T0), 1),
        (_snapshot_name("host/web1", T0 + DAY), _snapshot_name("host/web1", T0 + 3 * DAY), 3),
    ]
    expected = [
        store.states[("", "host/web1", t)]["/etc/conf.d/a.conf"].content for t in (T0, T0 + DAY)
    ]
    assert [v["sha256"] for v in versions] == expected
    unchanged = store.lines(
        "versions", store.path, "host/web1", "root.pxar/data/big.bin", "--no-refresh"
    )
    assert len(unchanged) == 1 and unchanged[0]["snapshots"] == 4
    missing = store.run("versions", store.path, "host/web1", "root.pxar/nope", "--no-refresh")
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_refresh_reads_only_new_snapshots_and_drops_pruned_ones(store, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(store.path, copy, symlinks=True)
    index = tmp_path / "index.sqlite"

    def report() -> dict:
        proc = snapfs("index", copy, "--index", index, "--json", env=store.env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = report()
    assert first["indexed"] == 7  # web1 x4, prod/db, vm/100 x2 (vault needs its key)
    # Copied, not parsed: web1's last snapshot (the third unchanged), prod/db (web1's first).
    assert first["copied"] == 2
    again = report()
    assert (again["indexed"], again["archives"], again["pruned"]) == (0, 0, 0)
    shutil.rmtree(copy / "host/web1" / format_backup_time(T0 + DAY))
    after = report()
    assert after["pruned"] == 1
    hits = [
        json.loads(line)
        for line in snapfs(
            "search", copy, "new.conf", "--index", index, "--json", env=store.env
        ).stdout.splitlines()
    ]
    assert {h["snapshot"] for h in hits} == {
        _snapshot_name("host/web1", T0 + 2 * DAY),
        _snapshot_name("host/web1", T0 + 3 * DAY),
    }
    assert index.stat().st_mode & 0o777 == 0o600


def test_a_corrupt_chunk_leaves_that_snapshot_out_and_says_which(store, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(store.path, copy, symlinks=True)
    snapshot = copy / "host/web1" / format_backup_time(T0 + 2 * DAY)
    index_file = snapshot / "root.pxar.didx"
    from snapfs.format.index import parse_index

    digest = parse_index(index_file.read_bytes(), name="x").digest(0)
    chunk = copy / ".chunks" / digest.hex()[:4] / digest.hex()
    chunk.write_bytes(chunk.read_bytes()[:-5] + b"XXXXX")
    holding = {
        s.name
        for s in (copy / "host/web1").iterdir()
        if (s / "root.pxar.didx").exists()
        and digest
        in {d for _, _, d in parse_index((s / "root.pxar.didx").read_bytes(), name="x").chunks()}
    }
    assert format_backup_time(T0 + 2 * DAY) in holding
    proc = snapfs("index", copy, "--index", tmp_path / "i.sqlite", env=store.env)
    assert proc.returncode == 0, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if "warning: not indexed:" in line]
    assert len(failed) == len(holding)
    assert all(digest.hex() in line for line in failed), failed
    versions = [
        json.loads(line)
        for line in snapfs(
            "versions",
            copy,
            "host/web1",
            "root.pxar/etc/hosts",
            "--index",
            tmp_path / "i.sqlite",
            "--no-refresh",
            "--json",
            env=store.env,
        ).stdout.splitlines()
    ]
    assert sum(v["snapshots"] for v in versions) == 4 - len(holding)


def _s3_env(store: Store, s3server) -> dict[str, str]:
    return dict(s3server.reader_env(), XDG_CACHE_HOME=store.env["XDG_CACHE_HOME"])


@pytest.mark.slow
def test_search_and_diff_over_s3_give_the_local_answers(store, s3server, tmp_path):
    bucket_store = f"search{os.getpid()}"
    upload_datastore(s3server.client(), BUCKET, bucket_store, store.path)
    source = f"s3://{BUCKET}/{bucket_store}"
    s3 = ["--endpoint-url", s3server.endpoint, "--path-style"]
    env = _s3_env(store, s3server)

    def lines(*args: object) -> list[dict]:
        proc = snapfs(*args, *s3, "--json", "--keyfile", store.keyfile, env=env)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    local = store.lines("search", store.path, "*.conf", "--no-refresh", key=True)
    assert lines("search", source, "*.conf") == local
    a, b = _snapshot_name("host/web1", T0), _snapshot_name("host/web1", T0 + DAY)
    assert lines("diff", source, a, b, "--no-refresh") == store.lines(
        "diff", store.path, a, b, "--no-refresh"
    )
    # One index per SOURCE: the bucket's is a file of its own, never written to the bucket.
    keys = [
        o["Key"]
        for o in s3server.client().list_objects_v2(Bucket=BUCKET, Prefix=bucket_store)["Contents"]
    ]
    assert len(keys) == sum(1 for _ in s3_keys_for(store.path, bucket_store))


@pytest.mark.slow
def test_a_build_killed_midway_serves_no_partial_snapshot(store, s3server, tmp_path):
    """kill -9 while indexing over a slow link: every snapshot the index says it holds is whole,
    and the next run finishes the job."""
    bucket_store = f"killed{os.getpid()}"
    upload_datastore(s3server.client(), BUCKET, bucket_store, store.path)
    port = int(s3server.endpoint.rsplit(":", 1)[1].strip("/"))
    proxy = DelayProxy("127.0.0.1", ("127.0.0.1", port), delay=0.05)
    index = tmp_path / "index.sqlite"
    args = [
        *SNAPFS,
        "index",
        f"s3://{BUCKET}/{bucket_store}",
        "--endpoint-url",
        f"http://127.0.0.1:{proxy.port}",
        "--path-style",
        "--index",
        str(index),
    ]
    env = _s3_env(store, s3server)
    try:
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while _done_snapshots(index) < 1:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "no snapshot was indexed in 120 s"
                time.sleep(0.05)  # polling the index file, which another process writes
        finally:
            proc.kill()
            proc.wait()
        done = _done_snapshots(index)
        assert 1 <= done < 8, "the build finished before it could be killed"
        db = sqlite3.connect(index)
        counted = db.execute(
            "SELECT count(*) FROM archives a JOIN series r ON r.id = a.series WHERE NOT EXISTS "
            "(SELECT 1 FROM snapshots s WHERE (s.ns, s.type, s.bid, s.time) = "
            "(r.ns, r.type, r.bid, a.time))"
        ).fetchone()[0]
        assert counted == 0  # no archive of a snapshot that is not done
        partial = HistoryIndex.open(str(index))
        for (ns, kind, bid, when), key in partial.done_snapshots().items():
            state = partial.state(Series(ns, kind, bid, "root.pxar"), when)
            if kind == "host" and key is None:  # encrypted ones are in the sealed part
                expected = store.states[(ns, f"{kind}/{bid}", when)]
                assert {p.decode() for p in state} == set(expected)
        unencrypted_done = sum(1 for key in partial.done_snapshots().values() if key is None)
        partial.close()
        rerun = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        # The rest: 7 snapshots are readable without the key (the vault is not).
        assert json.loads(rerun.stdout)["indexed"] == 7 - unencrypted_done
    finally:
        proxy.close()
    whole = snapfs("search", store.path, "*.conf", "--index", index, "--no-refresh", "--json")
    assert _hits([json.loads(line) for line in whole.stdout.splitlines()]) == _expected_hits(
        store, "*.conf"
    )


def _done_snapshots(index: Path) -> int:
    if not index.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0  # not created yet


def _every_state(index: Path, keyfile: Path | None) -> dict:
    """Each archive of each series at each of its times, as the index answers it."""
    from snapfs.search.index import opened

    crypt = KeyOptions(str(keyfile), None).crypt_config() if keyfile else None
    with opened(str(index), crypt) as idx:
        return {
            (series, at): idx.state(series, at)
            for series in idx.series()
            for at in idx.archive_times(series)
        }


def _index_report(store: Store, index: Path, *args: object) -> dict:
    proc = store.run("index", store.path, "--index", index, "--json", *args, key=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # How many files were hashed and how many reused a known hash depends on which walks ran
    # at once; their sum does not.
    report["files"] = report.pop("hashed") + report.pop("reused_hashes")
    return {k: v for k, v in report.items() if k not in ("index", "seconds")}


def test_an_index_built_by_worker_processes_answers_as_one_built_here(store, tmp_path):
    here, spread = tmp_path / "here.sqlite", tmp_path / "spread.sqlite"
    report_here = _index_report(store, here)
    report_spread = _index_report(store, spread, "--workers", "2")
    assert report_spread == report_here
    assert report_here["indexed"] == 8 and report_here["failed"] == []
    states = _every_state(here, store.keyfile)
    assert states == _every_state(spread, store.keyfile)
    assert len(states) == 6  # web1 x4, prod/db, vault (sealed part, with the key)...
    # ...and a refresh after a new snapshot, by workers, adds only it, as one here does.
    copy = tmp_path / "ds"
    shutil.copytree(store.path, copy, symlinks=True)
    tree = tmp_path / "tree"
    _write(tree / "one.txt", b"one\n")
    backup(
        copy,
        [parse_backup_source(f"root.pxar:{tree}")],
        backup_type="host",
        backup_id="web2",
        backup_time=T0,
    )
    for index, extra in ((here, ()), (spread, ("--workers", "2"))):
        proc = store.run("index", copy, "--index", index, "--json", *extra, key=True)
        assert json.loads(proc.stdout)["indexed"] == 1, proc.stderr
    assert _every_state(here, store.keyfile) == _every_state(spread, store.keyfile)


@pytest.mark.slow
def test_an_index_built_on_a_dask_cluster_answers_as_one_built_here(store, tmp_path):
    from distributed import LocalCluster

    here, spread = tmp_path / "here.sqlite", tmp_path / "cluster.sqlite"
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        report = _index_report(store, spread, "--cluster", cluster.scheduler_address)
    assert report == _index_report(store, here)
    assert _every_state(here, store.keyfile) == _every_state(spread, store.keyfile)
