"""This machine's limits for what snapfs does, measured in the same run as the comparison.

* decode: the image archive read in this process through snapfs's own IndexStream.iter_range
  with 2 workers (both cores), no FUSE, page cache dropped first: the ceiling of a cold
  sequential read of the image and of its restore;
* chunk decode: the image's distinct chunks fetched and decoded (zstd, SHA-256 against the
  digest, the CRC only if that fails, as every read: ChunkReader.read_chunk) on 2 threads,
  cold, in chunks/s: the ceiling of cold 4 KiB random reads that each decode a whole chunk
  (the spread ones: one per chunk); and the same one chunk at a time, each lent the
  spare core as the mount's are, as a reader that waits for each read has them decoded;
* first walk: the tree archive indexed in this process as the mount's first walk indexes it
  (snapfs.fs.indexing.build_index: every chunk decoded on 2 threads, every entry parsed and
  stored), page cache dropped first, in entries/s: the first walk's own work without FUSE, the
  ceiling of a cold `find` on a first mount, which waits for it;
* index listings: every directory of that index listed in this process as a walk through the
  mount lists them (the root's, then windows read ahead: ArchiveIndex.listings_after), page
  cache dropped first: the ceiling of `find` on the next mount without FUSE;
* null FS: bench/nullfs.py, a pyfuse3 + trio filesystem serving from memory a file of the image's
  size, a tree of the bench tree's shape and a directory of the big directory's size: the
  FUSE-in-Python ceiling, read with the bench's own sequential reader, walked with its own
  `find` and `ls -l`, and tarred with its own `tar`;
* local disk: the same `find` and `tar` run on the source data on this machine's disk, the
  image's data written to a new file as a restore writes it, and a copy of the tree by
  `tar | tar -x` (both synced, as a restore is): what the kernel and the disk give without FUSE
  or decoding, the ceiling of the walks, the tar and the restores.

Each snapfs figure of the comparison is then given as a share of its limit (COMPARED).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from subprocess import PIPE
from typing import TYPE_CHECKING

from .. import nullfs
from .data import IMAGE_NAME, TREE_NAME, Manifest, sha256_file
from .lines import Line
from .probes import READY_TIMEOUT, drop_caches, read_sequential, timed_find, timed_tar
from .tools import SNAPFS_TIME, Tool, ToolError, is_mounted
from .verify import check_tree, check_walk

if TYPE_CHECKING:
    from snapfs.store.stream import IndexStream
    from snapfs.views.archives import SnapshotReader

    from .measure import Runner

WORKERS = 2  # both cores
IMAGE_ARCHIVE = "drive-scsi0.img"
TREE_ARCHIVE = "root.pxar"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LINES = [
    Line(
        "decode",
        "decode limit: the image through snapfs's IndexStream, 2 workers, in process, cold",
        "MB/s",
        "limits",
    ),
    Line(
        "chunk-decode",
        "chunk-decode limit: distinct image chunks fetched + decoded, 2 threads, cold",
        "chunks/s",
        "limits",
    ),
    Line(
        "chunk-decode-serial",
        "chunk-decode limit, one at a time: image chunks decoded in turn (spare core lent), cold",
        "chunks/s",
        "limits",
    ),
    Line(
        "first-walk",
        "first walk: the tree archive indexed in process (chunks decoded, entries parsed), cold",
        "entries/s",
        "limits",
    ),
    Line(
        "index-listings",
        "index listings: every directory of the tree read from its index in process, in the"
        " mount's windows, cold",
        "entries/s",
        "limits",
    ),
    Line("nullfs-seq", "null FUSE FS: sequential read of the image's size, cold", "MB/s", "limits"),
    Line(
        "nullfs-find-stat-cold",
        "null FUSE FS: find + stat of a tree of the tree's shape, cold",
        "entries/s",
        "limits",
    ),
    Line(
        "nullfs-find-stat-warm",
        "null FUSE FS: find + stat of a tree of the tree's shape, warm",
        "entries/s",
        "limits",
    ),
    Line(
        "nullfs-tar-cold",
        "null FUSE FS: tar of a tree of the tree's shape and sizes, cold",
        "MB/s",
        "limits",
    ),
    Line(
        "nullfs-ls-l-cold",
        "null FUSE FS: ls -l of a directory of the big directory's size, cold",
        "s",
        "limits",
    ),
    Line(
        "nullfs-ls-l-warm",
        "null FUSE FS: ls -l of a directory of the big directory's size, warm",
        "s",
        "limits",
    ),
    Line(
        "local-find-stat-cold",
        "local disk: find + stat of the source tree, cold",
        "entries/s",
        "limits",
    ),
    Line(
        "local-find-stat-warm",
        "local disk: find + stat of the source tree, warm",
        "entries/s",
        "limits",
    ),
    Line("local-tar-cold", "local disk: tar of the source tree, cold", "MB/s", "limits"),
    Line("local-tar-warm", "local disk: tar of the source tree, warm", "MB/s", "limits"),
    Line(
        "disk-write",
        "local disk: the image's data written from memory (zero blocks left as holes), synced",
        "MB/s",
        "limits",
    ),
    Line(
        "disk-write-tree",
        "local disk: copy of the source tree by tar (tar -c into tar -x) to disk, synced",
        "MB/s",
        "limits",
    ),
]

# (snapfs benchmark, the limit it is held against); its figure is put in the limit's unit.
COMPARED = [
    ("image-seq-cold", "decode"),
    ("restore-image", "decode"),
    ("image-rand4k-spread-cold", "chunk-decode"),
    ("image-rand4k-spread-cold", "chunk-decode-serial"),
    ("find-stat-cold", "first-walk"),
    ("find-stat-next", "index-listings"),
    ("image-seq-cold", "nullfs-seq"),
    ("find-stat-cold", "nullfs-find-stat-cold"),
    ("find-stat-warm", "nullfs-find-stat-warm"),
    ("tree-tar-cold", "nullfs-tar-cold"),
    ("ls-l-bigdir-cold", "nullfs-ls-l-cold"),
    ("ls-l-bigdir-warm", "nullfs-ls-l-warm"),
    ("find-stat-cold", "local-find-stat-cold"),
    ("find-stat-warm", "local-find-stat-warm"),
    ("find-stat-next", "local-find-stat-cold"),
    ("tree-tar-cold", "local-tar-cold"),
    ("tree-tar-warm", "local-tar-warm"),
    ("restore-image", "disk-write"),
    ("restore-tree", "disk-write-tree"),
]


def snapshot_reader(
    repo: str, snapshot: str, cache_size: int, *, spare_core: bool = False
) -> SnapshotReader:
    """A snapshot of the bench's snapfs datastore, opened as snapfs's commands open it, with a
    chunk cache of `cache_size`; `spare_core`: a decode that runs alone borrows the other core,
    as the mount's do (snapfs.store.spare_core)."""
    from snapfs.store.cache import ChunkCache
    from snapfs.store.datastore import parse_snapshot
    from snapfs.store.sources import SourceOptions
    from snapfs.store.spare_core import SpareCore
    from snapfs.views.archives import SnapshotReader

    return SnapshotReader(
        SourceOptions(repo).open(),
        parse_snapshot(snapshot),
        cache=ChunkCache(cache_size),
        spare=SpareCore() if spare_core else None,
    )


