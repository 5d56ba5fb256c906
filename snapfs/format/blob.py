"""DataBlob: the container of every chunk and every small `*.blob` file (docs/formats.md §4, §5).

Layout: magic(8) | crc32 LE(4) | payload, or for the encrypted kinds
magic(8) | crc32 LE(4) | iv(16) | tag(16) | ciphertext; the CRC covers what follows the header.

`decode_chunk` is the hot path of the whole tool (every read of a mounted file ends in it), so the
code avoids copies (memoryview slices, hashing and CRC on views, GCM with a detached tag) and keeps
one zstd context per thread (zstandard's contexts are not thread-safe, and building one per chunk
costs more than decoding a small chunk).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import queue
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Executor

import zstandard

from snapfs.errors import (
    BadMagicError,
    ChecksumMismatchError,
    CorruptDataError,
    DigestMismatchError,
    KeyRequiredError,
    SnapfsError,
    TruncatedDataError,
    UnsupportedFormatError,
    UsageError,
)
from snapfs.format.crypt import CryptConfig

UNCOMPRESSED_BLOB_MAGIC = bytes.fromhex("42ab3807be8370a1")
COMPRESSED_BLOB_MAGIC = bytes.fromhex("31b958426fb6a37f")
ENCRYPTED_BLOB_MAGIC = bytes.fromhex("7b6785be222d4cf0")
ENCR_COMPR_BLOB_MAGIC = bytes.fromhex("e6591bbf0bbfd80b")

# Pre-1.0 "authenticated" blobs, removed before PBS 1.0; named so the error can say what they are.
_HISTORIC_AUTH_MAGICS = (bytes.fromhex("1f87eee291ce0502"), bytes.fromhex("7ea60fbe911fa960"))

PLAIN_HEADER_SIZE = 12
ENCRYPTED_HEADER_SIZE = 44

# Upstream refuses to encode more than this (DataBlob::encode); we also refuse to decompress more.
MAX_BLOB_SIZE = 128 * 1024 * 1024

ZSTD_LEVEL = 1


class BlobKind(enum.Enum):
    """The four blob kinds; the value is the magic number that marks each."""

    PLAIN = UNCOMPRESSED_BLOB_MAGIC
    COMPRESSED = COMPRESSED_BLOB_MAGIC
    ENCRYPTED = ENCRYPTED_BLOB_MAGIC
    ENCRYPTED_COMPRESSED = ENCR_COMPR_BLOB_MAGIC

    @property
    def magic(self) -> bytes:
        return self.value

    @property
    def is_encrypted(self) -> bool:
        return self in (BlobKind.ENCRYPTED, BlobKind.ENCRYPTED_COMPRESSED)

    @property
    def is_compressed(self) -> bool:
        return self in (BlobKind.COMPRESSED, BlobKind.ENCRYPTED_COMPRESSED)

    @property
    def header_size(self) -> int:
        return ENCRYPTED_HEADER_SIZE if self.is_encrypted else PLAIN_HEADER_SIZE


_KIND_BY_MAGIC = {kind.value: kind for kind in BlobKind}

Buffer = bytes | bytearray | memoryview


def _as_view(raw: Buffer) -> memoryview:
    view = memoryview(raw)
    if view.format != "B" or view.ndim != 1:
        try:
            view = view.cast("B")  # indexing must give unsigned bytes
        except TypeError as exc:  # not C-contiguous
            raise UsageError(f"cannot read a blob from this buffer: {exc}") from None
    return view


def blob_kind(raw: Buffer, *, name: str = "blob") -> BlobKind:
    """The kind of a blob from its magic; also checks that the header is all there."""
    view = _as_view(raw)
    if len(view) < 8:
        raise TruncatedDataError(f"{name}: {len(view)} bytes, too short for a blob header")
    magic = bytes(view[:8])
    kind = _KIND_BY_MAGIC.get(magic)
    if kind is None:
        if magic in _HISTORIC_AUTH_MAGICS:
            raise UnsupportedFormatError(
                f"{name}: pre-1.0 authenticated blob (magic {magic.hex()}), not supported"
            )
        raise BadMagicError(f"{name}: not a blob (magic {magic.hex()})")
    if len(view) < kind.header_size:
        raise TruncatedDataError(
            f"{name}: {len(view)} bytes, shorter than the {kind.header_size}-byte header "
            f"of a {kind.name.lower()} blob"
        )
    return kind


# --- zstd ------------------------------------------------------------------------------------

_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    try:
        return _local.dctx
    except AttributeError:
        _local.dctx = zstandard.ZstdDecompressor()
        return _local.dctx


def _cctx() -> zstandard.ZstdCompressor:
    # Frames without content size, as the streaming encoder of PBS 3.2.4 (the version that made
    # the golden vectors) writes them; write_content_size only matters for one-shot calls.
    try:
        return _local.cctx
    except AttributeError:
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=False)
        return _local.cctx


def _cctx_sized() -> zstandard.ZstdCompressor:
    try:
        return _local.cctx_sized
    except AttributeError:
        _local.cctx_sized = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return _local.cctx_sized


#: Compressed bytes decoded per piece when the output is handed on as it comes (about 0.5 MiB
#: of plaintext each: small enough to keep the hashing thread close behind).
_PIECE = 256 * 1024
_ZSTD_FRAME_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50  # low 4 bits free
_ZSTD_MAX_BLOCK = 128 * 1024
_FCS_SIZES = (0, 2, 4, 8)
_DICT_ID_SIZES = (0, 1, 2, 4)


def _scan_zstd_frames(
    buf: memoryview, name: str, max_size: int
) -> list[tuple[int, int, int | None, int]]:
    """Walk the frame and block headers of a zstd stream without decoding it.

    Returns (start, end, content size or None, output bound) per data frame. This is what lets
    the decoder (a) use zstd's one-shot call, several times faster than streaming, also for frames
    without a content size (PBS before 3.2.9 wrote those for every compressed plain chunk),
    (b) catch truncated frames, which zstandard's stream reader silently accepts, and (c) refuse a
    decompression bomb before allocating for it.
    """
    frames: list[tuple[int, int, int | None, int]] = []
    end_all = len(buf)
    pos = 0
    exact_total = 0  # output bytes known for certain (declared sizes, raw and RLE blocks)

    def truncated() -> TruncatedDataError:
        return TruncatedDataError(f"{name}: zstd stream ends inside a frame (offset {pos})")

    if end_all == 0:
        raise CorruptDataError(f"{name}: compressed blob has an empty zstd payload")
    while pos < end_all:
        if end_all - pos < 4:
            raise truncated()
        magic = int.from_bytes(buf[pos : pos + 4], "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE_MAGIC:
            if end_all - pos < 8:
                raise truncated()
            pos += 8 + int.from_bytes(buf[pos + 4 : pos + 8], "little")
            if pos > end_all:
                raise truncated()
            continue
        if magic != _ZSTD_FRAME_MAGIC:
            raise CorruptDataError(f"{name}: no zstd frame at payload offset {pos}")
        if end_all - pos < 5:
            raise truncated()
        descriptor = buf[pos + 4]
        single_segment = (descriptor >> 5) & 1
        if descriptor & 0x08:
            raise CorruptDataError(f"{name}: zstd frame header has the reserved bit set")
        has_checksum = (descriptor >> 2) & 1
        fcs_size = _FCS_SIZES[descriptor >> 6] or single_segment  # flag 0: 1 byte iff single
        header_size = 5 + (1 - single_segment) + _DICT_ID_SIZES[descriptor & 3] + fcs_size
        if end_all - pos < header_size:
            raise truncated()
        content_size: int | None = None
        if fcs_size:
            content_size = int.from_bytes(
                buf[pos + header_size - fcs_size : pos + header_size], "little"
            )
            if fcs_size == 2:
                content_size += 256
            exact_total += content_size
            if exact_total > max_size:
                raise CorruptDataError(f"{name}: zstd data declares more than {max_size} bytes")
        frame_start = pos
        pos += header_size
        bound = 0
        while True:
            if end_all - pos < 3:
                raise truncated()
            block_header = int.from_bytes(buf[pos : pos + 3], "little")
            block_type = (block_header >> 1) & 3
            block_size = block_header >> 3
            if block_size > _ZSTD_MAX_BLOCK:
                raise CorruptDataError(f"{name}: zstd block larger than 128 KiB at offset {pos}")
            pos += 3
            if block_type == 0:  # raw
                pos += block_size
                bound += block_size
                if content_size is None:
                    exact_total += block_size
            elif block_type == 1:  # RLE: one byte repeated block_size times
                pos += 1
                bound += block_size
                if content_size is None:
                    exact_total += block_size
            elif block_type == 2:  # compressed: at most one full block of output
                pos += block_size
                bound += _ZSTD_MAX_BLOCK
            else:
                raise CorruptDataError(f"{name}: reserved zstd block type at offset {pos - 3}")
            if pos > end_all:
                raise truncated()
            if exact_total > max_size:
                raise CorruptDataError(
                    f"{name}: zstd data decompresses to more than {max_size} bytes"
                )
            if block_header & 1:  # last block
                break
        if content_size is not None and content_size > bound:
            # zstd would allocate the declared size before finding out the blocks fall short.
            raise CorruptDataError(
                f"{name}: zstd frame at payload offset {frame_start} declares {content_size} "
                f"bytes, more than its blocks hold (at most {bound})"
            )
        if has_checksum:
            pos += 4
            if pos > end_all:
                raise truncated()
        frames.append((frame_start, pos, content_size, bound))
    return frames


def _zstd_decode(
    payload: Buffer, max_size: int, name: str, on_part: Callable[[bytes], None] | None = None
) -> bytes:
    """Decode a whole zstd stream (any number of frames, with or without content size).

    With `on_part`, the output is also handed over piece by piece, in order, as it is decoded
    (for a digest computed on another thread meanwhile).
    """
    buf = _as_view(payload)
    frames = _scan_zstd_frames(buf, name, max_size)
    dctx = _dctx()
    parts: list[bytes] = []
    budget = max_size
    for start, end, content_size, bound in frames:
        frame = buf[start:end]
        if content_size == 0 or (content_size is None and bound == 0):
            # zstandard answers b"" for a declared size of 0 without decoding; the scan already
            # proved there are no blocks that could produce output.
            if bound:
                raise CorruptDataError(f"{name}: zstd frame declares 0 bytes but holds data")
            continue
        try:
            if content_size is None and bound <= budget:
                # No size to allocate by, but the scan proved the output fits: stream it.
                # (A one-shot call into a buffer of the bound costs 5x more: the oversized
                # allocation is given back to the OS and faulted in anew for every chunk.)
                dobj = dctx.decompressobj()
                if on_part is None:
                    part = dobj.decompress(frame)
                else:
                    part = _decompress_in_pieces(dobj, frame, on_part)
                if not dobj.eof or dobj.unused_data:
                    raise zstandard.ZstdError("frame does not end where its blocks end")
            else:
                # With a declared size zstandard allocates exactly that (the scan capped it at
                # max_size) and zstd verifies it. Without one, and a bound past the budget,
                # allocate one byte past the budget so that an overflow shows as an error.
                part = dctx.decompress(frame, max_output_size=budget + 1, allow_extra_data=False)
                if on_part is not None:
                    on_part(part)
        except zstandard.ZstdError as exc:
            if content_size is None and bound > budget and "full frame" in str(exc):
                raise CorruptDataError(
                    f"{name}: zstd data decompresses to more than {max_size} bytes"
                ) from None
            raise CorruptDataError(f"{name}: corrupt zstd data: {exc}") from None
        if len(part) > budget:
            raise CorruptDataError(f"{name}: zstd data decompresses to more than {max_size} bytes")
        budget -= len(part)
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)  # also b"" for a stream of empty frames


def _decompress_in_pieces(dobj, frame: memoryview, on_part: Callable[[bytes], None]) -> bytes:
    """`dobj.decompress(frame)`, fed `_PIECE` bytes at a time, each piece's output handed on."""
    pieces = []
    for at in range(0, len(frame), _PIECE):
        piece = dobj.decompress(frame[at : at + _PIECE])
        if piece:
            on_part(piece)
            pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# --- decode ----------------------------------------------------------------------------------


