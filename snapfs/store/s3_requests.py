"""S3Requests: GET and LIST against one bucket, read-only, retried, and failing in one line.

Read-only by construction: the client refuses, before signing, any operation other than
ListObjectsV2, GetObject, HeadObject and HeadBucket. Transient failures (5xx, throttling, timeouts,
dropped connections) are retried with exponential backoff and full jitter; what remains is one line
naming the bucket, key and cause, never a credential. What the objects mean to a datastore is
S3Backend's business (s3.py).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from snapfs.errors import NotFoundError, SnapfsError, UsageError
from snapfs.logs import without_userinfo
from snapfs.store.stats import DEFAULT_PROVIDER, SourceStats

__all__ = ["DEFAULT_CONNECTIONS", "RateLimiter", "S3Requests", "S3Settings"]

# The logger S3 retries have always been reported under, whichever module makes the request.
log = logging.getLogger("snapfs.store.s3")

T = TypeVar("T")

ALLOWED_OPERATIONS = frozenset({"ListObjectsV2", "GetObject", "HeadObject", "HeadBucket"})
DEFAULT_CONNECTIONS = 8
_RETRY_STATUS = frozenset({500, 502, 503, 504, 429})
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestThrottled",
        "ProvisionedThroughputExceededException",
    }
)
_RETRY_CODES = _THROTTLE_CODES | {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}
_REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
_READ_BLOCK = 256 * 1024
# What OpenSSL says after "certificate verify failed:" (e.g. "unable to get local issuer
# certificate", "Hostname mismatch, certificate is not valid for 'x'."), up to "(_ssl.c:NNN)".
_VERIFY_REASON = re.compile(r"certificate verify failed: ([^(\]]+?)\s*(?:\(_ssl|\]|$)")
# urllib3's own host name check (used for IP addresses): "hostname 'h' doesn't match 'n'".
_HOST_MISMATCH = re.compile(r"hostname '[^']*' doesn't match (?:either of )?'[^']*'(?:, '[^']*')*")
_SSL_REASON = re.compile(r"\[SSL: [A-Z_]+\] ([^(\]]+?)\s*(?:\(_ssl|\]|$)")

# botocore's DEBUG logs print request headers (the access key id in Authorization) and bodies; a
# user's --debug is about snapfs, so those loggers never go below WARNING.
for _name in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# urllib3 logs a failed host name check (with the whole certificate) before raising it; the error
# snapfs makes of it says the same in one line.
logging.getLogger("urllib3.connection").setLevel(logging.ERROR)


@dataclass(frozen=True)
class S3Settings:
    """How to reach the bucket. Credentials are never here: boto3's chain finds them."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool = False
    virtual_host_style: bool = False  # botocore's "auto" is path-style for an endpoint_url
    ca_bundle: str | None = None  # None: AWS_CA_BUNDLE, the profile's ca_bundle, else the system's
    verify_tls: bool = True  # False only on --no-verify-tls, with a warning
    connections: int = DEFAULT_CONNECTIONS
    rate_limit: int | None = None  # bytes per second over all connections
    list_ttl: float | None = None  # None: listings are cached for the life of the backend
    max_attempts: int = 5
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    prefetch_bytes: int = 64 * 1024 * 1024
    provider: str = DEFAULT_PROVIDER


