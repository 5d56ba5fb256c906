"""S3 quirks against both server implementations (SeaweedFS and moto, `any_s3server`).

Listings of more keys than one page (continuation tokens), the bucket's root (an empty prefix),
keys with characters that need escaping, path-style and virtual-host addressing; and, through a
proxy in front of the real server (the faults a healthy server never produces), throttling
answers (503 SlowDown, 429) and bodies that disagree with their Content-Length.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.faultproxy import Fault, FaultProxy, s3_error
from support.s3server import BUCKET, READER_KEY, READER_SECRET, VECTOR_STORE, upload_datastore
from support.vectors import IMAGE_SHA256

from snapfs.errors import SnapfsError
from snapfs.store.backend import LocalBackend
from snapfs.store.chunks import ChunkReader
from snapfs.store.s3 import S3Backend
from snapfs.store.s3_requests import S3Settings

pytestmark = pytest.mark.slow

IMAGE = ("vm/100/2024-06-01T10:00:00Z", "drive-scsi0.img")
ODD_SNAPSHOT = "host/odd/2024-06-01T10:00:00Z"
# Names S3 clients must escape: in the URL of a GET, and in a ListObjectsV2 answer (XML, and
# EncodingType=url, which botocore asks for and undoes).
ODD_NAMES = [
    "a b.txt",
    "plus+sign",
    "percent%20sign",
    "amp&eq=q?x",
    "ünïcødé-ß.txt",
    "tilde~star*",
    "semi;colon,comma",
    "quote'd\"double",
    "hash#tag",
    "less<than>greater",
]


def page_size(backend: S3Backend, keys: int) -> None:
    """Ask for at most `keys` keys per ListObjectsV2 page (MaxKeys; the default page is 1000)."""

    def limit(params, **_kwargs):
        params["MaxKeys"] = keys

    backend._client.meta.events.register("before-parameter-build.s3.ListObjectsV2", limit)


def reader_backend(server, store: str = VECTOR_STORE, **settings) -> S3Backend:
    client = server.client(READER_KEY, READER_SECRET)
    return S3Backend(BUCKET, store, S3Settings(**settings), client=client)


def own_client_backend(
    server, monkeypatch, endpoint: str, store: str = VECTOR_STORE, **settings
) -> S3Backend:
    """A backend with snapfs's own client (its config, its retries), not the test's; the client
    finds the read-only identity in this process's environment."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in server.reader_env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return S3Backend(BUCKET, store, S3Settings(endpoint_url=endpoint, **settings), check=False)


def through_proxy(server, monkeypatch, proxy, **settings) -> S3Backend:
    """snapfs's own client through the fault proxy: path-style (the proxy is one host name) and
    short backoffs unless `settings` say otherwise."""
    settings = {"path_style": True, "backoff_base": 0.01, **settings}
    return own_client_backend(server, monkeypatch, proxy.endpoint, **settings)


def walk_and_compare(remote: S3Backend, root: Path) -> int:
    """Every folder listing and file of `root` read through `remote`; the number of folders."""
    local = LocalBackend(root)
    folders = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        listing = remote.list_dir(rel)
        mine = local.list_dir(rel)
        assert listing.dirs == [d for d in mine.dirs if d != ".chunks"], rel
        for name in listing.files:
            path = f"{rel}/{name}" if rel else name
            if name != ".namespace":
                assert remote.read_file(path) == local.read_file(path), path
        stack += [f"{rel}/{d}" if rel else d for d in listing.dirs]
        folders += 1
    return folders


# -- listings --------------------------------------------------------------------------------------


