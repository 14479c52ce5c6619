"""The artifact store contract, the same tests against file:// and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recloop.config import RetryConfig
from recloop.errors import ConflictError, StoreError
from recloop.store import FileStore, S3Store, local_copy, open_store, sha256_file, with_retries
from recloop.store import base as store_base
from recloop.store import s3 as store_s3
from support.net import free_port
from support.s3 import S3Server

FAST_RETRY = {"max_attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}


def _random_file(path: Path, size: int, seed: int = 0) -> str:
    """Write `size` pseudo-random bytes; return their sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB pattern
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            chunk = block[: min(left, len(block))]
            chunk = i.to_bytes(8, "big") + chunk[8:] if len(chunk) >= 8 else chunk
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- basics


def test_bytes_roundtrip_and_overwrite(any_store: Any) -> None:
    any_store.put_bytes("runs/r1/a.bin", b"\x00\x01binary\xff")
    any_store.put_bytes("runs/r1/empty", b"")
    assert any_store.get_bytes("runs/r1/a.bin") == b"\x00\x01binary\xff"
    assert any_store.get_bytes("runs/r1/empty") == b""
    any_store.put_bytes("runs/r1/a.bin", b"second")
    assert any_store.get_bytes("runs/r1/a.bin") == b"second"


def test_file_roundtrip(any_store: Any, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    digest = _random_file(src, 300_000)
    any_store.put_file("x/y/src.bin", src)
    out = any_store.get_file("x/y/src.bin", tmp_path / "deep" / "out.bin")
    assert out == tmp_path / "deep" / "out.bin"
    assert sha256_file(out) == digest
    with local_copy(any_store, "x/y/src.bin") as p:
        assert sha256_file(p) == digest


def test_missing_objects_raise_file_not_found(any_store: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        any_store.get_bytes("nope/missing.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        any_store.get_file("nope/missing.txt", tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        with local_copy(any_store, "nope/missing.txt"):
            pass


def test_list_by_prefix(any_store: Any) -> None:
    for key in ["a/b/1", "a/b/2", "a/c/3", "ab/4", "top"]:
        any_store.put_bytes(key, key.encode())
    assert any_store.list() == ["a/b/1", "a/b/2", "a/c/3", "ab/4", "top"]
    assert any_store.list("a") == ["a/b/1", "a/b/2", "a/c/3"]
    assert any_store.list("a/") == ["a/b/1", "a/b/2", "a/c/3"]
    assert any_store.list("/a/b/") == ["a/b/1", "a/b/2"]
    assert any_store.list("ab") == ["ab/4"]
    assert any_store.list("a/b/1") == []  # a key is not a prefix
    assert any_store.list("missing") == []


def test_exists_and_stat(any_store: Any) -> None:
    any_store.put_bytes("d/k.txt", b"12345")
    assert any_store.exists("d/k.txt")
    assert not any_store.exists("d/other.txt")
    assert not any_store.exists("d")  # a prefix is not an object
    info = any_store.stat("d/k.txt")
    assert info is not None and info.key == "d/k.txt" and info.size == 5
    assert any_store.stat("d/other.txt") is None
    any_store.put_bytes("d/k.txt", b"changed!")
    info2 = any_store.stat("d/k.txt")
    assert info2 is not None and info2.size == 8 and info2.etag != info.etag


def test_delete_and_delete_prefix(any_store: Any) -> None:
    for key in ["p/1", "p/q/2", "p/q/r/3", "pp/4"]:
        any_store.put_bytes(key, b"x")
    any_store.delete("p/1")
    any_store.delete("p/1")  # deleting a missing key is not an error
    assert not any_store.exists("p/1")
    assert any_store.delete_prefix("p") == 2
    assert any_store.list() == ["pp/4"]
    assert any_store.delete_prefix("p") == 0


@pytest.mark.parametrize("bad", ["../escape", "a/../b", "a//b", "./a", "", "/", "a/./b"])
def test_invalid_keys_are_refused(any_store: Any, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid store key"):
        any_store.put_bytes(bad, b"x")
    with pytest.raises(ValueError, match="invalid store key"):
        any_store.get_bytes(bad)


def test_uri_and_open_store(tmp_path: Path, s3_server: S3Server) -> None:
    from recloop.config import StoreConfig

    fs = open_store(StoreConfig(root=f"file://{tmp_path}/s"))
    assert isinstance(fs, FileStore)
    assert fs.uri("runs/r/x") == f"file://{tmp_path}/s/runs/r/x"
    s3 = open_store(s3_server.store_config("some-bucket", prefix="base/dir"))
    assert isinstance(s3, S3Store)
    assert s3.uri("runs/r/x") == "s3://some-bucket/base/dir/runs/r/x"


@pytest.mark.s3
def test_open_store_on_another_root_uses_the_store_sections_credentials(tmp_path: Path, s3_server: S3Server) -> None:
    cfg = s3_server.store_config(s3_server.new_bucket(), prefix="artifacts")
    other = s3_server.new_bucket()
    data = open_store(cfg, root=f"s3://{other}/raw/")
    assert data.uri("events.csv") == f"s3://{other}/raw/events.csv"
    data.put_bytes("events.csv", b"user,item\n")
    assert s3_server.client().get_object(Bucket=other, Key="raw/events.csv")["Body"].read() == b"user,item\n"
    # The credentials are the section's: a wrong secret there fails on the other root too.
    wrong = s3_server.store_config(cfg.root[len("s3://") :].split("/")[0], secret_access_key="wrong-secret")
    with pytest.raises(StoreError, match="access denied"):
        open_store(wrong, root=f"s3://{other}").get_bytes("raw/events.csv")
    assert isinstance(open_store(cfg, root=f"file://{tmp_path}/f"), FileStore)
    with pytest.raises(StoreError, match="names no bucket"):
        open_store(cfg, root="s3:///raw")
    with pytest.raises(StoreError, match="unsupported store root 'gs://b'"):
        open_store(cfg, root="gs://b")


# ---------------------------------------------------------------------------------------------- large files


@pytest.mark.s3
def test_large_file_uses_multipart_upload(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store = S3Store(s3_server.store_config(bucket, prefix="big", multipart_threshold_mb=5))
    src = tmp_path / "big.bin"
    size = 13 * 1024 * 1024
    digest = _random_file(src, size, seed=3)
    store.put_file("runs/r/big.bin", src)
    head = s3_server.client().head_object(Bucket=bucket, Key="big/runs/r/big.bin")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-2")  # 8 MiB parts: really went through multipart
    out = store.get_file("runs/r/big.bin", tmp_path / "back.bin")
    assert sha256_file(out) == digest


def test_large_file_roundtrip_file_store(file_store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    digest = _random_file(src, 13 * 1024 * 1024, seed=4)
    file_store.put_file("runs/r/big.bin", src)
    assert sha256_file(file_store.get_file("runs/r/big.bin", tmp_path / "b")) == digest
    assert [p.name for p in (tmp_path / "store/runs/r").iterdir()] == ["big.bin"]  # no temp files left


# ---------------------------------------------------------------------------------------------- compare-and-swap


def test_put_if_match_semantics(any_store: Any) -> None:
    key = "models/m/production.json"
    etag1 = any_store.put_if_match(key, b'{"v": 1}', None)
    assert any_store.get_bytes(key) == b'{"v": 1}'
    info = any_store.stat(key)
    assert info is not None and info.etag == etag1
    with pytest.raises(ConflictError, match="changed since it was read"):
        any_store.put_if_match(key, b'{"v": "other"}', None)  # create-only, but it exists
    etag2 = any_store.put_if_match(key, b'{"v": 2}', etag1)
    assert etag2 != etag1 and any_store.get_bytes(key) == b'{"v": 2}'
    with pytest.raises(ConflictError):
        any_store.put_if_match(key, b'{"v": "stale"}', etag1)  # etag1 is no longer current
    with pytest.raises(ConflictError):
        any_store.put_if_match("models/m/absent.json", b"x", etag2)  # expected an object, none there
    assert any_store.get_bytes(key) == b'{"v": 2}'
    assert not any_store.exists("models/m/absent.json")
    # Lock objects are an implementation detail: never listed, never left behind.
    assert any_store.list("models") == ["models/m/production.json"]


@pytest.mark.parametrize("start_empty", [True, False], ids=["create", "update"])
def test_racing_writers_exactly_one_wins(any_store: Any, start_empty: bool) -> None:
    writers = 8
    for round_no in range(2):
        key = f"race/{round_no}/alias.json"
        etag = None if start_empty else any_store.put_if_match(key, b"initial", None)
        barrier = threading.Barrier(writers)
        winners: list[int] = []
        losers: list[int] = []

        def write(i: int) -> None:
            barrier.wait()
            try:
                any_store.put_if_match(key, f"writer {i}".encode(), etag)
                winners.append(i)
            except ConflictError:
                losers.append(i)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1, f"round {round_no}: winners {winners}"
        assert len(losers) == writers - 1
        assert any_store.get_bytes(key) == f"writer {winners[0]}".encode()


def test_file_store_waits_for_held_lock_and_ignores_dead_ones(file_store: FileStore, monkeypatch: Any) -> None:
    key = "models/m/production.json"
    etag = file_store.put_if_match(key, b"1", None)
    lock = file_store.base / "models/m/.lock-production.json"
    # A lock file left by a crashed writer holds no flock: it does not block.
    lock.write_text("stale")
    etag = file_store.put_if_match(key, b"2", etag)
    # A live holder blocks until the wait runs out, with a message saying what to do.
    monkeypatch.setattr(store_base, "LOCK_WAIT_S", 0.3)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="waiting for another writer's lock"):
            file_store.put_if_match(key, b"3", etag)
    finally:
        os.close(fd)
    assert file_store.get_bytes(key) == b"2"
    assert file_store.put_if_match(key, b"3", etag)


@pytest.mark.s3
def test_s3_lock_expired_is_broken_live_one_waited_for(s3_store: S3Store, monkeypatch: Any) -> None:
    key = "models/m/production.json"
    etag = s3_store.put_if_match(key, b"1", None)
    lock = "models/m/.lock-production.json"
    # A crashed writer's lease (expired) is broken and the swap goes through.
    s3_store.put_bytes(lock, json.dumps({"owner": "dead", "expires": time.time() - 1}).encode())
    t0 = time.monotonic()
    etag = s3_store.put_if_match(key, b"2", etag)
    assert time.monotonic() - t0 < 5
    assert s3_store.get_bytes(key) == b"2"
    assert not s3_store.exists(lock)
    # A live lease blocks until the wait runs out.
    monkeypatch.setattr(store_base, "LOCK_WAIT_S", 0.5)
    s3_store.put_bytes(lock, json.dumps({"owner": "alive", "expires": time.time() + 60}).encode())
    with pytest.raises(StoreError, match="waiting for another writer's lock"):
        s3_store.put_if_match(key, b"3", etag)
    assert s3_store.get_bytes(key) == b"2"
    assert s3_store.list("models") == ["models/m/production.json"]  # locks and markers hidden
    assert s3_store.delete_prefix("models") >= 3  # ... but deleted with their prefix
    assert s3_store._list_all("models") == []


# ---------------------------------------------------------------------------------------------- retries


class _Flaky:
    def __init__(self, failures: list[BaseException], result: str = "ok"):
        self.failures = list(failures)
        self.calls = 0
        self.result = result

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


def test_with_retries_backs_off_then_succeeds() -> None:
    retry = RetryConfig(max_attempts=5, base_delay_s=0.1, max_delay_s=0.25)
    sleeps: list[float] = []
    fn = _Flaky([ConnectionResetError(104, "reset"), TimeoutError("slow"), ConnectionResetError(104, "reset")])
    assert with_retries(fn, retry, "put x", sleep=sleeps.append) == "ok"
    assert fn.calls == 4
    caps = [0.1, 0.2, 0.25]  # doubling, capped at max_delay_s; full jitter below each cap
    assert len(sleeps) == 3 and all(0 <= s <= cap for s, cap in zip(sleeps, caps))


def test_with_retries_is_bounded() -> None:
    retry = RetryConfig(max_attempts=3, base_delay_s=0.01)
    fn = _Flaky([ConnectionResetError(104, "reset")] * 10)
    with pytest.raises(StoreError, match=r"put s3://b/k failed after 3 attempt\(s\) in 0 s .*ConnectionResetError"):
        with_retries(fn, retry, "put s3://b/k", sleep=lambda s: None)
    assert fn.calls == 3


def test_with_retries_logs_each_retry_and_stops_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def slow_failure() -> str:
        now[0] += 10.0  # each attempt waits out a 10 s read time-out
        raise TimeoutError("read timed out")

    # Attempts end at 10 s and 20-22 s; the third starts before the 25 s deadline, no fourth after it.
    retry = RetryConfig(max_attempts=20, base_delay_s=1.0, max_delay_s=1.0, deadline_s=25.0)
    with caplog.at_level("WARNING", logger="recloop.store"):
        with pytest.raises(StoreError, match=r"get s3://b/k failed after 3 attempt\(s\) in 3[0-2] s"):
            with_retries(slow_failure, retry, "get s3://b/k", sleep=sleep, clock=lambda: now[0])
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2
    assert retries[0].startswith("get s3://b/k: TimeoutError: read timed out; retry 2/20 in ")


def test_with_retries_does_not_retry_permanent_errors() -> None:
    fn = _Flaky([KeyError("no")])
    with pytest.raises(KeyError):
        with_retries(fn, RetryConfig(), "get x", sleep=lambda s: None)
    assert fn.calls == 1


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("ServiceUnavailable", 503, True),
        ("InternalError", 500, True),
        ("Throttling", 400, True),
        ("TooManyRequests", 429, True),
        ("BadGateway", 502, True),
        ("NoSuchKey", 404, False),
        ("AccessDenied", 403, False),
        ("PreconditionFailed", 412, False),
    ],
)
def test_transient_classification_of_s3_errors(code: str, status: int, transient: bool) -> None:
    assert store_s3._is_transient(_client_error(code, status)) is transient


def test_transient_classification_of_connection_errors() -> None:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

    assert store_s3._is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert store_s3._is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert store_s3._is_transient(ReadTimeoutError(endpoint_url="http://x"))
    assert store_s3._is_transient(ConnectionResetError(104, "reset"))
    assert not store_s3._is_transient(ValueError("bad"))
    # boto3's upload_file hides the ClientError behind S3UploadFailedError: look through it.
    for inner, expected in ((_client_error("SlowDown", 503), True), (_client_error("AccessDenied", 403), False)):
        try:
            try:
                raise inner
            except Exception:
                raise S3UploadFailedError("Failed to upload")  # noqa: B904 (as boto3 does)
        except S3UploadFailedError as wrapped:
            assert store_s3._is_transient(wrapped) is expected


class FlakyProxy:
    """A TCP proxy to the S3 server that misbehaves for the first connections.

    drop: close the first N connections at once with a TCP reset.
    throttle: answer the first N requests with HTTP 503 SlowDown (then close).
    Every later connection is piped to the real server.
    """

    def __init__(self, upstream_port: int, drop: int = 0, throttle: int = 0):
        self.upstream_port = upstream_port
        self.drop_left = drop
        self.throttle_left = throttle
        self.dropped = 0
        self.throttled = 0
        self.forwarded = 0
        self.port = free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        self._sock.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with self._lock:
            mode = "drop" if self.drop_left else "throttle" if self.throttle_left else "forward"
            if mode == "drop":
                self.drop_left -= 1
                self.dropped += 1
            elif mode == "throttle":
                self.throttle_left -= 1
                self.throttled += 1
            else:
                self.forwarded += 1
        if mode == "drop":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # RST: "connection reset by peer"
            return
        if mode == "throttle":
            self._throttle(conn)
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _throttle(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = {
            line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")[1:]
            if b":" in line
        }
        if b"100-continue" not in headers.get(b"expect", b""):
            need = int(headers.get(b"content-length", b"0")) - len(body)
            while need > 0:
                chunk = conn.recv(min(need, 65536))
                if not chunk:
                    break
                need -= len(chunk)
        xml = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        conn.sendall(
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(xml)).encode() + b"\r\n\r\n" + xml
        )
        conn.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _proxied_store(s3_server: S3Server, proxy: FlakyProxy, bucket: str, **retry: Any) -> S3Store:
    upstream = s3_server.store_config(bucket, prefix="via-proxy")
    return S3Store(
        upstream.model_copy(update={"endpoint_url": proxy.endpoint, "retry": RetryConfig(**{**FAST_RETRY, **retry})})
    )


@pytest.mark.s3
def test_s3_retries_dropped_connections(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    proxy = FlakyProxy(s3_server.ports["s3"], drop=2)
    try:
        store = _proxied_store(s3_server, proxy, bucket)
        store.put_bytes("k.txt", b"made it")
        assert proxy.dropped == 2 and proxy.forwarded >= 1
        assert store.get_bytes("k.txt") == b"made it"
    finally:
        proxy.close()


@pytest.mark.s3
def test_s3_retries_throttling_on_upload(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    proxy = FlakyProxy(s3_server.ports["s3"], throttle=2)
    try:
        store = _proxied_store(s3_server, proxy, bucket)
        src = tmp_path / "f.bin"
        digest = _random_file(src, 100_000)
        store.put_file("f.bin", src)  # upload_file wraps the 503 in S3UploadFailedError
        assert proxy.throttled == 2
        assert sha256_file(store.get_file("f.bin", tmp_path / "back")) == digest
    finally:
        proxy.close()


@pytest.mark.s3
def test_s3_gives_up_after_bounded_attempts(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    proxy = FlakyProxy(s3_server.ports["s3"], drop=100)
    try:
        store = _proxied_store(s3_server, proxy, bucket, max_attempts=3)
        with pytest.raises(StoreError, match=r"put s3://.*/via-proxy/k.txt failed after 3 attempt\(s\)"):
            store.put_bytes("k.txt", b"never")
        assert proxy.dropped == 3  # one connection per attempt: botocore does not retry underneath
    finally:
        proxy.close()
    assert not s3_server.client().list_objects_v2(Bucket=bucket).get("Contents")


# ---------------------------------------------------------------------------------------------- S3 options and errors


@pytest.mark.s3
def test_server_side_encryption_passes_through(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store = S3Store(s3_server.store_config(bucket, server_side_encryption="AES256"))
    store.put_bytes("a.txt", b"secret")
    src = tmp_path / "b.bin"
    _random_file(src, 50_000)
    store.put_file("b.bin", src)
    client = s3_server.client()
    assert client.head_object(Bucket=bucket, Key="a.txt")["ServerSideEncryption"] == "AES256"
    assert client.head_object(Bucket=bucket, Key="b.bin")["ServerSideEncryption"] == "AES256"
    assert store.get_bytes("a.txt") == b"secret"


@pytest.mark.s3
def test_unsupported_encryption_error_is_clear(s3_server: S3Server) -> None:
    # SeaweedFS has no KMS configured: it rejects aws:kms (with a 500, so after the retries).
    store = S3Store(
        s3_server.store_config(
            s3_server.new_bucket(),
            server_side_encryption="aws:kms",
            retry=RetryConfig(**{**FAST_RETRY, "max_attempts": 2}),
        )
    )
    with pytest.raises(StoreError) as info:
        store.put_bytes("a.txt", b"x")
    message = str(info.value)
    assert "put s3://" in message and "a.txt" in message
    assert "store.server_side_encryption is 'aws:kms'" in message and "AES256" in message


@pytest.mark.s3
def test_missing_bucket_and_bad_credentials_are_explained(s3_server: S3Server) -> None:
    missing = S3Store(s3_server.store_config("no-such-bucket-here"))
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist; create it or fix store.root"):
        missing.put_bytes("a", b"x")
    bad = S3Store(s3_server.store_config(s3_server.new_bucket(), secret_access_key="wrong-secret"))
    with pytest.raises(StoreError, match="access denied .*check store credentials"):
        bad.get_bytes("a")


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_file_store_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    # Workers under another uid in the same group read what this one wrote (not mkstemp's 0600).
    store = FileStore(f"file://{tmp_path}")
    previous = os.umask(umask)
    try:
        store.put_bytes("runs/r1/a.json", b"{}")
        source = tmp_path / "src.bin"
        source.write_bytes(b"x")
        store.put_file("runs/r1/b.bin", source)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "runs/r1/a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "runs/r1/b.bin").stat().st_mode) == mode


class SilentServer:
    """Accepts connections and never answers (an S3 endpoint that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_s3_endpoint_that_never_answers_fails_within_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    from recloop.config import StoreConfig

    server = SilentServer()
    retry = RetryConfig(read_timeout_s=0.5, connect_timeout_s=0.5, base_delay_s=0.2, max_delay_s=0.5, deadline_s=3.0)
    store = S3Store(
        StoreConfig(
            root="s3://bucket/p", endpoint_url=server.endpoint, access_key_id="k", secret_access_key="s", retry=retry
        )
    )
    started = time.monotonic()
    try:
        with caplog.at_level("WARNING", logger="recloop.store"):
            with pytest.raises(StoreError) as failed:
                store.get_bytes("runs/r1/ingest/_MANIFEST.json")
    finally:
        server.close()
    assert time.monotonic() - started < 3.0 + 0.5 + 1.0  # the deadline, one read time-out, slack
    message = str(failed.value)
    assert message.startswith("get s3://bucket/p/runs/r1/ingest/_MANIFEST.json failed after ")
    assert "not answering: Read timeout on endpoint URL" in message and "check store.endpoint_url" in message
    assert caplog.records and all("; retry " in r.getMessage() for r in caplog.records)


def test_default_store_deadline_is_a_minute() -> None:
    retry = RetryConfig()
    assert (retry.connect_timeout_s, retry.read_timeout_s, retry.deadline_s) == (5.0, 10.0, 60.0)


class NotS3Handler(http.server.BaseHTTPRequestHandler):
    """Answers 404 with an HTML page to every request, like a web server that is not S3."""

    def _not_found(self) -> None:
        body = b"<html><body>404 Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _not_found

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_endpoint_that_is_not_s3_is_named_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from recloop.cli import main

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotS3Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1700000000\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"name: t\nstore: {{root: 's3://bucket/p', endpoint_url: '{endpoint}', access_key_id: k, "
        f"secret_access_key: s}}\ndata: {{interactions: {{path: '{events}'}}}}\n"
    )
    try:
        code = main(["step", "ingest", "--config", str(config), "--run-id", "r1"])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 1
    assert f"the endpoint {endpoint} answered 404 Not Found without an S3 error code" in err
    assert "check store.endpoint_url" in err and "Traceback" not in err


def test_missing_s3_credentials_say_where_they_come_from(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recloop.config import StoreConfig

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(StoreConfig(root="s3://bucket/p", endpoint_url=s3_server.endpoint_url, region=s3_server.region))
    with pytest.raises(StoreError) as failed:
        store.put_bytes("k", b"x")
    message = str(failed.value)
    assert "no S3 credentials (Unable to locate credentials)" in message
    for source in ("store.access_key_id", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "~/.aws/credentials"):
        assert source in message


@pytest.mark.s3
def test_browser_urls_open_without_credentials(s3_store: S3Store, file_store: FileStore) -> None:
    import httpx

    s3_store.put_bytes("runs/r1/evaluate/report.html", b"<html>report</html>")
    url = s3_store.browser_url("runs/r1/evaluate/report.html", 3600)
    assert url.startswith("http") and "X-Amz-Signature=" in url
    page = httpx.get(url, timeout=30)  # no credentials: the signature is the permission
    assert page.status_code == 200 and page.content == b"<html>report</html>"
    file_store.put_bytes("runs/r1/evaluate/report.html", b"<html>report</html>")
    local = file_store.browser_url("runs/r1/evaluate/report.html", 3600)
    assert local.startswith("file:///") and local.endswith("/runs/r1/evaluate/report.html")
