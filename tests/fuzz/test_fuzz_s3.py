"""Fuzzing of what snapfs makes of an S3 endpoint's answers: ListObjectsV2 listings, error
bodies, statuses and object bodies, mutated, served by a small HTTP server on 127.0.0.1 to the
real boto3 client S3Backend builds. The XML is parsed by botocore; what is fuzzed here is our
side: the pages, keys, ETags, continuation tokens and error codes botocore hands on, and what
escapes from botocore itself. Every call returns or raises a SnapfsError, never hangs, and
memory follows the bytes received."""

from __future__ import annotations

import http.server
import os
import threading
from xml.sax.saxutils import escape

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.fuzzing import fuzz, mutate, mutations, within_memory

from snapfs.store.s3 import S3Backend
from snapfs.store.s3_requests import S3Settings

STORE = "store1"
SNAPSHOT = "vm/100/2024-06-01T10:00:00Z"
DIGEST = bytes(range(32))


class _Script:
    """The answers the server gives, in order; the last one again for every further request."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.requests = 0
        self.lock = threading.Lock()

    def next(self) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests += 1
            if len(self.answers) > 1:
                return self.answers.pop(0)
            return self.answers[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers from the script; HTTP/1.0, one request per connection: a lying length cannot
    desynchronise the next answer."""

    script: _Script

    def do_GET(self) -> None:  # noqa: N802  (the name http.server calls)
        status, headers, body = self.script.next()
        self.send_response_only(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # botocore's HeadBucket, when a redirect names no region


@pytest.fixture(scope="module")
def endpoint():
    """(backend, script): an S3Backend with its own boto3 client over the scripted server."""
    script = _Script()
    handler = type("Handler", (_Handler,), {"script": script})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="fuzz-key", AWS_SECRET_ACCESS_KEY="fuzz-secret")
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        region="us-east-1",
        path_style=True,
        max_attempts=1,
        connect_timeout=5,
        read_timeout=5,
    )
    backend = S3Backend("bucket", STORE, settings, check=False)
    # Warm up: botocore loads its models on first use, not in the budget of one parse.
    script.answers = [(200, {}, _listing([], [f"{STORE}/.cnt/vm/"], False, None))]
    backend.list_dir("")
    script.answers = [(404, {}, _error("NoSuchKey"))]
    with pytest.raises(Exception, match="no such file"):
        backend.read_file("x")
    try:
        yield backend, script
    finally:
        backend.close()
        server.shutdown()
        server.server_close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _listing(keys: list[str], prefixes: list[str], truncated: bool, token: str | None) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    ]
    parts.append(f"<Name>bucket</Name><KeyCount>{len(keys) + len(prefixes)}</KeyCount>")
    parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    if token is not None:
        parts.append(f"<NextContinuationToken>{escape(token)}</NextContinuationToken>")
    for key in keys:
        parts.append(
            f"<Contents><Key>{escape(key)}</Key><ETag>&quot;abc&quot;</ETag><Size>12</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )
    for prefix in prefixes:
        parts.append(f"<CommonPrefixes><Prefix>{escape(prefix)}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def _error(code: str, region: str | None = None) -> bytes:
    extra = f"<Region>{escape(region)}</Region>" if region else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
        f"<Message>fuzz</Message>{extra}<RequestId>1</RequestId></Error>"
    ).encode()


_CNT = f"{STORE}/.cnt/"
_names = st.sampled_from(
    [
        f"{_CNT}vm/",
        f"{_CNT}vm/100/",
        f"{_CNT}{SNAPSHOT}/index.json.blob",
        f"{_CNT}{SNAPSHOT}/drive-scsi0.img.fidx",
        f"{_CNT}vm/100/owner",
        f"{_CNT}vm/100/../../x",
        f"{_CNT}vm//100//",
        f"{_CNT}ns/a/.namespace",
        f"{_CNT}",
        "other/x",
        "",
        "/",
        f"{STORE}/.chunks/0001/{DIGEST.hex()}",
    ]
) | st.text(max_size=20).map(lambda t: _CNT + t)
_codes = st.sampled_from(
    [
        "NoSuchKey",
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "SlowDown",
        "InternalError",
        "",
        "x" * 300,
    ]
)
_status = st.sampled_from(
    [200, 200, 200, 206, 301, 304, 307, 400, 403, 404, 409, 416, 429, 500, 503, 599]
)
_headers = st.dictionaries(
    st.sampled_from(["ETag", "Content-Length", "x-amz-bucket-region", "Content-Type", "Location"]),
    st.sampled_from(
        ['"abc"', "0", "5", str(1 << 40), "-1", "x", "eu-west-1", "application/xml", ""]
    ),
    max_size=2,
)


@st.composite
def _answer(draw) -> tuple[int, dict[str, str], bytes]:
    kind = draw(st.sampled_from(["listing", "error", "body", "bytes"]))
    if kind == "listing":
        body = _listing(
            draw(st.lists(_names, max_size=5)),
            draw(st.lists(_names, max_size=3)),
            draw(st.booleans()),
            draw(st.none() | st.sampled_from(["t1", "t2", ""])),
        )
    elif kind == "error":
        body = _error(draw(_codes), draw(st.none() | st.sampled_from(["eu-west-1", ""])))
    elif kind == "body":
        body = draw(st.binary(max_size=64))
    else:
        body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        body = mutate(body, draw(mutations))
    return draw(_status), draw(_headers), body


_operations = st.sampled_from(
    ["list-root", "list-type", "list-group", "list-snapshot", "list-ns", "read", "chunk", "check"]
)


def _run(backend: S3Backend, operation: str):
    backend.refresh()
    if operation == "list-root":
        return backend.list_dir("")
    if operation == "list-type":
        return backend.list_dir("vm")
    if operation == "list-group":
        return backend.list_dir("vm/100")
    if operation == "list-snapshot":
        return backend.list_dir(SNAPSHOT)
    if operation == "list-ns":
        return backend.list_dir("ns/a")
    if operation == "read":
        return backend.read_file(f"{SNAPSHOT}/index.json.blob")
    if operation == "chunk":
        return backend.read_chunk(DIGEST)
    return backend.check_store()


@pytest.mark.timeout(120)
@fuzz(200)
@given(operation=_operations, answers=st.lists(_answer(), min_size=1, max_size=3))
@example(
    operation="list-root",
    answers=[(200, {}, _listing([], [f"{_CNT}vm/"], True, "t1"))],
).via("regression: a listing that hands back its own token forever")
@example(operation="list-root", answers=[(301, {}, _error("x"))]).via(
    "regression: a redirect that names no region (botocore's HeadBucket recursed)"
)
@example(operation="read", answers=[(304, {}, b"")]).via(
    "regression: 304 to a GET without If-None-Match gave no bytes and no error"
)
@example(operation="list-root", answers=[(304, {}, b"")]).via(
    "regression: 304 to a listing let an internal exception out"
)
@example(
    operation="list-root",
    answers=[(200, {}, _listing([], [], False, None).replace(b">0<", b"> <", 1))],
).via("regression: botocore's ValueError on a KeyCount that is not a number")
@example(
    operation="list-root",
    answers=[(200, {}, _listing([f"{_CNT}../x"], [f"{_CNT}vm/100/", "other/"], False, None))],
).via("regression: names with a slash, '..' or from outside the prefix in a listing")
def test_fuzz_s3_answers(endpoint, operation, answers):
    backend, script = endpoint
    script.answers = list(answers)
    script.requests = 0
    received = sum(len(a[2]) for a in answers)
    result = within_memory(lambda: _run(backend, operation), received)
    # A listing's names are names: no empty one, none that walks up, none with a slash.
    if result is not None and operation.startswith("list"):
        for name in [*result.dirs, *result.files]:
            assert name and name not in (".", "..") and "/" not in name, result
    assert script.requests <= 1000
