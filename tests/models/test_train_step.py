"""train step: candidates from config, bundles per candidate, report and summary, selection and errors.

The preprocess artifact is written here exactly as preprocess's contract describes (column names and
dtypes), so the step is tested on its real input format without running the upstream steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recloop import config as config_mod
from recloop.artifacts import Artifact, ArtifactWriter, Manifest, run_prefix
from recloop.artifacts.kinds import Dataset
from recloop.data.interactions import Interactions
from recloop.errors import ArtifactError, ConfigError, DataError
from recloop.models.base import Recommender
from recloop.models.early_stopping import validation_ndcg
from recloop.steps.base import RunParams, StepContext, run_step
from recloop.store import ArtifactStore, FileStore

N_USERS, N_ITEMS = 30, 20
FAST_MODELS: list[dict[str, Any]] = [
    {"type": "popularity"},
    {"type": "itemknn", "neighbours": 10},
    {"type": "ease", "lambda": 10},
    {"type": "mf", "factors": 4, "epochs": 5, "regularization": 1.0, "alpha": 5.0, "patience": 10},
]


def _events(seed: int = 0) -> pd.DataFrame:
    """Two taste groups (items 0-9 and 10-19); 8 time-ordered events per user."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(N_USERS):
        block = np.arange(0, 10) if user % 3 else np.arange(10, 20)
        for order, item in enumerate(rng.permutation(block)[:8]):
            rows.append((user, int(item), 1_700_000_000 + user * 1000 + order * 10))
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])


def _leave_last_out(events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    events = events.sort_values(["user_idx", "timestamp"], kind="stable")
    from_end = events.groupby("user_idx").cumcount(ascending=False)
    parts = {"train": events[from_end >= 2], "valid": events[from_end == 1], "test": events[from_end == 0]}
    return {
        name: pd.DataFrame(
            {
                "user_idx": df["user_idx"].astype(np.int32),
                "item_idx": df["item_idx"].astype(np.int32),
                "timestamp": df["timestamp"].astype(np.int64),
                "weight": np.ones(len(df), np.float32),
                "rating": np.full(len(df), 4.0),
            }
        )
        for name, df in parts.items()
    }


def write_preprocess(store: ArtifactStore, run_id: str = "r1", empty_train: bool = False) -> str:
    splits = _leave_last_out(_events())
    if empty_train:
        splits["train"] = splits["train"].iloc[:0]
    with ArtifactWriter(store, run_prefix(run_id, "preprocess"), step="preprocess", run_id=run_id) as w:
        for name, df in splits.items():
            w.put_parquet(f"{name}.parquet", df)
        w.put_parquet(
            "id_maps/users.parquet",
            pd.DataFrame(
                {"user_idx": np.arange(N_USERS, dtype=np.int32), "user_id": [f"u{u}" for u in range(N_USERS)]}
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
                    "text": [f"Movie {i}. Genres: {'Drama' if i < 10 else 'Comedy'}" for i in range(N_ITEMS)],
                    "categories": [["Drama"] if i < 10 else ["Comedy"] for i in range(N_ITEMS)],
                }
            ),
        )
        w.put_json("stats.json", {"n_users": N_USERS, "n_items": N_ITEMS})
        w.summary.update(
            {
                "n_users": N_USERS,
                "n_items": N_ITEMS,
                "n_train": len(splits["train"]),
                "n_valid": len(splits["valid"]),
                "n_test": len(splits["test"]),
                "split": "leave_last_out",
            }
        )
    return store.uri(run_prefix(run_id, "preprocess"))


def make_ctx(
    store: ArtifactStore,
    models: list[dict[str, Any]],
    log: list[str] | None = None,
    params: RunParams = RunParams(),
    run_id: str = "r1",
    progress_calls: list[tuple[str, float]] | None = None,
) -> StepContext:
    cfg = config_mod.from_dict(
        {
            "name": "movies",
            "store": {"root": store.root},
            "data": {"interactions": {"path": "/data/ratings.csv"}},
            "models": models,
        }
    )
    ctx = StepContext(config=cfg, store=store, run_id=run_id, params=params)
    if log is not None:
        ctx.log = log.append
    if progress_calls is not None:

        def progress(description: str, total: float | None = None, unit: str = ""):
            return lambda n=1.0: progress_calls.append((description, float(n)))

        ctx.progress = progress
    return ctx


