"""Helpers shared by the tests, imported as `support.<module>` (pyproject puts tests/ on sys.path).

Test modules import helpers from here, never from each other:
* vectors: where the golden vectors live (SNAPFS_VECTORS), and their password;
* mounting: run the CLI as users do, mount and always unmount, a small tmpfs;
* s3server: real S3 servers (SeaweedFS, moto) holding datastores (a pytest plugin: tests/conftest.py
  loads it);
* delayproxy: a TCP proxy adding latency on the way to it (also used by scripts/bench);
* faultproxy: an HTTP proxy in front of it answering some requests wrongly, optionally over TLS;
* fs_model: the mount's model and adapter without mounting;
* golden_listing: the golden pxar listing, checked against a mounted archive;
* mini_pxar: an independent pxar emitter; stores: datastores holding given archive bytes;
* restore_listing: a restored tree in the golden listing's format;
* guest: a tiny bootable Linux guest and its disk;
* nbd_client: a minimal NBD client; nbd_serving: an NBD server in a thread, `snapfs nbd` run;
* certs: certificate authorities made in the test, with server and client certificates, for the
  TLS tests (NBD, S3 over HTTPS);
* dying_work: work whose worker process dies, for the process pool tests.
"""
