"""From a request to a slate: candidate search (exact or ANN), rules, slot filling, explanations.

Personalized slates come from the model. The fallback (`serving.fallback.policy`) serves when the model
has nothing to go on, with the reason logged and counted:
- `unknown_user`: GET for a user the model was not trained on;
- `no_history`: POST with no known user and no known history item;
- `cold_history`: an ID-only model and a history of items it never saw in training;
- `model_error`: the model raised while scoring (logged), so the request still gets a slate.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recloop.config import ServingConfig
from recloop.data.interactions import Histories
from recloop.models.base import top_k
from recloop.serving.explain import Explanation
from recloop.serving.index import ann_top
from recloop.serving.loader import ServedModel
from recloop.serving.rules import Policy, fill_slate

if TYPE_CHECKING:
    from recloop.policy.bandit import LinUCBPolicy
    from recloop.policy.online import PolicyHolder

log = logging.getLogger("recloop.serving")


@dataclass
class SlateQuery:
    user: int | None  # contiguous user id when the model knows the user
    history: np.ndarray  # int64 contiguous item ids, oldest first
    history_is_training: bool  # the history is exactly the user's training history
    k: int
    exclude_seen: bool
    category: int | None  # category id to restrict to
    request_id: str
    unknown_user: bool = False  # a user id was given that the model was not trained on


@dataclass
class Slate:
    items: np.ndarray  # contiguous item ids, best first
    scores: np.ndarray  # float64
    propensities: np.ndarray  # float64
    explanations: list[Explanation]
    policy: str
    fallback: str | None  # reason, when the fallback policy served
    search: str  # exact | ann | ann_exhausted | fallback:<policy> | similar


class SlateEngine:
    def __init__(self, settings: ServingConfig, bandit: PolicyHolder | None = None):
        self.settings = settings
        self.bandit = bandit  # the published bandit policy (feedback step), if any, reranks personalized pools

    # ------------------------------------------------------------------ helpers
    def _policy(self, k: int) -> Policy:
        return Policy.from_config(k, self.settings.rules, self.settings.exploration)

    def _rng(self, request_id: str) -> np.random.Generator:
        seed = self.settings.exploration.seed
        if seed is None:
            return np.random.default_rng()
        digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _pool_size(self, policy: Policy) -> int:
        return max(self.settings.rules.candidate_pool, policy.k) if policy.needs_pool else policy.k

    def allowed_for(self, served: ServedModel, query: SlateQuery, personalized: bool) -> np.ndarray:
        allowed = served.allowed.copy()
        if query.category is not None:
            allowed &= served.catalog.items_in_category(query.category)
        if query.exclude_seen and len(query.history):
            allowed[query.history] = False
        if personalized and served.cold is not None:
            # ID-only models rank never-seen items last anyway; the fallback may still show them.
            allowed &= ~served.cold
        return allowed

    def _finish(
        self,
        served: ServedModel,
        pool_ids: np.ndarray,
        pool_scores: np.ndarray,
        policy: Policy,
        history: np.ndarray,
        request_id: str,
        explain_method: str | None,
        anchor: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Explanation]]:
        filled = fill_slate(
            pool_ids,
            pool_scores,
            policy,
            served.catalog,
            served.explainer.similarity,
            self._rng(request_id) if policy.epsilon > 0 else None,
        )
        items = pool_ids[filled.positions]
        scores = pool_scores[filled.positions].astype(np.float64)
        explanations = served.explainer.explain(history if anchor is None else anchor, items, explain_method)
        return items, scores, filled.propensities, explanations

    # ------------------------------------------------------------------ recommendations
    def recommend(self, served: ServedModel, query: SlateQuery) -> Slate:
        policy = self._policy(query.k)
        reason = self._fallback_reason(served, query)
        if reason is None:
            try:
                allowed = self.allowed_for(served, query, personalized=True)
                bandit = self.bandit.current if self.bandit is not None else None
                if bandit is not None and query.category is None and query.history_is_training:
                    return self._bandit_slate(served, query, allowed, bandit)
                pool_ids, pool_scores, search = self._personalized_pool(served, query, allowed, self._pool_size(policy))
                items, scores, props, expl = self._finish(
                    served, pool_ids, pool_scores, policy, query.history, query.request_id, None
                )
                return Slate(items, scores, props, expl, policy.name, None, search)
            except Exception:  # noqa: BLE001 - a request still gets a (fallback) slate; the error is logged
                log.exception(
                    "model %s v%d failed to score request %s; serving the fallback",
                    served.model_name,
                    served.version,
                    query.request_id,
                )
                reason = "model_error"
        return self._fallback(served, query, policy, reason)

    def _bandit_slate(self, served: ServedModel, query: SlateQuery, allowed: np.ndarray, bandit: LinUCBPolicy) -> Slate:
        """The bandit reranks the model's top `candidates` (the pool the feedback step reconstructs to train
        and evaluate it); each shown item's propensity is the bandit's exact slot probability."""
        from recloop.policy.online import rerank

        pool_ids, pool_scores, search = self._personalized_pool(
            served, query, allowed, max(bandit.config.candidates, query.k)
        )
        order, props = rerank(
            bandit,
            [served.catalog.item_ids[int(i)] for i in pool_ids],
            pool_scores,
            len(query.history),
            query.k,
            self._rng(query.request_id),
        )
        items = pool_ids[order]
        explanations = served.explainer.explain(query.history, items, None)
        return Slate(items, pool_scores[order].astype(np.float64), props, explanations, bandit.name, None, search)

    def _fallback_reason(self, served: ServedModel, query: SlateQuery) -> str | None:
        if query.user is not None:
            return None
        if len(query.history) == 0:
            return "unknown_user" if query.unknown_user else "no_history"
        if served.cold is not None and served.cold[query.history].all():
            return "cold_history"
        return None

    def _histories(self, served: ServedModel, query: SlateQuery) -> Histories:
        h = query.history.astype(np.int32)
        n = len(h)
        return Histories(
            np.array([0, n], np.int64), h, np.ones(n, np.float32), np.arange(n, dtype=np.int64), served.model.n_items
        )

    def _personalized_pool(
        self, served: ServedModel, query: SlateQuery, allowed: np.ndarray, pool: int
    ) -> tuple[np.ndarray, np.ndarray, str]:
        model = served.model
        if query.history_is_training and query.user is not None:
            histories = model.fitted_histories().select(np.array([query.user]))
        else:
            histories = self._histories(served, query)
        users = None if query.user is None else np.array([query.user], dtype=np.int64)
        n_allowed = int(allowed.sum())
        want = min(pool, n_allowed)
        if want == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), "exact"
        if served.ann is not None and served.space is not None:
            found = self._ann_pool(served, histories, users if query.history_is_training else None, allowed, want)
            if found is not None:
                return found[0], found[1], "ann"
            search = "ann_exhausted"
        else:
            search = "exact"
        score_at = getattr(model, "score_at", None)  # models that read when the request happens: now
        raw = (
            score_at(histories, users, np.array([int(time.time())], np.int64))
            if callable(score_at)
            else model.score_histories(histories, users)
        )
        scores = np.asarray(raw, dtype=np.float32)[0].copy()
        scores[~allowed] = -np.inf
        ids, top = top_k(scores[None, :], want)
        keep = np.isfinite(top[0])
        return ids[0][keep], top[0][keep], search

    def _ann_pool(
        self, served: ServedModel, histories: Histories, users: np.ndarray | None, allowed: np.ndarray, want: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top `want` allowed items among ANN candidates; None when the index cannot supply enough
        allowed items (then the caller searches exactly)."""
        assert served.ann is not None and served.space is not None
        query = served.space.encode(histories, users)[0]
        return ann_top(served.ann, served.space.item_vectors, query, allowed, want)

    def _fallback(self, served: ServedModel, query: SlateQuery, policy: Policy, reason: str) -> Slate:
        name = self.settings.fallback.policy
        allowed = self.allowed_for(served, query, personalized=False)
        known = query.history
        text = served.catalog.text_index
        if name == "text" and len(known) and text is not None:
            scores = text.scores(text.profile(known))
            used = "text"
        elif name == "trending":
            scores, used = served.trending, "trending"
        else:
            scores, used = served.popular, "popular"
        scores = np.where(allowed, scores, -np.inf).astype(np.float32)
        want = min(self._pool_size(policy), int(allowed.sum()))
        ids, top = top_k(scores[None, :], want)
        keep = np.isfinite(top[0])
        items, values, props, expl = self._finish(
            served, ids[0][keep], top[0][keep], policy, query.history, query.request_id, used
        )
        return Slate(items, values, props, expl, policy.name, reason, f"fallback:{used}")

    # ------------------------------------------------------------------ similar items
    def similar(self, served: ServedModel, item: int, k: int, category: int | None, request_id: str) -> Slate:
        policy = self._policy(k)
        allowed = served.allowed.copy()
        allowed[item] = False
        if category is not None:
            allowed &= served.catalog.items_in_category(category)
        want = min(self._pool_size(policy), int(allowed.sum()))
        n = served.model.n_items
        fetch = min(n - 1, want + (n - int(allowed.sum())))
        ids = np.zeros(0, np.int64)
        scores = np.zeros(0, np.float32)
        while want > 0:
            try:
                found = served.model.similar_items(np.array([item]), k=max(fetch, 1))
                cand, vals = found.ids[0], found.scores[0]
            except NotImplementedError:
                sims = served.explainer.similar_to(item)
                sims[item] = -np.inf
                top_ids, top_vals = top_k(sims[None, :], max(fetch, 1))
                cand, vals = top_ids[0], top_vals[0]
            ok = (cand >= 0) & np.isfinite(vals)
            cand, vals = cand[ok], vals[ok]
            keep = allowed[cand]
            ids, scores = cand[keep][:want], vals[keep][:want].astype(np.float32)
            if len(ids) >= want or fetch >= n - 1:
                break
            fetch = min(n - 1, fetch * 4)
        anchor = np.array([item], np.int64)
        items, values, props, expl = self._finish(served, ids, scores, policy, anchor, request_id, None, anchor)
        return Slate(items, values, props, expl, policy.name, None, "similar")
