"""S3 source against real S3 servers holding the golden vectors in PBS 4's S3 layout: each test runs
against SeaweedFS and moto (`any_s3server`), but for the identity tests, SeaweedFS only (moto does
not check credentials).

snapfs always runs with the Read+List identity. Faults are injected with botocore event hooks in
front of the real server (the only mock: the fault itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ReadTimeoutError
from support.s3server import (
    ADMIN_KEY,
    BUCKET,
    READER_KEY,
    READER_SECRET,
    VECTOR_STORE,
    upload_datastore,
)
from support.vectors import IMAGE_SHA256

from snapfs.errors import MissingChunkError, NotFoundError, SnapfsError
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.chunks import ChunkReader
from snapfs.store.diskcache import DiskCache
from snapfs.store.s3 import S3Backend
from snapfs.store.s3_requests import S3Settings

pytestmark = pytest.mark.slow

SNAPFS = [sys.executable, "-m", "snapfs"]
PASSWORD = "pbs-vector-password"
ZERO_CHUNK = bytes.fromhex("bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8")

# (namespace, snapshot, archive, needs key, sha256 of the output) from vectors/README.md.
GOLDEN_CATS = [
    ("", "vm/100/2024-06-01T10:00:00Z", "drive-scsi0.img", False, IMAGE_SHA256),
    ("", "vm/100/2024-06-01T14:00:00Z", "drive-scsi0.img", True, IMAGE_SHA256),
    (
        "",
        "vm/100/2024-06-01T10:00:00Z",
        "qemu-server.conf",
        False,
        "f761bfd3d0dabde4013a104a322bc6df7444cd0dbd63166d5b7772c275139ed1",
    ),
    (
        "",
        "vm/100/2024-06-01T14:00:00Z",
        "qemu-server.conf",
        True,
        "f761bfd3d0dabde4013a104a322bc6df7444cd0dbd63166d5b7772c275139ed1",
    ),
    (
        "",
        "ct/200/2024-06-01T15:00:00Z",
        "pct.conf",
        False,
        "365bdc613944729e9bb7a08fc464a8d70f572c6fc47f5b9e503e1a8b742045ed",
    ),
    (
        "",
        "host/testhost/2024-06-01T11:00:00Z",
        "catalog.pcat1.didx",
        False,
        "bd240c3c21d41fc476e39a2c4206999591b688eaa38a6e94bd4c21cc3f4a1ba6",
    ),
    (
        "",
        "host/testhost/2024-06-01T11:00:00Z",
        "root.pxar/big_random.bin",
        False,
        "37681c77c203e37a25894e7d8684ad78e70f00e9f5018bcc9bf4d7ff1a17c66c",
    ),
    (
        "",
        "host/testhost/2024-06-01T12:00:00Z",
        "root.pxar/big_random.bin",
        True,
        "37681c77c203e37a25894e7d8684ad78e70f00e9f5018bcc9bf4d7ff1a17c66c",
    ),
    (
        "testns",
        "host/splithost/2024-06-01T13:00:00Z",
        "root.pxar/dir_a/nested/notes.txt",
        False,
        "d5800ae41f41421689387ef4131098535801f01f93d3f5719c5cb4d6574074b8",
    ),
]


def run_snapfs(
    server, *args: str, secret: str = READER_SECRET, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    env = server.reader_env(secret)
    env.update(env_extra or {})
    return subprocess.run([*SNAPFS, *args], capture_output=True, env=env, timeout=120)


def reader_backend(server, store: str = VECTOR_STORE, **settings) -> S3Backend:
    client = server.client(READER_KEY, READER_SECRET)
    return S3Backend(BUCKET, store, S3Settings(**settings), client=client)


def fresh_store(server, tmp_path: Path, vectors: Path, name: str) -> tuple[Path, str]:
    """A private copy of the vectors datastore, locally and in the bucket, for tests that change it."""
    local = tmp_path / name
    shutil.copytree(vectors / "datastore", local)
    upload_datastore(server.client(), BUCKET, name, local)
    return local, name


def walk_local(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        if rel.startswith(".chunks"):
            continue
        yield rel, sorted(d for d in dirnames if d != ".chunks"), sorted(filenames)


# -- the same datastore, local and in S3 ---------------------------------------------------------


def test_snapshots_json_matches_local(any_s3server, any_s3_vectors, vectors):
    local = run_snapfs(any_s3server, "snapshots", "--json", str(vectors / "datastore"))
    remote = run_snapfs(
        any_s3server, "snapshots", "--json", any_s3_vectors, "--endpoint-url", any_s3server.endpoint
    )
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert len(json.loads(remote.stdout)) == 6
    assert remote.stdout == local.stdout


@pytest.mark.parametrize(("ns", "snapshot", "archive", "keyed", "expected"), GOLDEN_CATS)
def test_cat_matches_golden(
    any_s3server, any_s3_vectors, vectors, ns, snapshot, archive, keyed, expected
):
    extra = ["--ns", ns] if ns else []
    if keyed:
        extra += ["--keyfile", str(vectors / "keys" / "key-pbkdf2.json")]
    env = {"SNAPFS_KEY_PASSWORD": PASSWORD}
    remote = run_snapfs(
        any_s3server,
        "cat",
        any_s3_vectors,
        snapshot,
        archive,
        "--endpoint-url",
        any_s3server.endpoint,
        *extra,
        env_extra=env,
    )
    assert remote.returncode == 0, remote.stderr
    assert hashlib.sha256(remote.stdout).hexdigest() == expected
    local = run_snapfs(
        any_s3server, "cat", str(vectors / "datastore"), snapshot, archive, *extra, env_extra=env
    )
    assert local.stdout == remote.stdout


def test_every_listing_file_and_chunk_matches_local(any_s3server, any_s3_vectors, vectors):
    root = vectors / "datastore"
    local = LocalBackend(root)
    remote = reader_backend(any_s3server)
    for rel, dirs, files in walk_local(root):
        listing = remote.list_dir(rel)
        assert listing.dirs == dirs, rel
        parts = rel.split("/") if rel else []
        is_namespace = len(parts) % 2 == 0 and parts != [] and all(p == "ns" for p in parts[::2])
        expected_files = [f for f in files if rel or f != ".lock"] + (
            [".namespace"] if is_namespace else []
        )
        assert listing.files == sorted(expected_files), rel
        for name in files:
            if rel or name != ".lock":
                path = f"{rel}/{name}" if rel else name
                assert remote.read_file(path) == local.read_file(path), path
    chunk_files = list((root / ".chunks").glob("*/*"))
    assert len(chunk_files) == 85
    for chunk in chunk_files:
        digest = bytes.fromhex(chunk.name)
        assert remote.read_chunk(digest) == chunk.read_bytes()
    assert remote.list_dir(".chunks").dirs == [] and remote.list_dir(".chunks/bb9f").files == []


def test_missing_objects(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server)
    with pytest.raises(
        MissingChunkError,
        match="chunk 00ff" + "00" * 30 + " is missing from s3://pbs-bucket/store1",
    ):
        remote.read_chunk(bytes.fromhex("00ff" + "00" * 30))
    with pytest.raises(NotFoundError, match="no such file vm/100/notes"):
        remote.read_file("vm/100/notes")
    assert remote.list_dir("vm/999") == remote.list_dir("no/such/folder")
    assert remote.list_dir("vm/999").dirs == []


def test_protected_incomplete_and_nested_namespaces_match_local(any_s3server, vectors, tmp_path):
    local = tmp_path / "store2"
    shutil.copytree(vectors / "datastore", local)
    (local / "vm/100/2024-06-01T10:00:00Z/.protected").touch()
    (local / "host/testhost/2024-06-01T12:00:00Z/index.json.blob").unlink()  # incomplete
    deep = local / "ns/testns/ns/deep/ns/deeper"
    shutil.copytree(local / "ct/200", deep / "ct/200")
    (local / "ns/empty").mkdir(parents=True)  # a namespace with nothing in it: only .namespace
    upload_datastore(any_s3server.client(), BUCKET, "store2", local)
    outputs = [
        run_snapfs(any_s3server, "snapshots", "--json", source, *opts)
        for source, opts in (
            (str(local), []),
            (f"s3://{BUCKET}/store2", ["--endpoint-url", any_s3server.endpoint]),
        )
    ]
    assert outputs[0].returncode == 0 and outputs[1].returncode == 0, outputs[1].stderr
    assert outputs[1].stdout == outputs[0].stdout
    records = json.loads(outputs[1].stdout)
    states = {(r["ns"], r["snapshot"]): (r["state"], r["protected"]) for r in records}
    assert states[("", "vm/100/2024-06-01T10:00:00Z")] == ("complete", True)
    assert states[("", "host/testhost/2024-06-01T12:00:00Z")] == ("incomplete", False)
    assert states[("testns/deep/deeper", "ct/200/2024-06-01T15:00:00Z")] == ("complete", False)
    remote = reader_backend(any_s3server, "store2")
    assert remote.list_dir("ns").dirs == ["empty", "testns"]


# -- read-only --------------------------------------------------------------------------------------


def test_reader_identity_is_read_only(s3server, s3_vectors):
    reader = s3server.client(READER_KEY, READER_SECRET)
    assert (
        reader.get_object(Bucket=BUCKET, Key=f"{VECTOR_STORE}/.cnt/vm/100/owner")["Body"].read()
        == b"root@pam\n"
    )
    for attempt in (
        lambda: reader.put_object(
            Bucket=BUCKET, Key=f"{VECTOR_STORE}/.cnt/vm/100/owner", Body=b"evil\n"
        ),
        lambda: reader.delete_object(Bucket=BUCKET, Key=f"{VECTOR_STORE}/.cnt/vm/100/owner"),
    ):
        with pytest.raises(ClientError) as info:
            attempt()
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert (
        reader.get_object(Bucket=BUCKET, Key=f"{VECTOR_STORE}/.cnt/vm/100/owner")["Body"].read()
        == b"root@pam\n"
    )


# -- request counting, single flight ------------------------------------------------------------------


def test_reading_a_chunk_twice_is_one_get(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server)
    cache = ChunkCache()
    remote.memory_cache = cache
    reader = ChunkReader(remote, cache=cache)
    before = remote.stats()["get_requests"]
    first = reader.read_chunk(ZERO_CHUNK)
    second = reader.read_chunk(ZERO_CHUNK)
    assert first == second == bytes(4 * 1024 * 1024)
    stats = remote.stats()
    assert stats["get_requests"] - before == 1
    assert stats["memory_cache_hits"] == 1


class _CountingDict(dict):
    """The backend's in-flight table, counting lookups so the test knows all readers arrived."""

    def __init__(self, arrived: threading.Condition) -> None:
        super().__init__()
        self.lookups = 0
        self.arrived = arrived

    def get(self, key, default=None):
        with self.arrived:
            self.lookups += 1
            self.arrived.notify_all()
        return super().get(key, default)


