"""DelayProxy: a TCP forwarder that adds latency, for S3 over a slow link (tests and benchmarks).

Every block read from one side is sent on to the other `delay` seconds after it arrived, in order,
each way: a round trip gains 2 x delay. It is latency, not a bandwidth cap: blocks in flight
overlap, as on a long link, so a 4 MiB GET costs one added round trip, not one per block. With
delay 0 the blocks are forwarded at once. The proxy also reads the HTTP requests that pass to the
upstream (method and target of each), so a benchmark can count the GETs a command made.

Used by the load test (tests/faults/test_faults_load.py) and by scripts/bench's S3 lines
(bench/compare/s3.py).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

BLOCK = 65536
MAX_HEADER = 65536  # a request head longer than this is not HTTP: stop reading requests


class DelayProxy:
    """Listen on (host, 0), forward each connection to `upstream`, `delay` seconds each way."""

    def __init__(self, host: str, upstream: tuple[str, int], delay: float = 0.0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self._requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def take_requests(self) -> list[tuple[str, str]]:
        """(method, target) of every HTTP request forwarded since the last call."""
        with self._lock:
            # Emptied in place: every connection's reader appends to this one list, including
            # the kept-alive connections of a process that outlives one measurement.
            taken = list(self._requests)
            self._requests.clear()
        return taken

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self.conns += [client, server]
            requests = _RequestReader(self._requests, self._lock)
            for a, b, seen in ((client, server, requests), (server, client, None)):
                threading.Thread(target=self._pump, args=(a, b, seen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, seen: _RequestReader | None) -> None:
        if self.delay <= 0:
            with contextlib.suppress(OSError):
                while data := src.recv(BLOCK):
                    if seen is not None:
                        seen.feed(data)
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            return
        # Received blocks wait in a queue with the time they are due; a second thread sends them.
        due: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        sender = threading.Thread(target=self._send_when_due, args=(due, dst), daemon=True)
        sender.start()
        with contextlib.suppress(OSError):
            while data := src.recv(BLOCK):
                if seen is not None:
                    seen.feed(data)
                due.put((time.monotonic() + self.delay, data))
        due.put((time.monotonic() + self.delay, b""))

    def _send_when_due(
        self, due: queue.SimpleQueue[tuple[float, bytes]], dst: socket.socket
    ) -> None:
        broken = False
        while True:
            when, data = due.get()
            if not broken and (wait := when - time.monotonic()) > 0:
                time.sleep(wait)
            if not data:
                break
            if not broken:
                try:
                    dst.sendall(data)
                except OSError:
                    broken = True  # the peer is gone: drop the rest, up to the end
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        with self._lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


class _RequestReader:
    """Follows one connection's HTTP/1.1 requests: the head of each, then its body (by length)."""

    def __init__(self, log: list[tuple[str, str]], lock: threading.Lock) -> None:
        self.log = log
        self.lock = lock
        self.buffer = b""
        self.body_left = 0
        self.lost = False

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        self.buffer += data
        while True:
            if self.body_left:
                skipped = min(self.body_left, len(self.buffer))
                self.body_left -= skipped
                self.buffer = self.buffer[skipped:]
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                self.lost = len(self.buffer) > MAX_HEADER
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                self.lost = True
                return
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"transfer-encoding":
                    self.lost = True  # a chunked body: its end is not worth parsing here
                elif name.strip().lower() == b"content-length":
                    self.body_left = int(value.strip() or b"0")
            with self.lock:
                self.log.append((parts[0].decode("latin-1"), parts[1].decode("latin-1")))
            if self.lost:
                return
