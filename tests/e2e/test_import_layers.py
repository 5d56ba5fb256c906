"""The import layers hold: each package imports only the layers below it, and nothing imports in a
cycle (docs/architecture.md).

import-linter reads its contracts from pyproject.toml's [tool.importlinter]; it reads the source
(imports inside functions count) and imports nothing of snapfs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def test_import_layers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}{result.stderr}"
