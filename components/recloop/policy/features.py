"""Feature vectors for candidates the bandit reranks.

One row per candidate item of one request:

    bias              1
    score             the base model's score, min-max scaled over the request's candidate pool (0..1)
    rank              1 / log2(2 + number of pool items scoring strictly higher)  (1 for the top item)
    popularity        log1p(training interactions of the item) / log1p(max over items)
    activity          log1p(user history length) / log1p(ACTIVITY_CAP), capped at 1
    activity_x_score  activity * score (lets the policy trust the model more for heavy users)
    cat:<name>        1 if the item has category <name> (the most frequent categories only)

Scaling is relative to the candidate pool (`reference_scores`), so an item's features can be computed
the same way at serving time (over the pool being reranked) and when training from logs (over the pool
reconstructed for the logged request), even for a logged item that fell outside that pool.
The per-item tables (popularity, categories) are frozen into the policy when it is built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ACTIVITY_CAP = 500
BASE_FEATURES: tuple[str, ...] = ("bias", "score", "rank", "popularity", "activity", "activity_x_score")


@dataclass
class FeatureSpace:
    """Frozen per-item side information and the layout of feature vectors."""

    item_ids: list[str]
    popularity: np.ndarray  # float32 (n_items,) in [0, 1]
    categories: list[str]
    category_hot: np.ndarray  # float32 (n_items, n_categories) multi-hot

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.item_ids)}

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        interaction_counts: np.ndarray,
        item_categories: Sequence[Sequence[str]] | None,
        max_categories: int,
    ) -> FeatureSpace:
        """From the base model's items: interaction counts (popularity) and categories per item."""
        counts = np.asarray(interaction_counts, np.float64)
        if len(counts) != len(item_ids):
            raise ValueError(f"{len(counts)} interaction counts for {len(item_ids)} items")
        top = float(np.log1p(counts.max())) if len(counts) and counts.max() > 0 else 1.0
        popularity = (np.log1p(counts) / top).astype(np.float32)
        chosen: list[str] = []
        if item_categories is not None and max_categories > 0:
            freq = Counter(c for cats in item_categories for c in cats)
            chosen = [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]]
        hot = np.zeros((len(item_ids), len(chosen)), np.float32)
        if chosen:
            where = {c: j for j, c in enumerate(chosen)}
            for i, cats in enumerate(item_categories or []):
                for c in cats:
                    j = where.get(c)
                    if j is not None:
                        hot[i, j] = 1.0
        return cls([str(i) for i in item_ids], popularity, chosen, hot)

    @property
    def names(self) -> list[str]:
        return [*BASE_FEATURES, *(f"cat:{c}" for c in self.categories)]

    @property
    def dim(self) -> int:
        return len(BASE_FEATURES) + len(self.categories)

    def rows_of(self, items: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each item id in the item tables; -1 for items unknown when the policy was built."""
        return np.array([self.index.get(str(i), -1) for i in items], dtype=np.int64)

    def features(
        self,
        items: Sequence[str] | np.ndarray,
        scores: np.ndarray,
        history_length: int,
        reference_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """(len(items), dim) float64 features; scaling and rank are relative to `reference_scores` (the
        candidate pool), which default to `scores` themselves."""
        s = np.asarray(scores, np.float64)
        ref = s if reference_scores is None else np.asarray(reference_scores, np.float64)
        ref = ref[np.isfinite(ref)]
        n = len(s)
        x = np.zeros((n, self.dim), np.float64)
        if n == 0:
            return x
        lo, hi = (float(ref.min()), float(ref.max())) if len(ref) else (0.0, 0.0)
        scaled = np.ones(n) if hi - lo < 1e-12 else np.clip((s - lo) / (hi - lo), 0.0, 1.0)
        higher = np.searchsorted(np.sort(-ref), -s, side="left")  # pool items scoring strictly higher
        rows = self.rows_of(items)
        known = rows >= 0
        activity = min(1.0, float(np.log1p(max(history_length, 0)) / np.log1p(ACTIVITY_CAP)))
        x[:, 0] = 1.0
        x[:, 1] = scaled
        x[:, 2] = 1.0 / np.log2(2.0 + higher)
        x[known, 3] = self.popularity[rows[known]]
        x[:, 4] = activity
        x[:, 5] = activity * scaled
        if self.categories:
            x[known, len(BASE_FEATURES) :] = self.category_hot[rows[known]]
        return x

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict[str, Any]:
        return {"item_ids": self.item_ids, "categories": self.categories, "names": self.names}

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "features.popularity": np.ascontiguousarray(self.popularity, np.float32),
            "features.category_hot": np.ascontiguousarray(self.category_hot, np.float32),
        }

    @classmethod
    def restore(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureSpace:
        items = [str(i) for i in meta["item_ids"]]
        popularity = np.asarray(arrays["features.popularity"], np.float32)
        hot = np.asarray(arrays["features.category_hot"], np.float32).reshape(len(items), -1)
        categories = [str(c) for c in meta["categories"]]
        if len(popularity) != len(items) or hot.shape[1] != len(categories):
            raise ValueError(
                f"feature tables do not match: {len(items)} items, {len(popularity)} popularity "
                f"values, {hot.shape[1]} category columns for {len(categories)} categories"
            )
        return cls(items, popularity, categories, hot)
