"""DataBlob and chunk decoding/encoding against the upstream golden vectors (docs/formats.md §4, §5)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapfs.format.crypt as crypt_module
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
    WrongKeyError,
)
from snapfs.format.blob import (
    COMPRESSED_BLOB_MAGIC,
    ENCR_COMPR_BLOB_MAGIC,
    ENCRYPTED_BLOB_MAGIC,
    MAX_BLOB_SIZE,
    UNCOMPRESSED_BLOB_MAGIC,
    BlobKind,
    blob_kind,
    chunk_digest,
    decode_blob,
    decode_chunk,
    encode_blob,
    encode_chunk,
    encode_zero_chunk,
)
from snapfs.format.crypt import CryptConfig

ZERO_4MIB_SHA256 = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"
# vectors/README.md (blobs) lists these two; report.json leaves them out for the zero chunks.
ZERO_CHUNK_RAW = {
    "chunk-zero-4MiB.": (
        691544812,
        "0c0d1a4327baa7452bcc6003acc503eac8cfc5d5fb19854cc95b8f3baa4593ca",
    ),
    "chunk-zero-4MiB-encrypted.": (
        1110397304,
        "6a9e70b04bf2894751750e3b4f5ef1d44d1614af7bcf9b2e2b748bb7bd8ba24d",
    ),
}
FOUR_MIB = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def report(vectors):
    return json.loads((vectors / "report.json").read_text())


@pytest.fixture(scope="module")
def key(report) -> CryptConfig:
    return CryptConfig(bytes.fromhex(report["raw_key_hex"]))


@pytest.fixture(scope="module")
def payload(vectors) -> bytes:
    return (vectors / "blobs" / "payload.bin").read_bytes()


def _expected_sha256(entry: dict) -> str:
    if "payload_sha256" in entry:
        return entry["payload_sha256"]
    assert entry["payload"] == "4194304 zero bytes"
    return ZERO_4MIB_SHA256


def _plain_blob(payload: bytes, magic: bytes = UNCOMPRESSED_BLOB_MAGIC) -> bytes:
    return magic + zlib.crc32(payload).to_bytes(4, "little") + payload


def _with_fixed_crc(raw: bytes | bytearray) -> bytes:
    hdr = 44 if bytes(raw[:8]) in (ENCRYPTED_BLOB_MAGIC, ENCR_COMPR_BLOB_MAGIC) else 12
    return bytes(raw[:8]) + zlib.crc32(raw[hdr:]).to_bytes(4, "little") + bytes(raw[12:])


def _streamed_frame(data: bytes, level: int = 1) -> bytes:
    cobj = zstandard.ZstdCompressor(level=level, write_content_size=False).compressobj()
    return cobj.compress(data) + cobj.flush()


# --- golden vectors ---------------------------------------------------------------------------


def test_every_vector_is_covered(vectors, report):
    on_disk = {
        p.name for p in (vectors / "blobs").iterdir() if p.name.startswith(("blob-", "chunk-"))
    }
    assert on_disk == set(report["blobs"])


def test_vector_blobs_decode(vectors, report, key):
    for fname, entry in report["blobs"].items():
        raw = (vectors / "blobs" / fname).read_bytes()
        assert len(raw) == entry["raw_size"], fname
        if "raw_sha256" not in entry:
            prefix = fname.split(".")[0] + "."
            entry = {
                **entry,
                "crc": ZERO_CHUNK_RAW[prefix][0],
                "raw_sha256": ZERO_CHUNK_RAW[prefix][1],
            }
        assert hashlib.sha256(raw).hexdigest() == entry["raw_sha256"], fname
        kind = blob_kind(raw, name=fname)
        assert kind.magic.hex() == raw[:8].hex() == entry.get("magic", raw[:8].hex()), fname
        if "encrypted" in entry:
            assert kind.is_encrypted == entry["encrypted"], fname
            assert kind.is_compressed == entry["compressed"], fname
        if "crc" in entry:
            assert int.from_bytes(raw[8:12], "little") == entry["crc"], fname
        data = decode_blob(raw, key, name=fname)
        assert hashlib.sha256(data).hexdigest() == _expected_sha256(entry), fname
        if "payload_len" in entry:
            assert len(data) == entry["payload_len"], fname


def test_vector_chunks_decode_with_digest(vectors, report, key):
    chunks = [name for name in report["blobs"] if name.startswith("chunk-")]
    assert len(chunks) == 6
    for fname in chunks:
        entry = report["blobs"][fname]
        digest = bytes.fromhex(fname.rsplit(".", 1)[1])
        assert digest.hex() == entry["digest"]
        raw = (vectors / "blobs" / fname).read_bytes()
        data = decode_chunk(raw, digest, key)
        assert hashlib.sha256(data).hexdigest() == _expected_sha256(entry)
        encrypted = blob_kind(raw).is_encrypted
        assert chunk_digest(data, key if encrypted else None) == digest


def test_plain_chunk_digest_ignores_key(vectors, key, payload):
    # A plain chunk keeps its plain SHA-256 name even when the caller holds a key (as upstream).
    (path,) = (vectors / "blobs").glob("chunk-plain.*")
    digest = bytes.fromhex(path.name.split(".")[1])
    assert decode_chunk(path.read_bytes(), digest, key) == payload


def test_keyed_digest_vector(key, payload):
    assert chunk_digest(payload, key).hex() == (
        "353f214bf806bf19c180d86ebd3651b1c7869e612187d5950429b03688d967f5"
    )
    assert chunk_digest(bytes(FOUR_MIB), key).hex() == (
        "9fab2f0e1c0513a1b10913013b4b24d2a02b6ead01c4a7272baefb116a9d9a15"
    )
    assert chunk_digest(bytes(FOUR_MIB)).hex() == ZERO_4MIB_SHA256


@pytest.mark.parametrize(
    "fname",
    [
        "blob-encrypted.blob",
        "blob-encrypted-compressed.blob",
        "chunk-encrypted.353f214bf806bf19c180d86ebd3651b1c7869e612187d5950429b03688d967f5",
    ],
)
def test_encrypted_vector_wrong_key(vectors, fname):
    raw = (vectors / "blobs" / fname).read_bytes()
    with pytest.raises(WrongKeyError, match="blob-or-chunk"):
        decode_blob(raw, CryptConfig(bytes(32)), name="blob-or-chunk")


def test_encrypted_vector_no_key(vectors):
    raw = (vectors / "blobs" / "blob-encrypted-compressed.blob").read_bytes()
    with pytest.raises(KeyRequiredError, match="enc.blob"):
        decode_blob(raw, None, name="enc.blob")
    digest = bytes.fromhex("353f214bf806bf19c180d86ebd3651b1c7869e612187d5950429b03688d967f5")
    with pytest.raises(KeyRequiredError, match=digest.hex()):
        decode_chunk(raw, digest)


# --- byte-identical re-encoding ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fname", "compress"),
    [("blob-plain.blob", False), ("blob-compressed.blob", True)],
)
def test_reencode_plain_vectors_identically(vectors, payload, fname, compress):
    assert encode_blob(payload, compress=compress) == (vectors / "blobs" / fname).read_bytes()


def test_reencode_incompressible_falls_back(vectors):
    data = (vectors / "blobs" / "incompressible.bin").read_bytes()
    expected = (vectors / "blobs" / "blob-incompressible-compress-requested.blob").read_bytes()
    assert encode_blob(data, compress=True) == expected
    assert expected[:8] == UNCOMPRESSED_BLOB_MAGIC


def test_reencode_plain_chunks_identically(vectors, payload):
    for variant, compress in (("plain", False), ("compressed", True)):
        (path,) = (vectors / "blobs").glob(f"chunk-{variant}.*")
        digest, raw = encode_chunk(payload, compress=compress)
        assert (digest.hex(), raw) == (path.name.split(".")[1], path.read_bytes())


def test_reencode_zero_chunk_identically(vectors):
    (path,) = (vectors / "blobs").glob("chunk-zero-4MiB.*")
    assert encode_zero_chunk(FOUR_MIB) == (
        bytes.fromhex(path.name.split(".")[1]),
        path.read_bytes(),
    )


def _vector_iv(monkeypatch, raw: bytes) -> None:
    monkeypatch.setattr(crypt_module, "urandom", lambda n: raw[12:28])


@pytest.mark.parametrize(
    "fname",
    [
        "blob-encrypted.blob",
        "blob-encrypted-compressed.blob",
        "chunk-encrypted.353f214bf806bf19c180d86ebd3651b1c7869e612187d5950429b03688d967f5",
        "chunk-encrypted-compressed.353f214bf806bf19c180d86ebd3651b1c7869e612187d5950429b03688d967f5",
    ],
)
def test_reencode_encrypted_vectors_with_their_iv(monkeypatch, vectors, key, payload, fname):
    # The IV is the only random input: given the vector's IV we must write the vector's bytes.
    raw = (vectors / "blobs" / fname).read_bytes()
    _vector_iv(monkeypatch, raw)
    compress = blob_kind(raw).is_compressed
    if fname.startswith("chunk-"):
        assert encode_chunk(payload, key, compress=compress) == (
            bytes.fromhex(fname.split(".")[1]),
            raw,
        )
    else:
        assert encode_blob(payload, key, compress=compress) == raw


def test_reencode_encrypted_zero_chunk_with_its_iv(monkeypatch, vectors, key):
    (path,) = (vectors / "blobs").glob("chunk-zero-4MiB-encrypted.*")
    raw = path.read_bytes()
    _vector_iv(monkeypatch, raw)
    assert encode_zero_chunk(FOUR_MIB, key) == (bytes.fromhex(path.name.split(".")[1]), raw)


def test_vector_through_our_writer_and_back(vectors, report, key):
    # upstream bytes -> our reader -> our writer -> our reader, for every kind
    for fname in report["blobs"]:
        raw = (vectors / "blobs" / fname).read_bytes()
        kind = blob_kind(raw)
        data = decode_blob(raw, key)
        again = encode_blob(data, key if kind.is_encrypted else None, compress=kind.is_compressed)
        assert blob_kind(again) is kind, fname
        assert decode_blob(again, key) == data, fname


# --- round trips ------------------------------------------------------------------------------

SAMPLES = {
    "empty": b"",
    "one": b"x",
    "text": b"hello world\n" * 1000,
    "random": os.urandom(5000),
    "zeros": bytes(70000),
}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(sample, encrypted, compress):
    data = SAMPLES[sample]
    crypt = CryptConfig(bytes(range(32))) if encrypted else None
    digest, raw = encode_chunk(data, crypt, compress=compress)
    kind = blob_kind(raw)
    assert kind.is_encrypted == encrypted
    assert kind.is_compressed == (compress and sample in ("text", "zeros"))
    assert decode_blob(raw, crypt) == data
    assert decode_chunk(raw, digest, crypt) == data
    assert decode_chunk(memoryview(raw), digest, crypt) == data
    assert decode_chunk(bytearray(raw), digest, crypt) == data


def test_kind_properties():
    assert [k.is_encrypted for k in BlobKind] == [False, False, True, True]
    assert [k.is_compressed for k in BlobKind] == [False, True, False, True]
    assert [k.header_size for k in BlobKind] == [12, 12, 44, 44]


def test_spec_worked_examples():
    # docs/formats.md §12 (derived values, not upstream output: a cross-check of our reader only).
    plain = bytes.fromhex("42ab3807be8370a12d3b08af68656c6c6f20776f726c640a")
    assert decode_blob(plain) == b"hello world\n"
    assert encode_blob(b"hello world\n", compress=False) == plain
    encrypted = bytes.fromhex(
        "7b6785be222d4cf06a043e60000102030405060708090a0b0c0d0e0f"
        "fdf254d842e6a0321aa6261db903b3ed0f09cc1a56c43d47ef93bf23"
    )
    crypt = CryptConfig(bytes(range(32)))
    digest = bytes.fromhex("b5228c8b6e258d7e8600315b7d767c3df431a68a19248f80b1c33c38c5d587a3")
    assert decode_chunk(encrypted, digest, crypt) == b"hello world\n"


def test_empty_plain_blob_is_12_bytes():
    raw = encode_blob(b"", compress=True)
    assert raw == UNCOMPRESSED_BLOB_MAGIC + bytes(4)
    assert decode_blob(raw) == b""


def test_encode_too_large():
    too_big = bytes(MAX_BLOB_SIZE + 1)  # calloc'd: costs no real memory until touched
    with pytest.raises(UsageError, match="exceeds"):
        encode_blob(too_big)


def test_concurrent_decoding_uses_separate_contexts(vectors, payload):
    raw = (vectors / "blobs" / "blob-compressed.blob").read_bytes()
    zero = encode_zero_chunk(FOUR_MIB)[1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: decode_blob(raw if i % 2 else zero), range(64)))
    assert all(r == (payload if i % 2 else bytes(FOUR_MIB)) for i, r in enumerate(results))


# --- bad input, one class each -----------------------------------------------------------------


def test_bad_magic():
    with pytest.raises(BadMagicError, match="some.blob"):
        decode_blob(b"\x00" * 8 + bytes(4) + b"data", name="some.blob")


def test_historic_authenticated_magic_is_unsupported():
    raw = bytes.fromhex("1f87eee291ce0502") + bytes(36)
    with pytest.raises(UnsupportedFormatError, match="authenticated"):
        decode_blob(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        UNCOMPRESSED_BLOB_MAGIC[:5],
        UNCOMPRESSED_BLOB_MAGIC + b"\x00",
        ENCRYPTED_BLOB_MAGIC + bytes(35),
    ],
)
def test_truncated_header(raw):
    with pytest.raises(TruncatedDataError):
        decode_blob(raw)


def test_crc_mismatch(vectors):
    raw = bytearray((vectors / "blobs" / "blob-plain.blob").read_bytes())
    raw[500] ^= 1
    with pytest.raises(ChecksumMismatchError, match="CRC"):
        decode_blob(raw)


def test_crc_mismatch_encrypted(vectors, key):
    raw = bytearray((vectors / "blobs" / "blob-encrypted.blob").read_bytes())
    raw[100] ^= 0x80
    with pytest.raises(ChecksumMismatchError):
        decode_blob(raw, key)


def test_gcm_failure_with_valid_crc_is_wrong_key(vectors, key):
    raw = bytearray((vectors / "blobs" / "blob-encrypted.blob").read_bytes())
    raw[100] ^= 0x80
    with pytest.raises(WrongKeyError, match="enc-blob"):
        decode_blob(_with_fixed_crc(raw), key, name="enc-blob")


def test_digest_mismatch_names_digest(payload):
    digest, raw = encode_chunk(payload)
    wrong = bytes(32)
    with pytest.raises(DigestMismatchError) as info:
        decode_chunk(raw, wrong)
    assert wrong.hex() in str(info.value) and digest.hex() in str(info.value)


def test_digest_mismatch_encrypted_uses_keyed_digest(payload):
    crypt = CryptConfig(bytes(32))
    _, raw = encode_chunk(payload, crypt)
    with pytest.raises(DigestMismatchError):
        decode_chunk(raw, hashlib.sha256(payload).digest(), crypt)  # plain digest is the wrong name


def test_zstd_frame_without_content_size_decodes():
    data = b"a frame without its size " * 5000
    frame = _streamed_frame(data, level=3)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert decode_blob(_plain_blob(frame, COMPRESSED_BLOB_MAGIC)) == data


def test_zstd_concatenated_and_skippable_frames_decode():
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    payload = (
        zstandard.ZstdCompressor().compress(b"first;")
        + skippable
        + _streamed_frame(b"second;" * 100)
        + zstandard.ZstdCompressor(write_checksum=True).compress(b"third")
    )
    assert (
        decode_blob(_plain_blob(payload, COMPRESSED_BLOB_MAGIC))
        == b"first;" + b"second;" * 100 + b"third"
    )


def test_zstd_empty_frames_decode():
    empty = zstandard.ZstdCompressor().compress(b"")
    assert decode_blob(_plain_blob(empty, COMPRESSED_BLOB_MAGIC)) == b""
    assert decode_blob(_plain_blob(_streamed_frame(b""), COMPRESSED_BLOB_MAGIC)) == b""


def test_zstd_truncated_frame():
    frame = _streamed_frame(os.urandom(1000) * 50)
    with pytest.raises(TruncatedDataError, match="ends inside"):
        decode_blob(_plain_blob(frame[:-7], COMPRESSED_BLOB_MAGIC))


def test_zstd_trailing_garbage():
    frame = zstandard.ZstdCompressor().compress(b"data" * 100)
    with pytest.raises(CorruptDataError, match="no zstd frame"):
        decode_blob(_plain_blob(frame + b"garbage!", COMPRESSED_BLOB_MAGIC))


def test_zstd_empty_payload():
    with pytest.raises(CorruptDataError):
        decode_blob(_plain_blob(b"", COMPRESSED_BLOB_MAGIC))


def test_zstd_corrupt_data_caught_by_frame_checksum():
    # (Without a frame checksum zstd cannot see every flipped bit; the blob CRC and the chunk
    # digest are what catch those.)
    frame = bytearray(
        zstandard.ZstdCompressor(write_checksum=True).compress(b"some text, repeated. " * 500)
    )
    frame[-10] ^= 0xFF
    with pytest.raises(CorruptDataError):
        decode_blob(_plain_blob(bytes(frame), COMPRESSED_BLOB_MAGIC))


def test_zstd_lying_content_size():
    data = b"0123456789" * 1000
    frame = bytearray(zstandard.ZstdCompressor().compress(data))
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == len(data)
    # The content size is the last field of this frame header (2-byte field, value - 256).
    hdr = zstandard.frame_header_size(bytes(frame))
    size_field = int.from_bytes(frame[hdr - 2 : hdr], "little")
    assert size_field + 256 == len(data)
    frame[hdr - 2 : hdr] = (size_field - 1).to_bytes(2, "little")
    with pytest.raises(CorruptDataError):
        decode_blob(_plain_blob(bytes(frame), COMPRESSED_BLOB_MAGIC))


def test_zstd_bomb_without_content_size_is_refused():
    # 200 MiB of zeros in a frame of a few KiB, no size in the header.
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    block = bytes(1024 * 1024)
    frame = b"".join(cobj.compress(block) for _ in range(200)) + cobj.flush()
    assert len(frame) < 100_000
    with pytest.raises(CorruptDataError, match="more than"):
        decode_blob(_plain_blob(frame, COMPRESSED_BLOB_MAGIC))
    with pytest.raises(CorruptDataError, match="more than"):
        decode_blob(_plain_blob(_streamed_frame(bytes(5000)), COMPRESSED_BLOB_MAGIC), max_size=4999)
    assert decode_blob(
        _plain_blob(_streamed_frame(bytes(5000)), COMPRESSED_BLOB_MAGIC), max_size=5000
    ) == bytes(5000)


def test_zstd_bomb_with_declared_size_is_refused():
    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=200 * 1024 * 1024)
    block = bytes(1024 * 1024)
    frame = b"".join(cobj.compress(block) for _ in range(200)) + cobj.flush()
    with pytest.raises(CorruptDataError, match="more than"):
        decode_blob(_plain_blob(frame, COMPRESSED_BLOB_MAGIC))


def test_zstd_bomb_encrypted(key):
    frame = _streamed_frame(bytes(300_000))
    iv, tag, ct = key.encrypt(frame)
    raw = ENCR_COMPR_BLOB_MAGIC + zlib.crc32(ct).to_bytes(4, "little") + iv + tag + ct
    assert len(decode_blob(raw, key)) == 300_000
    with pytest.raises(CorruptDataError, match="more than"):
        decode_blob(raw, key, max_size=100_000)


# --- fuzzing ----------------------------------------------------------------------------------

_FUZZ_KEY = CryptConfig(bytes(range(32)))
_MAGICS = st.sampled_from([k.magic for k in BlobKind] + [b"\x00" * 8])


def _expect_only_snapfs_errors(raw: bytes, max_size: int = MAX_BLOB_SIZE) -> None:
    try:
        out = decode_blob(raw, _FUZZ_KEY, max_size=max_size)
    except SnapfsError:
        return
    assert isinstance(out, bytes) and len(out) <= max(max_size, len(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_blob_arbitrary(raw):
    _expect_only_snapfs_errors(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MAGICS, st.binary(max_size=300))
def test_fuzz_decode_blob_valid_crc(magic, body):
    # With the CRC right, the fuzz reaches the zstd scanner and the GCM check.
    hdr = 44 if magic in (ENCRYPTED_BLOB_MAGIC, ENCR_COMPR_BLOB_MAGIC) else 12
    body = body.ljust(hdr - 12, b"\x00")
    raw = magic + zlib.crc32(body[hdr - 12 :]).to_bytes(4, "little") + body
    _expect_only_snapfs_errors(raw, max_size=1 << 20)


_VALID_FRAMES = [
    zstandard.ZstdCompressor().compress(b"hello fuzz " * 300),
    _streamed_frame(b"streamed fuzz " * 300 + os.urandom(50)),
    zstandard.ZstdCompressor(write_checksum=True).compress(bytes(3000)),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 50),
)
def test_fuzz_decode_mutated_zstd(frame, flips, cut):
    buf = bytearray(frame)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    if cut:
        del buf[-cut:]
    _expect_only_snapfs_errors(_plain_blob(bytes(buf), COMPRESSED_BLOB_MAGIC), max_size=1 << 20)


def test_zstd_size_limit_with_compressed_blocks():
    # Compressed blocks only bound the output (128 KiB each), so the limit is enforced while
    # decoding: right at the limit passes, one byte over fails.
    data = b"".join(b"line %d of some log text\n" % i for i in range(6000))
    raw = _plain_blob(_streamed_frame(data), COMPRESSED_BLOB_MAGIC)
    assert decode_blob(raw, max_size=len(data)) == data
    with pytest.raises(CorruptDataError, match="more than"):
        decode_blob(raw, max_size=len(data) - 1)


# --- a decode sharing its checks with a helper thread -------------------------------------------


@pytest.fixture(scope="module")
def helper():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def _outcome(*args, **kwargs):
    try:
        return "ok", decode_chunk(*args, **kwargs)
    except SnapfsError as exc:
        return type(exc).__name__, str(exc)


def _many_pieces(size: int = 4 * 1024 * 1024) -> bytes:
    """Compressible to about half: the compressed chunk spans many of the helper's pieces."""
    rng = random.Random(5)
    return bytes(rng.choice(b"abcdefghijklmnop") for _ in range(size))


