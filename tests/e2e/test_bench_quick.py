"""scripts/bench end to end at its tiny size: the JSON it prints, and that every figure was verified.

Runs the real tools (snapfs, restic, borg: real backups, real FUSE mounts, real restores), so it
is slow-marked; at --tiny it takes well under two minutes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"snapfs", "restic", "borg"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_tiny_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "bench"),
            "--tiny",
            "--json",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert isinstance(doc["results"], list)
    assert isinstance(doc["ratios"], dict)

    results = doc["results"]
    for r in results:
        assert {"benchmark", "tool", "value", "unit", "better"} <= r.keys()
        assert r["tool"] in TOOLS
        assert r["better"] in ("higher", "lower")
        assert isinstance(r["value"], int | float) and r["value"] > 0, r
        assert r["verified"] is True, r
    # Every benchmark ran for every tool.
    benchmarks = {r["benchmark"] for r in results}
    assert len(benchmarks) >= 15
    for bench in benchmarks:
        assert {r["tool"] for r in results if r["benchmark"] == bench} == TOOLS, bench

    # A ratio for each benchmark and peer, oriented so that > 1 means snapfs is better.
    by = {(r["benchmark"], r["tool"]): r for r in results}
    assert set(doc["ratios"]) == {f"{b}/{p}" for b in benchmarks for p in ("restic", "borg")}
    for key, ratio in doc["ratios"].items():
        bench, peer = key.split("/")
        ours, theirs = by[(bench, "snapfs")]["value"], by[(bench, peer)]["value"]
        want = ours / theirs if by[(bench, "snapfs")]["better"] == "higher" else theirs / ours
        assert ratio == pytest.approx(want, rel=1e-3), key

    # snapfs serve's lines: both downloads checked, each with its ratio to the command line.
    serve = doc["serve"]
    assert {line["line"] for line in serve["results"]} >= {
        "serve-image-cold",
        "cat-image-cold",
        "serve-zip-tree-cold",
        "restore-tree-cold",
        "serve-zip-rss",
    }
    assert all(line["verified"] for line in serve["results"]), serve["results"]
    assert set(serve["ratios"]) == {
        "serve-image-cold/cat-image-cold",
        "serve-zip-tree-cold/restore-tree-cold",
    }

    # This machine's limits, each measured and checked, and snapfs's figures held against them:
    # among them the first walk's own work and the null filesystem's tar of as many files.
    limits = doc["limits"]
    assert {line["line"] for line in limits["results"]} >= {
        "decode",
        "chunk-decode-serial",
        "first-walk",
        "index-listings",
        "nullfs-find-stat-cold",
        "nullfs-tar-cold",
    }
    assert all(line["verified"] for line in limits["results"]), limits["results"]
    assert {
        "find-stat-cold/first-walk",
        "find-stat-next/index-listings",
        "tree-tar-cold/nullfs-tar-cold",
    } <= set(limits["ratios"])

    # The tree as a split archive: walked and tarred, checked, each beside the unified figure.
    split = doc["split"]
    assert {line["line"] for line in split["results"]} == {"split-find-stat-cold", "split-tar-cold"}
    assert all(line["verified"] and line["value"] > 0 for line in split["results"])
    assert (
        set(split["ratios"]) == set(split["unified"]) == {"split-find-stat-cold", "split-tar-cold"}
    )
    assert split["unified"]["split-tar-cold"]["value"] == by[("tree-tar-cold", "snapfs")]["value"]

    # The human-facing outputs: the markdown table names every benchmark; the chart is a PNG.
    table = (out / "benchmarks.md").read_text()
    assert table.count("\n| ") >= len(benchmarks)
    assert "snapfs / restic" in table and "snapfs / borg" in table
    assert "## Split archives" in table
    assert (out / "bench-ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The restored trees were set aside while the run measured and deleted when it ended.
    work = tmp_path / "work"
    assert not (work / "discarded").exists()
    assert not list(work.glob("restore-*")) and not (work / "disk-write-tree").exists()
