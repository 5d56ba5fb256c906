"""A null FUSE filesystem: what pyfuse3 + trio can serve on this machine when serving costs nothing.

What it serves, from memory with no decoding and no worker thread, through the same stack as
snapfs's mount (pyfuse3 and trio, snapfs's mount options, attribute timeouts and kernel readahead):

* `/image`: a file of the size asked for, one pseudo-random 4 MiB block repeated (CONTENT_SEED);
* `/dir`: a directory of N files, `f0000000` on, whose listing hands the kernel every entry's
  attributes (readdirplus), as snapfs's listings do (each file's st_size is its number; no data);
* `/bigdir`: another such directory, of M files (for `ls -l`). Every entry has no extended
  attributes and no ACL, answered as snapfs answers (ENODATA, the kernel keeping ACLs): `ls -l`
  asks for both, for every file;
* `/files`: a directory of files of the sizes asked for (`--file-sizes`, the bench tree's), each
  the first st_size bytes of `/image` (for `tar`).

Files are read as snapfs's mount reads them: the first `open` answers ENOSYS, so the kernel opens
every file itself and each read names the inode (snapfs.fs.inode_reads).

What snapfs's mount reaches against this is what its own Python costs over FUSE's. Started by
`scripts/bench` (bench/compare/limits.py) as `python -m bench.nullfs MOUNTPOINT --size BYTES
--entries N`: prints "ready" once its mount point answers, unmounts on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import random
import signal
import stat
import sys
import time
from collections.abc import Iterable

BLOCK = 4 * 1024 * 1024
CONTENT_SEED = 11
ROOT, IMAGE, DIR, BIGDIR, FILES = 1, 2, 3, 4, 5  # inodes; then /dir's, /bigdir's, /files's entries
FIRST_ENTRY = 6
ROOT_ENTRIES = ((b"image", IMAGE), (b"dir", DIR), (b"bigdir", BIGDIR), (b"files", FILES))
ATTR_TIMEOUT = 24 * 3600.0  # what snapfs gives entries that never change


def block() -> bytes:
    return random.Random(CONTENT_SEED).randbytes(BLOCK)


def content_sha256(size: int) -> str:
    """The SHA-256 of `/image` of this size, and of a file of `/files` of this size: what a
    reader of it must get."""
    return content_sha256s([size])[size]


def content_sha256s(sizes: Iterable[int]) -> dict[int, str]:
    """`content_sha256` of each size, by one pass over the content (the files of `/files`
    share it: each is its first st_size bytes)."""
    h = hashlib.sha256()
    data = memoryview(block())
    done = 0
    digests = {}
    for size in sorted(set(sizes)):
        while done < size:
            n = min(size - done, BLOCK - done % BLOCK)
            h.update(data[done % BLOCK : done % BLOCK + n])
            done += n
        digests[size] = h.copy().hexdigest()
    return digests


def entry_name(i: int) -> bytes:
    return b"f%07d" % i


def entry_size(i: int) -> int:
    """Each entry's st_size, so a listing of sizes can be checked: its number."""
    return i


