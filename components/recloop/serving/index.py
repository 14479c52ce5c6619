"""Approximate top-k for large catalogs: an HNSW index (hnswlib) over a model's item vectors.

A model qualifies when its scores are inner products `query(history) . item_vector[item]`: it says so by
returning a `VectorSpace` from `model.vector_space()` (today mf, text_knn, sasrec and text_sasrec); the
index needs nothing else from it. Maximum inner product search is reduced to nearest-neighbour search
under L2 by the usual augmentation (Bachrach et al., 2014): items get one extra coordinate
sqrt(M^2 - |v|^2) so all have norm M, queries get 0.

`build_ann_index(model, bundle_dir)` writes `ann/index.hnsw` and `ann/ann.json` into a saved bundle (the
publish step calls it); `ann.json` records the recall@10 of what serving returns (`ann_top`: candidates
from the index, seen items filtered, exact re-scoring) against exact search, over sampled training users,
after raising `ef_search` until `target_recall` holds. With `build_threads: 1` the files
are byte-identical for the same model, so re-publishing stays idempotent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.config import ServingAnnConfig
from recloop.errors import ArtifactError

if TYPE_CHECKING:
    from recloop.models.base import Recommender, VectorSpace

ANN_DIR = "ann"
INDEX_FILE = "index.hnsw"
META_FILE = "ann.json"
RECALL_K = 10
_SEED = 100


# ---------------------------------------------------------------------------------------------- the index


def _augment_items(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    norms_sq = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    max_sq = float(norms_sq.max()) if len(norms_sq) else 0.0
    extra = np.sqrt(np.maximum(max_sq - norms_sq, 0.0))
    return np.hstack([vectors, extra[:, None]]).astype(np.float32), max_sq


def _augment_queries(queries: np.ndarray) -> np.ndarray:
    return np.hstack([queries, np.zeros((len(queries), 1), np.float32)]).astype(np.float32)


class AnnIndex:
    """A loaded HNSW index answering maximum-inner-product queries over item vectors."""

    def __init__(self, index: Any, meta: dict[str, Any]):
        self._index = index
        self.meta = meta

    @property
    def n_items(self) -> int:
        return int(self.meta["n_items"])

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """(len(queries), n) item ids, approximately by decreasing inner product. RuntimeError if the
        graph cannot return n results (then search exactly)."""
        n = min(n, self.n_items)
        labels, _ = self._index.knn_query(_augment_queries(np.asarray(queries, np.float32)), k=n, num_threads=1)
        return labels.astype(np.int64)

    @classmethod
    def load(cls, bundle_dir: Path) -> AnnIndex | None:
        """The index saved in a bundle, or None when the bundle has none."""
        import hnswlib

        folder = Path(bundle_dir) / ANN_DIR
        if not (folder / META_FILE).is_file():
            return None
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{folder / META_FILE} is corrupt ({exc}); re-publish the model") from None
        if not meta.get("built"):
            return None
        index = hnswlib.Index(space="l2", dim=int(meta["dim"]) + 1)
        try:
            index.load_index(str(folder / INDEX_FILE), max_elements=int(meta["n_items"]))
        except RuntimeError as exc:
            raise ArtifactError(f"{folder / INDEX_FILE} cannot be read ({exc}); re-publish the model") from None
        index.set_ef(int(meta["ef_search"]))
        return cls(index, meta)


# ANN retrieval asks for this many times the items it needs plus those filters may remove, and four
# times more per further round, before giving up (the caller then searches exactly).
_OVERFETCH = 2
_ROUNDS = 3


def ann_top(
    index: AnnIndex, item_vectors: np.ndarray, query: np.ndarray, allowed: np.ndarray, want: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The `want` allowed items with the largest exact inner product among the index's candidates for one
    query, best first; None when even the last round finds too few allowed items."""
    n_items = index.n_items
    blocked = n_items - int(allowed.sum())
    fetch = (want + min(blocked, want * 8)) * _OVERFETCH
    for _ in range(_ROUNDS):
        fetch = min(fetch, n_items)
        try:
            labels = index.search(query[None, :], fetch)[0]
        except RuntimeError:  # the graph could not return that many: search exactly
            return None
        labels = labels[allowed[labels]]
        if len(labels) >= want or fetch >= n_items:
            from recloop.models.base import top_k

            scores = (item_vectors[labels] @ query).astype(np.float32)
            ids, top = top_k(scores[None, :], min(want, len(labels)))
            return labels[ids[0]], top[0]
        fetch *= 4
    return None


