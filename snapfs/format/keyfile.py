"""PBS key files (`encryption-key.json`, any `--keyfile`): parse, unlock, create (docs/formats.md §6).

A key file holds the 32-byte master key either in the clear (`"kdf": null`) or wrapped with
AES-256-GCM under a key derived from a password by scrypt or PBKDF2. It also records the key's
fingerprint, which lets us tell "wrong key file" from "wrong password" and name keys in messages
without showing them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from os import urandom
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snapfs.errors import (
    CorruptDataError,
    CryptKeyError,
    KeyRequiredError,
    UsageError,
    WrongKeyError,
    WrongPasswordError,
)
from snapfs.format.crypt import KEY_SIZE, CryptConfig, format_fingerprint, parse_fingerprint

# Upstream defaults for new keys (KeyConfig::with_key).
SCRYPT_N = 65536
SCRYPT_R = 8
SCRYPT_P = 1
PBKDF2_ITERATIONS = 65535
SALT_SIZE = 32
# The upstream client refuses shorter passwords, so no real key file can need one.
MIN_PASSWORD_LENGTH = 5
# What upstream lets scrypt use (openssl's maxmem); also the bound against hostile parameters.
SCRYPT_MAXMEM = 1025 * 1024 * 1024

_U64_MAX = 2**64 - 1
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})")
_WRAPPED_KEY_SIZE = 16 + 16 + KEY_SIZE  # iv | tag | ciphertext


@dataclass(frozen=True)
class ScryptParams:
    n: int
    r: int
    p: int
    salt: bytes

    def derive(self, password: bytes) -> bytes:
        return hashlib.scrypt(
            password, salt=self.salt, n=self.n, r=self.r, p=self.p, maxmem=SCRYPT_MAXMEM, dklen=32
        )

    def to_json_value(self) -> dict[str, Any]:
        return {"Scrypt": {"n": self.n, "r": self.r, "p": self.p, "salt": _b64(self.salt)}}


@dataclass(frozen=True)
class Pbkdf2Params:
    iter: int
    salt: bytes

    def derive(self, password: bytes) -> bytes:
        return hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iter, 32)

    def to_json_value(self) -> dict[str, Any]:
        return {"PBKDF2": {"iter": self.iter, "salt": _b64(self.salt)}}


Kdf = ScryptParams | Pbkdf2Params


@dataclass
class KeyFile:
    """One key file as stored; `unlock` turns it into the CryptConfig it protects."""

    kdf: Kdf | None
    created: str
    modified: str
    data: bytes
    fingerprint: bytes | None = None
    hint: str | None = None
    name: str = field(default="key file", compare=False, repr=False)

    @classmethod
    def from_json(cls, text: bytes | str, *, name: str = "key file") -> KeyFile:
        """Parse a key file; anything malformed is a CorruptDataError naming the file."""
        obj = _load_json_object(text, name)
        kdf = _parse_kdf(obj.get("kdf"), name)
        created = _timestamp(obj, "created", name)
        modified = _timestamp(obj, "modified", name)
        if "data" not in obj:
            raise CorruptDataError(f"{name}: missing member 'data'")
        data = _unb64(obj["data"], "data", name)
        fp_text = obj.get("fingerprint")
        fingerprint = None
        if fp_text is not None:
            try:
                fingerprint = parse_fingerprint(fp_text)
            except CorruptDataError as exc:
                raise CorruptDataError(f"{name}: {exc}") from None
        hint = obj.get("hint")
        if hint is not None and not isinstance(hint, str):
            raise CorruptDataError(f"{name}: member 'hint' must be a string")
        return cls(kdf, created, modified, data, fingerprint, hint, name=name)

    @property
    def needs_password(self) -> bool:
        return self.kdf is not None

    def unlock(self, password: bytes | None) -> CryptConfig:
        """The CryptConfig of the key; checks the stored fingerprint against the key found."""
        if self.kdf is None:
            key = self.data
            if len(key) != KEY_SIZE:
                raise CorruptDataError(
                    f"{self.name}: unprotected key has {len(key)} bytes, expected {KEY_SIZE}"
                )
        else:
            key = self._unwrap(password)
        crypt = CryptConfig(key)
        if self.fingerprint is not None and self.fingerprint != crypt.fingerprint:
            raise WrongKeyError(
                f"{self.name}: stored fingerprint {format_fingerprint(self.fingerprint, short=True)} "
                f"does not match its key ({format_fingerprint(crypt.fingerprint, short=True)})"
            )
        return crypt

    def _unwrap(self, password: bytes | None) -> bytes:
        assert self.kdf is not None
        if password is None:
            raise KeyRequiredError(f"{self.name} is password protected and no password was given")
        if len(self.data) != _WRAPPED_KEY_SIZE:
            raise CorruptDataError(
                f"{self.name}: wrapped key has {len(self.data)} bytes, expected {_WRAPPED_KEY_SIZE}"
            )
        if len(password) < MIN_PASSWORD_LENGTH:
            # No key made by PBS has such a password; checked after the file so a broken file
            # is reported as broken.
            raise WrongPasswordError(f"wrong password for {self.name} (shorter than 5 bytes)")
        try:
            derived = self.kdf.derive(bytes(password))
        except (ValueError, OverflowError, MemoryError) as exc:
            raise CorruptDataError(
                f"{self.name}: unusable key derivation parameters: {exc}"
            ) from None
        iv, tag, ciphertext = self.data[:16], self.data[16:32], self.data[32:]
        try:
            return AESGCM(derived).decrypt(iv, ciphertext + tag, None)
        except InvalidTag:
            # The hint is not shown here: people do put the password itself in it.
            raise WrongPasswordError(f"wrong password for {self.name}") from None

    def to_json(self) -> bytes:
        """Compact JSON in upstream's member order (serde_json::to_string of KeyConfig)."""
        obj: dict[str, Any] = {
            "kdf": None if self.kdf is None else self.kdf.to_json_value(),
            "created": self.created,
            "modified": self.modified,
            "data": _b64(self.data),
        }
        if self.fingerprint is not None:
            obj["fingerprint"] = format_fingerprint(self.fingerprint)
        if self.hint is not None:
            obj["hint"] = self.hint
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def create_keyfile(
    key: bytes,
    password: bytes | None,
    kdf: str | None = "scrypt",
    *,
    hint: str | None = None,
    created: str | None = None,
) -> KeyFile:
    """A key file for `key` as upstream would write it; no password means an unprotected key.

    `kdf` ("scrypt", "pbkdf2") is used only with a password. `created` (RFC 3339) defaults to now
    in local time with a numeric offset, the form upstream writes.
    """
    if len(key) != KEY_SIZE:
        raise CryptKeyError(f"encryption key must be {KEY_SIZE} bytes, got {len(key)}")
    key = bytes(key)
    crypt = CryptConfig(key)
    if created is None:
        created = datetime.now().astimezone().replace(microsecond=0).isoformat()
    elif not _RFC3339.fullmatch(created):
        raise UsageError(f"creation time {created!r} is not an RFC 3339 timestamp")
    if password is None:
        return KeyFile(None, created, created, key, crypt.fingerprint, hint)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"password too short: PBS needs at least {MIN_PASSWORD_LENGTH} bytes")
    params: Kdf
    if kdf == "scrypt":
        params = ScryptParams(SCRYPT_N, SCRYPT_R, SCRYPT_P, urandom(SALT_SIZE))
    elif kdf == "pbkdf2":
        params = Pbkdf2Params(PBKDF2_ITERATIONS, urandom(SALT_SIZE))
    else:
        raise UsageError(f"unknown key derivation {kdf!r}: use 'scrypt' or 'pbkdf2'")
    iv = urandom(16)
    sealed = AESGCM(params.derive(bytes(password))).encrypt(iv, key, None)
    data = iv + sealed[KEY_SIZE:] + sealed[:KEY_SIZE]  # iv | tag | ciphertext
    return KeyFile(params, created, created, data, crypt.fingerprint, hint)


