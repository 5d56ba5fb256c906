"""MBR and GPT partition tables of a disk image, so each partition can be shown as its own file.

A backed-up VM disk is a whole disk; `mount -o loop` wants a filesystem. Exposing `part1`, `part2`
... as plain files lets users mount a partition without a kernel partition scan (which needs a loop
device and root). Numbering follows Linux: GPT slot index + 1; MBR primaries 1-4 by slot,
logical partitions from 5 in the order of the extended boot record chain.

GPT is checked the way the kernel does (header CRC32, entry array CRC32, LBAs within the disk); a
damaged primary header falls back to the backup header at the end of the disk. Extended MBR
containers are followed but not listed: they hold no filesystem. Pure: ByteSource in, values out.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from snapfs.errors import BadMagicError, ChecksumMismatchError, CorruptDataError, TruncatedDataError
from snapfs.format.source import ByteSource

SECTOR_SIZES = (512, 4096)
MBR_SIGNATURE = b"\x55\xaa"
GPT_SIGNATURE = b"EFI PART"
GPT_PROTECTIVE = 0xEE
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
#: Bounds that keep a hostile table from making us read or list without end (Linux: 256 minors).
MAX_GPT_ENTRIES_BYTES = 1024 * 1024
MAX_LOGICAL = 256

_MBR_ENTRY = struct.Struct("<B3sB3sII")
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")


@dataclass(frozen=True)
class Partition:
    """One partition: where its bytes are in the disk image, in bytes."""

    number: int  # as Linux names it: loop0p<number>, sda<number>
    start: int
    size: int
    type: str  # MBR: "0x83"; GPT: the type GUID, lower case
    name: str = ""  # GPT partition name
    uuid: str = ""  # GPT unique partition GUID
    bootable: bool = False  # MBR active flag, or GPT legacy BIOS bootable attribute

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class PartitionTable:
    scheme: str  # "gpt" or "mbr"
    sector_size: int
    disk_id: str  # GPT disk GUID, or the MBR disk signature as 8 hex digits
    partitions: tuple[Partition, ...]
    used_backup: bool = False  # GPT: the primary header was damaged, the backup was used

    def partition(self, number: int) -> Partition | None:
        for p in self.partitions:
            if p.number == number:
                return p
        return None


def read_partition_table(source: ByteSource, *, name: str) -> PartitionTable | None:
    """The partition table of a disk image, or None if it has none (no 0x55AA boot signature).

    Raises CorruptDataError (or a subclass naming the structure and offset) for a table that is
    there but broken, never returns partitions that reach past the end of the image.
    """
    mbr = _read(source, 0, 512, name, "MBR")
    if mbr[510:512] != MBR_SIGNATURE:
        return None
    entries = [_MBR_ENTRY.unpack_from(mbr, 446 + 16 * i) for i in range(4)]
    if any(e[2] == GPT_PROTECTIVE for e in entries):
        return _read_gpt(source, name)
    return _read_mbr(source, mbr, entries, name)


class PartitionSource:
    """A ByteSource over one partition of a disk image (reads clipped to the partition)."""

    def __init__(self, disk: ByteSource, partition: Partition, name: str = "") -> None:
        self.disk = disk
        self.partition = partition
        self.size = partition.size
        self.name = name or f"part{partition.number}"

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError(f"{self.name}: negative offset or size ({offset}, {size})")
        size = max(0, min(size, self.size - offset))
        if size == 0:
            return b""
        return self.disk.read_at(self.partition.start + offset, size)


# --- MBR ------------------------------------------------------------------------------------------


def _read_mbr(source: ByteSource, mbr: bytes, entries: list[tuple], name: str) -> PartitionTable:
    sector = 512
    parts: list[Partition] = []
    extended: tuple[int, int] | None = None
    for slot, (status, _, ptype, _, lba, count) in enumerate(entries, start=1):
        if ptype == 0 or count == 0:
            continue
        if status not in (0x00, 0x80):
            raise CorruptDataError(
                f"{name}: MBR partition {slot} at offset {446 + 16 * (slot - 1)}: invalid status "
                f"byte 0x{status:02x}"
            )
        where = f"MBR partition {slot}"
        start, size = _check_extent(source, lba * sector, count * sector, name, where)
        if ptype in EXTENDED_TYPES:
            if extended is not None:
                raise CorruptDataError(f"{name}: {where}: a second extended partition")
            extended = (lba, count)
            continue
        parts.append(Partition(slot, start, size, f"0x{ptype:02x}", bootable=status == 0x80))
    if extended is not None:
        parts.extend(_read_logical(source, extended, name))
    disk_id = mbr[440:444][::-1].hex()
    return PartitionTable("mbr", sector, disk_id, tuple(parts))


def _read_logical(source: ByteSource, extended: tuple[int, int], name: str) -> list[Partition]:
    """Follow the chain of extended boot records; each holds one logical partition and a link."""
    sector = 512
    ext_lba, ext_count = extended
    parts: list[Partition] = []
    seen: set[int] = set()
    ebr_lba = ext_lba
    number = 5
    while True:
        if ebr_lba in seen:
            raise CorruptDataError(f"{name}: EBR at offset {ebr_lba * sector}: the chain loops")
        if len(parts) >= MAX_LOGICAL:
            raise CorruptDataError(f"{name}: more than {MAX_LOGICAL} logical partitions")
        seen.add(ebr_lba)
        where = f"EBR at offset {ebr_lba * sector}"
        ebr = _read(source, ebr_lba * sector, 512, name, where)
        if ebr[510:512] != MBR_SIGNATURE:
            raise BadMagicError(f"{name}: {where}: no 0x55AA signature")
        status, _, ptype, _, rel, count = _MBR_ENTRY.unpack_from(ebr, 446)
        if ptype != 0 and count != 0:
            if status not in (0x00, 0x80):
                raise CorruptDataError(f"{name}: {where}: invalid status byte 0x{status:02x}")
            start_lba = ebr_lba + rel
            if start_lba + count > ext_lba + ext_count:
                raise CorruptDataError(
                    f"{name}: logical partition {number} ({where}) ends past its extended partition"
                )
            start, size = _check_extent(
                source, start_lba * sector, count * sector, name, f"logical partition {number}"
            )
            parts.append(Partition(number, start, size, f"0x{ptype:02x}", bootable=status == 0x80))
            number += 1
        _, _, ntype, _, nrel, ncount = _MBR_ENTRY.unpack_from(ebr, 462)
        if ntype == 0 or ncount == 0:
            return parts
        if ntype not in EXTENDED_TYPES:
            raise CorruptDataError(
                f"{name}: {where}: link entry has type 0x{ntype:02x}, not an extended type"
            )
        ebr_lba = ext_lba + nrel
        if not ext_lba < ebr_lba < ext_lba + ext_count:
            raise CorruptDataError(f"{name}: {where}: next EBR lies outside the extended partition")


# --- GPT ------------------------------------------------------------------------------------------


@dataclass
class _GptHeader:
    lba: int
    alternate_lba: int
    disk_guid: bytes
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc: int


def _read_gpt(source: ByteSource, name: str) -> PartitionTable:
    missing: BadMagicError | None = None
    for sector in SECTOR_SIZES:
        if source.size < 2 * sector:
            break
        try:
            header = _gpt_header(source, sector, 1, name)
        except BadMagicError as exc:
            missing = missing or exc
            continue  # maybe a disk of 4096-byte sectors
        except CorruptDataError as exc:
            return _read_gpt_backup(source, sector, None, name, exc)
        try:
            return _gpt_table(source, sector, header, name, used_backup=False)
        except CorruptDataError as exc:
            return _read_gpt_backup(source, sector, header.alternate_lba, name, exc)
    error = missing or BadMagicError(f"{name}: protective MBR but no room for a GPT header")
    return _read_gpt_backup(source, SECTOR_SIZES[0], None, name, error)


def _read_gpt_backup(
    source: ByteSource, sector: int, alternate: int | None, name: str, error: CorruptDataError
) -> PartitionTable:
    """The kernel's fallback: a damaged primary header or entry array, a sound backup header."""
    last = source.size // sector - 1
    for lba in dict.fromkeys(x for x in (alternate, last) if x is not None and 1 < x <= last):
        try:
            header = _gpt_header(source, sector, lba, name)
            return _gpt_table(source, sector, header, name, used_backup=True)
        except CorruptDataError:
            continue
    raise error


