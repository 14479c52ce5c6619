"""ranker: the shared model contract, the label window, the feature rows (hand-computed), and that the
learned stage beats its best retriever on synthetic data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recloop import config
from recloop.data.interactions import Histories, Interactions
from recloop.data.synth import generate
from recloop.errors import ConfigError
from recloop.models import registry
from recloop.models.base import FitContext, ItemSide
from recloop.models.early_stopping import ndcg_at_k, validation_ndcg
from recloop.models.ranker import Ranker, split_label_window
from recloop.models.ranking_features import ItemStatistics, candidate_features, feature_names
from support.model_contract import ModelContract

EASE = {"type": "ease", "lambda": 1.0}
ITEMKNN = {"type": "itemknn", "neighbours": 5}


class TestRankerContract(ModelContract):
    model_type = "ranker"
    params = {"retrievers": [EASE, ITEMKNN], "candidates": 8, "min_child_samples": 2, "label_share": 0.3}
    capabilities = frozenset({"item_vectors"})


# ---------------------------------------------------------------------------------------------- labels


def test_each_users_most_recent_share_is_the_label_window() -> None:
    # user 0: 10 events (share 0.2 -> the last 2); user 1: 3 events (at least 1); user 2: 2 events (none:
    # the retrievers keep at least 2); user 3: equal times keep the input order.
    users = [0] * 10 + [1] * 3 + [2] * 2 + [3] * 4
    items = list(range(10)) + [0, 1, 2] + [0, 1] + [5, 6, 7, 8]
    times = list(range(100, 110)) + [5, 3, 4] + [1, 2] + [7, 7, 7, 7]
    train = Interactions.from_arrays(users, items, times, None, 4, 10)
    before, window = split_label_window(train, 0.2)
    got = sorted(zip(window.user.tolist(), window.item.tolist()))
    assert got == [(0, 8), (0, 9), (1, 0), (3, 8)]  # user 1's latest is item 0 (time 5)
    assert len(before) + len(window) == len(train)


# ---------------------------------------------------------------------------------------------- features


def test_feature_rows_are_what_the_documentation_says() -> None:
    # 4 items; item 3 has no events. One user who saw item 0 (day 0) and item 1 (day 1).
    day = 86400
    histories = Histories(np.array([0, 2]), np.array([0, 1], np.int32), np.ones(2, np.float32), np.array([0, day]), 4)
    stats_hist = Histories(
        np.array([0, 2, 3]), np.array([0, 1, 2], np.int32), np.ones(3, np.float32), np.array([0, day, 3 * day]), 4
    )
    categories = sp.csr_matrix(np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32))
    text = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    stats = ItemStatistics.from_histories(stats_hist, categories, text)
    scores = [np.array([[4.0, 3.0, 2.0, 1.0]], np.float32)]
    pairs = candidate_features(histories, scores, [None], n=2, stats=stats, history_window=20)
    # Seen items 0 and 1 are not proposed: the top 2 unseen are items 2 and 3.
    assert pairs.rows.tolist() == [0, 0] and pairs.items.tolist() == [2, 3]
    z = (np.array([4.0, 3.0, 2.0, 1.0]) - 2.5) / math.sqrt(1.25)
    names = feature_names(["r"])
    rows = {name: pairs.features[:, j].tolist() for j, name in enumerate(names)}
    assert rows["r.zscore"] == pytest.approx([z[2], z[3]], rel=1e-5)
    assert rows["r.rank"] == [1.0, 2.0]
    assert rows["log_popularity"] == pytest.approx([math.log(2), 0.0])
    assert rows["days_since_last_event"] == pytest.approx([0.0, 3650.0])  # item 3: never seen
    assert rows["log_history_length"] == pytest.approx([math.log(3), math.log(3)])
    assert rows["category_affinity"] == pytest.approx([1.0, 0.0])  # both recent items share item 2's category
    # profile = (1, 0) + (0, 1) normalized: cosine with (1, 0) and with (0, 1) is 1/sqrt(2)
    assert rows["text_similarity"] == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-5)


def test_a_trained_ranker_builds_the_same_rows_for_training_and_for_scoring() -> None:
    data = _synthetic()
    ranker = _ranker()
    ranker.fit(data["train"], data["valid"], data["context"])
    assert ranker.stats is not None
    histories = data["train"].histories().select([3, 7])
    first = ranker._pairs(histories, np.array([3, 7]), ranker.stats)
    again = ranker._pairs(histories, np.array([3, 7]), ranker.stats)
    np.testing.assert_array_equal(first.features, again.features)
    # And through save/load (what serving loads): the same rows, the same scores.
    import tempfile

    from recloop.models.base import Recommender

    with tempfile.TemporaryDirectory() as tmp:
        loaded = Recommender.load(ranker.save(tmp))
    assert isinstance(loaded, Ranker) and loaded.stats is not None
    np.testing.assert_array_equal(loaded._pairs(histories, np.array([3, 7]), loaded.stats).features, first.features)
    np.testing.assert_array_equal(loaded.score_histories(histories), ranker.score_histories(histories))


def test_user_attributes_are_features_saved_with_the_model_and_optional_at_scoring(tmp_path: Any) -> None:
    from recloop.models.base import Recommender, UserSide
    from support.model_contract import N_USERS_A, N_USERS_B, held_out_interactions, two_block_interactions

    train = two_block_interactions()
    # One attribute that says which block a user belongs to; the items' categories are the blocks.
    users = UserSide(
        categorical={"group": np.array([0] * N_USERS_A + [1] * N_USERS_B, dtype=np.int32)},
        vocabularies={"group": ["a", "b"]},
        numeric={"age": np.linspace(20, 60, N_USERS_A + N_USERS_B).astype(np.float32)},
    )
    items = ItemSide(categories=[["a"] if i < 8 else ["b"] for i in range(16)])
    cls = registry.get("ranker")
    params = {"type": "ranker", "retrievers": [EASE], "candidates": 8, "min_child_samples": 2, "label_share": 0.3}
    ranker = cls(cls.config_cls.model_validate(params))
    assert isinstance(ranker, Ranker)
    ranker.fit(train, held_out_interactions(train), FitContext(items=items, users=users, log=lambda _m: None))
    assert ranker.feature_names[-3:] == ["user.group", "user.group.category_lift", "user.age"]
    assert ranker.user_tables is not None
    # Group a (24 users) chose only a-items, which are 2/3 of all events: lift 1 / (2/3) = 1.5; group b
    # (12 users) only b-items, 1/3 of events: lift 3; neither chose the other's.
    np.testing.assert_allclose(ranker.user_tables.lifts["group"], [[1.5, 0.0], [0.0, 3.0]], rtol=1e-6)
    histories = train.histories().select([0, N_USERS_A])
    loaded = Recommender.load(ranker.save(tmp_path / "bundle"))
    np.testing.assert_array_equal(
        loaded.score_histories(histories, np.array([0, N_USERS_A])),
        ranker.score_histories(histories, np.array([0, N_USERS_A])),
    )
    anonymous = ranker.score_histories(histories, None)  # no user ids: attributes missing, still a ranking
    assert anonymous.shape == (2, 16) and np.isfinite(anonymous).all()


# ---------------------------------------------------------------------------------------------- quality


def _synthetic() -> dict[str, Any]:
    """Leave-last-out over a seeded synthetic world: train, valid, test and the items' side information."""
    world = generate(800, 300, seed=1)
    df = world.interactions
    users = {u: i for i, u in enumerate(sorted(df["user_id"].unique()))}
    items = {it: i for i, it in enumerate(world.items["item_id"])}
    df = df.assign(user_idx=df["user_id"].map(users), item_idx=df["item_id"].map(items))
    df = df.sort_values(["user_idx", "timestamp"], kind="stable")
    from_end = df.groupby("user_idx").cumcount(ascending=False)
    n_users, n_items = len(users), len(items)
    side = ItemSide(
        texts=(world.items["title"] + ". " + world.items["description"]).tolist(),
        categories=[[c] for c in world.items["category"]],
    )
    return {
        "train": Interactions.from_frame(df[from_end >= 2], n_users, n_items),
        "valid": Interactions.from_frame(df[from_end == 1], n_users, n_items),
        "test": Interactions.from_frame(df[from_end == 0], n_users, n_items),
        "history": Interactions.from_frame(df[from_end >= 1], n_users, n_items).histories(),
        "context": FitContext(items=side, log=lambda _m: None),
    }