def test_sixteen_readers_of_one_chunk_make_one_get(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server)
    arrived = threading.Condition()
    remote._flights._calls = _CountingDict(arrived)
    release = threading.Event()

    def hold(**_kwargs):
        # Keep the one GET in flight until all 16 readers have looked for it.
        with arrived:
            arrived.wait_for(lambda: remote._flights._calls.lookups >= 16, timeout=30)
        release.set()

    remote._client.meta.events.register("before-send.s3.GetObject", hold)
    before = remote.stats()["get_requests"]
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(remote.read_chunk(ZERO_CHUNK)))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert release.is_set()
    assert len(results) == 16 and all(r == results[0] for r in results)
    assert remote.stats()["get_requests"] - before == 1


def test_prefetch_serves_later_reads_without_new_gets(any_s3server, any_s3_vectors, vectors):
    remote = reader_backend(any_s3server, connections=4)
    digests = [
        bytes.fromhex(p.name) for p in sorted((vectors / "datastore" / ".chunks").glob("*/*"))
    ][:12]
    remote.prefetch(digests)
    datas = [remote.read_chunk(d) for d in digests]
    assert datas == [
        (vectors / "datastore" / ".chunks" / d.hex()[:4] / d.hex()).read_bytes() for d in digests
    ]
    assert remote.stats()["get_requests"] == 12
    assert remote._ready_bytes == 0 and not remote._ready  # every parked chunk was handed out once
    remote.close()


