"""Fuzzing of `snapfs serve`'s HTTP paths: the application as the server runs it (`Guard` around
`build_app`), called in-process over ASGI with arbitrary URL paths, query strings and Range,
If-Range and If-None-Match headers, against a small datastore built here.

Every answer is 2xx, 3xx or 4xx (never 500, nor 502: the store is sound), no exception leaves the
application, a download's bytes are bytes of a file in the backup, and no answer holds the host's
/etc/passwd (the backup has symlinks to it). The real server process is tested in tests/serve."""

from __future__ import annotations

import io
import os
import random
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import quote, unquote

import anyio
import pytest
import zstandard
from hypothesis import example, given
from hypothesis import strategies as st
from support.fs_model import model_for
from support.fuzzing import fuzz, within_memory
from support.serving import backup_image, backup_tree, make_keyfile, write

from snapfs.search.index import SearchIndex
from snapfs.serve.app import PAGE_POLICY, SearchService, Site, build_app
from snapfs.serve.auth import Authenticator
from snapfs.serve.server import Guard

HOST_PASSWD = Path("/etc/passwd").read_bytes()
NON_UTF8 = b"caf\xe9-\xff.txt"
CACHE_SIZE = 8 << 20  # decoded chunks the model keeps: two of the image's 4 MiB chunks


class Served:
    """The application, and what requests are made of (not a dataclass: hypothesis would print
    every field of it, files included, with each failing example)."""

    def __init__(self, app: Guard, files: list[bytes], names: list[str], snapshots: list[str]):
        self.app = app
        self.files = files  # the content of every file of the backup
        self.names = names  # path segments worth trying, percent-encoded
        self.snapshots = snapshots  # snapshot names as the API takes them

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return "Served(...)"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve-fuzz")
    ds, tree = base / "ds", base / "tree"
    files = {
        "etc/hosts": b"127.0.0.1 localhost\n",
        "etc/app/app.conf": b"answer = 42\n",
        "etc/app/empty": b"",
        "data/big.bin": random.Random(1).randbytes((2 << 20) + 12345),
        "page.html": b"<html><script>alert(1)</script></html>\n",
    }
    for name, data in files.items():
        write(tree / name, data)
    write(tree / os.fsdecode(NON_UTF8), b"not UTF-8\n")
    os.symlink("/etc/passwd", tree / "abs-link")
    os.symlink("../../../../etc/passwd", tree / "rel-link")
    web = backup_tree(ds, tree, "host/web", ns=("prod",))
    write(base / "vault/plan.txt", b"secret plan\n")
    vault = backup_tree(ds, base / "vault", "host/vault", keyfile=make_keyfile(base / "k.json"))
    image = write(base / "disk.raw", random.Random(2).randbytes((1 << 20) + 4096))
    vm = backup_image(ds, image, "vm/100")

    model = model_for(ds, cache_size=CACHE_SIZE)
    search = SearchService(SearchIndex(str(base / "search.db")), model)
    site = Site(model, search, Authenticator())
    segments = set()
    for path in (web, vault, vm, *(f"{web}/root.pxar/{name}" for name in files)):
        segments.update(path.split("/"))
    segments.update(["root.pxar", "drive-scsi0.img", "abs-link", "rel-link", "index.json.blob"])
    names = sorted(quote(s) for s in segments) + [
        quote(NON_UTF8),
        "..",
        ".",
        "%2E%2E",
        "%2F",
        "%00",
        "%FF",
        "%",
        "%zz",
        "etc%2Fhosts",
        "..%2F..%2Fetc%2Fpasswd",
        "~",
    ]
    snapshots = [p.split("/", 2)[2] if p.startswith("ns/") else p for p in (web, vault, vm)]
    try:
        yield Served(
            Guard(build_app(site), site.auth, PAGE_POLICY),
            [*files.values(), b"not UTF-8\n", b"secret plan\n", image.read_bytes()],
            names,
            snapshots,
        )
    finally:
        site.readahead.close()
        search.close()


async def _call(app, method: str, raw_path: bytes, query: bytes, headers: list) -> tuple:
    """One request through the ASGI interface, as hypercorn makes it: (status, headers, body)."""
    sent: list[dict] = []
    asked = False

    async def receive() -> dict:
        nonlocal asked
        if asked:
            await anyio.sleep_forever()
        asked = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii"), errors="surrogateescape"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8200"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8200),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


ROUTES = [
    "/",
    "/browse",
    "/browse/",
    "/raw/",
    "/preview/",
    "/zip/",
    "/tar/",
    "/search",
    "/api/snapshots",
    "/api/ls",
    "/api/raw",
    "/api/zip",
    "/api/tar",
    "/api/search",
    "/static/app.css",
    "/nothing/",
]
_latin1 = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
_number = st.one_of(
    st.integers(0, 3 << 20).map(str),
    st.sampled_from(["", "0", "-1", "18446744073709551616", "9" * 5000, "²", "١٢", " 5", "0x10"]),
)
_range_spec = st.tuples(_number, st.sampled_from(["-", "", "--", "=-"]), _number).map("".join)
ranges = st.one_of(
    st.none(),
    st.lists(_range_spec, min_size=1, max_size=5).map(lambda r: "bytes=" + ",".join(r)),
    st.lists(_range_spec, min_size=65, max_size=70).map(lambda r: "bytes=" + ",".join(r)),
    _latin1,
)


