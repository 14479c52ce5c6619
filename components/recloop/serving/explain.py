"""Why an item was recommended: the history items that contributed most, and the text attributes
(categories, words) it shares with the history.

How much history item h contributed to item i depends on what the model can say (its capabilities, see
`recloop.models.base`):
- `item_weights` (a model whose `item_weights()` is not None: ease, itemknn): the score is a sum over
  history items of a learned item-item weight, so that weight IS h's contribution;
- `item_vectors` (a model with a vector space or `item_vectors()`: mf, text_knn, sasrec, ...): cosine
  similarity of the two items' vectors;
- `co_occurrence` (any other model): cosine similarity of the two items' training audiences.
The same similarities drive MMR diversification (`similarity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recloop.serving.catalog import Catalog

if TYPE_CHECKING:
    import scipy.sparse as sp

    from recloop.models.base import Recommender

# Explanations look at the most recent history items only: bounded cost for heavy users.
EXPLAIN_HISTORY = 200
_MAX_VECTOR_DIM = 1024


@dataclass
class Explanation:
    method: str
    because: list[tuple[int, float]] = field(default_factory=list)  # (history item id, contribution)
    shared_categories: list[str] = field(default_factory=list)
    shared_terms: list[str] = field(default_factory=list)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class Explainer:
    def __init__(self, model: Recommender, catalog: Catalog, vectors: np.ndarray | None, n: int):
        self.catalog = catalog
        self.n = n
        self.unit: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.sparse_weights: sp.csr_matrix | None = None
        self.audience: sp.csr_matrix | None = None
        weights = model.item_weights()
        if weights is not None:
            self.method = "item_weights"
            if isinstance(weights, np.ndarray):
                self.weights = weights
            else:
                self.sparse_weights = weights.tocsr()
        if vectors is None:
            try:
                vectors = model.item_vectors()
            except Exception:  # noqa: BLE001 - a model without usable vectors falls back to co-occurrence
                vectors = None
        if vectors is not None and vectors.ndim == 2 and vectors.shape[1] <= _MAX_VECTOR_DIM:
            self.unit = _unit_rows(vectors)
        if self.weights is None and self.sparse_weights is None:
            self.method = "item_vectors" if self.unit is not None else "co_occurrence"
        if self.unit is None:
            self.audience = _audiences(model)

    # ------------------------------------------------------------------ similarities
    def similar_to(self, item: int) -> np.ndarray:
        """(n_items,) similarity of every item to `item` (for models without their own similar_items)."""
        if self.unit is not None:
            return np.asarray(self.unit @ self.unit[item], np.float32)
        assert self.audience is not None
        return np.asarray((self.audience @ self.audience[item].T).toarray(), np.float32).ravel()

    def similarity(self, items: np.ndarray) -> np.ndarray:
        """(P, P) similarities between items (for MMR)."""
        if self.unit is not None:
            u = self.unit[items]
            return np.asarray(u @ u.T, np.float64)
        assert self.audience is not None
        a = self.audience[items]
        return np.asarray((a @ a.T).toarray(), np.float64)

    def _contributions(self, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(len(history), len(items)) contribution of each history item to each recommended item."""
        if self.weights is not None:
            return np.asarray(self.weights[np.ix_(history, items)], np.float64)
        if self.sparse_weights is not None:
            return np.asarray(self.sparse_weights[history][:, items].toarray(), np.float64)
        if self.unit is not None:
            return np.asarray(self.unit[history] @ self.unit[items].T, np.float64)
        assert self.audience is not None
        return np.asarray((self.audience[history] @ self.audience[items].T).toarray(), np.float64)

    # ------------------------------------------------------------------ explanations
    def explain(self, history: np.ndarray, items: np.ndarray, method: str | None = None) -> list[Explanation]:
        """One explanation per item. `method` overrides the label (fallback slates: the history did not
        drive the ranking, so no contributions are claimed, only shared attributes)."""
        recent = _recent_distinct(history, EXPLAIN_HISTORY)
        out = [Explanation(method or self.method) for _ in items]
        if len(items) == 0 or len(recent) == 0 or self.n == 0:
            return out
        if method is None:
            contrib = self._contributions(recent, np.asarray(items, np.int64))
            for col, expl in enumerate(out):
                order = np.argsort(-contrib[:, col], kind="stable")[: self.n]
                expl.because = [
                    (int(recent[r]), round(float(contrib[r, col]), 6))
                    for r in order
                    if contrib[r, col] > 0 and recent[r] != items[col]
                ]
        catalog = self.catalog
        if catalog.category_names:
            history_cats = catalog.category_counts(recent)
            for item, expl in zip(items, out):
                mine = catalog.category_ids_of(int(item)).tolist()
                shared = sorted((c for c in mine if history_cats[c]), key=lambda c: (-history_cats[c], c))
                expl.shared_categories = [catalog.category_names[c] for c in shared[: self.n]]
        if catalog.text_index is not None:
            profile = catalog.text_index.profile(recent)
            for item, expl in zip(items, out):
                expl.shared_terms = catalog.text_index.shared_terms(int(item), profile, self.n)
        return out


def _recent_distinct(history: np.ndarray, n: int) -> np.ndarray:
    """The last n distinct items of a history, most recent first."""
    seen: dict[int, None] = {}
    for item in history[::-1].tolist():
        if item not in seen:
            seen[item] = None
            if len(seen) >= n:
                break
    return np.fromiter(seen, dtype=np.int64, count=len(seen))


def _audiences(model: Recommender) -> sp.csr_matrix:
    """(n_items, n_users) L2-normalized binary rows: who interacted with each item in training."""
    import scipy.sparse as sp

    histories = model.train_histories
    assert histories is not None
    by_item = histories.to_csr(binary=True).T.tocsr()
    norms = np.sqrt(np.asarray(by_item.sum(axis=1)).ravel())
    return (sp.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ by_item).tocsr()
