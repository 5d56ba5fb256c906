"""Which archive entries a restore writes: --include/--exclude globs, safe names, --overwrite.

Archives are untrusted input: `check_name` is the one test every name passes before anything is
created under it, so no entry can climb out of TARGET.
"""

from __future__ import annotations

import fnmatch
import os

from snapfs.errors import UsageError

__all__ = ["OVERWRITE_POLICIES", "PathFilter", "check_name"]

OVERWRITE_POLICIES = ("never", "if-newer", "always")


class PathFilter:
    """--include/--exclude globs on archive paths.

    A pattern with a '/' matches the whole archive path (anchored at the archive root, a leading
    '/' optional); one without matches the last component at any depth. An excluded directory
    excludes everything below it; with includes, only matching entries and everything below a
    matching directory are restored (plus the directories leading to them). Exclude wins.
    """

    def __init__(self, includes: tuple[str, ...] = (), excludes: tuple[str, ...] = ()) -> None:
        self.includes = [self._compile(p) for p in includes]
        self.excludes = [self._compile(p) for p in excludes]

    @staticmethod
    def _compile(pattern: str) -> tuple[bool, bytes]:
        raw = os.fsencode(pattern)
        if b"/" in raw.rstrip(b"/"):
            return True, b"/" + raw.strip(b"/")
        return False, raw.strip(b"/")

    @staticmethod
    def _matches(patterns: list[tuple[bool, bytes]], path: bytes, name: bytes) -> bool:
        return any(fnmatch.fnmatchcase(path if anchored else name, p) for anchored, p in patterns)

    def excluded(self, path: bytes, name: bytes) -> bool:
        return bool(self.excludes) and self._matches(self.excludes, path, name)

    def included(self, path: bytes, name: bytes) -> bool:
        return not self.includes or self._matches(self.includes, path, name)

    @property
    def has_includes(self) -> bool:
        return bool(self.includes)


def check_name(name: bytes, where: str) -> None:
    """A name from an archive must name one entry inside its parent, nothing else."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UsageError(f"{where}: refusing unsafe name {name!r} (would escape the target)")
