"""scripts/bench-pxar end to end at a small size: the JSON it prints and the lookup-cost goal.

Encodes, chunks and stores a real archive, then walks it in child processes, so it is
slow-marked; at 20,000 entries it takes seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRIES = 20_000


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_pxar_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "bench-pxar"),
            "--entries",
            str(ENTRIES),
            "--rounds",
            "1",
            "--json",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout is exactly one JSON object

    assert doc["entries"] == ENTRIES
    assert doc["chunks"] >= 1 and doc["archive_mib"] > 0
    assert doc["deep_path"].startswith("/tree/")
    lookup = doc["deep_lookup"]
    assert {"open_ms", "open_chunks", "lookup_ms", "lookup_chunks", "lookup_warm_ms"} <= set(lookup)
    assert 1 <= lookup["lookup_chunks"] <= 5, lookup

    assert doc["big_dir_entries"] == ENTRIES // 10
    assert doc["listdir"]["listdir_s"] > 0 and doc["listdir"]["listdir_chunks"] >= 1

    walk, small = doc["walk"], doc["walk_small"]
    assert walk["entries"] == ENTRIES + 1  # the root too; the script checks the count it walked
    assert small["entries"] == ENTRIES // 10 + 1
    for w in (walk, small):
        assert w["seconds"] > 0
        assert 0 < w["rss_excl_cache_mib"] < w["rss_peak_mib"] < 150, w
    assert walk["cache_mib"] <= walk["cache_limit_mib"]
    assert doc["rss_excl_cache_growth_ratio"] == pytest.approx(
        walk["rss_excl_cache_mib"] / small["rss_excl_cache_mib"]
    )
    # no growth to speak of between ten times fewer entries and these (a 2x margin for noise)
    assert doc["rss_excl_cache_growth_ratio"] < 2
