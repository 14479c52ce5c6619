"""Cold-start evaluation: items held out of training entirely, and how models score on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recloop.artifacts import Artifact
from recloop.artifacts.kinds import Dataset
from recloop.steps import preprocess
from support.helpers import make_config, make_context, write_ingest_artifact


def _events() -> pd.DataFrame:
    # 10 users each see items i0..i9 in order, one per minute: every item has events in every split.
    rows = [(f"u{u}", f"i{(u + j) % 10}", 1_000 * u + 60 * j) for u in range(10) for j in range(6)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_cold_items_have_ids_but_no_train_or_valid_events(tmp_path):
    cfg = make_config(
        tmp_path / "store",
        {
            "preprocess.min_user_interactions": 1,
            "evaluation.cold_start.item_share": 0.2,
            "evaluation.cold_start.seed": 3,
        },
    )
    ctx = make_context(cfg)
    ingest_uri = write_ingest_artifact(ctx.store, "r1", _events())
    manifest = preprocess.run(ctx, {"ingest": ingest_uri}, ctx.store.uri("runs/r1/preprocess"))
    art = Dataset.open(ctx.store, "runs/r1/preprocess")

    cold = art.artifact.read_parquet(Dataset.COLD_ITEMS)  # item_id too, which cold_items() leaves out
    assert len(cold) == 2 and manifest.summary["n_cold_items"] == 2  # 20 % of 10 items
    cold_idx = set(cold["item_idx"].tolist())
    ids = art.item_ids()
    assert len(ids) == 10  # every item keeps an id, the cold ones included
    assert ids.set_index("item_idx").loc[cold["item_idx"], "item_id"].tolist() == cold["item_id"].tolist()
    for split in ("train", "valid"):
        assert not art.split(split)["item_idx"].isin(cold_idx).any()
    test = art.split("test")
    stats = art.stats()
    assert stats["cold_start"]["test_events"] == int(test["item_idx"].isin(cold_idx).sum())
    # Each cold item had 6 events in total across the 10 users; only test events survive.
    assert stats["dropped"]["cold_start_train_valid_events"] == 12 - stats["cold_start"]["test_events"]


def test_same_seed_same_cold_items(tmp_path):
    picks = []
    for i in range(2):
        cfg = make_config(
            tmp_path / f"s{i}", {"preprocess.min_user_interactions": 1, "evaluation.cold_start.item_share": 0.3}
        )
        ctx = make_context(cfg)
        preprocess.run(
            ctx, {"ingest": write_ingest_artifact(ctx.store, "r1", _events())}, ctx.store.uri("runs/r1/preprocess")
        )
        cold = Dataset.open(ctx.store, "runs/r1/preprocess").artifact.read_parquet(Dataset.COLD_ITEMS)
        picks.append(cold["item_id"].tolist())
    assert picks[0] == picks[1] and len(picks[0]) == 3
    assert np.all([p.startswith("i") for p in picks[0]])


# ------------------------------------------------------------------ end to end on synthetic data


@pytest.fixture(scope="module")
def cold_start_metrics(tmp_path_factory) -> dict:
    """The pipeline up to evaluate on a small synthetic world with 15 % of items held out of training."""
    from recloop import config
    from recloop.data import synth
    from recloop.pipeline import run_pipeline
    from recloop.steps.base import StepContext

    root = tmp_path_factory.mktemp("cold")
    synth.generate(n_users=300, n_items=200, seed=1, events_per_user=30).write(root / "data")
    cfg = config.from_dict(
        {
            "name": "cold",
            "store": {"root": f"file://{root / 'store'}"},
            "data": {
                "interactions": {
                    "path": str(root / "data" / "interactions.csv"),
                    "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"},
                },
                "items": {
                    "path": str(root / "data" / "items.csv"),
                    "id": "item_id",
                    "category": "category",
                    "text": "{title}. {category}. {description}",
                },
            },
            "preprocess": {"min_user_interactions": 3},
            "evaluation": {
                "k": [10],
                "primary": "ndcg@10",
                "bootstrap": 20,
                "cold_start": {"item_share": 0.15, "seed": 0},
            },
            "models": [
                {"type": "popularity"},
                {"type": "ease", "lambda": 50},
                {"type": "sasrec", "dim": 32, "heads": 2, "layers": 1, "max_len": 20, "epochs": 4},
                {"type": "text_knn"},
                {
                    "type": "text_sasrec",
                    "dim": 32,
                    "heads": 2,
                    "layers": 1,
                    "max_len": 20,
                    "epochs": 15,
                    "batch_size": 32,
                },
            ],
        }
    )
    ctx = StepContext.from_config(cfg, "cold-1")
    run_pipeline(ctx, steps=("ingest", "validate", "preprocess", "train", "evaluate"))
    return Artifact.open(ctx.store, "runs/cold-1/evaluate").read_json("metrics.json")


def _cold(doc: dict, name: str, metric: str) -> float:
    from recloop.evaluation.protocols import COLD_SEGMENT

    return doc["candidates"][name]["segments"][COLD_SEGMENT]["metrics"][metric]["value"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["popularity", "ease", "sasrec"])
def test_id_only_models_score_zero_on_cold_items(cold_start_metrics, name):
    assert _cold(cold_start_metrics, name, "recall@10") == 0.0
    assert _cold(cold_start_metrics, name, "ndcg@10") == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text_knn", "text_sasrec"])
def test_text_models_recommend_cold_items(cold_start_metrics, name):
    assert cold_start_metrics["protocol"]["cold_start_items"] == 30
    assert _cold(cold_start_metrics, name, "recall@10") >= 0.1
    assert _cold(cold_start_metrics, name, "ndcg@10") > 0.03
