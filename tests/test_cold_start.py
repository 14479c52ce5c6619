"""Cold-start evaluation: items held out of training entirely, and how models score on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import make_config, make_context, write_ingest_artifact

from recloop.artifacts import Artifact
from recloop.steps import preprocess


def _events() -> pd.DataFrame:
    # 10 users each see items i0..i9 in order, one per minute: every item has events in every split.
    rows = [(f"u{u}", f"i{(u + j) % 10}", 1_000 * u + 60 * j) for u in range(10) for j in range(6)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_cold_items_have_ids_but_no_train_or_valid_events(tmp_path):
    cfg = make_config(tmp_path / "store", {"preprocess.min_user_interactions": 1,
                                           "evaluation.cold_start.item_share": 0.2,
                                           "evaluation.cold_start.seed": 3})
    ctx = make_context(cfg)
    ingest_uri = write_ingest_artifact(ctx.store, "r1", _events())
    manifest = preprocess.run(ctx, {"ingest": ingest_uri}, ctx.store.uri("runs/r1/preprocess"))
    art = Artifact.open(ctx.store, "runs/r1/preprocess")

    cold = art.read_parquet("cold_items.parquet")
    assert len(cold) == 2 and manifest.summary["n_cold_items"] == 2  # 20 % of 10 items
    cold_idx = set(cold["item_idx"].tolist())
    ids = art.read_parquet("id_maps/items.parquet")
    assert len(ids) == 10  # every item keeps an id, the cold ones included
    assert ids.set_index("item_idx").loc[cold["item_idx"], "item_id"].tolist() == cold["item_id"].tolist()
    for split in ("train", "valid"):
        assert not art.read_parquet(f"{split}.parquet")["item_idx"].isin(cold_idx).any()
    test = art.read_parquet("test.parquet")
    stats = art.read_json("stats.json")
    assert stats["cold_start"]["test_events"] == int(test["item_idx"].isin(cold_idx).sum())
    # Each cold item had 6 events in total across the 10 users; only test events survive.
    assert stats["dropped"]["cold_start_train_valid_events"] == 12 - stats["cold_start"]["test_events"]


def test_same_seed_same_cold_items(tmp_path):
    picks = []
    for i in range(2):
        cfg = make_config(tmp_path / f"s{i}", {"preprocess.min_user_interactions": 1,
                                               "evaluation.cold_start.item_share": 0.3})
        ctx = make_context(cfg)
        preprocess.run(ctx, {"ingest": write_ingest_artifact(ctx.store, "r1", _events())},
                       ctx.store.uri("runs/r1/preprocess"))
        picks.append(Artifact.open(ctx.store, "runs/r1/preprocess").read_parquet("cold_items.parquet")["item_id"].tolist())
    assert picks[0] == picks[1] and len(picks[0]) == 3
    assert np.all([p.startswith("i") for p in picks[0]])
