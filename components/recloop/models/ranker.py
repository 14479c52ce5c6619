"""ranker: a learned second stage. LightGBM's LambdaRank reorders the union of the retrievers' top items.

Labels without leakage, and many of them (the scheme):
  1. Each user's most recent `label_share` of training events is the label window (at least one event,
     for users with 3 or more); the retrievers are fit on the events before it (early-stopping on the
     validation split as they would alone).
  2. For every user with a window, the retrievers propose their top `candidates` unseen items (history =
     the events before the window); each proposed pair is a training row, labelled 1 when the item is in
     the user's window. Users whose window holds none of the proposals teach nothing and are dropped.
  3. LightGBM (objective lambdarank, one query group per user) learns on those rows and early-stops on
     NDCG@10 of `valid_share` of the users, held out by a seeded draw.
  4. The retrievers are fit again on all training events: they score, the ranker reorders.
The validation and test splits are never labels: evaluation scores them exactly as any candidate's.

Scoring: the union of the retrievers' top items (history excluded) comes first, in the ranker's order;
every other item follows in the first retriever's order, so the full ranking over the catalog is defined.

Features: `recloop.models.ranking_features` (one function builds training and scoring rows). Feature
importances (gain) and the label counts are in the bundle's manifest (`extra.fit`) and in train_report's
history (phase `ranker`).

User attributes (the users module: `data.users.attributes`) are features when the data has them; request
context is not a feature yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recloop.config.models import RankerConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender
from recloop.models.blend import member_context, nested_state, restore_nested
from recloop.models.ranking_features import (
    CandidatePairs,
    ItemStatistics,
    TimeContext,
    UserAttributeTables,
    candidate_features,
    feature_names,
)
from recloop.models.registry import register

# Items outside the candidate union are placed this far below any ranker score.
OUTSIDE_UNION_OFFSET = 1.0e4
SCORING_BATCH = 256


@register(RankerConfig)
class Ranker(Recommender):
    config: RankerConfig

    def __init__(self, config: RankerConfig):
        super().__init__(config)
        from recloop.models import registry

        self.retrievers: list[Recommender] = [registry.get(c.type)(c) for c in config.retriever_configs()]
        self.booster: Any = None
        self.stats: ItemStatistics | None = None
        self.user_tables: UserAttributeTables | None = None
        self.time_context: TimeContext | None = None
        self.fit_report: dict[str, Any] = {}

    @property
    def retriever_names(self) -> list[str]:
        return [r.config.candidate_name for r in self.retrievers]

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.retriever_names, self.user_tables, self.time_context)

    # ------------------------------------------------------------------ fitting
    def fit(self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None) -> Ranker:
        cfg = self.config
        self._remember(train)
        context = context if context is not None else FitContext()
        shares = 2 * len(self.retrievers) + 1
        before, window = split_label_window(train, cfg.label_share)
        context.log(
            f"label window: {len(window)} events of {len(np.unique(window.user))} users (the most recent "
            f"{cfg.label_share:.0%} of each user's training events); retrievers fit on the {len(before)} before it"
        )
        for i, retriever in enumerate(self.retrievers):
            retriever.fit(
                before, valid, member_context(context, f"{self.retriever_names[i]} (before labels)", i, shares)
            )
        categories = _category_matrix(context, train.n_items)
        text = self._text_vectors(context, train.n_items)
        label_stats = ItemStatistics.from_histories(before.histories(), categories, text)
        self.time_context = TimeContext.fit(before.histories(), categories)
        has_users = bool(context.users.categorical or context.users.numeric)
        self.user_tables = UserAttributeTables.fit(context.users, before.histories(), categories) if has_users else None
        self.booster, self.fit_report = self._learn(before, window, label_stats, context)
        for i, retriever in enumerate(self.retrievers):
            retriever.fit(
                train, valid, member_context(context, self.retriever_names[i], len(self.retrievers) + i, shares)
            )
        self.stats = ItemStatistics.from_histories(self.fitted_histories(), categories, text)
        self.time_context = TimeContext.fit(self.fitted_histories(), categories)
        if has_users:  # the same features, from all training events
            self.user_tables = UserAttributeTables.fit(context.users, self.fitted_histories(), categories)
        if context.progress is not None:
            context.progress("ranker", 1.0, self._metrics())
        return self

    def _text_vectors(self, context: FitContext, n_items: int) -> np.ndarray | None:
        from recloop.models.text_knn import embed_item_texts

        texts = context.items.texts
        if not self.config.text_similarity or texts is None or not any(texts):
            return None
        vectors = embed_item_texts(self.config.encoder, context, n_items).copy()
        vectors[np.array([not t for t in texts])] = 0.0  # no text: no similarity
        return vectors

    def _learn(
        self, before: Interactions, window: Interactions, stats: ItemStatistics, context: FitContext
    ) -> tuple[Any, dict[str, Any]]:
        import lightgbm

        cfg = self.config
        users = np.unique(window.user)
        # Each user's query happens at their first labelled event.
        first = np.full(self.n_users, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, window.user, window.timestamp)
        pairs = self._batched_pairs(before.histories(), users, stats, first[users])
        targets = sp.csr_matrix(
            (np.ones(len(window), np.float32), (np.searchsorted(users, window.user), window.item)),
            shape=(len(users), self.n_items),
        )
        labels = np.asarray(targets[pairs.rows, pairs.items]).ravel() > 0
        positives = np.bincount(pairs.rows, weights=labels, minlength=len(users))
        useful = positives[pairs.rows] > 0
        rows, features, labels = pairs.rows[useful], pairs.features[useful], labels[useful].astype(np.float32)
        groups = np.flatnonzero(positives > 0)
        report: dict[str, Any] = {
            "label_users": int(len(users)),
            "label_events": int(len(window)),
            "users_with_a_found_label": int(len(groups)),
            "positive_rows": int(labels.sum()),
            "rows": int(len(rows)),
            "window_events_found": round(float(labels.sum()) / max(len(window), 1), 4),
        }
        if len(groups) < 4 or labels.sum() < 4:
            context.log(f"too few labels to learn from ({report}); the first retriever's order is kept")
            return None, {**report, "decision": "too few labels: first retriever's order"}
        rng = np.random.default_rng(cfg.seed)
        held = rng.permutation(groups)[: max(1, int(round(cfg.valid_share * len(groups))))]
        in_valid = np.isin(rows, held)
        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "num_leaves": cfg.num_leaves,
            "learning_rate": cfg.learning_rate,
            "min_child_samples": cfg.min_child_samples,
            "seed": cfg.seed,
            "deterministic": True,
            "num_threads": 0,
            "verbosity": -1,
        }
        names = self.feature_names

        def dataset(mask: np.ndarray, reference: Any = None) -> Any:
            return lightgbm.Dataset(
                features[mask],
                label=labels[mask],
                group=np.bincount(rows[mask])[np.unique(rows[mask])],
                feature_name=names,
                categorical_feature=self.user_tables.categorical_names() if self.user_tables else "auto",
                reference=reference,
                free_raw_data=False,
            )

        fit_set = dataset(~in_valid)
        valid_set = dataset(in_valid, fit_set)
        evals: dict[str, Any] = {}
        booster = lightgbm.train(
            params,
            fit_set,
            num_boost_round=cfg.max_rounds,
            valid_sets=[valid_set],
            valid_names=["held_out_users"],
            callbacks=[
                lightgbm.early_stopping(cfg.early_stopping_rounds, verbose=False),
                lightgbm.record_evaluation(evals),
            ],
        )
        curve = evals.get("held_out_users", {}).get("ndcg@10", [])
        gains = booster.feature_importance(importance_type="gain")
        total = float(gains.sum()) or 1.0
        report.update(
            {
                "decision": "learned",
                "best_round": int(booster.best_iteration or len(curve)),
                "held_out_users": int(len(held)),
                "held_out_ndcg@10": float(max(curve)) if curve else None,
                "feature_gain": {n: round(float(g) / total, 6) for n, g in zip(names, gains)},
            }
        )
        context.log(
            f"LambdaRank on {report['rows']} rows of {len(groups)} users ({report['positive_rows']} positive): "
            f"best round {report['best_round']}, held-out NDCG@10 {report['held_out_ndcg@10']:.4f}"
        )
        return booster, report

    def _metrics(self) -> dict[str, float]:
        metrics = {k: float(v) for k, v in self.fit_report.items() if isinstance(v, int | float) and v is not None}
        metrics.update({f"gain.{n}": g for n, g in (self.fit_report.get("feature_gain") or {}).items()})
        return metrics

    # ------------------------------------------------------------------ scoring
    def _pairs(
        self, histories: Histories, users: np.ndarray | None, stats: ItemStatistics, times: np.ndarray | None = None
    ) -> CandidatePairs:
        scores = [r.score_histories(histories, users) for r in self.retrievers]
        scoreable = [None if r.scores_cold_items else ~r.cold_item_mask() for r in self.retrievers]
        return candidate_features(
            histories,
            scores,
            scoreable,
            self.config.candidates,
            stats,
            self.config.history_window,
            self.user_tables,
            users,
            self.time_context,
            times,
        )

    def _batched_pairs(
        self, histories: Histories, users: np.ndarray, stats: ItemStatistics, times: np.ndarray
    ) -> CandidatePairs:
        """`_pairs` for many users, SCORING_BATCH at a time: the dense score matrices stay small."""
        parts = []
        for start in range(0, len(users), SCORING_BATCH):
            batch = users[start : start + SCORING_BATCH]
            part = self._pairs(histories.select(batch), batch, stats, times[start : start + SCORING_BATCH])
            parts.append(CandidatePairs(part.rows + start, part.items, part.features))
        if not parts:
            return CandidatePairs(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(self.feature_names)), np.float32)
            )
        return CandidatePairs(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.items for p in parts]),
            np.concatenate([p.features for p in parts]),
        )

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        return self.score_at(histories, users, None)

    def score_at(self, histories: Histories, users: np.ndarray | None, times: np.ndarray | None) -> np.ndarray:
        """Scores of queries happening at `times` (epoch seconds per row; None: not known, the time-of-day
        features are missing)."""
        if self.stats is None:
            raise RuntimeError("Ranker is not fitted; call fit() or load() first")
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        for start in range(0, len(histories), SCORING_BATCH):
            rows = np.arange(start, min(start + SCORING_BATCH, len(histories)))
            batch = histories.select(rows)
            batch_users = None if users is None else np.asarray(users)[rows]
            batch_times = None if times is None else np.asarray(times)[rows]
            first = self.retrievers[0].score_histories(batch, batch_users)
            out[rows] = _order_preserving(first) - OUTSIDE_UNION_OFFSET
            if self.booster is not None:
                pairs = self._pairs(batch, batch_users, self.stats, batch_times)
                if len(pairs.rows):
                    predicted = self.booster.predict(pairs.features, num_iteration=self.booster.best_iteration or None)
                    out[rows[pairs.rows], pairs.items] = predicted.astype(np.float32)
        return out

    @property
    def scores_cold_items(self) -> bool:  # type: ignore[override]
        return any(r.scores_cold_items for r in self.retrievers)

    def feature_importances(self) -> dict[str, float]:
        """Each feature's share of the learned trees' total gain (sums to 1; {} when nothing was learned)."""
        return dict(self.fit_report.get("feature_gain") or {})

    def item_vectors(self) -> np.ndarray | None:
        return next((v for v in (r.item_vectors() for r in self.retrievers) if v is not None), None)

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        assert self.stats is not None
        arrays = nested_state(self.retrievers, "retriever")
        categories = self.stats.categories
        arrays.update(
            {
                "stats.counts": self.stats.counts,
                "stats.last_event": self.stats.last_event,
                "stats.reference_time": np.array([self.stats.reference_time], dtype=np.int64),
                "stats.categories.indptr": categories.indptr.astype(np.int64),
                "stats.categories.indices": categories.indices.astype(np.int64),
                "stats.categories.shape": np.array(categories.shape, dtype=np.int64),
            }
        )
        if self.stats.text_vectors is not None:
            arrays["stats.text_vectors"] = self.stats.text_vectors
        if self.time_context is not None:
            arrays["context.day_part_lifts"] = self.time_context.lifts
        if self.user_tables is not None:
            for name, codes in self.user_tables.codes.items():
                arrays[f"users.codes.{name}"] = codes
                arrays[f"users.lifts.{name}"] = self.user_tables.lifts[name]
            arrays.update({f"users.numeric.{name}": v for name, v in self.user_tables.numeric.items()})
        if self.booster is not None:
            arrays["booster"] = np.frombuffer(self.booster.model_to_string().encode(), dtype=np.uint8).copy()
        return arrays

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        restore_nested(self, self.retrievers, arrays, "retriever")
        shape = tuple(int(x) for x in arrays["stats.categories.shape"])
        indices = arrays["stats.categories.indices"]
        categories = sp.csr_matrix(
            (np.ones(len(indices), np.float32), indices, arrays["stats.categories.indptr"]), shape=shape
        )
        self.stats = ItemStatistics(
            counts=np.asarray(arrays["stats.counts"]),
            last_event=np.asarray(arrays["stats.last_event"]),
            reference_time=int(np.asarray(arrays["stats.reference_time"])[0]),
            categories=categories,
            text_vectors=np.asarray(arrays["stats.text_vectors"]) if "stats.text_vectors" in arrays else None,
        )
        self.user_tables = _user_tables(arrays)
        lifts = arrays.get("context.day_part_lifts")
        self.time_context = None if lifts is None else TimeContext(np.asarray(lifts))
        self.booster = None
        if "booster" in arrays:
            import lightgbm

            self.booster = lightgbm.Booster(model_str=bytes(np.asarray(arrays["booster"], dtype=np.uint8)).decode())

    def _extra_manifest(self) -> dict[str, Any]:
        return {
            "fit": self.fit_report,
            "features": self.feature_names,
            "retrievers": [r._extra_manifest() for r in self.retrievers],
        }

    def _load_extra(self, extra: dict[str, Any]) -> None:
        self.fit_report = dict(extra.get("fit") or {})
        for retriever, retriever_extra in zip(self.retrievers, extra.get("retrievers") or [{}] * len(self.retrievers)):
            retriever._load_extra(retriever_extra)


def split_label_window(train: Interactions, share: float) -> tuple[Interactions, Interactions]:
    """(before, window): each user's most recent `share` of events (rounded, at least 1 for users with 3 or
    more events, never all of them) is the window; ties in time keep the input order."""
    order = np.lexsort((np.arange(len(train)), train.timestamp, train.user))
    counts = np.bincount(train.user, minlength=train.n_users)
    sizes = np.where(counts >= 3, np.clip(np.rint(counts * share), 1, counts - 2), 0).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(train)) - np.repeat(starts, counts)  # 0-based position in the user's history
    in_window_sorted = position >= np.repeat(counts - sizes, counts)
    in_window = np.zeros(len(train), dtype=bool)
    in_window[order] = in_window_sorted
    return train.subset(~in_window), train.subset(in_window)


def _user_tables(arrays: dict[str, np.ndarray]) -> UserAttributeTables | None:
    def named(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}

    codes, lifts, numeric = named("users.codes."), named("users.lifts."), named("users.numeric.")
    return UserAttributeTables(codes, lifts, numeric) if codes or numeric else None


def _order_preserving(scores: np.ndarray) -> np.ndarray:
    """Scores squeezed into (-1, 1) per row, same order: far below the ranker's scores after the offset."""
    finite = np.where(np.isfinite(scores), scores, np.nan)
    low = np.nanmin(finite, axis=1, keepdims=True)
    high = np.nanmax(finite, axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    squeezed = (np.nan_to_num(finite - low, nan=0.0) / span) * 2 - 1
    return np.where(np.isfinite(scores), squeezed, -1.0).astype(np.float32)


def _category_matrix(context: FitContext, n_items: int) -> sp.csr_matrix:
    """(n_items, n_categories) 0/1 from the items' categories (an empty matrix without them)."""
    categories = context.items.categories
    if categories is None:
        return sp.csr_matrix((n_items, 0), dtype=np.float32)
    names = sorted({c for cats in categories for c in cats})
    index = {c: j for j, c in enumerate(names)}
    rows = [i for i, cats in enumerate(categories) for _ in cats]
    cols = [index[c] for cats in categories for c in cats]
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_items, len(names)))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m
