"""`snapfs serve` over HTTP: a real server process on a store built here, driven with raw
requests. Ranges, concurrency, clients that go away, paths that try to leave the snapshot,
hostile file names, authentication, encrypted archives and the JSON API.

Every response any test here receives is checked for the host's /etc/passwd (`fetch`): symlinks
in the backup point at it, and paths try to reach it."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import html
import io
import json
import os
import random
import re
import socket
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes, urlencode

import pytest
import zstandard
from support.serving import (
    Server,
    backup_image,
    backup_tree,
    check_zip,
    entries_below,
    make_keyfile,
    served,
    server_env,
    snapfs_command,
    strip_top,
    write,
)

from snapfs.format.crypt import format_fingerprint
from snapfs.keysource import KeyOptions

HOST_PASSWD = Path("/etc/passwd").read_bytes()
BIG_SIZE = (5 << 20) + 12345  # a few MiB, not a multiple of anything
HOSTILE_HTML = b"<html><body><script>alert(document.cookie)</script></body></html>\n"
HOSTILE_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\n'
NON_UTF8 = b"caf\xe9-\xff.txt"
UTF8 = "Übersicht – März.txt".encode()
CRLF_NAME = b'say "hi"\r\nSet-Cookie: stolen=1.txt'
PASSWORD = "correct horse battery staple"
TOKEN = "t0ken-" + "x" * 26


@dataclass
class Store:
    ds: Path
    tree: Path  # the source of the web snapshot (in namespace prod)
    web: str  # its path in the served tree, e.g. ns/prod/host/web/2024-06-01T00:00:00Z
    vault: str  # the encrypted snapshot
    secret: bytes  # the file in it
    image: Path  # the VM image's source
    vm: str
    keyfile: Path
    fingerprint: str
    env: dict[str, str]

    @property
    def snapshot(self) -> str:
        """The web snapshot's name, without its namespace."""
        return self.web.split("/", 2)[2]

    def api(self, **more: str | bytes) -> str:
        """The JSON API's query for the web snapshot's root.pxar, with `more`."""
        return urlencode({"ns": "prod", "snapshot": self.snapshot, "archive": "root.pxar", **more})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    base = tmp_path_factory.mktemp("serve")
    ds, tree = base / "ds", base / "tree"
    write(tree / "etc/hosts", b"127.0.0.1 localhost\n")
    write(tree / "etc/app/app.conf", b"answer = 42\n")
    write(tree / "etc/app/empty", b"")
    write(tree / "etc/app/sub/deep.txt", b"deep down\n" * 100)
    os.symlink("app.conf", tree / "etc/app/link")
    (tree / "etc/app/nothing").mkdir()
    os.chmod(tree / "etc/app/app.conf", 0o640)
    write(tree / "data/big.bin", random.Random(1).randbytes(BIG_SIZE))
    # A path that is an HTML tag (a name cannot hold "/": the tag's slash is a directory), and
    # single names that are markup.
    write(tree / "<script>alert(1)</script>.html", HOSTILE_HTML)
    write(tree / "<img src=x onerror=alert(1)>.html", HOSTILE_HTML)
    write(tree / "evil.svg", HOSTILE_SVG)
    write(tree / os.fsdecode(NON_UTF8), b"not UTF-8, still a name\n")
    write(tree / os.fsdecode(UTF8), b"UTF-8, not ASCII\n")
    write(tree / os.fsdecode(CRLF_NAME), b"a header in a name\n")
    os.symlink("/etc/passwd", tree / "abs-link")
    os.symlink("../../../../etc/passwd", tree / "rel-link")
    web = backup_tree(ds, tree, "host/web", ns=("prod",))

    keyfile = make_keyfile(base / "pbs.key")
    secret = b"the plan, encrypted at rest\n"
    write(base / "vault/plan.txt", secret)
    vault = backup_tree(ds, base / "vault", "host/vault", keyfile=keyfile)

    image = write(base / "disk.raw", random.Random(2).randbytes((6 << 20) + 4096))
    vm = backup_image(ds, image, "vm/100")
    fingerprint = format_fingerprint(KeyOptions(str(keyfile), None).crypt_config().fingerprint)
    env = server_env(base / "cache")
    return Store(ds, tree, web, vault, secret, image, vm, keyfile, fingerprint, env)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory) -> Server:
    log = tmp_path_factory.mktemp("serve-log") / "stderr"
    with served(store.ds, "--listen", "127.0.0.1:0", env=store.env, log=log) as running:
        yield running


