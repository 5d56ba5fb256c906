"""Where the encryption key and its password come from: key file, password file, environment, TTY.

Kept out of `snapfs.format` because it does I/O. The password is looked for only when the key
file needs one, in a fixed order, and never appears in a message. `KeyOptions` is what a command
line's --keyfile/--password-file say, so code that needs the key takes it, not the parsed line.
"""

from __future__ import annotations

import getpass
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from snapfs.errors import CryptKeyError, KeyRequiredError
from snapfs.format.crypt import CryptConfig
from snapfs.format.keyfile import KeyFile

PASSWORD_ENV_VARS = ("SNAPFS_KEY_PASSWORD", "PBS_ENCRYPTION_PASSWORD")

# Key files are a few hundred bytes; a cap keeps a wrong path (a disk image, /dev/zero) harmless.
_MAX_KEYFILE_SIZE = 1024 * 1024
_MAX_PASSWORD_LINE = 64 * 1024


def read_password(
    *,
    password_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    prompt_for: str | None = None,
    prompt_timeout: float | None = None,
) -> bytes | None:
    """The key password from the first source that has one, or None.

    Order: `password_file` (its first line, without the line end), SNAPFS_KEY_PASSWORD,
    PBS_ENCRYPTION_PASSWORD, then a prompt naming `prompt_for`, only when stdin is a terminal.
    A prompt nobody answers within `prompt_timeout` seconds (if given) raises KeyRequiredError.
    """
    if password_file is not None:
        try:
            with open(password_file, "rb") as f:
                line = f.readline(_MAX_PASSWORD_LINE)
        except OSError as exc:
            raise CryptKeyError(
                f"cannot read password file {os.fsdecode(password_file)}: {exc.strerror or exc}"
            ) from None
        return line.removesuffix(b"\n").removesuffix(b"\r")
    for var in PASSWORD_ENV_VARS:
        value = environ.get(var)
        if value:
            # os.environ holds undecodable bytes as surrogate escapes; give the bytes back.
            return os.fsencode(value)
    if prompt_for is not None and _stdin_is_tty():
        try:
            return _prompt(f"Password for key file {prompt_for}: ", prompt_timeout).encode()
        except EOFError:
            return None
        except _PromptExpired:
            sys.stderr.write("\n")  # the prompt's line was left open
            raise KeyRequiredError(
                f"no password typed for key file {prompt_for} within {prompt_timeout:g} s "
                f"(give it with --password-file FILE or SNAPFS_KEY_PASSWORD)"
            ) from None
    return None


class _PromptExpired(Exception):
    pass


def _prompt(prompt: str, timeout: float | None) -> str:
    """getpass, given up after `timeout` seconds (main thread only).

    A terminal nobody types at (a mount started by a script that kept one) would otherwise keep
    the command forever. The alarm's exception interrupts getpass's read, and getpass's own
    clean-up turns the echo back on.
    """
    if timeout is None:
        return getpass.getpass(prompt)

    def expire(_signum, _frame) -> None:
        raise _PromptExpired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return getpass.getpass(prompt)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


def load_crypt_config(
    keyfile: str | os.PathLike[str],
    *,
    password_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    prompt_timeout: float | None = None,
) -> CryptConfig:
    """Read and unlock a key file, asking for a password only if the file needs one (for at most
    `prompt_timeout` seconds, if given)."""
    path = os.fsdecode(keyfile)
    try:
        with open(keyfile, "rb") as f:
            text = f.read(_MAX_KEYFILE_SIZE + 1)
    except OSError as exc:
        raise CryptKeyError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if len(text) > _MAX_KEYFILE_SIZE:
        raise CryptKeyError(f"key file {path} is larger than 1 MiB: not a key file")
    key_file = KeyFile.from_json(text, name=f"key file {path}")
    password = None
    if key_file.needs_password:
        password = read_password(
            password_file=password_file,
            environ=environ,
            prompt_for=path,
            prompt_timeout=prompt_timeout,
        )
        if password is None:
            raise KeyRequiredError(
                f"key file {path} is password protected: give the password with "
                f"--password-file FILE or the SNAPFS_KEY_PASSWORD environment variable"
            )
    return key_file.unlock(password)


@dataclass(frozen=True)
class KeyOptions:
    """Which key file to unlock and where its password is; no key file means no encryption."""

    keyfile: str | None = None
    password_file: str | None = None

    def crypt_config(self, prompt_timeout: float | None = None) -> CryptConfig | None:
        """The key, or None without a key file; a password prompt waits `prompt_timeout` s."""
        if not self.keyfile:
            return None
        return load_crypt_config(
            self.keyfile, password_file=self.password_file, prompt_timeout=prompt_timeout
        )
