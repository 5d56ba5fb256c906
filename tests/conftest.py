"""Shared fixtures: where the upstream golden vectors live (tests/vectors, see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# SNAPFS_VECTORS points the suite at another copy, e.g. vectors regenerated from newer upstream.
VECTORS = Path(os.environ.get("SNAPFS_VECTORS", REPO / "tests" / "vectors"))
VECTOR_PASSWORD = b"pbs-vector-password"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The golden vectors made by upstream Rust code; a missing folder fails loudly, never skips."""
    if not (VECTORS / "SHA256SUMS").is_file():
        pytest.fail(f"golden vectors not found at {VECTORS} (set SNAPFS_VECTORS)")
    return VECTORS


# The S3 test server fixtures (s3server, s3_vectors) for tests/test_s3_*.py.
pytest_plugins = ["s3server"]
