"""Free memory returned once the mount's work stops (snapfs.fs.idle_memory): once per burst,
never while the work goes on; and through a real mount, after a read of a file."""

from __future__ import annotations

import io
import os
import re
import time

import pytest
import trio
import trio.testing
from support.mounting import mounted
from support.stores import pxar_store

from snapfs.fs.idle_memory import IDLE_SECONDS, IdleMemoryReturn
from snapfs.pxar.tree import encode_tree


class Mount:
    """A count of work done, which the test advances, and the releases it sees."""

    def __init__(self) -> None:
        self.work = 0
        self.releases: list[float] = []

    def release(self) -> int:
        self.releases.append(trio.current_time())
        return 1 << 20


async def inline(release) -> int:
    """Run the release in the loop (in a thread, the mock clock would jump meanwhile)."""
    return release()


def watch(script) -> tuple[Mount, IdleMemoryReturn]:
    """Run `script(mount)` beside an IdleMemoryReturn on a clock that jumps ahead when idle."""
    mount = Mount()
    returner = IdleMemoryReturn(lambda: mount.work, mount.release, in_thread=inline)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(returner.run)
            await trio.sleep(IDLE_SECONDS / 4)  # the watcher starts on a mount that did nothing
            await script(mount)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return mount, returner


def test_an_idle_mount_that_did_nothing_returns_nothing() -> None:
    async def idle(mount: Mount) -> None:
        await trio.sleep(10 * IDLE_SECONDS)

    mount, returner = watch(idle)
    assert mount.releases == []
    assert returner.bursts == 0


def test_memory_is_returned_once_after_a_burst_not_during_it() -> None:
    async def burst_then_idle(mount: Mount) -> None:
        for _ in range(20):  # 10 idle periods of steady work
            mount.work += 1
            await trio.sleep(IDLE_SECONDS / 2)
        await trio.sleep(10 * IDLE_SECONDS)

    mount, returner = watch(burst_then_idle)
    assert len(mount.releases) == 1
    assert mount.releases[0] >= 20 * IDLE_SECONDS / 2  # not before the work stopped
    assert mount.releases[0] <= 20 * IDLE_SECONDS / 2 + 2 * IDLE_SECONDS  # soon after
    assert (returner.bursts, returner.returned) == (1, 1 << 20)
    assert "1.0 MiB after 1 bursts" in returner.summary()


def test_each_burst_is_followed_by_its_own_return() -> None:
    async def two_bursts(mount: Mount) -> None:
        for _ in range(2):
            mount.work += 5
            await trio.sleep(5 * IDLE_SECONDS)

    mount, returner = watch(two_bursts)
    assert len(mount.releases) == 2
    assert returner.bursts == 2


@pytest.mark.slow
def test_a_mount_returns_memory_after_a_read(tmp_path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(16 << 20))
    out = io.BytesIO()
    encode_tree(tree, out)
    store = pxar_store(tmp_path / "store", out.getvalue())
    with mounted(store, tmp_path / "mnt", "--no-index") as mnt:
        stats = mnt / ".snapfs" / "stats"
        assert "after 0 bursts" in stats.read_text()
        path = mnt / "host/bad/2024-06-01T11:00:00Z/root.pxar/big"
        assert path.read_bytes() == (tree / "big").read_bytes()
        deadline = time.monotonic() + 30
        while "after 1 bursts" not in (text := stats.read_text()):
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        assert re.search(r"when idle: \d+\.\d MiB after 1 bursts of work", text), text