def test_an_image_restore_names_each_chunk_to_prefetch_before_it_reads_it(
    any_s3server, any_s3_vectors, tmp_path
):
    """`snapfs restore` of an image keeps GETs running ahead of its decoders (at 20 ms a round
    trip, 4 decoders alone would wait on the network): every chunk is hinted before it is read,
    fetched once, and the image is the golden one."""
    from snapfs.restore.image import ImageTarget, restore_image
    from snapfs.store.datastore import Datastore, parse_snapshot
    from snapfs.views.archives import SnapshotReader

    remote = reader_backend(any_s3server, connections=4)
    hinted: list[bytes] = []
    read_before_hint: list[bytes] = []
    prefetch, read_chunk = remote.prefetch, remote.read_chunk

    def recording_prefetch(digests):
        digests = list(digests)
        hinted.extend(digests)
        prefetch(digests)

    def recording_read(digest):
        if digest not in hinted:
            read_before_hint.append(digest)
        return read_chunk(digest)

    remote.prefetch, remote.read_chunk = recording_prefetch, recording_read
    reader = SnapshotReader(Datastore(remote), parse_snapshot("vm/100/2024-06-01T10:00:00Z"))
    stream = reader.stream("drive-scsi0.img")
    target = tmp_path / "disk.raw"
    gets_before = remote.stats()["get_requests"]  # the manifest and the index
    assert restore_image(stream, ImageTarget(str(target))).ok
    assert hashlib.sha256(target.read_bytes()).hexdigest() == IMAGE_SHA256
    distinct = {stream.index.digest(i) for i in range(stream.index.chunk_count)}
    assert set(hinted) == distinct and not read_before_hint
    assert remote.stats()["get_requests"] - gets_before == len(distinct)
    remote.close()


