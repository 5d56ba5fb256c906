"""`--resume STATE`: the shards a verify has finished, so the same command continues after a crash.

One JSON object per line, appended and flushed to disk as each shard finishes; a line cut short by
a crash is dropped on the next open. The first line says which run the file belongs to (SOURCE,
selection, subset and, for a random subset, its seed, so the rerun draws the same folders); a rerun
with other arguments is refused rather than mixing two runs. A finished shard is reused only if
the chunks it would check now are exactly those it checked (see `Shard.fingerprint`). When a run
ends, a last line says so, and the next run with the same file starts afresh: a weekly job can
keep one state file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from snapfs.errors import SnapfsError, UsageError
from snapfs.verify.shards import ChunkStatus, ShardResult

FORMAT = "snapfs-verify-state/1"
#: What a run decides as it starts, that a resumed run takes from the file instead.
_CARRIED = ("seed", "width")


class ResumeState:
    """The state file of one run; `finished` holds the results read back from it."""

    def __init__(self, path: str, run: dict[str, Any], finished: dict[int, ShardResult]) -> None:
        self.path = path
        self.run = run
        self.finished = finished

    @classmethod
    def open(cls, path: str, run: dict[str, Any]) -> ResumeState:
        """Read `path` if it holds an unfinished run like `run`, else start it anew.

        What a run decides when it starts (its random subset's "seed", the shards' "width") is
        taken from the file when resuming, so the rerun checks the same shards; the rest of
        `run` must match.
        """
        lines = _read_lines(path)
        if lines and not lines[-1].get("complete"):
            header = lines[0]
            if header.get("format") != FORMAT:
                raise UsageError(f"{path}: not a snapfs verify state file")
            stored = {k: header.get(k) for k in run if k not in _CARRIED}
            wanted = {k: v for k, v in run.items() if k not in _CARRIED}
            if stored != wanted:
                differs = ", ".join(
                    f"{k} {stored[k]!r} (now {wanted[k]!r})"
                    for k in wanted
                    if stored[k] != wanted[k]
                )
                raise UsageError(
                    f"{path} belongs to another verify run: {differs}; "
                    f"remove it or give another --resume file"
                )
            finished = {}
            for line in lines[1:]:
                result = _result_from(line, path)
                finished[result.number] = result
            carried = {k: header.get(k, run.get(k)) for k in _CARRIED}
            return cls(path, {**run, **carried}, finished)
        state = cls(path, run, {})
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": FORMAT, **run}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise SnapfsError(f"--resume {path}: cannot write: {exc.strerror}") from None
        return state

    def record(self, result: ShardResult) -> None:
        """Add a finished shard, on disk before the call returns."""
        self._append(_result_to(result))
        self.finished[result.number] = result

    def complete(self) -> None:
        self._append({"complete": True})

    def _append(self, line: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise SnapfsError(f"--resume {self.path}: cannot write: {exc.strerror}") from None


def _read_lines(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SnapfsError(f"--resume {path}: cannot read: {exc.strerror}") from None
    lines = []
    for raw in data.split(b"\n"):
        if not raw:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            break  # a line cut short by a crash, and nothing after it counts
        if not isinstance(line, dict):
            raise UsageError(f"{path}: not a snapfs verify state file")
        lines.append(line)
    if data and not data.endswith(b"\n"):
        # Drop the torn tail now, so the next append starts a line of its own.
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return lines


def _result_to(result: ShardResult) -> dict[str, Any]:
    return {
        "shard": result.number,
        "fingerprint": result.fingerprint,
        "checked": result.checked,
        "bytes": result.bytes,
        "gets": result.gets,
        "lists": result.lists,
        "crc_only": result.crc_only,
        "seconds": round(result.seconds, 3),
        "bad": [[d.hex(), s.state, s.message, s.size] for d, s in result.bad.items()],
    }


def _result_from(line: dict[str, Any], path: str) -> ShardResult:
    try:
        return ShardResult(
            number=int(line["shard"]),
            fingerprint=str(line["fingerprint"]),
            checked=int(line["checked"]),
            bytes=int(line["bytes"]),
            gets=int(line["gets"]),
            lists=int(line["lists"]),
            crc_only=int(line["crc_only"]),
            seconds=float(line["seconds"]),
            bad={
                bytes.fromhex(d): ChunkStatus(state, message, size)
                for d, state, message, size in line["bad"]
            },
        )
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{path}: not a snapfs verify state line: {str(line)[:80]}") from None