RETRIEVERS = [{"type": "itemknn"}, {"type": "mf", "factors": 32}, {"type": "popularity"}]


def _ranker() -> Ranker:
    cls = registry.get("ranker")
    model = cls(cls.config_cls.model_validate({"type": "ranker", "retrievers": RETRIEVERS}))
    assert isinstance(model, Ranker)
    return model


@pytest.mark.slow
def test_the_ranker_beats_its_best_retriever_on_synthetic_data() -> None:
    data = _synthetic()
    test_ndcg = {}
    for params in RETRIEVERS:
        cls = registry.get(params["type"])
        model = cls(cls.config_cls.model_validate(params)).fit(data["train"], data["valid"], data["context"])
        test_ndcg[params["type"]] = ndcg_at_k(model.score_histories, data["history"], data["test"], k=10)
    ranker = _ranker().fit(data["train"], data["valid"], data["context"])
    mine = ndcg_at_k(ranker.score_histories, data["history"], data["test"], k=10)
    best = max(test_ndcg.values())
    # Measured with this seed: 0.144 against mf's 0.108 (itemknn 0.088, popularity 0.070).
    assert mine > 1.2 * best, (mine, test_ndcg)
    assert validation_ndcg(ranker, data["valid"]) > 0.1
    report = ranker.fit_report
    assert report["decision"] == "learned" and report["positive_rows"] > 1000
    assert set(report["feature_gain"]) == set(ranker.feature_names)
    assert sum(report["feature_gain"].values()) == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------- config


