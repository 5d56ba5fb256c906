"""System integration: --help as a manual, docs/guide.md examples, bash completion, mount.snapfs
(also for real through mount(8)), --log-file/--log-level, --json listings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.mounting import is_mounted, snapfs

from snapfs.cli import EXAMPLES, build_parser
from snapfs.cli.mount_helper import translate
from snapfs.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
V1 = "host/testhost/2024-06-01T11:00:00Z"
IMG_ENC = "vm/100/2024-06-01T14:00:00Z"


def subcommands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommands(sub, (*prefix, name))


def parses(line: str) -> None:
    argv = shlex.split(line)
    assert argv[0] == "snapfs", line
    args = build_parser().parse_args(argv[1:])
    assert callable(getattr(args, "func", None)), line


# --- help as the manual ------------------------------------------------------------------------------


def test_every_subcommand_has_a_description_and_examples():
    for path, sub in subcommands(build_parser()):
        text = sub.format_help()
        assert sub.description, path
        assert "examples:\n  snapfs " in text, path


def test_every_help_example_parses():
    for lines in EXAMPLES.values():
        for line in lines:
            parses(line)


def guide_commands() -> list[str]:
    """Every `snapfs ...` line in a shell block of docs/guide.md (continuations joined)."""
    text = (REPO / "docs" / "guide.md").read_text()
    found = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("# ").removeprefix("$ ")
            if line.startswith("snapfs "):
                found.append(line.split(" | ")[0].split(" > ")[0].split(" && ")[0])
    return found


def test_guide_examples_parse():
    commands = guide_commands()
    assert len(commands) >= 25
    seen = {shlex.split(c)[1] for c in commands}
    for path, _ in subcommands(build_parser()):
        assert path[0] in seen, f"docs/guide.md has no example of `snapfs {path[0]}`"
    for line in commands:
        try:
            parses(line)
        except UsageError as exc:
            pytest.fail(f"docs/guide.md: {line}: {exc}")


# --- bash completion -------------------------------------------------------------------------------------

COMPLETION = REPO / "contrib" / "bash-completion" / "snapfs"


def test_bash_completion_knows_every_option():
    script = COMPLETION.read_text()
    for path, sub in subcommands(build_parser()):
        name = path[-1]
        assert re.search(rf"\b{re.escape(name)}\b", script), name
        for action in sub._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in script, f"{' '.join(path)} {opt} missing from {COMPLETION}"


def complete(line: str) -> list[str]:
    """Run the completion function as bash would for `line` (cursor at its end)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = (
        "source /usr/share/bash-completion/bash_completion\n"
        f"source {COMPLETION}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={shlex.quote(line)}\nCOMP_POINT=${{#COMP_LINE}}\n"
        "_snapfs\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_completion_completes_commands_and_options():
    assert {"mount", "umount", "map"} <= set(complete("snapfs m")) | set(complete("snapfs u"))
    assert "restore" in complete("snapfs re")
    assert set(complete("snapfs restore --o")) == {"--overwrite"}
    assert set(complete("snapfs restore src snap a t --overwrite ")) == {
        "never",
        "if-newer",
        "always",
    }
    assert "--log-level" in complete("snapfs --log")
    assert set(complete("snapfs key ")) == {"create", "show"}


# --- logs and JSON ----------------------------------------------------------------------------------------


def test_log_file_has_one_line_per_event_and_no_secret(vectors, tmp_path):
    log = tmp_path / "snapfs.log"
    env = {**os.environ, "SNAPFS_KEY_PASSWORD": "pbs-vector-password"}
    key = ["--keyfile", vectors / "keys" / "key-pbkdf2.json"]
    ds = vectors / "datastore"
    ok = snapfs(
        "--log-level",
        "info",
        "--log-file",
        log,
        "cat",
        ds,
        IMG_ENC,
        "qemu-server.conf",
        *key,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    bad = snapfs("--log-file", log, "cat", ds, V1, "root.pxar/no\nsuch", env=env)
    assert bad.returncode == 1 and bad.stderr.count("snapfs: error:") == 1
    lines = log.read_text().splitlines()
    stamp = re.compile(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} snapfs\[\d+\]: (INFO|ERROR|WARNING|DEBUG): "
    )
    assert lines and all(stamp.match(line) for line in lines), lines
    assert any("cat: finished, exit code 0" in line for line in lines)
    (failure,) = [line for line in lines if "ERROR" in line]
    assert "no\\nsuch" in failure  # the newline of the name is escaped: still one line
    assert "pbs-vector-password" not in log.read_text()


def test_log_level_error_keeps_stderr_quiet(vectors):
    proc = snapfs("--log-level", "error", "snapshots", vectors / "datastore")
    assert proc.returncode == 0 and proc.stderr == ""


def test_bad_log_file_is_a_usage_error(vectors, tmp_path):
    proc = snapfs(
        "--log-file", tmp_path / "no" / "such" / "x.log", "snapshots", vectors / "datastore"
    )
    assert proc.returncode == 2 and "cannot open log file" in proc.stderr


def test_every_listing_has_json(vectors, tmp_path):
    ds = vectors / "datastore"
    listings = {
        "snapshots": ["snapshots", ds, "--json"],
        "ls": ["ls", ds, V1, "root.pxar", "/dir_a", "--json"],
        "find": ["find", ds, V1, "root.pxar", "*.txt", "--json"],
        "verify": ["verify", ds, V1, "--json"],
        "restore": ["restore", ds, V1, "root.pxar/dir_a", tmp_path / "r", "--json"],
    }
    for name, argv in listings.items():
        proc = snapfs(*argv)
        assert proc.returncode == 0, (name, proc.stderr)
        assert json.loads(proc.stdout) is not None, name
    found = json.loads(snapfs(*listings["find"]).stdout)
    assert "/dir_a/nested/notes.txt" in found


# --- mount.snapfs ---------------------------------------------------------------------------------------


def test_mount_helper_translates_fstab_options():
    argv = translate(
        "/srv/ds",
        "/mnt/pbs",
        "ro,noauto,nofail,_netdev,x-systemd.automount,keyfile=/k.json,password_file=/pw,"
        "cache-size=64M,allow_other,uid=1000",
    )
    assert argv == [
        "mount",
        "/srv/ds",
        "/mnt/pbs",
        "--keyfile",
        "/k.json",
        "--password-file",
        "/pw",
        "--cache-size",
        "64M",
        "--allow-other",
        "--uid",
        "1000",
    ]
    assert translate("/a", "/b", "keyfile=/k", verbose=True)[:2] == ["--log-level", "info"]


@pytest.mark.parametrize(
    "options,message",
    [
        ("keyfle=/k.json", "unknown mount option"),
        ("keyfile", "needs a value"),
        ("allow_other=yes", "takes no value"),
    ],
)
def test_mount_helper_refuses_what_it_does_not_know(options, message):
    with pytest.raises(UsageError, match=message):
        translate("/a", "/b", options)
    assert translate("/a", "/b", "keyfle=/k.json,nosuid", sloppy=True) == ["mount", "/a", "/b"]


def test_example_mount_unit_options_are_accepted():
    unit = (REPO / "docs" / "snapfs-datastore.mount").read_text()
    fields = dict(
        line.split("=", 1) for line in unit.splitlines() if re.match(r"^[A-Z][A-Za-z]+=", line)
    )
    assert fields["Type"] == "snapfs"
    argv = translate(fields["What"], fields["Where"], fields["Options"])
    assert argv[:3] == ["mount", fields["What"], fields["Where"]]
    assert "--keyfile" in argv and "--password-file" in argv


def test_mount_helper_exit_codes(tmp_path):
    helper = [sys.executable, "-m", "snapfs.cli.mount_helper"]
    proc = subprocess.run([*helper, "/x", str(tmp_path), "-o", "bogus"], capture_output=True)
    assert proc.returncode == 1 and b"unknown mount option" in proc.stderr
    proc = subprocess.run([*helper, str(tmp_path / "nope"), str(tmp_path)], capture_output=True)
    assert proc.returncode == 32 and b"snapfs: error:" in proc.stderr


@pytest.mark.slow
def test_mount_t_snapfs_through_mount8(vectors, tmp_path):
    """`mount -t snapfs` as fstab uses it: /sbin/mount.snapfs linked to the console script."""
    helper = Path("/sbin/mount.snapfs")
    assert not helper.exists(), f"{helper} exists already; not replacing it"
    script = shutil.which("snapfs", path=str(Path(sys.executable).parent))
    assert script
    password = tmp_path / "pw"
    password.write_text("pbs-vector-password\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    helper.symlink_to(script)
    try:
        options = (
            f"ro,nofail,keyfile={vectors / 'keys' / 'key-pbkdf2.json'},"
            f"password-file={password},cache-size=64M"
        )
        proc = subprocess.run(
            ["mount", "-t", "snapfs", str(vectors / "datastore"), str(mnt), "-o", options],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        try:
            assert is_mounted(mnt)
            conf = (mnt / IMG_ENC / "qemu-server.conf").read_bytes()
            assert conf.startswith(b"boot:")
            assert "fuse.snapfs" in Path("/proc/self/mountinfo").read_text()
        finally:
            done = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)
        # A typo in the options is refused by mount(8) with the helper's message.
        proc = subprocess.run(
            ["mount", "-t", "snapfs", str(vectors / "datastore"), str(mnt), "-o", "keyfle=/x"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and "unknown mount option" in proc.stderr
        assert not is_mounted(mnt)
    finally:
        helper.unlink()


def test_every_guarantee_names_a_test_that_exists():
    text = (REPO / "docs" / "guarantees.md").read_text()
    named = re.findall(r"(tests/\w+/test_\w+\.py)::(test_\w+)", text)
    assert len(named) >= 35
    for path, name in named:
        source = (REPO / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
