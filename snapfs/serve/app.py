"""The web application of `snapfs serve`: pages, downloads and the JSON API, over the model.

Every URL names a path in the tree the mount shows (`/browse/ns/prod/host/web/<time>/root.pxar/
etc/hosts`), so a bookmark is a place in the datastore. The handlers translate: they resolve a
path of names in the model (`FsModel.resolve`, which admits only names a directory can hold, so
no URL reaches a host file), ask the node for what it is, and turn the answer into HTTP. They are
plain functions, run by Starlette in worker threads, since a node may block on storage.

Files from a backup are untrusted: downloads are always `attachment`, previews are served as
text/plain or a raster image under a `sandbox` policy, and every page carries a policy that
allows no script at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import mimetypes
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from snapfs import logs
from snapfs.errors import (
    CryptKeyError,
    NotFoundError,
    RequestError,
    SnapfsError,
    UsageError,
)
from snapfs.fs.model import FsModel
from snapfs.fs.node import Node
from snapfs.index.history import SearchFilter
from snapfs.pxar.entry import type_letter
from snapfs.search.index import SearchIndex
from snapfs.search.report import distinct_versions, entry_fields, hit_record
from snapfs.serve import pages
from snapfs.serve.auth import Authenticator
from snapfs.serve.ranges import RangeNotSatisfiable, parse_ranges
from snapfs.store.datastore import format_backup_time, parse_namespace, parse_snapshot
from snapfs.store.readahead import Readahead
from snapfs.views.listing import snapshot_records

log = logging.getLogger("snapfs.serve")

__all__ = ["SearchService", "Site", "build_app", "file_response"]

BLOCK = 1 << 20
#: Text and raster images open in the browser (sandboxed); everything else only downloads.
PREVIEW_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")
MAX_PREVIEW = 16 << 20
PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
CONTENT_POLICY = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
SEARCH_REFRESH = 60.0


class SearchService:
    """The datastore's search index for the server: refreshed at most every SEARCH_REFRESH
    seconds, one query at a time (the index is one SQLite connection)."""

    def __init__(self, index: SearchIndex, model: FsModel) -> None:
        self._index = index
        self._model = model
        self._lock = threading.Lock()
        self._refreshed = -SEARCH_REFRESH
        self.note = ""

    def search(self, query: SearchFilter) -> list:
        with self._lock:
            now = time.monotonic()
            if now - self._refreshed >= SEARCH_REFRESH:
                report = self._index.refresh(self._model.datastore)
                self._refreshed = time.monotonic()
                self.note = "; ".join(report.warnings())
            return self._index.search(query)

    def close(self) -> None:
        with self._lock:
            self._index.close()


@dataclass
class Site:
    """What the handlers share: the model, the search, who may come in."""

    model: FsModel
    search: SearchService
    auth: Authenticator
    ns: str = ""  # where `/` leads, and the search box's default scope
    #: Decodes the chunks a download reads next (what the mount's readahead does for a read).
    readahead: Readahead = dataclasses.field(
        default_factory=lambda: Readahead(2, "snapfs-readahead")
    )


# -- paths ------------------------------------------------------------------------------------------


def _names(request: Request, prefix: str) -> list[bytes]:
    """The path below `prefix` as names, decoded from the raw URL: `%2F` stays inside a name
    (and is then refused by the model), `%FF` gives the byte a non-UTF-8 name holds."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    rest = raw.split(b"?", 1)[0][len(prefix) :]
    return [unquote_to_bytes(part) for part in rest.split(b"/") if part]


def _query(request: Request) -> dict[str, bytes]:
    """The query string as bytes values (names in it may be any bytes)."""
    pairs = parse_qsl(
        request.scope.get("query_string", b"").decode("latin-1"),
        keep_blank_values=True,
        encoding="utf-8",
        errors="surrogateescape",
    )
    return {k: os.fsencode(v) for k, v in pairs}


def _api_names(request: Request, with_path: bool = True) -> list[bytes]:
    """`?ns=&snapshot=&archive=&path=` as names in the tree."""
    query = _query(request)
    names: list[bytes] = []
    for part in parse_namespace(query.get("ns", b"").decode("utf-8", "replace")):
        names += [b"ns", part.encode()]
    snapshot = query.get("snapshot", b"").decode("utf-8", "replace")
    if snapshot:
        parsed = parse_snapshot(snapshot)
        names += [parsed.group.type.encode(), parsed.group.id.encode(), parsed.time_name.encode()]
        archive = query.get("archive", b"")
        if archive:
            names.append(archive)
            if with_path:
                names += [n for n in query.get("path", b"").split(b"/") if n]
    return names