def _decode(
    raw: Buffer, crypt: CryptConfig | None, name: str, max_size: int
) -> tuple[BlobKind, bytes]:
    """The blob's kind and content; the stored CRC is the caller's to check (`_check_crc`)."""
    view = _as_view(raw)
    kind = blob_kind(view, name=name)
    return kind, _open_payload(kind, view, view[kind.header_size :], crypt, name, max_size)


def _check_crc(raw: Buffer, name: str) -> None:
    """Raise ChecksumMismatchError if the CRC in the blob's header does not match what follows
    the header. Nothing to check without a whole header: decoding it says what is wrong."""
    view = _as_view(raw)
    try:
        kind = blob_kind(view, name=name)
    except SnapfsError:
        return
    stored_crc = int.from_bytes(view[8:12], "little")
    actual_crc = zlib.crc32(view[kind.header_size :])
    if actual_crc != stored_crc:
        raise ChecksumMismatchError(
            f"{name}: CRC mismatch (stored {stored_crc:08x}, computed {actual_crc:08x})"
        )


def _open_payload(
    kind: BlobKind,
    view: memoryview,
    payload: memoryview,
    crypt: CryptConfig | None,
    name: str,
    max_size: int,
    on_part: Callable[[bytes], None] | None = None,
) -> bytes:
    """The plaintext of a blob whose CRC is checked (or being checked): decrypted, decompressed."""
    if kind.is_encrypted:
        if crypt is None:
            raise KeyRequiredError(f"{name} is encrypted: an encryption key is needed (--keyfile)")
        payload = crypt.decrypt(view[12:28], view[28:44], payload, name=name)
    if kind.is_compressed:
        return _zstd_decode(payload, max_size, name, on_part)
    data = payload if isinstance(payload, bytes) else bytes(payload)
    if on_part is not None:
        on_part(data)
    return data


