"""Fault matrix, secrets rows: key passwords, S3 secret keys, session tokens and the credentials of
an endpoint URL never reach stdout, stderr, a log file, a process title or the command line of a
process snapfs starts; and a log file holds each event once, in snapfs's one format.

Every command that can see a secret runs for real, as a subprocess of the `snapfs` CLI with --debug
and --log-file. The long-lived ones (mount in the background and the foreground, mount.snapfs, nbd,
map) are inspected while they run: every process whose command line names the test's folder, which
is each of them and every process they started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.mounting import SNAPFS, is_mounted, key_options, snapfs
from support.s3server import READER_SECRET, free_port
from support.vectors import VECTOR_PASSWORD

from snapfs.keysource import PASSWORD_ENV_VARS

PASSWORD = VECTOR_PASSWORD.decode()
KEY_HEX = "6bed763d839f13dd6855e5a9f69a15628c34100da6a5030d1e0a6a1935375e5a"  # the unlocked key
SESSION_TOKEN = "session-token-0123456789abcdef-never-printed"
URL_PASSWORD = "url-password-0123456789-never-printed"
IMG_PLAIN = "vm/100/2024-06-01T10:00:00Z"
IMG_ENC = "vm/100/2024-06-01T14:00:00Z"
PXAR_PLAIN = "host/testhost/2024-06-01T11:00:00Z"
PXAR_ENC = "host/testhost/2024-06-01T12:00:00Z"
KEY_SOURCES = [*PASSWORD_ENV_VARS, "--password-file"]
#: A line as logs.FILE_FORMAT writes it; a line of any other handler does not match.
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} snapfs\[\d+\]: (DEBUG|INFO|WARNING|ERROR|CRITICAL): "
    r"[\w.]+: \S"
)
DEBUG_LOG = ("--debug", "--log-file")


# --- checks -----------------------------------------------------------------------------------------


def assert_kept(secrets: list[str], log: Path, *outputs: str, logged: bool = True) -> None:
    """No secret in the outputs or the log; the log has each event once, in snapfs's format."""
    text = log.read_text()
    for secret in secrets:
        for output in (*outputs, text):
            assert secret not in output
    lines = text.splitlines()
    assert lines or not logged, f"{log} is empty: nothing was logged"
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert len(lines) == len(set(lines)), "an event was logged twice"


def assert_processes_kept(secrets: list[str], marker: Path) -> None:
    """Every process whose command line names `marker`: no secret in its command line or title."""
    found = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or str(marker).encode() not in _read(f"/proc/{entry}/cmdline"):
            continue
        found += 1
        for name in ("cmdline", "comm", "status"):
            text = _read(f"/proc/{entry}/{name}")
            for secret in secrets:
                assert secret.encode() not in text, f"/proc/{entry}/{name}"
    assert found, f"no running process names {marker}"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


# --- how a secret is handed over ------------------------------------------------------------------


def key_setup(
    source: str, vectors: Path, tmp: Path, *, keyfile: bool = True
) -> tuple[dict, list[str]]:
    """The environment and options that give the key password through `source`."""
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_ENV_VARS}
    options = key_options(vectors, tmp)  # --keyfile FILE --password-file FILE
    if source != "--password-file":
        env[source] = PASSWORD
        options = options[:2]
    return env, options if keyfile else options[2:]


def s3_options(endpoint: str) -> list[str]:
    return ["--endpoint-url", endpoint, "--path-style"]


def credentialed(endpoint: str) -> str:
    """`endpoint` with a user and password in it, as a user may write it."""
    return endpoint.replace("http://", f"http://user:{URL_PASSWORD}@", 1)


# --- the commands ---------------------------------------------------------------------------------


