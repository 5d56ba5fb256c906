"""A null FUSE filesystem: what pyfuse3 + trio can serve on this machine when serving costs nothing.

Two things, answered from memory with no decoding and no worker thread, through the same stack as
snapfs's mount (pyfuse3 and trio, snapfs's mount options, attribute timeouts and kernel readahead):

* `/image`: a file of the size asked for, one pseudo-random 4 MiB block repeated (CONTENT_SEED),
  opened with keep_cache as snapfs opens an image;
* `/dir`: a directory of N files, `f0000000` on, whose listing hands the kernel every entry's
  attributes (readdirplus), as snapfs's listings do (each file's st_size is its number; no data);
* `/bigdir`: another such directory, of M files (for `ls -l`). Every entry has no extended
  attributes and no ACL, answered as snapfs answers (ENODATA, the kernel keeping ACLs): `ls -l`
  asks for both, for every file.

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

BLOCK = 4 * 1024 * 1024
CONTENT_SEED = 11
ROOT, IMAGE, DIR, BIGDIR = 1, 2, 3, 4  # inodes; /dir's entries, then /bigdir's, from FIRST_ENTRY
FIRST_ENTRY = 5
ROOT_ENTRIES = ((b"image", IMAGE), (b"dir", DIR), (b"bigdir", BIGDIR))
ATTR_TIMEOUT = 24 * 3600.0  # what snapfs gives entries that never change


def block() -> bytes:
    return random.Random(CONTENT_SEED).randbytes(BLOCK)


def image_sha256(size: int) -> str:
    """The SHA-256 of `/image` of this size: what a reader of it must get."""
    h = hashlib.sha256()
    data = memoryview(block())
    left = size
    while left:
        n = min(left, BLOCK)
        h.update(data[:n])
        left -= n
    return h.hexdigest()


def entry_name(i: int) -> bytes:
    return b"f%07d" % i


def entry_size(i: int) -> int:
    """Each entry's st_size, so a listing of sizes can be checked: its number."""
    return i


def serve(mountpoint: str, size: int, entries: int, bigdir_entries: int = 0) -> None:
    import pyfuse3

    from snapfs.fs.mount import DEFAULT_READ_AHEAD_KB, MountOptions, mount_options

    data = memoryview(block())
    now = time.time_ns()
    first_big = FIRST_ENTRY + entries  # /bigdir's first entry
    end = first_big + bigdir_entries

    def number(ino: int) -> int:
        return ino - (first_big if ino >= first_big else FIRST_ENTRY)

    def listed(directory: int) -> tuple[int, int]:
        """The entry inodes a directory holds, as a range."""
        return (FIRST_ENTRY, first_big) if directory == DIR else (first_big, end)

    def attributes(ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        if ino in (ROOT, DIR, BIGDIR):
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            e.st_mode, e.st_nlink = stat.S_IFREG | 0o444, 1
            e.st_size = size if ino == IMAGE else entry_size(number(ino))
        e.st_blksize = 128 * 1024
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
        e.entry_timeout = e.attr_timeout = ATTR_TIMEOUT
        return e

    class NullFS(pyfuse3.Operations):
        supports_dot_lookup = False
        enable_writeback_cache = False
        enable_acl = True  # as snapfs: the kernel keeps each file's (absent) ACL

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
            if parent_inode in (DIR, BIGDIR) and name[:1] == b"f" and name[1:].isdigit():
                first, stop = listed(parent_inode)
                i = int(name[1:])
                if i < stop - first and name == entry_name(i):
                    return attributes(first + i)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx=None):
            if inode not in (ROOT, DIR, BIGDIR):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh, start_id, token):
            first, stop = (0, len(ROOT_ENTRIES)) if fh == ROOT else listed(fh)
            for i in range(start_id, stop - first):
                name, ino = ROOT_ENTRIES[i] if fh == ROOT else (entry_name(i), first + i)
                if not pyfuse3.readdir_reply(token, name, attributes(ino), i + 1):
                    return

        async def open(self, inode, flags, ctx=None):
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise pyfuse3.FUSEError(errno.EROFS)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, length):
            if fh != IMAGE:
                return b""
            end = min(off + length, size)
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
    run_mounted(NullFS(), mountpoint, options, DEFAULT_READ_AHEAD_KB, cache_listings=True)


def run_mounted(
    ops, mountpoint: str, options: set[str], read_ahead_kb: int, *, cache_listings: bool = False
) -> None:
    """Mount `ops` (pyfuse3 Operations) as snapfs mounts, print "ready" once it answers, serve
    until SIGTERM or SIGINT, unmount. The bench's reference filesystems all run this way;
    `cache_listings` has the kernel keep directory listings, as snapfs has it keep those of
    archives (snapfs.fs.listing_cache)."""
    import pyfuse3
    import trio

    from snapfs.fs import listing_cache
    from snapfs.fs.handler_table import HandlerTable
    from snapfs.fs.mount import set_read_ahead

    pyfuse3.init(ops, mountpoint, options)
    table = HandlerTable.find() if cache_listings else None
    if table is not None:
        listing_cache.enable(table, lambda inode: True)

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
    args = parser.parse_args(argv)
    serve(os.path.abspath(args.mountpoint), args.size, args.entries, args.bigdir_entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
