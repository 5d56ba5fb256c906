"""verify on a real Dask cluster (LocalCluster, 2 worker processes) against SeaweedFS.

The cluster's report must be the single-process report, to the chunk: on a store with a corrupt
chunk, a missing chunk and an encrypted group (the workers unlock the key file themselves, with
the password from their own environment), with a worker killed mid-run, in slices, and after a
run interrupted with Ctrl-C. A delaying proxy in front of SeaweedFS makes each request slow enough
that there is a "mid-run" to act in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.delayproxy import DelayProxy
from support.mounting import SNAPFS, snapfs
from support.s3server import BUCKET, READER_SECRET, free_port, upload_datastore
from support.vectors import VECTOR_PASSWORD
from support.verify_reports import ENC, V1, bad_chunks, comparable, damage_golden

pytestmark = pytest.mark.slow

WAIT = 120.0


@pytest.fixture(scope="module")
def damaged_bucket(s3server, vectors, tmp_path_factory) -> dict:
    """The golden datastore with a flipped chunk and a missing one, uploaded to the bucket."""
    store = tmp_path_factory.mktemp("verify-cluster") / "store"
    shutil.copytree(vectors / "datastore", store)
    flipped, gone = damage_golden(store)
    name = f"verify-cluster{os.getpid()}"
    upload_datastore(s3server.client(), BUCKET, name, store)
    port = int(s3server.endpoint.rsplit(":", 1)[1].strip("/"))
    proxy = DelayProxy("127.0.0.1", ("127.0.0.1", port), delay=0.04)
    keyfile = vectors / "keys" / "key-scrypt.json"
    env = {**s3server.reader_env(), "SNAPFS_KEY_PASSWORD": VECTOR_PASSWORD.decode()}
    yield {
        "source": f"s3://{BUCKET}/{name}",
        "fast": ["--endpoint-url", s3server.endpoint, "--path-style"],
        "slow": ["--endpoint-url", f"http://127.0.0.1:{proxy.port}", "--path-style"],
        "key": ["--keyfile", str(keyfile)],
        "env": env,
        "flipped": flipped,
        "gone": gone,
    }
    proxy.close()


@pytest.fixture(scope="module")
def cluster(damaged_bucket):
    """Two worker processes whose S3 credentials and key password come from their environment."""
    from distributed import Client, LocalCluster

    worker_env = {
        k: v
        for k, v in damaged_bucket["env"].items()
        if k.startswith("AWS_") or k == "SNAPFS_KEY_PASSWORD"
    }
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env=worker_env,
        ) as local,
        Client(local) as client,
    ):
        yield local, client


def _verify(bucket: dict, *args: str, link: str = "fast") -> tuple[int, dict, str]:
    done = snapfs(
        "verify",
        bucket["source"],
        *bucket[link],
        *bucket["key"],
        "--json",
        *args,
        env=bucket["env"],
        timeout=WAIT,
    )
    assert READER_SECRET not in done.stdout + done.stderr
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


@pytest.fixture(scope="module")
def reference(damaged_bucket) -> dict:
    """What one process finds: the report every other run must equal."""
    rc, report, _ = _verify(damaged_bucket, "--workers", "1")
    assert rc == 1
    assert (V1, damaged_bucket["flipped"], "corrupt") in bad_chunks(report)
    assert (ENC, damaged_bucket["gone"], "missing") in bad_chunks(report)
    assert all(s["content_verified"] for s in report["snapshots"])  # the key was used
    return report


def test_the_cluster_reports_what_one_process_does(damaged_bucket, cluster, reference):
    local, _ = cluster
    rc, report, _ = _verify(damaged_bucket, "--cluster", local.scheduler_address)
    assert rc == 1
    assert comparable(report) == comparable(reference)
    assert report["workers"].startswith(f"Dask scheduler {local.scheduler_address}")


def test_a_worker_killed_mid_run_loses_no_shard_and_counts_none_twice(
    damaged_bucket, cluster, reference, tmp_path
):
    local, client = cluster
    state = tmp_path / "verify.state"
    with _running_past_three_shards(
        damaged_bucket, state, "--cluster", local.scheduler_address
    ) as run:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        out, err = run.communicate(timeout=WAIT)
    assert run.returncode == 1, err
    report = json.loads(out)
    assert comparable(report) == comparable(reference)
    numbers = [json.loads(line)["shard"] for line in state.read_text().splitlines()[1:-1]]
    assert len(numbers) == len(set(numbers)) == reference["shards"]
    client.wait_for_workers(2, timeout=WAIT)  # the nanny brought the worker back


def test_slices_on_the_cluster_add_up_to_the_whole(damaged_bucket, cluster, reference):
    local, _ = cluster
    parts = [
        _verify(damaged_bucket, "--cluster", local.scheduler_address, "--subset", f"{n}/3")[1]
        for n in (1, 2, 3)
    ]
    assert sum(p["chunks_checked"] for p in parts) == reference["chunks_checked"]
    assert sum(p["shards"] for p in parts) >= reference["shards"]
    assert set().union(*(bad_chunks(p) for p in parts)) == bad_chunks(reference)


def test_an_interrupted_run_continues_where_it_stopped(damaged_bucket, reference, tmp_path):
    state = tmp_path / "verify.state"
    with _running_past_three_shards(damaged_bucket, state, "--workers", "2") as run:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=WAIT)
    assert run.returncode == 130, err
    assert f"finished shards are kept in {state}" in err
    assert "Traceback" not in err
    finished = len(state.read_text().splitlines()) - 1
    assert 3 <= finished < reference["shards"]
    rc, report, _ = _verify(damaged_bucket, "--workers", "2", "--resume", str(state), link="slow")
    assert rc == 1
    assert comparable(report) == comparable(reference)
    assert report["shards_resumed"] == finished


def test_an_unreachable_scheduler_is_one_line(damaged_bucket):
    started = time.monotonic()
    done = snapfs(
        "verify",
        damaged_bucket["source"],
        *damaged_bucket["fast"],
        "--cluster",
        f"tcp://127.0.0.1:{free_port()}",
        env=damaged_bucket["env"],
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert time.monotonic() - started < 60


@contextlib.contextmanager
def _running_past_three_shards(bucket: dict, state: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`verify --json --resume STATE` over the slow link with `args`, once 3 shards are done."""
    cmd = [*SNAPFS, "verify", bucket["source"], *bucket["slow"], *bucket["key"], "--json", *args]
    with subprocess.Popen(
        [*cmd, "--resume", str(state)],
        env=bucket["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_heard,
    ) as run:
        _wait_for_shards(state, 3, run)
        yield run


def _ctrl_c_heard() -> None:
    """In the child before exec: SIGINT back to its default. A suite started in the background by
    a non-interactive shell ignores SIGINT, the child inherits that, and Python then raises no
    KeyboardInterrupt: the run would go on to its end and the test could not interrupt it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_shards(state: Path, count: int, run: subprocess.Popen) -> None:
    """Until the state file holds `count` finished shards (polling the file the run writes)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        if state.exists() and len(state.read_text().splitlines()) > count:
            return
        time.sleep(0.05)
    pytest.fail(f"the verify did not finish {count} shards in {WAIT} s")