def one_shot(command: str, source: str | Path, tmp: Path, encrypted: bool) -> list:
    """The argv of `command` on `source` (without the source's options), run to its end."""
    img, pxar = (IMG_ENC, PXAR_ENC) if encrypted else (IMG_PLAIN, PXAR_PLAIN)
    conf = tmp / "100.conf"
    conf.write_text("memory: 512\n")
    return {
        "snapshots": ["snapshots", source],
        "cat": ["cat", source, img, "qemu-server.conf"],
        "ls": ["ls", source, pxar, "root.pxar", "/", "-l"],
        "find": ["find", source, pxar, "root.pxar", "*.txt"],
        "restore": ["restore", source, pxar, "root.pxar/dir_a", tmp / "restored"],
        "verify": ["verify", source, pxar],
        "backup": ["backup", tmp / "new-store", f"qemu-server.conf:{conf}", "--id", "101"],
        "key create": ["key", "create", tmp / "new.key", "--kdf", "pbkdf2"],
        "mount": ["mount", source, tmp],
        "nbd": ["nbd", source, img, "drive-scsi0.img", "--listen", "127.0.0.1:0"],
        "map": ["map", source, img, "drive-scsi0.img"],
    }[command]


KEY_ONE_SHOT = ["cat", "ls", "find", "restore", "verify", "backup", "key create"]
S3_ONE_SHOT = ["snapshots", "cat", "ls", "find", "restore", "verify"]
#: Every command that reads a SOURCE, the long-lived ones included (run to their first error).
S3_ALL = [*S3_ONE_SHOT, "mount", "nbd", "map"]


