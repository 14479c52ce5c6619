"""`s3://` store: a bucket and prefix on any S3-compatible server, via boto3.

An S3 PUT is atomic by the protocol. For `put_if_match` it cannot rely on `If-Match` alone: SeaweedFS
(4.x) evaluates `If-Match` before writing without a lock, so two writers racing from the same ETag can both
succeed (measured: about one round in 20 with 16 writers), while create-only `If-None-Match: *` is checked
under its per-object write lock and is atomic (as on AWS). So S3Store takes a lease lock object
`.lock-<name>` created with `If-None-Match: *`, checks the version, then writes with
`If-Match`/`If-None-Match` as a second fence. A crashed holder's lease expires after `LOCK_LEASE_S`;
exactly one contender may break an expired lock (by creating a `.broken-<etag>` marker, create-only again).

`s3_client` is the one place a boto3 client is built from a store config (endpoint, region, credentials,
addressing style); `with_retries` owns back-off for every call.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from recloop.errors import ConflictError, StoreError
from recloop.store import base as store_base  # read at call time: tests shorten the waits
from recloop.store.base import LOCK_PREFIX, ObjectInfo, clean_key

if TYPE_CHECKING:
    from recloop.config import RetryConfig, StoreConfig

T = TypeVar("T")
log = logging.getLogger("recloop.store")


_TRANSIENT_CODES = {
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}


def _client_error(exc: BaseException) -> Any:
    """The botocore ClientError behind `exc` (boto3's upload_file wraps it in S3UploadFailedError)."""
    from botocore.exceptions import ClientError

    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, ClientError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, timeouts and dropped/reset connections: worth another attempt."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError

    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ConnectionError, TimeoutError)):
        return True
    client_error = _client_error(exc)
    if client_error is not None:
        code = str(client_error.response.get("Error", {}).get("Code", ""))
        status = client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    if exc.__cause__ is not None or exc.__context__ is not None:
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, (BotoConnectionError, HTTPClientError, ConnectionError)):
            return True
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE)