def serve(
    mountpoint: str,
    size: int,
    entries: int,
    bigdir_entries: int = 0,
    file_sizes: tuple[int, ...] = (),
) -> None:
    import pyfuse3

    from snapfs.fs.mount import DEFAULT_READ_AHEAD_KB, MountOptions, mount_options

    data = memoryview(block())
    now = time.time_ns()
    # Each directory's entries are a range of inodes, in this order from FIRST_ENTRY.
    counts = {DIR: entries, BIGDIR: bigdir_entries, FILES: len(file_sizes)}
    ranges: dict[int, tuple[int, int]] = {}
    first = FIRST_ENTRY
    for directory, count in counts.items():
        ranges[directory] = (first, first + count)
        first += count
    end = first
    files_first = ranges[FILES][0]

    def parent_of(ino: int) -> int:
        return next(d for d, (lo, hi) in ranges.items() if lo <= ino < hi)

    def file_size(ino: int) -> int:
        if ino == IMAGE:
            return size
        if ino >= files_first:
            return file_sizes[ino - files_first]
        return entry_size(ino - ranges[parent_of(ino)][0])

    def attributes(ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        if ino < FIRST_ENTRY and ino != IMAGE:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            e.st_mode, e.st_nlink = stat.S_IFREG | 0o444, 1
            e.st_size = file_size(ino)
        e.st_blksize = 128 * 1024
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
        e.entry_timeout = e.attr_timeout = ATTR_TIMEOUT
        return e

    class NullFS(pyfuse3.Operations):
        supports_dot_lookup = False
        enable_writeback_cache = False
        enable_acl = True  # as snapfs: the kernel keeps each file's (absent) ACL
        reads_by_inode = False  # set by run_mounted, as snapfs's mount sets its own

        async def getattr(self, inode, ctx=None):
            if inode >= end:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attributes(inode)

        async def getxattr(self, inode, name, ctx=None):
            raise pyfuse3.FUSEError(errno.ENODATA)

        async def listxattr(self, inode, ctx=None):
            return []

        async def lookup(self, parent_inode, name, ctx=None):
            if parent_inode == ROOT and name in dict(ROOT_ENTRIES):
                return attributes(dict(ROOT_ENTRIES)[name])
            if parent_inode in ranges and name[:1] == b"f" and name[1:].isdigit():
                lo, hi = ranges[parent_inode]
                i = int(name[1:])
                if i < hi - lo and name == entry_name(i):
                    return attributes(lo + i)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx=None):
            if inode != ROOT and inode not in ranges:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh, start_id, token):
            lo, hi = (0, len(ROOT_ENTRIES)) if fh == ROOT else ranges[fh]
            for i in range(start_id, hi - lo):
                name, ino = ROOT_ENTRIES[i] if fh == ROOT else (entry_name(i), lo + i)
                if not pyfuse3.readdir_reply(token, name, attributes(ino), i + 1):
                    return

        async def open(self, inode, flags, ctx=None):
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise pyfuse3.FUSEError(errno.EROFS)
            if self.reads_by_inode:  # as snapfs: the kernel opens files itself from now on
                raise pyfuse3.FUSEError(errno.ENOSYS)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, length):
            """Every file is the first st_size bytes of the image (`content_sha256`)."""
            if fh != IMAGE and fh < files_first:
                return b""
            end = min(off + length, file_size(fh))
            start = off % BLOCK
            if off >= end:
                return b""
            if start + (end - off) <= BLOCK:
                return data[start : start + end - off]
            parts, pos = [], off
            while pos < end:
                n = min(end - pos, BLOCK - pos % BLOCK)
                parts.append(data[pos % BLOCK : pos % BLOCK + n])
                pos += n
            return b"".join(parts)

    # snapfs's own options (read-only, default_permissions), under a name of our own.
    options = {
        o
        for o in mount_options(MountOptions(source="nullfs", mountpoint=mountpoint))
        if not o.startswith(("fsname=", "subtype="))
    } | {"fsname=snapfs-bench-nullfs", "subtype=nullfs"}
    run_mounted(
        NullFS(), mountpoint, options, DEFAULT_READ_AHEAD_KB, cache_listings=True, by_inode=True
    )


def run_mounted(
    ops,
    mountpoint: str,
    options: set[str],
    read_ahead_kb: int,
    *,
    cache_listings: bool = False,
    by_inode: bool = False,
) -> None:
    """Mount `ops` (pyfuse3 Operations) as snapfs mounts, print "ready" once it answers, serve
    until SIGTERM or SIGINT, unmount. The bench's reference filesystems all run this way;
    `cache_listings` has the kernel keep directory listings, as snapfs has it keep those of
    archives (snapfs.fs.listing_cache); `by_inode` has the kernel open files itself, each read
    naming the inode (snapfs.fs.inode_reads), as snapfs's mount does: `ops.reads_by_inode` is
    then set, and its `open` must answer ENOSYS."""
    import pyfuse3
    import trio

    from snapfs.fs import inode_reads, listing_cache
    from snapfs.fs.handler_table import HandlerTable
    from snapfs.fs.mount import set_read_ahead

    pyfuse3.init(ops, mountpoint, options)
    table = HandlerTable.find() if cache_listings or by_inode else None
    if table is not None and cache_listings:
        listing_cache.enable(table, lambda inode: True)
    if table is not None and by_inode:
        inode_reads.enable(table)
        ops.reads_by_inode = True

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def ready() -> None:
                st = await trio.to_thread.run_sync(os.stat, mountpoint)
                set_read_ahead(st.st_dev, read_ahead_kb)
                print("ready", flush=True)

            async def stop() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(ready)
            nursery.start_soon(stop)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.nullfs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mountpoint")
    parser.add_argument("--size", type=int, required=True, help="bytes of /image")
    parser.add_argument("--entries", type=int, required=True, help="files in /dir")
    parser.add_argument("--bigdir-entries", type=int, default=0, help="files in /bigdir")
    parser.add_argument(
        "--file-sizes", metavar="PATH", help="a file of sizes, one a line: the files of /files"
    )
    args = parser.parse_args(argv)
    sizes = ()
    if args.file_sizes:
        with open(args.file_sizes) as f:
            sizes = tuple(int(line) for line in f if line.strip())
    serve(os.path.abspath(args.mountpoint), args.size, args.entries, args.bigdir_entries, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
