"""A blend's arithmetic: per-user score normalization and member weights fit on validation NDCG@10.

Normalization makes the members' scores comparable, per user (row) over the catalog. Items a member
cannot score (non-finite scores, `COLD_ITEM_SCORE`, or items outside `known_items`) take no part in the
statistics and get the row's lowest normalized value, so they never gain from an arbitrary number.
- zscore: (s - mean) / std (population std; 0 when all known scores are equal);
- minmax: (s - min) / (max - min), in [0, 1] (0 when all are equal);
- rank: (average rank, ascending, from 1) - 1 over (n_known - 1), in [0, 1]: the share of known items
  scored lower, ties counting half.

Weight fitting ranks a pool per validation user: the union of each member's top `pool` unseen items.
Every weighting of the members is then a cheap (users x pool) sum, top 10 and NDCG; a member alone is
ranked exactly (its top 10 lies in its own top `pool`), a mix only misses an item that is in no member's
top `pool` yet reaches the mix's top 10. The NDCG is `ranking_metrics`' (the evaluate step's), over the
users `validation_batches` picks (the train step's validation NDCG@10).

The weights lie on the simplex (non-negative, summing to 1) and are found by coordinate ascent: start at
the best member alone, and repeatedly take the best of the moves "mix `step` of member m in" (w ->
(1 - step) w + step e_m, step in STEPS) while it raises the mean NDCG@10 by more than MIN_IMPROVEMENT.
NDCG over a ranking is piecewise constant in the weights, so gradients do not exist; the coarse steps
cross its plateaus and the fine ones settle between them. Ties keep the weights already held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recloop.data.interactions import Histories, Interactions
from recloop.models.base import COLD_ITEM_SCORE, top_k
from recloop.models.early_stopping import validation_batches
from recloop.models.ranking_metrics import Targets, ranking_metrics

NDCG_K = 10
STEPS = (0.5, 0.25, 0.1, 0.05)
MAX_ROUNDS = 200
MIN_IMPROVEMENT = 1e-9  # mean NDCG@10 gains below this are float noise, not a better weighting

# Normalized member scores of a batch of histories with their user ids: one (rows, n_items) array each.
MemberScores = Callable[[Histories, np.ndarray | None], list[np.ndarray]]
Weights = Sequence[float] | np.ndarray  # one per member, in member order


# ---------------------------------------------------------------------------------------------- normalization


def normalize_scores(scores: np.ndarray, method: str, known_items: np.ndarray | None = None) -> np.ndarray:
    """Per-row normalized float32 scores; unknown entries get the row's lowest normalized known value."""
    s = np.asarray(scores, dtype=np.float64)
    known = np.isfinite(s) & (s > COLD_ITEM_SCORE / 2)
    if known_items is not None:
        known &= np.asarray(known_items, dtype=bool)[None, :]
    normalized = _NORMALIZERS[method](s, known)
    lowest = np.where(known, normalized, np.inf).min(axis=1, keepdims=True)
    lowest[~np.isfinite(lowest)] = 0.0  # a row without known items is all zeros
    return np.where(known, normalized, lowest).astype(np.float32)


def _zscore(s: np.ndarray, known: np.ndarray) -> np.ndarray:
    count = np.maximum(known.sum(axis=1, keepdims=True), 1)
    mean = np.where(known, s, 0.0).sum(axis=1, keepdims=True) / count
    centred = np.subtract(s, mean, out=np.zeros_like(s), where=known)
    std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / count)
    return np.divide(centred, std, out=np.zeros_like(s), where=std > 0)


def _minmax(s: np.ndarray, known: np.ndarray) -> np.ndarray:
    any_known = known.any(axis=1, keepdims=True)
    low = np.where(any_known, np.where(known, s, np.inf).min(axis=1, keepdims=True), 0.0)
    high = np.where(any_known, np.where(known, s, -np.inf).max(axis=1, keepdims=True), 0.0)
    shifted = np.subtract(s, low, out=np.zeros_like(s), where=known)
    return np.divide(shifted, high - low, out=np.zeros_like(s), where=high > low)


