"""Beyond-accuracy metrics over top-K recommendation arrays. Vectorized numpy.

Inputs everywhere: `recs`, an (n_users, K) integer array of recommended item ids, best first, padded with
-1 when fewer than K items were recommended. The per-user accuracy metrics (hr, recall, precision, f1, ndcg,
mrr, map) and `Targets` are in `recloop.models.ranking_metrics`: models early-stop on validation NDCG, so that
definition sits in the models layer, below evaluation.

Here: catalog coverage, novelty (−log2 of the share of training users who interacted with an item),
intra-list diversity (1 − mean pairwise cosine of item vectors, or of category Jaccard similarity),
average recommendation popularity (ARP) and the share of head items in the lists.
"""

from __future__ import annotations

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
