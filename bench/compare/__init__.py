"""Side-by-side benchmarks of snapfs against `restic mount` and `borg mount` on the same data.

Entry point: scripts/bench (runs scripts/setup, then `python -m bench.compare`).
Modules: data (the data set and its manifest), tools (backup, mount, restore per tool),
measure (the benchmarks, each verifying what it read), report (ratios, table, chart).
"""
