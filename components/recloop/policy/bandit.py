"""LinUCB reranking policy with exact propensities.

Scores: one ridge regression shared by all items over the candidate features (`features.py`),
theta = A^-1 b with A = ridge * I + sum x x^T and b = sum r x over logged (features, reward) pairs, plus an
upper-confidence bonus: ucb(x) = theta.x + alpha * sqrt(x^T A^-1 x). The scores are deterministic, so the
randomness of a slate comes only from the exploration layer, whose probabilities are known exactly:

- epsilon_greedy: each slot shows the best remaining item with probability 1 - epsilon, and a uniform draw
  from the remaining items with probability epsilon: p(a) = (1 - eps) [a is best] + eps / remaining;
- softmax: each slot draws from the remaining items with p(a) = exp(ucb(a) / T) / sum_remaining exp(ucb / T)
  (a Plackett-Luce slate).

`rank` logs for every shown item the probability that the policy put it in its slot given the slots above
(the same convention as serving's epsilon-greedy); the product over slots is the slate's probability.
(Thompson sampling is not offered: its propensities have no closed form and would have to be estimated.)

Saved like a model (`recloop.bundle`): a folder with `policy.json` (type, format, config, feature layout)
and `arrays.safetensors` (A, b and the feature tables). No pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recloop.bundle import BundleFormat
from recloop.config import PolicyConfig
from recloop.policy.features import FeatureSpace

POLICY_FORMAT_VERSION = 1
POLICY_BUNDLE = BundleFormat("policy", "policy.json", "arrays.safetensors", "re-run the feedback step")


class Policy(Protocol):
    """What serving calls: order a candidate pool and give each shown item's exact propensity."""

    name: str

    def rank(
        self,
        candidates: Sequence[Any] | np.ndarray,
        features: np.ndarray,
        rng: np.random.Generator | None,
        k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...


class LinUCBPolicy:
    """LinUCB scores + epsilon-greedy or softmax exploration over a candidate pool."""

    type_name = "linucb"

    def __init__(self, config: PolicyConfig, space: FeatureSpace):
        self.config = config
        self.space = space
        d = space.dim
        self.A = np.eye(d) * config.ridge
        self.b = np.zeros(d)
        self.n_updates = 0  # logged slots learned from
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        c = self.config
        explore = f"softmax(T={c.temperature:g})" if c.exploration == "softmax" else f"epsilon_greedy({c.epsilon:g})"
        return f"linucb+{explore}"

    # ------------------------------------------------------------------ learning
    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Add logged (features, reward) pairs of shown items to the regression."""
        x = np.asarray(features, np.float64).reshape(-1, self.space.dim)
        r = np.asarray(rewards, np.float64).reshape(-1)
        if len(x) != len(r):
            raise ValueError(f"{len(x)} feature rows for {len(r)} rewards")
        self.A += x.T @ x
        self.b += x.T @ r
        self.n_updates += len(x)
        self._cache = None

    def _solved(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            a_inv = np.linalg.inv(self.A)
            a_inv = (a_inv + a_inv.T) / 2.0  # keep the quadratic form symmetric after round-off
            self._cache = (a_inv @ self.b, a_inv)
        return self._cache

    @property
    def theta(self) -> np.ndarray:
        return self._solved()[0]

    def predict_reward(self, features: np.ndarray) -> np.ndarray:
        """The regression's expected reward (no bonus), clipped to [0, 1]: the DR reward model."""
        return np.clip(np.asarray(features, np.float64) @ self.theta, 0.0, 1.0)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """UCB score of each candidate row."""
        x = np.asarray(features, np.float64)
        theta, a_inv = self._solved()
        width = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, a_inv, x), 0.0))
        return x @ theta + self.config.alpha * width

    # ------------------------------------------------------------------ choosing
    def slot_distribution(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """Probability of each candidate for the next slot, given which ones are still available."""
        s = np.asarray(scores, np.float64)
        avail = np.asarray(available, bool)
        p = np.zeros(len(s))
        n_avail = int(avail.sum())
        if n_avail == 0:
            return p
        if self.config.exploration == "softmax":
            z = s[avail] / self.config.temperature
            e = np.exp(z - z.max())
            p[avail] = e / e.sum()
        else:
            eps = self.config.epsilon
            p[avail] = eps / n_avail
            idx = np.flatnonzero(avail)
            # Stable: among equal scores the better base-ranked candidate (earlier in the pool) wins.
            p[idx[int(np.argmax(s[avail]))]] += 1.0 - eps
        return p

    def rank(
        self,
        candidates: Sequence[Any] | np.ndarray,
        features: np.ndarray,
        rng: np.random.Generator | None,
        k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fill up to k slots from `candidates` (rows of `features`, best base score first).

        Returns (order, propensities): indices into `candidates` in slot order, and for each the exact
        probability that this policy chose it for its slot given the slots above. With `rng=None` every
        slot takes its most probable item (for replays and tests); the propensity is still the policy's.
        """
        n = len(candidates)
        x = np.asarray(features, np.float64)
        if x.shape != (n, self.space.dim):
            raise ValueError(f"features must be ({n}, {self.space.dim}) for {n} candidates (got {x.shape})")
        k = n if k is None else min(k, n)
        s = self.scores(x)
        available = np.ones(n, bool)
        order: list[int] = []
        props: list[float] = []
        for _ in range(k):
            p = self.slot_distribution(s, available)
            if rng is None:
                choice = int(np.argmax(p))
            else:
                choice = int(rng.choice(n, p=p / p.sum()))
            order.append(choice)
            props.append(float(p[choice]))
            available[choice] = False
        return np.asarray(order, np.int64), np.asarray(props, np.float64)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        from recloop import __version__

        arrays = {"A": self.A, "b": self.b, **self.space.arrays()}
        manifest = {
            "type": self.type_name,
            "format_version": POLICY_FORMAT_VERSION,
            "recloop_version": __version__,
            "config": self.config.model_dump(mode="json"),
            "n_updates": self.n_updates,
            "features": self.space.meta(),
        }
        return POLICY_BUNDLE.save(path, manifest, arrays)

    @classmethod
    def load(cls, path: str | Path) -> LinUCBPolicy:
        from recloop.errors import ArtifactError

        path = Path(path)
        manifest = POLICY_BUNDLE.read_manifest(path)
        if manifest.get("type") != cls.type_name or manifest.get("format_version") != POLICY_FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: a {manifest.get('type')} policy in format {manifest.get('format_version')} "
                f"cannot be read (this recloop reads {cls.type_name} format {POLICY_FORMAT_VERSION})"
            )
        arrays = POLICY_BUNDLE.read_arrays(path)
        try:
            space = FeatureSpace.restore(manifest["features"], arrays)
        except Exception as exc:  # noqa: BLE001 - arrays that do not match the manifest's feature layout
            raise POLICY_BUNDLE.unreadable(path, exc) from None
        policy = cls(PolicyConfig.model_validate(manifest["config"]), space)
        d = space.dim
        if arrays["A"].shape != (d, d) or arrays["b"].shape != (d,):
            raise ArtifactError(f"{path}: A/b shapes {arrays['A'].shape}/{arrays['b'].shape} do not fit {d} features")
        policy.A = np.asarray(arrays["A"], np.float64)
        policy.b = np.asarray(arrays["b"], np.float64)
        policy.n_updates = int(manifest.get("n_updates", 0))
        return policy
