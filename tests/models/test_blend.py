"""blend: the shared model contract, score normalization, cross-validated weights, fallbacks, cold items,
the saved bundle and config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recloop import config
from recloop.config.models import LLMRerankConfig
from recloop.data.interactions import Histories, Interactions
from recloop.errors import ConfigError
from recloop.models import registry
from recloop.models.base import COLD_ITEM_SCORE, FitContext, ItemSide, Recommender
from recloop.models.blend import Blend
from recloop.models.blend_weights import PooledScores, average_ranks, cross_validate, normalize_scores, pool_rows
from recloop.models.early_stopping import validation_ndcg
from recloop.models.ranking_metrics import Targets
from support.model_contract import (
    BLOCK_B,
    N_ITEMS,
    ModelContract,
    held_out_interactions,
    two_block_interactions,
)

EASE = {"type": "ease", "lambda": 1.0}
ITEMKNN = {"type": "itemknn", "neighbours": 5}


def _blend(members: list[dict[str, Any]], **params: Any) -> Blend:
    cls = registry.get("blend")
    model = cls(cls.config_cls.model_validate({"type": "blend", "members": members, **params}))
    assert isinstance(model, Blend)
    return model


# ---------------------------------------------------------------------------------------------- contracts


class TestBlendContract(ModelContract):
    """Fit on the contract's validation split: ease beats itemknn there, so ease is kept alone."""

    model_type = "blend"
    params = {"members": [EASE, ITEMKNN], "folds": 3}
    capabilities = frozenset({"item_vectors"})


class TestBlendEqualWeightsContract(ModelContract):
    """Fit without validation: both members count, half each (item vectors come from ease, listed first)."""

    model_type = "blend"
    params = {"members": [ITEMKNN, EASE], "normalization": "rank"}
    capabilities = frozenset({"item_vectors"})

    @pytest.fixture(scope="class")
    def model(self, train: Interactions) -> Recommender:
        blend = self.make().fit(train, None)
        assert isinstance(blend, Blend) and blend.weights == {"itemknn": 0.5, "ease": 0.5}
        return blend


# ---------------------------------------------------------------------------------------------- normalization


