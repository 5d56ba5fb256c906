"""Shared fixtures: where the upstream golden vectors live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("SNAPFS_VECTORS", REPO.parent / "shared" / "vectors"))
VECTOR_PASSWORD = b"pbs-vector-password"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The golden vectors made by upstream Rust code; a missing folder fails loudly, never skips."""
    if not (VECTORS / "MANIFEST.md").is_file():
        pytest.fail(f"golden vectors not found at {VECTORS} (set SNAPFS_VECTORS)")
    return VECTORS


# The S3 test server fixtures (s3server, s3_vectors) for tests/test_s3_*.py.
pytest_plugins = ["s3server"]
