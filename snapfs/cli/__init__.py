"""The `snapfs` command: the parser, and errors turned into exit codes.

Every failure a user can cause or meet prints one line on stderr and exits non-zero; a traceback
is printed only with --debug. Each command module here registers its own subcommands and holds
the functions that run them; what they share is in `_common`, and no command module imports
another. Domain code is called with typed options (SourceOptions, KeyOptions, ...), never with the
parsed arguments, so no domain module needs to import this package (tests/cli/test_cli_layout.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from snapfs import logs
from snapfs.cli import backup, browse, key, mapping, mount, nbd, restore, search, serve, verify
from snapfs.cli._common import EXIT_ERROR, EXIT_USAGE, Parser, add_log_options
from snapfs.errors import SnapfsError, UsageError

log = logging.getLogger("snapfs")

#: In the order `snapfs --help` lists their commands.
COMMAND_MODULES = (browse, search, key, backup, restore, verify, mount, nbd, mapping, serve)

#: One or more examples per subcommand, shown by `snapfs COMMAND --help` (and checked by a test:
#: tests/e2e/test_integration.py parses every one of them).
EXAMPLES: dict[str, list[str]] = {
    name: lines for module in COMMAND_MODULES for name, lines in module.EXAMPLES.items()
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="snapfs", description="Read Proxmox Backup Server datastores without a PBS server."
    )
    add_log_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    _document(sub)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    if argv is None and os.path.basename(sys.argv[0]) == "mount.snapfs":
        from snapfs.cli.mount_helper import main as mount_helper_main

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