# -- responses --------------------------------------------------------------------------------------


def _status(exc: SnapfsError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, CryptKeyError):
        return 403
    if isinstance(exc, RequestError | UsageError):
        return 400
    return 502  # damaged or unreachable storage: the server is fine, what it reads is not


def _error(request: Request, names: Sequence[bytes], exc: SnapfsError) -> Response:
    status = _status(exc)
    message = logs.redact(str(exc))
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return HTMLResponse(pages.error_page(names, status, message), status_code=status)


def _row(name: bytes, node: Node, load: bool = True) -> pages.Row:
    attr = node.attr(load=load)
    target = node.readlink() if stat.S_ISLNK(attr.mode) else None
    return pages.Row(name, attr.mode, attr.size, attr.mtime_ns, attr.uid, attr.gid, target)


def _listing(node: Node) -> list[tuple[pages.Row, Node]]:
    """Every entry of a directory node, with the child node (for its details)."""
    rows: list[tuple[pages.Row, Node]] = []
    for item in node.opendir().all_items():
        attr = item.attr
        target = item.node.readlink() if stat.S_ISLNK(attr.mode) else None
        row = pages.Row(item.name, attr.mode, attr.size, attr.mtime_ns, attr.uid, attr.gid, target)
        rows.append((row, item.node))
    return rows


def _content_type(name: bytes) -> str:
    guessed, _ = mimetypes.guess_type(name.decode("utf-8", "replace"), strict=False)
    return guessed or "application/octet-stream"


def _blocks(node: Node, start: int, end: int, pool: Readahead) -> Iterator[bytes]:
    """Bytes [start, end] of a file, a block at a time (each `next` runs in a worker thread),
    with the chunks after each block decoding ahead in `pool`, as the mount reads ahead."""
    content = node.open()
    offset = start
    while offset <= end:
        size = min(BLOCK, end + 1 - offset)
        data = content.read(offset, size)
        if not data:
            raise SnapfsError(f"{node.where}: ended at offset {offset}, {end + 1} expected")
        content.read_ahead(pool, offset, len(data))
        offset += len(data)
        yield bytes(data)


def _etag(node: Node, size: int, mtime_ns: int) -> str:
    """Strong: what a snapshot holds never changes, and the path names the snapshot."""
    key = f"{node.path}\0{size}\0{mtime_ns}".encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(key).hexdigest()[:24]
    return f'"{digest}"'