def test_listing_in_pages_of_two_keys_matches_one_page(any_s3server, any_s3_vectors, vectors):
    """MaxKeys=2: every listing takes several pages, joined by continuation tokens."""
    whole = reader_backend(any_s3server)
    folders = walk_and_compare(whole, vectors / "datastore")
    one_page = whole.stats()["list_requests"]
    paged = reader_backend(any_s3server)
    page_size(paged, 2)
    assert walk_and_compare(paged, vectors / "datastore") == folders
    assert paged.stats()["list_requests"] > one_page
    # One group's recursive listing: exactly one page per two keys.
    keys = any_s3server.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"{VECTOR_STORE}/.cnt/host/testhost/"
    )["KeyCount"]
    group = reader_backend(any_s3server)
    page_size(group, 2)
    before = group.stats()["list_requests"]
    assert group.list_dir("host/testhost").dirs == whole.list_dir("host/testhost").dirs
    assert group.stats()["list_requests"] - before == (keys + 1) // 2 and keys > 4


def test_empty_prefix_lists_the_bucket_root(any_s3server, any_s3_vectors):
    remote = reader_backend(any_s3server)
    prefixes, objects = remote._list("", "/", "listing the bucket")
    assert f"{VECTOR_STORE}/" in prefixes and objects == []
    page_size(remote, 1)
    assert remote._list("", "/", "listing the bucket")[0] == prefixes
    assert remote._list("no-such-prefix/", "/", "listing nothing") == ([], [])


@pytest.fixture(scope="session")
def odd_store(any_s3server, vectors, tmp_path_factory) -> tuple[str, Path]:
    """A datastore with one snapshot whose files have names that need escaping."""
    local = tmp_path_factory.mktemp("odd") / "oddstore"
    shutil.copytree(vectors / "datastore", local, ignore=shutil.ignore_patterns(".chunks"))
    folder = local / ODD_SNAPSHOT
    (folder / "dir with space").mkdir(parents=True)
    for i, name in enumerate(ODD_NAMES):
        (folder / name).write_bytes(f"{i}:{name}\n".encode())
        (folder / "dir with space" / name).write_bytes(name.encode()[::-1])
    upload_datastore(any_s3server.client(), BUCKET, "oddstore", local)
    return "oddstore", local


@pytest.mark.parametrize("keys_per_page", [1000, 3])
def test_keys_with_special_characters(any_s3server, odd_store, keys_per_page):
    store, local = odd_store
    remote = reader_backend(any_s3server, store)
    page_size(remote, keys_per_page)
    listing = remote.list_dir(ODD_SNAPSHOT)  # part of the group's one recursive listing
    assert listing.files == sorted(ODD_NAMES) and listing.dirs == ["dir with space"]
    assert remote.list_dir(f"{ODD_SNAPSHOT}/dir with space").files == sorted(ODD_NAMES)
    for name in ODD_NAMES:
        for path in (f"{ODD_SNAPSHOT}/{name}", f"{ODD_SNAPSHOT}/dir with space/{name}"):
            assert remote.read_file(path) == (local / path).read_bytes(), path
    fresh = reader_backend(any_s3server, store)  # one level at a time, not the group's tree
    page_size(fresh, keys_per_page)
    assert fresh.list_dir("host").dirs == ["odd", "testhost"]


def test_a_continuation_token_that_repeats_is_an_error_not_a_loop(any_s3server, any_s3_vectors):
    """A server that hands back the token it was given would list forever."""
    remote = reader_backend(any_s3server)
    page_size(remote, 1)

    sent: list[str] = []

    def note(params, **_kwargs):
        sent.append(params.get("ContinuationToken", ""))

    def same_token(parsed, **_kwargs):
        if sent[-1]:
            parsed["NextContinuationToken"] = sent[-1]

    remote._client.meta.events.register("before-parameter-build.s3.ListObjectsV2", note)
    remote._client.meta.events.register("after-call.s3.ListObjectsV2", same_token)
    with pytest.raises(SnapfsError) as info:
        remote.list_dir("vm/100")
    assert str(info.value) == (
        f"s3://{BUCKET}/{VECTOR_STORE}: listing vm/100: the server repeated a continuation token "
        "(a listing that never ends)"
    )


# -- addressing ------------------------------------------------------------------------------------


