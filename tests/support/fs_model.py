"""The mount's model and pyfuse3 adapter over a datastore folder, without mounting: build one,
walk a path, list a directory; the golden datastore's snapshots the fs tests read."""

from __future__ import annotations

from pathlib import Path

import pyfuse3

from snapfs.fs.model import ROOT_INODE, FsModel
from snapfs.fs.operations import SnapfsOperations
from snapfs.store.backend import LocalBackend
from snapfs.store.cache import ChunkCache
from snapfs.store.datastore import Datastore

V1 = "host/testhost/2024-06-01T11:00:00Z"
SPLIT = "ns/testns/host/splithost/2024-06-01T13:00:00Z"


def model_for(path: Path, crypt=None, cache_size=64 << 20, **kw) -> FsModel:
    return FsModel(Datastore(LocalBackend(path)), crypt, ChunkCache(cache_size), **kw)


def walk(model: FsModel, path: str):
    node = model.root
    for part in path.split("/"):
        node = model.remember(model.lookup(node, part.encode()))
        model.attr(node)  # what a FUSE lookup answers with (opens archives, decodes blobs)
    return node


def listing(model: FsModel, node, batch: int = 1000) -> list:
    return model.opendir(node).all_items(batch)


def ops_for(path) -> SnapfsOperations:
    return SnapfsOperations(FsModel(Datastore(LocalBackend(path)), None, ChunkCache(64 << 20)))


async def resolve(ops: SnapfsOperations, path: str) -> pyfuse3.EntryAttributes:
    ino = ROOT_INODE
    attr = None
    for part in path.split("/"):
        attr = await ops.lookup(ino, part.encode())
        ino = attr.st_ino
    return attr
