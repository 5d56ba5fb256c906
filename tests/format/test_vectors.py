"""The golden vectors are intact: every file SHA256SUMS names has that digest, and nothing else.

A damaged or missing vector would otherwise make a format test fail (or pass) for the wrong
reason; this test names the file instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _listed(vectors: Path) -> dict[str, str]:
    sums = {}
    for line in (vectors / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    return sums


def test_every_vector_matches_its_sum(vectors: Path) -> None:
    bad = [
        name
        for name, digest in _listed(vectors).items()
        if not (vectors / name).is_file()
        or hashlib.sha256((vectors / name).read_bytes()).hexdigest() != digest
    ]
    assert bad == [], f"golden vectors missing or damaged: {bad}"


def test_every_vector_is_listed(vectors: Path) -> None:
    on_disk = {
        str(path.relative_to(vectors))
        for path in vectors.rglob("*")
        if path.is_file() and path.name not in ("SHA256SUMS", "README.md")
    }
    assert on_disk - set(_listed(vectors)) == set()