def _valid_split(artifact: Artifact) -> Interactions:
    return Interactions.from_frame(Dataset(artifact).split("valid"), N_USERS, N_ITEMS)


# ---------------------------------------------------------------------------------------------- happy path


def train_all(ctx: StepContext) -> dict[str, Manifest]:
    """Run the per-candidate train step for every candidate of the run, as the pipeline does."""
    return {m.candidate_name: run_step("train", ctx, candidate=m.candidate_name) for m in ctx.candidates}


def test_trains_every_candidate_into_its_own_bundle(any_store: ArtifactStore, tmp_path: Path) -> None:
    store = any_store  # file:// and S3 (SeaweedFS)
    pre_uri = write_preprocess(store)
    log: list[str] = []
    bars: list[tuple[str, float]] = []
    ctx = make_ctx(store, FAST_MODELS, log=log, progress_calls=bars)
    manifests = train_all(ctx)

    names = ["popularity", "itemknn", "ease", "mf"]
    assert list(manifests) == names
    preprocess = Artifact.open(store, "runs/r1/preprocess")
    valid = _valid_split(preprocess)
    for name, manifest in manifests.items():
        assert manifest.uri == store.uri(f"runs/r1/train/{name}") and manifest.step == "train"
        assert manifest.parents == [pre_uri]
        assert sorted(manifest.files) == ["arrays.safetensors", "model.json", "train_report.json"]
        summary = manifest.summary
        assert set(summary) == {"type", "train_seconds", "epochs", "best_valid_metric", "valid_metric"}
        assert summary["type"] == name and summary["train_seconds"] >= 0 and summary["valid_metric"] == "ndcg@10"
        artifact = Artifact.open(store, f"runs/r1/train/{name}")
        model = Recommender.load(artifact.download_all(tmp_path / "dl" / name))
        assert model.type_name == name and (model.n_users, model.n_items) == (N_USERS, N_ITEMS)
        assert model.id_map_ref == pre_uri
        # The reported metric is the saved model's validation NDCG@10.
        assert summary["best_valid_metric"] == pytest.approx(validation_ndcg(model, valid))
    assert [manifests[n].summary["epochs"] for n in names] == [None, None, None, 5]
    # Personalised models beat popularity clearly on two disjoint taste groups.
    metric = {n: m.summary["best_valid_metric"] for n, m in manifests.items()}
    for name in ("itemknn", "ease", "mf"):
        assert metric[name] > metric["popularity"] + 0.1

    report = Artifact.open(store, "runs/r1/train/ease").read_json("train_report.json")
    assert report["preprocess_uri"] == pre_uri and report["candidate"] == "ease"
    assert (report["n_users"], report["n_items"], report["n_train"], report["n_valid"]) == (30, 20, 180, 30)
    assert report["config"]["lambda"] == 10
    mf_report = Artifact.open(store, "runs/r1/train/mf").read_json("train_report.json")
    assert [h["epoch"] for h in mf_report["history"]] == [1, 2, 3, 4, 5]
    assert all(h["valid_ndcg@10"] is not None for h in mf_report["history"])

    # Per-epoch logs prefixed by the candidate, and one progress bar per candidate filled to 100.
    assert sum(1 for line in log if line.startswith("mf: epoch ")) == 5
    for name in names:
        assert sum(n for d, n in bars if d == f"train {name}") == pytest.approx(100.0)


def test_models_param_trains_only_the_named_candidates(file_store: FileStore) -> None:
    write_preprocess(file_store)
    models = [
        {"type": "popularity"},
        {"type": "ease", "name": "ease-strong", "lambda": 500},
        {"type": "ease", "name": "ease-weak", "lambda": 1},
    ]
    ctx = make_ctx(file_store, models, params=RunParams(models=("ease-weak", "popularity")))
    assert list(train_all(ctx)) == ["popularity", "ease-weak"]  # config order
    assert not Artifact.exists(file_store, "runs/r1/train/ease-strong")
    with pytest.raises(ConfigError, match="candidate 'ease-strong' is not selected for this run"):
        run_step("train", ctx, candidate="ease-strong")


