"""Who may use `snapfs serve`: users with salted password hashes, or a bearer token.

A backup holds everything an attacker wants, so the server refuses to listen beyond loopback
without one of these. Passwords are stored as scrypt hashes (the standard library's, no hand-made
crypto), compared in constant time, and failed attempts are counted per client address: after
MAX_FAILURES within FAILURE_WINDOW seconds that address is refused (429) until the window has
passed. Every failure is logged with the address and the user name, never the password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from snapfs.errors import UsageError

log = logging.getLogger("snapfs.serve")

__all__ = ["Authenticator", "hash_password", "read_auth_file", "read_token_file"]

MAX_FAILURES = 10
FAILURE_WINDOW = 300.0
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: bytes, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64) for an auth file line."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password, salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def _check_password(password: bytes, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password,
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


def read_auth_file(path: str) -> dict[str, str]:
    """`user:scrypt$...` lines (# comments and blank lines allowed) -> {user: hash}."""
    users = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                user, sep, stored = line.partition(":")
                if not sep or not user or not stored.startswith("scrypt$"):
                    raise UsageError(f"{path}:{number}: expected USER:scrypt$..., see --add-user")
                users[user] = stored
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the auth file: {exc.strerror}") from None
    return users


def read_token_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the token file: {exc.strerror}") from None
    if len(token) < 16:
        raise UsageError(f"{path}: the token must be at least 16 characters")
    return token


@dataclass
class Authenticator:
    """Checks a request's Authorization header against the users and the token."""

    users: dict[str, str] = field(default_factory=dict)
    token: bytes | None = None
    clock: object = time.monotonic
    _failures: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def required(self) -> bool:
        return bool(self.users) or self.token is not None

    def blocked(self, client: str) -> bool:
        """Whether `client` failed too often lately."""
        with self._lock:
            recent = self._recent(client)
            return len(recent) >= MAX_FAILURES

    def check(self, header: str | None, client: str) -> str | None:
        """The user name (or "token") the header proves, None if it proves nothing. Only a
        header that proves nothing counts as a failure: a browser's first request, and each
        request for a path it has no credentials for yet, comes without one."""
        user = self._verify(header)
        if user is None and header:
            with self._lock:
                self._recent(client).append(self.clock())
            log.warning("login failed from %s%s", client, self._who(header))
        return user

    def _recent(self, client: str) -> deque:
        stamps = self._failures.setdefault(client, deque())
        now = self.clock()
        while stamps and now - stamps[0] > FAILURE_WINDOW:
            stamps.popleft()
        return stamps

    def _verify(self, header: str | None) -> str | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token is not None:
            return "token" if hmac.compare_digest(value.strip().encode(), self.token) else None
        if scheme != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (ValueError, binascii.Error):
            return None
        if not sep:
            return None
        if self.token is not None and hmac.compare_digest(password, self.token):
            return "token"
        name = user.decode("utf-8", "replace")
        stored = self.users.get(name)
        if stored is None:
            _check_password(password, hash_password(b"", b"\0" * 16))  # the same time either way
            return None
        return name if _check_password(password, stored) else None

    @staticmethod
    def _who(header: str | None) -> str:
        if not header or not header.lower().startswith("basic "):
            return ""
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).partition(b":")[0]
        except (ValueError, binascii.Error):
            return ""
        return f" (user {user.decode('utf-8', 'replace')[:64]!r})"
