"""MiniPxar: a small pxar emitter independent of snapfs.pxar.encoder, for the reader tests."""

from __future__ import annotations

from snapfs.pxar import format as fmt


class MiniPxar:
    """A deliberately small, independent emitter of pxar items, for trees the vectors lack.

    Written from docs/formats.md §11, not shared with snapfs.pxar.encoder, so reader tests do
    not depend on our own encoder agreeing with our own reader.
    """

    def __init__(self, *, split: bool = False, prelude: bytes | None = None) -> None:
        self.out = bytearray()
        self.split = split
        self.payload = bytearray()
        if split:
            self.payload += fmt.HEADER.pack(fmt.PXAR_PAYLOAD_START_MARKER, 16)
            self.item(fmt.PXAR_FORMAT_VERSION, fmt.U64.pack(2))
            if prelude is not None:
                self.item(fmt.PXAR_PRELUDE, prelude)
        self.stack: list[tuple[int, int, list[tuple[int, int, int]], bytes]] = []
        self.item(fmt.PXAR_ENTRY, self.stat(0o40755))
        self.stack.append((0, 0, [], b""))

    def item(self, htype: int, content: bytes) -> int:
        pos = len(self.out)
        self.out += fmt.HEADER.pack(htype, 16 + len(content)) + content
        return pos

    @staticmethod
    def stat(mode: int, mtime_ns: int = 0) -> bytes:
        secs, nanos = divmod(mtime_ns, 10**9)
        return fmt.STAT_V2.pack(mode, 0, 0, 0, secs, nanos, 0)

    def _child(self, name: bytes, f: int) -> None:
        self.stack[-1][2].append((fmt.filename_hash(name), f, len(self.out) - f))

    def file(self, name: bytes, data: bytes, mode: int = 0o100644) -> int:
        f = self.item(fmt.PXAR_FILENAME, name + b"\0")
        self.item(fmt.PXAR_ENTRY, self.stat(mode))
        if self.split:
            po = len(self.payload)
            self.payload += fmt.HEADER.pack(fmt.PXAR_PAYLOAD, 16 + len(data)) + data
            self.item(fmt.PXAR_PAYLOAD_REF, fmt.PAYLOAD_REF.pack(po, len(data)))
        else:
            self.item(fmt.PXAR_PAYLOAD, data)
        self._child(name, f)
        return f

    def special(self, name: bytes, mode: int, kind_item: tuple[int, bytes] | None = None) -> int:
        f = self.item(fmt.PXAR_FILENAME, name + b"\0")
        self.item(fmt.PXAR_ENTRY, self.stat(mode))
        if kind_item is not None:
            self.item(*kind_item)
        self._child(name, f)
        return f

    def hardlink(self, name: bytes, target_path: bytes, target_f: int) -> int:
        f = self.item(fmt.PXAR_FILENAME, name + b"\0")
        self.item(fmt.PXAR_HARDLINK, fmt.U64.pack(f - target_f) + target_path + b"\0")
        self._child(name, f)
        return f

    def begin_dir(self, name: bytes, mode: int = 0o40755) -> None:
        f = self.item(fmt.PXAR_FILENAME, name + b"\0")
        e = self.item(fmt.PXAR_ENTRY, self.stat(mode))
        self.stack.append((f, e, [], name))

    def end_dir(self) -> None:
        f, e, records, name = self.stack.pop()
        g = len(self.out)
        records.sort(key=lambda r: r[0])
        table = b"".join(
            fmt.GOODBYE_ITEM.pack(h, g - rf, size) for h, rf, size in bst_order(records)
        )
        tail_size = 16 + 24 * (len(records) + 1)
        table += fmt.GOODBYE_ITEM.pack(fmt.PXAR_GOODBYE_TAIL_MARKER, g - e, tail_size)
        self.item(fmt.PXAR_GOODBYE, table)
        if self.stack:
            self._child(name, f)

    def finish(self) -> tuple[bytes, bytes | None]:
        while self.stack:
            self.end_dir()
        if self.split:
            self.payload += fmt.HEADER.pack(fmt.PXAR_PAYLOAD_TAIL_MARKER, 16)
            return bytes(self.out), bytes(self.payload)
        return bytes(self.out), None


def every_kind(*, split: bool = False) -> tuple[bytes, bytes | None]:
    """A small archive with an entry of every kind: files (one empty), a hard link, a device, a
    FIFO, a symlink, and directories (nested); (archive, payload stream of a split one)."""
    w = MiniPxar(split=split)
    a = w.file(b"a", b"hello")
    w.hardlink(b"b", b"a", a)
    w.special(b"c", 0o20600, (fmt.PXAR_DEVICE, fmt.DEVICE.pack(1, 3)))
    w.begin_dir(b"d")
    w.special(b"fifo", 0o10644)
    w.special(b"link", 0o120777, (fmt.PXAR_SYMLINK, b"../a\0"))
    w.begin_dir(b"e")
    w.file(b"f", b"x" * 100, mode=0o104755)
    w.end_dir()
    w.end_dir()
    w.file(b"g", b"")
    return w.finish()


def bst_order(sorted_records: list) -> list:
    """In-order fill of a heap-indexed complete binary tree (docs/formats.md §11.7)."""
    n = len(sorted_records)
    out: list = [None] * n
    k, stack, i = 0, [], 0
    while stack or i < n:
        while i < n:
            stack.append(i)
            i = 2 * i + 1
        i = stack.pop()
        out[i] = sorted_records[k]
        k += 1
        i = 2 * i + 2
    return out
