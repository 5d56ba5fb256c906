"""Logging for every `snapfs` command: one line per event, to stderr, a file or syslog.

The one place that sets up logging: the CLI calls `configure` for every run, and a mount calls it
again for its own level and, once daemonised, for its sinks without a terminal; each call replaces
the sinks, so an event is written once. A log file is read by people on a bad day and by scripts
(grep, journald, logrotate): every event is exactly one line, so messages that carry a newline (a
file name, an S3 error body) have it escaped. Secrets never reach a log record in the first place
(passwords are read into memory and never formatted); as a last line of defence, every sink masks
values that look like credentials after `password=`, `secret=`, `AWS_SECRET_ACCESS_KEY=` and
similar, and the `user:password@` of a URL.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

LEVELS = ("debug", "info", "warning", "error")
STDERR_FORMAT = "snapfs: %(levelname)s: %(message)s"
FILE_FORMAT = "%(asctime)s snapfs[%(process)d]: %(levelname)s: %(name)s: %(message)s"
SYSLOG_FORMAT = "snapfs[%(process)d]: %(levelname)s: %(name)s: %(message)s"
SYSLOG_ADDRESS = "/dev/log"

_SECRET = re.compile(
    r"(?i)((?:password|passwd|secret|secret[_-]access[_-]key|session[_-]token|"
    r"aws_secret_access_key|aws_session_token|x-amz-signature|x-amz-security-token)"
    r"\s*[=:]\s*)(\"?)[^\s\",;&]+"
)


#: The `user:password@` (or `token@`) of a URL: `scheme://`, then anything up to an `@` that comes
#: before the host's end (a `/`, `?` or `#`), so `http://host/a@b` is left alone.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def redact(text: str) -> str:
    """Mask the value of anything that looks like `secret=VALUE`, and a URL's user and password."""
    return _SECRET.sub(r"\1\2***", _URL_USERINFO.sub(r"\1***@", text))


def without_userinfo(url: str) -> str:
    """`url` without its `user:password@`, for a message that names it (an S3 endpoint)."""
    return _URL_USERINFO.sub(r"\1", url)


class _NotFileOnly(logging.Filter):
    """Keeps records marked `extra={"file_only": True}` (already printed to stderr) off stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class OneLineFormatter(logging.Formatter):
    """Formats a record as one line: newlines in the message and traceback are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return redact(text.replace("\r", "\\r").replace("\n", "\\n"))


def configure(
    level: str = "warning", log_file: str | None = None, *, background: bool = False
) -> None:
    """Root logging for one command run, replacing whatever was set up before.

    In the foreground: stderr, and `log_file` (appended) if given. In the background (a daemonised
    mount, its terminal gone): `log_file`, else syslog where there is one. The file gets timestamps,
    the pid and the logger name, so lines of several runs (a mount and the commands run against it)
    can be told apart. Every sink formats through OneLineFormatter, so every sink redacts.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if not background:
        stderr = _add_sink(root, logging.StreamHandler(sys.stderr), STDERR_FORMAT)
        stderr.addFilter(_NotFileOnly())
    if log_file:
        _add_sink(root, _open_log_file(log_file), FILE_FORMAT)
    elif background and os.path.exists(SYSLOG_ADDRESS):
        _add_sink(root, logging.handlers.SysLogHandler(address=SYSLOG_ADDRESS), SYSLOG_FORMAT)
    root.setLevel(getattr(logging, level.upper()))
    # Third-party chatter (boto's request dumps include signed headers) stays out below debug.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_sink(root: logging.Logger, handler: logging.Handler, fmt: str) -> logging.Handler:
    handler.setFormatter(OneLineFormatter(fmt))
    root.addHandler(handler)
    return handler


def _open_log_file(path: str) -> logging.FileHandler:
    from snapfs.errors import UsageError

    try:
        return logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot open log file {path}: {exc.strerror}") from None
