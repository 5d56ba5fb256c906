"""Snapshot listings as plain records, printed as a table or as JSON."""

from __future__ import annotations

from snapfs.store.datastore import Datastore


def snapshot_records(datastore: Datastore, ns: tuple[str, ...] = ()) -> list[dict]:
    """Every snapshot in `ns` and the namespaces below it; incomplete ones say so, never fail."""
    records = []
    for namespace in datastore.all_namespaces(ns):
        for group in datastore.groups(namespace):
            for snapshot in datastore.snapshots(group):
                info = datastore.snapshot_info(snapshot)
                manifest = info.manifest
                files = []
                if manifest is not None:
                    files = [
                        {
                            "filename": f.filename,
                            "size": f.size,
                            "crypt-mode": f.crypt_mode,
                            "csum": f.csum.hex(),
                        }
                        for f in manifest.files
                    ]
                records.append(
                    {
                        "ns": "/".join(namespace),
                        "snapshot": str(snapshot),
                        "backup-type": group.type,
                        "backup-id": group.id,
                        "backup-time": snapshot.time,
                        "state": "complete"
                        if info.complete
                        else ("unreadable" if info.problem else "incomplete"),
                        "protected": info.protected,
                        "encrypted": any(f["crypt-mode"] == "encrypt" for f in files),
                        "files": files,
                        **({"problem": info.problem} if info.problem else {}),
                    }
                )
    return records


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_snapshot_records(records: list[dict]) -> str:
    lines = []
    for r in records:
        where = f"{r['ns']}:" if r["ns"] else ""
        flags = [r["state"]]
        if r["protected"]:
            flags.append("protected")
        if r["encrypted"]:
            flags.append("encrypted")
        lines.append(f"{where}{r['snapshot']}  [{', '.join(flags)}]")
        if "problem" in r:
            lines.append(f"    problem: {r['problem']}")
        for f in r["files"]:
            lines.append(f"    {f['filename']:<32} {_human(f['size']):>12}  {f['crypt-mode']}")
    if not records:
        lines.append("no snapshots")
    return "\n".join(lines) + "\n"
