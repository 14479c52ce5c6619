"""A real S3 endpoint for tests: SeaweedFS (`weed mini`) on free loopback ports, started and stopped by
`recloop_dev.local_stack` (the launcher `make up` uses too). The `s3_server` fixture holds one per session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from recloop_dev import local_stack

if TYPE_CHECKING:
    from recloop.config import StoreConfig

S3_TEST_ACCESS_KEY = "recloop-test-key"
S3_TEST_SECRET_KEY = "recloop-test-secret-0123456789"
S3_TEST_REGION = local_stack.S3_REGION
_START_ATTEMPTS = 3  # random ports can still race with another process; a fresh set usually works
_READY_TIMEOUT_S = 30.0


@dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint (started by `recloop_dev.local_stack.start_seaweedfs`)."""

    weed: local_stack.SeaweedFS
    access_key: str = S3_TEST_ACCESS_KEY
    secret_key: str = S3_TEST_SECRET_KEY
    region: str = S3_TEST_REGION

    @property
    def endpoint_url(self) -> str:
        return self.weed.endpoint_url

    @property
    def ports(self) -> dict[str, int]:
        return self.weed.ports

    @property
    def data_dir(self) -> Path:
        return self.weed.data_dir

    def env(self) -> dict[str, str]:
        """AWS variables for subprocesses that use the default credential chain."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self) -> Any:
        """A plain boto3 S3 client on this server (to inspect what the store wrote)."""
        return local_stack.s3_client(self.endpoint_url, self.access_key, self.secret_key, self.region, attempts=4)

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_config(self, bucket: str, prefix: str = "", **overrides: Any) -> StoreConfig:
        from recloop.config import StoreConfig

        root = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
        values: dict[str, Any] = {
            "root": root,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }
        values.update(overrides)
        return StoreConfig(**values)

    def log_tail(self, lines: int = 30) -> str:
        return self.weed.log_tail(lines)


def start_s3_server(base_dir: Path) -> S3Server:
    """Start SeaweedFS under `base_dir`, retrying on fresh ports; fails the test (no traceback) if it cannot."""
    try:
        local_stack.weed_binary()
    except local_stack.SeaweedFSError as exc:
        pytest.fail(str(exc), pytrace=False)
    failures: list[str] = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            weed = local_stack.start_seaweedfs(
                base_dir / f"weed-{attempt}",
                S3_TEST_ACCESS_KEY,
                S3_TEST_SECRET_KEY,
                # Like AWS: writing to a bucket nobody created is an error, not a new bucket.
                auto_create_bucket=False,
                ready_timeout_s=_READY_TIMEOUT_S,
            )
        except local_stack.SeaweedFSError as exc:
            failures.append(f"attempt {attempt}: {exc}")
            continue
        return S3Server(weed)
    pytest.fail("SeaweedFS did not start:\n" + "\n".join(failures), pytrace=False)
