"""Datastores made for a test: one snapshot holding given archive bytes, in valid chunks."""

from __future__ import annotations

from pathlib import Path

from snapfs.format.blob import encode_blob, encode_chunk
from snapfs.format.index import build_dynamic_index, parse_index
from snapfs.format.manifest import Manifest, ManifestFile
from snapfs.store.datastore import Group, Snapshot
from snapfs.store.writer import DatastoreWriter


def pxar_store(root: Path, pxar: bytes) -> Path:
    """A datastore whose host/bad snapshot holds `pxar` as root.pxar.didx, in valid chunks:
    the chunk layer is fine, so whatever goes wrong is the archive's own structure."""
    writer = DatastoreWriter(root)
    snapshot = Snapshot(Group((), "host", "bad"), 1717239600)
    entries, end = [], 0
    for start in range(0, len(pxar), 256 * 1024):
        piece = pxar[start : start + 256 * 1024]
        digest, raw = encode_chunk(piece, None, compress=True)
        writer.insert_chunk(digest, raw)
        end += len(piece)
        entries.append((end, digest))
    index = build_dynamic_index(entries)
    parsed = parse_index(index, name="root.pxar.didx")
    writer.write_snapshot_file(snapshot, "root.pxar.didx", index)
    manifest = Manifest(
        backup_type="host",
        backup_id="bad",
        backup_time=snapshot.time,
        files=[ManifestFile("root.pxar.didx", "none", end, parsed.index_csum)],
        signature=None,
        unprotected={},
        unknown_fields={},
    )
    writer.write_snapshot_file(
        snapshot, "index.json.blob", encode_blob(manifest.to_json(None), None, compress=True)
    )
    return root
