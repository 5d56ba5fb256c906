"""Checks of what a benchmark read against the source manifest (sizes, names, SHA-256).

The tar check parses the archive stream itself instead of using `tarfile`: tarfile costs
~100 us per member, which would cap a 100,000-file read at ~10,000 files/s and hide the
difference between the tools; this parser costs a few microseconds per member.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from .data import Manifest

MiB = 1024 * 1024


def check_walk(lines: list[str], manifest: Manifest) -> str | None:
    """`find -printf '%P\\t%y\\t%s\\n'` output vs the manifest; None when equal, else why not."""
    seen_files: dict[str, int] = {}
    seen_dirs: set[str] = set()
    for line in lines:
        if not line:
            continue
        path, kind, size = line.split("\t")
        if not path:
            continue  # the root itself
        if kind == "f":
            seen_files[path] = int(size)
        elif kind == "d":
            seen_dirs.add(path)
        else:
            return f"unexpected entry {path!r} of type {kind}"
    if seen_dirs != set(manifest.dirs):
        return f"directories differ: {len(seen_dirs)} seen, {len(manifest.dirs)} expected"
    want = {p: s for p, (s, _) in manifest.files.items()}
    if seen_files != want:
        bad = next(
            p for p in sorted(set(want) | set(seen_files)) if want.get(p) != seen_files.get(p)
        )
        return f"files differ (first: {bad!r}): {len(seen_files)} seen, {len(want)} expected"
    return None


def check_ls_l(output: str, manifest: Manifest) -> str | None:
    """`ls -l -n --time-style=+%s DIR` of the big directory: every name with its size."""
    seen: dict[str, int] = {}
    for line in output.splitlines():
        fields = line.split(None, 6)
        if len(fields) != 7:
            continue  # the "total N" line
        seen[fields[6]] = int(fields[4])
    want = manifest.bigdir_files()
    if seen != want:
        return f"listing differs: {len(seen)} entries seen, {len(want)} expected"
    return None


def check_tar_stream(stream: BinaryIO, files: dict[str, tuple[int, str]]) -> tuple[int, str | None]:
    """Reads a GNU/ustar stream to its end, each file checked against `files` (relpath ->
    (size, sha256), as Manifest.files); returns (file bytes, None or the first problem)."""
    seen = 0
    total = 0
    problem: str | None = None
    long_name: bytes | None = None
    read = stream.read
    while True:
        header = read(512)
        if len(header) < 512:
            return total, problem or "truncated tar stream"
        if header == b"\0" * 512:
            break
        kind = header[156:157]
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = header[0:100].split(b"\0", 1)[0]
            posix = header[257:263] == b"ustar\0"
            prefix = header[345:500].split(b"\0", 1)[0] if posix else b""
            if prefix:
                name = prefix + b"/" + name
        padding = -size % 512
        if kind == b"L":  # GNU long name: the next member's name is the data
            long_name = read(size + padding)[:size].split(b"\0", 1)[0]
            continue
        if kind in (b"0", b"\0"):
            h = hashlib.sha256()
            left = size
            while left:
                block = read(min(left, MiB))
                if not block:
                    return total, "truncated tar stream"
                h.update(block)
                left -= len(block)
            read(padding)
            rel = os.fsdecode(name)
            rel = rel[2:] if rel.startswith("./") else rel
            want = files.get(rel)
            if want is None:
                problem = problem or f"unexpected file {rel!r}"
            elif want != (size, h.hexdigest()):
                problem = problem or f"{rel}: content differs from the source"
            seen += 1
            total += size
        elif size:
            read(size + padding)
    while read(MiB):  # the zero blocks tar pads its output with
        pass
    if problem is None and seen != len(files):
        problem = f"{seen} files in the stream, {len(files)} in the source"
    return total, problem


def check_tree(root: str, manifest: Manifest) -> str | None:
    """A restored tree on disk: every file with its SHA-256, nothing missing, nothing extra."""
    seen = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            want = manifest.files.get(rel)
            if want is None:
                return f"unexpected file {rel!r}"
            with open(full, "rb") as f:
                data = f.read()
            if (len(data), hashlib.sha256(data).hexdigest()) != want:
                return f"{rel}: content differs from the source"
            seen += 1
    if seen != len(manifest.files):
        return f"{seen} files restored, {len(manifest.files)} in the source"
    return None