# -- retries ---------------------------------------------------------------------------------------


def _fail_first(n: int, status: int = 503, code: str = "SlowDown"):
    state = {"left": n}

    def inject(request, **_kwargs):
        if state["left"] <= 0:
            return None
        state["left"] -= 1
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()

        class Raw:
            def stream(self, **_kw):
                yield body

        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Raw())

    return inject


def test_retries_on_503_then_succeeds(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server, backoff_base=0.01)
    remote._client.meta.events.register("before-send.s3.GetObject", _fail_first(2))
    assert remote.read_chunk(ZERO_CHUNK)[:10] != b""
    stats = remote.stats()
    assert (stats["get_requests"], stats["retries"], stats["throttled"], stats["errors"]) == (
        3,
        2,
        2,
        0,
    )


def test_retries_on_timeouts_and_500(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server, backoff_base=0.01)
    state = {"timeouts": 1}

    def timeout_once(request, **_kwargs):
        if state["timeouts"]:
            state["timeouts"] -= 1
            raise ReadTimeoutError(endpoint_url=request.url)
        return None

    remote._client.meta.events.register("before-send.s3.GetObject", timeout_once)
    remote._client.meta.events.register(
        "before-send.s3.GetObject", _fail_first(1, 500, "InternalError")
    )
    assert remote.read_file("vm/100/owner") == b"root@pam\n"
    assert remote.stats()["retries"] == 2


