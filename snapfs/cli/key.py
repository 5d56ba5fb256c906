"""`snapfs key create|show`: encryption key files, as proxmox-backup-client writes and reads them."""

from __future__ import annotations

import argparse
import os

from snapfs.cli._common import Parser
from snapfs.errors import SnapfsError, UsageError

EXAMPLES: dict[str, list[str]] = {
    "key": ["snapfs key show /root/pbs.key"],
    "create": ["snapfs key create /root/new.key --kdf scrypt --password-file /root/new.pw"],
    "show": ["snapfs key show /root/pbs.key"],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("key", help="manage encryption key files")
    keysub = p.add_subparsers(dest="key_command", metavar="ACTION", parser_class=Parser)
    keysub.required = True
    k = keysub.add_parser(
        "create", help="create a new key file, as proxmox-backup-client key create"
    )
    k.add_argument("path", metavar="FILE")
    k.add_argument("--kdf", choices=("scrypt", "pbkdf2", "none"), default="scrypt")
    # Not the shared --password-file: this one sets the new key's password.
    k.add_argument(
        "--password-file",
        help="file holding the new password (else SNAPFS_KEY_PASSWORD or a prompt)",
    )
    k.set_defaults(func=cmd_key_create)
    k = keysub.add_parser("show", help="show a key file's fingerprint and kdf")
    k.add_argument("path", metavar="FILE")
    k.set_defaults(func=cmd_key_show)


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