def image_stream(repo: str, *, spare_core: bool = False) -> IndexStream:
    """The image archive, with no chunk cache (every chunk asked for is fetched and decoded)."""
    reader = snapshot_reader(repo, f"vm/1/{SNAPFS_TIME}", 0, spare_core=spare_core)
    return reader.stream(IMAGE_ARCHIVE)


def image_digests(stream: IndexStream) -> list[bytes]:
    """The image's distinct chunks, in the order they first appear."""
    return list(dict.fromkeys(digest for _, _, digest in stream.index.chunks()))


def tree_entries(manifest: Manifest) -> int:
    """What `find` lists of the tree (its root aside): files and directories."""
    return len(manifest.files) + len(manifest.dirs)


def measure(runner: Runner, tool: Tool) -> None:
    stream = image_stream(tool.repo)
    runner.attempt(["decode"], decode, runner, stream)
    runner.attempt(["chunk-decode", "chunk-decode-serial"], chunk_decode, runner, tool.repo)
    runner.attempt(["first-walk", "index-listings"], metadata_walks, runner, tool.repo)
    runner.attempt([line.id for line in LINES if line.id.startswith("nullfs")], null_fs, runner)
    runner.attempt([line.id for line in LINES if line.id.startswith("local")], local_disk, runner)
    runner.attempt(["disk-write"], disk_write, runner)
    runner.attempt(["disk-write-tree"], disk_write_tree, runner)


