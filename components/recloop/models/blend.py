"""blend: a weighted sum of several models' per-user normalized scores, weights fit on validation.

fit() trains every member on the train split (each early-stops on validation as it would alone), pools
their normalized scores of the validation users and fits the weights by cross-validated coordinate ascent
on NDCG@10 (`recloop.models.blend_weights`). Without a validation split the members get equal weights.
The weights (`extra.weights`: members with a positive weight) and the cross-validation numbers and decision
(`extra.fit`) are saved in the bundle's manifest, and reported through `FitContext.progress` (phase
`blend`, in train_report.json's history). Members' log lines and progress phases carry their names.

Capabilities: a sum of normalized scores is neither an inner product in one space nor a sum of item
weights, so `vector_space` and `item_weights` are not offered. `item_vectors` (which items are alike) are
those of the highest-weighted member that has them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recloop.config.models import BlendConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender
from recloop.models.blend_weights import (
    CrossValidation,
    MemberScores,
    cross_validate,
    normalize_scores,
    pool_validation,
    weighted_sum,
)
from recloop.models.registry import register


@register(BlendConfig)
class Blend(Recommender):
    """Σ w_m · normalize(score_m); members with weight 0 are not scored."""

    config: BlendConfig

    def __init__(self, config: BlendConfig):
        super().__init__(config)
        from recloop.models import registry

        self.members: list[Recommender] = [registry.get(c.type)(c) for c in config.member_configs()]
        self.member_weights = np.full(len(self.members), 1.0 / len(self.members))
        self.fit_report: dict[str, Any] = {}
        self._known: dict[int, np.ndarray | None] = {}  # per member: items it can score (None: all)

    @property
    def member_names(self) -> list[str]:
        return [m.config.candidate_name for m in self.members]

    @property
    def weights(self) -> dict[str, float]:
        """Members that count, by name: those with a positive weight."""
        return {n: float(w) for n, w in zip(self.member_names, self.member_weights) if w > 0}

    # ------------------------------------------------------------------ fitting
    def fit(self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None) -> Blend:
        self._remember(train)
        self._known = {}
        context = context if context is not None else FitContext()
        shares = len(self.members) + 1  # progress: one share per member, one for the weights
        for i, member in enumerate(self.members):
            member.fit(train, valid, member_context(context, self.member_names[i], i, shares))
        pooled = None
        if valid is not None:
            every = list(range(len(self.members)))
            pooled = pool_validation(self._member_scores(every), train.histories(), valid, self.config.pool)
        if pooled is None or len(pooled) < 2:
            self._equal_weights(context, "no validation split" if valid is None else "fewer than 2 validation users")
        else:
            self._keep(cross_validate(pooled, self.config.folds, self.config.seed, self.config.min_gain), context)
        if context.progress is not None:
            context.progress("blend", 1.0, self._metrics())
        return self

    def _equal_weights(self, context: FitContext, why: str) -> None:
        self.member_weights = np.full(len(self.members), 1.0 / len(self.members))
        self.fit_report = {"decision": "equal weights", "reason": why}
        context.log(f"{why}: equal weights ({', '.join(self.member_names)}); weights are fit on validation NDCG@10")

    def _keep(self, cv: CrossValidation, context: FitContext) -> None:
        names = self.member_names
        best = names[cv.best_member]
        self.member_weights = cv.weights
        if cv.blended:
            reason = (
                f"cross-validated NDCG@10 {cv.cv_ndcg:.4f} beats {best} alone ({cv.member_ndcg[cv.best_member]:.4f})"
            )
        else:
            reason = (
                f"cross-validated NDCG@10 {cv.cv_ndcg:.4f} does not beat {best} alone "
                f"({cv.member_ndcg[cv.best_member]:.4f}) by more than min_gain {self.config.min_gain:g}: {best} is kept alone"
            )
        self.fit_report = {
            "decision": "blend" if cv.blended else "best member",
            "reason": reason,
            "cv_ndcg@10": cv.cv_ndcg,
            "member_ndcg@10": dict(zip(names, cv.member_ndcg)),
            "valid_ndcg@10": cv.valid_ndcg,
            "valid_users": cv.n_users,
            "folds": cv.n_folds,
            "fold_weights": [dict(zip(names, map(float, w))) for w in cv.fold_weights],
        }
        shown = ", ".join(f"{n} {w:.3f}" for n, w in self.weights.items())
        context.log(f"{reason} ({cv.n_folds} folds over {cv.n_users} validation users); weights: {shown}")

    def _metrics(self) -> dict[str, float]:
        """Flat numbers for the train report's history."""
        metrics = {f"weight.{n}": float(w) for n, w in zip(self.member_names, self.member_weights)}
        if "cv_ndcg@10" in self.fit_report:
            metrics["cv_ndcg@10"] = self.fit_report["cv_ndcg@10"]
            metrics.update({f"ndcg@10.{n}": v for n, v in self.fit_report["member_ndcg@10"].items()})
        return metrics

    # ------------------------------------------------------------------ scoring
    def _known_items(self, m: int) -> np.ndarray | None:
        """Items member `m` can score: None for all, else those with training interactions."""
        if m not in self._known:
            member = self.members[m]
            self._known[m] = None if member.scores_cold_items else ~member.cold_item_mask()
        return self._known[m]

    def _member_scores(self, members: list[int]) -> MemberScores:
        """Normalized scores of the given members for a batch: what weight fitting and scoring both sum."""

        def score(histories: Histories, users: np.ndarray | None) -> list[np.ndarray]:
            return [
                normalize_scores(
                    self.members[m].score_histories(histories, users), self.config.normalization, self._known_items(m)
                )
                for m in members
            ]

        return score

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        used = [m for m, w in enumerate(self.member_weights) if w > 0]
        return weighted_sum(self.member_weights[used], self._member_scores(used)(histories, users))

    @property
    def scores_cold_items(self) -> bool:  # type: ignore[override]
        return any(m.scores_cold_items for m, w in zip(self.members, self.member_weights) if w > 0)

    def item_vectors(self) -> np.ndarray | None:
        # Members by weight, heaviest first (ties: config order); those with weight 0 have no say.
        for m in sorted(range(len(self.members)), key=lambda m: -self.member_weights[m]):
            vectors = self.members[m].item_vectors() if self.member_weights[m] > 0 else None
            if vectors is not None:
                return vectors
        return None

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        return nested_state(self.members, "member")

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._known = {}
        restore_nested(self, self.members, arrays, "member")

    def _extra_manifest(self) -> dict[str, Any]:
        # JSON floats round-trip exactly, so the weights live here only, readable next to the CV numbers.
        return {"weights": self.weights, "fit": self.fit_report, "members": [m._extra_manifest() for m in self.members]}

    def _load_extra(self, extra: dict[str, Any]) -> None:
        weights = extra.get("weights") or {}
        self.member_weights = np.array([float(weights.get(n, 0.0)) for n in self.member_names])
        self.fit_report = dict(extra.get("fit") or {})
        for member, member_extra in zip(self.members, extra.get("members") or [{}] * len(self.members)):
            member._load_extra(member_extra)


