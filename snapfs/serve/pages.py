"""The HTML of `snapfs serve`: plain server-rendered pages, every name escaped.

No script runs in them (the Content-Security-Policy allows none but our own stylesheet), so a
file name crafted as markup in a backup can never run in the browser. Sorting and paging are
links: a directory of 20,000 entries is sent a page at a time.
"""

from __future__ import annotations

import html
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

__all__ = [
    "CSS",
    "PAGE_SIZE",
    "Row",
    "SearchHit",
    "directory_page",
    "error_page",
    "file_page",
    "search_page",
    "sort_key",
    "url_of",
]

PAGE_SIZE = 500

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
header { display: flex; gap: 1em; align-items: baseline; flex-wrap: wrap; }
h1 { font-size: 1.2em; margin: 0; }
nav.crumbs a { text-decoration: none; }
form.search input[type=search] { width: 22em; }
table { border-collapse: collapse; margin-top: 1em; width: 100%; }
th, td { text-align: left; padding: 0.2em 0.8em; border-bottom: 1px solid #eee; white-space: nowrap; }
th a { color: inherit; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { white-space: normal; word-break: break-all; }
.details { margin-top: 0.5em; color: #555; }
.details dt { font-weight: bold; display: inline; }
.details dd { display: inline; margin: 0 1.5em 0 0.3em; white-space: pre-wrap; }
.error { color: #a00; font-weight: bold; }
.pages { margin-top: 1em; }
"""


def url_of(prefix: str, names: Sequence[bytes], **query: str) -> str:
    """`/browse/a/b%2Fc` from names (any bytes, percent-encoded), with an optional query."""
    path = "/".join(quote(name, safe=":@") for name in names)
    url = f"{prefix}/{path}"
    if query:
        url += "?" + urlencode({k: v for k, v in query.items() if v})
    return url


def _text(name: bytes) -> str:
    return html.escape(name.decode("utf-8", "backslashreplace"))


def _when(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mtime_ns // 10**9))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _page(title: str, names: Sequence[bytes], body: str) -> str:
    crumbs = ['<a href="/browse/">datastore</a>']
    for i in range(len(names)):
        crumbs.append(
            f'<a href="{html.escape(url_of("/browse", names[: i + 1]))}/">{_text(names[i])}</a>'
        )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width">'
        f'<title>{html.escape(title)} · snapfs</title><link rel="stylesheet" href="/static/app.css">'
        "</head><body><header>"
        f'<nav class="crumbs">{" / ".join(crumbs)}</nav>'
        '<form class="search" action="/search" method="get">'
        '<input type="search" name="q" placeholder="search every snapshot, e.g. *.conf" '
        'aria-label="search"> <button type="submit">search</button></form>'
        f"</header>{body}</body></html>"
    )


def _details(details: dict[str, str]) -> str:
    if not details:
        return ""
    items = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in details.items()
    )
    return f'<dl class="details">{items}</dl>'


@dataclass(frozen=True)
class Row:
    """One entry of a directory as a page shows it."""

    name: bytes
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    target: bytes | None = None  # a symlink's
    details: dict[str, str] | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


_SORT_KEYS = {
    "name": lambda r: r.name,
    "size": lambda r: r.size,
    "mtime": lambda r: r.mtime_ns,
}


def sort_key(sort: str):
    """What the rows of a directory page sort by: name (default), size or mtime."""
    return _SORT_KEYS.get(sort, _SORT_KEYS["name"])


def directory_page(
    names: Sequence[bytes],
    rows: Sequence[Row],
    total: int,
    page: int,
    sort: str,
    order: str,
    details: dict[str, str],
) -> str:
    """A directory: `rows` is the page `page` of `total` entries sorted by `sort`/`order`."""
    here = url_of("/browse", names)

    def header(key: str, label: str) -> str:
        flip = "desc" if sort == key and order != "desc" else "asc"
        mark = (" ▾" if order == "desc" else " ▴") if sort == key else ""
        href = html.escape(f"{here}/?{urlencode({'sort': key, 'order': flip})}")
        return f'<th><a href="{href}">{label}{mark}</a></th>'

    lines = []
    for row in rows:
        child = [*names, row.name]
        if row.is_dir:
            link = html.escape(url_of("/browse", child) + "/")
            actions = (
                f'<a href="{html.escape(url_of("/zip", child))}">zip</a> '
                f'<a href="{html.escape(url_of("/tar", child))}">tar.zst</a>'
            )
            shown = _text(row.name) + "/"
        else:
            link = html.escape(url_of("/browse", child))
            actions = ""
            if stat.S_ISREG(row.mode):
                actions = f'<a href="{html.escape(url_of("/raw", child))}">download</a>'
            shown = _text(row.name)
            if row.target is not None:
                shown += " → " + _text(row.target)
        extra = ", ".join(f"{k}: {v}" for k, v in (row.details or {}).items())
        lines.append(
            f'<tr><td class="name"><a href="{link}">{shown}</a></td>'
            f"<td>{stat.filemode(row.mode)}</td><td>{row.uid}:{row.gid}</td>"
            f'<td class="num">{"" if row.is_dir else _size(row.size)}</td>'
            f"<td>{_when(row.mtime_ns)}</td><td>{html.escape(extra)}</td><td>{actions}</td></tr>"
        )
    pages = ""
    last = max(0, (total - 1) // PAGE_SIZE)
    if last:
        links = []
        for number in range(last + 1):
            if number == page:
                links.append(f"<b>{number + 1}</b>")
            else:
                query = urlencode({"sort": sort, "order": order, "page": number + 1})
                links.append(f'<a href="{html.escape(f"{here}/?{query}")}">{number + 1}</a>')
        pages = f'<div class="pages">page {" ".join(links)} of {total} entries</div>'
    title = _text(names[-1]) if names else "datastore"
    body = (
        f"<h1>{title}</h1>{_details(details)}"
        f"<table><thead><tr>{header('name', 'name')}<th>mode</th><th>owner</th>"
        f"{header('size', 'size')}{header('mtime', 'modified')}<th></th><th></th></tr></thead>"
        f"<tbody>{''.join(lines)}</tbody></table>{pages}"
    )
    return _page(names[-1].decode("utf-8", "replace") if names else "datastore", names, body)


def file_page(names: Sequence[bytes], row: Row, previewable: bool) -> str:
    preview = (
        f' · <a href="{html.escape(url_of("/preview", names))}">preview</a>' if previewable else ""
    )
    if stat.S_ISREG(row.mode):
        links = f'<p><a href="{html.escape(url_of("/raw", names))}">download</a>{preview}</p>'
    elif row.target is not None:
        links = f"<p>symbolic link to {_text(row.target)}</p>"
    else:
        links = ""
    body = (
        f"<h1>{_text(row.name)}</h1>"
        f"<p>{stat.filemode(row.mode)} {row.uid}:{row.gid} · {_size(row.size)} "
        f"({row.size} bytes) · modified {_when(row.mtime_ns)} UTC</p>{links}"
    )
    return _page(row.name.decode("utf-8", "replace"), names, body)


@dataclass(frozen=True)
class SearchHit:
    """One version of a path and where it is, for the search page."""

    path: bytes
    description: str
    places: list[tuple[str, Sequence[bytes]]]  # (label, names of the file in the tree)


def search_page(query: str, hits: Iterable[SearchHit], note: str = "") -> str:
    blocks = []
    current = None
    for hit in hits:
        if hit.path != current:
            if current is not None:
                blocks.append("</ul>")
            current = hit.path
            blocks.append(f"<h2>{_text(hit.path)}</h2><ul>")
        places = ", ".join(
            f'<a href="{html.escape(url_of("/browse", names))}">{html.escape(label)}</a>'
            for label, names in hit.places
        )
        blocks.append(f"<li>{html.escape(hit.description)}: {places}</li>")
    if current is not None:
        blocks.append("</ul>")
    found = "".join(blocks) or "<p>nothing matches</p>"
    body = (
        f"<h1>search: {html.escape(query)}</h1>"
        f"{f'<p class=details>{html.escape(note)}</p>' if note else ''}{found}"
    )
    return _page(f"search {query}", [], body)


def error_page(names: Sequence[bytes], status: int, message: str) -> str:
    body = f'<h1>{status}</h1><p class="error">{html.escape(message)}</p>'
    return _page(f"error {status}", names, body)
