"""Turn recommendation lists into per-user metric arrays, segments, confidence intervals and comparisons.

`EvalSetup` holds what is shared by every model evaluated on one split (queries, cut-offs, training
popularity, head items, the item representation diversity is measured in, bootstrap settings), so all
models, the production champion included, are measured the same way on the same users.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recloop.evaluation import metrics as M
from recloop.evaluation.bootstrap import paired_bootstrap, percentile_intervals
from recloop.evaluation.protocols import (
    HEAD_SHARE,
    EvalQueries,
    ScoreFn,
    SplitData,
    TimedScoreFn,
    history_segments,
    item_segments,
    rank,
)
from recloop.models.ranking_metrics import ranking_metrics

PER_USER_BEYOND = ("novelty", "diversity", "arp", "head_share")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class EvalSetup:
    queries: EvalQueries
    ks: tuple[int, ...]
    interaction_counts: np.ndarray  # training events per item
    pop_share: np.ndarray  # share of training users per item (novelty)
    head_mask: np.ndarray  # bool per item
    diversity_basis: str  # "categories" | "interactions"
    diversity_vectors: sp.csr_matrix | None
    diversity_categories: sp.csr_matrix | None
    n_resamples: int
    seed: int
    confidence: float = CONFIDENCE
    cold_mask: np.ndarray | None = None  # bool per item: held out of training (cold-start protocol)
    # Categorical user attribute -> its value per user_idx (None = missing): segments "attribute=value".
    user_groups: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def max_k(self) -> int:
        return max(self.ks)

    def protocol_json(self) -> dict[str, Any]:
        q = self.queries
        return {
            "split": q.split,
            "ranking": q.protocol,
            "sampled_negatives": q.stats.get("sampled_negatives"),
            "exclude_seen": q.exclude_seen,
            "n_users": len(q),
            "n_items": q.n_items,
            "eligible_items": int(q.item_mask.sum()) if q.item_mask is not None else q.n_items,
            "bootstrap_resamples": self.n_resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "head_items": int(self.head_mask.sum()),
            "head_definition": f"most popular training items holding the first {HEAD_SHARE:.0%} of interactions",
            "data_head_share": round(
                float(self.interaction_counts[self.head_mask].sum() / max(self.interaction_counts.sum(), 1.0)), 6
            ),
            "diversity_basis": self.diversity_basis,
            "history_buckets": list(history_segments(q)),
            "cold_start_items": int(self.cold_mask.sum()) if self.cold_mask is not None else 0,
            **{k: v for k, v in q.stats.items() if k != "sampled_negatives"},
        }


# Values of one user attribute shown as segments, the most common first; the rest are not segmented.
MAX_GROUPS_PER_ATTRIBUTE = 8


def user_segments(queries: EvalQueries, groups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of each value of each user attribute ("age_group=18-24": rows), at most
    MAX_GROUPS_PER_ATTRIBUTE values per attribute; users without a value are in none."""
    out: dict[str, np.ndarray] = {}
    for name, values in groups.items():
        from collections import Counter

        per_row = values[queries.users]
        counts = Counter(v for v in per_row if isinstance(v, str))
        common = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_GROUPS_PER_ATTRIBUTE]
        for value in sorted(common):
            out[f"{name}={value}"] = np.flatnonzero(per_row == value)
    return out


def make_setup(
    data: SplitData,
    queries: EvalQueries,
    ks: list[int] | tuple[int, ...],
    n_resamples: int,
    seed: int,
    cold_mask: np.ndarray | None = None,
    user_groups: dict[str, np.ndarray] | None = None,
) -> EvalSetup:
    train = data.train_interactions()
    counts = np.bincount(train.item, minlength=data.n_items).astype(np.float64)
    binary = train.to_csr(binary=True)  # users x items
    user_counts = np.asarray(binary.sum(axis=0)).ravel()
    n_train_users = int(np.count_nonzero(np.diff(binary.indptr)))
    vectors = categories = None
    if data.item_categories is not None:
        # Shared by all models, so their diversity values are comparable.
        basis = "categories"
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, cats in enumerate(data.item_categories):
            for c in set(cats):
                rows.append(i)
                cols.append(vocab.setdefault(c, len(vocab)))
        categories = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(data.n_items, max(len(vocab), 1)))
    else:
        # Without a catalog, an item is the set of training users who interacted with it.
        basis = "interactions"
        vectors = binary.T.tocsr()
    return EvalSetup(
        queries=queries,
        ks=tuple(sorted(set(ks))),
        interaction_counts=counts,
        pop_share=M.popularity_share(user_counts, n_train_users),
        head_mask=M.head_items(counts, HEAD_SHARE),
        diversity_basis=basis,
        diversity_vectors=vectors,
        diversity_categories=categories,
        n_resamples=n_resamples,
        seed=seed,
        cold_mask=cold_mask,
        user_groups=dict(user_groups or {}),
    )


