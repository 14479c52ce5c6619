"""Ranking and beyond-accuracy metrics over top-K recommendation arrays. Vectorized numpy.

Inputs everywhere: `recs`, an (n_users, K) integer array of recommended item ids, best first, padded with
-1 when fewer than K items were recommended; and `Targets`, each user's held-out (relevant) item set.

Accuracy metrics at cut-off k, per user (binary relevance):
  hr         1 if any of the top k is relevant
  recall     hits / |rel|
  precision  hits / k                (a list shorter than k is not rewarded: the denominator stays k)
  f1         2·P·R / (P + R), 0 when both are 0
  ndcg       DCG / IDCG with gains 1/log2(rank + 1); IDCG over min(|rel|, k) hits at the top
  mrr        1 / rank of the first hit, 0 without hits
  map        Σ_{hit ranks r} precision@r / min(|rel|, k)

Beyond accuracy: catalog coverage, novelty (−log2 of the share of training users who interacted with an
item), intra-list diversity (1 − mean pairwise cosine of item vectors, or of category Jaccard similarity),
average recommendation popularity (ARP) and the share of head items in the lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recloop.evaluation.names import (  # noqa: F401 (re-exported: metric names live with the metrics)
    ACCURACY_METRICS,
    ALL_METRICS,
    BEYOND_ACCURACY_METRICS,
    BIAS_METRICS,
    GATEABLE_METRICS,
    METRIC_LABELS,
    split_metric,
)

_DENSE_CELLS = 8_000_000  # bound on temporary dense blocks (float64 cells) in batched computations

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


# ---------------------------------------------------------------------------------------------- beyond accuracy


def _valid(recs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = np.asarray(recs, dtype=np.int64)[:, :k]
    return top, top >= 0


def catalog_coverage(recs: np.ndarray, k: int, n_items: int, item_mask: np.ndarray | None = None) -> float:
    """Share of the (eligible) catalog that appears in at least one user's top k."""
    top, valid = _valid(recs, k)
    shown = np.unique(top[valid])
    if item_mask is not None:
        item_mask = np.asarray(item_mask, dtype=bool)
        shown = shown[item_mask[shown]]
        denom = int(item_mask.sum())
    else:
        denom = n_items
    return float(len(shown) / denom) if denom else 0.0


def popularity_share(user_counts: np.ndarray, n_users: int) -> np.ndarray:
    """Share of users who interacted with each item; items nobody touched count as one user's worth."""
    return np.maximum(np.asarray(user_counts, dtype=np.float64), 1.0) / max(n_users, 1)


