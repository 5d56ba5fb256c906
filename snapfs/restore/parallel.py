"""A large tree restore spread over local worker processes.

One Python process restores a tree on little more than one core: its walker thread parses the
archive and its writer thread makes files, and both need the interpreter lock for everything but
their syscalls and the decoding. So a big tree is cut into units, runs of sibling entries of about
equal archive size, and each unit is restored by a worker process with its own walker, writer
and copy of the archive (`ArchiveOpener` opens it again there), into a directory this process
made for it.

What this process keeps to itself:

- the directories above the units: the restore's root and every directory cut further because it
  was too big for one unit. It makes them before their units start, and gives them their
  metadata (mtime last) once every unit is done, deepest first, as the one-process restore does
  when it leaves a directory;
- hard links whose target another worker restores: a worker hands them back, and they are made
  at the end, when every target exists, and the directory holding the link gets its mtime again.

Everything a worker does is the one-process code (restore/tree.py): names checked, partial names
until an entry is complete, the overwrite policy, finishing an interrupted restore. A restore
with --include/--exclude, or a dry run, stays in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from snapfs.cluster import open_pool
from snapfs.errors import SnapfsError, UsageError
from snapfs.pxar.entry import Entry
from snapfs.restore.filters import check_name
from snapfs.restore.report import RestoreReport, display_path
from snapfs.store.workers import give_key

if TYPE_CHECKING:
    from snapfs.pxar.accessor import Accessor

#: restore/tree.py's restore job, its directory frames and options: that module imports this one,
#: so they are named here, not imported.
_PxarRestore = _Frame = RestoreOptions = Any

__all__ = [
    "ArchiveOpener",
    "UnitOutcome",
    "UnitTask",
    "restore_in_parallel",
    "span_bytes",
    "tree_bytes",
]

#: Units per worker process: more than one, so a worker that finishes early takes another and
#: the progress bar moves, few enough that each unit's start-up (a walker thread, the lookups of
#: its entries) stays small.
UNITS_PER_PROCESS = 4
#: The smallest unit worth sending to a worker, as a share of the smallest tree worth splitting.
MIN_UNIT_SHARE = 16
#: A split archive's metadata stream holds no file contents: its bytes count at least this much
#: more (a file's entry there takes some 100 bytes; a small file's content, some kilobytes), or
#: as much more as the payload stream is larger.
SPLIT_METADATA_WEIGHT = 64
#: Directories are cut into their children at most this deep; deeper ones go whole to a worker.
MAX_CUT_DEPTH = 32


class ArchiveOpener(Protocol):
    """Opens the archive being restored again, in a worker process. Picklable and hashable;
    `key` (the unlocked key, if any) is handed to local workers when they start, never pickled."""

    key: bytes | None

    def open(self) -> Accessor: ...


@dataclass(frozen=True)
class UnitTask:
    """Sibling entries to restore into one directory that exists in TARGET."""

    opener: ArchiveOpener
    target: str
    options: RestoreOptions  # with one process and no opener
    resuming: bool
    parent: Entry  # the directory
    parent_path: bytes  # its frame's path (b"" for the archive's root)
    parent_rel: tuple[bytes, ...]  # and its path below TARGET
    #: Passes nothing on to new entries (restore/tree.py). Never "fresh": a unit run again after
    #: its worker died finds what the first run made.
    plain: bool
    #: FILENAME offsets of the sibling entries, in archive order: the worker decodes them, as it
    #: reads the chunks they lie in anyway (`Accessor.children_at`).
    children: tuple[int, ...]


@dataclass
class UnitOutcome:
    """What a worker did with a unit: its report, and the hard links it left to the parent."""

    report: RestoreReport
    deferred_links: list[tuple[Entry, tuple[bytes, ...]]]


def tree_bytes(accessor: Accessor, entry: Entry) -> int:
    """How much restoring `entry` and what lies below it weighs, in archive bytes."""
    return span_bytes(accessor, entry.entry_end - entry.entry_offset)


def span_bytes(accessor: Accessor, span: int) -> int:
    """How much restoring what `span` bytes of the archive hold weighs, in archive bytes."""
    if accessor.format_version == 1:
        return span
    payload_share = getattr(accessor.payload, "size", 0) // max(1, accessor.archive.size)
    return span * max(SPLIT_METADATA_WEIGHT, payload_share)


def restore_in_parallel(
    job: _PxarRestore, root: Entry, work: Callable[[UnitTask], UnitOutcome]
) -> None:
    """Restore the directory `root` into TARGET with `job.opts.processes` worker processes,
    each running `work` (restore/tree.py's restore_unit) on the units it is given."""
    opts = job.opts
    opener = opts.opener
    assert opener is not None
    size = tree_bytes(job.accessor, root)
    unit_bytes = max(
        opts.parallel_min_bytes // MIN_UNIT_SHARE, size // (UNITS_PER_PROCESS * opts.processes), 1
    )
    worker_options = dataclasses.replace(opts, processes=1, opener=None)
    root_frame = job._root_frame(root)
    cut: list[_Frame] = [root_frame]  # directories this process leaves at the end
    deferred: list[tuple[Entry, tuple[bytes, ...]]] = []

    def task(stack: list[_Frame], batch: list[int]) -> UnitTask:
        top = stack[-1]
        return UnitTask(
            opener,
            job.target,
            worker_options,
            job.resuming,
            top.entry,
            top.path,
            top.rel,
            top.plain,
            tuple(batch),
        )

    def units(stack: list[_Frame]) -> Iterator[UnitTask]:
        """The units below the directory on top of the stack, cutting the big ones further.
        Only the directory's goodbye table is read, and a child decoded only if it is big
        enough to cut: in a v1 archive its children lie all over it, and decoding them here
        decoded most of the archive once more than the workers do."""
        accessor = job.accessor
        directory = stack[-1].entry
        batch: list[int] = []
        batch_bytes = 0
        for f, size in accessor.records(directory, on_error=listing_failed):
            child_bytes = span_bytes(accessor, size)
            if child_bytes > unit_bytes and len(stack) <= MAX_CUT_DEPTH:
                child = next(accessor.children_at(directory, [f], on_error=listing_failed), None)
                if child is None:
                    continue
                if child.is_dir:
                    if batch:
                        yield task(stack, batch)
                        batch, batch_bytes = [], 0
                    yield from cut_into(stack, child)
                    continue
            batch.append(f)
            batch_bytes += child_bytes
            if batch_bytes >= unit_bytes:
                yield task(stack, batch)
                batch, batch_bytes = [], 0
        if batch:
            yield task(stack, batch)

    def cut_into(stack: list[_Frame], directory: Entry) -> Iterator[UnitTask]:
        try:
            check_name(directory.name, job.accessor.name)
        except UsageError as exc:
            job.report.fail(f"{exc}; nothing below it restored", path=display_path(directory.path))
            return
        frame = job.frame_below(stack[-1], directory)
        stack.append(frame)
        try:
            if job._materialize(stack) is None:  # failed (reported) or kept per --overwrite
                return
            cut.append(frame)
            yield from units(stack)
        finally:
            stack.pop()

    def listing_failed(exc: SnapfsError) -> None:
        job.report.fail(f"not restored (archive unreadable here): {exc}")

    try:
        with open_pool(opts.processes, None, initializer=give_key, initargs=(opener.key,)) as pool:
            for unit, outcome in pool.run(work, units([root_frame])):
                _merge(job, unit, outcome, deferred)
        for entry, rel in deferred:
            _make_deferred_link(job, root_frame, entry, rel)
        for frame in reversed(cut[1:]):
            job._leave(frame)
        job._drop_marker()  # before TARGET's mtime is set
        job._leave(root_frame)
    finally:
        for frame in cut[1:]:
            if frame.fd is not None and frame.fd >= 0:
                os.close(frame.fd)
                frame.fd = None


def _merge(
    job: _PxarRestore,
    unit: UnitTask,
    outcome: UnitOutcome | BaseException,
    deferred: list[tuple[Entry, tuple[bytes, ...]]],
) -> None:
    report = job.report
    if isinstance(outcome, BaseException):
        for path in _unit_paths(job, unit):
            report.fail(f"{path}: not restored: {outcome}", path=path)
        return
    done = outcome.report
    report.files += done.files
    report.bytes_total += done.bytes_total
    report.bytes_written += done.bytes_written
    report.bytes_sparse += done.bytes_sparse
    report.skipped.extend(done.skipped)
    report.failures.extend(done.failures)
    deferred.extend(outcome.deferred_links)
    job.progress.update(done.bytes_total, files=done.files)


def _unit_paths(job: _PxarRestore, unit: UnitTask) -> list[str]:
    """The paths of a unit's entries, for the report of a unit that failed as a whole."""
    named = {}
    with contextlib.suppress(SnapfsError):  # then named by their offsets
        for entry in job.accessor.children_at(unit.parent, unit.children, on_error=_ignore):
            named[entry.entry_offset] = display_path(entry.path)
    parent = display_path(unit.parent.path)
    return [named.get(f, f"{parent}: the entry at offset {f}") for f in unit.children]


def _ignore(exc: SnapfsError) -> None:
    """What a unit's failure report does with an entry that cannot be decoded: names it by offset."""


def _make_deferred_link(
    job: _PxarRestore, root_frame: _Frame, entry: Entry, rel: tuple[bytes, ...]
) -> None:
    """A hard link a worker left: its target is on disk now (or failed, and it gets a copy)."""
    accessor = job.accessor
    path = entry.path
    try:
        directory = accessor.lookup(path.rsplit(b"/", 1)[0] or b"/")
        target = accessor.resolve_hardlink(entry)
    except SnapfsError as exc:
        job.report.fail(f"{display_path(path)}: not restored: {exc}", path=display_path(path))
        return
    prefix = root_frame.path + b"/"
    if target.path.startswith(prefix):
        job.links.setdefault(target.entry_offset, tuple(target.path[len(prefix) :].split(b"/")))
    try:
        pfd = job._open_rel_dir(rel[:-1]) if rel[:-1] else job.target_fd
    except OSError as exc:  # its directory failed, and was reported
        job.report.fail(
            f"{display_path(path)}: not restored: {exc.strerror}", path=display_path(path)
        )
        return
    try:
        mtime_was_set = os.fstat(pfd).st_mtime_ns == directory.mtime_ns
        job._restore_entry(pfd, rel[-1], entry, rel)
        if mtime_was_set:  # a worker set it when it left the directory; the link changed it
            os.utime(pfd, ns=(directory.mtime_ns, directory.mtime_ns))
    finally:
        if pfd != job.target_fd:
            os.close(pfd)


# --- in the worker process ------------------------------------------------------------------------

_archives: dict[ArchiveOpener, Accessor] = {}


def open_archive(opener: ArchiveOpener) -> Accessor:
    """The archive, opened on this worker process's first unit and kept for the next ones."""
    accessor = _archives.get(opener)
    if accessor is None:
        accessor = _archives[opener] = opener.open()
    return accessor