class RateLimiter:
    """A token bucket shared by all connections: at most `rate` bytes per second on average."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise UsageError("the rate limit must be positive")
        self.rate = rate
        self._burst = max(rate // 4, _READ_BLOCK)
        self._tokens = float(self._burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, amount: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            debt = -self._tokens
        if debt > 0:
            time.sleep(debt / self.rate)  # pacing, not synchronisation: the debt is already booked


class _Transient(Exception):
    """A failure worth another attempt; carries the one-line description for the final error."""

    def __init__(self, reason: str, throttled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.throttled = throttled


class S3Requests:
    """Requests to `bucket`, counted in `stats_counters`; S3Backend adds what they mean."""

    def __init__(self, bucket: str, store: str, settings: S3Settings | None, client) -> None:
        self.bucket = bucket
        self.store = store.strip("/")
        self.settings = settings or S3Settings()
        self.name = f"s3://{bucket}/{self.store}"
        self.stats_counters = SourceStats()
        self._client = client if client is not None else self._make_client()
        self._client.meta.events.register("before-parameter-build.s3", self._refuse_writes)
        self._client.meta.events.register("before-call.s3.HeadBucket", self._no_redirect_loop)
        self._limiter = RateLimiter(self.settings.rate_limit) if self.settings.rate_limit else None

    # -- client ----------------------------------------------------------------------------------

    def _make_client(self):
        import boto3
        import botocore.exceptions
        from botocore.config import Config

        s = self.settings
        try:
            session = boto3.session.Session(profile_name=s.profile)
        except botocore.exceptions.ProfileNotFound:
            raise SnapfsError(f"{self.name}: AWS profile {s.profile!r} not found") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise SnapfsError(
                f"{self.name}: cannot load the AWS configuration: {type(exc).__name__}"
            ) from None
        region = s.region or session.region_name or "us-east-1"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            max_pool_connections=max(s.connections, 1) + 2,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},  # we retry, counting and pacing
            s3={"addressing_style": self._addressing()},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="snapfs",
        )
        try:
            return session.client(
                "s3", endpoint_url=s.endpoint_url, verify=self._verify(), config=config
            )
        except ValueError:
            # Not echoed: a malformed URL may still hold a password (botocore's message repeats it).
            raise UsageError(
                "invalid --endpoint-url: not a URL like https://s3.example.com:9000"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise SnapfsError(
                f"{self.name}: cannot create the S3 client: {type(exc).__name__}"
            ) from None

    def _addressing(self) -> str:
        """botocore's addressing style. "auto" means BUCKET.s3.amazonaws.com on AWS but
        ENDPOINT/BUCKET for an --endpoint-url, so a server that wants BUCKET.ENDPOINT (virtual
        hosts only) needs --virtual-host-style."""
        s = self.settings
        if s.path_style and s.virtual_host_style:
            raise UsageError("--path-style and --virtual-host-style contradict each other")
        return "path" if s.path_style else "virtual" if s.virtual_host_style else "auto"

    def _verify(self) -> str | bool | None:
        """botocore's `verify`: a CA file, False on --no-verify-tls, None for botocore's own choice.

        None (not True) lets botocore honour AWS_CA_BUNDLE and a profile's `ca_bundle`, as the AWS
        CLI does. A CA file that is not there fails here, in one line, not at the first request.
        """
        s = self.settings
        if not s.verify_tls:
            if s.ca_bundle:
                raise UsageError("--ca-bundle and --no-verify-tls contradict each other")
            from urllib3.exceptions import InsecureRequestWarning

            # Said once here, not by urllib3 on every request.
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
            where = without_userinfo(s.endpoint_url or "the AWS endpoint")
            log.warning(
                "%s: --no-verify-tls: the TLS certificate of %s is not checked; "
                "anyone on the network path can read and change what snapfs reads",
                self.name,
                where,
            )
            return False
        for name, path in (("--ca-bundle", s.ca_bundle), ("AWS_CA_BUNDLE", _env_ca_bundle())):
            if path:
                if not os.path.isfile(path):
                    raise UsageError(f"{name} {path}: no such file (a PEM file of CA certificates)")
                return path
        return None

    @staticmethod
    def _refuse_writes(model, **_kwargs) -> None:
        if model.name not in ALLOWED_OPERATIONS:
            raise SnapfsError(f"snapfs is read-only: refusing S3 operation {model.name}")

    @staticmethod
    def _no_redirect_loop(context: dict, **_kwargs) -> None:
        """botocore answers a redirect (301, 307) that names no region with a HeadBucket to find
        it, and redirects that HeadBucket the same way when it gets one too: an endpoint that
        redirects everything (an http:// URL behind an https-only proxy) recursed until
        RecursionError. snapfs sends no HeadBucket itself, so this one is never redirected; the
        request then fails as a one-line "wrong region" error."""
        context.setdefault("s3_redirect", {})["redirected"] = True  # S3RegionRedirectorv2
        context["s3_redirected"] = True  # the older S3RegionRedirector

    @property
    def endpoint(self) -> str:
        """The endpoint as messages name it: without a `user:password@` (botocore never sends it)."""
        return without_userinfo(self._client.meta.endpoint_url)

    # -- requests, retries, errors ---------------------------------------------------------------

    def _request(
        self,
        what: str,
        counter: str,
        call: Callable[[], T],
        *,
        missing: Callable[[], SnapfsError] | None = None,
    ) -> T:
        """Run `call` with retries; `what` names the object in errors; `missing` builds the 404 error."""
        s = self.settings
        attempts = max(s.max_attempts, 1)
        for attempt in range(attempts):
            self.stats_counters.add(counter)
            try:
                return call()
            except _Transient as exc:
                if exc.throttled:
                    self.stats_counters.add("throttled")
                if attempt + 1 >= attempts:
                    self.stats_counters.add("errors")
                    raise SnapfsError(
                        f"{self.name}: {what}: {exc.reason} (gave up after {attempts} attempts)"
                    ) from None
                self.stats_counters.add("retries")
                delay = random.uniform(0, min(s.backoff_cap, s.backoff_base * (2**attempt)))
                log.debug("%s: %s: %s; retrying in %.2fs", self.name, what, exc.reason, delay)
                time.sleep(delay)
            except _NotFound:
                if missing is None:
                    raise SnapfsError(f"{self.name}: {what}: not found") from None
                raise missing() from None
            except SnapfsError:
                self.stats_counters.add("errors")
                raise
        raise AssertionError("unreachable")

    def _classify(self, exc: BaseException, what: str) -> BaseException:
        """Turn a botocore/urllib3 failure into _Transient, _NotFound or a final SnapfsError."""
        import botocore.exceptions as bx

        if isinstance(exc, bx.ClientError):
            response = exc.response or {}
            error = response.get("Error") or {}
            meta = response.get("ResponseMetadata") or {}
            status = meta.get("HTTPStatusCode")
            code = str(error.get("Code") or status or "")
            if code in ("NoSuchKey", "404", "NotFound") and code != "NoSuchBucket":
                return _NotFound()
            if code == "NoSuchBucket":
                return NotFoundError(f"s3://{self.bucket}: no such bucket at {self.endpoint}")
            if status in _RETRY_STATUS or code in _RETRY_CODES:
                named = code if code != str(status) else ""  # a body without S3's <Code>
                return _Transient(
                    f"HTTP {status} {named}".strip(),
                    throttled=code in _THROTTLE_CODES or status == 429,
                )
            if code in _REGION_CODES or status == 301:
                headers = meta.get("HTTPHeaders") or {}
                region = error.get("Region") or headers.get("x-amz-bucket-region")
                hint = (
                    f"; the bucket is in {region}, use --region {region}"
                    if region
                    else "; check --region"
                )
                return SnapfsError(f"{self.name}: wrong region ({code or status}){hint}")
            if code == "InvalidAccessKeyId":
                return SnapfsError(
                    f"{self.name}: the server does not know the access key (InvalidAccessKeyId, HTTP 403)"
                )
            if code == "SignatureDoesNotMatch":
                return SnapfsError(
                    f"{self.name}: the server rejected the request signature: wrong secret key (SignatureDoesNotMatch, HTTP 403)"
                )
            if status == 403 or code in ("AccessDenied", "AllAccessDisabled"):
                return SnapfsError(
                    f"{self.name}: access denied (HTTP 403) on {what}: the credentials lack read/list permission"
                )
            if status == 304:
                return _NotModified()
            return SnapfsError(f"{self.name}: {what}: S3 error {code or 'unknown'} (HTTP {status})")
        if isinstance(exc, bx.NoCredentialsError):
            return SnapfsError(
                f"{self.name}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "use ~/.aws/credentials, or --profile)"
            )
        if isinstance(exc, bx.PartialCredentialsError):
            return SnapfsError(
                f"{self.name}: incomplete S3 credentials (an access key without its secret, or the reverse)"
            )
        if isinstance(exc, bx.SSLError):
            return SnapfsError(f"{self.name}: {self._tls_failure(str(exc))}")
        if isinstance(
            exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ProxyConnectionError
        ):
            return _Transient(f"cannot reach S3 endpoint {self.endpoint} ({type(exc).__name__})")
        if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
            return _Transient(f"timed out talking to {self.endpoint}")
        if isinstance(exc, bx.ResponseStreamingError | bx.IncompleteReadError | bx.HTTPClientError):
            return _Transient(
                f"connection dropped while reading from {self.endpoint} ({type(exc).__name__})"
            )
        if isinstance(exc, bx.ParamValidationError):
            return SnapfsError(f"{self.name}: {what}: invalid request parameters")
        if isinstance(exc, bx.BotoCoreError):
            return SnapfsError(f"{self.name}: {what}: {type(exc).__name__}")
        if isinstance(exc, OSError):
            return _Transient(f"I/O error talking to {self.endpoint} ({type(exc).__name__})")
        if isinstance(exc, _Transient | _NotFound | _NotModified):
            return exc
        # botocore's parsers let ValueError and the like out of an answer they cannot read
        # (an integer field that is not one, say).
        return SnapfsError(
            f"{self.name}: {what}: malformed answer from {self.endpoint} ({type(exc).__name__})"
        )

    def _tls_failure(self, text: str) -> str:
        """One line for a failed TLS handshake: the endpoint and OpenSSL's reason, nothing else
        of botocore's message (it repeats the URL, which may hold a password)."""
        verify = _VERIFY_REASON.search(text) or _HOST_MISMATCH.search(text)
        if verify:
            reason = verify.group(verify.lastindex or 0).rstrip(".")
            # "Hostname mismatch, ..." (OpenSSL), "hostname 'h' doesn't match 'n'" (urllib3)
            other_host = "match" in reason.lower()
            hint = (
                "the certificate is for another host name"
                if other_host
                else "give the endpoint's CA with --ca-bundle"
            )
            return (
                f"TLS certificate check failed for {self.endpoint}: "
                f"certificate verify failed: {reason} ({hint})"
            )
        other = _SSL_REASON.search(text)
        reason = other.group(1).rstrip(".") if other else "unknown TLS error"
        return f"TLS handshake with {self.endpoint} failed: {reason}"

    def _guarded(self, what: str, call: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            try:
                return call()
            except SnapfsError:
                raise
            except Exception as exc:
                translated = self._classify(exc, what)
                if translated is exc:
                    raise
                if isinstance(translated, _NotModified):  # only a conditional GET expects 304
                    translated = SnapfsError(f"{self.name}: {what}: unexpected HTTP 304")
                raise translated from None

        return run

    # -- GET and LIST ----------------------------------------------------------------------------

    def _read_body(self, response, key: str, listed: tuple[str, int] | None = None) -> bytes:
        """The whole body, checked against its Content-Length and, when `listed` (etag, size) from
        a listing names the same version, against the listed size: a Content-Length that says
        less than the object has cannot be caught otherwise, and a file has no checksum of its
        own (a chunk does: ChunkReader checks its digest)."""
        body = response["Body"]
        expected = response.get("ContentLength")
        try:
            if self._limiter is None:
                data = body.read()
            else:
                parts = []
                while True:
                    self._limiter.consume(_READ_BLOCK)
                    block = body.read(_READ_BLOCK)
                    if not block:
                        break
                    parts.append(block)
                data = b"".join(parts)
        finally:
            body.close()
        if expected is not None and len(data) != expected:
            raise _Transient(f"short read of {key}: {len(data)} of {expected} bytes")
        if (
            listed is not None
            and listed[0]  # without an ETag the listing may be of another version
            and listed[1] >= 0  # a listing without a Size
            and response.get("ETag") == listed[0]
            and len(data) != listed[1]
        ):
            raise _Transient(
                f"the server sent {len(data)} bytes of {listed[1]}, the size its listing gave"
            )
        self.stats_counters.add("bytes_downloaded", len(data))
        return data

    def _get(
        self,
        key: str,
        what: str,
        missing: Callable[[], SnapfsError],
        if_none_match: str | None = None,
        listed: tuple[str, int] | None = None,
    ) -> tuple[bytes | None, str]:
        def call() -> tuple[bytes | None, str]:
            kwargs = {"Bucket": self.bucket, "Key": key}
            if if_none_match:
                kwargs["IfNoneMatch"] = if_none_match
            try:
                response = self._client.get_object(**kwargs)
            except Exception as exc:
                translated = self._classify(exc, what)
                if isinstance(translated, _NotModified) and if_none_match:
                    self.stats_counters.add("not_modified")
                    return None, if_none_match or ""
                raise
            return self._read_body(response, key, listed), response.get("ETag", "")

        return self._request(what, "get_requests", self._guarded(what, call), missing=missing)

    def _list(
        self, prefix: str, delimiter: str | None, what: str
    ) -> tuple[list[str], list[tuple[str, str, int]]]:
        """(common prefixes, [(key, etag, size)]) of every page under `prefix`."""
        prefixes: list[str] = []
        objects: list[tuple[str, str, int]] = []
        token: str | None = None
        tokens: set[str] = set()
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = self._request(
                what,
                "list_requests",
                self._guarded(what, lambda kw=kwargs: self._client.list_objects_v2(**kw)),
            )
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes") or ())
            objects.extend(
                (o["Key"], o.get("ETag", ""), o.get("Size", -1)) for o in page.get("Contents") or ()
            )
            if not page.get("IsTruncated"):
                return prefixes, objects
            token = page.get("NextContinuationToken")
            if not token:
                raise SnapfsError(
                    f"{self.name}: {what}: truncated listing without a continuation token"
                )
            if token in tokens:
                raise SnapfsError(
                    f"{self.name}: {what}: the server repeated a continuation token "
                    "(a listing that never ends)"
                )
            tokens.add(token)


def _env_ca_bundle() -> str | None:
    return os.environ.get("AWS_CA_BUNDLE") or None


class _NotFound(Exception):
    pass


class _NotModified(Exception):
    pass
