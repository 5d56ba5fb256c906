"""`snapfs map` starts its mount process without leaving a file of it open in the caller."""

from __future__ import annotations

import argparse
import gc
import sys
import warnings

from snapfs.mapping import _start_mount


def test_mount_error_file_is_closed_by_the_caller(tmp_path):
    """The child keeps its own copy; the caller's must be closed, not left to the collector
    (which warns, and on other Pythons may keep the descriptor open for a long time)."""
    args = argparse.Namespace(source=str(tmp_path / "ds"), cache_size=256 << 20, keyfile=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = _start_mount(args, tmp_path, tmp_path / "mnt", False, [sys.executable, "-c", ""])
        gc.collect()
    proc.wait(timeout=30)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert (tmp_path / "mount.err").exists()