def test_decoding_with_a_helper_equals_decoding_alone(vectors, key, helper):
    """The upstream chunks, and every kind of blob and size, give the same bytes either way."""
    for path in sorted((vectors / "blobs").glob("chunk-*")):
        raw = path.read_bytes()
        digest = bytes.fromhex(path.name.rsplit(".", 1)[1])
        assert decode_chunk(raw, digest, key, helper=helper) == decode_chunk(raw, digest, key)
    for data in (*SAMPLES.values(), _many_pieces()):
        for crypt in (None, CryptConfig(bytes(range(32)))):
            for compress in (False, True):
                digest, raw = encode_chunk(data, crypt, compress=compress)
                assert decode_chunk(raw, digest, crypt, helper=helper) == data
                assert decode_chunk(memoryview(raw), digest, crypt, helper=helper) == data
    digest, raw = encode_chunk(_many_pieces())
    assert len(raw) > 8 * 256 * 1024  # many pieces indeed


@pytest.mark.parametrize("with_helper", [False, True])
def test_a_damaged_chunk_file_is_named_by_its_crc_though_checked_last(helper, with_helper):
    """A read checks the stored CRC only once the chunk fails: a flipped byte of the payload is
    still reported as the CRC mismatch it is, as when the CRC is checked first."""
    data = _many_pieces(1024 * 1024)
    digest, raw = encode_chunk(data)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    pool = helper if with_helper else None
    lazy = _outcome(bytes(flipped), digest, helper=pool)
    first = _outcome(bytes(flipped), digest, helper=pool, check_crc=True)
    assert lazy == first
    assert lazy[0] == "ChecksumMismatchError" and "CRC mismatch" in lazy[1]