def test_gives_up_with_one_clear_line(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server, backoff_base=0.01, max_attempts=3)
    remote._client.meta.events.register("before-send.s3.GetObject", _fail_first(100))
    with pytest.raises(SnapfsError) as info:
        remote.read_chunk(ZERO_CHUNK)
    message = str(info.value)
    assert message == (
        f"s3://{BUCKET}/{VECTOR_STORE}: chunk {ZERO_CHUNK.hex()}: HTTP 503 SlowDown (gave up after 3 attempts)"
    )
    assert remote.stats()["get_requests"] == 3


# -- listing cache ---------------------------------------------------------------------------------


def test_listings_are_cached_until_refresh(any_s3server, vectors, tmp_path):
    local, store = fresh_store(any_s3server, tmp_path, vectors, "store3")
    remote = reader_backend(any_s3server, store)
    assert remote.list_dir("vm/100").dirs == ["2024-06-01T10:00:00Z", "2024-06-01T14:00:00Z"]
    lists = remote.stats()["list_requests"]
    # The group listing was recursive: its snapshot folders cost nothing more.
    assert remote.list_dir("vm/100/2024-06-01T10:00:00Z").files == [
        "drive-scsi0.img.fidx",
        "index.json.blob",
        "qemu-server.conf.blob",
    ]
    assert remote.stats()["list_requests"] == lists
    admin = any_s3server.client()
    admin.put_object(
        Bucket=BUCKET, Key=f"{store}/.cnt/vm/100/2024-06-02T00:00:00Z/index.json.blob", Body=b"x"
    )
    assert len(remote.list_dir("vm/100").dirs) == 2
    remote.refresh()
    assert remote.list_dir("vm/100").dirs[-1] == "2024-06-02T00:00:00Z"

    expiring = reader_backend(any_s3server, store, list_ttl=0.0)
    before = expiring.stats()["list_requests"]
    expiring.list_dir("vm")
    expiring.list_dir("vm")
    assert expiring.stats()["list_requests"] - before == 2


# -- disk cache ------------------------------------------------------------------------------------

_CAT_SCRIPT = """
import hashlib, json, sys
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.store.sources import BackendOptions, open_backend
from snapfs.views.archives import open_snapshot_file
backend = open_backend(sys.argv[1], options=BackendOptions(endpoint_url=sys.argv[2], cache_dir=sys.argv[3]))
datastore = Datastore(backend)
stream = open_snapshot_file(datastore, parse_snapshot("vm/100/2024-06-01T10:00:00Z"), "drive-scsi0.img", None)
digest = hashlib.sha256()
for block in stream.iter_range():
    digest.update(block)
print(json.dumps({"sha256": digest.hexdigest(), "stats": backend.stats()}))
"""


