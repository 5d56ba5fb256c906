"""The fuzz tests under scripts/fuzz: with SNAPFS_FUZZ_EXAMPLES set (support/fuzzing.py) a test
runs as long as its examples take, so the per-test time limits of the suite do not apply."""

from __future__ import annotations

import pytest
from support.fuzzing import LONG_EXAMPLES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if LONG_EXAMPLES:
        for item in items:
            item.add_marker(pytest.mark.timeout(0), append=False)
