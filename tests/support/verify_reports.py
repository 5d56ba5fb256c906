"""What `snapfs verify` must find, and its `--json` reports compared between runs that must
agree (one process, worker processes, a Dask cluster, slices, a resumed run)."""

from __future__ import annotations

from pathlib import Path

from snapfs.format.index import parse_index

#: The golden datastore's unencrypted pxar snapshot and its encrypted one.
V1 = "host/testhost/2024-06-01T11:00:00Z"
ENC = "host/testhost/2024-06-01T12:00:00Z"


def damage_golden(store: Path) -> tuple[str, str]:
    """Flip a byte of a chunk of V1's archive and remove the first chunk of ENC's index, in a
    copy of the golden datastore; returns (flipped digest, removed digest)."""
    index = parse_index((store / V1 / "root.pxar.didx").read_bytes(), name="root.pxar.didx")
    flipped = index.digest(index.chunk_at(1_500_000)).hex()
    path = store / ".chunks" / flipped[:4] / flipped
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    enc_index = next(p for p in (store / ENC).iterdir() if p.name.endswith("idx"))
    gone = parse_index(enc_index.read_bytes(), name=enc_index.name).digest(0).hex()
    (store / ".chunks" / gone[:4] / gone).unlink()
    return flipped, gone


def comparable(report: dict) -> dict:
    """A report without what differs between equal runs: time, where it ran, shards read back."""
    return {k: v for k, v in report.items() if k not in ("elapsed", "workers", "shards_resumed")}


def bad_chunks(report: dict) -> set[tuple[str, str, str]]:
    """(snapshot, chunk digest, problem) of every bad chunk the report names."""
    return {
        (s["snapshot"], b["digest"], b["problem"])
        for s in report["snapshots"]
        for b in s["bad_chunks"]
    }
