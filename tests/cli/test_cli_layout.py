"""The command line is one package, snapfs.cli, and the rest of snapfs does not depend on it.

Domain code is called with typed options (SourceOptions, KeyOptions, MapRequest, ...), so it never
imports argparse or snapfs.cli; each command module registers its own parser and shares only
snapfs.cli._common with the others, so a command can be read, changed or removed on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

SNAPFS = Path(__file__).resolve().parents[2] / "snapfs"
CLI = SNAPFS / "cli"
#: `python -m snapfs` is the command itself.
ENTRY_POINTS = {SNAPFS / "__main__.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SNAPFS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code; `from A import b` names A.b when b
    is a module of package A, else A."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = SNAPFS.parent.joinpath(*f"{base}.{alias.name}".split("."))
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.add(f"{base}.{alias.name}" if is_module else base)
    return found


def test_nothing_outside_the_cli_imports_it_or_argparse():
    offenders = []
    for path in sorted(SNAPFS.rglob("*.py")):
        if CLI in path.parents or path in ENTRY_POINTS:
            continue
        for name in imported_modules(path):
            if name == "argparse" or name == "snapfs.cli" or name.startswith("snapfs.cli."):
                offenders.append(f"{path.relative_to(SNAPFS.parent)} imports {name}")
    assert offenders == []


def command_modules() -> list[Path]:
    """The modules that register subcommands: every `register` is one."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body):
            found.append(path)
    return found


def test_command_modules_share_only_common():
    modules = command_modules()
    assert {p.stem for p in modules} >= {"browse", "restore", "verify", "mount", "nbd", "key"}
    offenders = []
    for path in modules:
        for name in imported_modules(path):
            if (name == "snapfs.cli" or name.startswith("snapfs.cli.")) and (
                name != "snapfs.cli._common"
            ):
                offenders.append(f"{path.name} imports {name}")
    assert offenders == []


def test_cli_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in CLI.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}