def with_retries(
    fn: Callable[[], T],
    retry: RetryConfig,
    what: str,
    is_transient: Callable[[BaseException], bool] = _is_transient,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call fn, retrying transient errors with exponential back-off and full jitter.

    At most `retry.max_attempts` calls, and no retry that would start after `retry.deadline_s`; each
    retry is logged as it happens. A transient error that ends the attempts becomes a StoreError naming
    the operation, the attempts and the time spent; anything else propagates unchanged at once.
    """
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = random.uniform(0, min(retry.max_delay_s, retry.base_delay_s * 2 ** (attempt - 1)))
            spent = clock() - started
            if attempt >= retry.max_attempts or spent + delay >= retry.deadline_s:
                raise StoreError(
                    f"{what} failed after {attempt} attempt(s) in {spent:.0f} s ({_describe(exc)}); the store is "
                    "unreachable or overloaded: check store.endpoint_url and retry later (store.retry sets the "
                    "attempts, time-outs and deadline)"
                ) from exc
            log.warning(f"{what}: {_describe(exc)}; retry {attempt + 1}/{retry.max_attempts} in {delay:.1f} s")
            sleep(delay)


def _describe(exc: BaseException) -> str:
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    client_error = _client_error(exc)
    if client_error is not None:
        err = client_error.response.get("Error", {})
        status = client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{err.get('Code') or 'HTTP ' + str(status)}: {err.get('Message') or client_error}"
    if isinstance(exc, ReadTimeoutError):
        return f"not answering: {exc}"
    if isinstance(exc, ConnectTimeoutError):
        return f"no connection: {exc}"
    return f"{type(exc).__name__}: {exc}"


def s3_client(cfg: StoreConfig, attempts: int = 1) -> Any:
    """A boto3 S3 client on `cfg`'s endpoint, region, credentials and addressing style.

    `attempts` bounds the calls botocore makes per request. The store keeps it at 1 because
    `with_retries` owns back-off there; plain clients (tests, the local stack) may ask botocore for more.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
        aws_secret_access_key=cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None,
        region_name=cfg.region or None,
    )
    return session.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        config=Config(
            s3={"addressing_style": cfg.addressing_style},
            # botocore's `max_attempts` counts retries, `total_max_attempts` calls.
            retries={"total_max_attempts": attempts, "mode": "standard"},
            connect_timeout=cfg.retry.connect_timeout_s,
            read_timeout=cfg.retry.read_timeout_s,
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


class S3Store:
    """A bucket and prefix on any S3-compatible server, via boto3."""

    def __init__(self, cfg: StoreConfig):
        from boto3.s3.transfer import TransferConfig

        rest = cfg.root[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.root = cfg.root
        self.retry = cfg.retry
        self.sse = cfg.server_side_encryption
        # One call per request: store.retry.max_attempts then bounds the requests made.
        self.client = s3_client(cfg, attempts=1)
        threshold = cfg.multipart_threshold_mb * 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=threshold,
            multipart_chunksize=max(threshold // 4, 8 << 20),
            max_concurrency=4,
            use_threads=True,
        )

    def _k(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._k(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    def browser_url(self, key: str, expires_s: int) -> str:
        """A pre-signed GET URL: a browser opens the object without credentials until it expires."""
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=expires_s
            )
        )

    def _extra(self) -> dict:
        return {"ServerSideEncryption": self.sse} if self.sse else {}

    def _call(self, what: str, fn: Callable[[], T], writes: bool = False, head: bool = False) -> T:
        """Run one S3 operation with retries; map its errors to ones a user can act on.

        `head`: the operation starts with a HEAD request, whose 404 has no error code (a missing key)."""
        try:
            return with_retries(fn, self.retry, what)
        except StoreError as exc:
            raise StoreError(f"{exc}{self._sse_hint(writes)}") from None
        except Exception as exc:
            raise self._map_error(what, exc, writes, head) from None

    def _map_error(self, what: str, exc: Exception, writes: bool = False, head: bool = False) -> Exception:
        """The user-facing error for a failed (non-transient) S3 operation."""
        from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"{what}: no S3 credentials ({exc}); set store.access_key_id and store.secret_access_key in the "
                "config (as ${ENV_VAR} references), or the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "environment variables, or a profile (AWS_PROFILE and ~/.aws/credentials)"
            )
        client_error = _client_error(exc)
        if client_error is None:
            return StoreError(f"{what}: {exc}") if isinstance(exc, BotoCoreError) else exc
        code = client_error.response.get("Error", {}).get("Code", "")
        status = client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchKey" or (head and code in ("404", "NotFound")):
            return FileNotFoundError(f"{what}: does not exist")
        if code == "NoSuchBucket":
            return StoreError(f"{what}: bucket {self.bucket!r} does not exist; create it or fix store.root")
        if code in ("404", "NotFound", "") and (status == 404 or code):
            # An S3 server says NoSuchKey or NoSuchBucket; a bare 404 to a list, put or delete means the
            # endpoint is some other HTTP server.
            return StoreError(
                f"{what}: the endpoint {self._endpoint} answered 404 Not Found without an S3 error code: it does "
                "not look like an S3 server; check store.endpoint_url"
            )
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StoreError(f"{what}: access denied ({code}); check store credentials")
        return StoreError(f"{what}: {_describe(client_error)}{self._sse_hint(writes)}")

    @property
    def _endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def _sse_hint(self, writes: bool) -> str:
        if not (writes and self.sse):
            return ""
        return (
            f"; store.server_side_encryption is {self.sse!r}: if this server does not support it, set it "
            "to a supported value (e.g. AES256) or remove it"
        )

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(f"create bucket {self.bucket}", lambda: self.client.create_bucket(Bucket=self.bucket))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            f"put {self.uri(key)}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **self._extra()),
            writes=True,
        )

    def get_bytes(self, key: str) -> bytes:
        return self._call(
            f"get {self.uri(key)}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        )

    def put_file(self, key: str, path: str | Path) -> None:
        self._call(
            f"upload {self.uri(key)}",
            lambda: self.client.upload_file(
                str(path), self.bucket, self._k(key), ExtraArgs=self._extra() or None, Config=self.transfer
            ),
            writes=True,
        )

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            f"download {self.uri(key)}",
            lambda: self.client.download_file(self.bucket, self._k(key), str(path), Config=self.transfer),
            head=True,
        )
        return path

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(
                f"head {self.uri(key)}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._k(key)),
                head=True,
            )
        except FileNotFoundError:
            return None
        return ObjectInfo(clean_key(key), int(head["ContentLength"]), head["ETag"])

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def _list_all(self, prefix: str) -> list[str]:
        """Every key under `prefix`, lock objects included."""
        full = self._k(prefix) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def run() -> list[str]:
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call(f"list {self.root}/{prefix.strip('/')}", run))

    def list(self, prefix: str = "") -> list[str]:
        return [k for k in self._list_all(prefix) if not k.rsplit("/", 1)[-1].startswith(LOCK_PREFIX)]

    def move(self, src: str, dest: str) -> None:
        """Server-side copy, then delete the source (S3 has no rename)."""
        source = {"Bucket": self.bucket, "Key": self._k(src)}
        self._call(
            f"copy {self.uri(src)} to {self.uri(dest)}",
            lambda: self.client.copy(
                source, self.bucket, self._k(dest), ExtraArgs=self._extra() or None, Config=self.transfer
            ),
            writes=True,
            head=True,  # the managed copy heads the source first
        )
        self.delete(src)

    def delete(self, key: str) -> None:
        self._call(f"delete {self.uri(key)}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key)))

    def delete_prefix(self, prefix: str) -> int:
        keys = self._list_all(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._k(k)} for k in keys[i : i + 1000]]
            resp = self._call(
                f"delete {self.root}/{prefix.strip('/')}",
                functools.partial(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch}),
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"delete {self.root}/{prefix.strip('/')}: {len(errors)} object(s) were not deleted "
                    f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}); "
                    "check the store permissions and retry"
                )
        return len(keys)

    # -- compare-and-swap ------------------------------------------------------------------------

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Write only if the object's current etag equals `etag` (None: only if it does not exist)."""
        lock = self._lock_key(key)
        token = self._acquire(lock, key)
        try:
            current = self.stat(key)
            if (current.etag if current else None) != etag:
                raise ConflictError(
                    f"{self.uri(key)} changed since it was read (expected version {etag}, "
                    f"found {current.etag if current else 'none'}); read it again and retry"
                )
            return self._conditional_put(key, data, etag)
        finally:
            self._release(lock, token)

    def _conditional_put(self, key: str, data: bytes, etag: str | None) -> str:
        from botocore.exceptions import ClientError

        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **cond, **self._extra())
                return str(resp["ETag"])
            except Exception as exc:
                if isinstance(exc, ClientError) and _is_precondition_failure(exc):
                    raise ConflictError(
                        f"{self.uri(key)} changed since it was read (expected version {etag}); read it again and retry"
                    ) from None
                if not _is_transient(exc):
                    raise StoreError(f"put {self.uri(key)}: {_describe(exc)}{self._sse_hint(True)}") from None
                # The write may have landed before the connection broke. We hold the lock, so a changed
                # object holding exactly our bytes is our write; anything else is another writer's.
                now = self.stat(key)
                if (now.etag if now else None) != etag:
                    if now is not None and self.get_bytes(key) == data:
                        return now.etag
                    raise ConflictError(
                        f"{self.uri(key)} changed while it was being written; read it again and retry"
                    ) from None
                if attempt >= self.retry.max_attempts:
                    raise StoreError(
                        f"put {self.uri(key)} failed after {attempt} attempts ({_describe(exc)}); "
                        "it was not changed: retry later"
                    ) from None
                time.sleep(random.uniform(0, min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** (attempt - 1))))

    def _lock_key(self, key: str) -> str:
        head, _, name = clean_key(key).rpartition("/")
        return f"{head}/{LOCK_PREFIX}{name}" if head else f"{LOCK_PREFIX}{name}"

    def _acquire(self, lock: str, key: str) -> str:
        """Create the lock object (create-only); wait for a live holder, break an expired lease."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + store_base.LOCK_WAIT_S
        delay = 0.01
        while True:
            body = json.dumps(
                {
                    "owner": token,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "expires": time.time() + store_base.LOCK_LEASE_S,
                }
            ).encode()
            if self._create_only(lock, body, token, f"lock {self.uri(key)}"):
                return token
            holder = self._read_lock(lock)
            if holder is not None and holder[1] < time.time():
                self._break(lock, holder)
                continue
            if time.monotonic() > deadline:
                raise StoreError(
                    f"timed out after {store_base.LOCK_WAIT_S:g} s waiting for another writer's lock on "
                    f"{self.uri(key)}; retry when it has finished (a crashed writer's lock expires "
                    f"after {store_base.LOCK_LEASE_S:g} s)"
                )
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 0.2)

    def _create_only(self, key: str, body: bytes, token: str, what: str) -> bool:
        """PUT with `If-None-Match: *`: True if this call created `key` (whose body holds `token`)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._k(key), Body=body, IfNoneMatch="*", **self._extra()
                )
                return True
            except Exception as exc:
                client_error = _client_error(exc)
                if client_error is not None and _is_precondition_failure(client_error):
                    if attempt == 1:
                        return False
                    # An earlier attempt whose response was lost may be what exists now.
                    try:
                        return token.encode() in self.get_bytes(key)
                    except FileNotFoundError:
                        continue
                if not _is_transient(exc):
                    raise self._map_error(what, exc, writes=True) from None
                if attempt >= self.retry.max_attempts:
                    raise StoreError(
                        f"{what} failed after {attempt} attempts ({_describe(exc)}); the store is "
                        "unreachable or overloaded: retry later"
                    ) from None
                time.sleep(random.uniform(0, min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** (attempt - 1))))

    def _read_lock(self, lock: str) -> tuple[str, float, str] | None:
        """(etag, lease expiry, owner token) of the lock object, or None if it is gone."""
        try:
            resp = self._call(
                f"read lock {self.uri(lock)}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._k(lock))
            )
            raw = resp["Body"].read()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            return str(resp["ETag"]), float(info["expires"]), str(info["owner"])
        except (ValueError, KeyError, TypeError):
            return str(resp["ETag"]), 0.0, ""  # unreadable lock: treat as expired

    def _break(self, lock: str, holder: tuple[str, float, str]) -> None:
        """Remove an expired lock. A create-only marker per lease period past expiry lets exactly one
        contender break it, and another one a lease later if that breaker died too."""
        etag, expires, _ = holder
        round_no = int(max(0.0, time.time() - expires) // store_base.LOCK_LEASE_S)
        marker = f"{lock}.broken-{etag.strip(chr(34))}-{round_no}"
        token = uuid.uuid4().hex
        if not self._create_only(marker, token.encode(), token, f"break lock {self.uri(lock)}"):
            return  # another contender is breaking it
        current = self._read_lock(lock)
        if current is not None and current[0] == etag:
            self.delete(lock)

    def _release(self, lock: str, token: str) -> None:
        try:
            current = self._read_lock(lock)
            if current is not None and current[2] == token:
                self.delete(lock)
        except StoreError:
            pass  # the lease expires on its own


def _is_precondition_failure(exc: Any) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
