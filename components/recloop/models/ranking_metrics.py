"""Per-user accuracy metrics of top-K recommendation lists. Vectorized numpy.

They live in the models layer because models early-stop on validation NDCG (`recloop.models.early_stopping`);
the evaluate step reports the same functions (`recloop.evaluation`), so model selection and evaluation share
one definition.

Inputs: `recs`, an (n_users, K) integer array of recommended item ids, best first, padded with -1 when fewer
than K items were recommended; and `Targets`, each user's held-out (relevant) item set.

Accuracy metrics at cut-off k, per user (binary relevance):
  hr         1 if any of the top k is relevant
  recall     hits / |rel|
  precision  hits / k                (a list shorter than k is not rewarded: the denominator stays k)
  f1         2·P·R / (P + R), 0 when both are 0
  ndcg       DCG / IDCG with gains 1/log2(rank + 1); IDCG over min(|rel|, k) hits at the top
  mrr        1 / rank of the first hit, 0 without hits
  map        Σ_{hit ranks r} precision@r / min(|rel|, k)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from recloop.config.metrics import ACCURACY_METRICS

# ---------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Targets:
    """Row r's relevant items are items[indptr[r]:indptr[r+1]] (unique within a row)."""

    indptr: np.ndarray  # int64, len n_rows + 1
    items: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row_ids(self) -> np.ndarray:
        """The row of every entry of `items`."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts())

    def row(self, r: int) -> np.ndarray:
        return self.items[self.indptr[r] : self.indptr[r + 1]]

    @classmethod
    def from_lists(cls, rows: Iterable[Sequence[int]]) -> Targets:
        arrays = [np.unique(np.asarray(r, dtype=np.int64)) for r in rows]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate(arrays).astype(np.int64) if arrays and indptr[-1] else np.zeros(0, np.int64)
        return cls(indptr, items)

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> Targets:
        """From (row, item) pairs in any order; duplicates collapse."""
        rows = np.asarray(rows, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if len(rows):
            radix = int(items.max()) + 1
            keys = np.unique(rows * radix + items)
            rows, items = keys // radix, keys % radix
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items)

    def select(self, rows: np.ndarray) -> Targets:
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts()[rows]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        starts = self.indptr[rows]
        # Entry positions: start of each selected row plus its offset within the row.
        offsets = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], counts)
        return Targets(indptr, self.items[np.repeat(starts, counts) + offsets])

    def keep(self, entry_mask: np.ndarray) -> Targets:
        """Keep the entries where `entry_mask` (aligned with `items`) is True; rows may become empty."""
        entry_mask = np.asarray(entry_mask, dtype=bool)
        counts = np.bincount(self.row_ids()[entry_mask], minlength=len(self))
        return Targets(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.items[entry_mask])

    def restrict_items(self, item_mask: np.ndarray) -> Targets:
        """Keep only items whose `item_mask[item]` is True; rows may become empty."""
        return self.keep(np.asarray(item_mask, dtype=bool)[self.items])


# ---------------------------------------------------------------------------------------------- accuracy


def hit_matrix(recs: np.ndarray, targets: Targets) -> np.ndarray:
    """(n, K) bool: recs[u, j] is one of user u's targets. -1 padding never hits."""
    recs = np.asarray(recs, dtype=np.int64)
    if recs.ndim != 2 or recs.shape[0] != len(targets):
        raise ValueError(f"recs must be (n_users={len(targets)}, K); got shape {recs.shape}")
    n, k = recs.shape
    if n == 0 or k == 0:
        return np.zeros((n, k), dtype=bool)
    # Encode (user, item) as one int64 key; membership of rec keys among target keys is the hit test.
    radix = int(max(recs.max(), targets.items.max() if len(targets.items) else 0)) + 1
    target_keys = targets.row_ids() * radix + targets.items
    rec_keys = np.arange(n, dtype=np.int64)[:, None] * radix + recs
    return np.isin(rec_keys, target_keys) & (recs >= 0)


def _pad_columns(hits: np.ndarray, k: int) -> np.ndarray:
    if hits.shape[1] >= k:
        return hits[:, :k]
    return np.pad(hits, ((0, 0), (0, k - hits.shape[1])))


def ranking_metrics(
    recs: np.ndarray, targets: Targets, ks: Sequence[int], metrics: Sequence[str] = ACCURACY_METRICS
) -> dict[str, np.ndarray]:
    """Per-user accuracy metrics: {'ndcg@10': float64 array (n_users,), ...} for every k and metric."""
    n_rel = targets.counts().astype(np.float64)
    if np.any(n_rel == 0):
        raise ValueError("every user needs at least one target item; drop users without targets first")
    unknown = set(metrics) - set(ACCURACY_METRICS)
    if unknown:
        raise ValueError(f"unknown accuracy metrics {sorted(unknown)}; known: {', '.join(ACCURACY_METRICS)}")
    hits_all = hit_matrix(recs, targets).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hits = _pad_columns(hits_all, k)
        n_hit = hits.sum(axis=1)
        recall = n_hit / n_rel
        precision = n_hit / k
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        values: dict[str, np.ndarray] = {
            "hr": (n_hit > 0).astype(np.float64),
            "recall": recall,
            "precision": precision,
        }
        if "f1" in metrics:
            denom = precision + recall
            values["f1"] = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        if "ndcg" in metrics:
            ideal = np.cumsum(discounts)[np.minimum(n_rel, k).astype(np.int64) - 1]
            values["ndcg"] = (hits @ discounts) / ideal
        if "mrr" in metrics:
            first = np.argmax(hits, axis=1)
            values["mrr"] = np.where(n_hit > 0, 1.0 / (first + 1), 0.0)
        if "map" in metrics:
            precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
            values["map"] = (precision_at * hits).sum(axis=1) / np.minimum(n_rel, k)
        for name in metrics:
            out[f"{name}@{k}"] = values[name]
    return out