def _rank(s: np.ndarray, known: np.ndarray) -> np.ndarray:
    # Unknown entries tie below every known one, taking the lowest ranks; known ranks start after them.
    ranks = average_ranks(np.where(known, s, -np.inf))
    n_unknown = (~known).sum(axis=1, keepdims=True)
    n_known = s.shape[1] - n_unknown
    return np.divide(ranks - n_unknown - 1, n_known - 1, out=np.zeros_like(s), where=n_known > 1)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Per-row ranks from 1 (lowest), ties sharing their average rank (scipy's rankdata "average")."""
    n_cols = x.shape[1]
    order = np.argsort(x, axis=1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=1)
    starts = np.ones(x.shape, dtype=bool)  # a tie group begins here (in sorted order)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(x.shape, dtype=bool)  # a tie group ends here
    ends[:, :-1] = starts[:, 1:]
    position = np.arange(n_cols)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, n_cols)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    return ranks


_NORMALIZERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "zscore": _zscore,
    "minmax": _minmax,
    "rank": _rank,
}


def weighted_sum(weights: Weights, scores: Sequence[np.ndarray]) -> np.ndarray:
    """Σ w_m · scores_m in float32, members in order, zero weights skipped: scoring and weight fitting
    both sum this way, so a fitted weighting ranks exactly as the saved blend does."""
    out = np.zeros(np.shape(scores[0]), dtype=np.float32)
    for weight, member_scores in zip(weights, scores):
        if weight > 0:
            out += np.float32(weight) * member_scores
    return out


# ---------------------------------------------------------------------------------------------- pools


@dataclass
class PooledScores:
    """Per validation user, the items weight fitting ranks and every member's normalized score of them."""

    items: np.ndarray  # (users, width) int64: ascending item ids, -1 = empty slot (these come first)
    scores: np.ndarray  # (members, users, width) float32 normalized scores; 0 in empty slots
    targets: Targets  # each user's relevant items (not in the history), outside the pool too

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_members(self) -> int:
        return int(self.scores.shape[0])

    def select(self, rows: np.ndarray) -> PooledScores:
        return PooledScores(self.items[rows], self.scores[:, rows], self.targets.select(rows))

    def ndcg(self, weights: Weights) -> np.ndarray:
        """Per-user NDCG@10 of ranking each pool by the weighted sum of the members' scores."""
        blended = weighted_sum(weights, list(self.scores))
        blended[self.items < 0] = -np.inf
        # Columns are in ascending item order, so top_k's tie rule (lower column) is recommend's (lower id).
        columns, best = top_k(blended, min(NDCG_K, blended.shape[1]))
        ids = np.take_along_axis(self.items, columns, axis=1)
        ids[~np.isfinite(best)] = -1
        return ranking_metrics(ids, self.targets, [NDCG_K], metrics=("ndcg",))[f"ndcg@{NDCG_K}"]

    def mean_ndcg(self, weights: Weights) -> float:
        return float(self.ndcg(weights).mean())


def pool_rows(normalized: Sequence[np.ndarray], seen: sp.csr_matrix, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) of `PooledScores` for one batch: the union of each member's top `pool` unseen items."""
    rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
    tops = []
    for member_scores in normalized:
        masked = member_scores.copy()
        masked[rows, seen.indices] = -np.inf
        ids, best = top_k(masked, min(pool, masked.shape[1]))
        ids[~np.isfinite(best)] = -1
        tops.append(ids)
    items = np.sort(np.concatenate(tops, axis=1), axis=1)
    items[:, 1:][items[:, 1:] == items[:, :-1]] = -1  # an item in several members' tops counts once
    items = np.sort(items, axis=1)
    width = max(int((items >= 0).sum(axis=1).max(initial=0)), 1)
    items = items[:, -width:]
    safe = np.maximum(items, 0)
    scores = np.stack([np.take_along_axis(s, safe, axis=1) for s in normalized])
    scores[:, items < 0] = 0.0
    return items, scores


