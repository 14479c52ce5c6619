"""Shared test fixtures.

Stores
  s3_server        session-wide SeaweedFS (`weed mini`) on free loopback ports: a real S3 endpoint, started
                   and stopped by `recloop_dev.local_stack` (the launcher `make up` uses too).
  s3_store_config  a `StoreConfig` for a fresh bucket (created) on that server, per test.
  s3_store         an `S3Store` over `s3_store_config`.
  file_store       a `FileStore` under tmp_path.
  any_store        parametrized over both: write a test once, run it against file:// and S3.

Never mock boto3 where S3 is meant: use these fixtures.

Models
  tiny_encoder     a local text-encoder folder: a random-weight 2-layer BERT (hidden 32) with the packaged
                   MiniLM's tokenizer and pooling files, so encoder code runs for real on a CPU in seconds.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from recloop_dev import local_stack

if TYPE_CHECKING:
    from recloop.config import StoreConfig
    from recloop.store import FileStore, S3Store

S3_TEST_ACCESS_KEY = "recloop-test-key"
S3_TEST_SECRET_KEY = "recloop-test-secret-0123456789"
S3_TEST_REGION = local_stack.S3_REGION
_START_ATTEMPTS = 3  # random ports can still race with another process; a fresh set usually works
_READY_TIMEOUT_S = 30.0


def free_port() -> int:
    """A currently free loopback TCP port (for servers a test starts itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _start_weed(base_dir: Path) -> S3Server:
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session, on loopback ports no parallel run shares."""
    server = _start_weed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.weed.stop()


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


# ---------------------------------------------------------------------------------------------- models

TINY_ENCODER_LAYERS = 2


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A local model folder: random-weight BERT (hidden 32, 2 layers) with MiniLM's tokenizer and pooling."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from recloop.models.text_encoder import EncoderConfig, resolve_model_dir

    source = resolve_model_dir(EncoderConfig())
    folder = tmp_path_factory.mktemp("tiny-encoder")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json"):
        shutil.copy(source / name, folder / name)
    shutil.copytree(source / "1_Pooling", folder / "1_Pooling")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=TINY_ENCODER_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)
