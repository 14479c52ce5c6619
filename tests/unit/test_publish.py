"""Publish step: checks the blessing itself, registers a version, moves the alias by compare-and-swap."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recloop import config as config_mod
from recloop.artifacts import Artifact, ArtifactWriter, run_prefix
from recloop.artifacts.kinds import TrainedModel
from recloop.errors import ArtifactError, NotBlessedError, StoreError
from recloop.models.base import Recommender
from recloop.registry import AliasConflict, ModelRegistry
from recloop.steps.base import RunParams, StepContext, run_step
from recloop.store import FileStore
from support.helpers import CountsModel, fit_counts

N_USERS, N_ITEMS = 5, 9


def make_config(store: Any, name: str = "movies") -> config_mod.PipelineConfig:
    return config_mod.from_dict(
        {"name": name, "store": {"root": store.root}, "data": {"interactions": {"path": "/data/ratings.csv"}}}
    )


def fit(seed: int) -> CountsModel:
    return fit_counts(seed, N_USERS, N_ITEMS, per_user=4)


def split_frames() -> dict[str, pd.DataFrame]:
    """Leave-last-out splits: 4 distinct items per user, the last one test, the one before valid."""
    rng = np.random.default_rng(7)
    rows = [(u, int(item), 1000 * u + t) for u in range(N_USERS) for t, item in enumerate(rng.permutation(N_ITEMS)[:4])]
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).astype(
        {"user_idx": "int32", "item_idx": "int32", "timestamp": "int64"}
    )
    frame["weight"] = np.float32(1.0)
    frame["rating"] = 4.0
    position = frame.groupby("user_idx").cumcount()
    return {"train": frame[position < 2], "valid": frame[position == 2], "test": frame[position == 3]}


def build_run(
    store: Any,
    tmp: Path,
    run_id: str,
    seed: int,
    *,
    champion: int | None = None,
    blessing: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    evaluate_parents: list[str] | None = None,
) -> None:
    """Commit preprocess, train, evaluate and gate artifacts for `run_id` as those steps would."""
    cfg_hash = make_config(store).config_hash()
    uri = {step: store.uri(run_prefix(run_id, step)) for step in ("ingest", "preprocess", "train", "evaluate", "gate")}
    with ArtifactWriter(
        store, run_prefix(run_id, "preprocess"), "preprocess", run_id, cfg_hash, parents=[uri["ingest"]]
    ) as w:
        w.put_parquet(
            "id_maps/users.parquet",
            pd.DataFrame(
                {"user_idx": np.arange(N_USERS, dtype=np.int32), "user_id": [f"u{i}" for i in range(N_USERS)]}
            ),
        )
        w.put_parquet(
            "id_maps/items.parquet",
            pd.DataFrame(
                {"item_idx": np.arange(N_ITEMS, dtype=np.int32), "item_id": [f"m{i}" for i in range(N_ITEMS)]}
            ),
        )
        w.put_parquet(
            "items.parquet",
            pd.DataFrame(
                {
                    "item_idx": np.arange(N_ITEMS, dtype=np.int32),
                    "item_id": [f"m{i}" for i in range(N_ITEMS)],
                    "text": [f"Movie {i}" for i in range(N_ITEMS)],
                    "categories": [["Drama"]] * N_ITEMS,
                }
            ),
        )
        for name, frame in split_frames().items():
            w.put_parquet(f"{name}.parquet", frame)
        w.summary.update({"n_users": N_USERS, "n_items": N_ITEMS})
    with ArtifactWriter(
        store, f"{run_prefix(run_id, 'train')}/counts", "train", run_id, cfg_hash, parents=[uri["preprocess"]]
    ) as w:
        TrainedModel.write(
            w,
            fit(seed).save(tmp / f"{run_id}-bundle"),
            {"type": "test_counts", "train_seconds": 0.1, "epochs": 1, "best_valid_metric": None},
        )
    metrics_doc = {
        "split_fingerprint": f"fp-{run_id}",
        "k": [10],
        "candidates": {"counts": {"metrics": {"ndcg@10": {"value": 0.3, "ci": [0.2, 0.4]}}}},
        "champion": None if champion is None else {"version": champion},
    }
    metrics_doc.update(metrics or {})
    with ArtifactWriter(
        store,
        run_prefix(run_id, "evaluate"),
        "evaluate",
        run_id,
        cfg_hash,
        parents=evaluate_parents or [uri["preprocess"], f"{uri['train']}/counts"],
    ) as w:
        w.put_json("metrics.json", metrics_doc)
    doc = {
        "decision": "blessed",
        "candidate": "counts",
        "model_type": "test_counts",
        "run_id": run_id,
        "evaluate_uri": uri["evaluate"],
        "split_fingerprint": f"fp-{run_id}",
        "primary_metric": "ndcg@10",
        "thresholds": [{"metric": "ndcg@10", "kind": "absolute", "required": 0.1, "value": 0.3, "passed": True}],
        "champion_version": champion,
        "reasons": ["counts passed every threshold"],
    }
    doc.update(blessing or {})
    with ArtifactWriter(store, run_prefix(run_id, "gate"), "gate", run_id, cfg_hash, parents=[uri["evaluate"]]) as w:
        w.put_json("blessing.json", {k: v for k, v in doc.items() if v is not ...})


def publish(
    store: Any, run_id: str, dry_run: bool = False, name: str = "movies", inputs: dict[str, str] | None = None
) -> Any:
    ctx = StepContext(
        make_config(store, name), store, run_id, RunParams(dry_run=dry_run, force=True), log=lambda msg: None
    )
    return run_step("publish", ctx, inputs=inputs)


def alias_bytes(store: Any) -> bytes | None:
    key = "models/movies/production.json"
    return store.get_bytes(key) if store.exists(key) else None


# ---------------------------------------------------------------------------------------------- happy path


def test_publish_registers_the_version_and_moves_the_alias(any_store, tmp_path: Path) -> None:
    build_run(any_store, tmp_path, "r1", seed=1)
    manifest = publish(any_store, "r1")
    assert manifest.uri == any_store.uri("runs/r1/publish")
    assert {
        k: manifest.summary[k]
        for k in ("model_name", "version", "candidate", "dry_run", "promoted", "previous_version")
    } == {
        "model_name": "movies",
        "version": 1,
        "candidate": "counts",
        "dry_run": False,
        "promoted": True,
        "previous_version": None,
    }
    reg = ModelRegistry(any_store, "movies")
    alias = reg.production()
    assert (alias.version, alias.previous_version, alias.run_id, alias.uri) == (
        1,
        None,
        "r1",
        any_store.uri("models/movies/v1"),
    )
    assert alias.reason == f"blessed by {any_store.uri('runs/r1/gate')} (counts, ndcg@10=0.3)"
    version = reg.get(1)
    assert (
        version.candidate,
        version.model_type,
        version.run_id,
        version.split_fingerprint,
        version.primary_metric,
        version.primary_value,
    ) == ("counts", "test_counts", "r1", "fp-r1", "ndcg@10", 0.3)
    assert version.blessing["decision"] == "blessed"
    assert version.metrics["candidates"]["counts"]["metrics"]["ndcg@10"]["value"] == 0.3
    assert version.config["name"] == "movies"
    assert version.lineage == {
        **{role: any_store.uri(f"runs/r1/{role}") for role in ("gate", "evaluate", "preprocess", "ingest")},
        "train": any_store.uri("runs/r1/train/counts"),
    }
    files = set(Artifact.open(any_store, "models/movies/v1").manifest.files)
    assert {
        "model/model.json",
        "model/arrays.safetensors",
        "id_maps/users.parquet",
        "id_maps/items.parquet",
        "items.parquet",
        "config.json",
        "metrics.json",
        "blessing.json",
        "version.json",
    } <= files
    # The production bundle recommends exactly what the trained candidate does.
    bundle = reg.champion_bundle(tmp_path / "champ")
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(
        Recommender.load(bundle.path).recommend(users=users, k=4).ids, fit(1).recommend(users=users, k=4).ids
    )
    assert [(e.action, e.outcome, e.version) for e in reg.history()] == [
        ("register", "success", 1),
        ("publish", "success", 1),
    ]

    # The next run was evaluated against v1 and replaces it; publishing again is a no-op.
    build_run(any_store, tmp_path, "r2", seed=2, champion=1)
    assert publish(any_store, "r2").summary["version"] == 2
    assert (reg.production().version, reg.production().previous_version) == (2, 1)
    again = publish(any_store, "r2")
    assert (again.summary["version"], again.summary["previous_version"]) == (2, 2)
    assert [v.version for v in reg.list_versions()] == [1, 2]
    assert reg.history()[-1].outcome == "noop"


def test_dry_run_registers_but_does_not_move_the_alias(any_store, tmp_path: Path) -> None:
    build_run(any_store, tmp_path, "r1", seed=1)
    publish(any_store, "r1")
    build_run(any_store, tmp_path, "r2", seed=2, champion=1)
    before = alias_bytes(any_store)
    manifest = publish(any_store, "r2", dry_run=True)
    assert manifest.uri == any_store.uri("runs/r2/publish-dry-run")
    assert (manifest.summary["dry_run"], manifest.summary["promoted"], manifest.summary["version"]) == (True, False, 2)
    assert alias_bytes(any_store) == before
    assert not Artifact.exists(any_store, "runs/r2/publish")  # a real publish of r2 will not be skipped
    reg = ModelRegistry(any_store, "movies")
    assert reg.history()[-1].outcome == "dry_run"
    # The real publish reuses the dry run's version instead of registering the bundle twice.
    real = publish(any_store, "r2")
    assert (real.summary["version"], real.summary["promoted"]) == (2, True)
    assert [v.version for v in reg.list_versions()] == [1, 2]
    assert reg.production().version == 2


def test_publish_accepts_the_blessing_of_the_real_evaluate_and_gate_steps(
    file_store: FileStore, tmp_path: Path
) -> None:
    """The contract end to end: evaluate (with the registry champion) -> gate -> publish."""
    store = file_store
    cfg = config_mod.from_dict(
        {
            "name": "movies",
            "store": {"root": store.root},
            "data": {"interactions": {"path": "/data/ratings.csv"}},
            "evaluation": {"k": [5], "primary": "ndcg@5", "bootstrap": 0},
        }
    )
    for run_id, seed in (("r1", 1), ("r2", 2)):
        build_run(store, tmp_path, run_id, seed)  # the evaluate and gate artifacts are recomputed below
        ctx = StepContext(cfg, store, run_id, RunParams(force=True), log=lambda m: None)
        run_step("evaluate", ctx)
        blessing = ctx.open(run_step("gate", ctx).uri).read_json("blessing.json")
        assert blessing["decision"] == "blessed"
        manifest = run_step("publish", ctx)
        assert manifest.summary["promoted"] is True
    reg = ModelRegistry(store, "movies")
    alias = reg.production()
    assert (alias.version, alias.previous_version) == (2, 1)
    v2 = reg.get(2)
    assert v2.blessing["champion_version"] == 1  # r2 was judged against the published r1
    assert v2.split_fingerprint == v2.metrics["split_fingerprint"] == blessing["split_fingerprint"]
    assert v2.primary_metric == "ndcg@5" and v2.primary_value == blessing["primary_value"]


# ---------------------------------------------------------------------------------------------- refusals


# case -> (build_run overrides for run r1, given the store; the reason publish must give)
REFUSALS: dict[str, tuple[Callable[[Any], dict[str, Any]], str]] = {
    "rejected": (
        lambda st: {"blessing": {"decision": "rejected", "reasons": ["ndcg@10 0.01 < required 0.02"]}},
        r"decision in .*runs/r1/gate is 'rejected', not 'blessed':\n  - ndcg@10 0.01 < required 0.02",
    ),
    "other run": (lambda st: {"blessing": {"run_id": "r0"}}, r"blessing is for run 'r0', but this is run 'r1'"),
    "unknown candidate": (
        lambda st: {"blessing": {"candidate": "ease"}},
        r"blessed candidate 'ease' is not among this run's trained candidates in .*runs/r1/train "
        r"\(it has: counts\)",
    ),
    "other model type": (
        lambda st: {"blessing": {"model_type": "ease"}},
        r"blessing is for a 'ease' model, but candidate 'counts' .* is a 'test_counts' model",
    ),
    "other model name": (
        lambda st: {"blessing": {"model_name": "books"}},
        r"blessing is for model 'books', but this pipeline publishes 'movies'",
    ),
    "metrics from another split": (
        lambda st: {"metrics": {"split_fingerprint": "fp-older-split"}},
        r"metrics.json is from another split \(fingerprint fp-older-spl…\) than the "
        r"blessing \(fingerprint fp-r1…\)",
    ),
    "other evaluate": (
        lambda st: {"blessing": {"evaluate_uri": st.uri("runs/r0/evaluate")}},
        r"blessing judged metrics of .*runs/r0/evaluate, not those of .*runs/r1/evaluate",
    ),
    "evaluate of other preprocess": (
        lambda st: {"evaluate_parents": [st.uri("runs/r0/preprocess"), st.uri("runs/r1/train/counts")]},
        r"computed from another preprocess artifact \(.*runs/r0/preprocess.*\), not .*runs/r1/preprocess",
    ),
    "metrics of another train": (
        lambda st: {"metrics": {"train_uri": st.uri("runs/r0/train")}},
        r"metrics.json measured the train artifact .*runs/r0/train, not .*runs/r1/train",
    ),
    "no champion recorded": (
        lambda st: {"blessing": {"champion_version": ...}},
        r"does not say which champion it was judged against",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_publish_refuses_what_the_blessing_does_not_cover(file_store: FileStore, tmp_path: Path, case: str) -> None:
    """Store-independent checks: run on file:// only (the S3 paths are covered by the other tests)."""
    store = file_store
    build_run(store, tmp_path, "r0", seed=0)
    publish(store, "r0")
    before = alias_bytes(store)
    overrides, message = REFUSALS[case]
    build_run(store, tmp_path, "r1", seed=1, champion=1, **overrides(store))
    with pytest.raises(NotBlessedError, match=message) as info:
        publish(store, "r1")
    assert "refusing to publish run 'r1' to model 'movies'" in str(info.value)
    assert alias_bytes(store) == before
    reg = ModelRegistry(store, "movies")
    assert [v.version for v in reg.list_versions()] == [1]
    last = reg.history()[-1]
    assert (last.action, last.outcome, last.run_id) == ("publish", "refused", "r1")
    assert not Artifact.exists(store, "runs/r1/publish")


