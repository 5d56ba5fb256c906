"""verify in shards: subsets, the shard plan, the worker pools, --resume.

The local pools here (this process, 2 spawned processes) must give exactly the report the
in-process verify gives, on the golden datastore with a corrupt chunk, a missing chunk and an
encrypted group; tests/store/test_verify_cluster.py does the same on a Dask cluster over S3.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import pytest
from support.dying_work import always_die, square_or_die
from support.verify_reports import ENC, bad_chunks, comparable, damage_golden

from snapfs.cli import main
from snapfs.cluster import InlinePool, ProcessPool, ShardFailed, WorkPool, open_pool
from snapfs.errors import UsageError
from snapfs.format.crypt import CryptConfig
from snapfs.keysource import KeyOptions
from snapfs.store.backend import LocalBackend
from snapfs.store.datastore import Datastore, parse_namespace
from snapfs.store.sources import SourceOptions
from snapfs.store.workers import WorkerStore, give_key
from snapfs.verify import select_snapshots, verify
from snapfs.verify.shards import (
    MAX_WIDTH,
    MIN_WIDTH,
    PREFIXES,
    ShardContext,
    Subset,
    plan_shards,
    shard_width,
)

KEY = bytes.fromhex("6bed763d839f13dd6855e5a9f69a15628c34100da6a5030d1e0a6a1935375e5a")


@pytest.fixture
def damaged(vectors, tmp_path) -> tuple[Path, str, str]:
    """The golden datastore with one chunk of V1 flipped and one of the encrypted snapshot gone."""
    store = tmp_path / "store"
    shutil.copytree(vectors / "datastore", store)
    flipped, gone = damage_golden(store)
    return store, flipped, gone


def _run(store: Path, crypt: CryptConfig | None, pool: WorkPool | None = None, **kwargs) -> dict:
    ds = Datastore(LocalBackend(store))
    context = ShardContext(
        WorkerStore(SourceOptions(str(store)), None, crypt.fingerprint if crypt else None)
    )
    report = verify(
        ds,
        select_snapshots(ds, parse_namespace(""), None),
        crypt,
        context=context,
        pool=pool,
        **kwargs,
    )
    return comparable(report.to_dict())


# -- subsets and the shard plan


@pytest.mark.parametrize("t", [1, 2, 3, 7, 100])
def test_slices_cover_every_chunk_folder_exactly_once(t):
    slices = [Subset.parse(f"{n}/{t}").prefixes() for n in range(1, t + 1)]
    assert sum(len(s) for s in slices) == PREFIXES
    assert frozenset().union(*slices) == frozenset(range(PREFIXES))


def test_a_random_subset_is_drawn_again_from_its_seed():
    first = Subset.parse("5%")
    again = Subset("5%", first.seed)
    assert first.prefixes() == again.prefixes()
    assert len(first.prefixes()) == round(PREFIXES * 0.05)
    assert Subset.parse("5%").prefixes() != first.prefixes()  # a new run draws anew


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/70000", "x", "0%", "101%", "1/0", "-1/2"])
def test_bad_subsets_are_one_line_usage_errors(text):
    with pytest.raises(UsageError, match="--subset") as exc:
        Subset.parse(text)
    assert "\n" not in str(exc.value)


def test_each_referenced_chunk_is_in_exactly_one_shard_of_its_slice():
    referenced = {os.urandom(32): 4096 for _ in range(5000)}
    seen: list[bytes] = []
    for n in range(1, 4):
        shards = plan_shards(referenced, Subset.parse(f"{n}/3"), shard_width(len(referenced)))
        assert len({s.number for s in shards}) == len(shards)
        for shard in shards:
            assert all(d[:2].hex() in shard.prefixes for d, _ in shard.chunks)
            seen += [d for d, _ in shard.chunks]
    assert sorted(seen) == sorted(referenced)


def test_shards_hold_about_two_thousand_chunks_between_the_width_bounds():
    assert shard_width(25_000_000) == MIN_WIDTH  # a 100 TB bucket: 1,024 shards of 24,000
    assert shard_width(85) == MAX_WIDTH  # the golden store: 8 shards
    width = shard_width(200_000)
    assert MIN_WIDTH < width < MAX_WIDTH
    assert 2000 <= 200_000 * width / PREFIXES < 4000


# -- the pools give the in-process report


@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
def test_two_worker_processes_report_exactly_what_one_process_does(damaged, with_key):
    store, flipped, gone = damaged
    crypt = CryptConfig(KEY) if with_key else None
    inline = _run(store, crypt)
    with ProcessPool(2, give_key, (KEY if with_key else None,)) as pool:
        spread = _run(store, crypt, pool)
    assert spread == inline
    assert not inline["ok"]
    assert ("host/testhost/2024-06-01T11:00:00Z", flipped, "corrupt") in bad_chunks(inline)
    assert (ENC, gone, "missing") in bad_chunks(inline)
    assert inline["chunks_checked"] == inline["chunks_referenced"]


def test_slices_together_check_what_a_whole_run_checks(damaged):
    store, _, _ = damaged
    crypt = CryptConfig(KEY)
    whole = _run(store, crypt)
    parts = [_run(store, crypt, subset=f"{n}/3") for n in (1, 2, 3)]
    assert sum(p["chunks_checked"] for p in parts) == whole["chunks_checked"]
    assert set().union(*(bad_chunks(p) for p in parts)) == bad_chunks(whole)
    assert all(bad_chunks(p) <= bad_chunks(whole) for p in parts)


def test_a_dead_worker_process_has_its_items_run_again(tmp_path):
    for item in (3, 11):
        (tmp_path / f"die-{item}").touch()
    with ProcessPool(2) as pool:
        outcomes = list(pool.run(partial(square_or_die, str(tmp_path)), list(range(20))))
    assert sorted(outcomes) == [(i, i * i) for i in range(20)]  # each once, none lost


def test_a_worker_that_always_dies_is_reported_not_retried_forever():
    with ProcessPool(2) as pool:
        outcomes = list(pool.run(always_die, [1, 2, 3]))
    assert sorted(i for i, _ in outcomes) == [1, 2, 3]
    assert all(isinstance(o, ShardFailed) for _, o in outcomes)
    assert "died" in str(outcomes[0][1])


def test_pool_options_are_checked():
    assert isinstance(open_pool(1, None), InlinePool)
    with pytest.raises(UsageError, match="--workers"):
        open_pool(0, None)
    with pytest.raises(UsageError, match="exclude"):
        open_pool(2, "tcp://127.0.0.1:1")


def test_cluster_without_dask_says_how_to_install_it(vectors, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # as if not installed
    rc = main(["verify", str(vectors / "datastore"), "--cluster", "tcp://127.0.0.1:1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'snapfs[cluster]'" in err and len(err.splitlines()) == 1


def test_the_task_carries_no_secret(tmp_path):
    import pickle

    context = ShardContext(
        WorkerStore(
            SourceOptions("s3://bucket/store"), KeyOptions(str(tmp_path / "key.json")), b"f" * 32
        )
    )
    assert KEY not in pickle.dumps(context)
    assert KEY.hex().encode() not in pickle.dumps(context)


# -- --resume


class _Interrupted(WorkPool):
    """Ctrl-C after `after` shards finished (the real signal is in test_verify_cluster.py)."""

    workers = 1
    where = "this process"

    def __init__(self, after: int) -> None:
        self.after = after
        self.ran: list[int] = []

    def run(self, work, items):
        for item, outcome in InlinePool().run(work, items):
            if len(self.ran) == self.after:
                raise KeyboardInterrupt
            self.ran.append(item.number)
            yield item, outcome


def test_a_resumed_run_checks_only_what_is_left_and_reports_the_whole(damaged, tmp_path):
    store, _, _ = damaged
    crypt = CryptConfig(KEY)
    state = str(tmp_path / "verify.state")
    whole = _run(store, crypt)
    with pytest.raises(KeyboardInterrupt):
        _run(store, crypt, _Interrupted(5), state_path=state)
    with open(state, "ab") as f:
        f.write(b'{"shard": 9')  # the crash cut the next line short
    counting = _Interrupted(10**6)
    resumed = _run(store, crypt, counting, state_path=state)
    assert resumed == whole
    assert len(counting.ran) == whole["shards"] - 5
    # The run is complete: the next one with the same file starts afresh.
    again = _Interrupted(10**6)
    assert _run(store, crypt, again, state_path=state) == whole
    assert len(again.ran) == whole["shards"]


def test_a_state_file_of_another_run_is_refused(damaged, tmp_path):
    store, _, _ = damaged
    state = str(tmp_path / "verify.state")
    with pytest.raises(KeyboardInterrupt):
        _run(store, None, _Interrupted(2), state_path=state, subset="1/2")
    with pytest.raises(UsageError, match="another verify run: subset '1/2' \\(now '2/2'\\)"):
        _run(store, None, state_path=state, subset="2/2")


def test_a_changed_shard_is_checked_again_on_resume(damaged, tmp_path):
    """Chunks no longer referenced since a shard finished (a prune) must not count in its old
    result; chunks referenced anew must be checked: a shard is reused only if unchanged."""
    store, _, _ = damaged
    state = str(tmp_path / "verify.state")
    shards = _run(store, None)["shards"]
    with pytest.raises(KeyboardInterrupt):
        _run(store, None, _Interrupted(shards - 1), state_path=state)  # all but one done
    shutil.rmtree(store / "ct")  # its chunks are in finished shards now
    counting = _Interrupted(10**6)
    report = _run(store, None, counting, state_path=state)
    assert report == _run(store, None)  # no result of a shard that is gone counts
    assert 1 <= len(counting.ran) < report["shards"]  # the unchanged finished shards are reused


def test_a_finished_shard_that_would_check_other_chunks_runs_again(damaged, tmp_path):
    store, _, _ = damaged
    state = Path(tmp_path / "verify.state")
    with pytest.raises(KeyboardInterrupt):
        _run(store, None, _Interrupted(4), state_path=str(state))
    lines = state.read_text().splitlines()
    changed = json.loads(lines[2])
    changed["fingerprint"] = "0" * 32  # as if a new backup had added a chunk to its folders
    state.write_text("\n".join([*lines[:2], json.dumps(changed), *lines[3:]]) + "\n")
    counting = _Interrupted(10**6)
    report = _run(store, None, counting, state_path=str(state))
    assert report == _run(store, None)
    assert changed["shard"] in counting.ran
    assert len(counting.ran) == report["shards"] - 3
