"""`snapfs map` starts its mount process without leaving a file of it open in the caller."""

from __future__ import annotations

import gc
import sys
import warnings

from snapfs.mapping import MapRequest, _start_mount
from snapfs.store.sources import SourceOptions


def test_mount_error_file_is_closed_by_the_caller(tmp_path):
    """The child keeps its own copy; the caller's must be closed, not left to the collector
    (which warns, and on other Pythons may keep the descriptor open for a long time)."""
    request = MapRequest(
        SourceOptions(str(tmp_path / "ds")),
        "vm/100/2024-06-01T10:00:00Z",
        "drive-scsi0.img",
        cache_size=256 << 20,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = _start_mount(request, tmp_path, tmp_path / "mnt", False, [sys.executable, "-c", ""])
        gc.collect()
    proc.wait(timeout=30)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert (tmp_path / "mount.err").exists()