@pytest.fixture(autouse=True)
def autouse_no_traceback(request):
    """No request of a test that uses the server leaves a traceback in its log."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    mark = len(server.stderr())
    yield
    logged = server.stderr()[mark:]
    assert "Traceback" not in logged, logged[-3000:]


def fetch(server: Server, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    """One request; no response may ever hold the host's /etc/passwd."""
    status, head, body = server.request(path, headers, method)
    assert HOST_PASSWD not in body and HOST_PASSWD.split(b"\n")[0] not in body, path
    return status, head, body


def raw_url(store: Store, rel: str | bytes, prefix: str = "/raw") -> str:
    rel = os.fsencode(rel)
    return f"{prefix}/{store.web}/root.pxar/" + "/".join(quote(n, safe="") for n in rel.split(b"/"))


def source(store: Store, rel: str | bytes) -> bytes:
    return (store.tree / os.fsdecode(rel)).read_bytes()


# -- ranges -----------------------------------------------------------------------------------------


def test_range_edge_cases(server, store):
    data = source(store, "data/big.bin")
    size = len(data)
    url = raw_url(store, "data/big.bin")
    cases = {  # Range header -> (first, last) of a 206, or None for 200 with the whole file
        "bytes=0-0": (0, 0),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
        "bytes=-1": (size - 1, size - 1),
        "bytes=-1000": (size - 1000, size - 1),
        f"bytes=-{size + 1000}": (0, size - 1),  # a suffix longer than the file: all of it
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=1000-": (1000, size - 1),
        f"bytes=100-{size + 5000}": (100, size - 1),  # the end clamps to the file
        "bytes=1048570-1048590": (1048570, 1048590),  # across a block of the server
        "bytes=abc": None,
        "bytes=5-2": None,
        "bytes=1-2-3": None,
        "lines=1-2": None,
        "bytes=": None,
        "bytes=-": None,
    }
    for header, expected in cases.items():
        status, head, body = fetch(server, url, {"Range": header})
        assert head["Accept-Ranges"] == "bytes"
        if expected is None:
            assert status == 200, header
            assert body == data, header
            assert "Content-Range" not in head
            continue
        first, last = expected
        assert status == 206, header
        assert head["Content-Range"] == f"bytes {first}-{last}/{size}", header
        assert int(head["Content-Length"]) == last - first + 1 == len(body), header
        assert body == data[first : last + 1], header
    for header in (
        f"bytes={size}-",
        f"bytes={size + 100}-",
        f"bytes={size}-{size + 9}",
        "bytes=-0",
    ):
        status, head, body = fetch(server, url, {"Range": header})
        assert status == 416, header
        assert head["Content-Range"] == f"bytes */{size}", header
    # An empty file has no byte to send.
    status, head, _ = fetch(server, raw_url(store, "etc/app/empty"), {"Range": "bytes=0-"})
    assert status == 416 and head["Content-Range"] == "bytes */0"
    status, _, body = fetch(server, raw_url(store, "etc/app/empty"))
    assert status == 200 and body == b""


def _parts(head, body: bytes) -> list[tuple[str, str, bytes]]:
    """The parts of a multipart/byteranges body: (Content-Type, Content-Range, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + head["Content-Type"].encode() + b"\r\n\r\n" + body
    )
    assert message.is_multipart()
    return [
        (part["Content-Type"], part["Content-Range"], part.get_payload(decode=True))
        for part in message.iter_parts()
    ]


def test_multiple_ranges_are_multipart_byteranges(server, store):
    data = source(store, "data/big.bin")
    size = len(data)
    url = raw_url(store, "data/big.bin")
    ranges = [(0, 0), (10, 99), (size - 5, size - 1), (3 << 20, (3 << 20) + 70000)]
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in ranges) + f",-3,{size}-"
    status, head, body = fetch(server, url, {"Range": header})
    assert status == 206
    assert head["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert int(head["Content-Length"]) == len(body)
    parts = _parts(head, body)
    expected = [*ranges, (size - 3, size - 1)]  # the unsatisfiable range is left out
    assert len(parts) == len(expected)
    for (media, content_range, payload), (first, last) in zip(parts, expected, strict=True):
        assert media == "application/octet-stream"
        assert content_range == f"bytes {first}-{last}/{size}"
        assert payload == data[first : last + 1]
    # Too many ranges: the whole file, not thousands of parts.
    many = "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2000, 2))
    status, head, body = fetch(server, url, {"Range": many})
    assert status == 200 and body == data


def _raw_exchange(server: Server, request: bytes) -> bytes:
    """Everything the server sends for `request` until it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert HOST_PASSWD not in received
    return received