def pool_validation(
    member_scores: MemberScores, histories: Histories, valid: Interactions, pool: int, batch_size: int = 1024
) -> PooledScores | None:
    """Every validation user's pool (None when no user has a validation item outside their history)."""
    parts: list[tuple[np.ndarray, np.ndarray, Targets]] = []
    for batch in validation_batches(histories, valid, batch_size):
        items, scores = pool_rows(member_scores(batch.histories, batch.users), batch.seen, pool)
        parts.append((items, scores, batch.targets))
    if not parts:
        return None
    width = max(items.shape[1] for items, _, _ in parts)
    items = np.concatenate([np.pad(i, ((0, 0), (width - i.shape[1], 0)), constant_values=-1) for i, _, _ in parts])
    scores = np.concatenate([np.pad(s, ((0, 0), (0, 0), (width - s.shape[2], 0))) for _, s, _ in parts], axis=1)
    return PooledScores(items, scores, _concat_targets([t for _, _, t in parts]))


def _concat_targets(parts: list[Targets]) -> Targets:
    counts = np.concatenate([t.counts() for t in parts])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Targets(indptr, np.concatenate([t.items for t in parts]).astype(np.int64))


# ---------------------------------------------------------------------------------------------- weights


def fit_weights(pooled: PooledScores) -> np.ndarray:
    """Simplex weights maximizing mean NDCG@10 over `pooled`'s users, by coordinate ascent (module doc)."""
    vertices = np.eye(pooled.n_members)
    alone = [pooled.mean_ndcg(v) for v in vertices]
    best = int(np.argmax(alone))
    weights, value = vertices[best], alone[best]
    for _ in range(MAX_ROUNDS):
        moves = [
            (1 - step) * weights + step * vertices[m]
            for m in range(pooled.n_members)
            if weights[m] < 1.0
            for step in STEPS
        ]
        values = [pooled.mean_ndcg(w) for w in moves]
        if not moves or max(values) <= value + MIN_IMPROVEMENT:
            break
        pick = int(np.argmax(values))
        weights, value = moves[pick], values[pick]
    return weights


@dataclass
class CrossValidation:
    """The weights a blend keeps, and the cross-validated numbers they were chosen by."""

    weights: np.ndarray  # final weights, one per member
    blended: bool  # False: the best member alone was kept
    cv_ndcg: float  # blend: mean held-out NDCG@10 of weights fit on the other folds
    member_ndcg: list[float]  # each member alone (nothing to fit: the same on every fold)
    valid_ndcg: float  # the final weights on all validation users (in-sample)
    n_users: int
    n_folds: int
    fold_weights: list[np.ndarray] = field(default_factory=list)

    @property
    def best_member(self) -> int:
        return int(np.argmax(self.member_ndcg))


def cross_validate(pooled: PooledScores, folds: int, seed: int, min_gain: float) -> CrossValidation:
    """K-fold cross-validation over users of `fit_weights`, then the final weights.

    The final weights are refit on all validation users: cross-validation measures the procedure, and the
    refit uses every user. (A mean of the fold weights is no optimum of anything: NDCG is not concave in
    the weights, and two good weightings can average to a poor one.) When the blend's cross-validated
    NDCG@10 does not beat the best member alone by more than `min_gain`, that member is kept alone.
    Needs at least 2 users.
    """
    order = np.random.default_rng(seed).permutation(len(pooled))
    held_out = np.zeros(len(pooled))
    fold_weights = []
    parts = np.array_split(order, min(folds, len(pooled)))
    for part in parts:
        weights = fit_weights(pooled.select(np.setdiff1d(order, part)))
        held_out[part] = pooled.select(part).ndcg(weights)
        fold_weights.append(weights)
    member_ndcg = [pooled.mean_ndcg(v) for v in np.eye(pooled.n_members)]
    best = int(np.argmax(member_ndcg))
    cv_ndcg = float(held_out.mean())
    blended = cv_ndcg > member_ndcg[best] + min_gain
    weights = fit_weights(pooled) if blended else np.eye(pooled.n_members)[best]
    return CrossValidation(
        weights, blended, cv_ndcg, member_ndcg, pooled.mean_ndcg(weights), len(pooled), len(parts), fold_weights
    )
