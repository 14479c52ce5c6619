"""Business rules and the slot-filling policy that turns a scored candidate pool into a slate.

Hard rules (items never shown) are a boolean `allowed` mask: excluded items, blocked categories, the
request's category filter, already-seen items. Soft rules act while the slate is filled, slot by slot:
- `max_per_category`: an item is admissible only while each of its categories has fewer items so far;
- MMR (`mmr_lambda`): the greedy pick maximises lambda * relevance - (1 - lambda) * (max similarity to the
  items already chosen), relevance being the score min-max scaled over the pool;
- epsilon-greedy exploration: with probability epsilon a slot shows a uniform draw from the admissible
  items instead of the greedy pick.
Each shown item's propensity is the probability that this policy put it in its slot given the slots above:
(1 - epsilon) * [it is the greedy pick] + epsilon / (number of admissible items). Greedy serving gives 1.0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recloop.config import ServingExplorationConfig, ServingRulesConfig
from recloop.serving.catalog import Catalog

SimilarityFn = Callable[[np.ndarray], np.ndarray]  # pool item ids -> (P, P) similarities


def static_allowed(catalog: Catalog, rules: ServingRulesConfig) -> np.ndarray:
    """Items the configured rules ever allow (excluded ids of other versions are simply absent)."""
    allowed = np.ones(catalog.n_items, dtype=bool)
    for item_id in rules.excluded_items:
        idx = catalog.index_of.get(item_id)
        if idx is not None:
            allowed[idx] = False
    for name in rules.blocked_categories:
        cat = catalog.category_index.get(name)
        if cat is not None:
            allowed &= ~catalog.items_in_category(cat)
    return allowed


@dataclass
class Policy:
    """How slots are filled from a pool; `name` goes into the impression log."""

    k: int
    max_per_category: int | None
    mmr_lambda: float | None
    epsilon: float

    @property
    def name(self) -> str:
        return "epsilon_greedy" if self.epsilon > 0 else "greedy"

    @property
    def needs_pool(self) -> bool:
        """Whether more than the top k must be scored (a rule or exploration may pick beyond them)."""
        return self.max_per_category is not None or self.mmr_lambda is not None or self.epsilon > 0

    @classmethod
    def from_config(cls, k: int, rules: ServingRulesConfig, exploration: ServingExplorationConfig) -> Policy:
        return cls(k, rules.max_per_category, rules.mmr_lambda, exploration.epsilon)


@dataclass
class Filled:
    positions: np.ndarray  # indices into the pool, in slate order
    propensities: np.ndarray  # float64, one per shown item


def fill_slate(
    pool_ids: np.ndarray,
    pool_scores: np.ndarray,
    policy: Policy,
    catalog: Catalog,
    similarity: SimilarityFn | None,
    rng: np.random.Generator | None,
) -> Filled:
    """Choose up to k pool items (pool sorted best first) slot by slot under the policy."""
    p = len(pool_ids)
    if p == 0 or policy.k == 0:
        return Filled(np.zeros(0, np.int64), np.zeros(0, np.float64))
    if not policy.needs_pool:
        take = min(policy.k, p)
        return Filled(np.arange(take), np.ones(take, np.float64))

    relevance = _scaled(pool_scores)
    lam = policy.mmr_lambda
    sims = similarity(pool_ids) if (lam is not None and lam < 1 and similarity is not None) else None
    max_sim = np.zeros(p, np.float64)
    remaining = np.ones(p, dtype=bool)
    cat_count: dict[int, int] = {}
    cap = policy.max_per_category
    cats = [catalog.category_ids_of(int(i)) for i in pool_ids] if cap is not None else None
    positions: list[int] = []
    propensities: list[float] = []
    for _ in range(min(policy.k, p)):
        admissible = remaining.copy()
        if cats is not None and cap is not None:
            for j in np.flatnonzero(admissible):
                if any(cat_count.get(int(c), 0) >= cap for c in cats[j]):
                    admissible[j] = False
        candidates = np.flatnonzero(admissible)
        if len(candidates) == 0:
            break
        value = relevance[candidates]
        if sims is not None and lam is not None:
            value = lam * value - (1.0 - lam) * max_sim[candidates]
        # Stable: among equal values the better-ranked pool item wins.
        greedy = int(candidates[int(np.argmax(value))])
        choice = greedy
        if policy.epsilon > 0 and rng is not None and rng.random() < policy.epsilon:
            choice = int(candidates[rng.integers(len(candidates))])
        propensity = (1.0 - policy.epsilon) * (choice == greedy) + policy.epsilon / len(candidates)
        positions.append(choice)
        propensities.append(float(propensity))
        remaining[choice] = False
        if sims is not None:
            max_sim = np.maximum(max_sim, sims[choice])
        if cats is not None:
            for c in cats[choice]:
                cat_count[int(c)] = cat_count.get(int(c), 0) + 1
    return Filled(np.asarray(positions, np.int64), np.asarray(propensities, np.float64))


def _scaled(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    lo, hi = float(s.min()), float(s.max())
    return np.ones_like(s) if hi - lo < 1e-12 else (s - lo) / (hi - lo)
