"""Serving under operations: hot swap while clients hammer the API, SIGTERM with acknowledged feedback,
a crash with a feedback spool, load shedding, S3 (SeaweedFS) as the store, and `recloop serve` errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from recloop.config.models import ModelConfig
from recloop.data.interactions import Histories, Interactions
from recloop.eventlog.records import feedback_schema
from recloop.models.base import FitContext, Recommender
from recloop.models.registry import register
from recloop.registry import ModelRegistry
from recloop.serving.eventlog import EventLog
from recloop.store import FileStore
from support.serving_helpers import (
    API_KEY,
    HMAC_KEY,
    MODEL_NAME,
    ServeProcess,
    clustered_mf,
    fit_mf,
    fit_popularity,
    make_dataset,
    publish,
    running,
    serving_config,
    write_config,
)

# ---------------------------------------------------------------------------------------------- hot swap


def test_hot_swap_under_concurrent_requests_never_fails_a_request(tmp_path: Path) -> None:
    data = make_dataset()
    models = {1: fit_mf(data, seed=1), 2: fit_popularity(data), 3: fit_mf(data, seed=3, factors=4)}
    store = FileStore(f"file://{tmp_path / 'store'}")
    publish(store, models[1], data, tmp_path, "run-1")
    failures: list[str] = []
    seen: list[list[int]] = [[] for _ in range(4)]
    stop = threading.Event()

    with running(store, serving_config(poll_interval="50ms")) as server:

        def client(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                i = 0
                while not stop.is_set():
                    i += 1
                    if n % 2:
                        r = http.get("/v1/recommendations", params={"user_id": f"user-{i % 40}", "k": 5})
                    else:
                        r = http.post("/v1/recommendations", json={"history": ["item-1", "item-20"], "k": 5})
                    if r.status_code != 200 or len(r.json()["items"]) != 5:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        seen[n].append(r.json()["model"]["version"])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        registry = ModelRegistry(store, MODEL_NAME)

        def wait_for(version: int) -> None:
            deadline = time.monotonic() + 30
            while not any(s and s[-1] == version for s in seen):
                assert time.monotonic() < deadline, f"v{version} never served"
                time.sleep(0.02)
            time.sleep(0.3)  # keep requests flowing on the new version for a while

        time.sleep(0.3)
        publish(store, models[2], data, tmp_path, "run-2")
        wait_for(2)
        publish(store, models[3], data, tmp_path, "run-3")
        wait_for(3)
        registry.rollback(reason="test rollback")  # back to v2
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz").json()["version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        final = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 5}).json()
        metrics = httpx.get(f"{server.url}/metrics").text

    assert failures == []
    total = sum(len(s) for s in seen)
    assert total > 50
    for versions in seen:
        # Each client sees the versions in alias order (1, 2, 3, then the rollback to 2), never a step back
        # to an older model once a newer one answered it: the swap is one atomic switch.
        changes = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
        order = iter([1, 2, 3, 2])
        assert all(v in order for v in changes), changes
    assert set(Counter(v for s in seen for v in s)) == {1, 2, 3}
    expected = models[2].recommend(users=[3], k=5).ids[0]
    assert final["model"]["version"] == 2 and [i["item_id"] for i in final["items"]] == [
        data.item_ids[i] for i in expected
    ]
    assert "recloop_model_swaps_total 3.0" in metrics


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(tmp_path: Path) -> None:
    data = make_dataset()
    store = FileStore(f"file://{tmp_path / 'store'}")
    publish(store, fit_popularity(data), data, tmp_path, "run-1")
    with running(store) as server:
        v2 = publish(store, fit_mf(data), data, tmp_path, "run-2", promote=False)
        # Corrupt v2's weights after it was committed: its manifest hash no longer matches.
        path = store.local_path(f"models/{MODEL_NAME}/v{v2.version}/model/arrays.safetensors")
        path.write_bytes(b"garbage")
        ModelRegistry(store, MODEL_NAME).promote(v2.version)
        deadline = time.monotonic() + 20
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/v1/admin/status", headers={"X-API-Key": API_KEY}).json()
            if status["last_error"]:
                break
            time.sleep(0.05)
        assert "v2" in status["last_error"] and "still serving v1" in status["last_error"]
        assert "does not match its manifest" in status["last_error"]
        assert status["production_version"] == 2 and status["model"]["version"] == 1
        r = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"})
        assert r.status_code == 200 and r.json()["model"]["version"] == 1
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert "recloop_model_load_failures_total 1.0" in httpx.get(f"{server.url}/metrics").text


# ---------------------------------------------------------------------------------------------- shedding


class SlowConfig(ModelConfig):
    type: Literal["serving_test_slow"] = "serving_test_slow"


@register(SlowConfig)
class SlowModel(Recommender):
    """Test-only: takes 0.4 s per request, so concurrent requests pile up deterministically."""

    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> SlowModel:
        self._remember(train)
        self.scores = np.arange(train.n_items, dtype=np.float32)[::-1].copy()
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        time.sleep(0.4)
        return np.tile(self.scores, (len(histories), 1))

    def _state(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.scores = arrays["scores"]


def test_overload_is_shed_with_429_never_5xx(tmp_path: Path) -> None:
    data = make_dataset()
    store = FileStore(f"file://{tmp_path / 'store'}")
    publish(store, SlowModel(SlowConfig()).fit(data.train), data, tmp_path, "run-1")
    statuses: list[int] = []
    with running(store, serving_config(limits={"max_concurrency": 2})) as server:

        def call() -> None:
            r = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"}, timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and "limit of 2" in r.json()["detail"]

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        # Probes are never shed, even now.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        for t in threads:
            t.join()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    assert "recloop_requests_shed_total 4.0" in metrics


# ---------------------------------------------------------------------------------------------- durability


def _feedback_ids(store: FileStore) -> list[str]:
    out = []
    for key in store.list("logs/feedback"):
        out += pq.read_table(io.BytesIO(store.get_bytes(key))).column("feedback_id").to_pylist()
    return out


def _post_feedback(url: str, n: int) -> list[str]:
    acknowledged = []
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}) as http:
        for i in range(n):
            r = http.post(
                "/v1/feedback",
                json={
                    "events": [
                        {"item_id": f"item-{i % 30}", "event_type": "click", "user_id": f"user-{i % 7}"},
                        {"item_id": f"item-{(i + 1) % 30}", "event_type": "view"},
                    ]
                },
            )
            assert r.status_code == 202, r.text
            acknowledged += r.json()["feedback_ids"]
    return acknowledged


def test_acknowledged_feedback_survives_sigterm(tmp_path: Path) -> None:
    data = make_dataset()
    store = FileStore(f"file://{tmp_path / 'store'}")
    publish(store, fit_popularity(data), data, tmp_path, "run-1")
    server = ServeProcess(write_config(tmp_path / "serve.yaml", store.root))
    try:
        server.wait_ready()
        httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"})
        acknowledged = _post_feedback(server.url, 20)
        assert _feedback_ids(store) == []  # still buffered: flush_rows and flush_interval are large
        code = server.terminate()
    finally:
        server.kill()
    log = server.log()
    assert code == 0, log
    assert sorted(_feedback_ids(store)) == sorted(acknowledged) and len(acknowledged) == 40
    assert len(store.list("logs/impressions")) == 1
    assert "user-1" not in log and "user_id" not in log  # access log lines carry no query string
    assert "GET /v1/recommendations 200" in log


def test_feedback_spool_survives_a_crash_and_is_replayed(tmp_path: Path) -> None:
    data = make_dataset()
    store = FileStore(f"file://{tmp_path / 'store'}")
    publish(store, fit_popularity(data), data, tmp_path, "run-1")
    spool = tmp_path / "spool"
    config = write_config(tmp_path / "serve.yaml", store.root, spool_dir=spool)
    first = ServeProcess(config)
    try:
        first.wait_ready()
        acknowledged = _post_feedback(first.url, 5)
    finally:
        first.kill()  # SIGKILL: no graceful shutdown, nothing flushed
    assert _feedback_ids(store) == [] and list(spool.glob("feedback-*.jsonl"))
    second = ServeProcess(config, log_path=tmp_path / "second.log")
    try:
        second.wait_ready()
        deadline = time.monotonic() + 20
        while sorted(_feedback_ids(store)) != sorted(acknowledged):  # replayed and flushed at start-up
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.1)
        assert second.terminate() == 0
    finally:
        second.kill()
    assert sorted(_feedback_ids(store)) == sorted(acknowledged)
    assert not list(spool.glob("feedback-*.jsonl"))


def test_failed_flush_keeps_feedback_and_a_full_buffer_refuses_more(tmp_path: Path) -> None:
    from recloop.config import ServingLogsConfig
    from recloop.serving.eventlog import LogFull

    class Unreachable(FileStore):
        down = True

        def put_bytes(self, key: str, data: bytes) -> None:
            if self.down:
                raise OSError("store unreachable")
            super().put_bytes(key, data)

    store = Unreachable(f"file://{tmp_path / 'store'}")
    log = EventLog(
        store,
        "feedback",
        feedback_schema(),
        "received_at",
        ServingLogsConfig(max_buffer_rows=3),
        "test",
        None,
        refuse_when_full=True,
    )
    now = datetime.now(UTC)
    record = {
        "feedback_id": "f1",
        "received_at": now,
        "event_time": now,
        "request_id": None,
        "user_key": None,
        "session_key": None,
        "item_id": "item-1",
        "event_type": "click",
        "value": None,
        "position": None,
    }
    log.append([record, {**record, "feedback_id": "f2"}])
    assert log.flush() == 0 and log.buffered == 2
    with pytest.raises(LogFull, match="retry later"):
        log.append([{**record, "feedback_id": "f3"}, {**record, "feedback_id": "f4"}])
    store.down = False
    assert log.flush() == 2 and log.buffered == 0
    assert sorted(_feedback_ids(store)) == ["f1", "f2"]


# ---------------------------------------------------------------------------------------------- S3 and CLI


@pytest.mark.s3
def test_serving_from_s3_with_logs_written_back_encrypted(tmp_path: Path, s3_server) -> None:
    from recloop.store import S3Store

    bucket = s3_server.new_bucket()
    store = S3Store(s3_server.store_config(bucket, prefix="recloop", server_side_encryption="AES256"))
    data = make_dataset()
    model = fit_mf(data)
    publish(store, model, data, tmp_path, "run-1")
    # Only the admin flush below writes: the background flusher's 1 s interval could beat it under load.
    with running(store, serving_config(logs={"flush_interval": "1h"})) as server:
        r = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 4})
        httpx.post(
            f"{server.url}/v1/feedback",
            headers={"X-API-Key": API_KEY},
            json={"events": [{"item_id": "item-1", "event_type": "click", "user_id": "user-3"}]},
        )
        flushed = httpx.post(f"{server.url}/v1/admin/flush", headers={"X-API-Key": API_KEY}).json()
    assert [i["item_id"] for i in r.json()["items"]] == [
        data.item_ids[i] for i in model.recommend(users=[3], k=4).ids[0]
    ]
    assert flushed["written"] == {"feedback": 1, "impressions": 1}
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="recloop/logs/")["Contents"]]
    assert len(keys) == 2 and all(k.endswith(".parquet") for k in keys)
    # The store asked for encryption at rest on every log object it wrote.
    assert all(client.head_object(Bucket=bucket, Key=k).get("ServerSideEncryption") == "AES256" for k in keys)


def test_recloop_serve_refuses_to_start_without_a_pseudonymization_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "serve.yaml", f"file://{tmp_path / 'store'}")
    env = {k: v for k, v in os.environ.items() if k not in ("RECLOOP_USER_HMAC_KEY", "RECLOOP_API_KEYS")}
    recloop = str(Path(sys.executable).parent / "recloop")
    missing = subprocess.run(
        [recloop, "serve", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    assert "RECLOOP_USER_HMAC_KEY" in missing.stderr and "serving.privacy.hmac_key" in missing.stderr
    short = subprocess.run(
        [recloop, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "RECLOOP_USER_HMAC_KEY": HMAC_KEY, "RECLOOP_API_KEYS": "tooshort"},
    )
    assert short.returncode == 2 and "at least 16 characters" in short.stderr and "tooshort" not in short.stderr


# ---------------------------------------------------------------------------------------------- publish


def _commit_run_for_publish(store: FileStore, model: Recommender, data: Any, tmp: Path, run_id: str, cfg: Any) -> None:
    """preprocess, train, evaluate and gate artifacts of one run, as those steps commit them."""
    import pandas as pd

    from recloop.artifacts import ArtifactWriter, run_prefix

    uri = {step: store.uri(run_prefix(run_id, step)) for step in ("preprocess", "train", "evaluate")}
    with ArtifactWriter(store, run_prefix(run_id, "preprocess"), "preprocess", run_id, cfg.config_hash()) as w:
        w.put_parquet(
            "id_maps/users.parquet",
            pd.DataFrame({"user_idx": np.arange(len(data.user_ids), dtype=np.int32), "user_id": data.user_ids}),
        )
        w.put_parquet(
            "id_maps/items.parquet",
            pd.DataFrame({"item_idx": np.arange(len(data.item_ids), dtype=np.int32), "item_id": data.item_ids}),
        )
        w.put_parquet("items.parquet", data.items)
    from recloop.artifacts.kinds import TrainedModel

    with ArtifactWriter(
        store, f"{run_prefix(run_id, 'train')}/mf", "train", run_id, cfg.config_hash(), parents=[uri["preprocess"]]
    ) as w:
        TrainedModel.write(
            w,
            model.save(tmp / f"{run_id}-bundle"),
            {"type": "mf", "train_seconds": 0.1, "epochs": 1, "best_valid_metric": None},
        )
    with ArtifactWriter(
        store,
        run_prefix(run_id, "evaluate"),
        "evaluate",
        run_id,
        cfg.config_hash(),
        parents=[uri["preprocess"], f"{uri['train']}/mf"],
    ) as w:
        w.put_json(
            "metrics.json",
            {
                "split_fingerprint": "fp",
                "candidates": {"mf": {"metrics": {}}},
                "preprocess_uri": uri["preprocess"],
                "train_uri": uri["train"],
            },
        )
    with ArtifactWriter(
        store, run_prefix(run_id, "gate"), "gate", run_id, cfg.config_hash(), parents=[uri["evaluate"]]
    ) as w:
        w.put_json(
            "blessing.json",
            {
                "decision": "blessed",
                "candidate": "mf",
                "model_type": "mf",
                "run_id": run_id,
                "evaluate_uri": uri["evaluate"],
                "split_fingerprint": "fp",
                "champion_version": None,
                "thresholds": [],
                "reasons": ["test"],
            },
        )


def test_publish_step_stores_the_ann_index_in_the_bundle_and_serve_uses_it(tmp_path: Path) -> None:
    import pandas as pd

    from recloop import config as config_mod
    from recloop.steps.base import RunParams, StepContext, run_step

    store = FileStore(f"file://{tmp_path / 'store'}")
    n_items, n_users = 2000, 300
    model = clustered_mf(n_items, n_users=n_users)
    data = make_dataset()
    data.item_ids = [f"item-{i}" for i in range(n_items)]
    data.user_ids = [f"user-{u}" for u in range(n_users)]
    data.items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items, dtype=np.int32),
            "item_id": data.item_ids,
            "text": data.item_ids,
            "categories": [[] for _ in range(n_items)],
        }
    )
    cfg = config_mod.from_dict(
        {
            "name": MODEL_NAME,
            "store": {"root": store.root},
            "data": {"interactions": {"path": "/data/events.csv"}},
            "serving": {"ann": {"min_items": 1000, "recall_queries": 100}},
        }
    )
    _commit_run_for_publish(store, model, data, tmp_path, "run-1", cfg)
    logs: list[str] = []
    ctx = StepContext(cfg, store, "run-1", RunParams(force=True), log=logs.append)
    run_step("publish", ctx)
    files = store.list(f"models/{MODEL_NAME}/v1/model/ann")
    assert files == [f"models/{MODEL_NAME}/v1/model/ann/ann.json", f"models/{MODEL_NAME}/v1/model/ann/index.hnsw"]
    assert any("ANN index over 2000 items, recall@10" in line for line in logs)
    run_step("publish", ctx)  # a re-run rebuilds the same bytes, so it reuses v1
    assert [v.version for v in ModelRegistry(store, MODEL_NAME).list_versions()] == [1]
    with running(store, serving_config(ann={"min_items": 1000})) as server:
        info = httpx.get(f"{server.url}/v1/model").json()
    assert info["search"] == "ann" and info["ann"]["source"] == "bundle" and info["ann"]["recall@10"] >= 0.95
