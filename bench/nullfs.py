"""A null FUSE filesystem: what pyfuse3 + trio can serve on this machine when serving costs nothing.

What it serves, from memory with no decoding and no worker thread, through the same stack as
snapfs's mount (pyfuse3 and trio, snapfs's mount options, attribute timeouts and kernel readahead):

* `/image`: a file of the size asked for, one pseudo-random 4 MiB block repeated (CONTENT_SEED);
* `/tree`: the bench tree's shape (`--tree`: its directories, and its files with their sizes),
  each directory's listing handing the kernel every entry's attributes (readdirplus), as
  snapfs's listings do, each file the first st_size bytes of `/image`: `find` and `tar` go
  through as many directories and files, in the same order, as in the tree's archive;
* `/bigdir`: a directory of M files, `f0000000` on (for `ls -l`; each file's st_size is its
  number, no data). Every entry has no extended attributes and no ACL, answered as snapfs
  answers (ENODATA, the kernel keeping ACLs): `ls -l` asks for both, for every file.

Files are read as snapfs's mount reads them: the first `open` answers ENOSYS, so the kernel opens
every file itself and each read names the inode (snapfs.fs.inode_reads).

What snapfs's mount reaches against this is what its own Python costs over FUSE's. Started by
`scripts/bench` (bench/compare/limits.py) as `python -m bench.nullfs MOUNTPOINT --size BYTES
--tree PATH --bigdir-entries M`: prints "ready" once its mount point answers, unmounts on
SIGTERM or SIGINT.
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
ROOT, IMAGE, TREE, BIGDIR = 1, 2, 3, 4  # inodes; then /bigdir's entries, then /tree's
FIRST_ENTRY = 5
ROOT_ENTRIES = ((b"image", IMAGE), (b"tree", TREE), (b"bigdir", BIGDIR))
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
    """Each `/bigdir` entry's st_size: its number."""
    return i


def read_tree(path: str) -> list[tuple[str, int | None]]:
    """The lines `write_tree` wrote: (relative path, size; None for a directory)."""
    with open(path) as f:
        return [(p, None if size == "d" else int(size)) for p, size in _lines(f)]


def write_tree(path: str, dirs: Iterable[str], files: Iterable[tuple[str, int]]) -> None:
    """The shape `/tree` is to have: its directories, and its files with their sizes."""
    with open(path, "w") as f:
        f.writelines(f"{p}\td\n" for p in dirs)
        f.writelines(f"{p}\t{size}\n" for p, size in files)


def _lines(f) -> Iterable[tuple[str, str]]:
    for line in f:
        p, _, size = line.rstrip("\n").rpartition("\t")
        yield p, size


def serve(
    mountpoint: str, size: int, tree: list[tuple[str, int | None]], bigdir_entries: int = 0
) -> None:
    import pyfuse3

    from snapfs.fs.mount import DEFAULT_READ_AHEAD_KB, MountOptions, mount_options

    data = memoryview(block())
    now = time.time_ns()
    bigdir_end = FIRST_ENTRY + bigdir_entries
    # /tree's entries are numbered from bigdir_end, parents before children. Each directory's
    # children are listed by name (as an archive stores them): (name, inode) and by name.
    sizes: dict[int, int] = {IMAGE: size}  # files' sizes, by inode
    children: dict[int, list[tuple[bytes, int]]] = {ROOT: list(ROOT_ENTRIES), TREE: []}
    inos = {"": TREE}
    for ino, (path, file_size) in enumerate(sorted(tree, key=lambda e: e[0]), bigdir_end):
        inos[path] = ino
        parent, _, name = path.rpartition("/")
        children[inos[parent]].append((os.fsencode(name), ino))
        if file_size is None:
            children[ino] = []
        else:
            sizes[ino] = file_size
    for listing in children.values():
        listing.sort()
    by_name = {ino: dict(listing) for ino, listing in children.items()}

    def is_dir(ino: int) -> bool:
        return ino in children or ino == BIGDIR

    def attributes(ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        if is_dir(ino):
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            e.st_mode, e.st_nlink = stat.S_IFREG | 0o444, 1
            e.st_size = sizes[ino] if ino in sizes else entry_size(ino - FIRST_ENTRY)
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
            if not (inode in sizes or is_dir(inode) or FIRST_ENTRY <= inode < bigdir_end):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attributes(inode)

        async def getxattr(self, inode, name, ctx=None):
            raise pyfuse3.FUSEError(errno.ENODATA)

        async def listxattr(self, inode, ctx=None):
            return []

        async def lookup(self, parent_inode, name, ctx=None):
            if parent_inode in by_name and name in by_name[parent_inode]:
                return attributes(by_name[parent_inode][name])
            if parent_inode == BIGDIR and name[:1] == b"f" and name[1:].isdigit():
                i = int(name[1:])
                if i < bigdir_entries and name == entry_name(i):
                    return attributes(FIRST_ENTRY + i)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx=None):
            if not is_dir(inode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh, start_id, token):
            if fh == BIGDIR:
                for i in range(start_id, bigdir_entries):
                    if not pyfuse3.readdir_reply(
                        token, entry_name(i), attributes(FIRST_ENTRY + i), i + 1
                    ):
                        return
                return
            listing = children[fh]
            for i in range(start_id, len(listing)):
                name, ino = listing[i]
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
            end = min(off + length, sizes.get(fh, 0))
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
    parser.add_argument(
        "--tree", metavar="PATH", required=True, help="the shape of /tree (write_tree)"
    )
    parser.add_argument("--bigdir-entries", type=int, default=0, help="files in /bigdir")
    args = parser.parse_args(argv)
    serve(os.path.abspath(args.mountpoint), args.size, read_tree(args.tree), args.bigdir_entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
