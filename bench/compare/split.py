"""Split-archive lines: the bench's tree stored as a split archive, walked and tarred through a mount.

PBS writes a split archive (`.mpxar` metadata + `.ppxar` payload streams) when a backup runs
with change detection "data" or "metadata". The tree is backed up once more by `snapfs backup
--split` into the snapfs datastore (`host/tree-split`), then `find` and `tar` run through a fresh
mount, cold, checked as the comparison's are, each beside the unified archive's figure of the
same run. snapfs alone: restic and borg have no such format.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .data import TREE_NAME
from .lines import Line
from .probes import drop_caches, timed_find, timed_tar
from .tools import SNAPFS_TIME, Snapfs
from .verify import check_walk

if TYPE_CHECKING:
    from .measure import Runner

GROUP_ID = "tree-split"
LINES = [
    Line(
        "split-find-stat-cold", "find + stat of every tree entry, split archive, cold", "s", "split"
    ),
    Line("split-tar-cold", "tar of all files (every byte), split archive, cold", "MB/s", "split"),
]
#: Each split line and the unified archive's benchmark it is set beside.
UNIFIED = {"split-find-stat-cold": "find-stat-cold", "split-tar-cold": "tree-tar-cold"}


def tree_path(mountpoint: str) -> str:
    return os.path.join(mountpoint, "host", GROUP_ID, SNAPFS_TIME, "root.pxar")


def back_up(runner: Runner, tool: Snapfs) -> None:
    """The tree as a split archive in snapfs's datastore, unless an earlier run left it there."""
    if os.path.isdir(os.path.join(tool.repo, "host", GROUP_ID, SNAPFS_TIME)):
        return
    tree = os.path.join(runner.data_dir, TREE_NAME)
    tool.back_up(f"root.pxar:{tree}", "host", GROUP_ID, "--split")


def measure(runner: Runner, tool: Snapfs) -> None:
    back_up(runner, tool)
    with runner.mounted(tool, "split") as mount:
        drop_caches()
        elapsed, lines = timed_find(tree_path(mount.mountpoint))
        runner.record_line("split-find-stat-cold", elapsed, check_walk(lines, runner.manifest))
    with runner.mounted(tool, "split") as mount:
        drop_caches()
        elapsed, total, problem = timed_tar(tree_path(mount.mountpoint), runner.manifest.files)
        runner.record_line("split-tar-cold", total / elapsed / 1e6, problem)


def section(lines: list[dict], results: list[dict]) -> dict:
    """The JSON's "split": each line, the unified archive's figure beside it ("unified", by
    line) and their ratio (> 1: the split archive is faster)."""
    snapfs = {r["benchmark"]: r for r in results if r["tool"] == "snapfs"}
    unified, ratios = {}, {}
    for line in lines:
        other = snapfs.get(UNIFIED.get(line["line"], ""))
        if other is None:
            continue
        unified[line["line"]] = {k: other[k] for k in ("benchmark", "value", "unit", "verified")}
        if other["value"] and line["value"] and line["verified"] and other["verified"]:
            faster = line["value"] / other["value"]
            ratios[line["line"]] = round(1 / faster if line["unit"] == "s" else faster, 4)
    return {"results": lines, "unified": unified, "ratios": ratios}
