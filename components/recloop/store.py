"""Artifact store: one interface over `file://` and `s3://` roots.

Keys are '/'-separated paths relative to the store root (`runs/r1/ingest/items.parquet`). Writes are
whole-object: a local write goes to a temporary file that is renamed into place; an S3 PUT is atomic by
the protocol. That, plus manifests written last (see `artifacts.py`), means readers never see half a file.

`put_if_match` is a compare-and-swap on one small object (the production alias): S3 conditional writes
(`If-Match` / `If-None-Match`) where the server supports them, and a lock file plus version check locally.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator, Protocol, TypeVar

from recloop.errors import ConflictError, StoreError

if TYPE_CHECKING:
    from recloop.config import RetryConfig, StoreConfig

T = TypeVar("T")
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # a version token for compare-and-swap


class ArtifactStore(Protocol):
    root: str

    def uri(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: str | Path) -> None: ...
    def get_file(self, key: str, path: str | Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str: ...
    def local_path(self, key: str) -> Path | None: ...


def _clean_key(key: str) -> str:
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}: use non-empty '/'-separated names without '.' or '..'")
    return key


def _clean_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return _clean_key(prefix) + "/" if prefix else ""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- file://


class FileStore:
    """A directory on a local or mounted filesystem."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.base = Path(root[len("file://"):] if root.startswith("file://") else root)

    def uri(self, key: str) -> str:
        return f"{self.root}/{_clean_key(key)}"

    def _path(self, key: str) -> Path:
        return self.base / _clean_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _atomic_write(self, key: str, writer: Callable[[IO[bytes]], None]) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {self.uri(key)}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: str | Path) -> None:
        def copy(f: IO[bytes]) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)

        self._atomic_write(key, copy)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(_clean_key(key), st.st_size, f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}")

    def list(self, prefix: str = "") -> list[str]:
        prefix = _clean_prefix(prefix)
        start = self.base / prefix if prefix else self.base
        if not start.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-") or name.startswith(".lock-"):
                    continue
                out.append(Path(dirpath, name).relative_to(self.base).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        if prefix.strip("/"):
            shutil.rmtree(self.base / _clean_prefix(prefix), ignore_errors=True)
        return len(keys)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Write only if the object's current etag equals `etag` (None: only if it does not exist)."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = dest.parent / f".lock-{dest.name}"
        deadline = time.monotonic() + 30
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                # A lock older than 60 s belongs to a crashed writer.
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - lock.stat().st_mtime > 60:
                        lock.unlink()
                        continue
                if time.monotonic() > deadline:
                    raise StoreError(f"timed out waiting for the lock on {self.uri(key)}") from None
                time.sleep(0.01)
        try:
            current = self.stat(key)
            if (current.etag if current else None) != etag:
                raise ConflictError(f"{self.uri(key)} changed since it was read (expected version {etag}, "
                                    f"found {current.etag if current else 'none'})")
            self.put_bytes(key, data)
            new = self.stat(key)
            assert new is not None
            return new.etag
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


# ---------------------------------------------------------------------------------------------- s3://

_TRANSIENT_CODES = {
    "Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
}


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
                        ConnectionError)):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE)


def with_retries(fn: Callable[[], T], retry: RetryConfig, what: str,
                 is_transient: Callable[[BaseException], bool] = _is_transient,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn, retrying transient errors with exponential back-off and full jitter."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt >= retry.max_attempts:
                if is_transient(exc):
                    raise StoreError(f"{what} failed after {attempt} attempts: {exc}") from exc
                raise
            delay = min(retry.max_delay_s, retry.base_delay_s * 2 ** (attempt - 1))
            sleep(random.uniform(0, delay))


class S3Store:
    """A bucket and prefix on any S3-compatible server, via boto3."""

    def __init__(self, cfg: StoreConfig):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        rest = cfg.root[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.root = cfg.root
        self.retry = cfg.retry
        self.sse = cfg.server_side_encryption
        session = boto3.session.Session(
            aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
            aws_secret_access_key=cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None,
            region_name=cfg.region or None,
        )
        self.client = session.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            config=Config(
                s3={"addressing_style": cfg.addressing_style},
                # Our own loop does the backing off; botocore retries once quietly underneath.
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        threshold = cfg.multipart_threshold_mb * 1024 * 1024
        self.transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(threshold // 4, 8 << 20),
                                       max_concurrency=4, use_threads=True)

    def _k(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._k(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    def _extra(self) -> dict:
        return {"ServerSideEncryption": self.sse} if self.sse else {}

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return with_retries(fn, self.retry, what)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{what}: does not exist") from None
            if code == "NoSuchBucket":
                raise StoreError(f"{what}: bucket {self.bucket!r} does not exist; create it or fix store.root") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise StoreError(f"{what}: access denied ({code}); check store credentials") from None
            raise StoreError(f"{what}: {code or exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{what}: {exc}") from None

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(f"create bucket {self.bucket}", lambda: self.client.create_bucket(Bucket=self.bucket))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {self.uri(key)}",
                   lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **self._extra()))

    def get_bytes(self, key: str) -> bytes:
        return self._call(f"get {self.uri(key)}",
                          lambda: self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read())

    def put_file(self, key: str, path: str | Path) -> None:
        self._call(f"upload {self.uri(key)}", lambda: self.client.upload_file(
            str(path), self.bucket, self._k(key), ExtraArgs=self._extra() or None, Config=self.transfer))

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(f"download {self.uri(key)}", lambda: self.client.download_file(
            self.bucket, self._k(key), str(path), Config=self.transfer))
        return path

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(f"head {self.uri(key)}",
                              lambda: self.client.head_object(Bucket=self.bucket, Key=self._k(key)))
        except FileNotFoundError:
            return None
        return ObjectInfo(_clean_key(key), int(head["ContentLength"]), head["ETag"])

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str = "") -> list[str]:
        full = self._k(prefix) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def run() -> list[str]:
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call(f"list {self.root}/{prefix}", run))

    def delete(self, key: str) -> None:
        self._call(f"delete {self.uri(key)}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key)))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._k(k)} for k in keys[i:i + 1000]]
            self._call(f"delete {self.root}/{prefix}",
                       lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": b}))
        return len(keys)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        from botocore.exceptions import ClientError

        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **cond, **self._extra())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise ConflictError(f"{self.uri(key)} changed since it was read (expected version {etag})") from None
            if _is_transient(exc):
                raise StoreError(f"put {self.uri(key)}: {code}; the alias was not changed, retry") from None
            raise StoreError(f"put {self.uri(key)}: {code or exc}") from None
        return resp["ETag"]


# ---------------------------------------------------------------------------------------------- helpers


def open_store(cfg: StoreConfig) -> ArtifactStore:
    """The store for a config's `store` section."""
    if cfg.root.startswith("file://"):
        return FileStore(cfg.root)
    if cfg.root.startswith("s3://"):
        return S3Store(cfg)
    raise StoreError(f"unsupported store root {cfg.root!r}: use file:// or s3://")


@contextlib.contextmanager
def local_copy(store: ArtifactStore, key: str, workdir: str | Path | None = None) -> Iterator[Path]:
    """A local path to read `key` from: the file itself for file://, a temporary download for s3://."""
    direct = store.local_path(key)
    if direct is not None:
        if not direct.is_file():
            raise FileNotFoundError(f"{store.uri(key)} does not exist")
        yield direct
        return
    with tempfile.TemporaryDirectory(dir=workdir, prefix="recloop-get-") as tmp:
        yield store.get_file(key, Path(tmp) / Path(key).name)
