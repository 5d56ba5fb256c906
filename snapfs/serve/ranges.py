"""HTTP Range requests (RFC 9110 §14) over a file of known size: which byte ranges to send."""

from __future__ import annotations

__all__ = ["MAX_RANGES", "RangeNotSatisfiable", "parse_ranges"]

#: More ranges than this in one request are served as the whole file (a request for thousands of
#: tiny ranges costs the server far more than the file).
MAX_RANGES = 64


class RangeNotSatisfiable(Exception):
    """No range of the request lies inside the file: answer 416 with the file's size."""


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The inclusive (first, last) byte ranges to send, in the order asked; None for the whole
    file (no Range header, another unit, a malformed one: RFC 9110 says to ignore those).

    Raises RangeNotSatisfiable when every range is outside the file.
    """
    if not header:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges = []
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) > MAX_RANGES:
        return None
    for part in parts:
        first, dash, last = (p.strip() for p in part.partition("-"))
        if (
            not dash
            or not (_is_digits(first) or first == "")
            or not (_is_digits(last) or last == "")
        ):
            return None
        if first == "":
            if last == "":
                return None
            length = _number(last)
            if length == 0 or size == 0:
                continue  # a zero-length suffix holds no byte
            ranges.append((max(size - length, 0), size - 1))
            continue
        start = _number(first)
        if last and _number(last) < start:
            return None
        if start >= size:
            continue
        ranges.append((start, min(_number(last) if last else size - 1, size - 1)))
    if not ranges:
        raise RangeNotSatisfiable(f"no range of {header!r} lies in a file of {size} bytes")
    return ranges


#: Past any file's size; what a position of more digits than int() converts stands for.
_HUGE = 1 << 80


def _is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit also takes '²' and other digits int() refuses or reads."""
    return text.isascii() and text.isdigit()


def _number(digits: str) -> int:
    """The value of ASCII digits of any length (int() refuses more than 4300 of them)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 24 else _HUGE
