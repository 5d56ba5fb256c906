"""The datastore above the snapshots: namespaces, backup types, groups and `latest`.

    /                                 root namespace
      vm/ ct/ host/                   backup types that have groups
        <id>/                         a group: its snapshots plus `latest` -> newest complete one
          <time>/                     a snapshot (`snapshot.py`)
          .versions/                  every version of every file (`versions.py`; looked up,
                                      never listed; absent without a search index)
      ns/<name>/                      child namespaces, the same layout inside
      .snapfs/stats                   live statistics (root only; looked up, never listed)

All of these are re-read once their listing is `refresh_interval` seconds old (backups and prune
change them while mounted); an entry still there keeps its node and inode number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapfs.format.archive_names import MANIFEST_NAME
from snapfs.fs.control import CONTROL_DIR, ControlDirNode
from snapfs.fs.node import LINK_MODE, Attr, DatastoreDir, DatastoreNode
from snapfs.fs.snapshot import SnapshotNode
from snapfs.fs.versions import VERSIONS_DIR, VersionsNode
from snapfs.store.datastore import BACKUP_TYPES, Group

if TYPE_CHECKING:
    from snapfs.fs.model import FsModel


class NamespaceNode(DatastoreDir):
    """One namespace: its backup types plus `ns/` when it has child namespaces."""

    __slots__ = ("ns",)
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, ns: tuple[str, ...]) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.ns = ns

    def _load(self) -> dict[bytes, DatastoreNode]:
        ds = self.model.datastore
        by_type: dict[str, list[Group]] = {}
        for group in ds.groups(self.ns):
            by_type.setdefault(group.type, []).append(group)
        out: dict[bytes, DatastoreNode] = {}
        for backup_type in BACKUP_TYPES:
            if backup_type in by_type:
                name = backup_type.encode()
                node = self._reuse(name, TypeNode)
                if node is None:  # a new node's first listing is what we just saw
                    node = TypeNode(self.model, self._child_path(backup_type), self.ns, backup_type)
                    node.hint = by_type[backup_type]
                out[name] = node
        children = ds.namespaces(self.ns)
        if children:
            ns_list = self._reuse(b"ns", NamespaceListNode)
            if ns_list is None:
                ns_list = NamespaceListNode(self.model, self._child_path("ns"), self.ns)
                ns_list.hint = children
            out[b"ns"] = ns_list
        return out


class RootNode(NamespaceNode):
    """The root namespace, which also finds `.snapfs` by name (it is never listed)."""

    __slots__ = ("control",)

    def __init__(self, model: FsModel) -> None:
        super().__init__(model, "", ())
        self.control = ControlDirNode(model, CONTROL_DIR.decode(), model.mount_time_ns)

    def child(self, children: dict[bytes, DatastoreNode], name: bytes) -> DatastoreNode:
        if name == CONTROL_DIR:
            return self.control
        return super().child(children, name)


class NamespaceListNode(DatastoreDir):
    """`ns/`: the child namespaces of a namespace."""

    __slots__ = ("parent_ns", "hint")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, parent_ns: tuple[str, ...]) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.parent_ns = parent_ns
        self.hint: list[tuple[str, ...]] | None = None  # what the parent's listing just saw

    def _load(self) -> dict[bytes, DatastoreNode]:
        namespaces, self.hint = self.hint, None
        if namespaces is None:
            namespaces = self.model.datastore.namespaces(self.parent_ns)
        out: dict[bytes, DatastoreNode] = {}
        for ns in sorted(namespaces):
            name = ns[-1].encode()
            out[name] = self._reuse(name, NamespaceNode) or NamespaceNode(
                self.model, self._child_path(ns[-1]), ns
            )
        return out


class TypeNode(DatastoreDir):
    """`vm/`, `ct/` or `host/` of a namespace: one directory per backup group."""

    __slots__ = ("ns", "backup_type", "hint")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, ns: tuple[str, ...], backup_type: str) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.ns = ns
        self.backup_type = backup_type
        self.hint: list[Group] | None = None  # what the parent's listing just saw

    def _load(self) -> dict[bytes, DatastoreNode]:
        groups, self.hint = self.hint, None
        if groups is None:
            groups = [g for g in self.model.datastore.groups(self.ns) if g.type == self.backup_type]
        out: dict[bytes, DatastoreNode] = {}
        for g in sorted(groups, key=lambda g: g.id):
            name = g.id.encode()
            out[name] = self._reuse(name, GroupNode) or GroupNode(
                self.model, self._child_path(g.id), g
            )
        return out


class GroupNode(DatastoreDir):
    """A backup group: one directory per snapshot, `latest` -> the newest complete one, and
    `.versions` (found by name, never listed) when the mount has a search index."""

    __slots__ = ("group", "versions", "_snapshot_names")
    refreshing = True
    volatile = True

    def __init__(self, model: FsModel, path: str, group: Group) -> None:
        super().__init__(model, path, model.mount_time_ns)
        self.group = group
        self.versions = (
            None
            if model.versions_index is None
            else VersionsNode(model, self._child_path(VERSIONS_DIR.decode()), self)
        )
        self._snapshot_names: frozenset[bytes] = frozenset()

    def child(self, children: dict[bytes, DatastoreNode], name: bytes) -> DatastoreNode:
        if name == VERSIONS_DIR and self.versions is not None:
            return self.versions
        return super().child(children, name)

    def loaded_children(self) -> list[DatastoreNode]:
        found = super().loaded_children()
        return found if self.versions is None else [*found, self.versions]

    def snapshot_names(self) -> frozenset[bytes]:
        """The snapshots listed (blocking: re-lists the group once its interval passed)."""
        self.children()
        return self._snapshot_names

    def cached_snapshot_names(self) -> frozenset[bytes] | None:
        """The snapshots listed, if the listing is not due for a re-read (never blocks)."""
        return None if self.cached_children() is None else self._snapshot_names

    def details(self) -> dict[str, str]:
        ds = self.model.datastore
        found = {"owner": ds.owner(self.group), "notes": ds.notes(self.group)}
        return {k: v for k, v in found.items() if v}

    def _load(self) -> dict[bytes, DatastoreNode]:
        ds = self.model.datastore
        snapshots = ds.snapshots(self.group)
        out: dict[bytes, DatastoreNode] = {}
        for s in snapshots:
            name = s.time_name.encode()
            out[name] = self._reuse(name, SnapshotNode) or SnapshotNode(
                self.model, self._child_path(s.time_name), s
            )
        names = frozenset(out)
        for s in reversed(snapshots):
            # Only the newest few are usually checked: a snapshot being written has no manifest.
            if MANIFEST_NAME in ds.backend.list_dir(s.path).files:
                target, mtime_ns = s.time_name.encode(), s.time * 1_000_000_000
                latest = self._reuse(b"latest", SymlinkNode)
                if latest is None:
                    latest = SymlinkNode(self.model, self._child_path("latest"), target, mtime_ns)
                else:  # the same inode follows the newest snapshot (readlink is never cached)
                    latest.target, latest.mtime_ns = target, mtime_ns
                out[b"latest"] = latest
                break
        self._snapshot_names = names
        return out


class SymlinkNode(DatastoreNode):
    """`latest`: its target changes on refresh, its inode does not."""

    __slots__ = ("target",)
    mode = LINK_MODE
    volatile = True

    def __init__(self, model: FsModel, path: str, target: bytes, mtime_ns: int) -> None:
        super().__init__(model, path, mtime_ns)
        self.target = target

    def attr(self, load: bool = True) -> Attr:
        return self.attr_of_size(len(self.target))

    def readlink(self) -> bytes:
        return self.target
