"""scripts/bench-verify end to end at its --quick size: the JSON it writes and what it checked.

Backs up a 256 MiB image, runs the real `snapfs verify` command in process, on two local worker
processes and on a Dask LocalCluster, then again from a SeaweedFS bucket behind the delaying
proxy: slow-marked (about two minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK_CHUNKS = 64  # 256 MiB in 4 MiB chunks
S3_LINES = {"verify-w1", "verify-w2", "verify-cluster"}
VERIFY_LINES = S3_LINES


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_verify_quick_json(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "bench-verify"),
            "--quick",
            "--repeat",
            "2",  # the second round reuses the cluster's open S3 connections
            "--s3",
            "--memory-chunks",
            "100000",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())

    made = doc["datastore"]
    assert made["image_mib"] == 256
    assert made["chunks"] == QUICK_CHUNKS
    assert 1 <= made["prefixes"] <= made["chunks"]

    lines = doc["local"]["lines"]
    limits = {"limit-1", "limit-1-warm", "limit-2", "limit-2-warm"}
    assert set(lines) == limits | VERIFY_LINES | {"verify-cluster-warm"}
    for name, line in lines.items():
        warm = "-warm" if name.endswith("-warm") else ""  # warm lines against the warm limit
        limit1 = lines["limit-1" + warm]["mb_per_s"]
        runs = line["runs"]
        assert len(runs) == 2, name
        for run in runs:
            # Every line checked every chunk, and decoded as many bytes as the limit did.
            assert run["chunks"] == QUICK_CHUNKS, name
            assert run["bytes"] == doc["local"]["decoded_bytes"] >= 256 * 2**20, name
        rates = sorted(r["bytes"] / r["elapsed"] / 1e6 for r in runs)
        assert line["mb_per_s"] == pytest.approx(sum(rates) / 2)  # the median of two
        assert line["per_core_vs_limit_1"] == pytest.approx(
            line["mb_per_s"] / line["cores"] / limit1
        )
    for name in VERIFY_LINES:
        for run in lines[name]["runs"]:
            # One GET per chunk and one LIST per .chunks/<4hex> folder, even from a local store.
            assert (run["gets"], run["lists"]) == (QUICK_CHUNKS, made["prefixes"]), name
            assert run["wall"] >= run["elapsed"] > 0, name
    for name in ("verify-cluster", "verify-cluster-warm"):
        assert lines[name]["runs"][0]["workers"].startswith("Dask scheduler tcp://"), name

    s3 = doc["s3"]
    assert s3["rtt_ms"] == 20
    assert set(s3["lines"]) == S3_LINES
    for name, line in s3["lines"].items():
        for run in line["runs"]:
            proxy = run["proxy"]
            assert (run["gets"], run["lists"]) == (QUICK_CHUNKS, made["prefixes"]), name
            # What the bucket saw: each chunk fetched once, each chunk folder listed once.
            assert proxy["chunk_gets"] == QUICK_CHUNKS, name
            assert proxy["chunk_lists"] == made["prefixes"], name

    mem = doc["memory"]
    assert mem["chunks"] == 100_000
    # At least the 32-byte digests themselves, twice (the map and the shard lists).
    assert 64 < mem["bytes_per_chunk"] < 4096

    table = proc.stdout
    assert "| snapfs verify --workers 2 |" in table and "coordinator memory:" in table
