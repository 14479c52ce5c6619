"""The one small base class every model implements, and its saved-bundle format.

A subclass implements `fit` and `score_histories` (dense scores for a batch of histories) and the pair
`_state()` / `_set_state()` (named numpy arrays). The base class provides batched `recommend` with
seen-item exclusion and candidate restriction, `similar_items` over `item_vectors()`, and `save`/`load`:
a folder with `model.json` (type, config, recloop version, id-map reference) and `arrays.safetensors`.
No pickle: a bundle loads without the pipeline config.

Capabilities: what a model can say about its scores beyond the scores themselves. Serving asks for them
instead of switching on model types; each returns None where the model does not have it.
- `vector_space()`: scores are inner products of a history vector and item vectors (the ANN index);
- `item_weights()`: scores are sums of item-to-item weights over the history (explanations);
- `item_vectors()`: vectors whose cosine says which items are alike (`similar_items`, explanations).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from recloop.bundle import BundleFormat
from recloop.config.models import ModelConfig
from recloop.data.interactions import Histories, Interactions

if TYPE_CHECKING:
    import scipy.sparse as sp

BUNDLE_FORMAT_VERSION = 1
MODEL_BUNDLE = BundleFormat("model", "model.json", "arrays.safetensors", "re-run the train step")


@dataclass
class ItemSide:
    """What a model may know about items besides interactions (indexed by contiguous item id)."""

    texts: list[str] | None = None
    categories: list[list[str]] | None = None
    embeddings: np.ndarray | None = None  # (n_items, dim) float32, L2-normalized, from the text encoder


@dataclass
class UserSide:
    """What a model may know about users besides interactions (indexed by contiguous user id): the users
    module's typed attributes (`recloop.data.users`)."""

    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int32 codes, -1 = missing
    vocabularies: dict[str, list[str]] = field(default_factory=dict)  # name -> the value of each code
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32, NaN = missing
    profiles: list[str] | None = None  # rendered `data.users.profile`, "" when empty


@dataclass
class FitContext:
    """Everything a model's fit may use besides the splits. Passed by the train step."""

    items: ItemSide = field(default_factory=ItemSide)
    users: UserSide = field(default_factory=UserSide)
    progress: Callable[[str, float, dict[str, float]], None] | None = None  # (phase, fraction, metrics)
    log: Callable[[str], None] = print
    device: str = "cpu"
    # Embeds texts with a given encoder config, through the store's embedding cache (set by the train
    # step); models fall back to encoding directly when it is None.
    text_embedder: Callable[[Any, Sequence[str]], np.ndarray] | None = None
    # Called by models that validate while training, after each check, with (epoch, validation NDCG@10).
    # It may raise to end the fit (the tune step prunes unpromising trials this way).
    on_validation: Callable[[int, float], None] | None = None

    def report_validation(self, epoch: int, ndcg: float) -> None:
        if self.on_validation is not None:
            self.on_validation(epoch, ndcg)


@dataclass
class Recommendations:
    """Top-k per query row: `ids[r, j]` with `scores[r, j]`, best first. Padded with -1 / -inf."""

    ids: np.ndarray
    scores: np.ndarray


@dataclass
class VectorSpace:
    """Scores as inner products: `score_histories(h, users) == encode(h, users) @ item_vectors.T`.

    `encode(histories, users)` gives one (d,) vector per history; pass `users` (their contiguous ids) only
    when each history is exactly that user's training history, so models with learned user vectors can use
    them. An ANN index over `item_vectors` then finds a history's top items.
    """

    item_vectors: np.ndarray  # (n_items, d) float32, C-contiguous
    encode: Callable[[Histories, np.ndarray | None], np.ndarray]

    def __post_init__(self) -> None:
        self.item_vectors = np.ascontiguousarray(self.item_vectors, dtype=np.float32)


# Score given to items a model cannot know (no training interactions) so they rank below all others.
COLD_ITEM_SCORE = np.float32(-1e30)


