"""pxar on-disk constants, the item header, the fixed-size records and the filename hash.

Shared by the random-access reader (`accessor`) and the encoder, so both agree on every number.
The names follow docs/formats.md §11.2; the values were derived by SipHash-2-4 of
the key strings and are re-derived in the tests. All integers are little-endian.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from snapfs.errors import CorruptDataError

# --- hash keys (§11.2) ------------------------------------------------------------------------

PXAR_HASH_KEY_1 = 0x83AC3F1CFBB450DB
PXAR_HASH_KEY_2 = 0xAA4F1B6879369FBD

# --- item types (§11.2) -----------------------------------------------------------------------

PXAR_FORMAT_VERSION = 0x730F6C75DF16A40D
PXAR_ENTRY = 0xD5956474E588ACEF
PXAR_ENTRY_V1 = 0x11DA850A1C1CCEFF
PXAR_PRELUDE = 0xE309D79D9F7B771B
PXAR_FILENAME = 0x16701121063917B3
PXAR_SYMLINK = 0x27F971E7DBF5DC5F
PXAR_DEVICE = 0x9FC9E906586D5CE9
PXAR_XATTR = 0x0DAB0229B57DCD03
PXAR_ACL_USER = 0x2CE8540A457D55B8
PXAR_ACL_GROUP = 0x136E3ECEB04C03AB
PXAR_ACL_GROUP_OBJ = 0x10868031E9582876
PXAR_ACL_DEFAULT = 0xBBBB13415A6896F5
PXAR_ACL_DEFAULT_USER = 0xC89357B40532CD1F
PXAR_ACL_DEFAULT_GROUP = 0xF90A8A5816038FFE
PXAR_FCAPS = 0x2DA9DD9DB5F7FB67
PXAR_QUOTA_PROJID = 0xE07540E82F7D1CBB
PXAR_HARDLINK = 0x51269C8422BD7275
PXAR_PAYLOAD = 0x28147A1B0B7C1A25
PXAR_PAYLOAD_REF = 0x419D3D6BC4BA977E
PXAR_GOODBYE = 0x2FEC4FA642D5731D
PXAR_GOODBYE_TAIL_MARKER = 0xEF5EED5B753E1555
PXAR_PAYLOAD_START_MARKER = 0x834C68C2194A4ED2
PXAR_PAYLOAD_TAIL_MARKER = 0x6C72B78B984C81B5

#: Key strings the constants are hashed from, for self-checks and for the encoder's tests.
PXAR_KEY_STRINGS: dict[str, bytes] = {
    "PXAR_FORMAT_VERSION": b"__PROXMOX_FORMAT_VERSION__",
    "PXAR_ENTRY": b"__PROXMOX_FORMAT_ENTRY_V2__",
    "PXAR_ENTRY_V1": b"__PROXMOX_FORMAT_ENTRY__",
    "PXAR_PRELUDE": b"__PROXMOX_FORMAT_PRELUDE__",
    "PXAR_FILENAME": b"__PROXMOX_FORMAT_FILENAME__",
    "PXAR_SYMLINK": b"__PROXMOX_FORMAT_SYMLINK__",
    "PXAR_DEVICE": b"__PROXMOX_FORMAT_DEVICE__",
    "PXAR_XATTR": b"__PROXMOX_FORMAT_XATTR__",
    "PXAR_ACL_USER": b"__PROXMOX_FORMAT_ACL_USER__",
    "PXAR_ACL_GROUP": b"__PROXMOX_FORMAT_ACL_GROUP__",
    "PXAR_ACL_GROUP_OBJ": b"__PROXMOX_FORMAT_ACL_GROUP_OBJ__",
    "PXAR_ACL_DEFAULT": b"__PROXMOX_FORMAT_ACL_DEFAULT__",
    "PXAR_ACL_DEFAULT_USER": b"__PROXMOX_FORMAT_ACL_DEFAULT_USER__",
    "PXAR_ACL_DEFAULT_GROUP": b"__PROXMOX_FORMAT_ACL_DEFAULT_GROUP__",
    "PXAR_FCAPS": b"__PROXMOX_FORMAT_FCAPS__",
    "PXAR_QUOTA_PROJID": b"__PROXMOX_FORMAT_QUOTA_PROJID__",
    "PXAR_HARDLINK": b"__PROXMOX_FORMAT_HARDLINK__",
    "PXAR_PAYLOAD": b"__PROXMOX_FORMAT_PXAR_PAYLOAD__",
    "PXAR_PAYLOAD_REF": b"__PROXMOX_FORMAT_PXAR_PAYLOAD_REF__",
    "PXAR_GOODBYE": b"__PROXMOX_FORMAT_GOODBYE__",
    "PXAR_GOODBYE_TAIL_MARKER": b"__PROXMOX_FORMAT_PXAR_GOODBYE_TAIL_MARKER__",
    "PXAR_PAYLOAD_START_MARKER": b"__PROXMOX_FORMAT_PXAR_PAYLOAD_START_MARKER__",
    "PXAR_PAYLOAD_TAIL_MARKER": b"__PROXMOX_FORMAT_PXAR_PAYLOAD_TAIL_MARKER__",
}

HTYPE_NAMES: dict[int, str] = {globals()[name]: name for name in PXAR_KEY_STRINGS}

# --- fixed sizes (§11.9) ----------------------------------------------------------------------

HEADER_SIZE = 16
STAT_V2_SIZE = 40
STAT_V1_SIZE = 32
ENTRY_FULL_SIZE = HEADER_SIZE + STAT_V2_SIZE  # 56
ENTRY_V1_FULL_SIZE = HEADER_SIZE + STAT_V1_SIZE  # 48
GOODBYE_ITEM_SIZE = 24
PAYLOAD_REF_SIZE = 16
DEVICE_SIZE = 16
FORMAT_VERSION_FULL_SIZE = 24
#: The split format writes this value into FORMAT_VERSION; unified archives have no such item.
FORMAT_VERSION_2 = 2

MAX_PATH_LEN = 4096
MAX_FILENAME_LEN = MAX_PATH_LEN
MAX_XATTR_LEN = 255 + 64 * 1024
#: Upper bound on a PRELUDE we are willing to load; upstream has none, but it is read whole.
MAX_PRELUDE_LEN = 16 * 1024 * 1024

#: Exact content sizes for the fixed records; anything else is corrupt.
EXACT_CONTENT_SIZE: dict[int, int] = {
    PXAR_ENTRY: STAT_V2_SIZE,
    PXAR_ENTRY_V1: STAT_V1_SIZE,
    PXAR_DEVICE: DEVICE_SIZE,
    PXAR_PAYLOAD_REF: PAYLOAD_REF_SIZE,
    PXAR_ACL_USER: 16,
    PXAR_ACL_DEFAULT_USER: 16,
    PXAR_ACL_GROUP: 16,
    PXAR_ACL_DEFAULT_GROUP: 16,
    PXAR_ACL_DEFAULT: 32,
    PXAR_ACL_GROUP_OBJ: 8,
    PXAR_QUOTA_PROJID: 8,
    PXAR_FORMAT_VERSION: 8,
}

#: Largest content size upstream accepts per htype (§11.1): every fixed record but FORMAT_VERSION
#: at its size, and these. Types absent here are unbounded.
MAX_CONTENT_SIZE: dict[int, int] = {
    **{htype: size for htype, size in EXACT_CONTENT_SIZE.items() if htype != PXAR_FORMAT_VERSION},
    PXAR_FILENAME: MAX_FILENAME_LEN + 1,
    PXAR_SYMLINK: MAX_PATH_LEN + 1,
    PXAR_HARDLINK: 8 + MAX_PATH_LEN + 1,
    PXAR_XATTR: MAX_XATTR_LEN,
    PXAR_FCAPS: MAX_XATTR_LEN,
    PXAR_PAYLOAD_TAIL_MARKER: HEADER_SIZE,
    PXAR_PRELUDE: MAX_PRELUDE_LEN,
}

# --- mode bits (§11.4) ------------------------------------------------------------------------

S_IFMT = 0o170000
S_IFSOCK = 0o140000
S_IFLNK = 0o120000
S_IFREG = 0o100000
S_IFBLK = 0o060000
S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFIFO = 0o010000
S_ISUID = 0o004000
S_ISGID = 0o002000
S_ISVTX = 0o001000

#: ACL permission value meaning "this entry is absent" (§11.6).
ACL_NO_MASK = 0xFFFFFFFFFFFFFFFF

# --- structs ----------------------------------------------------------------------------------

HEADER = struct.Struct("<QQ")
STAT_V2 = struct.Struct("<QQIIqII")  # mode, flags, uid, gid, mtime secs, nanos, padding
STAT_V1 = struct.Struct("<QQIIQ")  # mode, flags, uid, gid, mtime ns
GOODBYE_ITEM = struct.Struct("<QQQ")  # hash, offset, size
PAYLOAD_REF = struct.Struct("<QQ")  # offset, size
DEVICE = struct.Struct("<QQ")  # major, minor
U64 = struct.Struct("<Q")
ACL_USER = struct.Struct("<QQ")  # uid/gid, permissions
ACL_DEFAULT = struct.Struct("<QQQQ")  # user_obj, group_obj, other, mask


class Header(NamedTuple):
    htype: int
    full_size: int

    @property
    def content_size(self) -> int:
        return self.full_size - HEADER_SIZE


_HEADER_UNPACK = HEADER.unpack_from
_new_header = tuple.__new__  # a NamedTuple without its __new__'s argument parsing
#: Per item type: (largest content size, exact content size), either None; one lookup per item.
_CONTENT_BOUNDS = {
    htype: (MAX_CONTENT_SIZE.get(htype), EXACT_CONTENT_SIZE.get(htype))
    for htype in MAX_CONTENT_SIZE.keys() | EXACT_CONTENT_SIZE.keys()
}


def is_payload_header(head: bytes | memoryview, size: int) -> bool:
    """Whether `head` is the PAYLOAD header of `size` bytes of content (§11.8)."""
    return len(head) == HEADER_SIZE and HEADER.unpack_from(head) == (
        PXAR_PAYLOAD,
        size + HEADER_SIZE,
    )


def htype_name(htype: int) -> str:
    """Readable name of an item type for error messages."""
    return HTYPE_NAMES.get(htype, f"unknown type {htype:#018x}")


def parse_header(
    data: bytes | memoryview, offset: int = 0, *, where: str = "archive", pos: int = 0
) -> Header:
    """Decode and validate a 16-byte item header found at stream position `pos`.

    Validation is upstream's (`full_size >= 16`, content within the per-type maximum), so one bad
    size never makes a caller allocate or read an absurd amount.
    """
    if len(data) - offset < HEADER_SIZE:
        raise CorruptDataError(f"{where}: truncated item header at offset {pos}")
    htype, full_size = _HEADER_UNPACK(data, offset)
    if full_size < HEADER_SIZE:
        raise CorruptDataError(f"{where}: item size {full_size} below header size at offset {pos}")
    bounds = _CONTENT_BOUNDS.get(htype)
    if bounds is not None:
        limit, exact = bounds
        if limit is not None and full_size - HEADER_SIZE > limit:
            raise CorruptDataError(
                f"{where}: {htype_name(htype)} content size {full_size - HEADER_SIZE} exceeds {limit} at offset {pos}"
            )
        if exact is not None and full_size - HEADER_SIZE != exact:
            raise CorruptDataError(
                f"{where}: {htype_name(htype)} content size {full_size - HEADER_SIZE} is not {exact} at offset {pos}"
            )
    return _new_header(Header, (htype, full_size))


# --- SipHash-2-4 (§11.2) ----------------------------------------------------------------------

_M64 = (1 << 64) - 1
_U64_UNPACK = struct.Struct("<Q").unpack_from


def siphash24(data: bytes, k0: int = PXAR_HASH_KEY_1, k1: int = PXAR_HASH_KEY_2) -> int:
    """SipHash-2-4 with a 64-bit result; rounds inlined because goodbye lookups hash every name."""
    m64 = _M64
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    n = len(data)
    full = n - (n & 7)
    tail = ((n & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    words = [_U64_UNPACK(data, i)[0] for i in range(0, full, 8)]
    words.append(tail)
    last = len(words)
    # Two rounds per word, then the finalization: v2 ^= 0xff and four rounds. One loop does both,
    # the finalization as one more word, 0, whose xor in and out changes nothing.
    words.append(0)
    for i, m in enumerate(words):
        v3 ^= m
        if i == last:
            v2 ^= 0xFF
        for _ in range(4 if i == last else 2):
            v0 = (v0 + v1) & m64
            v1 = ((v1 << 13) | (v1 >> 51)) & m64
            v1 ^= v0
            v0 = ((v0 << 32) | (v0 >> 32)) & m64
            v2 = (v2 + v3) & m64
            v3 = ((v3 << 16) | (v3 >> 48)) & m64
            v3 ^= v2
            v0 = (v0 + v3) & m64
            v3 = ((v3 << 21) | (v3 >> 43)) & m64
            v3 ^= v0
            v2 = (v2 + v1) & m64
            v1 = ((v1 << 17) | (v1 >> 47)) & m64
            v1 ^= v2
            v2 = ((v2 << 32) | (v2 >> 32)) & m64
        v0 ^= m
    return v0 ^ v1 ^ v2 ^ v3


def filename_hash(name: bytes) -> int:
    """Goodbye-table hash of a child name (the bytes without the terminating NUL)."""
    return siphash24(name)


# --- device numbers (§11.5) -------------------------------------------------------------------


def device_from_dev_t(dev: int) -> tuple[int, int]:
    """Split a packed Linux dev_t into (major, minor) the way glibc does."""
    major = ((dev >> 8) & 0xFFF) | ((dev >> 32) & 0xFFFFF000)
    minor = (dev & 0xFF) | ((dev >> 12) & 0xFFFFFF00)
    return major, minor


def device_to_dev_t(major: int, minor: int) -> int:
    """Pack (major, minor) into a Linux dev_t."""
    return (
        ((major & 0xFFF) << 8)
        | ((major & 0xFFFFF000) << 32)
        | (minor & 0xFF)
        | ((minor & 0xFFFFFF00) << 12)
    )


def validate_filename(name: bytes, *, where: str = "archive", pos: int = 0) -> None:
    """Reject names that are not exactly one normal path component (§11.5)."""
    if not name:
        raise CorruptDataError(f"{where}: empty file name at offset {pos}")
    if b"/" in name or b"\x00" in name:
        raise CorruptDataError(
            f"{where}: file name {name[:64]!r} contains '/' or NUL at offset {pos}"
        )
    if name in (b".", b".."):
        raise CorruptDataError(f"{where}: file name {name!r} at offset {pos}")
    if len(name) > MAX_FILENAME_LEN:
        raise CorruptDataError(f"{where}: file name of {len(name)} bytes at offset {pos}")
