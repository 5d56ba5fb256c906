"""The part of the search index that holds encrypted archives, sealed with their key.

Names and paths inside an encrypted backup are as secret as its contents, so that part of the
index never reaches the disk in plain text: it is an in-memory SQLite database, written out as
one AES-256-GCM sealed file whose key is derived (HKDF-SHA256) from the backup's own encryption
key. Without the key file the sealed file reads as random bytes of about the database's size;
with it, the whole database is loaded into memory, used, and sealed again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from snapfs.errors import CorruptDataError
from snapfs.format.crypt import CryptConfig

__all__ = ["seal", "sealed_path", "unseal"]

_MAGIC = b"snapfs sealed search index 1\n"
_NONCE = 12


def sealed_path(index_path: str, crypt: CryptConfig) -> str:
    """Where the sealed part for this key lives, next to the plain index file."""
    return f"{index_path}.{crypt.fingerprint.hex()[:16]}.sealed"


def _aead(crypt: CryptConfig) -> AESGCM:
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"snapfs search index seal")
    return AESGCM(hkdf.derive(crypt.key))


def seal(data: bytes, crypt: CryptConfig, path: str) -> None:
    """Write `data` sealed to `path` (mode 0600, replaced atomically)."""
    nonce = os.urandom(_NONCE)
    sealed = _MAGIC + nonce + _aead(crypt).encrypt(nonce, data, _MAGIC + crypt.fingerprint)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".seal-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(sealed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def unseal(path: str, crypt: CryptConfig) -> bytes | None:
    """The data sealed at `path`, None if there is no such file."""
    try:
        with open(path, "rb") as f:
            sealed = f.read()
    except FileNotFoundError:
        return None
    if not sealed.startswith(_MAGIC) or len(sealed) < len(_MAGIC) + _NONCE + 16:
        raise CorruptDataError(f"{path}: not a sealed snapfs search index")
    nonce = sealed[len(_MAGIC) : len(_MAGIC) + _NONCE]
    try:
        return _aead(crypt).decrypt(
            nonce, sealed[len(_MAGIC) + _NONCE :], _MAGIC + crypt.fingerprint
        )
    except InvalidTag:
        raise CorruptDataError(
            f"{path}: sealed search index does not open with this key (damaged); remove it"
        ) from None
