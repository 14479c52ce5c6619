"""Most-popular baseline: every user gets the same ranking (minus what they have seen).

All-time counts by default; `window: 30d` counts only events in the last 30 days of the training data
and `half_life: 7d` discounts each event by 0.5 ** (age / half_life). Ages are measured from the latest
training event, not from the wall clock, so the same data always gives the same model.
"""

from __future__ import annotations

import numpy as np

from recloop.config.models import PopularityConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender
from recloop.models.registry import register


@register(PopularityConfig)
class Popularity(Recommender):
    config: PopularityConfig

    def __init__(self, config: PopularityConfig):
        super().__init__(config)
        self.item_scores = np.zeros(0, np.float32)

    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> Popularity:
        self._remember(train)
        cfg = self.config
        weight = train.weight.astype(np.float64) if cfg.use_weights else np.ones(len(train), np.float64)
        if len(train):
            age = (train.timestamp.max() - train.timestamp).astype(np.float64)
            if cfg.window is not None:
                weight = np.where(age <= cfg.window.total_seconds(), weight, 0.0)
            if cfg.half_life is not None:
                weight = weight * np.exp2(-age / cfg.half_life.total_seconds())
        self.item_scores = np.bincount(train.item, weights=weight, minlength=train.n_items).astype(np.float32)
        if context is not None:
            counted = int(np.count_nonzero(weight))
            context.log(f"{counted} of {len(train)} events counted over {train.n_items} items")
            if context.progress is not None:
                context.progress("fit", 1.0, {})
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        # A real (writable) array, not a broadcast view: callers may mask seen items in place.
        return np.repeat(self.item_scores[None, :], len(histories), axis=0)

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_scores": self.item_scores}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_scores = arrays["item_scores"].astype(np.float32)
