"""Logging for the `snapfs` command: one line per event, to stderr and optionally a file.

A log file is read by people on a bad day and by scripts (grep, journald, logrotate): every event
is exactly one line, so messages that carry a newline (a file name, an S3 error body) have it
escaped. Secrets never reach a log record in the first place (passwords are read into memory
and never formatted); as a last line of defence, values that look like credentials after
`password=`, `secret=`, `AWS_SECRET_ACCESS_KEY=` and similar are masked.
"""

from __future__ import annotations

import logging
import re
import sys

LEVELS = ("debug", "info", "warning", "error")
STDERR_FORMAT = "snapfs: %(levelname)s: %(message)s"
FILE_FORMAT = "%(asctime)s snapfs[%(process)d]: %(levelname)s: %(name)s: %(message)s"

_SECRET = re.compile(
    r"(?i)((?:password|passwd|secret|secret[_-]access[_-]key|session[_-]token|"
    r"aws_secret_access_key|aws_session_token|x-amz-signature|x-amz-security-token)"
    r"\s*[=:]\s*)(\"?)[^\s\",;&]+"
)


def redact(text: str) -> str:
    """Mask the value of anything that looks like `secret=VALUE` in a line of text."""
    return _SECRET.sub(r"\1\2***", text)


class _NotFileOnly(logging.Filter):
    """Keeps records marked `extra={"file_only": True}` (already printed to stderr) off stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class OneLineFormatter(logging.Formatter):
    """Formats a record as one line: newlines in the message and traceback are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return redact(text.replace("\r", "\\r").replace("\n", "\\n"))


def configure(level: str = "warning", log_file: str | None = None) -> None:
    """Root logging for one command run: stderr at `level`, and `log_file` (appended) if given.

    The file gets timestamps, the pid and the logger name, so lines of several runs (a mount and
    the commands run against it) can be told apart.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    numeric = getattr(logging, level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(OneLineFormatter(STDERR_FORMAT))
    stderr.addFilter(_NotFileOnly())
    root.addHandler(stderr)
    if log_file:
        from snapfs.errors import UsageError

        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot open log file {log_file}: {exc.strerror}") from None
        handler.setFormatter(OneLineFormatter(FILE_FORMAT))
        root.addHandler(handler)
    root.setLevel(numeric)
    # Third-party chatter (boto's request dumps include signed headers) stays out below debug.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