def _row_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean of each row over its valid cells; NaN for a row without any."""
    n_valid = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    return np.divide(total, n_valid, out=np.full(len(total), np.nan), where=n_valid > 0)


def novelty(recs: np.ndarray, k: int, pop_share: np.ndarray) -> np.ndarray:
    """Per user: mean self-information −log2(pop_share[i]) of the recommended items (NaN for empty lists)."""
    top, valid = _valid(recs, k)
    info = -np.log2(np.asarray(pop_share, dtype=np.float64))
    return _row_mean(info[np.where(valid, top, 0)], valid)


def intra_list_diversity(
    recs: np.ndarray,
    k: int,
    item_vectors: np.ndarray | sp.spmatrix | None = None,
    item_categories: sp.spmatrix | np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Per user: 1 − mean pairwise similarity within the top k (NaN for lists shorter than 2).

    Similarity is the cosine of `item_vectors` (dense or sparse rows) or, without vectors, the Jaccard
    index of `item_categories` (binary items x categories). Two items without any category count as
    dissimilar (their Jaccard index is 0/0, taken as 0).
    """
    if (item_vectors is None) == (item_categories is None):
        raise ValueError("pass exactly one of item_vectors or item_categories")
    top, valid = _valid(recs, k)
    n, width = top.shape
    m = valid.sum(axis=1).astype(np.float64)
    pairs = m * (m - 1)
    if item_vectors is not None:
        # Σ_{i≠j} cos(v_i, v_j) = ||Σ_i u_i||² − m for unit vectors u: one sparse product, no K×K blocks.
        vectors = sp.csr_matrix(item_vectors, dtype=np.float64)
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
        unit = sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ vectors
        zero_norm = norms == 0
        rows = np.repeat(np.arange(n), width)[valid.ravel()]
        picked = sp.csr_matrix((np.ones(len(rows)), (rows, top[valid])), shape=(n, vectors.shape[0]))
        summed = picked @ unit
        sq = np.asarray(summed.multiply(summed).sum(axis=1)).ravel()
        # A zero vector has no direction: it contributes 0 to the sum and its self-similarity is 0, not 1.
        self_sim = m - (np.where(valid, zero_norm[np.where(valid, top, 0)], False)).sum(axis=1)
        pair_sum = sq - self_sim
    else:
        cats = sp.csr_matrix(item_categories, dtype=np.float64)
        cats.data[:] = 1.0
        sizes = np.asarray(cats.sum(axis=1)).ravel()
        n_cats = cats.shape[1]
        # Only the recommended items' rows are made dense, a bounded number of users at a time.
        batch_size = max(1, min(batch_size, _DENSE_CELLS // max(width * width + width * n_cats, 1)))
        pair_sum = np.zeros(n)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            ids = np.where(valid[start:stop], top[start:stop], 0)
            c = cats[ids.ravel()].toarray().reshape(stop - start, width, n_cats)
            c *= valid[start:stop, :, None]  # (b, K, n_cats), invalid slots zeroed
            inter = np.einsum("bkc,bjc->bkj", c, c)
            s = sizes[ids] * valid[start:stop]
            union = s[:, :, None] + s[:, None, :] - inter
            jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            pair_sum[start:stop] = jac.sum(axis=(1, 2)) - np.einsum("bkk->b", jac)
    mean_sim = np.divide(pair_sum, pairs, out=np.full(n, np.nan), where=pairs > 0)
    return 1.0 - mean_sim


def head_items(interaction_counts: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """Bool mask of head items: the most popular items that together hold the first `head_share` of all
    interactions (an item is head if the interactions of the items more popular than it are below that
    share). Ties in popularity are broken by lower item id; items without interactions are never head."""
    counts = np.asarray(interaction_counts, dtype=np.float64)
    mask = np.zeros(len(counts), dtype=bool)
    total = counts.sum()
    if total <= 0:
        return mask
    order = np.lexsort((np.arange(len(counts)), -counts))
    before = np.concatenate([[0.0], np.cumsum(counts[order])[:-1]])
    mask[order] = (before < head_share * total) & (counts[order] > 0)
    return mask


def average_popularity(recs: np.ndarray, k: int, interaction_counts: np.ndarray) -> np.ndarray:
    """Per user: mean training interaction count of the recommended items (ARP; NaN for empty lists)."""
    top, valid = _valid(recs, k)
    counts = np.asarray(interaction_counts, dtype=np.float64)
    return _row_mean(counts[np.where(valid, top, 0)], valid)


def head_share_of_lists(recs: np.ndarray, k: int, head_mask: np.ndarray) -> np.ndarray:
    """Per user: share of recommended items that are head items (NaN for empty lists)."""
    top, valid = _valid(recs, k)
    return _row_mean(np.asarray(head_mask, dtype=np.float64)[np.where(valid, top, 0)], valid)


def popularity_curve(
    recs: np.ndarray, k: int, interaction_counts: np.ndarray, n_points: int = 40
) -> dict[str, list[float]]:
    """Cumulative shares over items sorted from most to least popular in training (a Lorenz curve).

    Returns `item_share` (x in (0, 1], geometrically spaced so the head is resolved), `data_share` (share of
    training interactions held by the most popular x of items) and `rec_share` (share of recommendation
    slots those items took). A model that amplifies popularity has its rec curve above the data curve.
    """
    counts = np.asarray(interaction_counts, dtype=np.float64)
    n_items = len(counts)
    if n_items == 0:
        return {"item_share": [], "data_share": [], "rec_share": []}
    top, valid = _valid(recs, k)
    rec_counts = np.bincount(top[valid], minlength=n_items).astype(np.float64)
    order = np.lexsort((np.arange(n_items), -counts))
    cum_data = np.concatenate([[0.0], np.cumsum(counts[order])]) / max(counts.sum(), 1.0)
    cum_rec = np.concatenate([[0.0], np.cumsum(rec_counts[order])]) / max(rec_counts.sum(), 1.0)
    n_top = np.unique(np.clip(np.round(np.geomspace(1, n_items, n_points)), 1, n_items).astype(np.int64))
    return {
        "item_share": (n_top / n_items).round(6).tolist(),
        "data_share": cum_data[n_top].round(6).tolist(),
        "rec_share": cum_rec[n_top].round(6).tolist(),
    }