def resolve_localhost_subdomains(monkeypatch) -> None:
    """Resolve NAME.localhost like localhost (RFC 6761 §6.3, as systemd-resolved does): this
    machine's resolver (files, dns) does not, and virtual-host addressing needs BUCKET.localhost."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "localhost"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.mark.parametrize(
    ("option", "virtual"),
    [("path_style", False), ("virtual_host_style", True), (None, False)],
    ids=["path-style", "virtual-host-style", "default"],
)
def test_path_style_and_virtual_host_addressing(
    any_s3server,
    any_s3_vectors,
    vectors,
    monkeypatch,
    option,
    virtual,
):
    """By host name (localhost): --path-style sends /BUCKET/KEY to localhost, and so does the
    default with an --endpoint-url (botocore's "auto"); --virtual-host-style sends /KEY to
    BUCKET.localhost, and the server finds the bucket there."""
    resolve_localhost_subdomains(monkeypatch)
    endpoint = f"http://localhost:{any_s3server.port}"
    remote = own_client_backend(
        any_s3server, monkeypatch, endpoint, **({option: True} if option else {})
    )
    urls: list[str] = []
    remote._client.meta.events.register(
        "before-send.s3", lambda request, **_: urls.append(request.url)
    )
    remote.check_store()
    assert walk_and_compare(remote, vectors / "datastore") > 10
    digest, expected = first_chunk(vectors)
    assert remote.read_chunk(digest) == expected
    hosts = {urlsplit(u).netloc for u in urls}
    first_segments = {urlsplit(u).path.split("/")[1] for u in urls}
    if virtual:
        assert hosts == {f"{BUCKET}.localhost:{any_s3server.port}"}
        assert first_segments == {"", VECTOR_STORE}  # the bucket root, then keys
    else:
        assert hosts == {f"localhost:{any_s3server.port}"} and first_segments == {BUCKET}


def test_both_addressing_options_are_a_usage_error(any_s3server, any_s3_vectors):
    result = subprocess.run(
        [sys.executable, "-m", "snapfs", "snapshots", any_s3_vectors]
        + ["--endpoint-url", any_s3server.endpoint, "--path-style", "--virtual-host-style"],
        capture_output=True,
        env=any_s3server.reader_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "snapfs: error: --path-style and --virtual-host-style contradict each other\n"
    )


# -- faults through a proxy ------------------------------------------------------------------------


@pytest.fixture
def proxy(any_s3server) -> Iterator[FaultProxy]:
    url = urlsplit(any_s3server.endpoint)
    proxy = FaultProxy((url.hostname, url.port))
    try:
        yield proxy
    finally:
        proxy.close()


def first_chunk(vectors: Path) -> tuple[bytes, bytes]:
    path = sorted((vectors / "datastore" / ".chunks").glob("*/*"))[0]
    return bytes.fromhex(path.name), path.read_bytes()


def test_throttling_answers_are_retried_with_backoff(
    any_s3server, any_s3_vectors, vectors, proxy, monkeypatch, caplog
):
    digest, expected = first_chunk(vectors)
    proxy.add(Fault(f".chunks/{digest.hex()[:4]}/", 2, 503, s3_error("SlowDown")))
    proxy.add(Fault("list-type=2", 2, 429, b"Too Many Requests"))  # not even S3's XML
    caplog.set_level(logging.DEBUG, logger="snapfs.store.s3")
    remote = through_proxy(any_s3server, monkeypatch, proxy, backoff_base=0.05)
    remote.check_store()
    assert remote.read_chunk(digest) == expected
    stats = remote.stats()
    assert proxy.injected == 4
    assert (stats["throttled"], stats["retries"], stats["errors"]) == (4, 4, 0)
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert (
        len(waits) == 4
        and any("HTTP 429" in w for w in waits)
        and any("SlowDown" in w for w in waits)
    )


def test_throttling_end_to_end(any_s3server, any_s3_vectors, proxy):
    """`snapfs cat` with every chunk GET and the first listings throttled twice, default backoff."""
    proxy.add(Fault(".chunks/", 3, 503, s3_error("SlowDown")))
    proxy.add(Fault("list-type=2", 2, 429, s3_error("TooManyRequests")))
    result = subprocess.run(
        [sys.executable, "-m", "snapfs", "cat", any_s3_vectors, *IMAGE]
        + ["--endpoint-url", proxy.endpoint],
        capture_output=True,
        env=any_s3server.reader_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == IMAGE_SHA256
    assert proxy.injected == 5 and result.stderr == b""


def test_throttling_that_never_ends_gives_up_naming_the_object(
    any_s3server, any_s3_vectors, vectors, proxy, monkeypatch
):
    digest, _ = first_chunk(vectors)
    proxy.add(Fault(".chunks/", 100, 429, b""))
    remote = through_proxy(any_s3server, monkeypatch, proxy, max_attempts=3)
    with pytest.raises(SnapfsError) as info:
        remote.read_chunk(digest)
    assert str(info.value) == (
        f"s3://{BUCKET}/{VECTOR_STORE}: chunk {digest.hex()}: HTTP 429 (gave up after 3 attempts)"
    )


def test_a_body_shorter_than_its_content_length_is_retried(
    any_s3server, any_s3_vectors, vectors, proxy, monkeypatch
):
    """Content-Length says 100 bytes more than come before the connection closes."""
    digest, expected = first_chunk(vectors)
    proxy.add(Fault(f"/{digest.hex()}", 2, length_delta=100))
    remote = through_proxy(any_s3server, monkeypatch, proxy)
    assert remote.read_chunk(digest) == expected
    assert remote.stats()["retries"] == 2 and proxy.injected == 2

    proxy.add(Fault("/.cnt/vm/100/owner", 100, length_delta=3))
    remote = through_proxy(any_s3server, monkeypatch, proxy, max_attempts=3)
    with pytest.raises(SnapfsError) as info:
        remote.read_file("vm/100/owner")
    assert str(info.value).startswith(
        f"s3://{BUCKET}/{VECTOR_STORE}: file vm/100/owner: connection dropped while reading from "
        f"{proxy.endpoint}"
    )
    assert str(info.value).endswith("(gave up after 3 attempts)")


def test_a_content_length_shorter_than_the_object_never_gives_wrong_bytes(
    any_s3server, any_s3_vectors, vectors, proxy, monkeypatch
):
    """Content-Length says fewer bytes than the object has, and that many come: a chunk fails its
    own check; a file listed first fails against the size its listing gave."""
    digest, _ = first_chunk(vectors)
    proxy.add(Fault(f"/{digest.hex()}", 100, length_delta=-7))
    remote = through_proxy(any_s3server, monkeypatch, proxy, max_attempts=2)
    with pytest.raises(SnapfsError, match=f"^chunk {digest.hex()}: CRC mismatch "):
        ChunkReader(remote).read_chunk(digest)

    proxy.add(Fault("/.cnt/vm/100/owner", 100, length_delta=-3))
    remote.list_dir("vm/100")
    with pytest.raises(SnapfsError) as info:
        remote.read_file("vm/100/owner")
    assert str(info.value) == (
        f"s3://{BUCKET}/{VECTOR_STORE}: file vm/100/owner: the server sent 6 bytes of 9, the size "
        "its listing gave (gave up after 2 attempts)"
    )


def test_cat_through_wrong_content_lengths_fails_naming_the_chunk(
    any_s3server, any_s3_vectors, vectors, proxy
):
    proxy.add(Fault(".chunks/", 1000, length_delta=-7))
    result = subprocess.run(
        [sys.executable, "-m", "snapfs", "cat", any_s3_vectors, *IMAGE]
        + ["--endpoint-url", proxy.endpoint],
        capture_output=True,
        env=any_s3server.reader_env(),
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and READER_SECRET not in lines[0], result.stderr
    crc = r"CRC mismatch \(stored [0-9a-f]{8}, computed [0-9a-f]{8}\)"
    assert re.fullmatch(rf"snapfs: error: chunk [0-9a-f]{{64}}: {crc}", lines[0]), lines[0]
    local = subprocess.run(
        [sys.executable, "-m", "snapfs", "cat", str(vectors / "datastore"), *IMAGE],
        capture_output=True,
        timeout=120,
    )
    assert local.stdout.startswith(result.stdout) and len(result.stdout) < len(local.stdout)
