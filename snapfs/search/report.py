"""Search hits, changes and file versions as records (`--json`, the web API) and as text."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

from snapfs.index.history import IndexedEntry, Located, Series
from snapfs.search.diff import Change
from snapfs.store.datastore import format_backup_time
from snapfs.views.browse import show_name

__all__ = [
    "FileVersion",
    "change_record",
    "change_line",
    "distinct_versions",
    "entry_fields",
    "format_hits",
    "hit_record",
    "version_record",
]


def _mtime(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime_ns // 10**9))


def entry_fields(entry: IndexedEntry) -> dict:
    """An indexed entry's metadata as JSON-friendly fields."""
    fields = {
        "type": entry.type,
        "size": entry.size,
        "mtime": _mtime(entry.mtime_ns),
        "mtime_ns": entry.mtime_ns,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
    }
    if entry.content is not None:
        fields["sha256"] = entry.content.hex()
    return fields


def _snapshot(series: Series, at: int) -> str:
    return f"{series.group}/{format_backup_time(at)}"


def hit_record(hit: Located) -> dict:
    """One `snapfs search --json` line."""
    return {
        "ns": hit.series.ns,
        "snapshot": _snapshot(hit.series, hit.time),
        "archive": hit.series.archive,
        "path": show_name(hit.entry.path),
        **entry_fields(hit.entry),
    }


@dataclass(frozen=True)
class FileVersion:
    """One distinct version of an entry in one series, and the snapshots holding it."""

    series: Series
    entry: IndexedEntry
    times: tuple[int, ...]

    @property
    def first(self) -> int:
        return self.times[0]

    @property
    def last(self) -> int:
        return self.times[-1]


def distinct_versions(hits: Iterable[Located]) -> list[FileVersion]:
    """Hits grouped by (series, version), in order of first appearance."""
    grouped: dict[tuple[Series, IndexedEntry], list[int]] = {}
    for hit in hits:
        grouped.setdefault((hit.series, hit.entry), []).append(hit.time)
    found = [FileVersion(s, e, tuple(sorted(t))) for (s, e), t in grouped.items()]
    found.sort(key=lambda v: (v.entry.path, v.first, v.series))
    return found


def version_record(version: FileVersion) -> dict:
    """One `snapfs versions --json` line."""
    return {
        "ns": version.series.ns,
        "group": version.series.group,
        "archive": version.series.archive,
        "path": show_name(version.entry.path),
        "first": _snapshot(version.series, version.first),
        "last": _snapshot(version.series, version.last),
        "snapshots": len(version.times),
        **entry_fields(version.entry),
    }


def _describe(entry: IndexedEntry) -> str:
    kind = stat.filemode(entry.mode)
    content = f" sha256:{entry.content.hex()[:12]}" if entry.content is not None else ""
    return f"{kind} {entry.uid}:{entry.gid} {entry.size} B, mtime {_mtime(entry.mtime_ns)}{content}"


def _held_line(version: FileVersion) -> str:
    where = f"{version.series.ns}:" if version.series.ns else ""
    span = format_backup_time(version.first)
    if len(version.times) > 1:
        span += f" .. {format_backup_time(version.last)}"
    count = len(version.times)
    return (
        f"    in {where}{version.series.group} {version.series.archive}: {span} "
        f"({count} snapshot{'s' if count != 1 else ''})"
    )


def version_line(version: FileVersion) -> str:
    """A version and the snapshots of its series holding it, two lines."""
    return f"  {_describe(version.entry)}\n{_held_line(version)}"


def format_hits(hits: Iterable[Located]) -> str:
    """Search results grouped by path, then by version: where each version is held."""
    by_path: dict[bytes, dict[IndexedEntry, list[FileVersion]]] = {}
    for version in distinct_versions(hits):
        by_path.setdefault(version.entry.path, {}).setdefault(version.entry, []).append(version)
    lines: list[str] = []
    for path, versions in by_path.items():
        lines.append(show_name(path))
        for entry, held in versions.items():
            lines.append(f"  {_describe(entry)}")
            lines.extend(_held_line(version) for version in held)
    return "".join(line + "\n" for line in lines)


def change_record(change: Change) -> dict:
    """One `snapfs diff --json` line."""
    record: dict = {"change": change.change, "archive": change.archive}
    if change.path is not None:
        record["path"] = show_name(change.path)
    if change.old is not None:
        record["old"] = entry_fields(change.old)
    if change.new is not None:
        record["new"] = entry_fields(change.new)
    if change.chunks is not None:
        record["chunks"] = list(change.chunks)
        record["bytes"] = change.bytes
    return record


def change_line(change: Change) -> str:
    """restic's form: `M    /etc/hosts`, with the archive in front."""
    if change.chunks is not None:
        return f"{change.change}    {change.archive} ({len(change.chunks)} chunks, {change.bytes} bytes)"
    if change.path is None:
        return f"{change.change}    {change.archive}"
    return f"{change.change}    {change.archive}{show_name(change.path)}"
