"""The `snapfs` command: argument parsing, SOURCE parsing, and errors turned into exit codes.

Every failure a user can cause or meet prints one line on stderr and exits non-zero; a traceback
is printed only with --debug. Commands live in small functions that take the parsed arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import traceback
from collections.abc import Callable

from snapfs import logs
from snapfs.errors import SnapfsError, UsageError

log = logging.getLogger("snapfs")

EXIT_ERROR = 1
EXIT_USAGE = 2
LOG_LEVELS = logs.LEVELS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error
        raise UsageError(message)


def _add_source(p: argparse.ArgumentParser) -> None:
    from snapfs.store.sources import add_source_options

    p.add_argument("source", metavar="SOURCE", help="datastore directory, or s3://BUCKET/STORE")
    p.add_argument("--ns", default="", help="namespace, e.g. prod/web (default: root)")
    add_source_options(p)


def _add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keyfile", help="encryption key file (JSON, as PBS writes it)")
    p.add_argument(
        "--password-file",
        help="file holding the key file's password (else SNAPFS_KEY_PASSWORD, "
        "PBS_ENCRYPTION_PASSWORD, or a prompt on a terminal)",
    )


def _add_timeout(p: argparse.ArgumentParser, help_text: str) -> None:
    from snapfs.fs.mount import DEFAULT_TIMEOUT

    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"{help_text} (default {DEFAULT_TIMEOUT:g})",
    )


def _seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r} (e.g. 60)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="snapfs", description="Read Proxmox Backup Server datastores without a PBS server."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log events at this level and above (default: warning; debug with --debug)",
    )
    parser.add_argument(
        "--log-file",
        dest="global_log_file",
        metavar="FILE",
        help="also append log events here, one line each, with time and pid (never secrets)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("snapshots", help="list every snapshot with its archives")
    _add_source(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser(
        "cat", help="write an archive's decoded content (or a file inside a pxar archive) to stdout"
    )
    _add_source(p)
    p.add_argument("snapshot", metavar="SNAPSHOT", help="e.g. vm/100/2024-06-01T10:00:00Z")
    p.add_argument(
        "archive",
        metavar="ARCHIVE",
        help="e.g. drive-scsi0.img, qemu-server.conf, index.json, root.pxar/etc/hosts",
    )
    _add_key(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("ls", help="list a directory inside a pxar archive")
    _add_source(p)
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.add_argument("archive", metavar="ARCHIVE", help="e.g. root.pxar")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
    p.add_argument(
        "-l", "--long", action="store_true", help="mode, owner, size, mtime, link target"
    )
    p.add_argument("--json", action="store_true")
    _add_key(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("find", help="find paths in a pxar archive by a glob on their name")
    _add_source(p)
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.add_argument("archive", metavar="ARCHIVE", help="e.g. root.pxar")
    p.add_argument(
        "pattern", metavar="PATTERN", help="glob matched against each name, e.g. '*.conf'"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_key(p)
    p.set_defaults(func=cmd_find)

    p = sub.add_parser("key", help="manage encryption key files")
    keysub = p.add_subparsers(dest="key_command", metavar="ACTION", parser_class=_Parser)
    keysub.required = True
    k = keysub.add_parser(
        "create", help="create a new key file, as proxmox-backup-client key create"
    )
    k.add_argument("path", metavar="FILE")
    k.add_argument("--kdf", choices=("scrypt", "pbkdf2", "none"), default="scrypt")
    k.add_argument(
        "--password-file",
        help="file holding the new password (else SNAPFS_KEY_PASSWORD or a prompt)",
    )
    k.set_defaults(func=cmd_key_create)
    k = keysub.add_parser("show", help="show a key file's fingerprint and kdf")
    k.add_argument("path", metavar="FILE")
    k.set_defaults(func=cmd_key_show)

    p = sub.add_parser("backup", help="create a snapshot from images, config files and directories")
    p.add_argument(
        "datastore", metavar="DATASTORE", help="datastore directory (created if missing)"
    )
    p.add_argument(
        "sources",
        metavar="NAME.EXT:PATH",
        nargs="+",
        help="drive-scsi0.img:/path/disk.raw, qemu-server.conf:/path/100.conf, root.pxar:/dir",
    )
    p.add_argument("--ns", default="", help="namespace (must exist or is created)")
    p.add_argument(
        "--type",
        dest="backup_type",
        choices=("vm", "ct", "host"),
        help="backup type (default: vm for images, host otherwise)",
    )
    p.add_argument(
        "--id",
        dest="backup_id",
        help="backup id (default: 100 for vm/ct, this host's name for host)",
    )
    p.add_argument(
        "--time", dest="backup_time", help="snapshot time YYYY-MM-DDTHH:MM:SSZ (default: now)"
    )
    p.add_argument(
        "--split", action="store_true", help="write pxar archives as split .mpxar/.ppxar pairs"
    )
    _add_key(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", help="restore a pxar archive (or a path in it), an image or a blob"
    )
    _add_source(p)
    p.add_argument("snapshot", metavar="SNAPSHOT", help="e.g. host/web1/2024-06-01T10:00:00Z")
    p.add_argument(
        "archive",
        metavar="ARCHIVE[/PATH]",
        help="e.g. root.pxar, root.pxar/etc, drive-scsi0.img, qemu-server.conf",
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="folder (pxar), file or block device (image), file or - (blob)",
    )
    _add_key(p)
    p.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="restore only matching paths (glob, repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="skip matching paths (glob, repeatable)",
    )
    p.add_argument(
        "--overwrite",
        choices=("never", "if-newer", "always"),
        default="never",
        help="existing files (default: never)",
    )
    p.add_argument(
        "--ignore-ownership", action="store_true", help="do not restore owners (for non-root users)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be restored, write nothing"
    )
    p.add_argument(
        "--target-device",
        action="store_true",
        help="TARGET is a block device (images; refused if mounted)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="images: keep verified chunks already in TARGET, write the rest",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "verify", help="check every chunk, index and manifest of the selected snapshots"
    )
    _add_source(p)
    p.add_argument(
        "snapshot",
        metavar="SNAPSHOT",
        nargs="?",
        help="TYPE/ID/TIME or TYPE/ID (default: all in --ns and below)",
    )
    _add_key(p)
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("mount", help="mount a datastore as a read-only filesystem (FUSE)")
    p.add_argument("source", metavar="SOURCE", help="datastore directory, or s3://BUCKET/STORE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    _add_key(p)
    from snapfs.store.sources import add_cache_size_option, add_source_options

    add_source_options(p)
    add_cache_size_option(p)
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the mount (modes still apply)",
    )
    p.add_argument(
        "--uid", help="show every file as owned by this user (for mounts by non-root users)"
    )
    p.add_argument("--gid", help="show every file as owned by this group")
    p.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground until unmounted"
    )
    p.add_argument(
        "--debug",
        dest="mount_debug",
        action="store_true",
        help="debug logs (and --foreground stderr)",
    )
    p.add_argument(
        "--read-ahead-kb",
        type=int,
        default=1024,
        help="kernel readahead for the mount (default 1024)",
    )
    p.add_argument(
        "--log-file", help="log here (default: stderr in the foreground, syslog in the background)"
    )
    _add_timeout(
        p,
        "give up a start that waits longer than this for anything (the key password, the "
        "source, the kernel): exit 1, nothing left mounted",
    )
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a snapfs mount (also one whose process died)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_timeout(p, "give up after this long; a mount whose process hangs is detached lazily")
    p.set_defaults(func=cmd_umount)

    from snapfs.mapping import add_map_parsers
    from snapfs.nbd import add_nbd_parser

    add_nbd_parser(sub, _add_source, _add_key)
    add_map_parsers(sub, _add_source, _add_key)
    _document(sub)
    return parser


#: One or more examples per subcommand, shown by `snapfs COMMAND --help` (and checked by a test:
#: tests/test_integration.py parses every one of them).
EXAMPLES: dict[str, list[str]] = {
    "snapshots": [
        "snapfs snapshots /mnt/pbs-disk/datastore",
        "snapfs snapshots s3://pbs-bucket/store1 --endpoint-url https://s3.eu-central-003.backblazeb2.com --json",
    ],
    "cat": [
        "snapfs cat /srv/datastore vm/100/2024-06-01T10:00:00Z qemu-server.conf",
        "snapfs cat /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar/etc/hosts",
    ],
    "ls": ["snapfs ls /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar /etc -l"],
    "find": ["snapfs find /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar '*.conf' --json"],
    "key": ["snapfs key show /root/pbs.key"],
    "create": ["snapfs key create /root/new.key --kdf scrypt --password-file /root/new.pw"],
    "show": ["snapfs key show /root/pbs.key"],
    "backup": [
        "snapfs backup /srv/datastore drive-scsi0.img:/var/lib/vz/vm-100-disk-0.raw "
        "qemu-server.conf:/etc/pve/qemu-server/100.conf --id 100",
        "snapfs backup /srv/datastore root.pxar:/etc --type host --id web1",
    ],
    "restore": [
        "snapfs restore /srv/datastore host/web1/2024-06-01T11:00:00Z root.pxar/etc /tmp/etc",
        "snapfs restore /srv/datastore vm/100/2024-06-01T10:00:00Z drive-scsi0.img /dev/sdb "
        "--target-device --keyfile /root/pbs.key",
    ],
    "verify": [
        "snapfs verify /srv/datastore",
        "snapfs verify /srv/datastore vm/100 --keyfile /root/pbs.key --json",
    ],
    "mount": [
        "snapfs mount /srv/datastore /mnt/pbs --keyfile /root/pbs.key --password-file /root/pbs.pw",
        "snapfs mount s3://pbs-bucket/store1 /mnt/pbs --endpoint-url https://s3.example.com "
        "--refresh-interval 300",
        "snapfs umount /mnt/pbs",
    ],
    "umount": ["snapfs umount /mnt/pbs"],
    "nbd": [
        "snapfs nbd /srv/datastore vm/100/2024-06-01T10:00:00Z drive-scsi0.img "
        "--overlay /var/tmp/vm100.overlay",
    ],
    "map": ["snapfs map /srv/datastore vm/100/2024-06-01T10:00:00Z drive-scsi0.img"],
    "unmap": ["snapfs unmap /dev/loop0", "snapfs unmap"],
}


def _document(sub: argparse._SubParsersAction) -> None:
    """Give every subcommand (and sub-subcommand) a description and an examples epilog."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        if not p.description and helps.get(name):
            p.description = helps[name][0].upper() + helps[name][1:] + "."
        if not p.epilog and name in EXAMPLES:
            p.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _document(action)