def test_same_config_gives_byte_identical_bundles(file_store: FileStore) -> None:
    write_preprocess(file_store, "r1")
    write_preprocess(file_store, "r2")
    first = train_all(make_ctx(file_store, FAST_MODELS, run_id="r1"))
    second = train_all(make_ctx(file_store, FAST_MODELS, run_id="r2"))
    for name in ("popularity", "itemknn", "ease", "mf"):
        key = "arrays.safetensors"
        assert first[name].files[key].sha256 == second[name].files[key].sha256, name


def test_committed_artifact_is_reused_and_force_retrains(file_store: FileStore) -> None:
    write_preprocess(file_store)
    log: list[str] = []
    first = run_step("train", make_ctx(file_store, FAST_MODELS[:1], log=log), candidate="popularity")
    again = run_step("train", make_ctx(file_store, FAST_MODELS[:1], log=log), candidate="popularity")
    assert again.created_at == first.created_at
    assert any(line.startswith("train popularity: reusing committed artifact") for line in log)
    forced = run_step(
        "train", make_ctx(file_store, FAST_MODELS[:1], log=log, params=RunParams(force=True)), candidate="popularity"
    )
    assert forced.files["arrays.safetensors"].sha256 == first.files["arrays.safetensors"].sha256


def test_a_candidate_is_reused_whichever_others_the_run_selects(file_store: FileStore) -> None:
    write_preprocess(file_store)
    first = train_all(make_ctx(file_store, FAST_MODELS[:2]))
    log: list[str] = []
    only = make_ctx(file_store, FAST_MODELS[:2], log=log, params=RunParams(models=("itemknn",)))
    again = run_step("train", only, candidate="itemknn")
    assert again.created_at == first["itemknn"].created_at
    assert log == [
        f"train: optional input tune has no committed artifact at {file_store.uri('runs/r1/tune/itemknn')}; running without it",
        f"train itemknn: reusing committed artifact {file_store.uri('runs/r1/train/itemknn')}",
    ]


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_candidate_name_lists_the_configured_ones(file_store: FileStore) -> None:
    write_preprocess(file_store)
    ctx = make_ctx(file_store, FAST_MODELS[:2], params=RunParams(models=("ease",)))
    with pytest.raises(ConfigError, match=r"unknown candidate\(s\) 'ease'; configured candidates: popularity, itemknn"):
        train_all(ctx)
    assert not file_store.list("runs/r1/train")


def test_no_models_configured_is_a_config_error(file_store: FileStore) -> None:
    write_preprocess(file_store)
    with pytest.raises(ConfigError, match="no candidate models are configured"):
        train_all(make_ctx(file_store, []))


def test_duplicate_candidate_names_are_rejected_at_load(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "name: movies\ndata: {interactions: {path: ratings.csv}}\n"
        "models:\n  - {type: ease, lambda: 100}\n  - {type: itemknn}\n  - {type: ease, lambda: 300}\n"
    )
    with pytest.raises(ConfigError) as err:
        config_mod.load(path)
    assert err.value.errors == [
        "models: candidate names must be unique ('ease' at models[0, 2]); give each entry a distinct `name:` "
        "(got names ['ease', 'itemknn', 'ease'])"
    ]
    path.write_text(path.read_text().replace("{type: ease, lambda: 300}", "{type: ease, name: ease-300, lambda: 300}"))
    cfg = config_mod.load(path)
    assert [m.candidate_name for m in cfg.models] == ["ease", "itemknn", "ease-300"]
    assert cfg.models[2].l2 == 300


def test_candidate_name_must_be_a_folder_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"candidate name '\.\./x' must be letters"):
        config_mod.from_dict(
            {"name": "m", "data": {"interactions": {"path": "/x.csv"}}, "models": [{"type": "ease", "name": "../x"}]}
        )


def test_missing_or_incomplete_preprocess_artifact(file_store: FileStore) -> None:
    with pytest.raises(
        ArtifactError,
        match="train cannot run: input 'preprocess' \\(dataset\\): .*runs/r1/preprocess "
        "has no _MANIFEST.json.*run it first",
    ):
        train_all(make_ctx(file_store, FAST_MODELS[:1]))
    with ArtifactWriter(file_store, "runs/r1/preprocess", step="preprocess", run_id="r1") as w:
        w.put_json("stats.json", {})
    with pytest.raises(ArtifactError, match="lacks train.parquet, valid.parquet"):
        train_all(make_ctx(file_store, FAST_MODELS[:1]))


