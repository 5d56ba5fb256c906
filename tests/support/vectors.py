"""Where the upstream golden vectors live (tests/vectors, see its README), and their password."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# SNAPFS_VECTORS points the suite at another copy, e.g. vectors regenerated from newer upstream.
VECTORS = Path(os.environ.get("SNAPFS_VECTORS", REPO / "tests" / "vectors"))
VECTOR_PASSWORD = b"pbs-vector-password"
