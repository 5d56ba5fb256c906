"""`snapfs verify --json` reports, compared between runs that must agree (one process, worker
processes, a Dask cluster, slices, a resumed run)."""

from __future__ import annotations


def comparable(report: dict) -> dict:
    """A report without what differs between equal runs: time, where it ran, shards read back."""
    return {k: v for k, v in report.items() if k not in ("elapsed", "workers", "shards_resumed")}


def bad_chunks(report: dict) -> set[tuple[str, str, str]]:
    """(snapshot, chunk digest, problem) of every bad chunk the report names."""
    return {
        (s["snapshot"], b["digest"], b["problem"])
        for s in report["snapshots"]
        for b in s["bad_chunks"]
    }