def test_missing_or_unreadable_blessing_is_refused(file_store: FileStore, tmp_path: Path) -> None:
    store = file_store
    build_run(store, tmp_path, "r1", seed=1)
    store.put_bytes("runs/r1/gate/blessing.json", b"tampered")
    with pytest.raises(NotBlessedError, match=r"has no readable blessing .*does not match its manifest"):
        publish(store, "r1")
    assert alias_bytes(store) is None


# ---------------------------------------------------------------------------------------------- broken bundles


def test_corrupt_bundle_is_refused_and_alias_untouched(any_store, tmp_path: Path) -> None:
    build_run(any_store, tmp_path, "r0", seed=0)
    publish(any_store, "r0")
    before = alias_bytes(any_store)
    build_run(any_store, tmp_path, "r1", seed=1, champion=1)
    data = bytearray(any_store.get_bytes("runs/r1/train/counts/arrays.safetensors"))
    data[len(data) // 2] ^= 0xFF
    any_store.put_bytes("runs/r1/train/counts/arrays.safetensors", bytes(data))
    with pytest.raises(
        ArtifactError,
        match=r"cannot publish candidate 'counts': its bundle .* missing or corrupt "
        r"\(.*does not match its manifest",
    ):
        publish(any_store, "r1")
    any_store.delete("runs/r1/train/counts/arrays.safetensors")
    with pytest.raises(
        ArtifactError,
        match=r"missing or corrupt \(.*lists 'arrays.safetensors' but the file "
        r"is missing",
    ):
        publish(any_store, "r1")
    assert alias_bytes(any_store) == before
    assert [v.version for v in ModelRegistry(any_store, "movies").list_versions()] == [1]


def test_bundle_that_verifies_but_does_not_load_is_refused(file_store: FileStore, tmp_path: Path) -> None:
    store = file_store
    build_run(store, tmp_path, "r1", seed=1)
    bad = fit(1).save(tmp_path / "bad")
    (bad / "arrays.safetensors").write_bytes(b"not a safetensors file")
    cfg_hash = make_config(store).config_hash()
    with ArtifactWriter(
        store, "runs/r1/train/counts", "train", "r1", cfg_hash, parents=[store.uri("runs/r1/preprocess")]
    ) as w:
        TrainedModel.write(w, bad, {"type": "test_counts"})
    with pytest.raises(ArtifactError, match=r"cannot publish candidate 'counts': .*arrays.safetensors cannot be read"):
        publish(store, "r1")
    assert alias_bytes(store) is None
    assert ModelRegistry(store, "movies").list_versions() == []


# ---------------------------------------------------------------------------------------------- races


def test_champion_moved_since_evaluation_is_a_conflict(any_store, tmp_path: Path) -> None:
    build_run(any_store, tmp_path, "r1", seed=1)
    publish(any_store, "r1")
    for run_id, seed in (("r2", 2), ("r3", 3)):
        build_run(any_store, tmp_path, run_id, seed, champion=1)
    publish(any_store, "r2")
    before = alias_bytes(any_store)
    with pytest.raises(
        AliasConflict,
        match=r"production of 'movies' points at v2, but this publish was decided "
        r"against v1; the alias was not changed",
    ):
        publish(any_store, "r3")
    assert alias_bytes(any_store) == before
    reg = ModelRegistry(any_store, "movies")
    assert [v.version for v in reg.list_versions()] == [1, 2, 3]  # r3 stays registered, unpromoted
    assert [(e.action, e.outcome, e.version, e.expected_version) for e in reg.history() if e.action == "publish"] == [
        ("publish", "success", 1, None),
        ("publish", "success", 2, 1),
        ("publish", "conflict", 3, 1),
    ]


def test_two_publish_steps_racing_end_consistent(any_store, tmp_path: Path) -> None:
    build_run(any_store, tmp_path, "r1", seed=1)
    publish(any_store, "r1")
    for run_id, seed in (("r2", 2), ("r3", 3)):
        build_run(any_store, tmp_path, run_id, seed, champion=1)
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def go(run_id: str) -> None:
        barrier.wait()
        try:
            results[run_id] = f"v{publish(any_store, run_id).summary['version']}"
        except AliasConflict:
            results[run_id] = "conflict"

    threads = [threading.Thread(target=go, args=(r,)) for r in ("r2", "r3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values())[0] == "conflict" and sorted(results.values())[1] in ("v2", "v3")
    winner = next(r for r, res in results.items() if res != "conflict")
    reg = ModelRegistry(any_store, "movies")
    alias = reg.production()
    assert (alias.run_id, alias.previous_version, alias.generation) == (winner, 1, 2)
    attempts = {(e.run_id, e.outcome) for e in reg.history() if e.action == "publish" and e.run_id != "r1"}
    loser = ({"r2", "r3"} - {winner}).pop()
    assert attempts == {(winner, "success"), (loser, "conflict")}


# ---------------------------------------------------------------------------------------------- outages


class OutageStore:
    """The real store, failing every write whose key matches `broken` (a store outage mid-publish)."""

    def __init__(self, inner: Any, broken: Callable[[str], bool]):
        self.inner, self.root, self.broken = inner, inner.root, broken

    def _check(self, key: str) -> None:
        if self.broken(key):
            raise StoreError(f"put {self.inner.uri(key)}: could not connect to the endpoint")

    def put_bytes(self, key: str, data: bytes) -> None:
        self._check(key)
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: Any) -> None:
        self._check(key)
        self.inner.put_file(key, path)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        self._check(key)
        return self.inner.put_if_match(key, data, etag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("broken_at", ["bundle upload", "alias", "everything under models/"])
def test_store_outage_during_publish_leaves_the_alias_untouched(any_store, tmp_path: Path, broken_at: str) -> None:
    build_run(any_store, tmp_path, "r1", seed=1)
    publish(any_store, "r1")
    build_run(any_store, tmp_path, "r2", seed=2, champion=1)
    before = alias_bytes(any_store)
    broken = {
        # staged first: _staging/models/.../v2/{token}/model/arrays.safetensors
        "bundle upload": lambda k: "/v2/" in k and k.endswith("/model/arrays.safetensors"),
        "alias": lambda k: k.endswith("production.json"),
        "everything under models/": lambda k: k.startswith("models/"),
    }[broken_at]
    flaky = OutageStore(any_store, broken)
    ctx = StepContext(make_config(any_store), flaky, "r2", RunParams(force=True), log=lambda m: None)
    with pytest.raises(StoreError, match="could not connect to the endpoint"):
        run_step("publish", ctx)
    assert alias_bytes(any_store) == before
    reg = ModelRegistry(any_store, "movies")
    assert reg.production().version == 1
    committed = [v.version for v in reg.list_versions()]
    assert committed == ([1, 2] if broken_at == "alias" else [1])
    # Once the store is back the same publish completes: it reuses a committed version, and a number
    # claimed by the failed attempt (the bundle upload case) is never handed out again.
    expected_version = {"bundle upload": 3, "alias": 2, "everything under models/": 2}[broken_at]
    assert publish(any_store, "r2").summary["version"] == expected_version
    assert reg.production().version == expected_version


def test_unreachable_s3_endpoint_is_a_store_error(tmp_path: Path) -> None:
    import socket

    from recloop.config import RetryConfig, StoreConfig
    from recloop.store import S3Store

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = S3Store(
        StoreConfig(
            root="s3://recloop/registry",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="k",
            secret_access_key="s",
            retry=RetryConfig(max_attempts=1, base_delay_s=0.01),
        )
    )
    ctx = StepContext(make_config(dead), dead, "r1", RunParams(), log=lambda m: None)
    with pytest.raises(StoreError):
        run_step("publish", ctx)


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    ctx = StepContext(make_config(store), store, "r1", RunParams(), log=lambda m: None)
    with pytest.raises(ArtifactError) as missing:
        run_step("publish", ctx, inputs={"gate": store.uri("runs/r1/gate")})
    # One message names every missing input, each with how to make it.
    assert re.findall(r"input '(\w+)' \(([a-z ]+)\): ", str(missing.value)) == [
        ("preprocess", "dataset"),
        ("train", "trained model"),
        ("evaluate", "evaluation"),
        ("gate", "blessing"),
    ]
    assert f"input 'train' (trained model): {store.uri('runs/r1/train')} holds no committed trained model" in str(
        missing.value
    )
    with pytest.raises(
        ArtifactError,
        match=r"runs/r1/gate has no _MANIFEST.json: the step that writes it has not "
        r"completed",
    ):
        run_step("publish", ctx)
