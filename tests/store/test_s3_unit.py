"""S3 source pieces that need no server: parsing, error mapping, read-only guard, stats, rate limit."""

from __future__ import annotations

import argparse
import time

import pytest
from botocore.exceptions import ClientError

from snapfs.cli._common import add_source_options, backend_options
from snapfs.errors import NotFoundError, SnapfsError, UsageError
from snapfs.store.s3 import S3Backend, _is_group_path, parse_s3_source
from snapfs.store.s3_requests import RateLimiter, S3Settings, _NotFound, _Transient
from snapfs.store.sources import BackendOptions, open_backend
from snapfs.store.stats import PRICE_TABLES, SourceStats, build_report, estimate_cost, format_report

SECRET = "unit-secret-key-never-printed"


def _offline_backend(**settings) -> S3Backend:
    # Port 9 (discard) on loopback: nothing answers; these tests never reach the network.
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="AKIDUNIT",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    return S3Backend("bucket", "store", S3Settings(**settings), client=client, check=False)


def _client_error(status: int, code: str, **extra) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m", **extra},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
    }
    return ClientError(response, "GetObject")


def test_parse_s3_source():
    assert parse_s3_source("s3://bucket/store") == ("bucket", "store")
    assert parse_s3_source("s3://bucket/a/b/") == ("bucket", "a/b")
    for bad in ("s3://bucket", "s3://bucket/", "s3:///store", "s3://b/../x", "/local"):
        with pytest.raises(UsageError):
            parse_s3_source(bad)


def test_open_backend_rejects_other_schemes_and_opens_local(vectors):
    with pytest.raises(UsageError, match="unsupported SOURCE"):
        open_backend("gs://bucket/store")
    backend = open_backend(str(vectors / "datastore"))
    assert "vm" in backend.list_dir("").dirs


def test_source_options_parse_into_backend_options():
    parser = argparse.ArgumentParser()
    add_source_options(parser)
    args = parser.parse_args(
        [
            "--endpoint-url",
            "https://s3.example:9000",
            "--path-style",
            "--s3-connections",
            "4",
            "--rate-limit",
            "50M",
            "--cache-dir",
            "/c",
            "--cache-dir-size",
            "2G",
            "--refresh-interval",
            "30",
        ]
    )
    options = backend_options(args)
    assert options == BackendOptions(
        endpoint_url="https://s3.example:9000",
        path_style=True,
        s3_connections=4,
        rate_limit=50 << 20,
        cache_dir="/c",
        cache_dir_size=2 << 30,
        refresh_interval=30.0,
    )
    assert backend_options(parser.parse_args([])) == BackendOptions()


def test_group_paths():
    assert _is_group_path(["vm", "100"])
    assert _is_group_path(["ns", "a", "ns", "b", "host", "h"])
    assert _is_group_path(["ns", "vm", "ct", "200"])
    assert not _is_group_path(["ns", "vm", "ns"])  # child namespaces of namespace "vm"
    assert not _is_group_path(["vm"])
    assert not _is_group_path(["vm", "100", "2024-06-01T10:00:00Z"])


def test_writes_are_refused_before_any_request():
    backend = _offline_backend()
    for call in (
        lambda: backend._client.put_object(Bucket="bucket", Key="k", Body=b"x"),
        lambda: backend._client.delete_object(Bucket="bucket", Key="k"),
        lambda: backend._client.delete_objects(Bucket="bucket", Delete={"Objects": [{"Key": "k"}]}),
        lambda: backend._client.copy_object(Bucket="bucket", Key="k", CopySource="bucket/j"),
        lambda: backend._client.create_bucket(Bucket="bucket"),
    ):
        with pytest.raises(SnapfsError, match="read-only: refusing S3 operation"):
            call()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _client_error(301, "PermanentRedirect", Region="eu-central-1"),
            "wrong region .*use --region eu-central-1",
        ),
        (
            _client_error(400, "AuthorizationHeaderMalformed", Region="us-west-2"),
            "wrong region .*us-west-2",
        ),
        (_client_error(403, "AccessDenied"), r"access denied \(HTTP 403\)"),
        (_client_error(403, "SignatureDoesNotMatch"), "wrong secret key"),
        (_client_error(403, "InvalidAccessKeyId"), "does not know the access key"),
        (_client_error(404, "NoSuchBucket"), "no such bucket"),
    ],
)
def test_client_errors_become_one_line(error, expected):
    backend = _offline_backend()
    result = backend._classify(error, "file x")
    assert isinstance(result, SnapfsError)
    message = str(result)
    assert "\n" not in message and SECRET not in message
    assert __import__("re").search(expected, message)
    if "bucket" in expected:
        assert isinstance(result, NotFoundError)


