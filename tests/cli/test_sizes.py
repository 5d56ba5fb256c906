"""Size options (--cache-size, --cache-dir-size, --rate-limit): one parser behind every command, so
a value gets the same verdict everywhere; a bad value is refused by the argument parser, in one line
naming the option, before anything starts; the code gets bytes as an int.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from support.mounting import snapfs

from snapfs.cli import build_parser
from snapfs.errors import UsageError
from snapfs.store.cache import DEFAULT_CACHE_SIZE, FETCHING_AHEAD_CACHE_SIZE
from snapfs.store.sources import chunk_cache_size

K, M, T = 1 << 10, 1 << 20, 1 << 40
IMG = "vm/100/2024-06-01T10:00:00Z"
PXAR = "host/testhost/2024-06-01T11:00:00Z"
#: The smallest value each option accepts, as its error message writes it.
MINIMUM = {
    "--cache-size": (4 * M, "4M"),
    "--cache-dir-size": (8 * M, "8M"),
    "--rate-limit": (1, "1"),
    "--min-size": (0, "0"),
    "--max-size": (0, "0"),
}
SOURCE_COMMANDS = [
    *("snapshots", "cat", "ls", "find", "index", "search", "diff", "versions"),
    *("restore", "verify", "mount", "nbd", "map", "serve"),
]
#: Which commands take which size option; a new one must be added here (and gets checked).
COMMANDS = {
    "--cache-size": ["mount", "nbd", "map", "serve"],
    "--cache-dir-size": SOURCE_COMMANDS,
    "--rate-limit": SOURCE_COMMANDS,
    "--min-size": ["search"],
    "--max-size": ["search"],
}
#: Positional arguments that satisfy each command's parser.
POSITIONALS = {
    "snapshots": ["/srv/ds"],
    "cat": ["/srv/ds", IMG, "qemu-server.conf"],
    "ls": ["/srv/ds", PXAR, "root.pxar"],
    "find": ["/srv/ds", PXAR, "root.pxar", "*.conf"],
    "index": ["/srv/ds"],
    "search": ["/srv/ds", "*.conf"],
    "diff": ["/srv/ds", PXAR, PXAR],
    "versions": ["/srv/ds", "host/testhost", "root.pxar/etc/hosts"],
    "restore": ["/srv/ds", PXAR, "root.pxar", "/tmp/target"],
    "verify": ["/srv/ds"],
    "mount": ["/srv/ds", "/mnt"],
    "nbd": ["/srv/ds", IMG],
    "map": ["/srv/ds", IMG, "drive-scsi0.img"],
    "serve": ["/srv/ds"],
}
#: A value's bytes (binary units, fractions rounded down), or None for text that is no size.
VALUES = {
    "256M": 256 * M,
    "1.5G": 1536 * M,
    "0": 0,
    "-1": None,
    "abc": None,
    "3M": 3 * M,
    "4M": 4 * M,
    "1T": T,
    "10X": None,
    "8MiB": 8 * M,
    "1048576": M,
    "0.5K": 512,
    "1.0000001K": K,
    "1.1T": 1209462790553,
    "": None,
    "1e3": None,
}


def parse(command: str, *options: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *POSITIONALS[command], *options])


def test_every_size_option_is_in_the_table():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: dict[str, list[str]] = {option: [] for option in COMMANDS}
    for name, command in sub.choices.items():
        for action in command._actions:
            sizes = [o for o in action.option_strings if "size" in o or "rate" in o]
            for option in sizes:
                found.setdefault(option, []).append(name)
    assert found == COMMANDS


@pytest.mark.parametrize("text", list(VALUES))
@pytest.mark.parametrize("option", list(COMMANDS))
def test_same_verdict_from_every_command(option, text):
    minimum, shown = MINIMUM[option]
    value = VALUES[text]
    for command in COMMANDS[option]:
        if value is not None and value >= minimum:
            assert getattr(parse(command, option, text), option[2:].replace("-", "_")) == value
            continue
        with pytest.raises(UsageError) as error:
            parse(command, option, text)
        if value is None:
            expected = f"argument {option}: invalid size {text!r} (e.g. 256M, 1.5G, 1048576)"
        else:
            expected = f"argument {option}: {text!r} is below the minimum of {shown}"
        assert str(error.value) == expected, command


@pytest.mark.parametrize("command", COMMANDS["--cache-size"])
def test_cache_size_default_depends_on_the_source(command):
    """Without --cache-size a local datastore gets 16 MiB; an S3 one 32 MiB, for the 16 MiB of
    chunks its readers name ahead to hide the round trips."""
    assert parse(command).cache_size is None
    assert chunk_cache_size("/srv/datastore", None) == DEFAULT_CACHE_SIZE == 16 * M
    assert chunk_cache_size("s3://bucket/store", None) == FETCHING_AHEAD_CACHE_SIZE == 32 * M
    assert chunk_cache_size("s3://bucket/store", 4 * M) == 4 * M


@pytest.mark.parametrize("command", SOURCE_COMMANDS)
def test_invalid_size_is_one_line_and_exit_2_before_anything_starts(vectors, tmp_path, command):
    option = "--cache-size" if command in COMMANDS["--cache-size"] else "--cache-dir-size"
    positionals = [str(vectors / "datastore"), *POSITIONALS[command][1:]]
    if command == "mount":
        positionals[1] = str(tmp_path)
    env = {**os.environ, "SNAPFS_RUN_DIR": str(tmp_path / "run")}
    proc = snapfs(command, *positionals, option, "10X", env=env)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"snapfs: error: argument {option}: invalid size '10X' (e.g. 256M, 1.5G, 1048576)\n"
    )
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists()  # map started no mount


def test_mount_helper_passes_sizes_to_the_same_parser(tmp_path):
    """mount.snapfs hands `cache_size=...` to `snapfs mount`: the same verdict, its exit code 1."""
    argv = [sys.executable, "-m", "snapfs.cli.mount_helper", "/srv/ds", str(tmp_path), "-o"]
    proc = subprocess.run([*argv, "cache_size=3M"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "snapfs: error: argument --cache-size: '3M' is below the minimum of 4M\n"
