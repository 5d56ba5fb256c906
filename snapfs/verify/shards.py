"""The chunk checks of a verify, cut into shards any worker can run on its own.

PBS keeps chunks in 65,536 folders named by the first four hex digits of their digest. A shard is
a run of consecutive folders, 64 of them in a big store (1,024 shards) and up to 8,192 in a small
one (`shard_width`), so that a shard holds about CHUNKS_PER_SHARD chunks: its worker lists each folder
once (one S3 LIST per prefix, never one listing of the whole store), reports the referenced chunks
that are not there as missing without asking for them, and fetches, decrypts, decompresses and
hashes the rest. Only what is wrong comes back, so a shard's result is small however many
chunks it checked.

A shard carries what the coordinator read from the indexes (each digest with the length its
index gives) and a `ShardContext` naming the store and key *without any secret*
(snapfs.store.workers).

`Subset` picks which folders a run checks, so a weekly job can cover a big store in t runs.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass, field

from snapfs.errors import (
    KeyRequiredError,
    MissingChunkError,
    SnapfsError,
    UsageError,
)
from snapfs.format.blob import decode_chunk
from snapfs.format.crypt import CryptConfig
from snapfs.store.backend import Backend
from snapfs.store.pipeline import ordered
from snapfs.store.workers import WorkerStore

PREFIXES = 65536
#: Chunks a shard should hold: enough that its fixed costs (a task sent and its result back, a
#: thread pipeline started) are small per chunk, few enough that a lost shard is little work.
CHUNKS_PER_SHARD = 2000
#: Folders per shard, a power of two between these: 1,024 shards of 64 folders for a bucket of
#: millions of chunks (24,000 each at 25 million), 8 shards for a small store.
MIN_WIDTH, MAX_WIDTH = 64, 8192
#: Chunk checks under way per worker: enough that one slow GET does not idle the others, few
#: enough that a shard's chunks never all stand in memory at once.
CHECKS_PER_THREAD = 8

# Chunk states. CRC_ONLY: an encrypted chunk checked without its key (magic and CRC only).
OK, CRC_ONLY, MISSING, CORRUPT, WRONG_SIZE = "ok", "crc-only", "missing", "corrupt", "wrong-size"


@dataclass
class ChunkStatus:
    state: str
    message: str = ""
    size: int | None = None  # decoded length, when it could be decoded


def check_chunk(backend: Backend, crypt: CryptConfig | None, digest: bytes) -> ChunkStatus:
    """Fetch one chunk and check it against its digest; never raises for a bad chunk."""
    try:
        raw = backend.read_chunk(digest)
    except MissingChunkError as exc:
        return ChunkStatus(MISSING, str(exc))
    except SnapfsError as exc:
        return ChunkStatus(MISSING, str(exc))
    try:
        # check_crc: a chunk file whose stored CRC alone is damaged is reported too.
        data = decode_chunk(raw, digest, crypt, name=f"chunk {digest.hex()}", check_crc=True)
    except KeyRequiredError:
        return ChunkStatus(CRC_ONLY)
    except SnapfsError as exc:
        return ChunkStatus(CORRUPT, str(exc))
    except Exception as exc:  # a decoder bug must fail the chunk, not the whole verify
        return ChunkStatus(CORRUPT, f"chunk {digest.hex()}: cannot decode: {exc}")
    return ChunkStatus(OK, size=len(data))


# -- which folders a run checks -------------------------------------------------------------------

_SLICE = re.compile(r"(\d+)/(\d+)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class Subset:
    """All folders, the n-th of t slices (`n/t`, the same folders every run), or a random
    fraction (`5%`, drawn from `seed`, which a resumed run takes from its state file)."""

    spec: str = "all"
    seed: int | None = None

    @classmethod
    def parse(cls, text: str | None, seed: int | None = None) -> Subset:
        if text is None or text == "all":
            return cls()
        if m := _SLICE.fullmatch(text):
            n, t = int(m[1]), int(m[2])
            if not 1 <= n <= t <= PREFIXES:
                raise UsageError(f"--subset {text}: expected n/t with 1 <= n <= t <= {PREFIXES}")
            return cls(text)
        if m := _PERCENT.fullmatch(text):
            if not 0 < float(m[1]) <= 100:
                raise UsageError(f"--subset {text}: the percentage must be above 0 and at most 100")
            return cls(text, seed if seed is not None else random.SystemRandom().getrandbits(63))
        raise UsageError(f"--subset {text!r}: expected n/t (e.g. 1/7) or a percentage (e.g. 5%)")

    def prefixes(self) -> frozenset[int]:
        """The folders (as numbers 0..65535) this subset checks."""
        if m := _SLICE.fullmatch(self.spec):
            n, t = int(m[1]), int(m[2])
            return frozenset(range(n - 1, PREFIXES, t))
        if m := _PERCENT.fullmatch(self.spec):
            count = max(1, round(PREFIXES * float(m[1]) / 100))
            return frozenset(random.Random(self.seed).sample(range(PREFIXES), count))
        return frozenset(range(PREFIXES))

    @property
    def is_all(self) -> bool:
        return self.spec == "all"


# -- shards ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """The subset's folders of one run of `width` folders, and the referenced chunks in them."""

    number: int
    prefixes: tuple[str, ...]
    chunks: tuple[tuple[bytes, int], ...]  # (digest, length an index gives it), sorted

    @property
    def fingerprint(self) -> str:
        """Names exactly what the shard checks: a resumed run reuses a finished shard only if
        it would check the same chunks (new backups since add chunks, prunes remove some)."""
        h = hashlib.blake2b(digest_size=16)
        for digest, size in self.chunks:
            h.update(digest)
            h.update(size.to_bytes(8, "little"))
        return h.hexdigest()


