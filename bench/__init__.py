"""The benchmarks, one package; scripts/bench* are their entry points (same names, same options).

compare (scripts/bench): snapfs against `restic mount` and `borg mount` on the same data;
read (scripts/bench-read): streaming decode against this machine's limit;
mount (scripts/bench-mount): the FUSE mount against its ceilings, listing speed, memory;
nbd (scripts/bench-nbd): the NBD export against the FUSE file, and a guest booting from a backup;
pxar (scripts/bench-pxar): the pxar reader at scale;
verify (scripts/bench-verify): `snapfs verify` on 1 and 2 cores and on Dask, against the decode limit.
scripts/bench-restore is a shell script (it times the CLI, `cp -a` and `snapfs cat`).
Not part of the snapfs distribution (pyproject packages only snapfs*).
"""