def test_zscore_minmax_and_rank_of_a_score_row() -> None:
    row = np.array([[3.0, 1.0, 2.0, 6.0]], dtype=np.float32)
    # mean 3, population variance (0 + 4 + 1 + 9) / 4 = 3.5
    np.testing.assert_allclose(
        normalize_scores(row, "zscore"),
        [[0.0, -2 / math.sqrt(3.5), -1 / math.sqrt(3.5), 3 / math.sqrt(3.5)]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(normalize_scores(row, "minmax"), [[0.4, 0.0, 0.2, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(normalize_scores(row, "rank"), [[2 / 3, 0.0, 1 / 3, 1.0]], rtol=1e-6)
    assert normalize_scores(row, "zscore").dtype == np.float32


def test_unknown_scores_get_the_rows_lowest_normalized_value() -> None:
    # Items 2 (the cold-item score), 4 (-inf) and 5 (NaN) are unknown; item 6 is outside known_items.
    row = np.array([[1.0, 1.0, COLD_ITEM_SCORE, 5.0, -np.inf, np.nan, 9.0]], dtype=np.float32)
    known = np.array([True, True, True, True, True, True, False])
    # Known scores 1, 1, 5: ranks 1.5, 1.5, 3 -> (rank - 1) / 2; the unknown ones tie with the lowest.
    np.testing.assert_allclose(normalize_scores(row, "rank", known), [[0.25, 0.25, 0.25, 1.0, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(normalize_scores(row, "minmax", known), [[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    std = math.sqrt(((1 - 7 / 3) ** 2 * 2 + (5 - 7 / 3) ** 2) / 3)
    low = (1 - 7 / 3) / std
    np.testing.assert_allclose(
        normalize_scores(row, "zscore", known), [[low, low, low, (5 - 7 / 3) / std, low, low, low]], rtol=1e-6
    )


def test_rows_without_spread_or_known_scores_are_constant() -> None:
    rows = np.array([[2.0, 2.0, 2.0], [COLD_ITEM_SCORE, -np.inf, np.nan]], dtype=np.float32)
    for method, tied in (("zscore", 0.0), ("minmax", 0.0), ("rank", 0.5)):  # rank: ties count half
        np.testing.assert_array_equal(normalize_scores(rows, method), [[tied] * 3, [0.0] * 3])


# ---------------------------------------------------------------------------------------------- weights


def _pooled(member_rows: list[list[list[float]]], relevant: list[int]) -> PooledScores:
    """Hand-made normalized scores (member x user x item), nothing seen, one relevant item per user."""
    normalized = [np.array(rows, dtype=np.float32) for rows in member_rows]
    n_users, n_items = normalized[0].shape
    items, scores = pool_rows(normalized, sp.csr_matrix((n_users, n_items), dtype=np.float32), pool=10)
    return PooledScores(items, scores, Targets.from_lists([[item] for item in relevant]))


# Items 0, 1 and a decoy 2. Users 0-3 want item 0: member a ranks it first, member b second (after the
# decoy). Users 4-7 want item 1: b first, a second. With weight t on b, the mix ranks item 0 first while
# t < 0.625 (1 - 0.3 t > 0.5 + 0.5 t) and item 1 first while t > 0.375: only mixes in between are right
# for everyone.
HALVES = _pooled(
    [
        [[1.0, 0.0, 0.5]] * 4 + [[0.0, 0.7, 1.0]] * 4,  # member a
        [[0.7, 0.0, 1.0]] * 4 + [[0.0, 1.0, 0.5]] * 4,  # member b
    ],
    relevant=[0] * 4 + [1] * 4,
)
SECOND_PLACE = 1 / math.log2(3)


def test_members_right_for_half_the_users_each_are_blended() -> None:
    cv = cross_validate(HALVES, folds=4, seed=0, min_gain=0.0)
    # Each member alone: rank 1 for its half, rank 2 for the other half.
    assert cv.member_ndcg == pytest.approx([(1 + SECOND_PLACE) / 2] * 2)
    # Every training fold (6 users) holds both halves; from the better member alone, mixing half of the
    # other in is the one step that ranks every user's item first, and held-out users are all right.
    assert [w.tolist() for w in cv.fold_weights] == [[0.5, 0.5]] * 4
    assert cv.cv_ndcg == 1.0 and cv.blended
    assert cv.weights.tolist() == [0.5, 0.5] and cv.valid_ndcg == 1.0
    assert (cv.n_users, cv.n_folds) == (8, 4)


def test_min_gain_keeps_the_best_member_alone() -> None:
    # 1.0 does not beat 0.815 + 0.2: member a (the first of two equal members) is kept alone.
    cv = cross_validate(HALVES, folds=4, seed=0, min_gain=0.2)
    assert not cv.blended and cv.cv_ndcg == 1.0
    assert cv.weights.tolist() == [1.0, 0.0]
    assert cv.valid_ndcg == pytest.approx((1 + SECOND_PLACE) / 2)


def test_a_dominating_member_is_kept_alone_and_reported() -> None:
    train = two_block_interactions()
    valid = held_out_interactions(train)
    calls: list[tuple[str, float, dict[str, float]]] = []
    logs: list[str] = []
    context = FitContext(progress=lambda *call: calls.append(call), log=logs.append)
    blend = _blend([{"type": "popularity"}, {"type": "itemknn", "neighbours": 2}], folds=3).fit(train, valid, context)
    popularity, itemknn = (validation_ndcg(m, valid) for m in blend.members)
    assert popularity < itemknn
    assert blend.weights == {"itemknn": 1.0}
    report = blend.fit_report
    # Members alone are ranked exactly as the train step measures them.
    assert report["member_ndcg@10"] == {"popularity": popularity, "itemknn": itemknn}
    assert report["valid_ndcg@10"] == validation_ndcg(blend, valid) == itemknn
    assert report["cv_ndcg@10"] <= itemknn and report["decision"] == "best member"
    assert (report["valid_users"], report["folds"]) == (36, 3)
    reason = (
        f"cross-validated NDCG@10 {report['cv_ndcg@10']:.4f} does not beat itemknn alone ({itemknn:.4f}) by more "
        "than min_gain 0: itemknn is kept alone"
    )
    assert report["reason"] == reason
    assert logs[-1] == f"{reason} (3 folds over 36 validation users); weights: itemknn 1.000"
    # Member lines carry the member's name; the weights and CV numbers reach the train report's history.
    assert logs[0].startswith("popularity: ") and logs[1].startswith("itemknn: ")
    assert [c[0] for c in calls] == ["popularity: fit", "itemknn: similarity", "blend"]
    assert [c[1] for c in calls] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert calls[-1][2] == {
        "weight.popularity": 0.0,
        "weight.itemknn": 1.0,
        "cv_ndcg@10": report["cv_ndcg@10"],
        "ndcg@10.popularity": popularity,
        "ndcg@10.itemknn": itemknn,
    }


def test_without_validation_members_get_equal_weights() -> None:
    logs: list[str] = []
    blend = _blend([EASE, ITEMKNN]).fit(two_block_interactions(), None, FitContext(log=logs.append))
    assert blend.weights == {"ease": 0.5, "itemknn": 0.5}
    assert blend.fit_report == {"decision": "equal weights", "reason": "no validation split"}
    assert logs[-1] == "no validation split: equal weights (ease, itemknn); weights are fit on validation NDCG@10"


# ---------------------------------------------------------------------------------------------- cold items


def _cold_item_setup() -> tuple[Interactions, FitContext]:
    """The contract's two blocks without any event of item 15, and item embeddings for text_knn."""
    full = two_block_interactions()
    train = full.subset(full.item != 15)
    embeddings = np.zeros((N_ITEMS, 2), np.float32)
    embeddings[:8, 0] = 1.0
    embeddings[8:, 1] = 1.0
    embeddings[8:, 0] = np.linspace(0.0, 0.7, 8)  # block B items differ a little; item 15 is the farthest
    return train, FitContext(items=ItemSide(embeddings=embeddings))


def test_cold_items_get_each_id_only_members_lowest_score() -> None:
    train, context = _cold_item_setup()
    blend = _blend([EASE, {"type": "text_knn"}]).fit(train, None, context)
    ease, text = blend.members
    assert blend.scores_cold_items and not ease.scores_cold_items
    histories = Histories.from_lists([BLOCK_B[:3].tolist()], N_ITEMS)
    ease_row = ease.score_histories(histories)[0].astype(np.float64)
    known = ease_row[:15]  # ease cannot score item 15: its 0 is no score
    ease_low = (known.min() - known.mean()) / known.std()
    text_row = text.score_histories(histories)[0].astype(np.float64)
    text_15 = (text_row[15] - text_row.mean()) / text_row.std()
    assert blend.score_histories(histories)[0, 15] == pytest.approx(0.5 * ease_low + 0.5 * text_15, rel=1e-5)
    # Scored from its text, the cold block-B item is recommended after the unseen warm ones of its block.
    recs = blend.recommend(histories=histories, k=5)
    assert sorted(recs.ids[0, :4].tolist()) == [11, 12, 13, 14] and recs.ids[0, 4] == 15


def test_a_blend_of_id_only_members_ranks_cold_items_last() -> None:
    train, _ = _cold_item_setup()
    blend = _blend([EASE, ITEMKNN]).fit(train, None)
    assert not blend.scores_cold_items
    recs = blend.recommend(histories=Histories.from_lists([BLOCK_B[:3].tolist()], N_ITEMS), k=N_ITEMS)
    assert recs.ids[0, N_ITEMS - 4] == 15 and (recs.ids[0, N_ITEMS - 3 :] == -1).all()


# ---------------------------------------------------------------------------------------------- bundle


def test_saved_blend_loads_with_its_weights_and_report(tmp_path: Path) -> None:
    train = two_block_interactions()
    blend = _blend([ITEMKNN, {"type": "popularity", "name": "pop"}], normalization="minmax").fit(train, None)
    blend.member_weights = np.array([0.7, 0.3])  # as if fit: a mix, so both members' states matter
    blend.save(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert manifest["extra"]["weights"] == {"itemknn": 0.7, "pop": 0.3}
    assert manifest["extra"]["fit"] == {"decision": "equal weights", "reason": "no validation split"}
    loaded = Recommender.load(tmp_path / "bundle")
    assert isinstance(loaded, Blend)
    assert loaded.weights == {"itemknn": 0.7, "pop": 0.3} and loaded.fit_report == blend.fit_report
    histories = Histories.from_lists([[0, 1, 2], [9], []], N_ITEMS)
    np.testing.assert_array_equal(loaded.score_histories(histories), blend.score_histories(histories))
    users = np.arange(train.n_users)
    np.testing.assert_array_equal(loaded.recommend(users=users, k=5).ids, blend.recommend(users=users, k=5).ids)


# ---------------------------------------------------------------------------------------------- config


def _config_errors(members: list[dict[str, Any]]) -> list[str]:
    raw = {
        "name": "x",
        "data": {"interactions": {"path": "/tmp/e.csv"}},
        "models": [{"type": "blend", "members": members}],
    }
    with pytest.raises(ConfigError) as exc:
        config.from_dict(raw)
    return exc.value.errors


MEMBER_TYPES = "ease, itemknn, mf, popularity, sasrec, text_knn, text_sasrec"


@pytest.mark.parametrize(
    ("members", "error"),
    [
        (
            [EASE],
            "a blend needs at least 2 members (got 1); list more models under `members`, or use the model "
            "itself as a candidate",
        ),
        (
            [EASE, {"type": "blend", "members": [EASE, ITEMKNN]}],
            "members.1.type: a blend member cannot be blend; list the models it combines directly (llm_rerank may "
            "rerank a blend or a ranker: give it as `base`)",
        ),
        (
            [{"type": "llm_rerank", "base": EASE}, EASE],
            "members.0.type: a blend member cannot be llm_rerank; list the models it combines directly (llm_rerank "
            "may rerank a blend or a ranker: give it as `base`)",
        ),
        (
            [EASE, {"type": "nope"}],
            f"members.1.type: unknown model type 'nope'; a blend member is one of: {MEMBER_TYPES}",
        ),
        ([EASE, {"lambda": 3}], f"members.1.type: required key is missing; a blend member is one of: {MEMBER_TYPES}"),
        (
            [EASE, {"type": "ease", "lambda": 5}],
            "members names must be unique (ease appears more than once); give each a distinct `name:`",
        ),
        (
            [EASE, {"type": "ease", "name": "e2", "lambda": -1}],
            "members.1.ease.lambda: Input should be greater than 0 (got -1)",
        ),
    ],
)
def test_config_errors_say_what_to_fix(members: list[dict[str, Any]], error: str) -> None:
    assert _config_errors(members) == [f"models.0.blend: {error}"]


def test_llm_rerank_may_rerank_a_blend() -> None:
    raw = {
        "name": "x",
        "data": {"interactions": {"path": "/tmp/e.csv"}},
        "models": [
            {
                "type": "llm_rerank",
                "base": {"type": "blend", "members": [EASE, ITEMKNN]},
                "endpoint": {"url": "http://x/v1", "model": "m"},
            }
        ],
    }
    rerank = config.from_dict(raw).models[0]
    assert isinstance(rerank, LLMRerankConfig) and rerank.base_config().type == "blend"


def test_average_ranks_share_ties() -> None:
    rows = np.array([[3.0, 1.0, 3.0, 2.0, 3.0], [-np.inf, 5.0, -np.inf, 5.0, 7.0]])
    np.testing.assert_array_equal(average_ranks(rows), [[4.0, 1.0, 4.0, 2.0, 4.0], [1.5, 3.5, 1.5, 3.5, 5.0]])