def _errors(models: list[dict[str, Any]]) -> list[str]:
    raw = {"name": "t", "data": {"interactions": {"path": "/x.csv"}}, "models": models}
    with pytest.raises(ConfigError) as exc:
        config.from_dict(raw)
    return exc.value.errors


def test_config_errors_say_what_to_fix() -> None:
    assert _errors([{"type": "ranker", "retrievers": []}]) == [
        "models.0.ranker: a ranker needs at least 1 retriever; list models under `retrievers`"
    ]
    assert _errors([{"type": "ranker", "retrievers": [{"type": "ranker", "retrievers": [EASE]}]}]) == [
        "models.0.ranker: retrievers.0.type: a retriever cannot be ranker; list the models it combines directly "
        "(llm_rerank may rerank a blend or a ranker: give it as `base`)"
    ]
    assert _errors([{"type": "ranker", "retrievers": [EASE, {"type": "ease", "lambda": 3}]}]) == [
        "models.0.ranker: retrievers names must be unique (ease appears more than once); give each a distinct `name:`"
    ]


# ---------------------------------------------------------------------------------------------- the loop


@pytest.mark.slow
def test_a_ranker_runs_through_the_pipeline_and_serves(tmp_path: Any) -> None:
    import httpx

    from recloop.artifacts import Artifact
    from recloop.pipeline import run_pipeline
    from recloop.steps.base import StepContext
    from support.helpers import synthetic_pipeline
    from support.serving_helpers import MODEL_NAME, running

    cfg = synthetic_pipeline(
        tmp_path,
        MODEL_NAME,
        {
            "items": {"id": "item_id", "category": "category", "text": "{title}"},
            "users": {"id": "user_id", "attributes": {"age_group": {"type": "categorical"}}},
        },
        {
            "validation": {"data_docs": False},
            "preprocess": {"min_user_interactions": 3},
            "evaluation": {"k": [10], "primary": "ndcg@10", "bootstrap": 20},
            "gate": {"absolute": {"ndcg@10": 0.0001}},
            "models": [
                {
                    "type": "ranker",
                    "retrievers": [{"type": "ease", "lambda": 50}, {"type": "popularity"}],
                    "text_similarity": False,
                    "min_child_samples": 5,
                }
            ],
        },
        n_users=150,
        n_items=60,
        seed=4,
        events_per_user=15,
        user_effect=1.0,
    )
    ctx = StepContext.from_config(cfg, "ranker-1")
    run_pipeline(ctx, steps=("ingest", "validate", "preprocess", "train", "evaluate", "gate", "publish"))
    report = Artifact.open(ctx.store, "runs/ranker-1/train/ranker").read_json("train_report.json")
    phases = {h["phase"] for h in report["history"]}
    assert "ranker" in phases and any(k.startswith("gain.user.age_group") for h in report["history"] for k in h)
    evaluation = Artifact.open(ctx.store, "runs/ranker-1/evaluate")
    metrics = evaluation.read_json("metrics.json")
    block = metrics["candidates"]["ranker"]
    assert block["metrics"]["ndcg@10"]["value"] > 0
    # The report shows what the ranking stage learned from: every feature's share of the gain.
    gains = block["feature_importances"]
    assert "ease.rank" in gains and "user.age_group" in gains
    assert sum(gains.values()) == pytest.approx(1.0, abs=1e-4)
    # Per-segment results by user attribute, beside history length and head/tail.
    segments = block["segments"]
    assert {"age_group=18-24", "age_group=55+"} <= set(segments)
    assert (
        sum(segments[f"age_group={g}"]["n_users"] for g in ("18-24", "25-34", "35-44", "45-54", "55+"))
        == (metrics["protocol"]["n_users"])
    )
    html = evaluation.read_bytes("report.html").decode()
    assert "Learned ranking: feature importances" in html and "user.age_group.category_lift" in html
    with running(ctx.store) as server:
        user = "u00001"
        slate = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": user, "k": 5}, timeout=30).json()
        assert slate["model"]["type"] == "ranker" and len(slate["items"]) == 5 and slate["user_known"]