def _gpt_header(source: ByteSource, sector: int, lba: int, name: str) -> _GptHeader:
    where = f"GPT header at LBA {lba} (offset {lba * sector})"
    raw = _read(source, lba * sector, sector, name, where)
    (
        signature,
        _revision,
        header_size,
        crc,
        _reserved,
        my_lba,
        alternate_lba,
        _first_usable,
        _last_usable,
        disk_guid,
        entries_lba,
        num_entries,
        entry_size,
        entries_crc,
    ) = _GPT_HEADER.unpack_from(raw)
    if signature != GPT_SIGNATURE:
        raise BadMagicError(f"{name}: {where}: no 'EFI PART' signature")
    if not _GPT_HEADER.size <= header_size <= sector:
        raise CorruptDataError(f"{name}: {where}: invalid header size {header_size}")
    check = bytearray(raw[:header_size])
    check[16:20] = b"\0\0\0\0"
    actual = zlib.crc32(check)
    if actual != crc:
        raise ChecksumMismatchError(
            f"{name}: {where}: header CRC32 0x{crc:08x} does not match the header (0x{actual:08x})"
        )
    if my_lba != lba:
        raise CorruptDataError(f"{name}: {where}: header says it is at LBA {my_lba}")
    if entry_size < _GPT_ENTRY.size or entry_size % 8:
        raise CorruptDataError(f"{name}: {where}: invalid partition entry size {entry_size}")
    if num_entries * entry_size > MAX_GPT_ENTRIES_BYTES:
        raise CorruptDataError(
            f"{name}: {where}: {num_entries} entries of {entry_size} bytes is more than "
            f"{MAX_GPT_ENTRIES_BYTES} bytes"
        )
    return _GptHeader(
        lba, alternate_lba, disk_guid, entries_lba, num_entries, entry_size, entries_crc
    )


