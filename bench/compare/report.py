"""Ratios, the markdown table, the JSON object, the PNG chart, the machine's description.

Every ratio is oriented so that > 1 means snapfs is better: value/peer for "higher is better"
figures, peer/value for "lower is better" ones.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections import Counter

from snapfs.store.cache import DEFAULT_CACHE_SIZE

from .measure import BENCHMARKS, BY_ID
from .s3 import OPERATIONS

PEERS = ("restic", "borg")
#: The speed goals, line by line: (benchmarks, minimum ratio to the better peer, label).
PEER_GOALS = (
    (("find-stat-cold", "find-stat-warm"), 2.0, "find + stat, cold and warm"),
    (("ls-l-bigdir-cold", "ls-l-bigdir-warm"), 2.0, "ls -l of the 20k directory, cold and warm"),
    (("image-seq-cold",), 2.0, "sequential image read, cold"),
    (("tree-tar-cold", "tree-tar-warm"), 2.0, "tar of all files, cold and warm"),
    (("image-rand4k-cold", "image-rand4k-spread-cold"), 1.0, "random 4 KiB reads, cold"),
    (("rss-max",), 1.0, "peak RSS, whole run"),
    (("restore-tree", "restore-image"), 1.5, "restore of the tree and of the image"),
)
#: Shares of this machine's limits: (benchmark, limit line, minimum share).
LIMIT_GOALS = (
    ("image-seq-cold", "decode", 0.8),
    ("image-rand4k-spread-cold", "chunk-decode", 0.9),
    ("restore-image", "decode", 0.8),
)


def ratios(results: list[dict]) -> dict[str, float]:
    value = {(r["benchmark"], r["tool"]): r for r in results}
    out: dict[str, float] = {}
    for bench in BENCHMARKS:
        ours = value.get((bench.id, "snapfs"))
        for peer in PEERS:
            theirs = value.get((bench.id, peer))
            if not ours or not theirs or not ours["value"] or not theirs["value"]:
                continue
            if not (ours["verified"] and theirs["verified"]):
                continue
            r = ours["value"] / theirs["value"]
            out[f"{bench.id}/{peer}"] = round(r if bench.better == "higher" else 1 / r, 4)
    return out


def goals(
    results: list[dict],
    rat: dict[str, float],
    peers: list[str],
    limits: dict | None = None,
    s3: dict | None = None,
) -> list[tuple[str, bool | None]]:
    """(goal text, met) for each goal of the issue; None when not measured in this run."""
    value = {(r["benchmark"], r["tool"]): r["value"] for r in results}
    out: list[tuple[str, bool | None]] = []
    for benches, least, label in PEER_GOALS:
        got = [rat.get(f"{b}/{p}") for b in benches for p in peers]
        text = f"{label}: >= {least:g}x the better peer"
        if not peers or any(g is None for g in got):
            out.append((text, None))
            continue
        worst = min(got)
        out.append((f"{text} (lowest ratio {worst:.2f})", worst >= least))
    warm = value.get(("find-stat-warm", "snapfs"))
    out.append(
        ("find + stat warm <= 0.35 s", None)
        if warm is None
        else (f"find + stat warm <= 0.35 s ({warm:.2f} s)", warm <= 0.35)
    )
    rss = value.get(("rss-max", "snapfs"))
    out.append(
        ("peak RSS <= 256 MiB", None)
        if rss is None
        else (f"peak RSS <= 256 MiB ({rss:.0f} MiB)", rss <= 256)
    )
    shares = {(c["benchmark"], c["limit"]): c["ratio"] for c in (limits or {}).get("compared", [])}
    for bench, limit, least in LIMIT_GOALS:
        share = shares.get((bench, limit))
        text = f"{BY_ID[bench].title} >= {least:g} of the {limit} limit"
        out.append((text, None) if share is None else (f"{text} ({share:.2f})", share >= least))
    if s3:
        for key, kept in sorted(s3.get("ratios", {}).items()):
            op, rtts = key.split("/")
            what = f"{OPERATIONS.get(op, op)}, {rtts.split('-vs-')[0]} added"
            out.append((f"{what}: >= 0.8 of the 0 ms figure ({kept:.2f})", kept >= 0.8))
        gets = [line.get("gets_per_unique_chunk") for line in s3.get("results", [])]
        if gets and all(g is not None for g in gets):
            out.append(
                (f"S3: 1 GET per distinct chunk (at most {max(gets):.2f})", max(gets) <= 1.0)
            )
    first = value.get(("mount-first-ls", "snapfs"))
    out.append(
        ("snapfs mount to first listing <= 1 s", None)
        if first is None
        else (f"snapfs mount to first listing <= 1 s ({first:.2f} s)", first <= 1.0)
    )
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "failed"
    if unit in ("MB/s", "IOPS", "MiB", "chunks/s", "entries/s"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def markdown_table(results: list[dict], rat: dict[str, float], tools: list[str]) -> str:
    peers = [t for t in tools if t != "snapfs"]
    head = ["benchmark", "unit", *tools, *[f"snapfs / {p}" for p in peers]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    value = {(r["benchmark"], r["tool"]): r for r in results}
    for bench in BENCHMARKS:
        if not any((bench.id, t) in value for t in tools):
            continue
        cells = [bench.title, f"{bench.unit} ({bench.better} is better)"]
        for t in tools:
            r = value.get((bench.id, t))
            if r is None:
                cells.append("-")
            else:
                cells.append(
                    _fmt(r["value"], bench.unit) + ("" if r["verified"] else " (NOT VERIFIED)")
                )
        for p in peers:
            x = rat.get(f"{bench.id}/{p}")
            cells.append("-" if x is None else (f"**{x:.2f}x**" if x >= 1 else f"{x:.2f}x"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _line_value(line: dict | None) -> str:
    if line is None:
        return "-"
    return _fmt(line["value"], line["unit"]) + ("" if line["verified"] else " (NOT VERIFIED)")


def limits_table(section: dict) -> str:
    """The limits, each with the snapfs figures held against it and their share of it."""
    lines = [
        "| limit | unit | value | snapfs figure held against it | snapfs | snapfs / limit |",
        "|---|---|---|---|---|---|",
    ]
    rows = {}
    for c in section["compared"]:
        rows.setdefault(c["limit"], []).append(c)
    for limit in section["results"]:
        against = rows.get(limit["line"]) or [None]
        for i, c in enumerate(against):
            head = [limit["title"], limit["unit"], _line_value(limit)] if i == 0 else ["", "", ""]
            if c is None:
                tail = ["(not measured in this run)", "-", "-"]
            else:
                tail = [
                    BY_ID[c["benchmark"]].title,
                    _fmt(c["snapfs"], limit["unit"]),
                    _ratio(c["ratio"]),
                ]
            lines.append("| " + " | ".join(head + tail) + " |")
    return "\n".join(lines)


def s3_table(section: dict) -> str:
    """Each S3 operation at each added round trip, the throughput kept, and GETs per chunk."""
    lo, hi = section["rtt_ms"][0], section["rtt_ms"][-1]
    by = {line["line"]: line for line in section["results"]}
    rtts = " | ".join(f"{rtt} ms" for rtt in section["rtt_ms"])
    lines = [
        f"| snapfs over S3 | unit | {rtts} | {hi} ms / {lo} ms | chunk GETs per distinct chunk |",
        "|---|---|" + "---|" * len(section["rtt_ms"]) + "---|---|",
    ]
    for op, title in OPERATIONS.items():
        got = [by.get(f"{op}-{rtt}ms") for rtt in section["rtt_ms"]]
        if not any(got):
            continue
        cells = [title, "MB/s"]
        for line in got:
            cell = _line_value(line)
            if line and line.get("seconds"):
                cell += f" ({line['seconds']:.2f} s)"
            cells.append(cell)
        cells.append(_ratio(section["ratios"].get(f"{op}/{hi}ms-vs-{lo}ms")))
        cells.append(
            " / ".join(
                "-"
                if not line or "gets_per_unique_chunk" not in line
                else f"{line['gets_per_unique_chunk']:.2f}"
                for line in got
            )
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def serve_table(section: dict) -> str:
    """Each download through `snapfs serve` beside its command-line reference, and the ratio."""
    by = {line["line"]: line for line in section["results"]}
    lines = [
        "| through snapfs serve | MB/s | reference | MB/s | serve / reference (goal ≥ 0.8) |",
        "|---|---|---|---|---|",
    ]
    for served, reference in (
        ("serve-image-cold", "cat-image-cold"),
        ("serve-zip-tree-cold", "restore-tree-cold"),
    ):
        a, b = by.get(served), by.get(reference)
        if not a and not b:
            continue
        ratio = section["ratios"].get(f"{served}/{reference}")
        cells = [
            a["title"] if a else served,
            _line_value(a),
            b["title"] if b else reference,
            _line_value(b),
            _ratio(ratio),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rss = by.get("serve-zip-rss")
    if rss:
        lines.append(f"| {rss['title']} | {_line_value(rss)} | | | |")
    return "\n".join(lines)


def split_table(section: dict) -> str:
    """Each split-archive line beside the unified archive's figure of the same run."""
    lines = [
        "| the tree as a split archive | unit | split | unified | split / unified |",
        "|---|---|---|---|---|",
    ]
    for line in section["results"]:
        cells = [
            line["title"],
            line["unit"],
            _line_value(line),
            _line_value(section["unified"].get(line["line"])),
            _ratio(section["ratios"].get(line["line"])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rat: dict[str, float], peers: list[str], path: str, title: str) -> None:
    """Horizontal bars of snapfs/peer per benchmark, log scale, lines at 1x (parity) and 2x (goal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    benches = [b for b in BENCHMARKS if any(f"{b.id}/{p}" in rat for p in peers)]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(benches) + 1.6), dpi=110)
    height = 0.8 / max(1, len(peers))
    colors = {"restic": "#3b7dd8", "borg": "#e08a2c"}
    for i, peer in enumerate(peers):
        ys = [n + (i - (len(peers) - 1) / 2) * height for n in range(len(benches))]
        xs = [rat.get(f"{b.id}/{peer}", float("nan")) for b in benches]
        ax.barh(ys, xs, height=height, color=colors.get(peer), label=f"snapfs / {peer}")
        for y, x in zip(ys, xs, strict=True):
            if x == x:  # not NaN
                ax.text(x * 1.04, y, f"{x:.2f}x", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=1)
    ax.axvline(2, color="green", linewidth=1, linestyle="--", label="goal: 2x")
    ax.set_yticks(range(len(benches)))
    ax.set_yticklabels([b.title for b in benches], fontsize=8)
    ax.invert_yaxis()
    finite = [v for v in rat.values() if v > 0]
    lo = min([0.5, *finite]) / 1.5
    hi = max([4.0, *finite]) * 1.8
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("snapfs advantage (x, log scale; > 1 = snapfs better)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine(work: str) -> dict[str, str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    os_name = "?"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            os_name = m.group(1) if m else "?"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "os": f"{os_name}, kernel {platform.release()}",
        "disk": " ".join(_cmd(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", work]).split()),
        "python": platform.python_version(),
    }


def markdown(doc: dict, png_name: str | None, notes: str | None) -> str:
    p = doc["params"]
    tools = p["tools"]
    peers = [t for t in tools if t != "snapfs"]
    m = doc["machine"]
    out = [
        "# snapfs vs restic mount vs borg mount",
        "",
        f"Measured in one run, interleaved, on the same data, by `{p['command']}` "
        f"({p['sizes']['name']} size{', ' + str(p['repeat']) + ' rounds, median' if p['repeat'] > 1 else ''}).",
        "",
        f"- Machine: {m['cpu']}, {m['memory']} RAM, {m['os']}; data on {m['disk']}; Python {m['python']}.",
        f"- Tools: {', '.join(p['versions'][t] for t in tools)}; each with its defaults"
        f" (snapfs: {DEFAULT_CACHE_SIZE >> 20} MiB chunk cache, archive indexes kept in the work"
        " folder; borg: unencrypted"
        " repository; restic: encrypted, as it must be, repository v2 with compression).",
        f"- Data: a {p['sizes']['image_mib']} MiB VM-like image (1 MiB regions: 40% random, 35% text, 25% zeros)"
        f" and a tree of {p['tree_files']:,} files ({p['tree_bytes'] / 1e6:,.0f} MB; lognormal sizes, mostly small,"
        f" {len(p['sizes']['large_mib'])} large files, one directory with {p['sizes']['bigdir_files']:,} entries).",
        "- Cold: the tool's own caches emptied, a fresh mount, the page cache dropped"
        " (`echo 3 > /proc/sys/vm/drop_caches`) right before the timed operation. Warm: the same operation"
        " again at once, nothing dropped (what a user sees the second time). Next mount: a fresh mount and"
        " the page cache dropped, the tool's own persistent caches kept (what a user sees the next day).",
        "- Verified: every figure comes from reads checked against the source (SHA-256 of the image and of"
        " every file, every name and size of the walk and listing, every byte of the random reads); the tar"
        " stream is parsed and each member hashed while it is read.",
        "- Ratios: > 1 means snapfs is better (value / peer for throughput, peer / value for times and memory).",
        "",
        "## Goals",
        "",
    ]
    for text, met in doc["goals"]:
        out.append(f"- {'met' if met else ('NOT met' if met is False else 'not measured')}: {text}")
    out += ["", "## Results", "", markdown_table(doc["results"], doc["ratios"], tools), ""]
    if png_name and peers:
        out += [f"![snapfs / peer ratios]({png_name})", ""]
    if doc.get("limits"):
        out += [
            "## This machine's limits",
            "",
            "Measured in the same run. Decode: the image read in process through snapfs's own"
            " `IndexStream.iter_range` with 2 workers, no FUSE, page cache dropped. Chunk decode:"
            " the image's distinct chunks fetched and decoded (zstd, SHA-256, as every read) on 2"
            " threads, cold, and the same one chunk at a time (a reader that waits for each read never has"
            " two to decode); each of the spread random reads (one per 4 MiB region, each the first"
            " in its chunk) decodes one chunk. The other cold random reads land anywhere, some in a"
            " chunk read before, which snapfs then answers from the page cache (the rest of each"
            " chunk a random read decodes is handed to it). First walk:"
            " the tree archive indexed in process as a mount's first walk indexes it"
            " (`snapfs.fs.indexing.build_index`: every chunk decoded on 2 threads, every entry"
            " parsed and stored), cold, no FUSE: a first mount's cold `find` waits for it. Index"
            " listings: every directory of that index listed in process as a walk through the"
            " mount lists them (the root's listing, then windows of 4,096 entries read ahead),"
            " cold. Null FUSE FS: `bench/nullfs.py`, pyfuse3 + trio serving"
            " from memory a file of the image's size and a tree of the bench tree's shape"
            f" ({doc['limits']['entries']:,} entries: the same directories, names and file"
            " sizes, each listing with its entries' attributes (readdirplus), each file read by"
            " inode, no open, as snapfs's are), read with the same reader, `find` and `tar` as"
            " above and checked the same way, and a directory of the big directory's size"
            " listed by the same `ls -l` (every file's SELinux label and ACLs asked for, none"
            " there, as in snapfs): the most a Python FUSE filesystem reaches here.",
            "",
            limits_table(doc["limits"]),
            "",
        ]
    if doc.get("s3"):
        out += [
            "## snapfs over S3",
            "",
            "An S3 copy of the snapfs datastore's image snapshot in SeaweedFS (`weed mini`) on this"
            " machine, reached through a delaying TCP proxy (`tests/support/delayproxy.py`) with"
            f" {' and '.join(f'{r} ms' for r in doc['s3']['rtt_ms'])} added to every round trip"
            " (latency, not a bandwidth cap); cold: fresh process, page cache dropped. GETs as"
            " the proxy saw them; 1.00 per distinct chunk = every chunk fetched once.",
            "",
            s3_table(doc["s3"]),
            "",
        ]
    if doc.get("serve"):
        out += [
            "## snapfs serve",
            "",
            "The image and the tree downloaded through `snapfs serve` (HTTP on loopback, the"
            " image by `/raw`, the tree as a streamed zip by `/zip`), each beside the command-line"
            " reader of the same data in the same round, cold (page cache dropped). The zip is"
            " extracted and every file checked; the server's peak RSS is taken over the zip alone.",
            "",
            serve_table(doc["serve"]),
            "",
        ]
    if doc.get("split"):
        out += [
            "## Split archives",
            "",
            "The same tree backed up again by `snapfs backup --split` as PBS writes it with"
            " change detection `data` or `metadata` (an `.mpxar` metadata stream and a `.ppxar`"
            " payload stream), then walked and tarred through a fresh mount, cold, checked as"
            " above; beside the unified archive's figure of the same run (> 1: the split"
            " archive is faster).",
            "",
            split_table(doc["split"]),
            "",
        ]
    if notes:
        out += [notes.strip(), ""]
    out += [
        "<details><summary>The same results as JSON (`scripts/bench --json`)</summary>",
        "",
        "```json",
        json.dumps(
            {
                "results": doc["results"],
                "ratios": doc["ratios"],
                **{k: doc[k] for k in ("limits", "s3", "serve", "split") if doc.get(k)},
            },
            indent=1,
        ),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(out)


def summarize_profile(raw_path: str, top: int = 15) -> str:
    """py-spy's raw (collapsed) stacks -> the functions with the most own and total samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";") if fr.endswith(")")]
            if not frames:
                continue
            samples += n
            own[frames[-1]] += n
            for fr in set(frames):
                total[fr] += n
    lines = [f"{samples} samples (all threads, idle excluded)", "", "own time:"]
    lines += (
        [f"  {100 * n / samples:5.1f}%  {fr}" for fr, n in own.most_common(top)] if samples else []
    )
    lines += ["", "total time (function and callees):"]
    lines += (
        [f"  {100 * n / samples:5.1f}%  {fr}" for fr, n in total.most_common(top)]
        if samples
        else []
    )
    return "\n".join(lines)


__all__ = [
    "BY_ID",
    "chart",
    "goals",
    "limits_table",
    "machine",
    "markdown",
    "markdown_table",
    "ratios",
    "s3_table",
    "serve_table",
    "split_table",
    "summarize_profile",
]