def test_head_gives_the_headers_and_no_body(server, store):
    data = source(store, "data/big.bin")
    url = raw_url(store, "data/big.bin")
    for extra, status, length in (
        ("", 200, len(data)),
        ("Range: bytes=10-19\r\n", 206, 10),
        ("Range: bytes=0-0,5-9\r\n", 206, None),
    ):
        received = _raw_exchange(
            server,
            f"HEAD {url} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n".encode(),
        )
        head, _, rest = received.partition(b"\r\n\r\n")
        assert rest == b"", extra  # not one byte of body
        lines = head.decode().split("\r\n")
        assert lines[0].split()[1] == str(status)
        fields = dict(line.split(": ", 1) for line in lines[1:])
        fields = {k.lower(): v for k, v in fields.items()}
        if length is not None:
            assert int(fields["content-length"]) == length
        assert fields["accept-ranges"] == "bytes" and fields["etag"]
        # GET sends exactly the body HEAD announced.
        got_status, got_head, body = fetch(
            server, url, {"Range": extra.split(": ", 1)[1].strip()} if extra else {}
        )
        assert got_status == status and int(fields["content-length"]) == len(body)
        assert got_head["ETag"] == fields["etag"]


def test_etags_and_conditional_requests(server, store):
    data = source(store, "etc/hosts")
    url = raw_url(store, "etc/hosts")
    status, head, body = fetch(server, url)
    assert status == 200 and body == data
    etag = head["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert head["Last-Modified"]
    status, head, body = fetch(server, url, {"If-None-Match": etag})
    assert status == 304 and body == b"" and head["ETag"] == etag
    status, _, body = fetch(server, url, {"If-None-Match": f'"other", {etag}'})
    assert status == 304 and body == b""
    status, _, body = fetch(server, url, {"If-None-Match": "*"})
    assert status == 304 and body == b""
    status, _, body = fetch(server, url, {"If-None-Match": '"other"'})
    assert status == 200 and body == data
    status, head, body = fetch(server, url, {"Range": "bytes=2-5", "If-Range": etag})
    assert status == 206 and body == data[2:6]
    status, head, body = fetch(server, url, {"Range": "bytes=2-5", "If-Range": '"changed"'})
    assert status == 200 and body == data and "Content-Range" not in head
    # Another file has another tag; the same file in another request has the same one.
    assert fetch(server, raw_url(store, "etc/app/app.conf"))[1]["ETag"] != etag
    assert fetch(server, url)[1]["ETag"] == etag


# -- load -------------------------------------------------------------------------------------------


def test_64_concurrent_downloads_are_all_exact(server, store):
    big = source(store, "data/big.bin")
    image = store.image.read_bytes()
    small = {rel: source(store, rel) for rel in ("etc/hosts", "etc/app/sub/deep.txt")}
    image_url = "/api/raw?" + urlencode({"snapshot": store.vm, "archive": "drive-scsi0.img"})
    barrier = threading.Barrier(64)

    def one(number: int) -> None:
        rng = random.Random(number)
        kind = number % 4
        if kind == 0:
            url, data, header = raw_url(store, "data/big.bin"), big, None
        elif kind == 1:
            rel = rng.choice(sorted(small))
            url, data, header = raw_url(store, rel), small[rel], None
        else:
            url, data = (raw_url(store, "data/big.bin"), big) if kind == 2 else (image_url, image)
            first = rng.randrange(len(data))
            last = min(len(data) - 1, first + rng.randrange(1, 3 << 20))
            header = f"bytes={first}-{last}"
        conn = server.connection()
        try:
            barrier.wait(timeout=60)
            conn.request("GET", url, headers={"Range": header} if header else {})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if header is None:
            assert response.status == 200, url
            assert body == data, url
        else:
            assert response.status == 206, (url, header)
            assert body == data[first : last + 1], (url, header)

    with ThreadPoolExecutor(max_workers=64) as pool:
        assert len(list(pool.map(one, range(64)))) == 64  # each one's failure is raised here


def _usage(pid: int) -> tuple[int, int]:
    """Open file descriptors and threads of a process."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def test_clients_that_disconnect_mid_stream_leak_nothing(server, store):
    data = source(store, "data/big.bin")
    url = raw_url(store, "data/big.bin")
    assert fetch(server, url)[2] == data  # warm: caches and worker threads exist
    base_fds, base_threads = _usage(server.proc.pid)
    requests = [
        f"GET {url} HTTP/1.1\r\nHost: test\r\n\r\n".encode(),
        f"GET {url} HTTP/1.1\r\nHost: test\r\nRange: bytes=0-10,100-5000000\r\n\r\n".encode(),
    ]
    for attempt in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            sock.sendall(requests[attempt % 2])
            wanted = (0, 1, 64 << 10, 1 << 20)[attempt % 4]
            received = 0
            while received < wanted:
                chunk = sock.recv(65536)
                assert chunk, "the server closed first"
                received += len(chunk)
            if attempt % 3 == 0:  # reset rather than close: no FIN, the server learns on send
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        finally:
            sock.close()
    deadline = time.monotonic() + 30
    while True:
        fds, threads = _usage(server.proc.pid)
        if fds <= base_fds + 2 and threads <= base_threads + 4:
            break
        assert time.monotonic() < deadline, (
            f"after 50 dropped downloads: {fds} fds (before {base_fds}), "
            f"{threads} threads (before {base_threads})"
        )
        time.sleep(0.1)
    assert server.proc.poll() is None
    status, _, body = fetch(server, url, {"Range": "bytes=5-1000004"})
    assert status == 206 and body == data[5:1000005]


# -- paths ------------------------------------------------------------------------------------------


def test_paths_never_leave_the_snapshot(server, store):
    long_name = "a" * 300
    snap = f"{store.web}/root.pxar"
    refused = [
        "/browse/..",
        "/browse/../",
        "/browse/%2e%2e/",
        "/browse/%2e%2e/%2e%2e/etc/passwd",
        f"/raw/{snap}/%2e%2e/%2e%2e/etc/passwd",
        f"/raw/{snap}/../../../../../../etc/passwd",
        f"/raw/{snap}/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/raw/{snap}/etc%2Fhosts",
        f"/raw/{snap}/%252e%252e/%252e%252e/etc/passwd",  # encoded twice
        f"/raw/{snap}/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",  # overlong UTF-8 for ".."
        f"/raw/{snap}/..%5c..%5c..%5cetc%5cpasswd",
        "/raw/%2Fetc%2Fpasswd",
        "/raw//etc/passwd",
        "/browse/ns%2Fprod/",
        f"/raw/{snap}/etc/hosts%00",
        f"/raw/{snap}/etc/hosts%00.png",
        f"/raw/{snap}/%00",
        f"/raw/{snap}/{long_name}",
        f"/browse/{snap}/{long_name}/",
        f"/preview/{snap}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/zip/{snap}/%2e%2e/%2e%2e",
        f"/tar/{snap}/../..",
    ]
    for path in refused:
        status, head, body = fetch(server, path)
        assert status in (404, 400), (path, status)
        assert head["Content-Type"].startswith("text/html"), path
    for bad in ("../../etc/passwd", "../../../../../../../../etc/passwd", "etc/hosts\0", "/.."):
        for endpoint in ("/api/raw", "/api/ls", "/api/zip", "/api/tar"):
            status, head, body = fetch(server, f"{endpoint}?{store.api(path=bad)}")
            assert status in (404, 400), (endpoint, bad, status)
            assert "error" in json.loads(body)
    for bad_archive in ("../../../../etc/passwd", "/etc/passwd", "..", "%2e%2e"):
        status, _, _ = fetch(server, f"/api/raw?{store.api(archive=bad_archive)}")
        assert status in (404, 400), bad_archive
    # What is there is served: the refusals above are not refusals of everything.
    status, _, body = fetch(server, f"/raw/{snap}/etc/hosts")
    assert status == 200 and body == source(store, "etc/hosts")


def test_symlinks_are_shown_and_never_followed(server, store):
    for link, target in (("abs-link", b"/etc/passwd"), ("rel-link", b"../../../../etc/passwd")):
        status, _, body = fetch(server, raw_url(store, link, "/browse"))
        assert status == 200 and target in body  # the page shows where it points
        status, _, _ = fetch(server, raw_url(store, link, "/browse") + "/")
        assert status in (301, 404, 400)
        for prefix in ("/raw", "/preview"):
            status, head, body = fetch(server, raw_url(store, link, prefix))
            assert status in (400, 404), (prefix, link, status)  # not a file: nothing to download
        status, _, _ = fetch(server, raw_url(store, link) + "/x")
        assert status in (400, 404)
        status, _, _ = fetch(server, "/api/raw?" + store.api(path=link))
        assert status in (400, 404)
        status, _, body = fetch(server, "/api/ls?" + store.api())
        entries = {e["name"]: e for e in json.loads(body)}
        assert entries[link]["type"] == "l" and entries[link]["target"] == target.decode()
    # A symlink inside the archive that points at a file of the archive is not followed either.
    status, _, _ = fetch(server, raw_url(store, "etc/app/link"))
    assert status in (400, 404)
    listing = fetch(server, raw_url(store, "", "/browse"))[2]
    assert b"abs-link" in listing


# -- untrusted content ------------------------------------------------------------------------------


def _policy_allows_no_script(policy: str) -> bool:
    directives = {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}
    script = directives.get("script-src", directives.get("default-src"))
    return script == ["'none'"] and "'unsafe-inline'" not in policy and "unsafe-eval" not in policy


def test_hostile_names_are_escaped_in_every_page(server, store):
    pages = [
        raw_url(store, "", "/browse"),
        raw_url(store, "<script>alert(1)<", "/browse") + "/",
        raw_url(store, "<script>alert(1)</script>.html", "/browse"),
        raw_url(store, "<img src=x onerror=alert(1)>.html", "/browse"),
        raw_url(store, "<script>alert(1)</script>/nothing/", "/browse"),  # an error page
        "/search?" + urlencode({"q": "<script>alert(1)</script>"}),
        "/search?" + urlencode({"q": "*.html"}),
    ]
    for url in pages:
        status, head, body = fetch(server, url)
        assert status in (200, 404), url
        assert head["Content-Type"] == "text/html; charset=utf-8", url
        lower = body.lower()
        assert b"<script" not in lower and b"<img" not in lower and b"<svg" not in lower, url
        assert _policy_allows_no_script(head["Content-Security-Policy"]), url
        assert head["X-Content-Type-Options"] == "nosniff"
    listing = fetch(server, raw_url(store, "", "/browse"))[2].decode()
    assert "&lt;script&gt;alert(1)&lt;/" in listing
    assert "&lt;img src=x onerror=alert(1)&gt;.html" in listing
    assert "caf\\xe9-\\xff.txt" in listing  # the bytes a non-UTF-8 name holds, shown
    found = fetch(server, "/search?" + urlencode({"q": "*.html"}))[2].decode()
    assert "&lt;img src=x onerror=alert(1)&gt;.html" in found


def test_files_are_never_rendered_from_the_servers_origin(server, store):
    for rel, data in (
        ("<script>alert(1)</script>.html", HOSTILE_HTML),
        ("<img src=x onerror=alert(1)>.html", HOSTILE_HTML),
        ("evil.svg", HOSTILE_SVG),
    ):
        status, head, body = fetch(server, raw_url(store, rel))
        assert status == 200 and body == data
        assert head["Content-Disposition"].startswith("attachment;"), rel
        assert head["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in head["Content-Security-Policy"]
        status, head, body = fetch(server, raw_url(store, rel, "/preview"))
        assert status == 200 and body == data
        media = head["Content-Type"]
        disposition = head["Content-Disposition"]
        assert head["X-Content-Type-Options"] == "nosniff"
        policy = [d.strip() for d in head["Content-Security-Policy"].split(";")]
        assert "sandbox" in policy, rel
        if rel.endswith(".html"):
            assert media == "text/plain; charset=utf-8", rel
        else:  # an SVG is a document that runs scripts: never shown inline as one
            assert not (media.startswith("image/svg") and disposition.startswith("inline")), (
                media,
                disposition,
            )
    # Text and raster images preview inline; other files only download.
    status, head, _ = fetch(server, raw_url(store, "etc/app/sub/deep.txt", "/preview"))
    assert status == 200 and head["Content-Type"] == "text/plain; charset=utf-8"
    assert head["Content-Disposition"].startswith("inline;")
    status, head, _ = fetch(server, raw_url(store, "data/big.bin", "/preview"))
    assert head["Content-Disposition"].startswith("attachment;")


def test_names_that_are_not_utf8_or_hold_header_syntax_download(server, store):
    for name in (UTF8, NON_UTF8, CRLF_NAME):
        data = source(store, name)
        status, head, body = fetch(server, raw_url(store, name))
        assert status == 200, name
        assert body == data
        disposition = head["Content-Disposition"]
        assert disposition.startswith("attachment;")
        assert "\r" not in disposition and "\n" not in disposition
        assert "Set-Cookie" not in head
        utf8 = disposition.split("filename*=UTF-8''", 1)[1]
        assert unquote(utf8, errors="strict") == name.decode("utf-8", "replace")
        # The page lists it with a link that leads back to it.
        listing = fetch(server, raw_url(store, "", "/browse"))[2].decode()
        links = {
            unquote_to_bytes(html.unescape(href).rsplit("/", 1)[1])
            for href in re.findall(r'href="(/raw/[^"]*)"', listing)
        }
        assert name in links
        status, _, body = fetch(server, raw_url(store, name, "/browse"))
        assert status == 200
        status, _, body = fetch(server, "/api/raw?" + store.api(path=name))
        assert status == 200 and body == data


def test_pages_carry_a_strict_policy(server, store):
    for url in (
        "/browse/",
        "/browse/ns/prod/",
        f"/browse/{store.web}/",
        raw_url(store, "etc/", "/browse"),
        raw_url(store, "etc/hosts", "/browse"),
        "/browse/no-such-thing/",
        f"/browse/{store.vault}/root.pxar/",  # 403: the key is missing
        "/search?q=hosts",
        "/no-such-route",
    ):
        status, head, body = fetch(server, url)
        assert _policy_allows_no_script(head["Content-Security-Policy"]), url
        policy = head["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy, url
        assert head["X-Content-Type-Options"] == "nosniff", url
        assert head["X-Frame-Options"] == "DENY", url
        assert head["Referrer-Policy"] == "no-referrer", url


# -- archives of a directory ------------------------------------------------------------------------


def check_tar_zst(body: bytes, top: Path) -> None:
    """Like check_zip, for a zstd-compressed tar, with owners, modes and times."""
    entries = entries_below(top)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
    seen = set()
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        members = []
        for member in archive:
            data = archive.extractfile(member).read() if member.isfile() else None
            members.append((member, data))
    paths = strip_top([m.name for m, _ in members], top.name)
    for member, data in members:
        if member.name.rstrip("/") == top.name:
            continue
        rel = paths[member.name]
        st = entries[rel]
        seen.add(rel)
        assert stat.S_IMODE(st.st_mode) == member.mode, rel
        assert (member.uid, member.gid) == (st.st_uid, st.st_gid), rel
        if not stat.S_ISLNK(st.st_mode):
            assert int(member.mtime) == st.st_mtime_ns // 10**9, rel
        if stat.S_ISDIR(st.st_mode):
            assert member.isdir(), rel
        elif stat.S_ISLNK(st.st_mode):
            assert member.issym() and member.linkname == os.readlink(top / rel), rel
        else:
            assert member.isfile() and data == (top / rel).read_bytes(), rel
    assert set(entries) == seen, set(entries) ^ seen


def test_a_directory_downloads_as_zip(server, store):
    status, head, body = fetch(server, raw_url(store, "etc", "/zip"))
    assert status == 200, body[:300]
    assert head["Content-Type"] == "application/zip"
    assert head["Content-Disposition"].startswith('attachment; filename="etc.zip"')
    check_zip(body, store.tree / "etc")
    status, _, body = fetch(server, "/api/zip?" + store.api(path="etc/app"))
    assert status == 200
    check_zip(body, store.tree / "etc/app")


def test_a_directory_downloads_as_tar_zst(server, store):
    status, head, body = fetch(server, raw_url(store, "etc", "/tar"))
    assert status == 200, body[:300]
    assert head["Content-Disposition"].startswith('attachment; filename="etc.tar.zst"')
    check_tar_zst(body, store.tree / "etc")
    status, _, body = fetch(server, "/api/tar?" + store.api(path="etc/app"))
    assert status == 200
    check_tar_zst(body, store.tree / "etc/app")


def test_archives_of_a_tree_with_hostile_symlinks_hold_no_host_file(server, store):
    """The whole snapshot (links to /etc/passwd, hostile and non-UTF-8 names) as zip and tar:
    `fetch` checks that no host file came along."""
    status, _, body = fetch(server, raw_url(store, "", "/zip").rstrip("/"))
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        assert all(".." not in n.split("/") and not n.startswith("/") for n in names), names
        links = [i for i in archive.infolist() if i.filename.endswith("abs-link")]
        assert [archive.read(i) for i in links] == [b"/etc/passwd"]
    status, _, body = fetch(server, raw_url(store, "", "/tar").rstrip("/"))
    assert status == 200
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        names = [m.name for m in archive]
    assert all(".." not in n.split("/") and not n.startswith("/") for n in names), names


# -- encryption -------------------------------------------------------------------------------------


def test_an_encrypted_archive_without_its_key_is_a_clear_403(server, store):
    for url in (f"/browse/{store.vault}/root.pxar/", f"/browse/{store.vault}/root.pxar/plan.txt"):
        status, head, body = fetch(server, url)
        assert status == 403, url
        assert head["Content-Type"].startswith("text/html")
        text = body.decode()
        assert store.fingerprint in text, text
        assert "--keyfile" in text and "Traceback" not in text
        assert store.secret not in body
    status, _, body = fetch(server, f"/raw/{store.vault}/root.pxar/plan.txt")
    assert status == 403 and store.secret not in body
    query = urlencode({"snapshot": store.vault, "archive": "root.pxar"})
    status, _, body = fetch(server, f"/api/ls?{query}")
    assert status == 403 and store.fingerprint in json.loads(body)["error"]
    # The snapshot itself, and the rest of the datastore, still browse.
    assert fetch(server, f"/browse/{store.vault}/")[0] == 200


def test_an_encrypted_archive_with_its_key_is_served(store, tmp_path):
    with served(
        store.ds,
        "--listen",
        "127.0.0.1:0",
        "--keyfile",
        store.keyfile,
        env=store.env,
        log=tmp_path / "stderr",
    ) as keyed:
        status, _, body = fetch(keyed, f"/raw/{store.vault}/root.pxar/plan.txt")
        assert status == 200 and body == store.secret
        status, _, body = fetch(keyed, f"/browse/{store.vault}/root.pxar/")
        assert status == 200 and b"plan.txt" in body
        status, _, body = fetch(keyed, raw_url(store, "etc/hosts"))
        assert status == 200 and body == source(store, "etc/hosts")


# -- authentication ---------------------------------------------------------------------------------


def test_listening_off_loopback_without_authentication_is_refused(store):
    proc = subprocess.run(
        snapfs_command("serve", store.ds, "--listen", "0.0.0.0:0"),
        capture_output=True,
        text=True,
        env=store.env,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--auth-file" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_authentication_off_loopback(store, tmp_path):
    users, password_file, token_file = (tmp_path / n for n in ("users", "password", "token"))
    password_file.write_text(PASSWORD + "\n")
    token_file.write_text(TOKEN + "\n")
    added = subprocess.run(
        snapfs_command(
            "serve", "--auth-file", users, "--add-user", "alice", "--user-password-file",
            password_file,
        ),
        capture_output=True,
        text=True,
        env=store.env,
        timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in users.read_text() and users.stat().st_mode & 0o077 == 0

    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    right = basic("alice", PASSWORD)
    wrong = basic("alice", PASSWORD + "!")
    url = "/browse/"
    with served(
        store.ds,
        "--listen",
        "0.0.0.0:0",
        "--auth-file",
        users,
        "--token-file",
        token_file,
        env=store.env,
        log=tmp_path / "stderr",
    ) as guarded:
        assert guarded.url.startswith("http://0.0.0.0:")
        status, head, body = fetch(guarded, url)
        assert status == 401 and head["WWW-Authenticate"].startswith("Basic realm=")
        assert b"datastore" not in body
        status, head, _ = fetch(guarded, raw_url(store, "etc/hosts"))
        assert status == 401 and head["X-Content-Type-Options"] == "nosniff"
        assert fetch(guarded, url, right)[0] == 200
        assert fetch(guarded, url, right)[0] == 200  # remembered, and still right
        status, _, body = fetch(guarded, raw_url(store, "etc/hosts"), right)
        assert status == 200 and body == source(store, "etc/hosts")
        assert fetch(guarded, url, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert fetch(guarded, url, basic("anyone", TOKEN))[0] == 200
        # Failures: a wrong token, a wrong password, an unknown user, garbage.
        failures = [
            {"Authorization": f"Bearer {TOKEN}x"},
            wrong,
            basic("mallory", PASSWORD),
            {"Authorization": "Basic !!!"},
            {"Authorization": "Digest whatever"},
        ]
        failures += [wrong] * 4
        for headers in failures:  # 9 failures: not yet blocked
            assert fetch(guarded, url, headers)[0] == 401
        assert fetch(guarded, url, right)[0] == 200
        assert fetch(guarded, url, wrong)[0] == 401  # the 10th
        status, _, body = fetch(guarded, url, right)
        assert status == 429, "10 failures must block the address, whatever it sends next"
        assert fetch(guarded, url, {"Authorization": f"Bearer {TOKEN}"})[0] == 429
        log = guarded.stderr()
    assert "login failed from 127.0.0.1" in log and "mallory" in log
    for secret in (PASSWORD, TOKEN, right["Authorization"].split()[1]):
        assert secret not in log
    assert "without TLS" in log  # the warning for clear-text passwords on a network


# -- JSON API ---------------------------------------------------------------------------------------


def test_api_snapshots_is_the_cli_json(server, store):
    status, head, body = fetch(server, "/api/snapshots")
    assert status == 200 and head["Content-Type"] == "application/json"
    cli = subprocess.run(
        snapfs_command("snapshots", store.ds, "--json"),
        capture_output=True,
        text=True,
        env=store.env,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(body) == json.loads(cli.stdout)
    assert {r["snapshot"] for r in json.loads(body)} == {
        store.snapshot,
        store.vault,
        store.vm,
    }


def test_api_ls_and_raw_in_a_namespace(server, store):
    status, _, body = fetch(server, "/api/ls?" + store.api(path="etc/app"))
    assert status == 200
    entries = {e["name"]: e for e in json.loads(body)}
    top = store.tree / "etc/app"
    assert set(entries) == {p.name for p in top.iterdir()}
    for name, entry in entries.items():
        st = (top / name).lstat()
        kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
        assert entry["type"] == kind and entry["mode"] == st.st_mode, name
        assert entry["mtime_ns"] == st.st_mtime_ns and entry["uid"] == st.st_uid, name
        if kind == "f":
            assert entry["size"] == st.st_size, name
    assert entries["link"]["target"] == "app.conf"
    data = source(store, "etc/app/sub/deep.txt")
    url = "/api/raw?" + store.api(path="etc/app/sub/deep.txt")
    status, head, body = fetch(server, url)
    assert status == 200 and body == data
    assert head["Content-Disposition"].startswith('attachment; filename="deep.txt"')
    status, _, body = fetch(server, url, {"Range": "bytes=10-29"})
    assert status == 206 and body == data[10:30]
    status, _, body = fetch(server, "/api/ls?" + store.api(path="no/such"))
    assert status == 404 and json.loads(body)["error"]
    status, _, body = fetch(server, "/api/raw?" + store.api(path="etc"))
    assert status == 400 and json.loads(body)["error"]


def test_api_raw_of_an_image_archive_is_the_disk(server, store):
    image = store.image.read_bytes()
    url = "/api/raw?" + urlencode({"snapshot": store.vm, "archive": "drive-scsi0.img"})
    status, head, body = fetch(server, url, method="HEAD")
    assert status == 200 and int(head["Content-Length"]) == len(image) and body == b""
    status, _, body = fetch(server, url)
    assert status == 200 and body == image
    first = (4 << 20) - 100  # across the first fixed chunk's end
    status, head, body = fetch(server, url, {"Range": f"bytes={first}-{first + 199}"})
    assert status == 206 and body == image[first : first + 200]
    assert head["Content-Range"] == f"bytes {first}-{first + 199}/{len(image)}"
    status, _, body = fetch(server, url, {"Range": "bytes=-512"})
    assert status == 206 and body == image[-512:]


def test_qemu_img_reads_an_image_over_http(server, store, tmp_path):
    """QEMU's curl block driver (HEAD, then ranged GETs) copies the disk image byte for byte."""
    url = f"http://127.0.0.1:{server.port}/raw/{store.vm}/drive-scsi0.img"
    copy = tmp_path / "copy.raw"
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", url], capture_output=True, text=True
    )
    assert info.returncode == 0, info.stderr  # fails loudly without qemu-block-extra
    assert json.loads(info.stdout)["virtual-size"] == store.image.stat().st_size
    done = subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(copy)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == store.image.read_bytes()


