"""A tiny bootable Linux guest for end-to-end tests: Debian's kernel, a busybox initramfs, a disk.

The kernel and busybox come from Debian packages fetched with `apt-get download` into a cache
folder (SNAPFS_TEST_CACHE, else ~/.cache/snapfs-tests) and unpacked without installing; the
initramfs is written here as a newc cpio, so nothing but dpkg-deb and tar is needed. The disk is a
GPT image with one ext4 partition built by mkfs.ext4 -d (no root, no loop device).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("SNAPFS_TEST_CACHE", Path.home() / ".cache" / "snapfs-tests"))
#: What the guest needs from the module tree: a virtio disk on PCI and ext4 (with crc32c).
GUEST_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
MARK_READ = "SNAPFS-GUEST-READ:"
MARK_WROTE = "SNAPFS-GUEST-WROTE"
MARK_DONE = "SNAPFS-GUEST-DONE"


@dataclass
class GuestKit:
    kernel: Path
    busybox: Path
    modules: list[Path]  # in load order


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _download(package: str, folder: Path) -> Path:
    found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=folder)
        found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no .deb in {folder}")
    return found[-1]


def guest_kit(cache: Path = CACHE) -> GuestKit:
    """Kernel, busybox and the guest's modules, fetched once and kept in `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    meta = _download("linux-image-amd64", debs)
    depends = _run(["dpkg-deb", "-f", str(meta), "Depends"]).stdout
    image_pkg = re.match(r"\s*(linux-image-[^\s,(]+)", depends)
    if image_pkg is None:
        raise RuntimeError(f"{meta.name}: no linux-image dependency in {depends!r}")
    kernel_deb = _download(image_pkg.group(1), debs)
    busybox_deb = _download("busybox-static", debs)

    root = cache / kernel_deb.stem
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        members = _run(["dpkg-deb", "-c", str(kernel_deb)]).stdout.split("\n")
        paths = [line.split()[-1] for line in members if line.strip()]
        wanted = [p for p in paths if p.startswith("./boot/vmlinuz-") or p.endswith(".ko")]
        tar = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(kernel_deb)], stdout=subprocess.PIPE
        )
        _run(["tar", "-x", "-C", str(root), *wanted_members(wanted)], stdin=tar.stdout)
        tar.wait()
        bb = cache / "busybox"
        bb.mkdir(exist_ok=True)
        _run(["dpkg-deb", "-x", str(busybox_deb), str(bb)])
        done.touch()
    kernel = next((root / "boot").glob("vmlinuz-*"))
    busybox = cache / "busybox" / "bin" / "busybox"
    return GuestKit(kernel, busybox, resolve_modules(root, GUEST_MODULES))


def wanted_members(paths: list[str]) -> list[str]:
    """The kernel and only the modules we may load (the whole tree is ~400 MB)."""
    keep = []
    for p in paths:
        if (
            p.startswith("./boot/vmlinuz-")
            or "/kernel/drivers/virtio/" in p
            or "/kernel/drivers/block/virtio" in p
            or re.search(r"/(ext4|jbd2|mbcache|crc16|crc32c_generic|libcrc32c)\.ko$", p)
        ):
            keep.append(p)
    return keep


def resolve_modules(root: Path, names: tuple[str, ...]) -> list[Path]:
    """Modules and their dependencies (from each .ko's modinfo `depends=`), dependencies first."""
    by_name = {p.stem.replace("-", "_"): p for p in root.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = by_name.get(name)
        if path is None:
            raise RuntimeError(f"module {name} not found under {root}")
        m = re.search(rb"depends=([^\0]*)\0", path.read_bytes())
        for dep in m.group(1).decode().split(",") if m else []:
            if dep:
                visit(dep.replace("-", "_"))
        order.append(path)

    for name in names:
        visit(name)
    return order


# --- initramfs ------------------------------------------------------------------------------------


def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build_initramfs(kit: GuestKit, init_script: str, out: Path) -> Path:
    """A newc cpio: busybox, the modules, and `init_script` as /init."""
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules"):
        entries.append((d, stat.S_IFDIR | 0o755, b""))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, kit.busybox.read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    for m in kit.modules:
        entries.append((f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, init_script.encode()))
    blob = b"".join(_cpio_entry(n, mode, data, i + 1) for i, (n, mode, data) in enumerate(entries))
    blob += _cpio_entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(blob + b"\0" * (-len(blob) % 512))
    return out


def guest_init(kit: GuestKit, read_path: str, write_path: str, write_text: str) -> str:
    """/init: load modules, mount /dev/vda1, print a file, write one, unmount, power off."""
    inserts = "\n".join(f"insmod /lib/modules/{m.name}" for m in kit.modules)
    return f"""#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{inserts}
i=0
while [ ! -b /dev/vda1 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
if mount -t ext4 /dev/vda1 /mnt; then
    echo "{MARK_READ}$(cat /mnt/{read_path})"
    echo "{write_text}" > /mnt/{write_path} && sync && umount /mnt && echo {MARK_WROTE}
else
    echo "mount failed"; ls -l /dev/vd* 2>&1
fi
echo {MARK_DONE}
poweroff -f
"""


# --- disk -----------------------------------------------------------------------------------------


def build_disk(path: Path, files: dict[str, bytes], size_mb: int = 24) -> tuple[int, int]:
    """A GPT disk image with one ext4 partition holding `files`; returns (offset, size) of it."""
    work = path.parent / (path.name + ".d")
    tree = work / "tree"
    tree.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (tree / name).write_bytes(data)
    start = 1024 * 1024
    part_size = (size_mb - 2) * 1024 * 1024
    part = work / "part.ext4"
    part.unlink(missing_ok=True)
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "snapfs-guest",
            "-d",
            str(tree),
            str(part),
            f"{part_size // 1024}k",
        ],
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    _run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        input=f"label: gpt\nstart=2048, size={part_size // 512}, type=linux, name=root\n",
    )
    with open(path, "r+b") as f, open(part, "rb") as p:
        f.seek(start)
        shutil.copyfileobj(p, f, 1024 * 1024)
    shutil.rmtree(work)
    return start, part_size


def boot_guest(
    kit: GuestKit, initramfs: Path, drive: str, timeout: float = 60.0, drive_format: str = "qcow2"
) -> tuple[str, float]:
    """Boot under QEMU (TCG) with `drive` as a virtio disk; (serial console output, seconds)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-system-x86_64 not found (Debian package qemu-system-x86)")
    cmd = [
        qemu,
        "-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-nodefaults",
        "-kernel", str(kit.kernel), "-initrd", str(initramfs),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
        "-drive", f"file={drive},if=virtio,format={drive_format},cache=unsafe",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    return result.stdout + result.stderr, time.monotonic() - started