def _none_match(header: str | None, etag: str) -> bool:
    """Whether If-None-Match names `etag`: `*`, or a list of tags compared weakly (RFC 9110
    §13.1.2), as caches and browsers send them."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def _disposition(kind: str, name: bytes) -> str:
    """`filename` in printable ASCII (anything else `_`: a header value is Latin-1 and holds no
    control character), `filename*` the name in UTF-8 (bytes that are not UTF-8 as U+FFFD)."""
    text = name.decode("utf-8", "replace")
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in text)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(text, safe='')}"


def file_response(
    request: Request, node: Node, name: bytes, readahead: Readahead, *, preview: bool = False
) -> Response:
    """A file's bytes with Range (single or multiple), ETag and If-Range; 416 when no range
    fits. `preview` sends text as text/plain and images inline, under a sandbox policy."""
    attr = node.attr(load=True)
    if stat.S_ISDIR(attr.mode):
        raise RequestError(f"{node.where} is a directory (download it as zip or tar.zst)")
    if not stat.S_ISREG(attr.mode):
        raise RequestError(f"{node.where} is not a file: it has no content to download")
    size = attr.size
    etag = _etag(node, size, attr.mtime_ns)
    media = _content_type(name)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": formatdate(attr.mtime_ns / 10**9, usegmt=True),
        "Cache-Control": "private, max-age=3600",
        "Content-Security-Policy": CONTENT_POLICY,
    }
    if preview and (media.startswith("text/") or media in PREVIEW_TYPES) and size <= MAX_PREVIEW:
        media = media if media in PREVIEW_TYPES else "text/plain; charset=utf-8"
        headers["Content-Disposition"] = _disposition("inline", name)
    else:
        headers["Content-Disposition"] = _disposition("attachment", name)
    if _none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        wanted = None
    try:
        ranges = parse_ranges(wanted, size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    head = request.method == "HEAD"
    if ranges is None:
        headers["Content-Length"] = str(size)
        if head:
            return Response(status_code=200, headers=headers, media_type=media)
        return StreamingResponse(
            _blocks(node, 0, size - 1, readahead), headers=headers, media_type=media
        )
    if len(ranges) == 1:
        first, last = ranges[0]
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
        if head:
            return Response(status_code=206, headers=headers, media_type=media)
        return StreamingResponse(
            _blocks(node, first, last, readahead),
            status_code=206,
            headers=headers,
            media_type=media,
        )
    boundary = uuid.uuid4().hex
    parts = [
        (
            f"\r\n--{boundary}\r\nContent-Type: {media}\r\n"
            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
        ).encode()
        for first, last in ranges
    ]
    closing = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(p) for p in parts) + sum(b - a + 1 for a, b in ranges) + len(closing)
    headers["Content-Length"] = str(length)
    media = f"multipart/byteranges; boundary={boundary}"
    if head:
        return Response(status_code=206, headers=headers, media_type=media)

    def body() -> Iterator[bytes]:
        for part, (first, last) in zip(parts, ranges, strict=True):
            yield part
            yield from _blocks(node, first, last, readahead)
        yield closing

    return StreamingResponse(body(), status_code=206, headers=headers, media_type=media)


def _archive_response(node: Node, name: bytes, kind: str) -> Response:
    from snapfs.serve.archives import tar_zst_stream, zip_stream

    if not stat.S_ISDIR(node.attr(load=True).mode):
        raise RequestError(f"{node.where} is not a directory")
    top = name.decode("utf-8", "replace") or "datastore"
    if kind == "zip":
        stream, media, suffix = zip_stream(node, top), "application/zip", b".zip"
    else:
        stream, media, suffix = tar_zst_stream(node, top), "application/zstd", b".tar.zst"
    headers = {"Content-Disposition": _disposition("attachment", (name or b"datastore") + suffix)}
    return StreamingResponse(stream, headers=headers, media_type=media)


# -- handlers ---------------------------------------------------------------------------------------


class _AnyPath(PathConvertor):
    """`{path:path}` that matches names holding a newline too (a file name may)."""

    regex = "(?s:.*)"


register_url_convertor("anypath", _AnyPath())


def build_app(site: Site) -> Starlette:
    model = site.model

    def guarded(prefix: str, handler):
        def endpoint(request: Request) -> Response:
            names: list[bytes] = []
            try:
                # A query that names no namespace or snapshot is the asker's error (400) too.
                names = _names(request, prefix) if prefix else _api_names(request)
                return handler(request, names)
            except SnapfsError as exc:
                return _error(request, names, exc)

        return endpoint

    def browse(request: Request, names: list[bytes]) -> Response:
        node = model.resolve(names)
        attr = node.attr(load=True)
        if not stat.S_ISDIR(attr.mode):
            if request.url.path.endswith("/"):
                return RedirectResponse(pages.url_of("/browse", names), status_code=301)
            row = _row(names[-1] if names else b"", node)
            previewable = _content_type(row.name).startswith("text/") or (
                _content_type(row.name) in PREVIEW_TYPES
            )
            return HTMLResponse(pages.file_page(names, row, previewable))
        if not request.url.path.endswith("/"):
            return RedirectResponse(pages.url_of("/browse", names) + "/", status_code=301)
        query = request.query_params
        sort, order = query.get("sort", "name"), query.get("order", "asc")
        try:
            page = max(0, int(query.get("page", "1")) - 1)
        except ValueError:
            page = 0
        rows = _listing(node)
        key = pages.sort_key(sort)
        rows.sort(key=lambda pair: key(pair[0]), reverse=order == "desc")
        shown = [
            dataclasses.replace(row, details=child.details())
            for row, child in rows[page * pages.PAGE_SIZE : (page + 1) * pages.PAGE_SIZE]
        ]
        html = pages.directory_page(names, shown, len(rows), page, sort, order, node.details())
        return HTMLResponse(html)

    def raw(request: Request, names: list[bytes]) -> Response:
        return file_response(
            request, model.resolve(names), names[-1] if names else b"", site.readahead
        )

    def preview(request: Request, names: list[bytes]) -> Response:
        return file_response(
            request, model.resolve(names), names[-1] if names else b"", site.readahead, preview=True
        )

    def archive(kind: str):
        def handler(request: Request, names: list[bytes]) -> Response:
            if request.url.path.startswith("/api/"):
                query = _query(request)
                names = _api_names(request, with_path=False) + [
                    n for n in query.get("path", b"").split(b"/") if n
                ]
            return _archive_response(model.resolve(names), names[-1] if names else b"", kind)

        return handler

    def search(request: Request, names: list[bytes]) -> Response:
        query_text = request.query_params.get("q", "").strip()
        if not query_text:
            return RedirectResponse("/browse/", status_code=303)
        hits = site.search.search(
            SearchFilter.for_pattern(query_text, ns=request.query_params.get("ns", site.ns) or None)
        )
        if request.url.path.startswith("/api/"):
            return JSONResponse([hit_record(hit) for hit in hits])
        return HTMLResponse(pages.search_page(query_text, _search_hits(hits), site.search.note))

    def api_snapshots(request: Request, names: list[bytes]) -> Response:
        return JSONResponse(snapshot_records(model.datastore))

    def api_ls(request: Request, names: list[bytes]) -> Response:
        node = model.resolve(names)
        entries = []
        for row, _ in _listing(node):
            entry = {
                "name": row.name.decode("utf-8", "backslashreplace"),
                "type": type_letter(row.mode),
                "size": row.size,
                "mtime": format_backup_time(row.mtime_ns // 10**9),
                "mtime_ns": row.mtime_ns,
                "mode": row.mode,
                "uid": row.uid,
                "gid": row.gid,
            }
            if row.target is not None:
                entry["target"] = row.target.decode("utf-8", "backslashreplace")
            entries.append(entry)
        return JSONResponse(entries)

    def api_raw(request: Request, names: list[bytes]) -> Response:
        return file_response(
            request, model.resolve(names), names[-1] if names else b"", site.readahead
        )

    def root(request: Request) -> Response:
        start = [name for part in parse_namespace(site.ns) for name in (b"ns", part.encode())]
        return RedirectResponse(pages.url_of("/browse", start).rstrip("/") + "/", status_code=302)

    def css(request: Request) -> Response:
        return Response(pages.CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    read = ["GET", "HEAD"]
    routes = [
        Route("/", root, methods=read),
        Route("/static/app.css", css, methods=read),
        Route("/browse/{path:anypath}", guarded("/browse", browse), methods=read),
        Route("/browse", guarded("/browse", browse), methods=read),
        Route("/raw/{path:anypath}", guarded("/raw", raw), methods=read),
        Route("/preview/{path:anypath}", guarded("/preview", preview), methods=read),
        Route("/zip/{path:anypath}", guarded("/zip", archive("zip")), methods=read),
        Route("/tar/{path:anypath}", guarded("/tar", archive("tar")), methods=read),
        Route("/search", guarded("/search", search), methods=read),
        Route("/api/snapshots", guarded("", api_snapshots), methods=read),
        Route("/api/ls", guarded("", api_ls), methods=read),
        Route("/api/raw", guarded("", api_raw), methods=read),
        Route("/api/zip", guarded("", archive("zip")), methods=read),
        Route("/api/tar", guarded("", archive("tar")), methods=read),
        Route("/api/search", guarded("", search), methods=read),
    ]
    return Starlette(routes=routes)


def _search_hits(hits: list) -> list[pages.SearchHit]:
    found = []
    for version in distinct_versions(hits):
        series = version.series
        prefix: list[bytes] = []
        for part in parse_namespace(series.ns):
            prefix += [b"ns", part.encode()]
        places = []
        for when in version.times:
            names = [
                *prefix,
                series.type.encode(),
                series.id.encode(),
                format_backup_time(when).encode(),
                series.archive.encode(),
                *[n for n in version.entry.path.split(b"/") if n],
            ]
            where = f"{series.ns}:" if series.ns else ""
            places.append((f"{where}{series.group}/{format_backup_time(when)}", names))
        fields = entry_fields(version.entry)
        description = f"{fields['type']} {fields['size']} B, modified {fields['mtime']}"
        if "sha256" in fields:
            description += f", sha256 {fields['sha256'][:12]}"
        found.append(pages.SearchHit(version.entry.path, description, places))
    return found