@pytest.mark.parametrize("with_helper", [False, True])
def test_a_chunk_whose_crc_field_alone_is_damaged_reads_unless_the_crc_is_asked_for(
    helper, with_helper
):
    """Its digest proves the content: a read returns it; `check_crc` (verify) refuses it."""
    data = _many_pieces(1024 * 1024)
    digest, raw = encode_chunk(data)
    damaged = bytearray(raw)
    damaged[8] ^= 0x01  # the stored CRC
    pool = helper if with_helper else None
    assert decode_chunk(bytes(damaged), digest, helper=pool) == data
    with pytest.raises(ChecksumMismatchError, match="CRC mismatch"):
        decode_chunk(bytes(damaged), digest, helper=pool, check_crc=True)


def test_a_helper_reports_each_fault_as_decoding_alone_does(vectors, key, helper):
    """Flipped bytes (CRC), a CRC-valid corruption (zstd, GCM), a wrong name, no key: the same
    error, naming the same thing."""
    data = _many_pieces(1024 * 1024)
    digest, raw = encode_chunk(data)
    _, encrypted = encode_chunk(data, key)
    enc_digest = chunk_digest(data, key)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    truncated = _with_fixed_crc(raw[: len(raw) // 2])
    enc_flipped = bytearray(encrypted)
    enc_flipped[200] ^= 1
    cases = [
        (bytes(flipped), digest, None),  # CRC mismatch
        (_with_fixed_crc(flipped), digest, None),  # corrupt zstd or a wrong digest
        (truncated, digest, None),
        (raw, bytes(32), None),  # not the chunk it is named as
        (encrypted, enc_digest, None),  # no key
        (_with_fixed_crc(enc_flipped), enc_digest, key),  # GCM fails
        (encrypted, enc_digest, CryptConfig(bytes(32))),  # wrong key
    ]
    for raw_case, name, crypt in cases:
        alone = _outcome(raw_case, name, crypt)
        shared = _outcome(raw_case, name, crypt, helper=helper)
        assert alone[0] != "ok"
        assert shared == alone