def test_time_of_day_features_by_hand() -> None:
    from recloop.models.ranking_features import TimeContext

    # Items 0 and 1 are category a, item 2 is b. Events: item 0 at 01:00 (night), items 1 and 2 at 13:00.
    hour = 3600
    history = Histories(
        np.array([0, 3]), np.array([0, 1, 2], np.int32), np.ones(3, np.float32), np.array([1, 13, 13]) * hour, 3
    )
    categories = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32))
    context = TimeContext.fit(history, categories)
    # Overall: a 2/3, b 1/3. Night: a only -> lift 1.5 for a; afternoon: a 1/2, b 1/2 -> 0.75 and 1.5.
    np.testing.assert_allclose(context.lifts[[0, 2]], [[1.5, 0.0], [0.75, 1.5]], rtol=1e-6)
    # A query on Thursday 1970-01-01 at 01:00 for items 1 (a) and 2 (b); another at 13:00 on Monday the 5th.
    times = np.array([1 * hour, 4 * 86400 + 13 * hour])
    hours, weekdays, lifts = context.columns(times, np.array([0, 0, 1]), np.array([1, 2, 2]), categories)
    assert hours.tolist() == [1.0, 1.0, 13.0] and weekdays.tolist() == [3.0, 3.0, 0.0]
    assert lifts.tolist() == pytest.approx([1.5, 0.0, 1.5])
    unknown = context.columns(None, np.array([0]), np.array([1]), categories)
    assert np.isnan(unknown[0]).all() and np.isnan(unknown[1]).all() and unknown[2].tolist() == [0.0]