def _decode_sharing(
    raw: Buffer, crypt: CryptConfig | None, name: str, helper: Executor
) -> tuple[BlobKind, bytes, bytes]:
    """`_decode`, and the plaintext's digest, on two cores: `helper` hashes each piece of
    plaintext while this thread decrypts and decompresses the next.

    For a reader waiting on one chunk with a core to spare: zstd and SHA-256 (each releasing
    the GIL) then overlap instead of adding up.
    """
    view = _as_view(raw)
    kind = blob_kind(view, name=name)
    payload = view[kind.header_size :]
    id_key = crypt.id_key if kind.is_encrypted and crypt is not None else None
    parts: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def digest() -> bytes:
        h = hashlib.sha256()
        for part in iter(parts.get, None):
            h.update(part)
        if id_key is not None:
            h.update(id_key)
        return h.digest()

    hashed = helper.submit(digest)
    try:
        data = _open_payload(kind, view, payload, crypt, name, MAX_BLOB_SIZE, parts.put)
    finally:
        parts.put(None)  # the helper finishes whatever happened here
    return kind, data, hashed.result()


def decode_blob(
    raw: Buffer,
    crypt: CryptConfig | None = None,
    *,
    name: str = "blob",
    max_size: int = MAX_BLOB_SIZE,
) -> bytes:
    """The content of a blob: magic and CRC checked, decrypted, decompressed (at most max_size).
    A blob (an index, a manifest) has no digest to prove it: its CRC is checked first."""
    _check_crc(raw, name)
    return _decode(raw, crypt, name, max_size)[1]


