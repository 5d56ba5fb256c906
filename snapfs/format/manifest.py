"""The snapshot manifest `index.json.blob` (docs/formats.md §8).

The manifest lists a snapshot's files with their size and checksum; signed snapshots carry an HMAC
over the canonical JSON of everything but `unprotected` and `signature` (§8.2). It is written the
way upstream writes it - `serde_json::to_string_pretty` of a sorted-key value - so that a manifest
parsed and re-serialised comes out byte for byte.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapfs.errors import (
    CorruptDataError,
    NotFoundError,
    SignatureMismatchError,
    SnapfsError,
    UnsupportedFormatError,
    WrongKeyError,
)
from snapfs.format.archive_names import FileType, file_type
from snapfs.format.crypt import format_fingerprint, parse_fingerprint

if TYPE_CHECKING:
    from snapfs.format.crypt import CryptConfig

CRYPT_MODES = ("none", "encrypt", "sign-only")
_KNOWN_FIELDS = ("backup-type", "backup-id", "backup-time", "files", "unprotected", "signature")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_I64 = (-(1 << 63), (1 << 63) - 1)
_U64 = (0, (1 << 64) - 1)


@dataclass
class ManifestFile:
    """One `files[]` entry: an index's stream size and index_csum, or a blob's file size and sha256."""

    filename: str
    crypt_mode: str
    size: int
    csum: bytes

    @property
    def archive_type(self) -> FileType:
        kind = file_type(self.filename)
        if kind is None:
            raise UnsupportedFormatError(f"{self.filename}: not a .blob, .fidx or .didx archive")
        return kind

    def to_value(self) -> dict[str, Any]:
        return {
            "crypt-mode": self.crypt_mode,
            "csum": self.csum.hex(),
            "filename": self.filename,
            "size": self.size,
        }


@dataclass
class Manifest:
    backup_type: str
    backup_id: str
    backup_time: int
    files: list[ManifestFile]
    signature: bytes | None = None
    unprotected: dict[str, Any] = field(default_factory=dict)
    # Top-level members this version does not know: kept for callers to report. Like upstream
    # (serde drops them), they are neither signed nor written back.
    unknown_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: bytes | bytearray | memoryview, *, name: str) -> Manifest:
        """Parse the decoded manifest JSON; any malformation is a CorruptDataError naming `name`."""
        try:
            value = json.loads(bytes(text).decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise CorruptDataError(f"{name}: manifest is not UTF-8 (byte {exc.start})") from None
        except RecursionError:
            raise CorruptDataError(f"{name}: manifest JSON is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, NaN/Infinity, over-long integers
            raise CorruptDataError(
                f"{name}: manifest is not valid JSON: {_one_line(exc)}"
            ) from None
        if not isinstance(value, dict):
            raise CorruptDataError(f"{name}: manifest is not a JSON object")
        files_value = _member(value, "files", list, name)
        files = [_parse_file(entry, i, name) for i, entry in enumerate(files_value)]
        unprotected = value.get("unprotected", {})  # absent in pre-0.8 manifests
        if not isinstance(unprotected, dict):
            raise CorruptDataError(f"{name}: manifest member 'unprotected' is not an object")
        signature = value.get("signature")
        if signature is not None:
            if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
                raise CorruptDataError(f"{name}: manifest signature is not 64 hex digits")
            signature = bytes.fromhex(signature)
        manifest = cls(
            backup_type=_member(value, "backup-type", str, name),
            backup_id=_member(value, "backup-id", str, name),
            backup_time=_integer(value, "backup-time", _I64, name),
            files=files,
            signature=signature,
            unprotected=unprotected,
            unknown_fields={k: v for k, v in value.items() if k not in _KNOWN_FIELDS},
        )
        if "key-fingerprint" in unprotected:
            try:
                parse_fingerprint(unprotected["key-fingerprint"])
            except SnapfsError as exc:
                raise CorruptDataError(f"{name}: unprotected.key-fingerprint: {exc}") from None
        return manifest

    def file(self, filename: str) -> ManifestFile:
        for entry in self.files:
            if entry.filename == filename:
                return entry
        raise NotFoundError(
            f"manifest of {self.backup_type}/{self.backup_id}/{self.backup_time} lists no {filename!r}"
        )

    @property
    def is_signed(self) -> bool:
        return self.signature is not None

    @property
    def key_fingerprint(self) -> bytes | None:
        """The fingerprint of the key the client used, if it recorded one (encrypt/sign-only)."""
        text = self.unprotected.get("key-fingerprint")
        return None if text is None else parse_fingerprint(text)

    def signed_value(self) -> dict[str, Any]:
        """The part the signature covers: the manifest without `unprotected` and `signature`."""
        return {
            "backup-type": self.backup_type,
            "backup-id": self.backup_id,
            "backup-time": self.backup_time,
            "files": [f.to_value() for f in self.files],
        }

    def compute_signature(self, crypt: CryptConfig) -> bytes:
        return crypt.sign(canonical_json(self.signed_value()))

    def verify_signature(self, crypt: CryptConfig) -> None:
        """Check the HMAC with `crypt`; an unsigned manifest has nothing to verify (see is_signed)."""
        if self.signature is None:
            return
        stored = self.key_fingerprint
        if stored is not None and stored != crypt.fingerprint:
            raise WrongKeyError(
                f"manifest of {self._label()} was signed with key {format_fingerprint(stored, short=True)}, "
                f"not with {format_fingerprint(crypt.fingerprint, short=True)}"
            )
        if not hmac.compare_digest(self.compute_signature(crypt), self.signature):
            raise SignatureMismatchError(
                f"manifest of {self._label()}: signature does not match its content (tampered or corrupt)"
            )

    def to_json(self, crypt: CryptConfig | None = None) -> bytes:
        """The manifest text as upstream writes it; with `crypt`, freshly signed with its fingerprint.

        Without `crypt` the stored signature (or null) is kept, as the server does when it rewrites
        `unprotected` on finish.
        """
        unprotected = dict(self.unprotected)
        signature = self.signature
        if crypt is not None:
            signature = self.compute_signature(crypt)
            unprotected["key-fingerprint"] = format_fingerprint(crypt.fingerprint)
        value = self.signed_value()
        value["unprotected"] = unprotected
        value["signature"] = None if signature is None else signature.hex()
        try:
            text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8")
        except (ValueError, TypeError, RecursionError, UnicodeEncodeError) as exc:
            raise CorruptDataError(
                f"manifest of {self._label()}: cannot serialise: {_one_line(exc)}"
            ) from None

    def _label(self) -> str:
        return f"{self.backup_type}/{self.backup_id}/{self.backup_time}"


def canonical_json(value: Any) -> bytes:
    """proxmox-serde canonical JSON: sorted keys, no whitespace, serde_json scalars, no nulls."""
    _reject_null(value)
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError) as exc:
        raise CorruptDataError(f"cannot encode canonical JSON: {_one_line(exc)}") from None


def _reject_null(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None:
            raise CorruptDataError("canonical JSON cannot encode null (upstream refuses it)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _member(obj: dict[str, Any], key: str, kind: type, name: str, where: str = "manifest") -> Any:
    if key not in obj:
        raise CorruptDataError(f"{name}: {where} has no member {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CorruptDataError(f"{name}: {where} member {key!r} is not a {kind.__name__}")
    return value


def _integer(
    obj: dict[str, Any], key: str, bounds: tuple[int, int], name: str, where: str = "manifest"
) -> int:
    value = _member(obj, key, int, name, where)
    if not bounds[0] <= value <= bounds[1]:
        raise CorruptDataError(f"{name}: {where} member {key!r} = {value} is out of range")
    return value


def _parse_file(entry: Any, i: int, name: str) -> ManifestFile:
    where = f"files[{i}]"
    if not isinstance(entry, dict):
        raise CorruptDataError(f"{name}: {where} is not an object")
    filename = _member(entry, "filename", str, name, where)
    where = f"files[{i}] ({filename!r})"
    crypt_mode = entry.get("crypt-mode", "none")  # absent in pre-0.8 manifests
    if crypt_mode not in CRYPT_MODES:
        raise CorruptDataError(f"{name}: {where} has unknown crypt-mode {crypt_mode!r}")
    size = _integer(entry, "size", _U64, name, where)
    csum = _member(entry, "csum", str, name, where)
    if not _HEX64.fullmatch(csum):
        raise CorruptDataError(f"{name}: {where} csum is not 64 hex digits")
    return ManifestFile(filename, crypt_mode, size, bytes.fromhex(csum))
