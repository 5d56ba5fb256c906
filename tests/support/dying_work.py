"""Work for the process pool tests: a function whose worker process dies the first time it meets
a given item (a crash a real shard cannot be made to produce on demand)."""

from __future__ import annotations

import os
from pathlib import Path


def square_or_die(marker_dir: str, item: int) -> int:
    """item², except that the first call for an item with a `die-<item>` file in `marker_dir`
    removes the file and kills its process on the spot, as a SIGKILL or the OOM killer would."""
    marker = Path(marker_dir) / f"die-{item}"
    try:
        marker.unlink()
    except FileNotFoundError:
        return item * item
    os._exit(9)


def always_die(item: int) -> int:
    os._exit(9)
