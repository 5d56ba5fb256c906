"""NBD servers for the tests: an `NbdServer` in a thread of the test (`Served`), and `snapfs nbd`
run as users run it (`nbd_process`), stopped with SIGTERM whatever happens."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from snapfs.nbd.exports import Export
from snapfs.nbd.listen import listener_url, open_listener
from snapfs.nbd.server import NbdServer
from support.nbd_client import NbdClient
from support.serving import server_process, snapfs_command


class Served:
    """An NbdServer on 127.0.0.1:<free port>, in a thread, for one test."""

    def __init__(self, exports: list[Export], tls: ssl.SSLContext | None = None) -> None:
        self.listener = open_listener("127.0.0.1:0")
        self.address = self.listener.getsockname()[:2]
        self.server = NbdServer(exports, tls=tls)
        self.thread = threading.Thread(target=self.server.serve, args=(self.listener,))
        self.thread.start()

    def url(self, name: str = "") -> str:
        return listener_url(self.listener, name, tls=self.server.tls is not None)

    def client(self, name: str | None = "", tls: ssl.SSLContext | None = None) -> NbdClient:
        """A connected client; with `tls`, after STARTTLS; with a `name`, in transmission."""
        c = NbdClient.connect(self.address)
        if tls is not None:
            c.starttls(tls)
        if name is not None:
            c.go(name)
        return c

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        assert not self.thread.is_alive()


@contextlib.contextmanager
def nbd_process(
    *args: object, env: dict[str, str], log: Path, log_level: str = "warning"
) -> Iterator[str]:
    """`snapfs nbd ARGS --listen 127.0.0.1:0` until the block ends, logging at `log_level` to
    `log`; yields the URL it prints first (its first export's). SIGTERM must then stop it with
    status 0 within STOP_TIMEOUT seconds."""
    argv = snapfs_command("--log-level", log_level, "nbd", *args, "--listen", "127.0.0.1:0")
    with server_process("nbd", argv, env=env, log=log) as (_, first):
        yield first
