"""Lines measured for snapfs alone, beside the comparison: this machine's limits, and S3.

A line is one figure with no peer to divide by: the limits (decode, chunk decode, a null FUSE
filesystem) say how close snapfs comes to what this machine can do at all, and the S3 lines say
what a bucket and its latency cost. Each line is recorded like a benchmark (verified, the median
of the rounds) and reported in its own section of the JSON and its own table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Line:
    id: str
    title: str
    unit: str
    group: str  # "limits" | "s3"


@dataclass
class LineSample:
    value: float | None
    verified: bool
    note: str = ""
    extra: dict = field(default_factory=dict)  # e.g. the GETs an S3 line made


def summarize(line: Line, samples: list[LineSample]) -> dict:
    """One line's result: the median round (its value and what it counted), verified if all were.

    The upper median, so that the value and the counts beside it come from one real round.
    """
    ok = [s for s in samples if s.value is not None]
    middle = (
        sorted(ok, key=lambda s: s.value)[len(ok) // 2] if ok and len(ok) == len(samples) else None
    )
    out = {
        "line": line.id,
        "title": line.title,
        "value": None if middle is None else middle.value,
        "unit": line.unit,
        "verified": all(s.verified for s in samples),
        **({} if middle is None else middle.extra),
    }
    notes = "; ".join(s.note for s in samples if s.note)
    if notes:
        out["note"] = notes
    if len(ok) > 1:
        out["rounds"] = [s.value for s in ok]
    return out
