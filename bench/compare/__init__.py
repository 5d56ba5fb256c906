"""Side-by-side benchmarks of snapfs against `restic mount` and `borg mount` on the same data.

Entry point: scripts/bench (runs scripts/setup, then `python -m bench.compare`).
Modules: data (the data set and its manifest), tools (backup, mount, restore per tool),
measure (the benchmarks, each verifying what it read), probes (dropping caches, the readers, peak
RSS, py-spy), lines (figures of snapfs alone), limits (this machine's ceilings: decode, chunk
decode, the null FUSE filesystem of bench/nullfs.py), s3 (snapfs over an S3 copy, 0 and 20 ms
added round trip), report (ratios, tables, chart).
"""
