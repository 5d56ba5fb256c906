"""`snapfs nbd`: serve backed-up disk images over NBD, read-only or with a copy-on-write overlay.

QEMU (`-drive file=nbd://127.0.0.1:10809/drive-scsi0.img`), qemu-img, nbdinfo/nbdcopy attach
without FUSE, root or a loop device. Reads go through the same Datastore, ChunkReader and ChunkCache
as the mount, so a local datastore, S3 and the on-disk cache all work, and the chunks a booting
guest reads stay decoded in memory.

protocol.py holds the wire format, server.py the server, exports.py what it serves, overlay.py the
copy-on-write file, listen.py the sockets, tls.py TLS (STARTTLS, client certificates). The `snapfs nbd` command itself is snapfs/cli/nbd.py.
"""

#: Blocking chunk fetches in flight per server (S3 latency hides behind them). Named here, not in
#: server.py, so that the CLI can give it as `--workers`' default without importing the server:
#: TLS and x509 came along, a third of the start-up time of every snapfs command.
DEFAULT_WORKERS = 8