def chunk_digest(data: Buffer, crypt: CryptConfig | None = None) -> bytes:
    """The name of a chunk: SHA-256 of the plaintext, keyed with id_key when encrypting (§5)."""
    if crypt is not None:
        return crypt.compute_digest(data)
    return hashlib.sha256(data).digest()


def decode_chunk(
    raw: Buffer,
    digest: bytes,
    crypt: CryptConfig | None = None,
    *,
    name: str | None = None,
    helper: Executor | None = None,
    check_crc: bool = False,
) -> bytes:
    """Decode a chunk and prove it is the chunk named `digest`.

    The digest kind follows the blob kind, as upstream: encrypted blobs carry keyed digests,
    plain ones plain SHA-256, whatever key the caller holds. With `helper` (an executor with a
    thread to spare) the checks run beside the decoding (`_decode_sharing`).

    The digest proves the content; the stored CRC (a seventh of a decode's work, ahead of the
    rest) is checked only when the chunk fails, to name a damaged chunk file as such: the error
    is the one a CRC checked first would give. `check_crc` checks it first anyway, so that a
    chunk file whose CRC alone is damaged is reported too (`snapfs verify`).
    """
    label = name if name is not None else f"chunk {digest.hex()}"
    if check_crc:
        _check_crc(raw, label)
    try:
        if helper is not None:
            _, data, actual = _decode_sharing(raw, crypt, label, helper)
        else:
            kind, data = _decode(raw, crypt, label, MAX_BLOB_SIZE)
            h = hashlib.sha256(data)
            if kind.is_encrypted:
                h.update(crypt.id_key)  # type: ignore[union-attr]  # _decode required a key
            actual = h.digest()
        if actual != digest:
            raise DigestMismatchError(
                f"{label}: content has digest {actual.hex()}, expected {bytes(digest).hex()}"
            )
    except Exception:  # a decoder's own bug too: damaged input is named as such
        if not check_crc:
            try:
                _check_crc(raw, label)
            except ChecksumMismatchError as damage:
                raise damage from None
        raise
    return data