def _open_datastore(args: argparse.Namespace):
    from snapfs.store.datastore import Datastore
    from snapfs.store.sources import BackendOptions, open_backend

    return Datastore(open_backend(args.source, options=BackendOptions.from_args(args)))


def _crypt_config(args: argparse.Namespace):
    if not getattr(args, "keyfile", None):
        return None
    from snapfs.keysource import load_crypt_config

    # `mount --timeout` bounds the password prompt too: a start never waits forever.
    return load_crypt_config(
        args.keyfile,
        password_file=args.password_file,
        prompt_timeout=getattr(args, "timeout", None),
    )


def cmd_snapshots(args: argparse.Namespace) -> int:
    from snapfs.store.datastore import parse_namespace
    from snapfs.views.listing import format_snapshot_records, snapshot_records

    datastore = _open_datastore(args)
    records = snapshot_records(datastore, parse_namespace(args.ns))
    if args.json:
        json.dump(records, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_snapshot_records(records))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    from snapfs.store.datastore import parse_namespace, parse_snapshot
    from snapfs.views.archives import open_snapshot_file, write_stream

    datastore = _open_datastore(args)
    snapshot = parse_snapshot(args.snapshot, parse_namespace(args.ns))
    target = open_snapshot_file(datastore, snapshot, args.archive, _crypt_config(args))
    write_stream(target, sys.stdout.buffer)
    return 0


