"""Serve lines: the image and the tree downloaded through `snapfs serve`, beside the same data
read by `snapfs cat` and `snapfs restore`, each cold (page cache dropped), in one round.

A download through the server costs an HTTP hop and the zip encoding on top of what the
command-line reader does; the goal is ≥ 0.8 of its throughput. The zip is read whole and every
member checked against the source; the server's peak RSS is measured over the zip alone
(`clear_refs` resets the high-water mark before it starts). snapfs alone: restic and borg have no
web server.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import select
import signal
import subprocess
import time
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .lines import Line
from .probes import drop_caches, peak_rss_mib
from .tools import SNAPFS_TIME, Tool, ToolError, run
from .verify import check_tree

if TYPE_CHECKING:
    from .measure import Runner

IMAGE_PATH = f"/raw/vm/1/{SNAPFS_TIME}/drive-scsi0.img"
TREE_PATH = f"/zip/host/tree/{SNAPFS_TIME}/root.pxar"
LINES = [
    Line("serve-image-cold", "download of the image through snapfs serve, cold", "MB/s", "serve"),
    Line("cat-image-cold", "snapfs cat of the image, cold (the reference)", "MB/s", "serve"),
    Line("serve-zip-tree-cold", "the tree as a zip through snapfs serve, cold", "MB/s", "serve"),
    Line("restore-tree-cold", "snapfs restore of the tree, cold (the reference)", "MB/s", "serve"),
    Line("serve-zip-rss", "peak RSS of snapfs serve during the zip", "MiB", "serve"),
]
START_TIMEOUT = 60.0
BLOCK = 1 << 20


@dataclass
class ServeLines:
    """A running `snapfs serve` of the bench's datastore; measure() runs one round."""

    process: subprocess.Popen
    host: str
    port: int

    @classmethod
    def start(cls, tool: Tool, work: str) -> ServeLines:
        index = os.path.join(work, "serve-search.sqlite")
        process = subprocess.Popen(
            [*tool.cmd, "serve", tool.repo, "--listen", "127.0.0.1:0", "--index", index],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        assert process.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            line = process.stdout.readline() if ready else ""
            if " at http://" in line:
                host, port = line.split(" at http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
                return cls(process, host, int(port))
            if process.poll() is not None:
                break
        process.kill()
        raise ToolError("snapfs serve did not announce its URL")

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _get(self, path: str, sink) -> int:
        """GET `path`, every body block to `sink`; returns the bytes received."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status != 200:
                raise ToolError(f"GET {path}: HTTP {response.status}")
            total = 0
            while block := response.read(BLOCK):
                sink(block)
                total += len(block)
            return total
        finally:
            conn.close()

    def measure(self, runner: Runner, tool: Tool) -> None:
        runner.attempt(["serve-image-cold"], self.image, runner)
        runner.attempt(["cat-image-cold"], self.cat_image, runner, tool)
        runner.attempt(["serve-zip-tree-cold", "serve-zip-rss"], self.zip_tree, runner)
        runner.attempt(["restore-tree-cold"], self.restore_tree, runner, tool)

    def _image_check(self, runner: Runner, size: int, digest: str) -> str | None:
        if (size, digest) != (runner.manifest.image_size, runner.manifest.image_sha256):
            return "downloaded image differs from the source"
        return None

    def image(self, runner: Runner) -> None:
        drop_caches()
        h = hashlib.sha256()
        start = time.perf_counter()
        size = self._get(IMAGE_PATH, h.update)
        elapsed = time.perf_counter() - start
        problem = self._image_check(runner, size, h.hexdigest())
        runner.record_line(
            "serve-image-cold", size / elapsed / 1e6, problem, seconds=round(elapsed, 3)
        )

    def cat_image(self, runner: Runner, tool: Tool) -> None:
        drop_caches()
        h = hashlib.sha256()
        size = 0
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*tool.cmd, "cat", tool.repo, f"vm/1/{SNAPFS_TIME}", "drive-scsi0.img"],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        while block := proc.stdout.read(BLOCK):
            h.update(block)
            size += len(block)
        if proc.wait() != 0:
            raise ToolError("snapfs cat failed")
        elapsed = time.perf_counter() - start
        problem = self._image_check(runner, size, h.hexdigest())
        runner.record_line(
            "cat-image-cold", size / elapsed / 1e6, problem, seconds=round(elapsed, 3)
        )

    def zip_tree(self, runner: Runner) -> None:
        target = os.path.join(runner.work, "serve-zip")
        runner.discard(target)
        os.makedirs(target)
        out = os.path.join(target, "tree.zip")
        try:
            drop_caches()
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
                f.write("5\n")  # reset VmHWM: the peak of the zip alone
            before = peak_rss_mib(self.process.pid, "VmRSS")
            with open(out, "wb") as f:
                start = time.perf_counter()
                self._get(TREE_PATH, f.write)
                elapsed = time.perf_counter() - start
            rss = peak_rss_mib(self.process.pid)
            extracted = os.path.join(target, "tree")
            with zipfile.ZipFile(out) as archive:
                archive.extractall(extracted)
            problem = check_tree(os.path.join(extracted, "root.pxar"), runner.manifest)
            rate = runner.manifest.tree_bytes / elapsed / 1e6
            runner.record_line("serve-zip-tree-cold", rate, problem, seconds=round(elapsed, 3))
            runner.record_line(
                "serve-zip-rss",
                rss,
                None if rss is not None else "no VmHWM",
                rss_before_mib=None if before is None else round(before, 1),
            )
        finally:
            runner.discard(target)

    def restore_tree(self, runner: Runner, tool: Tool) -> None:
        target = os.path.join(runner.work, "serve-restore")
        runner.discard(target)
        try:
            drop_caches()
            start = time.perf_counter()
            run([*tool.cmd, "restore", tool.repo, f"host/tree/{SNAPFS_TIME}", "root.pxar", target])
            os.sync()
            elapsed = time.perf_counter() - start
            problem = check_tree(target, runner.manifest)
            rate = runner.manifest.tree_bytes / elapsed / 1e6
            runner.record_line("restore-tree-cold", rate, problem, seconds=round(elapsed, 3))
        finally:
            runner.discard(target)


def section(lines: list[dict]) -> dict:
    """The JSON's "serve": each line, and each download over its command-line reference."""
    by = {line["line"]: line for line in lines}
    ratios = {}
    for served, reference in (
        ("serve-image-cold", "cat-image-cold"),
        ("serve-zip-tree-cold", "restore-tree-cold"),
    ):
        a, b = by.get(served), by.get(reference)
        if a and b and a["value"] and b["value"] and a["verified"] and b["verified"]:
            ratios[f"{served}/{reference}"] = round(a["value"] / b["value"], 4)
    return {"results": lines, "ratios": ratios}
