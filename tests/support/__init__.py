"""Helpers shared by the tests, imported as `support.<module>` (pyproject puts tests/ on sys.path).

mounting: run the CLI, mount and always unmount, tmpfs; s3server: the real S3 server (also a pytest
plugin, its fixtures loaded by tests/conftest.py); vectors: where the golden vectors live; the
others are named for what they build or check.
"""
