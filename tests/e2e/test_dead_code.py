"""No dead code: every function, class, method and variable in snapfs is used somewhere.

vulture reads its paths and the names it must not report (hooks called by name) from
pyproject.toml's [tool.vulture].
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_nothing_is_unused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vulture"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"unused code:\n{result.stdout}{result.stderr}"


def test_every_exported_name_is_defined_where_it_is_exported() -> None:
    """`__all__` names what a module defines, not what it happens to import."""
    import importlib
    import pkgutil

    import snapfs

    wrong = []
    for info in pkgutil.walk_packages(snapfs.__path__, "snapfs."):
        if info.name.endswith(".__main__"):
            continue  # importing it runs the command
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name, None)
            origin = getattr(value, "__module__", info.name)
            if value is None or (callable(value) and origin != info.name):
                wrong.append(f"{info.name}.{name}")
    assert wrong == []
