"""What a restore did, in one record: the summary line, the JSON report and the exit code.

`failures` lists exactly what is missing from TARGET, so a caller (or a script reading --json)
knows what to fetch again; pxar, image and blob restores fill the same record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RestoreReport", "display_path"]


@dataclass
class RestoreReport:
    """What a restore did; `failures` lists exactly what is missing from TARGET."""

    kind: str
    source: str
    target: str
    files: int = 0  # entries restored (files, dirs, links, nodes), or 1 for an image/blob
    bytes_total: int = 0
    bytes_written: int = 0
    bytes_sparse: int = 0  # zero runs left as holes instead of being written
    bytes_reused: int = 0  # --resume: already in place and verified, not rewritten
    skipped: list[str] = field(default_factory=list)  # existed, kept per --overwrite
    failures: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    resumed: bool = False  # finished a tree restore that was interrupted
    elapsed: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    def fail(self, message: str, **details: Any) -> None:
        self.failures.append({"message": message, **details})

    @property
    def ok(self) -> bool:
        return not self.failures

    def finish(self) -> RestoreReport:
        self.elapsed = time.monotonic() - self._started
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "resumed": self.resumed,
            "files": self.files,
            "bytes_total": self.bytes_total,
            "bytes_written": self.bytes_written,
            "bytes_sparse": self.bytes_sparse,
            "bytes_reused": self.bytes_reused,
            "skipped": self.skipped,
            "failures": self.failures,
            "elapsed": round(self.elapsed, 3),
        }

    def summary(self) -> str:
        rate = self.bytes_total / self.elapsed / 1e6 if self.elapsed > 0 else 0.0
        verb = "would restore" if self.dry_run else "restored"
        parts = [
            f"{verb} {self.files} {'entries' if self.kind == 'pxar' else 'file'}, "
            f"{_human(self.bytes_total)} to {self.target} in {self.elapsed:.1f}s ({rate:.1f} MB/s)"
        ]
        if self.resumed:
            parts.append("finished an interrupted restore")
        if self.bytes_sparse:
            parts.append(f"{_human(self.bytes_sparse)} left sparse")
        if self.bytes_reused:
            parts.append(f"{_human(self.bytes_reused)} already in place")
        if self.skipped:
            parts.append(f"{len(self.skipped)} existing kept")
        parts.append(f"{len(self.failures)} failed" if self.failures else "no failures")
        return "; ".join(parts)


def display_path(path: bytes) -> str:
    """An archive path for messages and JSON: undecodable bytes shown as escapes."""
    return path.decode("utf-8", "backslashreplace")


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"
