"""S3 over HTTPS with a private CA: SeaweedFS behind a TLS-terminating proxy whose certificates a
CA made in the test signs.

The right CA (--ca-bundle or AWS_CA_BUNDLE) reads the bucket; another CA, the system's store, or a
certificate for another host name fails in one line naming the endpoint and OpenSSL's reason, and
no request ever reaches the server (never a fallback to plain HTTP or to no check);
--no-verify-tls reads, with one warning line. The secret key is in no message.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from support.certs import Authority, make_authority
from support.faultproxy import FaultProxy, tls_context
from support.s3server import READER_SECRET
from support.vectors import IMAGE_SHA256

pytestmark = pytest.mark.slow

IMAGE = ("vm/100/2024-06-01T10:00:00Z", "drive-scsi0.img")


@pytest.fixture(scope="module")
def authority() -> Authority:
    return make_authority("snapfs test CA")


@pytest.fixture(scope="module")
def pems(authority, tmp_path_factory):
    """PEM files: the right CA, another CA (same name, other key), and the folder they are in."""
    folder = tmp_path_factory.mktemp("pki")
    (folder / "ca.pem").write_bytes(authority.pem)
    (folder / "other-ca.pem").write_bytes(make_authority("snapfs test CA").pem)
    return folder


def _proxy(server, authority: Authority, hosts: list[str], folder) -> Iterator[FaultProxy]:
    url = urlsplit(server.endpoint)
    cert, key = authority.issue(hosts)
    proxy = FaultProxy((url.hostname, url.port), tls=tls_context(cert, key, folder))
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def https(s3server, s3_vectors, authority, tmp_path_factory) -> Iterator[FaultProxy]:
    """HTTPS for 127.0.0.1, with a certificate the test CA signed."""
    yield from _proxy(s3server, authority, ["127.0.0.1"], tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def https_other_host(s3server, s3_vectors, authority, tmp_path_factory) -> Iterator[FaultProxy]:
    """The same CA's certificate, but for s3.other.example: right CA, wrong host."""
    yield from _proxy(s3server, authority, ["s3.other.example"], tmp_path_factory.mktemp("other"))


def run_snapfs(server, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = server.reader_env()
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "snapfs", *args], capture_output=True, env=env, timeout=120
    )


def cat_image(server, source: str, endpoint: str, *options: str, env_extra=None):
    return run_snapfs(
        server, "cat", source, *IMAGE, "--endpoint-url", endpoint, *options, env_extra=env_extra
    )


def one_line(result: subprocess.CompletedProcess, code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    stderr = result.stderr.decode()
    assert READER_SECRET not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_right_ca_reads_by_option_and_by_environment(s3server, s3_vectors, https, pems):
    by_option = cat_image(s3server, s3_vectors, https.endpoint, "--ca-bundle", str(pems / "ca.pem"))
    assert by_option.returncode == 0, by_option.stderr
    assert hashlib.sha256(by_option.stdout).hexdigest() == IMAGE_SHA256
    assert by_option.stderr == b""
    by_env = cat_image(
        s3server, s3_vectors, https.endpoint, env_extra={"AWS_CA_BUNDLE": str(pems / "ca.pem")}
    )
    assert by_env.returncode == 0, by_env.stderr
    assert hashlib.sha256(by_env.stdout).hexdigest() == IMAGE_SHA256
    assert any(method == "GET" and ".chunks/" in target for method, target in https.requests)


@pytest.mark.parametrize(
    "trust",
    [
        pytest.param(("--ca-bundle", "other-ca.pem"), id="other-ca-option"),
        pytest.param(("AWS_CA_BUNDLE", "other-ca.pem"), id="other-ca-environment"),
        pytest.param((None, None), id="system-store"),
    ],
)
def test_wrong_ca_fails_in_one_line_without_a_request(s3server, s3_vectors, https, pems, trust):
    how, name = trust
    options = ["--ca-bundle", str(pems / name)] if how == "--ca-bundle" else []
    env = {"AWS_CA_BUNDLE": str(pems / name)} if how == "AWS_CA_BUNDLE" else {}
    before = len(https.requests)
    result = cat_image(s3server, s3_vectors, https.endpoint, *options, env_extra=env)
    line = one_line(result)
    assert line == (
        f"snapfs: error: {s3_vectors}: TLS certificate check failed for {https.endpoint}: "
        "certificate verify failed: unable to get local issuer certificate "
        "(give the endpoint's CA with --ca-bundle)"
    )
    assert result.stdout == b""
    assert len(https.requests) == before  # no request got through: no fallback of any kind


@pytest.mark.parametrize("by_name", [False, True], ids=["ip", "dns-name"])
def test_certificate_for_another_host_fails_in_one_line(
    s3server, s3_vectors, https, https_other_host, pems, by_name
):
    """A certificate for s3.other.example reached as 127.0.0.1 (urllib3 checks IPs), and one for
    127.0.0.1 reached as localhost."""
    proxy = https if by_name else https_other_host
    endpoint = proxy.endpoint.replace("127.0.0.1", "localhost") if by_name else proxy.endpoint
    before = len(proxy.requests)
    result = cat_image(
        s3server, s3_vectors, endpoint, "--path-style", "--ca-bundle", str(pems / "ca.pem")
    )
    line = one_line(result)
    assert line.startswith(
        f"snapfs: error: {s3_vectors}: TLS certificate check failed for {endpoint}: "
        "certificate verify failed: "
    )
    reason = (
        "hostname 'localhost' doesn't match '127.0.0.1'"
        if by_name
        else "hostname '127.0.0.1' doesn't match 's3.other.example'"
    )
    assert reason in line
    assert line.endswith("(the certificate is for another host name)")
    assert len(proxy.requests) == before


def test_plain_http_to_an_https_endpoint_is_not_retried_as_anything_else(
    s3server, s3_vectors, https
):
    """http:// to a TLS port: the server hangs up on the plain request; nothing is read."""
    plain = https.endpoint.replace("https://", "http://")
    before = len(https.requests)
    result = run_snapfs(s3server, "snapshots", s3_vectors, "--endpoint-url", plain)
    line = one_line(result)
    assert f"cannot reach S3 endpoint {plain} (ConnectionClosedError)" in line
    assert result.stdout == b"" and len(https.requests) == before


def test_no_verify_tls_reads_and_warns_once(s3server, s3_vectors, https_other_host):
    result = cat_image(s3server, s3_vectors, https_other_host.endpoint, "--no-verify-tls")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == IMAGE_SHA256
    line = one_line(result, 0)
    assert line == (
        f"snapfs: WARNING: {s3_vectors}: --no-verify-tls: the TLS certificate of "
        f"{https_other_host.endpoint} is not checked; anyone on the network path can read and "
        "change what snapfs reads"
    )


def test_bad_tls_options_are_usage_errors(s3server, s3_vectors, https, pems, tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    line = one_line(cat_image(s3server, s3_vectors, https.endpoint, "--ca-bundle", str(missing)), 2)
    assert (
        line
        == f"snapfs: error: --ca-bundle {missing}: no such file (a PEM file of CA certificates)"
    )
    line = one_line(
        cat_image(s3server, s3_vectors, https.endpoint, env_extra={"AWS_CA_BUNDLE": str(missing)}),
        2,
    )
    assert f"AWS_CA_BUNDLE {missing}: no such file" in line
    line = one_line(
        cat_image(
            s3server,
            s3_vectors,
            https.endpoint,
            "--ca-bundle",
            str(pems / "ca.pem"),
            "--no-verify-tls",
        ),
        2,
    )
    assert line == "snapfs: error: --ca-bundle and --no-verify-tls contradict each other"