def test_empty_train_split_is_a_data_error(file_store: FileStore) -> None:
    write_preprocess(file_store, empty_train=True)
    with pytest.raises(DataError, match="train split .* is empty"):
        train_all(make_ctx(file_store, FAST_MODELS[:1]))


def test_failed_candidate_leaves_every_committed_artifact_alone(file_store: FileStore) -> None:
    write_preprocess(file_store)
    models = [FAST_MODELS[0], {"type": "ease", "lambda": 10}]
    first = train_all(make_ctx(file_store, models))
    # EASE refusing the catalog (max_items) fails its own node; popularity's artifact stays as it was.
    failing = [FAST_MODELS[0], {"type": "ease", "max_items": 5}]
    ctx = make_ctx(file_store, failing, params=RunParams(force=True))
    run_step("train", ctx, candidate="popularity")
    with pytest.raises(ConfigError, match="20 items, more than max_items=5"):
        run_step("train", ctx, candidate="ease")
    still = Artifact.open(file_store, "runs/r1/train/ease")
    assert still.manifest.created_at == first["ease"].created_at
    assert Artifact.exists(file_store, "runs/r1/train/popularity")


# ---------------------------------------------------------------------------------------------- text models


def test_text_models_embed_through_the_store_cache(file_store: FileStore) -> None:
    write_preprocess(file_store)
    log: list[str] = []
    train_all(make_ctx(file_store, [{"type": "text_knn"}], log=log))
    assert any("embedded 20 item texts" in line and "(20 encoded, 0 from the cache)" in line for line in log)
    assert file_store.list("cache/embeddings")
    log.clear()
    train_all(make_ctx(file_store, [{"type": "text_knn"}], log=log, params=RunParams(force=True)))
    assert any("(0 encoded, 20 from the cache)" in line for line in log)


def test_a_retrain_trains_the_epochs_a_time_cap_gave_the_production_model(
    file_store: FileStore, tmp_path: Path
) -> None:
    from recloop.artifacts.kinds import TrainedModel
    from recloop.registry import ModelRegistry, VersionSource

    sasrec = {"type": "sasrec", "dim": 16, "heads": 1, "layers": 1, "max_len": 10, "epochs": 6, "patience": 100}
    capped = {**sasrec, "max_seconds": 1e-9}  # cuts training after its first epoch, whatever the machine
    write_preprocess(file_store, "r1")
    run_step("train", make_ctx(file_store, [capped], run_id="r1"), candidate="sasrec")
    first = Artifact.open(file_store, "runs/r1/train/sasrec")
    report = first.read_json(TrainedModel.REPORT)
    assert (report["stopped_by"], report["epochs"]) == ("max_seconds", 1)

    # Production: a version whose training the time cap ended at epoch 3 (on a quieter machine, say).
    bundle = first.download_all(tmp_path / "bundle")
    with ArtifactWriter(file_store, "runs/r0/train/sasrec", step="train", run_id="r0") as writer:
        TrainedModel.write(writer, bundle, {**report, "epochs": 3})
    registry = ModelRegistry(file_store, "movies")
    source = VersionSource(bundle_dir=bundle, candidate="sasrec", model_type="sasrec", run_id="r0")
    source.lineage = {"train": file_store.uri("runs/r0/train/sasrec")}
    registry.promote(registry.register(source).version, reason="test")

    log: list[str] = []
    write_preprocess(file_store, "r2")
    run_step("train", make_ctx(file_store, [capped], log=log, run_id="r2"), candidate="sasrec")
    retrain = Artifact.open(file_store, "runs/r2/train/sasrec").read_json(TrainedModel.REPORT)
    assert (retrain["stopped_by"], retrain["epochs"]) == ("stop_after_epoch", 3)
    assert (retrain["config"]["max_seconds"], retrain["config"]["stop_after_epoch"]) == (None, 3)
    assert (
        "train: sasrec: a time cap ended production v1's training at epoch 3; training 3 epochs instead of "
        "max_seconds 1e-09, so the retrain does not depend on the machine's load"
    ) in log
    # Without a time cap in the config, nothing changes.
    write_preprocess(file_store, "r3")
    run_step("train", make_ctx(file_store, [sasrec], run_id="r3"), candidate="sasrec")
    plain = Artifact.open(file_store, "runs/r3/train/sasrec").read_json(TrainedModel.REPORT)
    assert plain["config"]["stop_after_epoch"] is None and plain["stopped_by"] != "stop_after_epoch"