@dataclass
class ModelResult:
    """Everything measured for one model on the setup's queries."""

    name: str
    recs: np.ndarray  # (n_users, max_k)
    per_user: dict[str, np.ndarray]  # 'ndcg@10' -> (n_users,), NaN where undefined
    coverage: dict[int, float]
    segments: dict[str, dict[str, np.ndarray]]  # label -> metric -> per-user values of that segment
    segment_users: dict[str, int]
    popularity_curve: dict[str, list[float]]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def evaluate_scores(
    setup: EvalSetup,
    name: str,
    score_fn: ScoreFn | TimedScoreFn,
    batch_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> ModelResult:
    """Rank the setup's queries with `score_fn` and measure the lists."""
    started = time.perf_counter()
    recs = rank(setup.queries, score_fn, setup.max_k, batch_size=batch_size)
    result = evaluate_recs(setup, name, recs, info)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def evaluate_recs(setup: EvalSetup, name: str, recs: np.ndarray, info: dict[str, Any] | None = None) -> ModelResult:
    q = setup.queries
    per_user = ranking_metrics(recs, q.targets, setup.ks)
    coverage: dict[int, float] = {}
    for k in setup.ks:
        per_user[f"novelty@{k}"] = M.novelty(recs, k, setup.pop_share)
        per_user[f"diversity@{k}"] = M.intra_list_diversity(
            recs, k, item_vectors=setup.diversity_vectors, item_categories=setup.diversity_categories
        )
        per_user[f"arp@{k}"] = M.average_popularity(recs, k, setup.interaction_counts)
        per_user[f"head_share@{k}"] = M.head_share_of_lists(recs, k, setup.head_mask)
        coverage[k] = M.catalog_coverage(recs, k, q.n_items, q.item_mask)
    accuracy_names = [f"{m}@{k}" for k in setup.ks for m in M.ACCURACY_METRICS]
    segments: dict[str, dict[str, np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for label, rows in history_segments(q).items():
        segments[label] = {m: per_user[m][rows] for m in accuracy_names}
        sizes[label] = len(rows)
    for label, rows in user_segments(q, setup.user_groups).items():
        segments[label] = {m: per_user[m][rows] for m in accuracy_names}
        sizes[label] = len(rows)
    for label, (rows, targets) in item_segments(q, setup.head_mask, setup.cold_mask).items():
        segments[label] = (
            ranking_metrics(recs[rows], targets, setup.ks) if len(rows) else {m: np.zeros(0) for m in accuracy_names}
        )
        sizes[label] = len(rows)
    curve = M.popularity_curve(recs, setup.max_k, setup.interaction_counts)
    return ModelResult(name, recs, per_user, coverage, segments, sizes, curve, 0.0, dict(info or {}))


def metric_order(setup: EvalSetup) -> list[str]:
    """Every metric@k in report order: accuracy, then beyond-accuracy, per k."""
    names = [f"{m}@{k}" for k in setup.ks for m in M.ACCURACY_METRICS]
    names += [f"{m}@{k}" for k in setup.ks for m in ("coverage", *PER_USER_BEYOND)]
    return names


def _intervals(setup: EvalSetup, values: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    names = list(values)
    if not names:
        return {}
    n = len(next(iter(values.values())))
    matrix = np.column_stack([values[m] for m in names]) if n else np.zeros((0, len(names)))
    cis = percentile_intervals(matrix, setup.n_resamples, setup.seed, setup.confidence)
    return {m: ci.to_json() for m, ci in zip(names, cis)}


def result_json(setup: EvalSetup, result: ModelResult) -> dict[str, Any]:
    """The JSON block of one model: metrics (value + 95 % CI), segments, popularity curve."""
    metrics = _intervals(setup, result.per_user)
    for k, value in result.coverage.items():
        metrics[f"coverage@{k}"] = {"value": round(value, 6), "ci_low": None, "ci_high": None}
    ordered = {m: metrics[m] for m in metric_order(setup) if m in metrics}
    segments = {
        label: {"n_users": result.segment_users[label], "metrics": _intervals(setup, seg)}
        for label, seg in result.segments.items()
    }
    return {
        **result.info,
        "n_users": len(result.recs),
        "eval_seconds": result.seconds,
        "metrics": ordered,
        "segments": segments,
        "popularity_curve": result.popularity_curve,
    }


def compare(setup: EvalSetup, candidate: ModelResult, champion: ModelResult) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of candidate − champion for every per-user metric, on the same users."""
    out = {}
    for name in metric_order(setup):
        if name in candidate.per_user and name in champion.per_user:
            out[name] = paired_bootstrap(
                candidate.per_user[name], champion.per_user[name], setup.n_resamples, setup.seed, setup.confidence
            ).to_json()
    return out
