"""`snapfs restore`: a pxar archive (or a file or directory in it), an image or a blob to disk.

Safety rules for pxar archives, which are untrusted input:
- every name is checked (no '', '.', '..', '/', NUL) and every entry is created relative to an
  open descriptor of its parent directory (the *at syscalls), and directories are opened with
  O_NOFOLLOW: a path can never climb out of TARGET, and no symlink is ever followed, including
  one the same restore has just created under a name a later entry reuses;
- hard links are made from the entry the archive's link offset resolves to, never from the
  stored path string;
- one failing entry does not stop the restore: what was restored stays, each failure is
  reported with its path, and the exit code is non-zero.

Metadata order per entry: content, owner (chown clears setuid/setgid and file capabilities),
mode, xattrs, ACLs, capabilities, then mtime last; a directory gets its metadata when it is left,
so a read-only directory mode or its mtime is not disturbed by creating its children.

Pipelining: a walker thread with its own Accessor runs ahead of the writer, and for every file
it passes on it asks worker threads to fetch and decode the chunks that hold the content, bounded
by a byte budget, so the writer mostly finds chunks already in the cache.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import queue
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapfs.errors import SnapfsError, UsageError
from snapfs.pxar import format as fmt
from snapfs.pxar.accessor import Accessor
from snapfs.pxar.acl import ACL_XATTR_ACCESS, ACL_XATTR_DEFAULT, access_acl_xattr, default_acl_xattr
from snapfs.pxar.entry import Entry, EntryKind

if TYPE_CHECKING:
    from snapfs.format.crypt import CryptConfig
    from snapfs.store.datastore import Datastore, Snapshot

OVERWRITE_POLICIES = ("never", "if-newer", "always")
_BLOCK = 4096
_ZERO_BLOCK = bytes(_BLOCK)
_READ_SIZE = 4 * 1024 * 1024
DEFAULT_PREFETCH_BYTES = 64 * 1024 * 1024
DEFAULT_PREFETCH_WORKERS = 4


# --- report and progress --------------------------------------------------------------------------


@dataclass
class RestoreReport:
    """What a restore did; `failures` lists exactly what is missing from TARGET."""

    kind: str
    source: str
    target: str
    files: int = 0  # entries restored (files, dirs, links, nodes), or 1 for an image/blob
    bytes_total: int = 0
    bytes_written: int = 0
    bytes_sparse: int = 0  # zero runs left as holes instead of being written
    bytes_reused: int = 0  # --resume: already in place and verified, not rewritten
    skipped: list[str] = field(default_factory=list)  # existed, kept per --overwrite
    failures: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    elapsed: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    def fail(self, message: str, **details: Any) -> None:
        self.failures.append({"message": message, **details})

    @property
    def ok(self) -> bool:
        return not self.failures

    def finish(self) -> RestoreReport:
        self.elapsed = time.monotonic() - self._started
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "files": self.files,
            "bytes_total": self.bytes_total,
            "bytes_written": self.bytes_written,
            "bytes_sparse": self.bytes_sparse,
            "bytes_reused": self.bytes_reused,
            "skipped": self.skipped,
            "failures": self.failures,
            "elapsed": round(self.elapsed, 3),
        }

    def summary(self) -> str:
        rate = self.bytes_total / self.elapsed / 1e6 if self.elapsed > 0 else 0.0
        verb = "would restore" if self.dry_run else "restored"
        parts = [
            f"{verb} {self.files} {'entries' if self.kind == 'pxar' else 'file'}, "
            f"{_human(self.bytes_total)} to {self.target} in {self.elapsed:.1f}s ({rate:.1f} MB/s)"
        ]
        if self.bytes_sparse:
            parts.append(f"{_human(self.bytes_sparse)} left sparse")
        if self.bytes_reused:
            parts.append(f"{_human(self.bytes_reused)} already in place")
        if self.skipped:
            parts.append(f"{len(self.skipped)} existing kept")
        parts.append(f"{len(self.failures)} failed" if self.failures else "no failures")
        return "; ".join(parts)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


class Progress:
    """A tqdm bar on stderr when it is a terminal; does nothing otherwise (scripts, --json)."""

    def __init__(self, enabled: bool, desc: str = "restore") -> None:
        self._bar = None
        self._enabled = enabled
        self._desc = desc
        self._files = 0

    @classmethod
    def disabled(cls) -> Progress:
        return cls(False)

    @classmethod
    def for_terminal(cls, quiet: bool = False, desc: str = "restore") -> Progress:
        return cls(not quiet and sys.stderr.isatty(), desc)

    def start(self, total_bytes: int | None) -> None:
        if not self._enabled or self._bar is not None:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self._desc,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    def update(self, nbytes: int = 0, files: int = 0) -> None:
        if self._bar is None:
            return
        if files:
            self._files += files
            self._bar.set_postfix_str(f"{self._files} files", refresh=False)
        if nbytes:
            self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --- options and filters --------------------------------------------------------------------------


@dataclass
class RestoreOptions:
    overwrite: str = "never"
    ignore_ownership: bool = False
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    dry_run: bool = False
    sparse: bool = True
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES
    workers: int = DEFAULT_PREFETCH_WORKERS

    def __post_init__(self) -> None:
        if self.overwrite not in OVERWRITE_POLICIES:
            raise UsageError(
                f"--overwrite {self.overwrite!r}: expected one of {', '.join(OVERWRITE_POLICIES)}"
            )


class PathFilter:
    """--include/--exclude globs on archive paths.

    A pattern with a '/' matches the whole archive path (anchored at the archive root, a leading
    '/' optional); one without matches the last component at any depth. An excluded directory
    excludes everything below it; with includes, only matching entries and everything below a
    matching directory are restored (plus the directories leading to them). Exclude wins.
    """

    def __init__(self, includes: tuple[str, ...] = (), excludes: tuple[str, ...] = ()) -> None:
        self.includes = [self._compile(p) for p in includes]
        self.excludes = [self._compile(p) for p in excludes]

    @staticmethod
    def _compile(pattern: str) -> tuple[bool, bytes]:
        raw = os.fsencode(pattern)
        if b"/" in raw.rstrip(b"/"):
            return True, b"/" + raw.strip(b"/")
        return False, raw.strip(b"/")

    @staticmethod
    def _matches(patterns: list[tuple[bool, bytes]], path: bytes, name: bytes) -> bool:
        return any(fnmatch.fnmatchcase(path if anchored else name, p) for anchored, p in patterns)

    def excluded(self, path: bytes, name: bytes) -> bool:
        return bool(self.excludes) and self._matches(self.excludes, path, name)

    def included(self, path: bytes, name: bytes) -> bool:
        return not self.includes or self._matches(self.includes, path, name)

    @property
    def has_includes(self) -> bool:
        return bool(self.includes)


def check_name(name: bytes, where: str) -> None:
    """A name from an archive must name one entry inside its parent, nothing else."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UsageError(f"{where}: refusing unsafe name {name!r} (would escape the target)")