def test_api_search_finds_a_file(server, store):
    status, head, body = fetch(server, "/api/search?q=deep.txt")
    assert status == 200 and head["Content-Type"] == "application/json"
    hits = json.loads(body)
    assert [(h["ns"], h["snapshot"], h["archive"], h["path"]) for h in hits] == [
        ("prod", store.snapshot, "root.pxar", "/etc/app/sub/deep.txt")
    ]
    expected = hashlib.sha256(source(store, "etc/app/sub/deep.txt")).hexdigest()
    assert hits[0]["sha256"] == expected
    assert json.loads(fetch(server, "/api/search?q=no-such-file-anywhere")[2]) == []
    status, _, body = fetch(server, "/search?q=deep.txt")
    assert status == 200
    link = f'href="/browse/{store.web}/root.pxar/etc/app/sub/deep.txt"'
    assert link in body.decode()


def test_the_server_logs_one_line_per_request(server):
    before = server.stderr().count(" GET /static/app.css ")
    status, head, body = fetch(server, "/static/app.css")
    assert status == 200 and head["Content-Type"].startswith("text/css")
    deadline = time.monotonic() + 10
    while server.stderr().count(" GET /static/app.css ") == before:
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.05)
    line = [x for x in server.stderr().splitlines() if " GET /static/app.css " in x][-1]
    assert "127.0.0.1 GET /static/app.css 200" in line and f"{len(body)} bytes" in line