def shard_width(chunks: int) -> int:
    """Folders per shard for a store whose snapshots name `chunks` chunks."""
    width = MIN_WIDTH
    while width < MAX_WIDTH and chunks * width < CHUNKS_PER_SHARD * PREFIXES:
        width *= 2
    return width


def plan_shards(referenced: dict[bytes, int], subset: Subset, width: int) -> list[Shard]:
    """The shards of `width` folders holding the subset's referenced chunks; folders with none
    are not listed."""
    chosen = subset.prefixes()
    by_prefix: dict[int, list[tuple[bytes, int]]] = {}
    for digest, size in referenced.items():
        number = int.from_bytes(digest[:2], "big")
        if number in chosen:
            by_prefix.setdefault(number, []).append((digest, size))
    by_shard: dict[int, list[int]] = {}
    for number in sorted(by_prefix):
        by_shard.setdefault(number // width, []).append(number)
    return [
        Shard(
            shard,
            tuple(f"{p:04x}" for p in numbers),
            tuple(sorted(c for p in numbers for c in by_prefix[p])),
        )
        for shard, numbers in sorted(by_shard.items())
    ]


@dataclass(frozen=True)
class ShardContext:
    """What a worker needs: the store (named, no secret in it) and how many chunks at once."""

    store: WorkerStore
    threads: int = 8


@dataclass
class ShardResult:
    number: int
    fingerprint: str
    checked: int = 0  # chunks looked for, missing ones included
    bytes: int = 0  # decoded bytes checked
    gets: int = 0
    lists: int = 0
    crc_only: int = 0
    seconds: float = 0.0
    #: Chunks that are not right (missing, corrupt, or decoding to another length than the
    #: shard's index said); every chunk not named here is right (or CRC-checked, without a key).
    bad: dict[bytes, ChunkStatus] = field(default_factory=dict)


def check_shard(context: ShardContext, shard: Shard) -> ShardResult:
    """Runs on a worker: list the shard's folders, then check every referenced chunk in them."""
    started = time.monotonic()
    datastore, crypt = context.store.open()
    backend = datastore.backend
    result = ShardResult(shard.number, shard.fingerprint, checked=len(shard.chunks))
    present: set[bytes] = set()
    for prefix in shard.prefixes:
        present |= backend.list_chunks(prefix)
        result.lists += 1
    there = []
    for digest, size in shard.chunks:
        if digest in present:
            there.append((digest, size))
        else:
            result.bad[digest] = ChunkStatus(
                MISSING, f"chunk {digest.hex()} is missing from {backend.name}"
            )
    for (digest, size), future in ordered(
        there,
        lambda chunk: check_chunk(backend, crypt, chunk[0]),
        workers=context.threads,
        window=CHECKS_PER_THREAD * context.threads,
        thread_name="snapfs-verify",
    ):
        status = future.result()
        result.gets += 1
        result.bytes += status.size or 0
        if status.state == CRC_ONLY:
            result.crc_only += 1
        elif status.state != OK or status.size != size:
            result.bad[digest] = status
    result.seconds = time.monotonic() - started
    return result