def _snapshot_reader(args: argparse.Namespace):
    from snapfs.store.datastore import parse_namespace, parse_snapshot
    from snapfs.views.archives import SnapshotReader

    datastore = _open_datastore(args)
    snapshot = parse_snapshot(args.snapshot, parse_namespace(args.ns))
    return SnapshotReader(datastore, snapshot, _crypt_config(args))


def cmd_ls(args: argparse.Namespace) -> int:
    from snapfs.views.browse import entry_record, list_directory, long_line, show_name

    accessor = _snapshot_reader(args).pxar(args.archive)
    _, entries = list_directory(accessor, args.path)
    if args.json:
        json.dump([entry_record(e) for e in entries], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for entry in entries:
        print(long_line(entry) if args.long else show_name(entry.name or b"/"))
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from snapfs.views.browse import find_paths

    paths = find_paths(_snapshot_reader(args), args.archive, args.pattern)
    if args.json:
        json.dump(list(paths), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for path in paths:
        print(path)
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    from snapfs.format.crypt import format_fingerprint
    from snapfs.format.keyfile import create_keyfile
    from snapfs.keysource import read_password

    if os.path.exists(args.path):
        raise UsageError(f"{args.path}: already exists, not overwriting a key file")
    password = None
    if args.kdf != "none":
        password = read_password(password_file=args.password_file, prompt_for=args.path)
        if not password:
            raise UsageError(
                "a password is needed: give --password-file, set SNAPFS_KEY_PASSWORD, or use --kdf none"
            )
    keyfile = create_keyfile(os.urandom(32), password, None if args.kdf == "none" else args.kdf)
    fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keyfile.to_json())
    print(f"created {args.path}, fingerprint {format_fingerprint(keyfile.fingerprint)}")
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    from snapfs.format.crypt import format_fingerprint
    from snapfs.format.keyfile import KeyFile

    try:
        with open(args.path, "rb") as f:
            keyfile = KeyFile.from_json(f.read(), name=args.path)
    except OSError as exc:
        raise SnapfsError(f"{args.path}: cannot read key file: {exc.strerror}") from None
    kdf = type(keyfile.kdf).__name__ if keyfile.kdf else "none"
    fp = format_fingerprint(keyfile.fingerprint) if keyfile.fingerprint else "(not stored)"
    print(f"{args.path}: kdf {kdf}, fingerprint {fp}, created {keyfile.created}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from snapfs.backup import backup, parse_backup_source
    from snapfs.store.datastore import parse_backup_time, parse_namespace

    sources = [parse_backup_source(s) for s in args.sources]
    backup_type = args.backup_type or ("vm" if any(s.kind == "image" for s in sources) else "host")
    backup_id = args.backup_id or (
        "100" if backup_type in ("vm", "ct") else socket.gethostname().split(".")[0]
    )
    backup_time = parse_backup_time(args.backup_time) if args.backup_time else None
    result = backup(
        args.datastore,
        sources,
        backup_type=backup_type,
        backup_id=backup_id,
        backup_time=backup_time,
        ns=parse_namespace(args.ns),
        crypt=_crypt_config(args),
        split=args.split,
    )
    for problem in result.problems:
        print(f"snapfs: warning: {problem}", file=sys.stderr)
    ns = f" (namespace {args.ns})" if args.ns else ""
    print(
        f"{result.snapshot}{ns}: {len(result.files)} files, {result.chunks_written} new chunks, {result.chunks_reused} reused"
    )
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from snapfs.fs.mount import (
        MountOptions,
        default_refresh_interval,
        mount,
        parse_id,
    )

    if args.refresh_interval is None:  # also the S3 listing cache's lifetime (_open_datastore)
        args.refresh_interval = default_refresh_interval(args.source)
    if args.refresh_interval < 0:
        raise UsageError("--refresh-interval must not be negative (0: never refresh)")

    opts = MountOptions(
        source=args.source,
        mountpoint=args.mountpoint,
        cache_size=args.cache_size,
        allow_other=args.allow_other,
        uid=parse_id(args.uid, "uid"),
        gid=parse_id(args.gid, "gid"),
        foreground=args.foreground,
        debug=args.debug or args.mount_debug or args.log_level == "debug",
        read_ahead_kb=args.read_ahead_kb,
        log_file=args.log_file or args.global_log_file,
        refresh_interval=args.refresh_interval,
        timeout=args.timeout,
        endpoint_url=args.endpoint_url,
    )
    # The source is opened by the mount process, under the start-up clock.
    return mount(lambda: _open_datastore(args), _crypt_config(args), opts)


def cmd_umount(args: argparse.Namespace) -> int:
    from snapfs.fs.mount import umount

    umount(args.mountpoint, args.timeout)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from snapfs.restore import run_restore

    report = run_restore(args, _open_datastore(args), _crypt_config(args))
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for failure in report.failures:
            print(f"snapfs: failed: {failure['message']}", file=sys.stderr)
        if args.target != "-" or report.failures:
            print(report.summary(), file=sys.stderr if args.target == "-" else sys.stdout)
    return 0 if report.ok else EXIT_ERROR


def cmd_verify(args: argparse.Namespace) -> int:
    from snapfs.restore import Progress
    from snapfs.store.datastore import parse_namespace
    from snapfs.verify import select_snapshots, verify

    datastore = _open_datastore(args)
    snapshots = select_snapshots(datastore, parse_namespace(args.ns), args.snapshot)
    progress = Progress.for_terminal(quiet=args.json, desc="verify")
    progress.start(total_bytes=None)
    try:
        report = verify(
            datastore, snapshots, _crypt_config(args), on_chunk=lambda n: progress.update(n, 1)
        )
    finally:
        progress.close()
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    if argv is None and os.path.basename(sys.argv[0]) == "mount.snapfs":
        from snapfs.mount_helper import main as mount_helper_main

        return mount_helper_main(sys.argv[1:])
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logs.configure("debug" if debug else "warning")
    command = "snapfs"
    try:
        args = build_parser().parse_args(argv)
        # `mount --log-file` too: one set of sinks from the start, the mount re-uses it.
        log_file = getattr(args, "log_file", None) or args.global_log_file
        logs.configure(args.log_level or ("debug" if debug else "warning"), log_file)
        # Names only: arguments may be paths a user considers private, never secrets anyway.
        command = " ".join(
            str(getattr(args, a)) for a in ("command", "key_command") if getattr(args, a, None)
        )
        log.info("%s: started (pid %d)", command, os.getpid())
        func: Callable[[argparse.Namespace], int] = args.func
        code = func(args)
        log.info("%s: finished, exit code %d", command, code)
        return code
    except SnapfsError as exc:
        if debug:
            _print_traceback()
        print(f"snapfs: error: {logs.redact(str(exc))}", file=sys.stderr)
        usage = isinstance(exc, UsageError)
        what = "usage error" if usage else "failed"
        log.error("%s: %s: %s", command, what, exc, extra={"file_only": True})
        return EXIT_USAGE if usage else EXIT_ERROR
    except BrokenPipeError:
        # `snapfs cat ... | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("snapfs: interrupted", file=sys.stderr)
        return 130
    except Exception:
        # A bug: the traceback is what a report needs, with anything secret-looking masked.
        _print_traceback()
        return EXIT_ERROR


def _print_traceback() -> None:
    """The current exception's traceback on stderr, through the same redaction as the logs."""
    print(logs.redact(traceback.format_exc()), file=sys.stderr, end="")