def local_disk(runner: Runner) -> None:
    """find and tar of the source tree itself, checked as the mounts' are."""
    tree = os.path.join(runner.data_dir, TREE_NAME)
    entries = tree_entries(runner.manifest)
    for line in ("local-find-stat-cold", "local-find-stat-warm"):
        if line.endswith("cold"):
            drop_caches()
        elapsed, lines = timed_find(tree)
        runner.record_line(line, entries / elapsed, check_walk(lines, runner.manifest))
    for line in ("local-tar-cold", "local-tar-warm"):
        if line.endswith("cold"):
            drop_caches()
        elapsed, total, problem = timed_tar(tree, runner.manifest.files)
        runner.record_line(line, total / elapsed / 1e6, problem)


def disk_write(runner: Runner) -> None:
    """The source image written to a new file in the work directory as `snapfs restore` writes
    it, and synced, as `restore-image` is timed: the same all-zero blocks left as holes
    (snapfs.restore.holes.data_runs, SPARSE_BLOCK), the file sized last, its data read from the
    page cache (read once first): the writes and the sync a restore cannot avoid, with no
    decoding. In MB/s of the image's size, as the restore's figure is put."""
    from snapfs.restore.holes import data_runs
    from snapfs.restore.image import SPARSE_BLOCK

    source = os.path.join(runner.data_dir, IMAGE_NAME)
    target = os.path.join(runner.work, "disk-write.raw")
    with open(source, "rb") as src:
        while src.read(4 << 20):
            pass
    os.sync()
    start = time.perf_counter()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(source, "rb", buffering=0) as src:
            while block := src.read(4 << 20):
                view = memoryview(block)
                for run_start, run_stop in data_runs(block, SPARSE_BLOCK):
                    os.pwrite(fd, view[run_start:run_stop], size + run_start)
                size += len(block)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()
    elapsed = time.perf_counter() - start
    problem = None
    if size != runner.manifest.image_size:
        problem = f"wrote {size} bytes, the image has {runner.manifest.image_size}"
    elif sha256_file(target) != runner.manifest.image_sha256:
        problem = "the written image differs from the source"
    os.unlink(target)
    runner.record_line("disk-write", size / elapsed / 1e6, problem)


def disk_write_tree(runner: Runner) -> None:
    """The source tree copied to the work directory by two tars and synced, as `restore-tree` is
    timed: C programs making the same files, modes and mtimes on this disk. The source is read
    once first, so the copy reads it from the page cache: reading 100,000 small files cold costs
    more than making them (local-tar-cold), and a restore reads a few large chunk files instead."""
    target = os.path.join(runner.work, "disk-write-tree")
    runner.discard(target)
    os.makedirs(target)
    warm = subprocess.Popen(["tar", "-C", runner.data_dir, "-cf", "-", TREE_NAME], stdout=PIPE)
    assert warm.stdout is not None
    while warm.stdout.read(1 << 20):  # through a pipe: GNU tar reads nothing for /dev/null
        pass
    warm.wait()
    os.sync()
    start = time.perf_counter()
    pack = subprocess.Popen(["tar", "-C", runner.data_dir, "-cf", "-", TREE_NAME], stdout=PIPE)
    unpack = subprocess.run(["tar", "-C", target, "-xpf", "-"], stdin=pack.stdout, check=False)
    assert pack.stdout is not None
    pack.stdout.close()
    rc = pack.wait() or unpack.returncode
    os.sync()
    elapsed = time.perf_counter() - start
    problem = (
        f"tar exited {rc}" if rc else check_tree(os.path.join(target, TREE_NAME), runner.manifest)
    )
    runner.discard(target)
    runner.record_line("disk-write-tree", runner.manifest.tree_bytes / elapsed / 1e6, problem)