def _header(text: str) -> bytes:
    """A header value's bytes: Latin-1 where it can be, else UTF-8 (hypercorn passes either)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


@st.composite
def requests(draw, served: Served):
    route = draw(st.sampled_from(ROUTES))
    segments = draw(st.lists(st.sampled_from(served.names) | st.text(max_size=8).map(quote)))
    raw_path = route.encode() + "/".join(segments).encode()
    if draw(st.booleans()):
        raw_path += b"/"
    keys = ["ns", "snapshot", "archive", "path", "q", "sort", "order", "page", "x"]
    values = st.one_of(
        st.sampled_from([*served.snapshots, "prod", "root.pxar", "etc/hosts", "drive-scsi0.img"]),
        st.sampled_from(served.names),
        st.text(max_size=12).map(quote),
    )
    query = "&".join(
        f"{k}={v}" for k, v in draw(st.lists(st.tuples(st.sampled_from(keys), values), max_size=4))
    )
    headers = []
    if (value := draw(ranges)) is not None:
        headers.append((b"range", _header(value)))
    if draw(st.booleans()):
        headers.append((b"if-range", _header(draw(_latin1))))
    if draw(st.booleans()):
        headers.append((b"if-none-match", _header(draw(_latin1))))
    return draw(st.sampled_from(["GET", "HEAD"])), raw_path, query.encode("ascii"), headers


def _check_answer(served: Served, request: tuple) -> None:
    method, raw_path, query, headers = request
    size = len(raw_path) + len(query) + sum(len(v) for _, v in headers)
    # Memory: a download is sent a block at a time, whatever range or size a request names. Held
    # legitimately: the chunk cache, and the body, which this test's ASGI client keeps whole
    # (a zip of everything is at most the files' size, stored).
    status, answer, body = within_memory(
        lambda: anyio.run(_call, served.app, method, raw_path, query, headers),
        size,
        held=CACHE_SIZE + 3 * sum(map(len, served.files)),
    )
    assert 200 <= status < 500 and status != 500, (status, body[:300])
    assert HOST_PASSWD not in body
    if status in (200, 206) and raw_path.startswith((b"/raw/", b"/api/raw")):
        media = answer.get(b"content-type", b"")
        if method == "GET" and not media.startswith(b"multipart/"):
            assert any(body in data for data in served.files), "bytes that no file holds"
        if status == 206 and not media.startswith(b"multipart/"):
            first, last = answer[b"content-range"].split(b" ")[1].split(b"/")[0].split(b"-")
            assert int(answer[b"content-length"]) == int(last) - int(first) + 1
            assert method == "HEAD" or len(body) == int(last) - int(first) + 1


@pytest.mark.timeout(300)
@fuzz(150)
@given(data=st.data())
def test_fuzz_serve_requests(served, data):
    _check_answer(served, data.draw(requests(served)))


HOSTS = b"127.0.0.1 localhost\n"


@pytest.mark.parametrize(
    ("header", "status", "body"),
    [
        ("bytes=²-", 200, HOSTS),  # a digit to str.isdigit, not to int(): not a range
        ("bytes=-³", 200, HOSTS),
        ("bytes=١-٢", 200, HOSTS),  # Arabic-Indic digits: not ASCII, not a range
        ("bytes=" + "9" * 5000 + "-", 416, b""),  # more digits than int() converts
        ("bytes=0-" + "9" * 5000, 206, HOSTS),
        ("bytes=-" + "9" * 5000, 206, HOSTS),
        ("bytes=" + "0" * 5000 + "1-2", 206, HOSTS[1:3]),
    ],
)
def test_fuzz_serve_range_regressions(served, header, status, body):
    """Range headers that made a download answer 500 (ValueError from int())."""
    path = f"/raw/ns/prod/host/web/{served.snapshots[0].split('/')[-1]}/root.pxar/etc/hosts"
    request = ("GET", path.encode(), b"", [(b"range", _header(header))])
    _check_answer(served, request)
    assert anyio.run(_call, served.app, *request)[::2] == (status, body)


@example(path=b"/raw/ns/prod/host/web/x/root.pxar/..%2F..%2Fetc%2Fpasswd")
@example(path=b"/browse/%2E%2E/%2E%2E/etc/passwd")
@fuzz(30)
@given(path=st.sampled_from([b"/raw/../../etc/passwd", b"/preview/%00/etc/passwd"]))
def test_fuzz_serve_no_host_file(served, path):
    _check_answer(served, ("GET", path, b"", []))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_fuzz_serve_download_of_everything_leaves_out_what_needs_a_key(served, kind):
    """Regression: a zip or tar.zst of the whole datastore broke off with KeyRequiredError (a
    traceback in the server's log) at the first encrypted archive; what needs the key is now
    left out, the rest downloads whole, and its last entry says what was left out."""
    status, _, body = anyio.run(_call, served.app, "GET", f"/{kind}/".encode(), b"", [])
    assert status == 200
    if kind == "zip":
        archive = zipfile.ZipFile(io.BytesIO(body))
        names = archive.namelist()
        note = archive.read(names[-1]).decode()
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            names, last = [], b""
            for member in archive:
                names.append(member.name)
                if member.isfile():
                    last = archive.extractfile(member).read()
        note = last.decode()
    assert names[-1].endswith("/SNAPFS-LEFT-OUT.txt"), names[-5:]
    assert "vault" in note and "key" in note.lower(), note
    assert any(n.endswith("root.pxar/etc/hosts") for n in names), names
    assert any("/vault/" in n for n in names)  # the encrypted snapshot's folder is there
    assert not any("plan.txt" in n or "vault" in n and "root.pxar" in n for n in names), names
