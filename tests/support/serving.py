"""Helpers for the `snapfs serve` tests: stores built from trees on disk, and the server run as
users run it (a real `snapfs serve` process, stopped with SIGTERM whatever happens)."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import selectors
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import snapfs
from snapfs.backup import backup, parse_backup_source
from snapfs.format.keyfile import create_keyfile
from snapfs.keysource import KeyOptions

#: The checkout whose snapfs the tests import: the server process runs the same code.
SOURCE_ROOT = Path(snapfs.__file__).resolve().parents[1]
T0 = 1717200000  # 2024-06-01T00:00:00Z
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def backup_tree(
    ds: Path, tree: Path, group: str, when: int = T0, ns: tuple[str, ...] = (), keyfile=None
) -> str:
    """One snapshot of `tree` as root.pxar; returns its path in the served tree."""
    kind, bid = group.split("/")
    crypt = KeyOptions(str(keyfile), None).crypt_config() if keyfile else None
    result = backup(
        ds,
        [parse_backup_source(f"root.pxar:{tree}")],
        backup_type=kind,
        backup_id=bid,
        backup_time=when,
        ns=ns,
        crypt=crypt,
    )
    prefix = "".join(f"ns/{part}/" for part in ns)
    return f"{prefix}{group}/{result.snapshot.time_name}"


def backup_image(ds: Path, image: Path, group: str, when: int = T0) -> str:
    kind, bid = group.split("/")
    result = backup(
        ds,
        [parse_backup_source(f"drive-scsi0.img:{image}")],
        backup_type=kind,
        backup_id=bid,
        backup_time=when,
    )
    return f"{group}/{result.snapshot.time_name}"


def entries_below(top: Path) -> dict[str, os.stat_result]:
    """Every entry below `top` by its path relative to it."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            found[str(path.relative_to(top))] = path.lstat()
    return found


def strip_top(names: list[str], top: str) -> dict[str, str]:
    """Member name -> path below the downloaded directory (members may sit in a folder named
    after it)."""
    if names and all(n.rstrip("/") == top or n.startswith(f"{top}/") for n in names):
        return {n: n[len(top) + 1 :].rstrip("/") for n in names if n.rstrip("/") != top}
    return {n: n.rstrip("/") for n in names}


def check_zip(body: bytes, top: Path) -> None:
    """Every member of the zip `body` is the entry of `top` of its name, and every file and
    symlink of `top` is a member."""
    entries = entries_below(top)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        infos = {info.filename: info for info in archive.infolist()}
        paths = strip_top(list(infos), top.name)
        seen = set()
        for member, rel in paths.items():
            st = entries[rel]
            info = infos[member]
            seen.add(rel)
            mode = info.external_attr >> 16
            if stat.S_ISDIR(st.st_mode):
                assert info.is_dir(), member
            elif stat.S_ISLNK(st.st_mode):
                assert stat.S_ISLNK(mode), member
                assert archive.read(info) == os.readlink(top / rel).encode(), member
            else:
                assert archive.read(info) == (top / rel).read_bytes(), member
                assert not mode or stat.S_IMODE(mode) == stat.S_IMODE(st.st_mode), member
    must = {rel for rel, st in entries.items() if not stat.S_ISDIR(st.st_mode)}
    assert must <= seen, must - seen


def make_keyfile(path: Path) -> Path:
    """An encryption key file without a password."""
    path.write_bytes(create_keyfile(os.urandom(32), None, None).to_json())
    return path


def server_env(cache: Path) -> dict[str, str]:
    """The environment of a server or CLI process: this checkout's snapfs, its own caches."""
    return dict(os.environ, PYTHONPATH=str(SOURCE_ROOT), XDG_CACHE_HOME=str(cache))


def snapfs_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "snapfs", *map(str, args)]


@dataclass
class Server:
    """A running `snapfs serve`: its process, its announced URL, and where its stderr goes."""

    proc: subprocess.Popen
    url: str  # as announced, e.g. http://127.0.0.1:41234/browse/
    log: Path

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection: status, headers, body."""
        conn = self.connection()
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    """The first line the process writes to stdout, waiting until `deadline` at most."""
    fd = proc.stdout.fileno()
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError("no line on stdout in time")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError("stdout closed before a line")
            data += chunk
    return data.split(b"\n", 1)[0].decode()


@contextlib.contextmanager
def server_process(
    command: str, argv: list[str], *, env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    """A `snapfs` server (`argv` from snapfs_command; `command` names it: serve, nbd) until the
    block ends, its stderr in `log`; yields the process and the first line it prints. SIGTERM
    must then stop it with status 0 within STOP_TIMEOUT seconds."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        try:
            first = read_line(proc, time.monotonic() + START_TIMEOUT)
        except (TimeoutError, EOFError) as exc:
            raise AssertionError(
                f"snapfs {command} did not start ({exc}):\n{log.read_text()}"
            ) from None
        yield proc, first
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"snapfs {command} ignored SIGTERM for {STOP_TIMEOUT} s") from None
        finally:
            proc.stdout.close()
        assert code == 0, f"snapfs {command} exited with {code}:\n{log.read_text()[-4000:]}"


@contextlib.contextmanager
def served(source: Path, *options: object, env: dict[str, str], log: Path) -> Iterator[Server]:
    """`snapfs serve SOURCE OPTIONS` until the block ends (server_process)."""
    argv = snapfs_command("serve", source, *options)
    with server_process("serve", argv, env=env, log=log) as (proc, line):
        prefix = f"snapfs: serving {source} at "
        assert line.startswith(prefix), line
        yield Server(proc, line[len(prefix) :], log)