def nested_state(models: list[Recommender], prefix: str) -> dict[str, np.ndarray]:
    """The arrays of a combining model's inner models (a blend's members, a ranker's retrievers), each
    under `{prefix}.{i}.`."""
    return {f"{prefix}.{i}.{k}": v for i, model in enumerate(models) for k, v in model._state().items()}


def restore_nested(parent: Recommender, models: list[Recommender], arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Restore what `nested_state` saved; the inner models share the parent's sizes, histories and id maps."""
    for i, model in enumerate(models):
        model.n_users, model.n_items = parent.n_users, parent.n_items
        model.train_histories = parent.train_histories
        model.id_map_ref = parent.id_map_ref
        start = f"{prefix}.{i}."
        model._set_state({k[len(start) :]: v for k, v in arrays.items() if k.startswith(start)})


def member_context(context: FitContext, name: str, index: int, shares: int) -> FitContext:
    """A combining model's context for one member (a blend's member, a ranker's retriever): its log lines and progress phases carry the member's name, its
    progress fills the member's share of the bar, and its validation checks do not end the blend's fit."""
    progress = context.progress

    def member_progress(phase: str, fraction: float, metrics: dict[str, float]) -> None:
        if progress is not None:
            progress(f"{name}: {phase}", (index + float(fraction)) / shares, metrics)

    return FitContext(
        items=context.items,
        users=context.users,
        progress=member_progress,
        log=lambda msg: context.log(f"{name}: {msg}"),
        device=context.device,
        text_embedder=context.text_embedder,
    )
