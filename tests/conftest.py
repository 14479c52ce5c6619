"""Shared test fixtures.

Shared code (classes, constants, builders) lives in the `support` package next to this file; test modules
import it as `support.<module>`, never from this file.

Stores
  s3_server        session-wide SeaweedFS (`weed mini`) on free loopback ports: a real S3 endpoint
                   (`support.s3.S3Server`), started and stopped by `recloop_dev.local_stack`.
  s3_store_config  a `StoreConfig` for a fresh bucket (created) on that server, per test.
  s3_store         an `S3Store` over `s3_store_config`.
  file_store       a `FileStore` under tmp_path.
  any_store        parametrized over both: write a test once, run it against file:// and S3.

Never mock boto3 where S3 is meant: use these fixtures.

Models
  eval_test_models the test-only models `evaltest_table` and `evaltest_random` (support.eval_helpers) registered
                   for one test; use with `pytestmark = pytest.mark.usefixtures("eval_test_models")`.
  tiny_encoder     a local text-encoder folder: a random-weight 2-layer BERT (hidden 32) with the packaged
                   MiniLM's tokenizer and pooling files, so encoder code runs for real on a CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.encoders import write_tiny_encoder
from support.s3 import S3Server, start_s3_server

if TYPE_CHECKING:
    from recloop.config import StoreConfig
    from recloop.store import FileStore, S3Store


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session, on loopback ports no parallel run shares."""
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
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


@pytest.fixture
def eval_test_models() -> Iterator[None]:
    """The test-only evaluation models registered for the test, and removed again after it."""
    from support.eval_helpers import registered_test_models

    with registered_test_models():
        yield


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local model folder: random-weight BERT (hidden 32, 2 layers) with MiniLM's tokenizer and pooling."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    write_tiny_encoder(folder)
    return str(folder)