# --- the walker thread and chunk prefetch ---------------------------------------------------------


class _ByteBudget:
    """Bounds the file bytes the walker may announce ahead of the writer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()
        self.stopped = False

    def acquire(self, n: int) -> bool:
        n = min(n, self.limit)
        with self.cond:
            while self.used + n > self.limit and self.used > 0 and not self.stopped:
                self.cond.wait()
            self.used += n
            return not self.stopped

    def release(self, n: int) -> None:
        n = min(n, self.limit)
        with self.cond:
            self.used = max(0, self.used - n)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class _Prefetcher:
    """Warms the chunk cache with the chunks holding the content of files about to be written."""

    def __init__(self, source: object, workers: int) -> None:
        # Only an IndexStream has chunks to warm; a plain file or bytes source needs nothing.
        self.index = getattr(source, "index", None)
        self.chunks = getattr(source, "chunks", None)
        self.enabled = self.index is not None and self.chunks is not None and workers > 0
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="snapfs-prefetch"
        )
        self._recent: deque[bytes] = deque(maxlen=4096)
        self._recent_set: set[bytes] = set()

    def schedule(self, start: int, end: int) -> None:
        if not self.enabled or end <= start:
            return
        try:
            first, last = self.index.chunk_at(start), self.index.chunk_at(end - 1)
        except SnapfsError:
            return  # the writer's own read will report it
        for i in range(first, last + 1):
            digest = self.index.digest(i)
            if digest in self._recent_set:
                continue
            if len(self._recent) == self._recent.maxlen:
                self._recent_set.discard(self._recent[0])
            self._recent.append(digest)
            self._recent_set.add(digest)
            self._pool.submit(self._load, digest)

    def _load(self, digest: bytes) -> None:
        # A failure here is reported, with the file it belongs to, when the writer reads it.
        with contextlib.suppress(SnapfsError):
            self.chunks.read_chunk(digest)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_DONE = object()


@dataclass(frozen=True, slots=True)
class _Item:
    entry: Entry
    selected: bool  # False: a directory kept only in case something below it is included


def _walker(
    accessor: Accessor,
    root: Entry,
    filt: PathFilter,
    out: queue.Queue,
    budget: _ByteBudget,
    prefetch: _Prefetcher,
) -> None:
    """Walk ahead of the writer: filter, announce content to the prefetcher, hand entries on."""
    errors: list[SnapfsError] = []
    try:
        skip_prefix: bytes | None = None
        included_prefixes: list[bytes] = []
        for entry in accessor.walk(root, on_error=errors.append):
            while errors:
                out.put(errors.pop(0))
            if budget.stopped:
                return
            if entry is root:
                out.put(_Item(entry, True))
                continue
            path = entry.path
            if skip_prefix is not None and path.startswith(skip_prefix):
                continue
            skip_prefix = None
            if filt.excluded(path, entry.name):
                if entry.is_dir:
                    skip_prefix = path + b"/"
                continue
            selected = True
            if filt.has_includes:
                while included_prefixes and not path.startswith(included_prefixes[-1]):
                    included_prefixes.pop()
                selected = bool(included_prefixes) or filt.included(path, entry.name)
                if selected and entry.is_dir and not included_prefixes:
                    included_prefixes.append(path + b"/")
                if not selected and not entry.is_dir:
                    continue
            if selected and entry.is_file and entry.size > 0 and entry.content_offset is not None:
                if not budget.acquire(entry.size):
                    return
                prefetch.schedule(entry.content_offset, entry.content_offset + entry.size)
            out.put(_Item(entry, selected))
        while errors:
            out.put(errors.pop(0))
    except SnapfsError as exc:
        out.put(exc)
    except BaseException as exc:  # never leave the writer waiting on a dead walker
        out.put(exc)
    finally:
        out.put(_DONE)


# --- the writer -----------------------------------------------------------------------------------


@dataclass
class _Frame:
    """A directory on the way down: its archive path, and its fd once it exists on disk."""

    entry: Entry
    path: bytes
    rel: tuple[bytes, ...]
    fd: int | None = None
    apply_meta: bool = True


class _PxarRestore:
    def __init__(
        self,
        accessor: Accessor,
        target: str,
        options: RestoreOptions,
        report: RestoreReport,
        progress: Progress,
    ) -> None:
        self.accessor = accessor
        self.target = target
        self.opts = options
        self.report = report
        self.progress = progress
        self.is_root = os.geteuid() == 0
        self.links: dict[int, tuple[bytes, ...]] = {}  # target entry_offset -> restored rel path
        self.target_fd: int | None = None  # TARGET, when restoring a directory
        self.created = False  # whether this restore created TARGET

    # -- entry points

    def run(self, root: Entry) -> None:
        if root.is_dir:
            self._run_tree(root)
        else:
            self._run_single(root)

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

    def _run_tree(self, root: Entry) -> None:
        target_fd, created = self.target_fd, self.created
        stack: list[_Frame] = []
        filt = PathFilter(self.opts.includes, self.opts.excludes)
        walk_acc = Accessor(self.accessor.archive, self.accessor.payload, name=self.accessor.name)
        content_source = (
            self.accessor.payload if self.accessor.format_version == 2 else self.accessor.archive
        )
        prefetch = _Prefetcher(content_source, self.opts.workers if not self.opts.dry_run else 0)
        budget = _ByteBudget(self.opts.prefetch_bytes)
        items: queue.Queue = queue.Queue(maxsize=4096)
        walker = threading.Thread(
            target=_walker,
            args=(walk_acc, root, filt, items, budget, prefetch),
            name="snapfs-walk",
            daemon=True,
        )
        walker.start()
        root_prefix = root.path.rstrip(b"/")
        try:
            while True:
                item = items.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, SnapfsError):
                        self.report.fail(f"not restored (archive unreadable here): {item}")
                        continue
                    raise item
                entry = item.entry
                if entry.path == root.path:
                    frame = _Frame(
                        entry,
                        root_prefix,
                        (),
                        -1 if target_fd is None else target_fd,
                        apply_meta=created or self.opts.overwrite == "always",
                    )
                    stack.append(frame)
                    continue
                parent = entry.path.rsplit(b"/", 1)[0]
                while stack and stack[-1].path != parent:
                    self._leave(stack.pop())
                if not stack:
                    self.report.fail(
                        f"{entry.path!r}: entry outside the directory being restored",
                        path=_p(entry.path),
                    )
                    continue
                try:
                    check_name(entry.name, self.accessor.name)
                except UsageError as exc:
                    self.report.fail(str(exc), path=_p(entry.path))
                    if entry.is_dir:  # poisoned frame: its children are reported, not restored
                        stack.append(_Frame(entry, entry.path, None, None, apply_meta=False))
                    budget.release(entry.size if entry.is_file else 0)
                    continue
                top = stack[-1]
                rel = (*top.rel, entry.name) if top.rel is not None else None
                if rel is None:  # below a directory that could not be restored
                    self.report.fail("not restored: a parent directory failed", path=_p(entry.path))
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
                    self._restore_entry(pfd, entry.name, entry, rel)
                finally:
                    if entry.is_file:
                        budget.release(entry.size)
            while stack:
                self._leave(stack.pop())
        finally:
            budget.stop()
            prefetch.close()
            # Drain so a walker blocked on a full queue can see the stop and end.
            while walker.is_alive():
                with contextlib.suppress(queue.Empty):
                    items.get(timeout=0.1)
            for frame in stack:
                if frame.fd is not None and frame.fd >= 0 and frame.rel != ():
                    os.close(frame.fd)

    # -- directories

    def _materialize(self, stack: list[_Frame]) -> int | None:
        """Create/open every directory on the stack not yet on disk; the innermost fd."""
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
                frame.fd, frame.apply_meta = self._make_dir(parent.fd, frame.entry)
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

    def _make_dir(self, pfd: int, entry: Entry) -> tuple[int, bool]:
        name = entry.name
        apply_meta = True
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
            self._count(entry)
        except FileExistsError:
            st = os.lstat(name, dir_fd=pfd)
            if stat.S_ISDIR(st.st_mode):
                apply_meta = self._may_replace(st, entry)
            elif self._may_replace(st, entry):
                os.unlink(name, dir_fd=pfd)
                os.mkdir(name, 0o700, dir_fd=pfd)
                self._count(entry)
            else:
                self.report.skipped.append(_p(entry.path))
                raise _Skip from None
        # O_NOFOLLOW: if anything swapped a symlink in, this fails instead of following it.
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        return fd, apply_meta

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

    def _restore_entry(self, pfd: int, name: bytes, entry: Entry, rel: tuple[bytes, ...]) -> None:
        if self.opts.dry_run:
            self._count(entry)
            if entry.is_file:
                self.report.bytes_total += entry.size
            return
        try:
            if not self._clear_existing(pfd, name, entry):
                return
            kind = entry.kind
            if kind is EntryKind.FILE:
                self._make_file(pfd, name, entry)
                self.links[entry.entry_offset] = rel
            elif kind is EntryKind.HARDLINK:
                self._make_hardlink(pfd, name, entry, rel)
            elif kind is EntryKind.SYMLINK:
                os.symlink(entry.link_target or b"", name, dir_fd=pfd)
                self._apply_path_meta(pfd, name, entry, symlink=True)
            elif kind in (EntryKind.DEVICE, EntryKind.FIFO, EntryKind.SOCKET):
                device = os.makedev(*entry.device) if entry.device else 0
                os.mknod(name, (entry.mode & fmt.S_IFMT) | 0o600, device, dir_fd=pfd)
                self._apply_path_meta(pfd, name, entry, symlink=False)
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
            self.report.skipped.append(_p(entry.path))
            return False
        if stat.S_ISDIR(st.st_mode):
            raise SnapfsError(
                f"a directory exists at {_p(entry.path)}; not replacing it with a {entry.kind.value}"
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

    def _make_file(self, pfd: int, name: bytes, entry: Entry) -> None:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=pfd,
        )
        try:
            self._write_content(fd, entry)
            self._apply_fd_meta(fd, entry)
        finally:
            os.close(fd)

    def _write_content(self, fd: int, entry: Entry) -> None:
        offset = 0
        while offset < entry.size:
            data = self.accessor.read(entry, offset, min(_READ_SIZE, entry.size - offset))
            if not data:
                raise SnapfsError(
                    f"{_p(entry.path)}: content ends at {offset} of {entry.size} bytes"
                )
            skipped = (
                _write_sparse(fd, data, offset)
                if self.opts.sparse
                else _write_dense(fd, data, offset)
            )
            self.report.bytes_sparse += skipped
            self.report.bytes_written += len(data) - skipped
            self.report.bytes_total += len(data)
            self.progress.update(len(data))
            offset += len(data)
        os.ftruncate(fd, entry.size)  # a trailing hole needs the size set explicitly

    def _make_hardlink(self, pfd: int, name: bytes, entry: Entry, rel: tuple[bytes, ...]) -> None:
        target = self.accessor.resolve_hardlink(entry)
        source = self.links.get(target.entry_offset)
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
        self._make_file(pfd, name, target)
        self.links[target.entry_offset] = rel

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

    def _apply_fd_meta(self, fd: int, entry: Entry) -> None:
        errors: list[str] = []
        perm = entry.mode & 0o7777
        if not self.opts.ignore_ownership:
            _try(errors, "owner", os.fchown, fd, entry.uid, entry.gid)
        # A new entry inherits the default ACL of an existing parent; the archive's ACL (or its
        # absence) must win, so drop inherited ones before the mode is set.
        access = access_acl_xattr(entry.mode, entry.acl)
        default = default_acl_xattr(entry.acl) if entry.is_dir else None
        if access is None:
            _remove_acl(errors, fd, ACL_XATTR_ACCESS)
        if default is None and entry.is_dir:
            _remove_acl(errors, fd, ACL_XATTR_DEFAULT)
        _try(errors, "mode", os.fchmod, fd, perm)
        for xname, value in entry.xattrs:
            _try(errors, f"xattr {xname!r}", os.setxattr, fd, xname, value)
        if access is not None:
            _try(errors, "ACL", os.setxattr, fd, ACL_XATTR_ACCESS, access)
        if default is not None:
            _try(errors, "default ACL", os.setxattr, fd, ACL_XATTR_DEFAULT, default)
        if entry.fcaps is not None:
            _try(errors, "file capabilities", os.setxattr, fd, b"security.capability", entry.fcaps)
        _try(errors, "mtime", os.utime, fd, ns=(entry.mtime_ns, entry.mtime_ns))
        if errors:
            self.report.fail(
                f"{_p(entry.path)}: restored, but not its {'; '.join(errors)}", path=_p(entry.path)
            )

    def _apply_path_meta(self, pfd: int, name: bytes, entry: Entry, *, symlink: bool) -> None:
        errors: list[str] = []
        if not self.opts.ignore_ownership:
            _try(
                errors,
                "owner",
                os.chown,
                name,
                entry.uid,
                entry.gid,
                dir_fd=pfd,
                follow_symlinks=False,
            )
        if not symlink:  # Linux has no symlink modes; chmod of a node we just made is safe
            _try(errors, "mode", os.chmod, name, entry.mode & 0o7777, dir_fd=pfd)
        _try(
            errors,
            "mtime",
            os.utime,
            name,
            ns=(entry.mtime_ns, entry.mtime_ns),
            dir_fd=pfd,
            follow_symlinks=False,
        )
        if errors:
            self.report.fail(
                f"{_p(entry.path)}: restored, but not its {'; '.join(errors)}", path=_p(entry.path)
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
        self.report.fail(f"{_p(entry.path)}: {what}: {detail}{hint}", path=_p(entry.path))


class _Skip(Exception):
    """An existing entry is kept per --overwrite (recorded in report.skipped)."""


def _try(errors: list[str], what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        errors.append(f"{what} ({exc.strerror or exc})")


def _remove_acl(errors: list[str], fd: int, name: bytes) -> None:
    try:
        os.removexattr(fd, name)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            errors.append(f"inherited ACL ({exc.strerror or exc})")


def _p(path: bytes) -> str:
    """An archive path for messages and JSON: undecodable bytes shown as surrogate escapes."""
    return path.decode("utf-8", "backslashreplace")


def _write_dense(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return 0


def _write_sparse(fd: int, data: bytes, offset: int) -> int:
    """Write data at offset, leaving aligned all-zero 4 KiB blocks as holes; bytes skipped.

    `offset` is a multiple of the block size (reads are), so blocks align with the file's.
    bytes.find skips through non-zero data at memchr speed; zero runs are then measured in
    whole blocks.
    """
    n = len(data)
    view = memoryview(data)
    pos = written_to = skipped = 0
    while True:
        z = data.find(_ZERO_BLOCK, pos)
        if z < 0:
            break
        zs = -(-z // _BLOCK) * _BLOCK
        if zs + _BLOCK > n:
            break
        if data[zs : zs + _BLOCK] != _ZERO_BLOCK:
            pos = zs
            continue
        ze = zs + _BLOCK
        while ze + _BLOCK <= n and data[ze : ze + _BLOCK] == _ZERO_BLOCK:
            ze += _BLOCK
        _write_dense(fd, view[written_to:zs], offset + written_to)
        skipped += ze - zs
        written_to = pos = ze
    _write_dense(fd, view[written_to:], offset + written_to)
    return skipped


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


# --- one archive of a snapshot -------------------------------------------------------------------


def restore_archive(
    datastore: Datastore,
    crypt: CryptConfig | None,
    snapshot: Snapshot,
    archive_path: str,
    target: str,
    options: RestoreOptions,
    *,
    target_device: bool = False,
    resume: bool = False,
    progress: Progress,
) -> RestoreReport:
    """Restore what `archive_path` names (a pxar path, an image, a blob) of `snapshot` to `target`.

    `target_device` and `resume` apply to images only.
    """
    from snapfs.restore_image import ImageTarget, restore_blob, restore_image
    from snapfs.store.cache import ChunkCache
    from snapfs.views.archives import SnapshotReader, split_archive_path

    reader = SnapshotReader(datastore, snapshot, crypt, ChunkCache(256 * 1024 * 1024))
    archive, inner = split_archive_path(archive_path)
    is_pxar = archive.endswith((".pxar", ".mpxar", ".ppxar", ".pxar.didx", ".mpxar.didx"))
    if inner is not None and not is_pxar:
        raise UsageError(f"{archive}: only pxar archives have paths inside them")
    if is_pxar:
        return restore_pxar(reader.pxar(archive), inner, target, options, progress)
    if target_device and archive.endswith(".blob"):
        raise UsageError("--target-device is for images")
    file = datastore.resolve_archive(snapshot, archive)
    if file.archive_type == "blob":
        return restore_blob(
            reader.blob(archive),
            target,
            overwrite=options.overwrite,
            dry_run=options.dry_run,
            source=f"{snapshot}/{file.filename}",
        )
    if options.includes or options.excludes:
        raise UsageError("--include/--exclude apply to pxar archives only")
    try:
        return restore_image(
            reader.stream(archive),
            ImageTarget(target, device=target_device),
            resume=resume,
            overwrite=options.overwrite,
            dry_run=options.dry_run,
            progress=progress,
        )
    finally:
        progress.close()


__all__ = [
    "OVERWRITE_POLICIES",
    "PathFilter",
    "Progress",
    "RestoreOptions",
    "RestoreReport",
    "check_name",
    "restore_archive",
    "restore_pxar",
]
