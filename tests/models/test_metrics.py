"""Metrics, bootstrap and evaluation protocols, against hand-computed values (arithmetic in comments)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from recloop.evaluation import metrics as M
from recloop.evaluation.bootstrap import bootstrap_means, paired_bootstrap, percentile_intervals
from recloop.evaluation.protocols import (
    SplitData,
    build_queries,
    history_segments,
    item_segments,
    rank,
    with_sampled_negatives,
)
from recloop.models.ranking_metrics import Targets, ranking_metrics
from support.eval_helpers import split_frame

LOG2_3 = math.log2(3)


def one_user(recs: list[int], relevant: list[int], ks: list[int]) -> dict[str, float]:
    out = ranking_metrics(np.array([recs]), Targets.from_lists([relevant]), ks)
    return {k: float(v[0]) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- accuracy


def test_several_relevant_items_and_a_short_list() -> None:
    # recs 3, 1, 7 then padding; relevant {1, 7, 9}: hits at ranks 2 and 3, |rel| = 3.
    m = one_user([3, 1, 7, -1, -1], [1, 7, 9], [2, 5])
    # k = 5: two hits.
    assert m["hr@5"] == 1.0
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["precision@5"] == pytest.approx(2 / 5)  # a short list is not rewarded: denominator stays k
    assert m["f1@5"] == pytest.approx(0.5)  # 2·(2/5)(2/3) / (2/5 + 2/3) = (8/15)/(16/15)
    dcg = 1 / LOG2_3 + 1 / 2  # ranks 2, 3 -> 1/log2(3) + 1/log2(4)
    idcg = 1 + 1 / LOG2_3 + 1 / 2  # min(|rel|=3, 5) = 3 ideal hits
    assert m["ndcg@5"] == pytest.approx(dcg / idcg)  # 0.530721...
    assert m["mrr@5"] == pytest.approx(1 / 2)
    assert m["map@5"] == pytest.approx((1 / 2 + 2 / 3) / 3)  # precision@2 + precision@3, / min(3, 5)
    # k = 2: only the hit at rank 2.
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["f1@2"] == pytest.approx(0.4)  # 2·(1/2)(1/3) / (5/6)
    assert m["ndcg@2"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))  # ideal over min(3, 2) = 2
    assert m["map@2"] == pytest.approx((1 / 2) / 2)


def test_perfect_ranking() -> None:
    m = one_user([4, 8, 0, 1, 2], [8, 4], [2, 5])
    for name in ("hr", "recall", "precision", "f1", "ndcg", "mrr", "map"):
        assert m[f"{name}@2"] == pytest.approx(1.0), name
    assert m["ndcg@5"] == pytest.approx(1.0)  # ideal DCG over min(2, 5) = 2 hits
    assert m["map@5"] == pytest.approx(1.0)  # (1/1 + 2/2) / min(2, 5)
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["f1@5"] == pytest.approx(2 * 0.4 * 1 / 1.4)


def test_no_hits() -> None:
    m = one_user([1, 2, 3], [9], [3])
    assert all(v == 0.0 for v in m.values())


def test_nothing_recommended_and_k_wider_than_the_list() -> None:
    m = one_user([-1, -1], [0], [5])  # all padding, and k = 5 > 2 columns
    assert all(v == 0.0 for v in m.values())
    m = one_user([7], [7], [3])  # one column, k = 3
    assert m["hr@3"] == 1.0 and m["ndcg@3"] == 1.0 and m["precision@3"] == pytest.approx(1 / 3)


def test_vectorized_over_users_matches_each_user() -> None:
    recs = np.array([[3, 1, 7, -1], [0, 1, 2, 3], [5, 6, 7, 8]])
    targets = Targets.from_lists([[1, 7, 9], [0], [2, 8]])
    out = ranking_metrics(recs, targets, [4])
    # user 2: hit at rank 4 only -> ndcg = (1/log2 5) / (1 + 1/log2 3); mrr = 1/4; map = (1/4) / 2
    assert out["ndcg@4"][2] == pytest.approx((1 / math.log2(5)) / (1 + 1 / LOG2_3))
    assert out["mrr@4"].tolist() == pytest.approx([1 / 2, 1.0, 1 / 4])
    assert out["map@4"][2] == pytest.approx(1 / 8)
    assert out["recall@4"].tolist() == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert out["hr@4"].tolist() == [1.0, 1.0, 1.0]


def test_users_without_targets_and_unknown_metrics_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        ranking_metrics(np.array([[1, 2]]), Targets.from_lists([[]]), [2])
    with pytest.raises(ValueError, match="unknown accuracy metrics"):
        ranking_metrics(np.array([[1]]), Targets.from_lists([[1]]), [1], metrics=("auc",))


def test_targets_helpers() -> None:
    t = Targets.from_pairs(np.array([2, 0, 2, 0, 2]), np.array([5, 1, 3, 1, 9]), 3)  # duplicate (0, 1)
    assert t.counts().tolist() == [1, 0, 3]
    assert t.row(2).tolist() == [3, 5, 9]
    sel = t.select(np.array([2, 0]))
    assert sel.counts().tolist() == [3, 1] and sel.items.tolist() == [3, 5, 9, 1]
    mask = np.zeros(10, bool)
    mask[[1, 9]] = True
    assert t.restrict_items(mask).items.tolist() == [1, 9]
    with pytest.raises(ValueError, match="ndcg@10"):
        M.split_metric("ndcg10")
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        M.split_metric("auc@10")
    assert M.split_metric("head_share@20") == ("head_share", 20)


# ---------------------------------------------------------------------------------------------- beyond accuracy


def test_catalog_coverage() -> None:
    recs = np.array([[0, 1, -1], [1, 2, -1]])
    assert M.catalog_coverage(recs, 3, 10) == pytest.approx(3 / 10)  # items {0, 1, 2}
    assert M.catalog_coverage(recs, 1, 10) == pytest.approx(2 / 10)  # top 1: {0, 1}
    eligible = np.zeros(10, bool)
    eligible[[0, 1, 5, 6, 7]] = True  # 2 of the 5 eligible items shown (item 2 is not eligible)
    assert M.catalog_coverage(recs, 3, 10, eligible) == pytest.approx(2 / 5)


def test_novelty() -> None:
    share = M.popularity_share(np.array([2, 1, 0, 4]), n_users=4)
    assert share.tolist() == [0.5, 0.25, 0.25, 1.0]  # an untouched item counts as 1 user
    recs = np.array([[0, 1], [2, -1], [-1, -1]])
    nov = M.novelty(recs, 2, share)
    assert nov[0] == pytest.approx(1.5)  # (−log2 0.5 + −log2 0.25) / 2 = (1 + 2) / 2
    assert nov[1] == pytest.approx(2.0)  # one item, share 0.25
    assert math.isnan(nov[2])  # nothing recommended: undefined


def test_diversity_from_item_vectors() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    recs = np.array([[0, 1, 2], [0, 2, -1], [1, -1, -1], [0, 3, -1]])
    div = M.intra_list_diversity(recs, 3, item_vectors=vectors)
    # cos(0,1) = 0, cos(0,2) = cos(1,2) = 1/√2 -> mean similarity (2/√2)/3
    assert div[0] == pytest.approx(1 - (2 / math.sqrt(2)) / 3)
    assert div[1] == pytest.approx(1 - 1 / math.sqrt(2))
    assert math.isnan(div[2])  # a single item has no pairs
    assert div[3] == pytest.approx(1.0)  # a zero vector is similar to nothing


def test_diversity_from_categories() -> None:
    import scipy.sparse as sp

    # item 0 {a, b}, item 1 {b, c}, item 2 {}, item 3 {a, b}
    cats = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]]))
    recs = np.array([[0, 1, 2], [0, 3, -1]])
    div = M.intra_list_diversity(recs, 3, item_categories=cats, batch_size=1)
    # J(0,1) = |{b}| / |{a,b,c}| = 1/3, J(0,2) = J(1,2) = 0 -> mean 1/9
    assert div[0] == pytest.approx(1 - 1 / 9)
    assert div[1] == pytest.approx(0.0)  # identical category sets
    with pytest.raises(ValueError, match="exactly one"):
        M.intra_list_diversity(recs, 3)


def test_head_items_and_popularity_bias() -> None:
    counts = np.array([10, 5, 3, 2])  # 20 interactions; 20 % = 4: item 0 alone holds them
    assert M.head_items(counts).tolist() == [True, False, False, False]
    # [3, 3, 2, 2]: 20 % of 10 = 2; item 0 (0 before it < 2) is head, item 1 (3 before it) is not.
    assert M.head_items(np.array([3, 3, 2, 2])).tolist() == [True, False, False, False]
    # 50 %: items holding the first 5 of 10 -> items 0 (0 before) and 1 (3 before).
    assert M.head_items(np.array([2, 2, 3, 3]), 0.5).tolist() == [False, False, True, True]
    assert not M.head_items(np.zeros(3)).any()
    recs = np.array([[0, 3], [1, 2]])
    assert M.average_popularity(recs, 2, counts).tolist() == pytest.approx([6.0, 4.0])  # (10+2)/2, (5+3)/2
    assert M.head_share_of_lists(recs, 2, M.head_items(counts)).tolist() == pytest.approx([0.5, 0.0])


def test_popularity_curve() -> None:
    counts = np.array([6, 3, 1, 0])
    recs = np.array([[0, 1], [0, 2]])  # slots: item 0 twice, items 1 and 2 once
    curve = M.popularity_curve(recs, 2, counts)
    assert curve["item_share"] == [0.25, 0.5, 0.75, 1.0]
    assert curve["data_share"] == pytest.approx([0.6, 0.9, 1.0, 1.0])  # 6/10, 9/10, 10/10
    assert curve["rec_share"] == pytest.approx([0.5, 0.75, 1.0, 1.0])  # 2/4, 3/4, 4/4


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_of_two_values_is_exact() -> None:
    # Resample means of {0, 1} (n = 2) are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5th and
    # 97.5th percentiles are 0 and 1.
    (ci,) = percentile_intervals(np.array([0.0, 1.0]), 2000, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.5, 0.0, 1.0)
    (const,) = percentile_intervals(np.full(50, 0.3), 100, seed=0)
    assert (const.low, const.high) == pytest.approx((0.3, 0.3))


def test_bootstrap_interval_width_matches_normal_theory() -> None:
    values = np.random.default_rng(7).normal(0.0, 1.0, 400)
    (ci,) = percentile_intervals(values, 2000, seed=1)
    half = 1.96 * values.std() / math.sqrt(len(values))  # ≈ 0.098
    assert ci.low < values.mean() < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)


def test_bootstrap_is_seeded_and_shares_resamples_across_columns() -> None:
    values = np.random.default_rng(3).random((30, 3))
    a = bootstrap_means(values, 50, seed=5)
    assert np.array_equal(a, bootstrap_means(values, 50, seed=5))
    assert not np.array_equal(a, bootstrap_means(values, 50, seed=6))
    # The same users are drawn whatever the number of columns, so CIs of different models align.
    assert np.array_equal(a[:, 1], bootstrap_means(values[:, 1], 50, seed=5)[:, 0])
    # NaN cells are left out of their resample's mean.
    with_nan = values[:, 0].copy()
    with_nan[0] = np.nan
    (ci,) = percentile_intervals(with_nan, 50, seed=5)
    assert ci.value == pytest.approx(np.nanmean(with_nan))
    (none,) = percentile_intervals(values[:, 0], 0, seed=5)
    assert math.isnan(none.low) and none.value == pytest.approx(values[:, 0].mean())


def test_paired_bootstrap() -> None:
    base = np.random.default_rng(0).random(100)
    better = paired_bootstrap(base + 0.1, base, 999, seed=0)
    assert better.diff == pytest.approx(0.1)
    assert (better.ci_low, better.ci_high) == pytest.approx((0.1, 0.1))
    assert better.p_value == pytest.approx(1 / 1000)  # (1 + 0 resamples with diff <= 0) / (1 + 999)
    same = paired_bootstrap(base, base, 99, seed=0)
    assert same.diff == 0.0 and same.p_value == 1.0
    worse = paired_bootstrap(base - 0.05, base, 99, seed=0)
    assert worse.p_value == 1.0 and worse.ci_high < 0
    # Half the users gain 0.2, half lose 0.2: no evidence either way.
    noisy = paired_bootstrap(base + np.where(np.arange(100) % 2 == 0, 0.2, -0.2), base, 999, seed=0)
    assert noisy.diff == pytest.approx(0.0, abs=1e-12) and 0.3 < noisy.p_value < 0.7
    assert noisy.ci_low < 0 < noisy.ci_high
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(base, base[:10], 10, seed=0)
    j = better.to_json()
    assert j["ratio"] == pytest.approx((base.mean() + 0.1) / base.mean(), rel=1e-5) and j["n_users"] == 100


# ---------------------------------------------------------------------------------------------- protocols


def small_split(user_ids: list[str] | None = None, item_ids: list[str] | None = None) -> SplitData:
    """u0: train 1, 2; valid 3; test 4.  u1: test repeats its valid item 1 (dropped as a target).
    u2: a train event (item 6, t=100) later than its test event (item 5, t=50): kept out of the history."""
    train = split_frame([(0, 1, 10), (0, 2, 20), (1, 0, 5), (2, 0, 10), (2, 6, 100)])
    valid = split_frame([(0, 3, 30), (1, 1, 6), (2, 7, 40)])
    test = split_frame([(0, 4, 40), (1, 1, 7), (2, 5, 50)])
    return SplitData(
        train,
        valid,
        test,
        np.array(user_ids or ["a", "b", "c"], dtype=object),
        np.array(item_ids or [f"i{i}" for i in range(10)], dtype=object),
        None,
        "mem://split",
    )


def test_test_queries_use_train_and_valid_history_without_future_events() -> None:
    q = build_queries(small_split(), "test")
    assert q.users.tolist() == [0, 2]  # user 1's only target was already seen
    assert q.histories.row(0).tolist() == [1, 2, 3]  # train + valid, chronological
    assert q.histories.row(1).tolist() == [0, 7]  # item 6 (t=100 > target t=50) is the future
    assert [q.targets.row(r).tolist() for r in range(len(q))] == [[4], [5]]
    assert q.stats == {
        "target_users": 3,
        "evaluated_users": 2,
        "target_events": 3,
        "future_history_events_dropped": 1,
        "repeat_targets_dropped": 1,
    }


def test_models_that_read_the_time_are_scored_at_their_first_target_event() -> None:
    from recloop.evaluation.protocols import model_scorer, rank

    q = build_queries(small_split(), "test")
    assert q.times is not None and q.times.tolist() == [40, 50]
    seen: list[list[int]] = []

    class Timed:
        def score_at(self, histories: Any, users: Any, times: Any) -> np.ndarray:
            seen.append(list(times))
            return np.zeros((len(histories), 10), np.float32)

    rank(q, model_scorer(Timed()), 3)
    assert seen == [[40, 50]]


def test_valid_queries_use_train_history_only() -> None:
    q = build_queries(small_split(), "valid")
    assert q.users.tolist() == [0, 1, 2]
    assert q.histories.row(0).tolist() == [1, 2]
    assert q.histories.row(1).tolist() == [0]
    assert q.histories.row(2).tolist() == [0]  # item 6 at t=100 is after the valid target at t=40
    assert [q.targets.row(r).tolist() for r in range(3)] == [[3], [1], [7]]


def test_fingerprint_follows_raw_ids_not_indices() -> None:
    base = build_queries(small_split(), "test").fingerprint()
    assert base == build_queries(small_split(), "test").fingerprint()
    assert base != build_queries(small_split(), "valid").fingerprint()
    # The same events with a different index assignment (user 'a' at index 2 and 'c' at 0) hash the same.
    s = small_split()
    remap = np.array([2, 1, 0])
    swapped = SplitData(
        *(df.assign(user_idx=remap[df.user_idx].astype(np.int32)) for df in (s.train, s.valid, s.test)),
        np.array(["c", "b", "a"], dtype=object),
        s.item_ids,
        None,
    )
    assert build_queries(swapped, "test").fingerprint() == base
    changed = SplitData(
        s.train, s.valid, s.test.assign(item_idx=np.array([4, 1, 8], np.int32)), s.user_ids, s.item_ids, None
    )
    assert build_queries(changed, "test").fingerprint() != base


def fixed_scores(n_items: int):
    """Scores descend with the item id: item 0 best."""
    return lambda histories, users: np.tile(np.arange(n_items, 0, -1, dtype=np.float32), (len(histories), 1))


def test_full_ranking_excludes_history_and_masked_items() -> None:
    q = build_queries(small_split(), "test")
    recs = rank(q, fixed_scores(10), k=4)
    assert recs.tolist() == [[0, 4, 5, 6], [1, 2, 3, 4]]  # u0 saw 1, 2, 3; u2 saw 0, 7
    mask = np.ones(10, bool)
    mask[[4, 6]] = False  # item 4 is u0's target: u0 has nothing left to find and is dropped
    masked = q.with_item_mask(mask)
    assert masked.users.tolist() == [2]
    assert masked.stats["users_without_eligible_targets"] == 1
    assert rank(masked, fixed_scores(10), k=4).tolist() == [[1, 2, 3, 5]]


def test_scores_that_are_not_finite_are_never_recommended() -> None:
    q = build_queries(small_split(), "test")

    def partial(histories, users):
        s = np.full((len(histories), 10), -np.inf, dtype=np.float32)
        s[:, 8] = 1.0
        s[:, 9] = np.nan
        return s

    assert rank(q, partial, k=3).tolist() == [[8, -1, -1], [8, -1, -1]]
    with pytest.raises(Exception, match="another item catalog"):
        rank(q, lambda h, u: np.zeros((len(h), 3)), k=3)


def test_sampled_negatives() -> None:
    q = build_queries(small_split(), "test")
    s = with_sampled_negatives(q, 3, seed=0)
    for r in range(len(s)):
        cand = set(s.candidates.row(r).tolist())
        seen = set(s.histories.row(r).tolist())
        target = set(s.targets.row(r).tolist())
        assert target <= cand and len(cand) == 4 and not (cand - target) & seen
    assert s.candidates.items.tolist() == with_sampled_negatives(q, 3, seed=0).candidates.items.tolist()
    assert s.candidates.items.tolist() != with_sampled_negatives(q, 3, seed=1).candidates.items.tolist()
    # Ranking happens among the candidates only.
    recs = rank(s, fixed_scores(10), k=10)
    for r in range(len(s)):
        shown = recs[r][recs[r] >= 0]
        assert sorted(shown.tolist()) == sorted(s.candidates.row(r).tolist())
    # Asking for more negatives than exist takes every free item: u0 has 10 - 3 seen - 1 target = 6.
    everything = with_sampled_negatives(q, 50, seed=0)
    assert everything.candidates.counts().tolist() == [7, 8]


def test_segments() -> None:
    lengths = [0, 5, 6, 20, 21]
    train = split_frame([(u, i % 30, t) for u, n in enumerate(lengths) for t, i in enumerate(range(n))])
    test = split_frame([(u, 40 + u, 1000) for u in range(5)])
    data = SplitData(
        train,
        split_frame([]),
        test,
        np.array([str(u) for u in range(5)], dtype=object),
        np.array([str(i) for i in range(50)], dtype=object),
        None,
    )
    q = build_queries(data, "test")
    seg = history_segments(q)
    assert {k: v.tolist() for k, v in seg.items()} == {"history ≤5": [0, 1], "history 6–20": [2, 3], "history >20": [4]}
    head = np.zeros(50, bool)
    head[[40, 41]] = True
    items = item_segments(q, head)
    assert items["head items"][0].tolist() == [0, 1]
    assert items["tail items"][0].tolist() == [2, 3, 4]
    assert items["tail items"][1].items.tolist() == [42, 43, 44]


def test_empty_target_split_is_an_error_naming_the_fix() -> None:
    s = small_split()
    empty = SplitData(s.train, s.valid, s.test.iloc[0:0], s.user_ids, s.item_ids, None, "mem://x")
    with pytest.raises(Exception, match="test split is empty"):
        build_queries(empty, "test")


def test_history_order_keeps_source_order_for_equal_timestamps() -> None:
    train = split_frame([(0, 3, 10), (0, 1, 10)])
    valid = split_frame([(0, 2, 10)])
    test = split_frame([(0, 4, 10)])
    data = SplitData(
        train, valid, test, np.array(["u"], dtype=object), np.array([str(i) for i in range(5)], dtype=object), None
    )
    q = build_queries(data, "test")
    assert q.histories.row(0).tolist() == [3, 1, 2]  # equal timestamps: train order, then valid
