"""EASE (Steck, 2019): a shallow item-item linear autoencoder with a closed-form solution.

    P = (X^T X + lambda I)^-1,   B = I - P / diag(P)   (column-wise),   diag(B) = 0,   scores = X B.

The Gram matrix is inverted densely (Cholesky, float64 for accuracy) so memory grows with n_items^2:
about 20 bytes per item pair at peak. That suits catalogs up to roughly 20k items; beyond `max_items`
fit() refuses with an explanation instead of exhausting memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recloop.config.models import EaseConfig
from recloop.data.interactions import Histories, Interactions
from recloop.errors import ConfigError
from recloop.models.base import FitContext, Recommendations, Recommender, top_k
from recloop.models.registry import register

# Peak: the sparse float64 Gram (up to 12 B/pair) while its dense copy (8) exists; the inverse is computed
# in place and B (4) is made after the sparse Gram is gone.
_PEAK_BYTES_PER_PAIR = 20


@register(EaseConfig)
class Ease(Recommender):
    config: EaseConfig

    def __init__(self, config: EaseConfig):
        super().__init__(config)
        self.weights = np.zeros((0, 0), np.float32)  # B, (n_items, n_items)

    def fit(self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None) -> Ease:
        from scipy.linalg import lapack

        cfg = self.config
        n = train.n_items
        if n > cfg.max_items:
            need_gb = _PEAK_BYTES_PER_PAIR * n * n / 1e9
            raise ConfigError(
                f"model {cfg.candidate_name!r} (type ease)",
                [
                    f"max_items: the catalog has {n} items, more than max_items={cfg.max_items}; dense EASE would "
                    f"need about {need_gb:.1f} GB. Raise max_items if the machine has that memory, shrink the "
                    "catalog with preprocess.min_item_interactions, or use itemknn / mf for large catalogs"
                ],
            )
        self._remember(train)
        x = train.to_csr(binary=not cfg.use_weights).astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n)] += cfg.l2
        if context is not None and context.progress is not None:
            context.progress("gram", 0.2, {})
        # Cholesky then inverse from the factor: half the work of a general inverse, and in place.
        # gram is symmetric, so its transpose is the same matrix in Fortran order: LAPACK works in place.
        chol, info = lapack.dpotrf(gram.T, lower=True, overwrite_a=True, clean=False)
        del gram
        if info != 0:
            raise ArithmeticError(f"EASE: X^T X + lambda I is not positive definite (LAPACK info {info}); raise lambda")
        inv, info = lapack.dpotri(chol, lower=True, overwrite_c=True)
        if info != 0:
            raise ArithmeticError(f"EASE: inverting the Cholesky factor failed (LAPACK info {info}); raise lambda")
        _mirror_lower(inv)  # potri fills the lower triangle only
        diag = np.diag(inv).copy()
        inv /= -diag[None, :]
        inv[np.diag_indices(n)] = 0.0
        self.weights = np.ascontiguousarray(inv, dtype=np.float32)
        if context is not None:
            context.log(f"solved {n} x {n} closed form with lambda={cfg.l2:g}")
            if context.progress is not None:
                context.progress("solve", 1.0, {})
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        x = histories.to_csr(binary=not self.config.use_weights)
        return np.asarray(x @ self.weights, dtype=np.float32)

    def item_vectors(self) -> np.ndarray:
        # Row i of B: how item i votes for every other item; items voting alike are alike.
        return self.weights

    def item_weights(self) -> np.ndarray:
        # The score is X @ B: B[h, i] is exactly history item h's contribution to item i.
        return self.weights

    def similar_items(self, items: Sequence[int] | np.ndarray, k: int = 10) -> Recommendations:
        """Items that the model scores highest for a history of just this one item."""
        self._check_fitted()
        items = np.asarray(items, dtype=np.int64)
        sims = self.weights[items].astype(np.float32, copy=True)
        sims[np.arange(len(items)), items] = -np.inf
        ids, scores = top_k(sims, min(k, max(self.n_items - 1, 0)))
        return Recommendations(ids, scores)

    def _state(self) -> dict[str, np.ndarray]:
        return {"B": self.weights}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights = arrays["B"].astype(np.float32, copy=False)


def _mirror_lower(a: np.ndarray, block: int = 1024) -> None:
    """Copy the lower triangle of square `a` onto its upper triangle, in place, block by block
    (no n x n temporaries)."""
    n = a.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        diag = a[start:stop, start:stop]
        a[start:stop, start:stop] = np.tril(diag) + np.tril(diag, -1).T
        a[start:stop, stop:] = a[stop:, start:stop].T
