"""Free heap memory given back to the system on request (snapfs.linux.memory)."""

from __future__ import annotations

import subprocess
import sys

# Many small heap buffers (below glibc's mmap threshold) of which one in sixteen stays: the
# freed ones sit between those kept, where free() cannot give them back by itself.
HOLES = """
from snapfs.linux.memory import return_free_memory
kept, freed = [], []
for i in range(1600):
    (kept if i % 16 == 0 else freed).append(bytes(64 * 1024))
del freed
print(return_free_memory())
"""


def test_freed_heap_between_live_buffers_goes_back_to_the_system() -> None:
    # In a process of its own: what this one's heap holds is not the test's to know.
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 64 * 2**20  # of the 94 MiB freed, nearly all


def test_a_second_call_finds_nothing_more_to_return() -> None:
    script = HOLES + "print(return_free_memory())\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second = map(int, out.stdout.split())
    assert first > 64 * 2**20
    assert second < first // 10
