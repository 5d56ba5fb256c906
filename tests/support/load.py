"""Pieces of the load runs (tests/faults/test_faults_load.py and scripts/soak): a slow, lossy
network made for real, and what a snapfs process holds.

The network: a snapfs process runs in a network namespace of its own (only its network: a FUSE
mount it serves is in ours), reaching SeaweedFS through a veth pair and a delaying TCP proxy
(support/delayproxy.py) in the caller; inside the namespace, iptables drops LOSS of the packets
it receives.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

DELAY = 0.004  # seconds added to every forwarded block, each way (support/delayproxy.py)
LOSS = 0.01

#: The S3 fetch-ahead pool (threads named "snapfs-s3", one per connection, default 8) starts
#: its threads as the load needs them: it may still grow after the warm-up, up to this bound.
S3_POOL_NAME, S3_POOL_BOUND = "snapfs-s3", 8


@contextlib.contextmanager
def lossy_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace linked to ours by a veth pair; LOSS of its incoming packets dropped.
    Yields (namespace name, our address, its address)."""
    tag = os.getpid() % 10000
    name, host_if, ns_if = f"snapfs-load-{tag}", f"snl{tag}h", f"snl{tag}n"
    net = f"10.213.{tag % 250}"
    ours, theirs = f"{net}.1", f"{net}.2"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", name],
        ["ip", "addr", "add", f"{ours}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", name, "addr", "add", f"{theirs}/30", "dev", ns_if],
        ["ip", "-n", name, "link", "set", ns_if, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-m", "statistic"]
        + ["--mode", "random", "--probability", str(LOSS), "-j", "DROP"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield name, ours, theirs
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def snapfs_in(netns: str) -> list[str]:
    """The command line start of `snapfs` run inside the namespace."""
    return ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-m", "snapfs"]


def s3_pool_threads(pid: int) -> int:
    names = [
        Path(f"/proc/{pid}/task/{t}/comm").read_text() for t in os.listdir(f"/proc/{pid}/task")
    ]
    return sum(name.strip() == S3_POOL_NAME for name in names)


def proc_counts(pid: int) -> tuple[int, int, int]:
    """(threads outside the S3 fetch-ahead pool, open fds, resident bytes) of a process."""
    threads = len(os.listdir(f"/proc/{pid}/task")) - s3_pool_threads(pid)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return threads, fds, rss
