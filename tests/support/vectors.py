"""Where the upstream golden vectors live (tests/vectors, see its README), and their password."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from snapfs.format.crypt import CryptConfig
from snapfs.pxar.accessor import Accessor
from snapfs.store.backend import LocalBackend
from snapfs.store.datastore import Datastore, parse_snapshot
from snapfs.views.archives import SnapshotReader

REPO = Path(__file__).resolve().parents[2]
# SNAPFS_VECTORS points the suite at another copy, e.g. vectors regenerated from newer upstream.
VECTORS = Path(os.environ.get("SNAPFS_VECTORS", REPO / "tests" / "vectors"))
VECTOR_PASSWORD = b"pbs-vector-password"
#: sha256 of the disk image both VM snapshots of the golden datastore hold (vectors README).
IMAGE_SHA256 = "20259dee8fdd06b33fdd05354483fc27183eb16538fe8365705d78ce72501c44"


def accessor_for(vectors: Path, snapshot: str, crypt: CryptConfig | None = None) -> Accessor:
    """The Accessor of `root.pxar` in a snapshot of the golden datastore, named as the mount
    shows it (`ns/<name>/...` for a namespace)."""
    ds = Datastore(LocalBackend(vectors / "datastore"))
    parts = snapshot.split("/")
    ns: tuple[str, ...] = ()
    while parts[0] == "ns":
        ns, parts = (*ns, parts[1]), parts[2:]
    return SnapshotReader(ds, parse_snapshot("/".join(parts), ns), crypt).pxar("root.pxar")


def extract_source_tree(vectors: Path, dest: Path) -> None:
    """`source-tree.tar` (the tree the pxar vectors hold, less its socket) extracted into `dest`
    with every bit of metadata, as root."""
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-xpf",
            str(vectors / "source-tree.tar"),
            "-C",
            str(dest),
        ],
        check=True,
    )
