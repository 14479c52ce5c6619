"""text_knn: content-based recommendation from item text embeddings.

A user is the recency-weighted mean of their history items' embeddings (weight 0.5 ** (age / half_life),
age counted in events, the most recent item has age 0); items are scored by cosine similarity. Works for a
user with a single interaction and for items nobody has interacted with: only their text is needed.
"""

from __future__ import annotations

import numpy as np

from recloop.config.models import EncoderConfig, TextKNNConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender, VectorSpace
from recloop.models.registry import register


def embed_item_texts(encoder_cfg: EncoderConfig, context: FitContext | None, n_items: int) -> np.ndarray:
    """Item embeddings: from the context (train step, cached in the store) or encoded here."""
    if context is not None and context.items.embeddings is not None:
        emb = np.asarray(context.items.embeddings, dtype=np.float32)
    else:
        texts = context.items.texts if context is not None else None
        if texts is None:
            raise ValueError("text models need item texts: configure data.items with a text template")
        if context is not None and context.text_embedder is not None:
            emb = context.text_embedder(encoder_cfg, texts)
        else:
            from recloop.models.text_encoder import TextEncoder

            emb = TextEncoder(encoder_cfg).encode(texts)
    if emb.shape[0] != n_items:
        raise ValueError(f"got {emb.shape[0]} item embeddings for {n_items} items")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.maximum(norms, 1e-12)).astype(np.float32)


def recency_weighted_mean(histories: Histories, vectors: np.ndarray, half_life: float, max_history: int) -> np.ndarray:
    """(n_rows, dim) recency-weighted mean of each row's item vectors, vectorized over all rows."""
    n = len(histories)
    lengths = histories.lengths()
    # Position of each event counted from the end of its row: 0 = most recent.
    row_of = np.repeat(np.arange(n), lengths)
    age = (histories.indptr[row_of + 1] - 1 - np.arange(len(histories.items))).astype(np.float64)
    keep = age < max_history
    w = np.where(keep, 0.5 ** (age / half_life), 0.0).astype(np.float32)
    out = np.zeros((n, vectors.shape[1]), dtype=np.float32)
    np.add.at(out, row_of[keep], vectors[histories.items[keep]] * w[keep, None])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


@register(TextKNNConfig)
class TextKNN(Recommender):
    config: TextKNNConfig
    scores_cold_items = True

    def __init__(self, config: TextKNNConfig):
        super().__init__(config)
        self.item_embeddings = np.zeros((0, 0), np.float32)
        self.log_popularity: np.ndarray = np.zeros(0, np.float32)

    def fit(self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None) -> TextKNN:
        self._remember(train)
        self.item_embeddings = embed_item_texts(self.config.encoder, context, train.n_items)
        counts = np.bincount(train.item, minlength=train.n_items).astype(np.float32)
        lp = np.log1p(counts)
        self.log_popularity = lp / max(float(lp.max()), 1e-12)
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        user_vecs = recency_weighted_mean(
            histories, self.item_embeddings, self.config.half_life, self.config.max_history
        )
        scores: np.ndarray = user_vecs @ self.item_embeddings.T
        b = self.config.popularity_blend
        if b > 0:
            scores = (1 - b) * scores + b * self.log_popularity[None, :]
        # A user with no history gets popularity order rather than all-zero scores.
        empty = histories.lengths() == 0
        if empty.any():
            scores[empty] = self.log_popularity[None, :]
        return scores.astype(np.float32)

    def item_vectors(self) -> np.ndarray:
        return self.item_embeddings

    def vector_space(self) -> VectorSpace:
        """Recency-weighted history embedding . item embedding, with the popularity blend as one extra
        dimension (weight `popularity_blend` on the query side, log-popularity on the item side)."""
        cfg = self.config
        blend = float(cfg.popularity_blend)
        items = np.hstack([self.item_embeddings, self.log_popularity[:, None]])

        def encode(histories: Histories, users: np.ndarray | None) -> np.ndarray:
            content = recency_weighted_mean(histories, self.item_embeddings, cfg.half_life, cfg.max_history)
            out = np.hstack([(1.0 - blend) * content, np.full((len(histories), 1), blend, np.float32)])
            # A history without items is ranked by popularity alone (as score_histories does).
            empty = histories.lengths() == 0
            out[empty] = 0.0
            out[empty, -1] = 1.0
            return out.astype(np.float32)

        return VectorSpace(items, encode)

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_embeddings": self.item_embeddings, "log_popularity": self.log_popularity}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_embeddings = arrays["item_embeddings"]
        self.log_popularity = arrays["log_popularity"]
