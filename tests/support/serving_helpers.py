"""Helpers for the serving tests: a small structured dataset, published registry versions, and a real
uvicorn server on a loopback port (in a thread, or as a `recloop serve` subprocess).

The dataset has two taste blocks: users 0..n/2-1 interact with items of block A ("Space" category,
titles about rockets), the others with block B ("Cooking", titles about recipes); one item of each block
is extra popular. Every model learns the blocks, so tests can assert who gets what.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from recloop.config import ServingConfig
from recloop.data.interactions import Interactions
from recloop.eventlog.pseudonym import Pseudonymizer
from recloop.models.base import Recommender
from recloop.registry import ModelRegistry, ModelVersion, VersionSource
from recloop.serving.app import ServeRuntime, create_app
from recloop.serving.security import ApiKeys
from recloop.store import ArtifactStore
from support.net import free_port

API_KEY = "test-api-key-0123456789abcdef"
HMAC_KEY = "test-hmac-key-0123456789abcdef"
MODEL_NAME = "shop"


@dataclass
class Dataset:
    train: Interactions
    user_ids: list[str]
    item_ids: list[str]
    items: pd.DataFrame  # item_idx, item_id, text, categories


def make_dataset(
    n_users: int = 40, n_items: int = 30, seed: int = 0, per_user: int = 8, cold_items: int = 0
) -> Dataset:
    """`cold_items` extra items (ids after the others, cooking texts) that nobody interacted with."""
    rng = np.random.default_rng(seed)
    half_items = n_items // 2
    users, items, stamps = [], [], []
    for u in range(n_users):
        block = np.arange(half_items) if u < n_users // 2 else np.arange(half_items, n_items)
        # The block's first item is everyone's favourite; the rest drawn at random.
        chosen = [block[0]] + list(rng.choice(block[1:], size=per_user - 1, replace=False))
        for t, i in enumerate(chosen):
            users.append(u)
            items.append(int(i))
            stamps.append(1_700_000_000 + u * 1000 + t)
    total = n_items + cold_items
    train = Interactions.from_arrays(users, items, stamps, n_users=n_users, n_items=total)
    item_ids = [f"item-{i}" for i in range(total)]
    user_ids = [f"user-{u}" for u in range(n_users)]
    rows = []
    for i in range(total):
        # Word counts vary by item so that text scores never tie.
        word = "z" + chr(97 + i % 26) + chr(97 + i // 26)
        repeat_a, repeat_b = 1 + i % 5, 1 + (i // 5) % 5
        if i < half_items:
            text = f"Rocket launch {word}. " + "Space " * repeat_a + "travel orbit " * repeat_b
            cats = ["Space", "Science"] if i % 2 else ["Space"]
        else:
            text, cats = f"Pasta recipe {word}. " + "Cooking " * repeat_a + "dinner kitchen " * repeat_b, ["Cooking"]
        rows.append({"item_idx": i, "item_id": item_ids[i], "text": text, "categories": cats})
    return Dataset(train, user_ids, item_ids, pd.DataFrame(rows))


def fit_mf(data: Dataset, seed: int = 0, factors: int = 8) -> Recommender:
    from recloop.config.models import MFConfig
    from recloop.models.mf import MatrixFactorization

    return MatrixFactorization(MFConfig(factors=factors, epochs=8, seed=seed, solver="cholesky")).fit(data.train)


def clustered_mf(n_items: int, n_users: int = 300, dim: int = 16, seed: int = 0) -> Recommender:
    """An mf model with clustered factors (set directly: ANN behaviour does not need a real fit)."""
    from recloop.config.models import MFConfig
    from recloop.models.mf import MatrixFactorization

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, dim))
    items = (centers[rng.integers(0, 12, n_items)] + 0.5 * rng.standard_normal((n_items, dim))).astype(np.float32)
    users = (centers[rng.integers(0, 12, n_users)] + 0.5 * rng.standard_normal((n_users, dim))).astype(np.float32)
    model = MatrixFactorization(MFConfig(factors=dim))
    u = np.repeat(np.arange(n_users), 5)
    model._remember(Interactions.from_arrays(u, rng.integers(0, n_items, len(u)), n_users=n_users, n_items=n_items))
    model.user_factors, model.item_factors = users, items * rng.uniform(0.5, 1.5, (n_items, 1)).astype(np.float32)
    return model


def fit_popularity(data: Dataset) -> Recommender:
    from recloop.config.models import PopularityConfig
    from recloop.models.popularity import Popularity

    return Popularity(PopularityConfig()).fit(data.train)


def publish(
    store: ArtifactStore,
    model: Recommender,
    data: Dataset,
    tmp: Path,
    run_id: str,
    promote: bool = True,
    name: str = MODEL_NAME,
    bundle_hook: Any = None,
) -> ModelVersion:
    """Register a version as the publish step would (bundle, id maps, items) and promote it."""
    folder = tmp / f"publish-{run_id}"
    bundle = model.save(folder / "model")
    if bundle_hook is not None:
        bundle_hook(model, bundle)
    id_maps = folder / "id_maps"
    id_maps.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user_idx": np.arange(len(data.user_ids), dtype=np.int32), "user_id": data.user_ids}).to_parquet(
        id_maps / "users.parquet", index=False
    )
    pd.DataFrame({"item_idx": np.arange(len(data.item_ids), dtype=np.int32), "item_id": data.item_ids}).to_parquet(
        id_maps / "items.parquet", index=False
    )
    items_file = folder / "items.parquet"
    data.items.to_parquet(items_file, index=False)
    registry = ModelRegistry(store, name)
    version = registry.register(
        VersionSource(
            bundle_dir=bundle,
            candidate=model.type_name,
            model_type=model.type_name,
            run_id=run_id,
            id_maps_dir=id_maps,
            items_file=items_file,
        )
    )
    if promote:
        registry.promote(version.version, reason=f"test {run_id}")
    return version


def serving_config(**overrides: Any) -> ServingConfig:
    """A ServingConfig from nested keyword overrides, e.g. serving_config(rules={"max_per_category": 1})."""
    base: dict[str, Any] = {"poll_interval": "100ms", "logs": {"flush_interval": "1s"}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return ServingConfig.model_validate(base)


def runtime(store: ArtifactStore, settings: ServingConfig | None = None, keys: str | None = API_KEY) -> ServeRuntime:
    return ServeRuntime(
        settings=settings or serving_config(),
        model_name=MODEL_NAME,
        store=store,
        api_keys=ApiKeys.parse(keys, "test"),
        pseudonymize=Pseudonymizer(HMAC_KEY, "test"),
    )


class ServerThread:
    """A real uvicorn server for `app` on a loopback port, in a background thread."""

    def __init__(self, app: Any):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = httpx.get(f"{self.url}/readyz")
            if last.status_code == 200:
                return last.json()
            time.sleep(0.05)
        raise AssertionError(f"server not ready: {last.status_code if last else None} {last.text if last else ''}")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@contextlib.contextmanager
def running(
    store: ArtifactStore, settings: ServingConfig | None = None, keys: str | None = API_KEY, ready: bool = True
) -> Iterator[ServerThread]:
    app = create_app(runtime(store, settings, keys))
    with ServerThread(app) as server:
        if ready:
            server.wait_ready()
        yield server


def write_config(path: Path, store_root: str, spool_dir: Path | None = None) -> Path:
    """A pipeline config for `recloop serve`; logs flush only at shutdown (or via the admin route)."""
    spool = f', spool_dir: "{spool_dir}"' if spool_dir else ""
    path.write_text(
        f"name: {MODEL_NAME}\n"
        f'store: {{root: "{store_root}"}}\n'
        "data: {interactions: {path: /nonexistent/events.csv}}\n"
        "serving:\n"
        "  poll_interval: 200ms\n"
        f"  logs: {{flush_interval: 60s, flush_rows: 100000{spool}}}\n"
    )
    return path


class ServeProcess:
    """`recloop serve` as a subprocess (its own session, so signals reach only it)."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or config.with_suffix(".log")
        full_env = dict(os.environ, RECLOOP_API_KEYS=API_KEY, RECLOOP_USER_HMAC_KEY=HMAC_KEY)
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "recloop"),
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
                "--graceful-timeout",
                "5",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"recloop serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"recloop serve not ready in {timeout}s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
