"""Request and traffic counters of a remote source, and what they would cost.

An admin reading a surviving bucket pays per request and per byte; these counters say what a
mount or a restore did (GET/LIST/HEAD counts, bytes, retries, cache hits) and estimate the bill
from a provider's list prices. Printed at unmount and served live by the mount as text.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class PriceTable:
    """List prices in USD: per 1000 GET/HEAD requests, per 1000 LIST requests, per GB (1e9) out."""

    name: str
    get_per_1000: float
    list_per_1000: float
    egress_per_gb: float


# Public list prices of the standard storage class, first region tier, as of 2025. Estimates only:
# free tiers, negotiated prices and egress to the same cloud are not modelled.
PRICE_TABLES: dict[str, PriceTable] = {
    "aws": PriceTable("AWS S3 Standard (us-east-1)", 0.0004, 0.005, 0.09),
    "gcs": PriceTable("Google Cloud Storage Standard", 0.0004, 0.005, 0.12),
    "azure": PriceTable("Azure Blob Hot (LRS)", 0.0004, 0.0065, 0.087),
    "r2": PriceTable("Cloudflare R2", 0.00036, 0.0045, 0.0),
    "b2": PriceTable("Backblaze B2", 0.0004, 0.004, 0.01),
    "wasabi": PriceTable("Wasabi", 0.0, 0.0, 0.0),
    "self-hosted": PriceTable("self-hosted (MinIO, Ceph RGW, SeaweedFS)", 0.0, 0.0, 0.0),
}
DEFAULT_PROVIDER = "aws"

_COUNTERS = (
    "get_requests",
    "list_requests",
    "head_requests",
    "bytes_downloaded",
    "retries",
    "throttled",
    "errors",
    "not_modified",
    "disk_cache_hits",
    "disk_cache_misses",
    "disk_cache_bytes_read",
    "disk_cache_corrupt",
    "disk_cache_evictions",
    "disk_cache_skipped_writes",
)


class SourceStats:
    """Thread-safe counters. `add` is the only writer; `snapshot` is a consistent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    def add(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._values[counter] += amount

    def get(self, counter: str) -> int:
        with self._lock:
            return self._values[counter]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


def estimate_cost(counters: dict[str, int], provider: str = DEFAULT_PROVIDER) -> float:
    """USD the requests and downloaded bytes in `counters` cost at `provider`'s list prices."""
    table = PRICE_TABLES[provider]
    gets = counters.get("get_requests", 0) + counters.get("head_requests", 0)
    return (
        gets / 1000 * table.get_per_1000
        + counters.get("list_requests", 0) / 1000 * table.list_per_1000
        + counters.get("bytes_downloaded", 0) / 1e9 * table.egress_per_gb
    )


def _ratio(hits: int, misses: int) -> float | None:
    total = hits + misses
    return hits / total if total else None


def build_report(
    counters: dict[str, int],
    *,
    memory_hits: int = 0,
    memory_misses: int = 0,
    provider: str = DEFAULT_PROVIDER,
) -> dict:
    """The dict `stats()` returns: raw counters, hit ratios and the cost estimate."""
    report: dict = dict(counters)
    report["memory_cache_hits"] = memory_hits
    report["memory_cache_misses"] = memory_misses
    report["memory_cache_hit_ratio"] = _ratio(memory_hits, memory_misses)
    report["disk_cache_hit_ratio"] = _ratio(
        counters.get("disk_cache_hits", 0), counters.get("disk_cache_misses", 0)
    )
    report["provider"] = provider
    report["estimated_cost_usd"] = estimate_cost(counters, provider)
    return report


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.1f}%"


def format_report(report: dict) -> str:
    """The text of MOUNTPOINT/.snapfs/stats and of the unmount summary."""
    mib = report.get("bytes_downloaded", 0) / (1024 * 1024)
    lines = [
        f"requests: GET {report.get('get_requests', 0)}, LIST {report.get('list_requests', 0)}, "
        f"HEAD {report.get('head_requests', 0)} (retries {report.get('retries', 0)}, "
        f"throttled {report.get('throttled', 0)}, failed {report.get('errors', 0)}, "
        f"not modified {report.get('not_modified', 0)})",
        f"downloaded: {report.get('bytes_downloaded', 0)} bytes ({mib:.1f} MiB)",
        f"memory cache: {report.get('memory_cache_hits', 0)} hits, "
        f"{report.get('memory_cache_misses', 0)} misses ({_percent(report.get('memory_cache_hit_ratio'))})",
        f"disk cache: {report.get('disk_cache_hits', 0)} hits, {report.get('disk_cache_misses', 0)} misses "
        f"({_percent(report.get('disk_cache_hit_ratio'))}), {report.get('disk_cache_corrupt', 0)} corrupt, "
        f"{report.get('disk_cache_evictions', 0)} evicted",
    ]
    provider = report.get("provider", DEFAULT_PROVIDER)
    table = PRICE_TABLES.get(provider)
    if table is not None:
        lines.append(
            f"estimated cost: ${report.get('estimated_cost_usd', 0.0):.6f} at {table.name} list prices"
        )
    return "\n".join(lines) + "\n"