def _cat_with_cache(server, source: str, cache_dir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CAT_SCRIPT, source, server.endpoint, str(cache_dir)],
        capture_output=True,
        env=server.reader_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_disk_cache_survives_a_new_process_and_detects_corruption(
    any_s3server, any_s3_vectors, tmp_path
):
    cache_dir = tmp_path / "cache"
    first = _cat_with_cache(any_s3server, any_s3_vectors, cache_dir)
    assert first["sha256"] == IMAGE_SHA256
    assert first["stats"]["disk_cache_misses"] >= 3 and first["stats"]["bytes_downloaded"] > 0

    second = _cat_with_cache(any_s3server, any_s3_vectors, cache_dir)
    assert second["sha256"] == IMAGE_SHA256
    stats = second["stats"]
    assert (
        stats["bytes_downloaded"] == 0
    )  # chunks from disk; the index and manifest revalidated (304)
    assert stats["get_requests"] == stats["not_modified"] == 2
    assert stats["disk_cache_hits"] == 3 + 2

    records = sorted((cache_dir).glob("*/chunks/*/*"))
    assert len(records) == 3  # three distinct chunks (two of the four are the same zeros)
    victim = records[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(raw)
    third = _cat_with_cache(any_s3server, any_s3_vectors, cache_dir)
    assert third["sha256"] == IMAGE_SHA256
    assert third["stats"]["disk_cache_corrupt"] == 1
    assert third["stats"]["get_requests"] == 2 + 1


def test_cached_file_notices_a_changed_object(any_s3server, vectors, tmp_path):
    _, store = fresh_store(any_s3server, tmp_path, vectors, "store4")
    cache_dir = tmp_path / "cache"

    def open_cached() -> DiskCache:
        return DiskCache(reader_backend(any_s3server, store), cache_dir, 1 << 30, min_free_bytes=0)

    assert open_cached().read_file("vm/100/owner") == b"root@pam\n"
    any_s3server.client().put_object(
        Bucket=BUCKET, Key=f"{store}/.cnt/vm/100/owner", Body=b"backup@pbs\n"
    )
    cached = open_cached()
    assert cached.read_file("vm/100/owner") == b"backup@pbs\n"
    # With the group listed, the listing's ETag vouches for the cached copy: no GET at all.
    again = open_cached()
    again.list_dir("vm/100")
    before = again.stats()["get_requests"]
    assert again.read_file("vm/100/owner") == b"backup@pbs\n"
    assert again.stats()["get_requests"] == before


# -- errors: one line, no secrets ---------------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess, *secrets: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    stderr = result.stderr.decode()
    for secret in secrets:
        assert secret not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_wrong_secret_is_named_and_never_printed(s3server, s3_vectors):
    wrong = "Wr0ngSecretValue-0123456789-abcdef"
    result = run_snapfs(
        s3server, "snapshots", s3_vectors, "--endpoint-url", s3server.endpoint, secret=wrong
    )
    line = _one_line_error(result, wrong, READER_SECRET)
    assert "SignatureDoesNotMatch" in line and "403" in line
    debug = run_snapfs(
        s3server,
        "--debug",
        "snapshots",
        s3_vectors,
        "--endpoint-url",
        s3server.endpoint,
        secret=wrong,
    )
    assert (
        debug.returncode != 0
        and wrong.encode() not in debug.stderr
        and READER_SECRET.encode() not in debug.stderr
    )


def test_source_errors_are_named(any_s3server, any_s3_vectors):
    endpoint = ["--endpoint-url", any_s3server.endpoint]
    line = _one_line_error(
        run_snapfs(any_s3server, "snapshots", f"s3://no-such-bucket/{VECTOR_STORE}", *endpoint),
        READER_SECRET,
    )
    assert "no such bucket" in line
    line = _one_line_error(
        run_snapfs(any_s3server, "snapshots", f"s3://{BUCKET}/nostore", *endpoint), READER_SECRET
    )
    assert f"s3://{BUCKET}/nostore: no such datastore" in line and VECTOR_STORE in line
    from support.s3server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    line = _one_line_error(
        run_snapfs(any_s3server, "snapshots", any_s3_vectors, "--endpoint-url", dead), READER_SECRET
    )
    assert f"cannot reach S3 endpoint {dead}" in line
    no_credentials = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    line = _one_line_error(
        run_snapfs(any_s3server, "snapshots", any_s3_vectors, *endpoint, env_extra=no_credentials)
    )
    assert "no S3 credentials found" in line
    line = _one_line_error(
        run_snapfs(any_s3server, "snapshots", any_s3_vectors, *endpoint, "--profile", "nosuch"),
        READER_SECRET,
    )
    assert "profile 'nosuch' not found" in line
    assert ADMIN_KEY  # the admin identity exists only for the uploader
