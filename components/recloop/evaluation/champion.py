"""Scoring a model whose ids come from another preprocess run (the production champion) on this split.

A model's user and item indices are positions in the id maps of the data it was trained on. The champion
was usually trained on older data, so its indices differ from the current split's. `RemappedScorer`
translates through the raw ids: histories go into the champion's item space (items it never saw are
dropped from the history), users it knows are passed by their champion index and the others as
history-only users, and its scores come back into the current item space; items the champion does not
know get no score (-inf) and therefore are never recommended by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recloop.artifacts.kinds import RegisteredModel
from recloop.data.interactions import Histories
from recloop.errors import ArtifactError

if TYPE_CHECKING:
    from recloop.models.base import Recommender


def read_id_maps(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(user ids by index, item ids by index) from a version's downloaded id maps folder."""
    import pandas as pd

    folder = Path(folder)
    out = []
    for name, idx_col, id_col in (
        (RegisteredModel.USER_MAP, "user_idx", "user_id"),
        (RegisteredModel.ITEM_MAP, "item_idx", "item_id"),
    ):
        path = folder / name
        try:
            df = pd.read_parquet(path, columns=[idx_col, id_col])
        except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"cannot read the id map {path} ({exc}); re-publish the model version") from None
        ids = np.empty(len(df), dtype=object)
        idx = df[idx_col].to_numpy(np.int64)
        if len(idx) and not np.array_equal(np.sort(idx), np.arange(len(idx))):
            raise ArtifactError(f"{path}: {idx_col} is not contiguous 0..{len(idx) - 1}; re-publish the version")
        ids[idx] = df[id_col].astype(str).to_numpy()
        out.append(ids)
    return out[0], out[1]


def translate(source_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """For each source id, its index among `target_ids` or -1 (vectorized through pandas' hash index)."""
    import pandas as pd

    index = pd.Index(np.asarray(target_ids, dtype=object))
    return index.get_indexer(np.asarray(source_ids, dtype=object)).astype(np.int64)


@dataclass
class RemappedScorer:
    """A `ScoreFn` over the current split's ids for a model trained with other id maps."""

    model: Recommender
    user_map: np.ndarray  # current user_idx -> model user idx or -1
    item_map: np.ndarray  # current item_idx -> model item idx or -1

    @classmethod
    def build(
        cls,
        model: Recommender,
        model_user_ids: np.ndarray,
        model_item_ids: np.ndarray,
        current_user_ids: np.ndarray,
        current_item_ids: np.ndarray,
    ) -> RemappedScorer:
        if len(model_item_ids) != model.n_items:
            raise ArtifactError(
                f"the champion's item id map has {len(model_item_ids)} items but its bundle "
                f"scores {model.n_items}; the version is inconsistent: re-publish or roll back"
            )
        user_map = translate(current_user_ids, model_user_ids)
        user_map[user_map >= model.n_users] = -1
        return cls(model, user_map, translate(current_item_ids, model_item_ids))

    @property
    def known_items(self) -> int:
        return int((self.item_map >= 0).sum())

    @property
    def known_users(self) -> int:
        return int((self.user_map >= 0).sum())

    def _histories(self, histories: Histories) -> Histories:
        mapped = self.item_map[histories.items]
        keep = mapped >= 0
        rows = np.repeat(np.arange(len(histories)), histories.lengths())
        counts = np.bincount(rows[keep], minlength=len(histories))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Histories(
            indptr,
            mapped[keep].astype(np.int32),
            histories.weights[keep],
            histories.timestamps[keep],
            self.model.n_items,
        )

    def __call__(self, histories: Histories, users: np.ndarray) -> np.ndarray:
        hist = self._histories(histories)
        model_users = self.user_map[np.asarray(users, dtype=np.int64)]
        scores = np.full((len(histories), self.model.n_items), -np.inf, dtype=np.float32)
        known = model_users >= 0
        # Known users may use what the model learned about them; others are scored from their history.
        for rows, ids in ((np.flatnonzero(known), model_users[known]), (np.flatnonzero(~known), None)):
            if len(rows):
                scores[rows] = self.model.score_histories(hist.select(rows), ids)
        out = np.full((len(histories), len(self.item_map)), -np.inf, dtype=np.float32)
        have = self.item_map >= 0
        out[:, have] = scores[:, self.item_map[have]]
        return out