# --- encode ----------------------------------------------------------------------------------


def encode_blob(data: Buffer, crypt: CryptConfig | None = None, compress: bool = True) -> bytes:
    """Encode like upstream DataBlob::encode of PBS 3.2.4, the version of the golden vectors.

    zstd level 1; the compressed form is kept only if strictly shorter than the input, else the
    uncompressed magic is used. Plain blobs get a streaming frame without content size (byte-
    identical to upstream's), encrypted ones a one-shot frame with content size, as upstream.
    (PBS >= 3.2.9 uses one-shot frames for both and keeps equal-size results; readers accept
    either, and nothing content-addressed depends on the compressed bytes.)
    """
    view = _as_view(data)
    if len(view) > MAX_BLOB_SIZE:
        raise UsageError(f"data of {len(view)} bytes exceeds the blob limit of {MAX_BLOB_SIZE}")
    payload: Buffer = view
    compressed = False
    if compress:
        if crypt is None:
            cobj = _cctx().compressobj()
            packed = cobj.compress(view) + cobj.flush()
        else:
            packed = _cctx_sized().compress(view)
        if len(packed) < len(view):
            payload, compressed = packed, True
    if crypt is None:
        magic = COMPRESSED_BLOB_MAGIC if compressed else UNCOMPRESSED_BLOB_MAGIC
        return b"".join((magic, zlib.crc32(payload).to_bytes(4, "little"), payload))
    magic = ENCR_COMPR_BLOB_MAGIC if compressed else ENCRYPTED_BLOB_MAGIC
    iv, tag, ciphertext = crypt.encrypt(payload)
    return b"".join((magic, zlib.crc32(ciphertext).to_bytes(4, "little"), iv, tag, ciphertext))


def encode_chunk(
    data: Buffer, crypt: CryptConfig | None = None, compress: bool = True
) -> tuple[bytes, bytes]:
    """(digest, blob bytes) of a chunk, as upstream DataChunkBuilder builds it."""
    return chunk_digest(data, crypt), encode_blob(data, crypt, compress)


@functools.lru_cache(maxsize=8)
def _plain_zero_chunk(size: int) -> tuple[bytes, bytes]:
    return encode_chunk(bytes(size))


def encode_zero_chunk(size: int, crypt: CryptConfig | None = None) -> tuple[bytes, bytes]:
    """A compressed chunk of `size` zero bytes (DataChunkBuilder::build_zero_chunk)."""
    if size < 0:
        raise UsageError(f"negative chunk size {size}")
    if crypt is None:
        return _plain_zero_chunk(size)  # deterministic, so worth keeping
    return encode_chunk(bytes(size), crypt)