def exact_top(queries: np.ndarray, items: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """(n, k) ids of the largest inner products, best first (ties: lower id)."""
    from recloop.models.base import top_k

    out = []
    for start in range(0, len(queries), block):
        ids, _ = top_k((queries[start : start + block] @ items.T).astype(np.float32), k)
        out.append(ids)
    return np.vstack(out) if out else np.zeros((0, k), np.int64)


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-k row found in the approximate row."""
    if len(exact) == 0:
        return 1.0
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(len(e), 1) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def sample_queries(model: Recommender, space: VectorSpace, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(users, query vectors) of up to `n` training users with history, drawn reproducibly."""
    histories = model.train_histories
    assert histories is not None
    candidates = np.flatnonzero(histories.lengths() > 0)
    if len(candidates) == 0:
        return candidates, np.zeros((0, space.item_vectors.shape[1]), np.float32)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
    return users, space.encode(histories.select(users), users)


def _exact_unseen(queries: np.ndarray, items: np.ndarray, seen: list[np.ndarray], k: int) -> np.ndarray:
    from recloop.models.base import top_k

    out = np.full((len(queries), k), -1, np.int64)
    for row, (q, s) in enumerate(zip(queries, seen)):
        scores = (items @ q).astype(np.float32)
        scores[s] = -np.inf
        ids, top = top_k(scores[None, :], k)
        out[row] = np.where(np.isfinite(top[0]), ids[0], -1)
    return out


def _served_recall(
    index: AnnIndex, items: np.ndarray, queries: np.ndarray, seen: list[np.ndarray], exact: np.ndarray, k: int
) -> float:
    """recall@k of what serving returns (seen items excluded, `ann_top`'s candidates) against exact search."""
    allowed = np.ones(len(items), dtype=bool)
    hits = []
    for q, s, truth in zip(queries, seen, exact):
        allowed[s] = False
        found = ann_top(index, items, q, allowed, k)
        allowed[s] = True
        if found is None:  # serving searches exactly then: the exact answer
            hits.append(1.0)
            continue
        truth = truth[truth >= 0]
        hits.append(len(set(found[0].tolist()) & set(truth.tolist())) / max(len(truth), 1))
    return float(np.mean(hits)) if hits else 1.0


def build_ann_index(
    model: Recommender, bundle_dir: str | Path, settings: ServingAnnConfig | None = None, force: bool = False
) -> dict[str, Any]:
    """Build the HNSW index of `model` into `bundle_dir/ann/` when the catalog needs one; returns what
    was recorded in `ann.json` (`built: false` with a `reason` when no index was written).

    `force` builds below `settings.min_items` (benchmarks, tests). Timings are returned but not written,
    so the files depend on the model alone.
    """
    settings = settings or ServingAnnConfig()
    folder = Path(bundle_dir) / ANN_DIR
    if not settings.enabled:
        return {"built": False, "reason": "serving.ann.enabled is false"}
    space = model.vector_space()
    if space is None:
        return {
            "built": False,
            "reason": f"{model.type_name} scores are not inner products of item vectors; it is always searched exactly",
        }
    n_items, dim = space.item_vectors.shape
    if n_items < settings.min_items and not force:
        return {
            "built": False,
            "reason": f"{n_items} items is below serving.ann.min_items ({settings.min_items}); exact search is used",
        }
    try:
        import hnswlib
    except ImportError:
        return {
            "built": False,
            "reason": "hnswlib is not installed (pip install 'recloop[serve]'); "
            "`recloop serve` builds the index when it loads the model",
        }
    started = time.perf_counter()
    augmented, max_sq = _augment_items(space.item_vectors)
    index = hnswlib.Index(space="l2", dim=dim + 1)
    index.init_index(max_elements=n_items, ef_construction=settings.ef_construction, M=settings.m, random_seed=_SEED)
    index.add_items(augmented, np.arange(n_items), num_threads=settings.build_threads)
    build_seconds = time.perf_counter() - started

    users, queries = sample_queries(model, space, settings.recall_queries)
    k = min(RECALL_K, n_items)
    loaded = AnnIndex(index, {"n_items": n_items})
    seen = [np.unique(model.fitted_histories().row(u)) for u in users]
    exact = _exact_unseen(queries, space.item_vectors, seen, k)
    ef = max(settings.ef_search, k)
    recall = 1.0  # nothing to measure without training users; every stored field stays well-defined
    while len(queries):
        index.set_ef(ef)
        recall = _served_recall(loaded, space.item_vectors, queries, seen, exact, k)
        if recall >= settings.target_recall or ef >= settings.max_ef_search:
            break
        ef = min(ef * 2, settings.max_ef_search)

    meta = {
        "built": True,
        "method": "hnsw",
        "library": "hnswlib",
        "metric": "inner product (MIPS as L2 over norm-augmented vectors)",
        "model_type": model.type_name,
        "n_items": int(n_items),
        "dim": int(dim),
        "max_norm_sq": max_sq,
        "m": settings.m,
        "ef_construction": settings.ef_construction,
        "ef_search": int(ef),
        f"recall@{RECALL_K}": round(recall, 6),
        "recall_protocol": "sampled training users' top-10 as served (their training items excluded, the "
        "serving candidate procedure) against exact search",
        "recall_queries": int(len(queries)),
        "target_recall": settings.target_recall,
        "target_met": bool(recall >= settings.target_recall),
    }
    folder.mkdir(parents=True, exist_ok=True)
    index.save_index(str(folder / INDEX_FILE))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return {**meta, "build_seconds": round(build_seconds, 3), "total_seconds": round(time.perf_counter() - started, 3)}