def decode(runner: Runner, stream: IndexStream) -> None:
    drop_caches()
    total = 0
    start = time.perf_counter()
    for block in stream.iter_range(workers=WORKERS):
        total += len(block)
    elapsed = time.perf_counter() - start
    # Each chunk is checked against its SHA-256 digest as it is decoded, and the index against
    # the manifest: what is left to check is that all of the image came out.
    size = runner.manifest.image_size
    problem = None if total == size else f"decoded {total} bytes, the image has {size}"
    runner.record_line("decode", total / elapsed / 1e6, problem)


def chunk_decode(runner: Runner, repo: str) -> None:
    """The image's distinct chunks decoded on 2 threads, then one after another: a reader that
    waits for each read (the random reads) never has two chunks to decode at once, and gets
    both cores only as the mount's decode of a chunk alone does, lent the spare core."""
    for line, workers in (("chunk-decode", WORKERS), ("chunk-decode-serial", 1)):
        stream = image_stream(repo, spare_core=workers == 1)
        digests = image_digests(stream)
        drop_caches()
        start = time.perf_counter()
        with ThreadPoolExecutor(workers, thread_name_prefix="bench-chunk-decode") as pool:
            sizes = [len(chunk) for chunk in pool.map(stream.chunks.read_chunk, digests)]
        elapsed = time.perf_counter() - start
        runner.record_line(
            line,
            len(digests) / elapsed,
            None if all(sizes) else "a chunk decoded to nothing",
            chunks=len(digests),
            mib_per_chunk=round(sum(sizes) / len(sizes) / 2**20, 2),
        )


def metadata_walks(runner: Runner, repo: str) -> None:
    """The tree archive indexed in process, then every directory listed from that index as the
    mount lists them on a walk (snapfs.fs.listing_ahead)."""
    from snapfs.fs.indexing import build_index
    from snapfs.fs.listing_ahead import WINDOW_ENTRIES
    from snapfs.index.archive import ArchiveIndex
    from snapfs.store.cache import DEFAULT_CACHE_SIZE

    # With the mount's chunk cache: the walk reads through it.
    reader = snapshot_reader(repo, f"host/tree/{SNAPFS_TIME}", DEFAULT_CACHE_SIZE)
    accessor = reader.pxar(TREE_ARCHIVE)
    entries = tree_entries(runner.manifest)
    path = os.path.join(runner.work, "first-walk.sqlite")
    drop_caches()
    start = time.perf_counter()
    index = build_index(accessor, path)
    elapsed = time.perf_counter() - start
    indexed = index.entries - 1  # less the root, which find does not count either
    problem = None if indexed == entries else f"indexed {indexed} entries, the tree has {entries}"
    runner.record_line("first-walk", entries / elapsed, problem)
    drop_caches()
    start = time.perf_counter()
    index = ArchiveIndex.load(path, name=accessor.name)
    # As a walk through the mount reads them: the root's listing, then a window at a time.
    root = accessor.root().entry_offset
    listed = len(index.listing(root))
    after: int | None = root
    while after is not None:
        window = index.listings_after(after, WINDOW_ENTRIES)
        listed += sum(len(listing) for _, listing in window.listings)
        after = window.read_to
    elapsed = time.perf_counter() - start
    problem = None if listed == entries else f"listed {listed} entries, the tree has {entries}"
    runner.record_line("index-listings", entries / elapsed, problem)
    os.unlink(path)