def _gpt_table(
    source: ByteSource, sector: int, header: _GptHeader, name: str, *, used_backup: bool
) -> PartitionTable:
    where = f"GPT entries at LBA {header.entries_lba}"
    length = header.num_entries * header.entry_size
    raw = _read(source, header.entries_lba * sector, length, name, where)
    actual = zlib.crc32(raw)
    if actual != header.entries_crc:
        raise ChecksumMismatchError(
            f"{name}: {where}: entry array CRC32 0x{header.entries_crc:08x} does not match "
            f"(0x{actual:08x})"
        )
    parts = []
    for i in range(header.num_entries):
        type_guid, unique, first, last, attrs, raw_name = _GPT_ENTRY.unpack_from(
            raw, i * header.entry_size
        )
        if type_guid == bytes(16):
            continue
        number = i + 1
        if last < first:
            raise CorruptDataError(
                f"{name}: GPT partition {number}: last LBA {last} is before first LBA {first}"
            )
        start, size = _check_extent(
            source, first * sector, (last - first + 1) * sector, name, f"GPT partition {number}"
        )
        try:
            label = raw_name.decode("utf-16-le").split("\0", 1)[0]
        except UnicodeDecodeError:
            raise CorruptDataError(
                f"{name}: GPT partition {number}: name is not valid UTF-16"
            ) from None
        parts.append(
            Partition(
                number,
                start,
                size,
                str(uuid.UUID(bytes_le=type_guid)),
                label,
                str(uuid.UUID(bytes_le=unique)),
                bool(attrs & 4),
            )
        )
    disk_id = str(uuid.UUID(bytes_le=header.disk_guid))
    return PartitionTable("gpt", sector, disk_id, tuple(parts), used_backup)


# --- shared ---------------------------------------------------------------------------------------


def _check_extent(
    source: ByteSource, start: int, size: int, name: str, where: str
) -> tuple[int, int]:
    if start == 0:
        raise CorruptDataError(f"{name}: {where} starts at offset 0, over the partition table")
    if start + size > source.size:
        raise CorruptDataError(
            f"{name}: {where} (offset {start}, {size} bytes) ends past the end of the disk "
            f"({source.size} bytes)"
        )
    return start, size


def _read(source: ByteSource, offset: int, size: int, name: str, where: str) -> bytes:
    data = source.read_at(offset, size) if offset < source.size else b""
    if len(data) != size:
        raise TruncatedDataError(
            f"{name}: {where}: disk ends at {source.size}, needs {size} bytes at offset {offset}"
        )
    return data
