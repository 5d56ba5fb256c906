"""CryptConfig: the keys PBS derives from a 32-byte master key, and what it does with them.

PBS encrypts chunks and blobs with AES-256-GCM under the raw master key, names encrypted chunks by
a *keyed* digest (so equal plaintext under two keys gets two names, and the name leaks nothing
about the content), identifies a key by a fingerprint, and signs manifests with HMAC-SHA256. All
three secrets hang off `id_key`, derived once here (docs/formats.md §6.3).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from os import urandom

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from snapfs.errors import CorruptDataError, CryptKeyError, WrongKeyError

KEY_SIZE = 32
IV_SIZE = 16
TAG_SIZE = 16

# Fixed input whose keyed digest is the key's fingerprint (§6.3); a constant of the format.
FINGERPRINT_INPUT = hashlib.sha256(b"Proxmox Backup Encryption Key Fingerprint").digest()

_ID_KEY_SALT = b"_id_key"
_ID_KEY_ITERATIONS = 10

_FINGERPRINT_HEX = re.compile(r"[0-9a-fA-F]{64}")


class CryptConfig:
    """The derived keys of one master key; immutable, safe to share between threads."""

    __slots__ = ("key", "id_key", "fingerprint", "_aes")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray | memoryview) or len(key) != KEY_SIZE:
            length = len(key) if isinstance(key, bytes | bytearray | memoryview) else "?"
            raise CryptKeyError(f"encryption key must be {KEY_SIZE} bytes, got {length}")
        self.key = bytes(key)
        self.id_key = hashlib.pbkdf2_hmac(
            "sha256", self.key, _ID_KEY_SALT, _ID_KEY_ITERATIONS, KEY_SIZE
        )
        self.fingerprint = self.compute_digest(FINGERPRINT_INPUT)
        # The algorithm object only holds the key; building it once saves work per chunk.
        self._aes = algorithms.AES(self.key)

    def __repr__(self) -> str:
        # Never show key material, only the public key ID.
        return f"CryptConfig(fingerprint={format_fingerprint(self.fingerprint, short=True)})"

    def compute_digest(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed chunk digest SHA-256(data || id_key); the secret goes last against length extension."""
        h = hashlib.sha256(data)
        h.update(self.id_key)
        return h.digest()

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        """HMAC-SHA256 under id_key: the manifest signature ("auth tag", §8.2)."""
        return hmac.new(self.id_key, data, hashlib.sha256).digest()

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> tuple[bytes, bytes, bytes]:
        """AES-256-GCM with a fresh random 16-byte IV and empty AAD; returns (iv, tag, ciphertext)."""
        iv = urandom(IV_SIZE)
        enc = Cipher(self._aes, modes.GCM(iv)).encryptor()
        ciphertext = enc.update(plaintext) + enc.finalize()
        return iv, enc.tag, ciphertext

    def decrypt(
        self,
        iv: bytes | memoryview,
        tag: bytes | memoryview,
        ciphertext: bytes | bytearray | memoryview,
        *,
        name: str,
    ) -> bytes:
        """Decrypt and authenticate; a failing tag means the key is wrong (callers check CRCs first)."""
        try:
            # The decryptor API takes the tag separately, which spares joining ciphertext and tag
            # (a 4 MiB copy per chunk with AESGCM.decrypt).
            dec = Cipher(self._aes, modes.GCM(bytes(iv), bytes(tag))).decryptor()
            plaintext = dec.update(ciphertext)
            dec.finalize()
        except InvalidTag:
            raise WrongKeyError(
                f"{name}: authentication failed; it was not encrypted with key "
                f"{format_fingerprint(self.fingerprint, short=True)}"
            ) from None
        except ValueError as exc:  # malformed IV or tag length
            raise CorruptDataError(f"{name}: cannot decrypt: {exc}") from None
        return plaintext


def format_fingerprint(fp: bytes, short: bool = False) -> str:
    """Colon-separated lowercase hex as PBS prints it; short = the 8-byte key ID of log output."""
    if len(fp) != KEY_SIZE:
        raise CryptKeyError(f"a key fingerprint has {KEY_SIZE} bytes, got {len(fp)}")
    return ":".join(f"{b:02x}" for b in (fp[:8] if short else fp))


def parse_fingerprint(text: str) -> bytes:
    """Inverse of the full form of format_fingerprint; colons are optional, case is free."""
    if not isinstance(text, str):
        raise CorruptDataError(f"key fingerprint must be a string, got {type(text).__name__}")
    digits = text.replace(":", "")
    if not _FINGERPRINT_HEX.fullmatch(digits):
        shown = text if len(text) <= 100 else text[:100] + "..."
        raise CorruptDataError(f"malformed key fingerprint {shown!r}: need 32 hex byte pairs")
    return bytes.fromhex(digits)