class Recommender(ABC):
    type_name: ClassVar[str] = ""
    config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    # Whether the model can score items with no training interactions (from their text). ID-only models
    # cannot: recommend() ranks such items last rather than trusting arbitrary (untrained) scores.
    scores_cold_items: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        self.config = config
        self.n_users = 0
        self.n_items = 0
        # The training histories; recommend(users=...) reads them, and they travel with the bundle.
        self.train_histories: Histories | None = None
        self.id_map_ref: str | None = None  # URI of the id maps this model's ids refer to

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> Recommender:
        """Learn from `train`; may early-stop on `valid`. Must call `self._remember(train)`."""

    @abstractmethod
    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        """Dense (len(histories), n_items) float32 scores. `users` are their ids when known, else None."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Learned arrays to save (names must not start with '_base.')."""

    @abstractmethod
    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `_state` returned."""

    # ------------------------------------------------------------------ capabilities (None = not offered)
    def item_vectors(self) -> np.ndarray | None:
        """(n_items, d) vectors whose cosine similarity defines `similar_items`; None if not applicable."""
        return None

    def vector_space(self) -> VectorSpace | None:
        """This model's scores as inner products of a history vector and item vectors; None when its scores
        are not of that form."""
        return None

    def item_weights(self) -> np.ndarray | sp.csr_matrix | None:
        """(n_items, n_items) W such that `score_histories(h)[r] == X[r] @ W`, X the histories' interaction
        matrix as the model reads it (binary, or event weights where configured): W[h, i] is what history
        item h contributes to item i's score. None when the scores are not of that form."""
        return None

    # ------------------------------------------------------------------ provided
    def _remember(self, train: Interactions) -> None:
        self.n_users, self.n_items = train.n_users, train.n_items
        self.train_histories = train.histories()

    def cold_item_mask(self) -> np.ndarray:
        """Boolean (n_items,) mask of items without any training interaction."""
        return np.bincount(self.fitted_histories().items, minlength=self.n_items) == 0

    def fitted_histories(self) -> Histories:
        """The training histories; RuntimeError when the model was neither fitted nor loaded."""
        if self.train_histories is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load() first")
        return self.train_histories

    def _check_fitted(self) -> None:
        self.fitted_histories()

    def user_histories(self, users: np.ndarray) -> Histories:
        histories = self.fitted_histories()
        users = np.asarray(users, dtype=np.int64)
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user ids must lie in [0, {self.n_users}); unknown users need a history")
        return histories.select(users)

    def recommend(
        self,
        users: Sequence[int] | np.ndarray | None = None,
        histories: Histories | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        batch_size: int = 2048,
    ) -> Recommendations:
        """Top-k items for known `users` (their training history) or for ad-hoc `histories`.

        `candidates`: restrict to these item ids (1-D, shared by all rows). Batched matrix work.
        """
        self._check_fitted()
        user_arr: np.ndarray | None = None
        if users is not None and histories is None:
            user_arr = np.asarray(users, dtype=np.int64)
            hist = self.user_histories(user_arr)
        elif histories is not None and users is None:
            hist = histories
        else:
            raise ValueError("pass exactly one of users or histories")
        n = len(hist)
        k_eff = min(k, self.n_items if candidates is None else len(candidates))
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        cold = None if self.scores_cold_items else self.cold_item_mask()
        if cold is not None and not cold.any():
            cold = None
        cand_mask = None
        if candidates is not None:
            cand_mask = np.ones(self.n_items, dtype=bool)
            cand_mask[np.asarray(candidates, dtype=np.int64)] = False  # True = not a candidate
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = hist.select(np.arange(start, stop))
            s = np.asarray(
                self.score_histories(batch, None if user_arr is None else user_arr[start:stop]), dtype=np.float32
            ).copy()
            if cold is not None:
                s[:, cold] = COLD_ITEM_SCORE
            if exclude_seen:
                seen = batch.to_csr()
                rows = np.repeat(np.arange(stop - start), np.diff(seen.indptr))
                s[rows, seen.indices] = -np.inf
            if cand_mask is not None:
                s[:, cand_mask] = -np.inf
            top_ids, top_scores = top_k(s, k_eff)
            ids[start:stop, :k_eff] = top_ids
            scores[start:stop, :k_eff] = top_scores
        ids[~np.isfinite(scores)] = -1
        return Recommendations(ids, scores)

    def similar_items(self, items: Sequence[int] | np.ndarray, k: int = 10) -> Recommendations:
        self._check_fitted()
        vectors = self.item_vectors()
        if vectors is None:
            raise NotImplementedError(f"{self.type_name} has no item vectors to compare items with")
        items = np.asarray(items, dtype=np.int64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.maximum(norms, 1e-12)
        sims = unit[items] @ unit.T
        sims[np.arange(len(items)), items] = -np.inf
        top_ids, top_scores = top_k(sims.astype(np.float32), min(k, self.n_items - 1))
        return Recommendations(top_ids, top_scores)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        from recloop import __version__

        h = self.fitted_histories()
        arrays = dict(self._state())
        arrays.update(
            {
                "_base.indptr": h.indptr,
                "_base.items": h.items,
                "_base.weights": h.weights,
                "_base.timestamps": h.timestamps,
            }
        )
        manifest = {
            "type": self.type_name,
            "format_version": BUNDLE_FORMAT_VERSION,
            "recloop_version": __version__,
            "config": self.config.model_dump(mode="json"),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "id_map": self.id_map_ref,
            "extra": self._extra_manifest(),
        }
        return MODEL_BUNDLE.save(path, manifest, arrays)

    def _extra_manifest(self) -> dict[str, Any]:
        """Small JSON-able facts a subclass needs at load time besides arrays."""
        return {}

    def _load_extra(self, extra: dict[str, Any]) -> None:  # noqa: B027 - optional hook, a no-op unless overridden
        """Restore what `_extra_manifest` saved; models without extra facts need nothing."""

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load any saved model; `Recommender.load(p)` dispatches on the manifest's type."""
        from recloop.errors import ArtifactError
        from recloop.models import registry

        path = Path(path)
        manifest = MODEL_BUNDLE.read_manifest(path)
        if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: bundle format {manifest.get('format_version')} is not supported "
                f"(this recloop reads format {BUNDLE_FORMAT_VERSION})"
            )
        model_cls = registry.get(manifest["type"])
        if cls is not Recommender and not issubclass(model_cls, cls):
            raise ArtifactError(f"{path} holds a {manifest['type']} model, not a {cls.__name__}")
        arrays = MODEL_BUNDLE.read_arrays(path)
        model = model_cls(model_cls.config_cls.model_validate(manifest["config"]))
        model.n_users, model.n_items = int(manifest["n_users"]), int(manifest["n_items"])
        model.id_map_ref = manifest.get("id_map")
        model.train_histories = Histories(
            arrays.pop("_base.indptr"),
            arrays.pop("_base.items"),
            arrays.pop("_base.weights"),
            arrays.pop("_base.timestamps"),
            model.n_items,
        )
        model._load_extra(manifest.get("extra") or {})
        model._set_state(arrays)
        return model


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k (ids, scores), best first; ties broken by lower item id. Vectorized."""
    n, m = scores.shape
    k = max(0, min(k, m))
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(m), (n, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_scores, order, axis=1)