def run_mount(
    source: str | Path,
    options: list[str],
    tmp: Path,
    env: dict,
    secrets: list[str],
    *,
    global_log: bool = True,
) -> list[str]:
    """`snapfs mount` in the background, inspected, then unmounted; what it printed."""
    mnt, log = tmp / "mnt", tmp / "snapfs.log"
    mnt.mkdir()
    where = [*DEBUG_LOG, log, "mount"] if global_log else ["mount", *DEBUG_LOG, log]
    proc = snapfs(*where, source, mnt, *options, env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        _inspect_mount(mnt, options, tmp, secrets)
    finally:
        assert snapfs("umount", mnt).returncode == 0
    return [proc.stdout, proc.stderr]


def run_mount_foreground(
    source: str | Path,
    options: list[str],
    tmp: Path,
    env: dict,
    secrets: list[str],
    *,
    global_log: bool,
) -> list[str]:
    """`snapfs mount --foreground` (global or the mount's own --debug --log-file), unmounted.

    Its output goes to files: a pipe nobody reads while the mount serves could fill and stall it.
    """
    mnt, log = tmp / "mnt", tmp / "snapfs.log"
    mnt.mkdir()
    where = [*DEBUG_LOG, log, "mount"] if global_log else ["mount", *DEBUG_LOG, log]
    argv = [*SNAPFS, *map(str, [*where, "--foreground", source, mnt, *options])]
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
    try:
        _wait_mounted(proc, mnt, err)
        _inspect_mount(mnt, options, tmp, secrets)
    finally:
        snapfs("umount", mnt)
        proc.wait(timeout=60)
    assert proc.returncode == 0, err.read_text()
    return [out.read_text(), err.read_text()]


def run_mount_helper(
    source: str | Path, options: list[str], tmp: Path, env: dict, secrets: list[str]
) -> list[str]:
    """`mount.snapfs SOURCE DIR -v -o ...` as mount(8) runs it, inspected, then unmounted."""
    mnt, log = tmp / "mnt", tmp / "snapfs.log"
    mnt.mkdir()
    mount_options = [f"log_file={log}"]
    rest = list(options)
    while rest:
        name = rest.pop(0).removeprefix("--").replace("-", "_")
        takes_value = rest and not rest[0].startswith("--")
        mount_options.append(f"{name}={rest.pop(0)}" if takes_value else name)
    argv = [sys.executable, "-m", "snapfs.cli.mount_helper", str(source), str(mnt), "-v", "-o"]
    proc = subprocess.run(
        [*argv, ",".join(mount_options)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    try:
        _inspect_mount(mnt, options, tmp, secrets)
    finally:
        assert snapfs("umount", mnt).returncode == 0
    return [proc.stdout, proc.stderr]


def run_nbd(
    source: str | Path, options: list[str], tmp: Path, env: dict, secrets: list[str]
) -> list[str]:
    """`snapfs nbd` until it listens, inspected, then stopped with SIGTERM."""
    served = one_shot("nbd", source, tmp, encrypted="--keyfile" in options)
    argv = [*SNAPFS, *map(str, [*DEBUG_LOG, tmp / "snapfs.log", *served, *options])]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = proc.stdout.readline()
        if url.startswith("nbd://"):
            assert_processes_kept(secrets, tmp)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert url.startswith("nbd://127.0.0.1:") and proc.returncode == 0, err
    return [url, out, err]


def run_map(
    source: str | Path, options: list[str], tmp: Path, env: dict, secrets: list[str]
) -> list[str]:
    """`snapfs map`, its mount process and that one's log inspected, then `snapfs unmap`."""
    env = {**env, "SNAPFS_RUN_DIR": str(tmp / "run")}
    mapped = one_shot("map", source, tmp, encrypted="--keyfile" in options)
    proc = snapfs(*DEBUG_LOG, tmp / "snapfs.log", *mapped, *options, env=env)
    assert proc.returncode == 0, proc.stderr
    device = proc.stdout.split()[0]
    try:
        assert_processes_kept(secrets, tmp / "run")
        (child_log,) = (tmp / "run").glob("map-*/mount.log")
        assert_kept(secrets, child_log, logged=False)  # it may not have logged anything yet
    finally:
        assert snapfs("unmap", device, env=env).returncode == 0
    return [proc.stdout, proc.stderr]


def _wait_mounted(proc: subprocess.Popen, mnt: Path, err: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(mnt):
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, f"{mnt} not mounted after {timeout} s"
        time.sleep(0.05)


def _inspect_mount(mnt: Path, options: list[str], tmp: Path, secrets: list[str]) -> None:
    """Read through the mount (so the key and the source are used), then check every process."""
    snapshot = IMG_ENC if "--keyfile" in options else IMG_PLAIN
    assert (mnt / snapshot / "qemu-server.conf").read_bytes().startswith(b"boot:")
    assert_processes_kept(secrets, tmp)


LIVE: dict[str, Callable[..., list[str]]] = {
    "mount": run_mount,
    "mount, own --debug --log-file": lambda *a: run_mount(*a, global_log=False),
    "mount --foreground": lambda *a: run_mount_foreground(*a, global_log=True),
    "mount --foreground, own --debug --log-file": lambda *a: run_mount_foreground(
        *a, global_log=False
    ),
    "mount.snapfs": run_mount_helper,
    "nbd": run_nbd,
    "map": run_map,
}


# --- key passwords ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", KEY_SOURCES)
@pytest.mark.parametrize("command", KEY_ONE_SHOT)
def test_key_password_never_leaves(vectors, tmp_path, command, source):
    env, options = key_setup(source, vectors, tmp_path, keyfile=command != "key create")
    log = tmp_path / "snapfs.log"
    argv = one_shot(command, vectors / "datastore", tmp_path, encrypted=True)
    proc = snapfs(*DEBUG_LOG, log, *argv, *options, env=env)
    assert proc.returncode == 0, proc.stderr
    assert_kept([PASSWORD, KEY_HEX], log, proc.stdout, proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("source", KEY_SOURCES)
@pytest.mark.parametrize("command", list(LIVE))
def test_key_password_never_leaves_running_commands(vectors, tmp_path, command, source):
    env, options = key_setup(source, vectors, tmp_path)
    secrets = [PASSWORD, KEY_HEX]
    outputs = LIVE[command](vectors / "datastore", options, tmp_path, env, secrets)
    assert_kept(secrets, tmp_path / "snapfs.log", *outputs)


def test_wrong_key_password_error_never_echoes_it(vectors, tmp_path):
    log = tmp_path / "run.log"
    wrong = "hunter2-not-the-password"
    env = {**os.environ, "SNAPFS_KEY_PASSWORD": wrong}
    argv = one_shot("cat", vectors / "datastore", tmp_path, encrypted=True)
    keyfile = vectors / "keys" / "key-scrypt.json"
    proc = snapfs("--log-level", "debug", "--log-file", log, *argv, "--keyfile", keyfile, env=env)
    assert proc.returncode == 1 and "password" in proc.stderr.lower()
    assert_kept([wrong, PASSWORD], log, proc.stdout, proc.stderr)


# --- S3 credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", S3_ONE_SHOT)
def test_s3_secret_key_never_leaves(s3server, s3_vectors, tmp_path, command):
    log = tmp_path / "snapfs.log"
    argv = one_shot(command, s3_vectors, tmp_path, encrypted=False)
    proc = snapfs(*DEBUG_LOG, log, *argv, *s3_options(s3server.endpoint), env=s3server.reader_env())
    assert proc.returncode == 0, proc.stderr
    assert_kept([READER_SECRET], log, proc.stdout, proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(LIVE))
def test_s3_secret_key_never_leaves_running_commands(s3server, s3_vectors, tmp_path, command):
    options = s3_options(s3server.endpoint)
    outputs = LIVE[command](s3_vectors, options, tmp_path, s3server.reader_env(), [READER_SECRET])
    assert_kept([READER_SECRET], tmp_path / "snapfs.log", *outputs)


def test_wrong_s3_secret_key_is_never_printed(s3server, s3_vectors, tmp_path):
    log = tmp_path / "run.log"
    wrong = "wrong-secret-0123456789abcdef0123"
    argv = one_shot("snapshots", s3_vectors, tmp_path, encrypted=False)
    proc = snapfs(
        "--log-level",
        "debug",
        "--log-file",
        log,
        *argv,
        *s3_options(s3server.endpoint),
        env=s3server.reader_env(secret=wrong),
    )
    assert proc.returncode == 1
    assert "SignatureDoesNotMatch" in proc.stderr
    assert_kept([wrong, READER_SECRET], log, proc.stdout, proc.stderr)


@pytest.mark.parametrize("command", S3_ALL)
def test_s3_session_token_never_leaves(s3server, s3_vectors, tmp_path, command):
    """The test server knows no session tokens: every command fails at the source, quietly."""
    log = tmp_path / "snapfs.log"
    env = {**s3server.reader_env(), "AWS_SESSION_TOKEN": SESSION_TOKEN}
    env["SNAPFS_RUN_DIR"] = str(tmp_path / "run")
    argv = one_shot(command, s3_vectors, tmp_path, encrypted=False)
    proc = snapfs(*DEBUG_LOG, log, *argv, *s3_options(s3server.endpoint), env=env)
    assert proc.returncode == 1 and "InvalidAccessKeyId" in proc.stderr
    assert_kept([SESSION_TOKEN, READER_SECRET], log, proc.stdout, proc.stderr)


# --- credentials in the endpoint URL -------------------------------------------------------------------


@pytest.mark.parametrize("command", S3_ALL)
def test_endpoint_credentials_never_leave_errors(s3server, tmp_path, command):
    """Nothing listens on the port: every command gives up naming the endpoint, not its password."""
    port = free_port()
    log = tmp_path / "snapfs.log"
    env = {**s3server.reader_env(), "SNAPFS_RUN_DIR": str(tmp_path / "run")}
    argv = one_shot(command, "s3://bucket/store", tmp_path, encrypted=False)
    endpoint = credentialed(f"http://127.0.0.1:{port}")
    proc = snapfs(*DEBUG_LOG, log, *argv, *s3_options(endpoint), env=env)
    assert proc.returncode == 1
    assert f"cannot reach S3 endpoint http://127.0.0.1:{port} " in proc.stderr
    assert_kept([URL_PASSWORD], log, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_map_mount_process_never_gets_endpoint_credentials(s3server, s3_vectors, tmp_path):
    """botocore never sends an endpoint's user and password; `map` must not pass them on in argv."""
    options = s3_options(credentialed(s3server.endpoint))
    outputs = run_map(s3_vectors, options, tmp_path, s3server.reader_env(), [URL_PASSWORD])
    assert_kept([URL_PASSWORD], tmp_path / "snapfs.log", *outputs)


def test_source_credentials_are_masked_in_the_error(tmp_path):
    """A SOURCE that is a URL with a password is refused, quoted without the password."""
    log = tmp_path / "snapfs.log"
    proc = snapfs("--log-file", log, "snapshots", credentialed("http://127.0.0.1:9/store"))
    assert proc.returncode == 2
    assert proc.stderr == (
        "snapfs: error: unsupported SOURCE 'http://***@127.0.0.1:9/store' "
        "(a datastore directory or s3://BUCKET/STORE)\n"
    )
    assert_kept([URL_PASSWORD], log, proc.stdout)


def test_mount_helper_never_echoes_endpoint_credentials(tmp_path):
    """A mistyped fstab option is quoted back, but not the password in its URL."""
    endpoint = credentialed("http://127.0.0.1:9")
    argv = [sys.executable, "-m", "snapfs.cli.mount_helper", "s3://bucket/store", str(tmp_path)]
    proc = subprocess.run(
        [*argv, "-o", f"endpointurl={endpoint}"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "unknown mount option(s) endpointurl=http://***@127.0.0.1:9 " in proc.stderr
    assert URL_PASSWORD not in proc.stderr + proc.stdout


# --- the sinks themselves -----------------------------------------------------------------------------


def test_redact_masks_url_credentials_and_secret_values():
    from snapfs.logs import redact

    assert redact("at http://user:pw@127.0.0.1:9/b?x=1") == "at http://***@127.0.0.1:9/b?x=1"
    assert redact("s3+https://token@host/") == "s3+https://***@host/"
    assert redact("password=hunter2 next") == "password=*** next"
    assert redact("mail user@example.com, http://host/a@b") == (
        "mail user@example.com, http://host/a@b"
    )


def test_background_logging_goes_to_syslog_redacted_and_once(tmp_path):
    """A background mount without --log-file logs to syslog only, through the same redaction."""
    import socket

    address = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(address))
        syslog.settimeout(10)
        code = (
            "import logging\n"
            "from snapfs import logs\n"
            f"logs.SYSLOG_ADDRESS = {str(address)!r}\n"
            "logs.configure('info', background=True)\n"
            f"logging.getLogger('snapfs.fs').warning('at http://u:{URL_PASSWORD}@h/ "
            f"password={PASSWORD}')\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # no terminal in the background: syslog is the one sink
        record = syslog.recv(65536).decode()
        syslog.settimeout(0.2)
        with pytest.raises(TimeoutError):
            syslog.recv(65536)  # once
    assert URL_PASSWORD not in record and PASSWORD not in record
    assert record.endswith("WARNING: snapfs.fs: at http://***@h/ password=***\x00")


def test_debug_traceback_is_redacted(monkeypatch, capsys, vectors):
    """--debug adds the traceback, but a secret in an exception still never reaches stderr.

    No real part raises an error that carries a secret any more, so one is injected."""
    from snapfs import cli
    from snapfs.cli import browse
    from snapfs.errors import SnapfsError

    def failing(args):
        raise SnapfsError("cannot reach http://user:tb-secret@127.0.0.1:1 (password=tb-secret)")

    monkeypatch.setattr(browse, "cmd_snapshots", failing)
    assert cli.main(["--debug", "snapshots", str(vectors / "datastore")]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "tb-secret" not in err

    def buggy(args):
        raise RuntimeError("password=tb-secret")

    monkeypatch.setattr(browse, "cmd_snapshots", buggy)
    assert cli.main(["snapshots", str(vectors / "datastore")]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "RuntimeError" in err and "tb-secret" not in err