@pytest.mark.parametrize(
    "status_code",
    [(500, "InternalError"), (503, "SlowDown"), (429, "TooManyRequests"), (504, "GatewayTimeout")],
)
def test_server_errors_and_throttling_are_retried(status_code):
    result = _offline_backend()._classify(_client_error(*status_code), "chunk")
    assert isinstance(result, _Transient)
    assert result.throttled == (status_code[1] in ("SlowDown", "TooManyRequests"))


def test_missing_key_is_not_found():
    assert isinstance(
        _offline_backend()._classify(_client_error(404, "NoSuchKey"), "file x"), _NotFound
    )


def test_unreachable_endpoint_is_retried_then_named():
    backend = _offline_backend(max_attempts=3, backoff_base=0.001)
    with pytest.raises(
        SnapfsError, match=r"cannot reach S3 endpoint http://127.0.0.1:9 .*gave up after 3 attempts"
    ) as info:
        backend.read_file("vm/100/owner")
    assert SECRET not in str(info.value)
    counters = backend.stats()
    assert counters["get_requests"] == 3 and counters["retries"] == 2 and counters["errors"] == 1


def test_stats_report_and_cost():
    stats = SourceStats()
    stats.add("get_requests", 1000)
    stats.add("list_requests", 1000)
    stats.add("bytes_downloaded", 10**9)
    counters = stats.snapshot()
    assert estimate_cost(counters, "aws") == pytest.approx(0.0004 + 0.005 + 0.09)
    assert estimate_cost(counters, "wasabi") == 0.0
    report = build_report(counters, memory_hits=3, memory_misses=1, provider="r2")
    assert report["memory_cache_hit_ratio"] == 0.75 and report["disk_cache_hit_ratio"] is None
    text = format_report(report)
    assert "GET 1000, LIST 1000" in text and "75.0%" in text and PRICE_TABLES["r2"].name in text


def test_rate_limiter_paces_to_the_rate():
    limiter = RateLimiter(4 * 1024 * 1024)
    start = time.monotonic()
    for _ in range(12):
        limiter.consume(256 * 1024)  # 3 MiB after a 1 MiB burst: at least 0.5 s at 4 MiB/s
    assert time.monotonic() - start >= 0.45


@pytest.mark.parametrize(
    ("openssl", "expected"),
    [
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
            "issuer certificate (_ssl.c:1006)",
            "certificate verify failed: unable to get local issuer certificate "
            "(give the endpoint's CA with --ca-bundle)",
        ),
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, "
            "certificate is not valid for 's3.example'. (_ssl.c:1006)",
            "certificate verify failed: Hostname mismatch, certificate is not valid for "
            "'s3.example' (the certificate is for another host name)",
        ),
        (
            "hostname '127.0.0.1' doesn't match either of 'a.example', 'b.example'",
            "certificate verify failed: hostname '127.0.0.1' doesn't match either of "
            "'a.example', 'b.example' (the certificate is for another host name)",
        ),
    ],
)
def test_tls_failures_name_the_endpoint_and_the_reason(openssl, expected):
    """botocore's SSLError repeats the URL (a password in it too); the line keeps only the reason."""
    from botocore.exceptions import SSLError

    backend = _offline_backend()
    url = f"https://user:{SECRET}@127.0.0.1:9/bucket"
    error = backend._classify(SSLError(endpoint_url=url, error=openssl), "listing")
    assert str(error) == (
        f"s3://bucket/store: TLS certificate check failed for http://127.0.0.1:9: {expected}"
    )
    other = backend._classify(
        SSLError(
            endpoint_url=url, error="[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1)"
        ),
        "listing",
    )
    assert str(other) == (
        "s3://bucket/store: TLS handshake with http://127.0.0.1:9 failed: wrong version number"
    )


def test_tls_options_are_checked_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with pytest.raises(UsageError, match="contradict"):
        S3Backend("b", "s", S3Settings(ca_bundle=str(tmp_path), verify_tls=False), check=False)
    with pytest.raises(UsageError, match=f"--ca-bundle {tmp_path}: no such file"):
        S3Backend("b", "s", S3Settings(ca_bundle=str(tmp_path)), check=False)
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a request")
    assert S3Backend("b", "s", S3Settings(ca_bundle=str(ca)), check=False)._client._endpoint
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    with pytest.raises(UsageError, match="AWS_CA_BUNDLE .*gone.pem: no such file"):
        S3Backend("b", "s", S3Settings(), check=False)
    with pytest.raises(UsageError, match="--path-style and --virtual-host-style contradict"):
        S3Backend("b", "s", S3Settings(path_style=True, virtual_host_style=True), check=False)
