"""`mount.snapfs`: what mount(8) runs for `mount -t snapfs SOURCE DIR -o OPTIONS` and fstab lines.

mount(8) calls `/sbin/mount.snapfs SOURCE DIR [-sfnv] [-o OPTIONS]`. The helper turns that into
`snapfs mount SOURCE DIR --option value ...`: every `name=value` (or bare `name`) whose `--name` is
an option of `snapfs mount` is passed on, `_` and `-` alike (`allow_other` = `--allow-other`).
The generic options fstab and systemd add (`defaults`, `noauto`, `nofail`, `_netdev`, `x-*`, ...)
are accepted and ignored; the mount is read-only whatever they say. Anything else is refused,
unless `-s` (sloppy) is given: a typo in fstab must not silently mount without a key file.

Installed by linking the `snapfs` console script: `ln -s "$(command -v snapfs)" /sbin/mount.snapfs`
(`snapfs.cli.main` dispatches on the program name), or run as `python -m snapfs.cli.mount_helper`.
Exit codes follow mount(8)'s helper convention: 0 mounted, 1 bad invocation, 32 mount failure.
"""

from __future__ import annotations

import argparse
import sys

from snapfs.errors import UsageError

EXIT_USAGE = 1
EXIT_MOUNT_FAILURE = 32

#: Options mount(8), fstab and systemd add that mean nothing to a read-only FUSE mount.
IGNORED = frozenset(
    [
        "defaults",
        "auto",
        "noauto",
        "nofail",
        "_netdev",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "lazytime",
        "nolazytime",
        "diratime",
        "nodiratime",
        "sync",
        "async",
        "ro",
        "rw",
        "loud",
        "silent",
    ]
)
IGNORED_PREFIXES = ("x-", "comment=", "_", "helper=")


def _mount_option_names() -> dict[str, argparse.Action]:
    """`snapfs mount`'s long options (`--cache-size` -> its Action), from the real parser."""
    from snapfs.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    mount_parser = sub.choices["mount"]
    names = {}
    for action in mount_parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in ("--help", "--foreground", "--debug"):
                names[opt[2:]] = action
    return names


def translate(
    source: str, mountpoint: str, options: str, *, sloppy: bool = False, verbose: bool = False
) -> list[str]:
    """The `snapfs` argv for one mount(8) call (without the program name)."""
    known = _mount_option_names()
    argv = ["mount", source, mountpoint]
    unknown = []
    for item in filter(None, (o.strip() for o in options.split(","))):
        name, eq, value = item.partition("=")
        key = name.replace("_", "-")
        if item in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        action = known.get(key)
        if action is None:
            unknown.append(item)
            continue
        takes_value = action.nargs != 0
        if takes_value and not eq:
            raise UsageError(f"mount option {name!r} needs a value ({name}=...)")
        if not takes_value and eq:
            raise UsageError(f"mount option {name!r} takes no value")
        argv += [f"--{key}", value] if takes_value else [f"--{key}"]
    if unknown and not sloppy:
        raise UsageError(
            f"unknown mount option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))}; -s ignores unknown ones)"
        )
    if verbose:
        argv = ["--log-level", "info", *argv]
    return argv


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mount.snapfs", add_help=True)
    p.add_argument("source")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[])
    p.add_argument("-s", dest="sloppy", action="store_true")
    p.add_argument("-f", dest="fake", action="store_true")
    p.add_argument("-n", dest="no_mtab", action="store_true")
    p.add_argument("-v", dest="verbose", action="store_true")
    p.add_argument("-t", dest="type")
    p.add_argument("-N", dest="namespace")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point as mount(8)'s helper; returns mount(8)'s exit codes."""
    from snapfs import cli, logs

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parse(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    try:
        if args.namespace:
            raise UsageError("mount.snapfs: -N (mount in another namespace) is not supported")
        snapfs_argv = translate(
            args.source,
            args.mountpoint,
            ",".join(args.options),
            sloppy=args.sloppy,
            verbose=args.verbose,
        )
    except UsageError as exc:  # may quote an option as given: an endpoint URL with a password
        print(f"mount.snapfs: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    if args.fake:  # mount -f: do everything except the mount itself
        return 0
    code = cli.main(snapfs_argv)
    if code == 0:
        return 0
    return EXIT_USAGE if code == cli.EXIT_USAGE else EXIT_MOUNT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
