"""Restore of a pxar archive, or a file or directory in it, to a folder on disk.

Safety rules for pxar archives, which are untrusted input:
- every name is checked (no '', '.', '..', '/', NUL) and every entry is created relative to an
  open descriptor of its parent directory (the *at syscalls), and directories are opened with
  O_NOFOLLOW: a path can never climb out of TARGET, and no symlink is ever followed, including
  one the same restore has just created under a name a later entry reuses;
- hard links are made from the entry the archive's link offset resolves to, never from the
  stored path string;
- one failing entry does not stop the restore: what was restored stays, each failure is
  reported with its path, and the exit code is non-zero.

Metadata (restore/metadata.py) follows an entry's content; a directory gets its metadata when it
is left, so a read-only directory mode or its mtime is not disturbed by creating its children.

Interrupted restores (a crash, `kill -9`, a full disk): a name in TARGET is either absent or
complete. A file, symlink or node is made under a partial name (`.snapfs-partial-OFFSET`, the
entry's archive offset) in its directory and renamed to its own name only once its content and
metadata (mtime last) are set; a hard link is one link(2) to a complete file. A tree restore keeps
the marker file INCOMPLETE_MARKER in TARGET from its start until every entry is done, so an
interrupted one says so; running the same command again finishes it: names already complete are
kept (even with `--overwrite never`), partial names are made again, hard links link to the kept
files, and every directory on the way gets its metadata (mode and mtime) again.

Pipelining: a walker thread (restore/walker.py) runs ahead of the writer and has the chunks of the
files it passes on fetched and decoded, so the writer mostly finds them already in the cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import threading
from dataclasses import dataclass, field
from functools import partial

from snapfs.errors import SnapfsError, UsageError
from snapfs.progress import Progress
from snapfs.pxar import format as fmt
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.acl import ACL_XATTR_DEFAULT
from snapfs.pxar.entry import Entry, EntryKind
from snapfs.restore import parallel
from snapfs.restore.filters import OVERWRITE_POLICIES, PathFilter, check_name
from snapfs.restore.holes import data_runs
from snapfs.restore.metadata import apply_fd_metadata, apply_path_metadata
from snapfs.restore.report import RestoreReport, display_path
from snapfs.restore.walker import BATCH, WALK_DONE, ByteBudget, unbatched, walk_ahead
from snapfs.store.readahead import Readahead
from snapfs.store.stream import IndexStream

__all__ = ["RestoreOptions", "restore_pxar"]

_BLOCK = 4096
_READ_SIZE = 4 * 1024 * 1024
#: In TARGET while a tree restore into it is under way: its presence means an interrupted one.
INCOMPLETE_MARKER = b".snapfs-restore-incomplete"
_PARTIAL_PREFIX = b".snapfs-partial-"
DEFAULT_PREFETCH_BYTES = 64 * 1024 * 1024
DEFAULT_PREFETCH_WORKERS = 4
#: Below this many archive bytes (a v1 archive holds file contents inline, so this is roughly the
#: tree's size) a restore stays in one process: starting workers costs more than it saves.
PARALLEL_MIN_BYTES = 64 * 1024 * 1024


@dataclass
class RestoreOptions:
    """How a pxar restore runs; `snapfs restore` sets the first five and keeps the defaults of the rest."""

    overwrite: str = "never"
    ignore_ownership: bool = False
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    dry_run: bool = False
    sparse: bool = True
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES
    workers: int = DEFAULT_PREFETCH_WORKERS
    #: Worker processes for a large tree (restore/parallel.py); 1 restores in this process.
    processes: int = 1
    #: How a worker process opens the same archive again; without one, one process restores.
    opener: parallel.ArchiveOpener | None = None
    #: A tree smaller than this (archive bytes of its subtree) is not worth starting processes.
    parallel_min_bytes: int = PARALLEL_MIN_BYTES

    def __post_init__(self) -> None:
        if self.overwrite not in OVERWRITE_POLICIES:
            raise UsageError(
                f"--overwrite {self.overwrite!r}: expected one of {', '.join(OVERWRITE_POLICIES)}"
            )


def _nothing_to_warm(start: int, end: int) -> None:
    """What the walker announces content to when no chunk can be decoded ahead."""


@dataclass
class _Frame:
    """A directory on the way down: its archive path, and its fd once it exists on disk."""

    entry: Entry
    path: bytes
    rel: tuple[bytes, ...]
    fd: int | None = None
    apply_meta: bool = True
    #: Made empty by this restore: nothing can be in the way of a child (no lstat first).
    fresh: bool = False
    #: Fresh, below fresh directories up to a TARGET that passes nothing on (no default ACL, no
    #: setgid bit): a child is created with no ACL, the restore's own uid and gid, and the mode
    #: asked for less the umask (archived modes and ACLs are set when a directory is left).
    plain: bool = False


@dataclass
class _PxarRestore:
    accessor: Accessor
    target: str
    opts: RestoreOptions
    report: RestoreReport
    progress: Progress
    is_root: bool = field(default_factory=lambda: os.geteuid() == 0)
    links: dict[int, tuple[bytes, ...]] = field(default_factory=dict)  # entry_offset -> rel path
    target_fd: int | None = None  # TARGET, when restoring a directory
    created: bool = False  # whether this restore created TARGET
    #: Finishing an interrupted restore: existing directories get the archive's metadata again.
    resuming: bool = False
    #: What a new file gets from this process: its (euid, egid), and the umask.
    own_ids: tuple[int, int] = field(default_factory=lambda: (os.geteuid(), os.getegid()))
    umask: int = field(default_factory=lambda: _current_umask())
    #: In a worker process (restore/parallel.py): the archive ranges of the entries it restores,
    #: and the hard links to files outside them, made by the parent once every worker is done.
    own_ranges: tuple[tuple[int, int], ...] | None = None
    deferred_links: list[tuple[Entry, tuple[bytes, ...]]] = field(default_factory=list)

    # -- entry points

    def run(self, root: Entry) -> None:
        if root.is_dir:
            if not self._run_parallel(root):
                self._run_tree((root,))
        else:
            self._run_single(root)

    def _run_parallel(self, root: Entry) -> bool:
        """Restore a large tree on worker processes; False if it is not worth it here."""
        opts = self.opts
        if (
            opts.processes < 2
            or opts.opener is None
            or opts.dry_run
            or opts.includes
            or opts.excludes
            or parallel.tree_bytes(self.accessor, root) < opts.parallel_min_bytes
        ):
            return False
        parallel.restore_in_parallel(self, root, restore_unit)
        return True

    def _run_single(self, entry: Entry) -> None:
        """One non-directory entry: TARGET is the new name, or an existing directory to put it in."""
        name = entry.name
        if entry.is_hardlink:  # on its own, a hard link is restored as the file it names
            entry = self.accessor.resolve_hardlink(entry)
        target = self.target
        if os.path.isdir(target) and not os.path.islink(target):
            parent = target
        else:
            parent, name = (
                os.path.dirname(os.path.abspath(target)),
                os.fsencode(os.path.basename(target)),
            )
        check_name(name, target)
        if self.opts.dry_run:
            self._count(entry)
            return
        try:
            pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SnapfsError(f"{parent}: cannot open target folder: {exc.strerror}") from None
        try:
            self._restore_entry(pfd, name, entry, (name,))
        finally:
            os.close(pfd)

    def _run_tree(self, roots: tuple[Entry, ...], parent: _Frame | None = None) -> None:
        """Restore the directory `roots[0]` and everything below it into TARGET; or, given the
        `parent` frame they lie in (a worker process's unit), the sibling `roots` and everything
        below them as children of that directory."""
        stack: list[_Frame] = [] if parent is None else [parent]
        filt = PathFilter(self.opts.includes, self.opts.excludes)
        walk_acc = Accessor(self.accessor.archive, self.accessor.payload, name=self.accessor.name)
        content_source = (
            self.accessor.payload if self.accessor.format_version == 2 else self.accessor.archive
        )
        readahead = None
        warm = _nothing_to_warm
        # Only an IndexStream has chunks to warm; a plain file or bytes source needs nothing.
        if isinstance(content_source, IndexStream) and self.opts.workers and not self.opts.dry_run:
            readahead = Readahead(self.opts.workers, "snapfs-prefetch")
            warm = partial(readahead.warm_range, content_source)
        budget = ByteBudget(self.opts.prefetch_bytes)
        items: queue.Queue = queue.Queue(maxsize=4096 // BATCH)
        walker = threading.Thread(
            target=walk_ahead,
            args=(walk_acc, roots, filt, items, budget, warm),
            name="snapfs-walk",
            daemon=True,
        )
        walker.start()
        try:
            for item in unbatched(items):
                if item is WALK_DONE:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, SnapfsError):
                        self.report.fail(f"not restored (archive unreadable here): {item}")
                        continue
                    raise item
                entry = item.entry
                if parent is None and entry.path == roots[0].path:
                    stack.append(self._root_frame(entry))
                    continue
                parent_path = entry.path.rsplit(b"/", 1)[0]
                while stack and stack[-1].path != parent_path:
                    self._leave(stack.pop())
                if not stack:
                    self.report.fail(
                        f"{entry.path!r}: entry outside the directory being restored",
                        path=display_path(entry.path),
                    )
                    continue
                try:
                    check_name(entry.name, self.accessor.name)
                except UsageError as exc:
                    self.report.fail(str(exc), path=display_path(entry.path))
                    if entry.is_dir:  # poisoned frame: its children are reported, not restored
                        stack.append(_Frame(entry, entry.path, None, None, apply_meta=False))
                    budget.release(entry.size if entry.is_file else 0)
                    continue
                top = stack[-1]
                rel = (*top.rel, entry.name) if top.rel is not None else None
                if rel is None:  # below a directory that could not be restored
                    self.report.fail(
                        "not restored: a parent directory failed", path=display_path(entry.path)
                    )
                    if entry.is_dir:
                        stack.append(_Frame(entry, entry.path, None, None, apply_meta=False))
                    budget.release(entry.size if entry.is_file else 0)
                    continue
                if entry.is_dir:
                    frame = _Frame(entry, entry.path, rel)
                    stack.append(frame)
                    if item.selected:
                        self._materialize(stack)
                    continue
                try:
                    pfd = self._materialize(stack)
                    if pfd is None:
                        continue
                    self._restore_entry(pfd, entry.name, entry, rel, stack[-1])
                finally:
                    if entry.is_file:
                        budget.release(entry.size)
            while len(stack) > 1:
                self._leave(stack.pop())
            if parent is None:
                self._drop_marker()  # before TARGET's mtime is set
                while stack:
                    self._leave(stack.pop())
        finally:
            budget.stop()
            if readahead is not None:
                readahead.close()
            # Drain so a walker blocked on a full queue can see the stop and end.
            while walker.is_alive():
                with contextlib.suppress(queue.Empty):
                    items.get(timeout=0.1)
            for frame in stack:
                if frame is parent:  # the caller's
                    continue
                if frame.fd is not None and frame.fd >= 0 and frame.rel != ():
                    os.close(frame.fd)

    # -- directories

    def frame_below(self, parent: _Frame, entry: Entry) -> _Frame:
        """The frame of the directory `entry`, a child of `parent`'s, not yet on disk."""
        return _Frame(entry, entry.path, (*parent.rel, entry.name))

    def _root_frame(self, root: Entry) -> _Frame:
        """The frame of the directory being restored: TARGET itself."""
        target_fd, created = self.target_fd, self.created
        return _Frame(
            root,
            root.path.rstrip(b"/"),
            (),
            -1 if target_fd is None else target_fd,
            apply_meta=created or self.resuming or self.opts.overwrite == "always",
            fresh=created,
            plain=created and _passes_nothing_on(target_fd),
        )

    def _materialize(self, stack: list[_Frame]) -> int | None:
        """Create/open every directory on the stack not yet on disk; the innermost fd."""
        if stack[-1].fd is not None:  # on disk, so is every directory below it (per file)
            return stack[-1].fd
        for i, frame in enumerate(stack):
            if frame.rel is None:
                return None
            if frame.fd is not None:
                continue
            if self.opts.dry_run:
                frame.fd = -1
                self._count(frame.entry)
                continue
            parent = stack[i - 1]
            try:
                frame.fd, frame.apply_meta, frame.fresh = self._make_dir(parent.fd, frame.entry)
                frame.plain = frame.fresh and parent.plain
            except _Skip:
                for f in stack[i:]:
                    f.rel = None  # type: ignore[assignment]
                return None
            except (OSError, SnapfsError) as exc:
                self._fail(frame.entry, "cannot create directory", exc)
                for f in stack[i:]:
                    f.rel = None  # type: ignore[assignment]
                return None
        return stack[-1].fd

    def _make_dir(self, pfd: int, entry: Entry) -> tuple[int, bool, bool]:
        """(fd, whether to apply its metadata, whether this restore made it)."""
        name = entry.name
        apply_meta = True
        fresh = True
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
            self._count(entry)
        except FileExistsError:
            fresh = False
            st = os.lstat(name, dir_fd=pfd)
            if stat.S_ISDIR(st.st_mode):
                apply_meta = self.resuming or self._may_replace(st, entry)
            elif self._may_replace(st, entry):
                os.unlink(name, dir_fd=pfd)
                os.mkdir(name, 0o700, dir_fd=pfd)
                self._count(entry)
            else:
                self.report.skipped.append(display_path(entry.path))
                raise _Skip from None
        # O_NOFOLLOW: if anything swapped a symlink in, this fails instead of following it.
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        return fd, apply_meta, fresh

    def _leave(self, frame: _Frame) -> None:
        if frame.fd is None or frame.fd < 0:
            return
        try:
            if frame.apply_meta:
                self._apply_fd_meta(frame.fd, frame.entry)
        finally:
            if frame.rel != ():  # the root frame's fd is the target's, closed by the caller
                os.close(frame.fd)
                frame.fd = None

    # -- non-directory entries

    def _restore_entry(
        self,
        pfd: int,
        name: bytes,
        entry: Entry,
        rel: tuple[bytes, ...],
        parent: _Frame | None = None,
    ) -> None:
        fresh = parent is not None and parent.fresh
        plain = parent is not None and parent.plain
        if self.opts.dry_run:
            self._count(entry)
            if entry.is_file:
                self.report.bytes_total += entry.size
            return
        try:
            if not fresh and not self._clear_existing(pfd, name, entry):
                if entry.kind is EntryKind.FILE and stat.S_ISREG(
                    os.lstat(name, dir_fd=pfd).st_mode
                ):
                    self.links[entry.entry_offset] = rel  # kept: later hard links link to it
                return
            kind = entry.kind
            if kind is EntryKind.FILE:
                self._make_file(pfd, name, entry, plain=plain, fresh=fresh)
                self.links[entry.entry_offset] = rel
            elif kind is EntryKind.HARDLINK:
                self._make_hardlink(pfd, name, entry, rel)
            elif kind is EntryKind.SYMLINK:
                tmp = self._partial(pfd, entry, fresh)
                os.symlink(entry.link_target or b"", tmp, dir_fd=pfd)
                self._apply_path_meta(pfd, tmp, entry, symlink=True)
                self._complete(pfd, tmp, name)
            elif kind in (EntryKind.DEVICE, EntryKind.FIFO, EntryKind.SOCKET):
                device = os.makedev(*entry.device) if entry.device else 0
                tmp = self._partial(pfd, entry, fresh)
                os.mknod(tmp, (entry.mode & fmt.S_IFMT) | 0o600, device, dir_fd=pfd)
                self._apply_path_meta(pfd, tmp, entry, symlink=False)
                self._complete(pfd, tmp, name)
            else:
                raise UsageError(f"unsupported entry kind {kind}")
            self._count(entry)
        except _Skip:
            return
        except (OSError, SnapfsError) as exc:
            self._fail(entry, f"cannot restore {entry.kind.value}", exc)

    def _clear_existing(self, pfd: int, name: bytes, entry: Entry) -> bool:
        """Make room for the entry per --overwrite; False if an existing one is kept."""
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return True
        if not self._may_replace(st, entry):
            self.report.skipped.append(display_path(entry.path))
            return False
        if stat.S_ISDIR(st.st_mode):
            raise SnapfsError(
                f"a directory exists at {display_path(entry.path)}; not replacing it with a {entry.kind.value}"
            )
        # Unlink, never write through: the old name may be a hard link or a symlink.
        os.unlink(name, dir_fd=pfd)
        return True

    def _may_replace(self, st: os.stat_result, entry: Entry) -> bool:
        if self.opts.overwrite == "always":
            return True
        if self.opts.overwrite == "if-newer":
            if entry.is_hardlink:
                entry = self.accessor.resolve_hardlink(entry)
            return entry.mtime_ns > st.st_mtime_ns
        return False

    def _make_file(
        self, pfd: int, name: bytes, entry: Entry, *, plain: bool = False, fresh: bool = False
    ) -> None:
        """Create, write and close one regular file under its partial name, then give it its
        own. In a `plain` directory the file is created with its final permissions when the
        umask keeps them (no special bits, no ACL), and its owner is known: the syscalls that
        would set them again are skipped."""
        perm = entry.mode & 0o7777
        final = plain and entry.acl is None and (perm & ~0o777) == 0 and (perm & self.umask) == 0
        tmp = self._partial(pfd, entry, fresh)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            perm if final else 0o600,
            dir_fd=pfd,
        )
        try:
            try:
                self._write_content(fd, entry)
                self._apply_fd_meta(
                    fd,
                    entry,
                    inherited_acls=not plain,
                    owner=self.own_ids if plain else None,
                    mode=perm if final else None,
                )
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise
        self._complete(pfd, tmp, name)

    @staticmethod
    def _partial(pfd: int, entry: Entry, fresh: bool) -> bytes:
        """The name an entry is made under until it is complete; one an interrupted restore
        left behind is removed (a directory this restore made holds none)."""
        tmp = b"%s%x" % (_PARTIAL_PREFIX, entry.entry_offset)
        if not fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=pfd)
        return tmp

    @staticmethod
    def _complete(pfd: int, tmp: bytes, name: bytes) -> None:
        """A complete entry gets its own name (rename keeps its mtime)."""
        try:
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise

    def mark_incomplete(self) -> None:
        """Put the marker in TARGET, or find one: then this restore finishes an interrupted one."""
        assert self.target_fd is not None
        try:
            fd = os.open(
                INCOMPLETE_MARKER,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self.target_fd,
            )
        except FileExistsError:
            self.resuming = True
            return
        except OSError as exc:
            raise SnapfsError(f"{self.target}: cannot write: {exc.strerror}") from None
        try:
            text = (
                f"snapfs restore of {self.accessor.name} into this folder was interrupted: "
                "run the same command again to finish it.\n"
            )
            with contextlib.suppress(OSError):  # a full disk: the empty marker still marks
                os.write(fd, text.encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)

    def _drop_marker(self) -> None:
        if self.target_fd is not None and not self.opts.dry_run:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(INCOMPLETE_MARKER, dir_fd=self.target_fd)

    def _write_content(self, fd: int, entry: Entry) -> None:
        offset = 0
        file_end = 0  # where the file ends on disk: before entry.size if a last hole was skipped
        while offset < entry.size:
            data = self.accessor.read_view(entry, offset, min(_READ_SIZE, entry.size - offset))
            if not data:
                raise SnapfsError(
                    f"{display_path(entry.path)}: content ends at {offset} of {entry.size} bytes"
                )
            if self.opts.sparse:
                skipped, end = _write_sparse(fd, data, offset)
            else:
                skipped, end = _write_dense(fd, data, offset), offset + len(data)
            file_end = max(file_end, end)
            self.report.bytes_sparse += skipped
            self.report.bytes_written += len(data) - skipped
            self.report.bytes_total += len(data)
            self.progress.update(len(data))
            offset += len(data)
        if file_end != entry.size:  # a trailing hole needs the size set explicitly
            os.ftruncate(fd, entry.size)

    def _make_hardlink(self, pfd: int, name: bytes, entry: Entry, rel: tuple[bytes, ...]) -> None:
        target = self.accessor.resolve_hardlink(entry)
        source = self.links.get(target.entry_offset)
        if source is None and self._restored_elsewhere(target):
            self.deferred_links.append((entry, rel))
            raise _Skip  # counted when the parent makes it
        if source is not None:
            sfd = self._open_rel_dir(source[:-1])
            try:
                os.link(source[-1], name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
                return
            except FileNotFoundError:
                pass  # the first copy was removed or failed meanwhile: restore content instead
            finally:
                if sfd != self.target_fd:
                    os.close(sfd)
        # The target is outside what is being restored (or excluded): this name gets a copy,
        # and later links to the same file share it.
        self._make_file(pfd, name, target, fresh=False)
        self.links[target.entry_offset] = rel

    def _restored_elsewhere(self, target: Entry) -> bool:
        """Whether a hard link's target is another worker's to restore (see own_ranges)."""
        if self.own_ranges is None:
            return False
        offset = target.entry_offset
        return not any(start <= offset < end for start, end in self.own_ranges)

    def _open_rel_dir(self, rel: tuple[bytes, ...]) -> int:
        """The restored directory at rel, opened component by component, never via a symlink."""
        if self.target_fd is None:
            raise SnapfsError("hard links need a target folder")
        fd = self.target_fd
        for part in rel:
            try:
                nfd = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            finally:
                if fd != self.target_fd:
                    os.close(fd)
            fd = nfd
        return fd

    # -- metadata

    def _apply_fd_meta(
        self,
        fd: int,
        entry: Entry,
        *,
        inherited_acls: bool = True,
        owner: tuple[int, int] | None = None,
        mode: int | None = None,
    ) -> None:
        errors = apply_fd_metadata(
            fd,
            entry,
            ignore_ownership=self.opts.ignore_ownership,
            inherited_acls=inherited_acls,
            owner=owner,
            mode=mode,
        )
        self._metadata_failed(entry, errors)

    def _apply_path_meta(self, pfd: int, name: bytes, entry: Entry, *, symlink: bool) -> None:
        errors = apply_path_metadata(
            pfd, name, entry, symlink=symlink, ignore_ownership=self.opts.ignore_ownership
        )
        self._metadata_failed(entry, errors)

    def _metadata_failed(self, entry: Entry, errors: list[str]) -> None:
        if errors:
            self.report.fail(
                f"{display_path(entry.path)}: restored, but not its {'; '.join(errors)}",
                path=display_path(entry.path),
            )

    # -- bookkeeping

    def _count(self, entry: Entry) -> None:
        self.report.files += 1
        self.progress.update(files=1)

    def _fail(self, entry: Entry, what: str, exc: BaseException) -> None:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        hint = ""
        if isinstance(exc, OSError) and exc.errno == errno.EPERM and not self.is_root:
            hint = " (not root: try --ignore-ownership; device nodes need root)"
        self.report.fail(
            f"{display_path(entry.path)}: {what}: {detail}{hint}", path=display_path(entry.path)
        )


class _Skip(Exception):
    """An entry is not made here: an existing one is kept per --overwrite (recorded in
    report.skipped), or a hard link is left to the parent process (deferred_links)."""


def _current_umask() -> int:
    """This process's umask, read without changing it (Linux 4.7+), else set and restored."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _passes_nothing_on(fd: int | None) -> bool:
    """Whether new entries in the directory at fd get no default ACL and no group of its own
    (setgid); anything unknown counts as passing something on."""
    if fd is None:
        return False
    try:
        if os.fstat(fd).st_mode & stat.S_ISGID:
            return False
        os.getxattr(fd, ACL_XATTR_DEFAULT)
    except OSError as exc:
        return exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return False


def _write_dense(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return 0


def _write_sparse(fd: int, data: bytes, offset: int) -> tuple[int, int]:
    """Write data at offset, leaving aligned all-zero 4 KiB blocks as holes; (bytes skipped, the
    file offset the last byte written ends at, or `offset` if nothing was written).

    `offset` is a multiple of the block size (reads are), so blocks align with the file's.
    """
    runs = data_runs(data, _BLOCK)
    view = memoryview(data)
    for start, stop in runs:
        _write_dense(fd, view[start:stop], offset + start)
    written = sum(stop - start for start, stop in runs)
    return len(data) - written, offset + (runs[-1][1] if runs else 0)


def restore_pxar(
    accessor: Accessor,
    inner: str | bytes | None,
    target: str,
    options: RestoreOptions | None = None,
    progress: Progress | None = None,
) -> RestoreReport:
    """Restore the entry at `inner` (default: the whole archive) of a pxar archive to `target`.

    For a directory, `target` is the folder its contents go into (created if missing); for any
    other entry, `target` is the new name, or an existing folder to put it in.
    """
    options = options or RestoreOptions()
    progress = progress or Progress.disabled()
    report = RestoreReport(
        kind="pxar", source=accessor.name, target=target, dry_run=options.dry_run
    )
    root = accessor.lookup(inner or "/")
    whole = root.path in (b"", b"/")
    content = accessor.payload if accessor.format_version == 2 else accessor.archive
    progress.start(total_bytes=getattr(content, "size", None) if whole else None)
    job = _PxarRestore(accessor, target, options, report, progress)
    try:
        if root.is_dir and not options.dry_run:
            job.target_fd, job.created = _open_target_dir(target)
            job.mark_incomplete()
            report.resumed = job.resuming
        job.run(root)
    finally:
        if job.target_fd is not None:
            os.close(job.target_fd)
        progress.close()
    return report.finish()


def _open_target_dir(target: str) -> tuple[int, bool]:
    """TARGET opened as a directory (made, with its parents, if missing); (fd, created)."""
    created = False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        os.mkdir(target, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise SnapfsError(f"{target}: cannot create target folder: {exc.strerror}") from None
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapfsError(f"{target}: cannot open target folder: {exc.strerror}") from None
    return fd, created


def restore_unit(unit: parallel.UnitTask) -> parallel.UnitOutcome:
    """Restore one unit of a tree cut by restore/parallel.py (in a worker process, where the
    archive is opened once and kept for the units that follow)."""
    accessor = parallel.open_archive(unit.opener)
    report = RestoreReport(kind="pxar", source=accessor.name, target=unit.target)
    entries = tuple(
        accessor.children_at(
            unit.parent,
            unit.children,
            on_error=lambda exc: report.fail(f"not restored (archive unreadable here): {exc}"),
        )
    )
    job = _PxarRestore(
        accessor,
        unit.target,
        unit.options,
        report,
        Progress.disabled(),
        resuming=unit.resuming,
        own_ranges=tuple((e.entry_offset, e.entry_end) for e in entries),
    )
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    job.target_fd = os.open(unit.target, flags)
    try:
        pfd = job._open_rel_dir(unit.parent_rel) if unit.parent_rel else job.target_fd
        try:
            parent = _Frame(
                unit.parent,
                unit.parent_path,
                unit.parent_rel,
                pfd,
                apply_meta=False,  # the parent process leaves it
                plain=unit.plain,
            )
            job._run_tree(entries, parent)
        finally:
            if pfd != job.target_fd:
                os.close(pfd)
    finally:
        os.close(job.target_fd)
    return parallel.UnitOutcome(report.finish(), job.deferred_links)
