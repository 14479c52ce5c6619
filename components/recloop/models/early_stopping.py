"""Validation NDCG@k for model selection and early stopping, plus a patience tracker.

Models that train in epochs (mf, sequential models) call `validation_ndcg` every few epochs and keep the
best weights; the train step uses it to report every candidate's `best_valid_metric` the same way.

This is a deliberately tiny, self-contained metric (binary relevance, full ranking, training items
excluded). The evaluation step's `recloop.evaluation.metrics` is the reference implementation for reported
test metrics; keep the two definitions in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import scipy.sparse as sp

from recloop.data.interactions import Histories, Interactions

if TYPE_CHECKING:
    from recloop.models.base import Recommender

ScoreFn = Callable[[Histories, np.ndarray], np.ndarray]


def ndcg_at_k(score: ScoreFn, histories: Histories, targets: Interactions, k: int = 10,
              batch_size: int = 1024) -> float:
    """Mean NDCG@k over users that have at least one target item outside their history.

    `score(histories_batch, user_ids)` returns dense (batch, n_items) scores; `histories` is indexed by
    user id (row u = user u) and its items are excluded from the ranking. Relevance is binary: the user's
    target items not already in their history. Users are scored in batches (no per-user Python loop).
    """
    if k < 1:
        raise ValueError(f"k must be positive (got {k})")
    if len(targets) == 0:
        return 0.0
    target_csr = targets.to_csr(binary=True)
    users = np.flatnonzero(np.diff(target_csr.indptr) > 0)
    n_users_hist = len(histories)
    users = users[users < n_users_hist]
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal_cumulative = np.cumsum(discounts)
    total, counted = 0.0, 0
    for start in range(0, len(users), batch_size):
        batch_users = users[start:start + batch_size]
        batch_hist = histories.select(batch_users)
        seen = batch_hist.to_csr(binary=True)
        relevant = target_csr[batch_users]
        relevant = (relevant - relevant.multiply(seen)).tocsr()
        relevant.eliminate_zeros()
        n_relevant = np.diff(relevant.indptr)
        keep = n_relevant > 0
        if not keep.any():
            continue
        scores = np.asarray(score(batch_hist, batch_users), dtype=np.float32).copy()
        rows = np.repeat(np.arange(len(batch_users)), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
        top = _top_k_ids(scores, min(k, scores.shape[1]))
        hits = _lookup(relevant, top)
        dcg = (hits * discounts[: top.shape[1]]).sum(axis=1)
        idcg = ideal_cumulative[np.clip(n_relevant, 1, k) - 1]
        total += float((dcg[keep] / idcg[keep]).sum())
        counted += int(keep.sum())
    return total / counted if counted else 0.0


def validation_ndcg(model: Recommender, valid: Interactions, k: int = 10, batch_size: int = 1024) -> float:
    """NDCG@k of a (possibly still training) model on `valid`, ranking against its training histories."""
    if model.train_histories is None:
        raise RuntimeError("validation_ndcg needs a model whose fit() has called _remember(train)")
    return ndcg_at_k(model.score_histories, model.train_histories, valid, k=k, batch_size=batch_size)


def _top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise top-k ids, best first; ties broken by lower item id (same rule as `recommend`)."""
    from recloop.models.base import top_k

    ids, top_scores = top_k(scores, k)
    # An id whose score is -inf (seen item, fewer candidates than k) is no recommendation.
    ids[~np.isfinite(top_scores)] = -1
    return ids


def _lookup(relevant: sp.csr_matrix, ids: np.ndarray) -> np.ndarray:
    """(rows, k) 0/1 array: is ids[r, j] relevant for row r."""
    n_rows, n_cols = relevant.shape
    dense = np.zeros((n_rows, n_cols + 1), dtype=np.float64)  # last column absorbs the -1 padding
    r = np.repeat(np.arange(n_rows), np.diff(relevant.indptr))
    dense[r, relevant.indices] = 1.0
    return np.take_along_axis(dense, np.where(ids < 0, n_cols, ids), axis=1)


@dataclass
class EarlyStopping:
    """Patience on a higher-is-better validation metric; remembers the best value and its epoch."""

    patience: int
    min_delta: float = 0.0
    best: float = -np.inf
    best_epoch: int = 0
    _bad_rounds: int = field(default=0, repr=False)

    def update(self, value: float, epoch: int) -> bool:
        """Record `value` at `epoch`; True if it is a new best (the caller then keeps its weights)."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self._bad_rounds = value, epoch, 0
            return True
        self._bad_rounds += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self._bad_rounds >= self.patience
