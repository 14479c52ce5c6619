"""Validation NDCG@k for model selection and early stopping, plus a patience tracker.

Models that train in epochs (mf, sequential models) call `validation_ndcg` every few epochs and keep the
best weights; the train step uses it to report every candidate's `best_valid_metric` the same way.

Binary relevance, full ranking, the user's history excluded from both the ranking and the relevant set;
the NDCG itself is `recloop.models.ranking_metrics.ranking_metrics`, so model selection here and the evaluate
step's reported metrics share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recloop.data.interactions import Histories, Interactions
from recloop.models.ranking_metrics import Targets, ranking_metrics

if TYPE_CHECKING:
    import scipy.sparse as sp

    from recloop.models.base import Recommender

ScoreFn = Callable[[Histories, np.ndarray], np.ndarray]


@dataclass
class ValidationBatch:
    """Users of one batch that have a target outside their history, with what ranking them needs."""

    users: np.ndarray  # their ids (rows of the histories)
    histories: Histories  # their histories, whose items are excluded from the ranking
    seen: sp.csr_matrix  # the histories as a binary (len(users), n_items) matrix
    targets: Targets  # their target items not already in the history


def validation_batches(
    histories: Histories, targets: Interactions, batch_size: int = 1024
) -> Iterator[ValidationBatch]:
    """The users NDCG is measured over, in batches: those with at least one target item outside their
    history (`histories` is indexed by user id). Relevance is binary."""
    target_csr = targets.to_csr(binary=True)
    users = np.flatnonzero(np.diff(target_csr.indptr) > 0)
    users = users[users < len(histories)]
    for start in range(0, len(users), batch_size):
        batch_users = users[start : start + batch_size]
        batch_hist = histories.select(batch_users)
        seen = batch_hist.to_csr(binary=True)
        relevant = target_csr[batch_users]
        relevant = (relevant - relevant.multiply(seen)).tocsr()
        relevant.eliminate_zeros()
        keep = np.flatnonzero(np.diff(relevant.indptr) > 0)
        if len(keep) == 0:
            continue
        relevant = relevant[keep]
        relevant.sort_indices()
        yield ValidationBatch(
            batch_users[keep],
            batch_hist.select(keep),
            seen[keep],
            Targets(relevant.indptr.astype(np.int64), relevant.indices.astype(np.int64)),
        )


def ndcg_at_k(
    score: ScoreFn, histories: Histories, targets: Interactions, k: int = 10, batch_size: int = 1024
) -> float:
    """Mean NDCG@k over users that have at least one target item outside their history.

    `score(histories_batch, user_ids)` returns dense (batch, n_items) scores; `histories` is indexed by
    user id (row u = user u) and its items are excluded from the ranking. Relevance is binary: the user's
    target items not already in their history. Users are scored in batches (no per-user Python loop).
    """
    if k < 1:
        raise ValueError(f"k must be positive (got {k})")
    if len(targets) == 0:
        return 0.0
    total, counted = 0.0, 0
    for batch in validation_batches(histories, targets, batch_size):
        scores = np.asarray(score(batch.histories, batch.users), dtype=np.float32).copy()
        rows = np.repeat(np.arange(len(batch.users)), np.diff(batch.seen.indptr))
        scores[rows, batch.seen.indices] = -np.inf
        top = _top_k_ids(scores, min(k, scores.shape[1]))
        total += float(ranking_metrics(top, batch.targets, [k], metrics=("ndcg",))[f"ndcg@{k}"].sum())
        counted += len(batch.users)
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


@dataclass
class EarlyStopping:
    """Patience on a higher-is-better validation metric; remembers the best value and its epoch.

    `growth` makes patience grow with training: stop only after max(patience, growth x the checks it
    took to reach the best) checks without a gain. A fixed patience suits a short noisy curve badly:
    late in a long run, validation gains come seldom but still come (a plain SASRec on MovieLens went
    on improving from epoch 44 to 90), and a fixed 5 checks stops there."""

    patience: int
    min_delta: float = 0.0
    growth: float = 0.0
    best: float = -np.inf
    best_epoch: int = 0
    _checks: int = field(default=0, repr=False)
    _best_check: int = field(default=0, repr=False)
    _bad_rounds: int = field(default=0, repr=False)

    def update(self, value: float, epoch: int) -> bool:
        """Record `value` at `epoch`; True if it is a new best (the caller then keeps its weights)."""
        self._checks += 1
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self._bad_rounds, self._best_check = value, epoch, 0, self._checks
            return True
        self._bad_rounds += 1
        return False

    @property
    def current_patience(self) -> int:
        return max(self.patience, math.ceil(self.growth * self._best_check))

    @property
    def should_stop(self) -> bool:
        return self._bad_rounds >= self.current_patience