# --- JSON helpers ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, member: str, name: str) -> bytes:
    """Standard base64; padding optional as in upstream's decoder."""
    if not isinstance(value, str):
        raise CorruptDataError(f"{name}: member '{member}' must be a base64 string")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CorruptDataError(f"{name}: member '{member}' is not valid base64") from None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # serde refuses duplicate members; so do we, rather than guess
            raise ValueError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _load_json_object(text: bytes | str, name: str) -> dict[str, Any]:
    try:
        if isinstance(text, bytes | bytearray | memoryview):
            text = bytes(text).decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_reject_duplicates)
        # serde_json refuses lone surrogates, which Python's json lets through.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise CorruptDataError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{name}: not a JSON object")
    return obj


def _uint(params: dict[str, Any], member: str, name: str) -> int:
    value = params.get(member)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise CorruptDataError(f"{name}: kdf member '{member}' must be an unsigned integer")
    return value


def _parse_kdf(value: object, name: str) -> Kdf | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise CorruptDataError(f"{name}: member 'kdf' must be null or one of Scrypt, PBKDF2")
    ((variant, params),) = value.items()
    if not isinstance(params, dict):
        raise CorruptDataError(f"{name}: kdf {variant!r} parameters must be an object")
    if variant == "Scrypt":
        return ScryptParams(
            _uint(params, "n", name),
            _uint(params, "r", name),
            _uint(params, "p", name),
            _unb64(params.get("salt"), "salt", name),
        )
    if variant == "PBKDF2":
        return Pbkdf2Params(_uint(params, "iter", name), _unb64(params.get("salt"), "salt", name))
    raise CorruptDataError(f"{name}: unknown kdf {variant!r}")


def _timestamp(obj: dict[str, Any], member: str, name: str) -> str:
    value = obj.get(member)
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise CorruptDataError(f"{name}: member '{member}' must be an RFC 3339 timestamp")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise CorruptDataError(f"{name}: member '{member}' is not a valid time: {value}") from None
    return value
