"""The benchmark's data set, made once per run (or reused from --work), and its manifest.

Deterministic (seeded) so every run of one size backs up the same bytes. The manifest holds the
SHA-256 of every file and of the image: each benchmark checks what it read against it, so a
tool that answers fast but wrong cannot win.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field

import numpy as np

MiB = 1024 * 1024
IMAGE_NAME = "disk.raw"
TREE_NAME = "tree"
BIGDIR = "var/spool/big"  # the directory with many entries (20,000 at full size)


@dataclass(frozen=True)
class Sizes:
    """One size preset: what `--quick`, `--tiny` or the full run prepare."""

    name: str
    image_mib: int
    files: int
    bigdir_files: int
    large_mib: tuple[int, ...]  # a few large files, as real trees have
    random_reads: int

    @property
    def tag(self) -> str:
        return f"{self.name}-{self.image_mib}m-{self.files}f-{self.bigdir_files}b-v1"


FULL = Sizes("full", 1024, 100_000, 20_000, (64, 32, 16, 8), 2000)
QUICK = Sizes("quick", 256, 10_000, 2_000, (16, 4), 1000)
TINY = Sizes("tiny", 16, 600, 120, (1,), 200)


@dataclass
class Manifest:
    """What the source holds; the truth every benchmark compares against."""

    image_size: int
    image_sha256: str
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # relpath -> (size, sha256)
    dirs: list[str] = field(default_factory=list)  # relpaths, "" excluded
    top_level: list[str] = field(default_factory=list)  # names in the tree's root

    @property
    def tree_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())

    def bigdir_files(self) -> dict[str, int]:
        prefix = BIGDIR + "/"
        return {
            p[len(prefix) :]: size
            for p, (size, _) in self.files.items()
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        }

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: str) -> Manifest:
        with open(path) as f:
            raw = json.load(f)
        raw["files"] = {k: (v[0], v[1]) for k, v in raw["files"].items()}
        return cls(**raw)


class _Content:
    """Fast deterministic bytes: random (compressed media), text-like, zeros."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
        words = self.rng.choice(letters, size=(4096, 8))
        words[:, 7] = ord(" ")
        words[::17, 7] = ord("\n")
        self.words = words

    def random(self, n: int) -> bytes:
        return self.rng.bytes(n)

    def text(self, n: int) -> bytes:
        idx = self.rng.integers(0, len(self.words), size=n // 8 + 1)
        return self.words[idx].tobytes()[:n]


def make_image(path: str, size: int, seed: int = 1) -> None:
    """VM-like: 1 MiB regions, 40% random (media, encrypted), 35% text-like, 25% zero."""
    content = _Content(seed)
    kinds = content.rng.random(size // MiB + 1)
    with open(path, "wb") as f:
        written = 0
        for k in kinds:
            n = min(MiB, size - written)
            if n <= 0:
                break
            if k < 0.40:
                f.write(content.random(n))
            elif k < 0.75:
                f.write(content.text(n))
            else:
                f.write(bytes(n))
            written += n


def _tree_plan(sizes: Sizes, seed: int) -> list[tuple[str, int, bool]]:
    """(relpath, size, is_text) for every file: many small, a few large, one huge directory."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[str, int, bool]] = []
    big = rng.lognormal(np.log(600), 1.0, size=sizes.bigdir_files).astype(np.int64)
    for i, n in enumerate(big):
        plan.append((f"{BIGDIR}/msg{i:06d}.eml", int(min(n, 256 * 1024)), True))
    for i, mib in enumerate(sizes.large_mib):
        plan.append((f"srv/data/blob{i}.bin", mib * MiB, i % 2 == 1))
    rest = sizes.files - len(plan)
    # Directory sizes like a real /usr: most hold tens of files, nested two or three deep.
    lens = rng.lognormal(np.log(1500), 1.5, size=rest).astype(np.int64)
    lens[rng.random(rest) < 0.02] = 0
    is_text = rng.random(rest) < 0.7
    exts = [".py", ".h", ".txt", ".so", ".png", ".json", ".html", ".gz"]
    per_dir = rng.integers(10, 200, size=rest // 10 + 1)
    d = 0
    in_dir = 0
    for i in range(rest):
        if in_dir >= per_dir[d]:
            d += 1
            in_dir = 0
        top = ("usr/share", "usr/lib", "home/user", "etc", "opt/app")[d % 5]
        path = f"{top}/pkg{d // 7:04d}/sub{d % 7}/f{i:06d}{exts[i % len(exts)]}"
        plan.append((path, int(min(lens[i], 4 * MiB)), bool(is_text[i])))
        in_dir += 1
    return plan


def make_tree(root: str, sizes: Sizes, seed: int = 2) -> dict[str, tuple[int, str]]:
    """Writes the tree; returns relpath -> (size, sha256 hex)."""
    content = _Content(seed)
    files: dict[str, tuple[int, str]] = {}
    made: set[str] = set()
    for rel, size, text in _tree_plan(sizes, seed):
        parent = os.path.dirname(rel)
        if parent not in made:
            os.makedirs(os.path.join(root, parent), exist_ok=True)
            made.add(parent)
        data = content.text(size) if text else content.random(size)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        files[rel] = (size, hashlib.sha256(data).hexdigest())
    return files


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def prepare(data_dir: str, sizes: Sizes) -> Manifest:
    """Makes the image and the tree under data_dir, or reuses them if made for the same size."""
    manifest_path = os.path.join(data_dir, f"manifest-{sizes.tag}.json")
    if os.path.exists(manifest_path):
        return Manifest.load(manifest_path)
    shutil.rmtree(data_dir, ignore_errors=True)  # data of another size: never mix the two
    os.makedirs(data_dir)
    image = os.path.join(data_dir, IMAGE_NAME)
    tree = os.path.join(data_dir, TREE_NAME)
    make_image(image, sizes.image_mib * MiB)
    files = make_tree(tree, sizes)
    dirs = []
    for dirpath, _, _ in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        if rel != ".":
            dirs.append(rel)
    manifest = Manifest(
        image_size=os.path.getsize(image),
        image_sha256=sha256_file(image),
        files=files,
        dirs=sorted(dirs),
        top_level=sorted(os.listdir(tree)),
    )
    manifest.save(manifest_path)
    return manifest
