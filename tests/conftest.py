"""Shared fixtures: where the upstream golden vectors live (tests/vectors, see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.vectors import VECTORS


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The golden vectors made by upstream Rust code; a missing folder fails loudly, never skips."""
    if not (VECTORS / "SHA256SUMS").is_file():
        pytest.fail(f"golden vectors not found at {VECTORS} (set SNAPFS_VECTORS)")
    return VECTORS


# The S3 test server fixtures (s3server, s3_vectors) for the tests that read from S3.
pytest_plugins = ["support.s3server"]