def null_fs(runner: Runner) -> None:
    manifest = runner.manifest
    size = manifest.image_size
    entries = tree_entries(manifest)
    bigdir = len(manifest.bigdir_files())
    mnt = os.path.join(runner.work, "mnt", "nullfs")
    with null_fs_mounted(mnt, size, manifest, bigdir):
        drop_caches()
        rate, digest, got = read_sequential(os.path.join(mnt, "image"))
        same = (got, digest) == (size, nullfs.content_sha256(size))
        runner.record_line(
            "nullfs-seq", rate / 1e6, None if same else f"read {got} bytes, not what it serves"
        )
        for line in ("nullfs-find-stat-cold", "nullfs-find-stat-warm"):
            if line.endswith("cold"):
                drop_caches()
            elapsed, lines = timed_find(os.path.join(mnt, "tree"))
            runner.record_line(line, entries / elapsed, check_walk(lines, manifest))
        for line in ("nullfs-ls-l-cold", "nullfs-ls-l-warm"):
            if line.endswith("cold"):
                drop_caches()
            start = time.perf_counter()
            out = subprocess.run(
                ["ls", "-l", "-n", "--time-style=+%s", os.path.join(mnt, "bigdir")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            elapsed = time.perf_counter() - start
            listed = len(out.splitlines()) - 1  # less the "total" line
            problem = None if listed == bigdir else f"listed {listed} entries, not {bigdir}"
            runner.record_line(line, elapsed, problem, entries=bigdir)
        # Every file's bytes are the image's first st_size bytes (nullfs.content_sha256).
        sha = nullfs.content_sha256s(file_size for file_size, _ in manifest.files.values())
        want = {p: (file_size, sha[file_size]) for p, (file_size, _) in manifest.files.items()}
        drop_caches()
        elapsed, total, problem = timed_tar(os.path.join(mnt, "tree"), want)
        runner.record_line("nullfs-tar-cold", total / elapsed / 1e6, problem, files=len(want))


@contextlib.contextmanager
def null_fs_mounted(mnt: str, size: int, manifest: Manifest, bigdir: int = 0) -> Iterator[None]:
    """bench/nullfs.py mounted on mnt in a process of its own, `/tree` in the shape of the
    manifest's tree; always unmounted at the end."""
    os.makedirs(mnt, exist_ok=True)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}
    tree_file = os.path.join(os.path.dirname(mnt), "nullfs-tree")
    files = ((p, file_size) for p, (file_size, _) in manifest.files.items())
    nullfs.write_tree(tree_file, manifest.dirs, files)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.nullfs", mnt),
            *("--size", str(size), "--tree", tree_file, "--bigdir-entries", str(bigdir)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        if not ready or proc.stdout.readline().strip() != "ready":
            raise ToolError(f"the null filesystem did not start (exit code {proc.poll()})")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
        os.unlink(tree_file)


def in_limit_unit(
    bench: str, value: float, image_bytes: int, entries: int, tree_bytes: int
) -> float:
    """A snapfs figure in its limit's unit: a restore's seconds as MB/s, a walk's as entries/s."""
    if bench == "restore-image":
        return image_bytes / 1e6 / value
    if bench == "restore-tree":
        return tree_bytes / 1e6 / value
    if bench.startswith("find-stat"):
        return entries / value
    return value


def section(
    results: list[dict], lines: list[dict], image_bytes: int, entries: int, tree_bytes: int
) -> dict:
    """The JSON's "limits": each limit, and each snapfs figure as a share of its limit."""
    limit = {line["line"]: line for line in lines}
    ours = {r["benchmark"]: r for r in results if r["tool"] == "snapfs"}
    compared, ratios = [], {}
    for bench, name in COMPARED:
        r, lim = ours.get(bench), limit.get(name)
        if not r or not lim or not r["value"] or not lim["value"]:
            continue
        figure = in_limit_unit(bench, r["value"], image_bytes, entries, tree_bytes)
        # A share of the limit either way: a time's limit is the shorter one.
        share = lim["value"] / figure if lim["unit"] == "s" else figure / lim["value"]
        ratio = round(share, 4) if r["verified"] and lim["verified"] else None
        compared.append({"benchmark": bench, "limit": name, "snapfs": figure, "ratio": ratio})
        if ratio is not None:
            ratios[f"{bench}/{name}"] = ratio
    return {
        "results": lines,
        "compared": compared,
        "ratios": ratios,
        "image_bytes": image_bytes,
        "entries": entries,
    }
