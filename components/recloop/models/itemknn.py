"""Item-based k-nearest-neighbours: score(u, j) = sum over items i in u's history of sim(i, j).

sim(i, j) = x_i . x_j / (|x_i| |x_j| + shrinkage) is the shrunk cosine between item columns of the
user x item matrix; each item keeps only its `neighbours` most similar items (a sparse matrix). Optional
IDF or BM25 weighting of the matrix down-weights heavy users before similarities are computed.

Similarities are computed in blocks of item columns so memory stays O(n_items * block) whatever the
catalog size; the stored model is the sparse top-k neighbour matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recloop.config.models import ItemKNNConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommendations, Recommender, top_k
from recloop.models.registry import register


@register(ItemKNNConfig)
class ItemKNN(Recommender):
    config: ItemKNNConfig

    def __init__(self, config: ItemKNNConfig):
        super().__init__(config)
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)

    # ------------------------------------------------------------------ training
    def fit(self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None) -> ItemKNN:
        self._remember(train)
        cfg = self.config
        matrix = train.to_csr(binary=not cfg.use_weights)
        matrix = _weight(matrix, cfg)
        item_major = matrix.T.tocsr()  # items x users
        norms = np.sqrt(np.asarray(item_major.multiply(item_major).sum(axis=1)).ravel()).astype(np.float32)
        n = train.n_items
        k = min(cfg.neighbours, max(n - 1, 0))
        rows, cols, vals = [], [], []
        n_blocks = max(1, -(-n // cfg.block_size))
        for b, start in enumerate(range(0, n, cfg.block_size)):
            stop = min(start + cfg.block_size, n)
            # (block items) x (all items) dot products; dense so top-k selection is a vector op.
            dots = (item_major[start:stop] @ matrix).toarray()
            sims = dots / (norms[start:stop, None] * norms[None, :] + np.float32(cfg.shrinkage + 1e-12))
            sims[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
            if k > 0:
                nb_ids, nb_sims = top_k(sims, k)
                keep = nb_sims > 0
                rows.append(np.repeat(np.arange(start, stop), k)[keep.ravel()])
                cols.append(nb_ids.ravel()[keep.ravel()])
                vals.append(nb_sims.ravel()[keep.ravel()])
            if context is not None and context.progress is not None:
                context.progress("similarity", (b + 1) / n_blocks, {})
        if rows:
            self.similarity = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32
            )
        else:
            self.similarity = sp.csr_matrix((n, n), dtype=np.float32)
        self.similarity.sort_indices()
        if context is not None:
            context.log(
                f"{self.similarity.nnz} neighbour links over {n} items (<= {k} each, weighting={cfg.weighting})"
            )
        return self

    # ------------------------------------------------------------------ inference
    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        hist = histories.to_csr(binary=not self.config.use_weights)
        return (hist @ self.similarity).toarray().astype(np.float32, copy=False)

    def item_weights(self) -> sp.csr_matrix:
        # The score is X @ S over the kept neighbour links: S[h, i] is history item h's contribution to i.
        return self.similarity

    def similar_items(self, items: Sequence[int] | np.ndarray, k: int = 10) -> Recommendations:
        """The learned neighbours themselves (by similarity), not a cosine over some other vectors."""
        self._check_fitted()
        items = np.asarray(items, dtype=np.int64)
        sims = self.similarity[items].toarray()
        sims[sims <= 0] = -np.inf
        sims[np.arange(len(items)), items] = -np.inf
        ids, scores = top_k(sims, min(k, max(self.n_items - 1, 0)))
        ids[~np.isfinite(scores)] = -1
        return Recommendations(ids, scores)

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        s = self.similarity
        return {
            "sim_indptr": s.indptr.astype(np.int64),
            "sim_indices": s.indices.astype(np.int32),
            "sim_data": s.data.astype(np.float32),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity = sp.csr_matrix(
            (arrays["sim_data"], arrays["sim_indices"], arrays["sim_indptr"]),
            shape=(self.n_items, self.n_items),
            dtype=np.float32,
        )


def _weight(matrix: sp.csr_matrix, cfg: ItemKNNConfig) -> sp.csr_matrix:
    """IDF / BM25 over users (users x items matrix): a user who interacted with many items says less
    about each pair of them. BM25 also saturates repeated weights and normalises by the item's length."""
    if cfg.weighting == "none":
        return matrix
    n_users, n_items = matrix.shape
    matrix = matrix.tocsr(copy=True)
    user_len = np.diff(matrix.indptr).astype(np.float64)
    # IDF of a user: log(n_items / (1 + items they touched)), floored at 0 for users who touched all.
    idf = np.maximum(np.log(n_items) - np.log1p(user_len), 0.0)
    rows = np.repeat(np.arange(n_users), np.diff(matrix.indptr))
    if cfg.weighting == "idf":
        matrix.data = (matrix.data * idf[rows]).astype(np.float32)
        return matrix
    item_len = np.bincount(matrix.indices, minlength=n_items).astype(np.float64)
    avg_len = item_len.mean() if n_items else 1.0
    length_norm = (1.0 - cfg.bm25_b) + cfg.bm25_b * item_len[matrix.indices] / max(avg_len, 1e-12)
    tf = matrix.data * (cfg.bm25_k1 + 1.0) / (cfg.bm25_k1 * length_norm + matrix.data)
    matrix.data = (tf * idf[rows]).astype(np.float32)
    return matrix
