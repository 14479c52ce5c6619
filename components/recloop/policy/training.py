"""Training a bandit policy from impression logs, evaluating it off-policy, and the policy alias.

Impression logs hold what was shown (items, base scores, propensities) but not the candidate pool the
slate was drawn from. The pool is reconstructed from the logged model version: the version's bundle scores
the user's training history (what serving does for a known user), and the top `policy.candidates` items
not seen before form the pool. Requests that cannot be reconstructed (anonymous users, histories posted
with the request (the logged history length differs from the training history), fallback slates, versions
no longer in the registry) are left out of training and evaluation and counted.

Each logged slot then yields one decision: its features, the logged reward and propensity, and (for any
candidate policy) the candidate's probability of the same item in that slot given the logged slots above.
This is the usual slot-level assumption: an item's reward depends on the user and the item, not on what
else is on the slate.

Procedure: the newest `holdout_share` of the requests is held out; a candidate fitted on the older part
(warm-started from the production policy when its features have the same layout) is evaluated on the
holdout with IPS / SNIPS / DR against the logging policy's on-policy value; if it passes `policy.gate` it
is updated with the holdout too, saved, and the alias `policies/{model}/production.json` is moved to it
(compare-and-swap on the version read at the start, so two writers never overwrite each other unseen).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.artifacts.kinds import FeedbackBatch, RegisteredModel
from recloop.config import PolicyConfig
from recloop.errors import ConflictError
from recloop.evaluation.ope import GateDecision, LoggedDecisions, OffPolicyReport, estimate, policy_gate
from recloop.policy.bandit import LinUCBPolicy
from recloop.policy.features import FeatureSpace

if TYPE_CHECKING:
    import pandas as pd

    from recloop.models.base import Recommender
    from recloop.store import ArtifactStore

POLICIES_PREFIX = "policies"
POLICY_ALIAS = "production.json"


# ---------------------------------------------------------------------------------------------- base model


@dataclass
class BaseVersion:
    """A registry version of the base model, loaded to reconstruct candidate pools."""

    version: int
    model: Recommender
    user_index: dict[str, int]
    item_ids: np.ndarray  # raw item id (str) of each contiguous item id
    item_categories: list[list[str]] | None

    def interaction_counts(self) -> np.ndarray:
        h = self.model.train_histories
        assert h is not None
        return np.bincount(h.items.astype(np.int64), minlength=self.model.n_items)


def load_base_version(store: ArtifactStore, model_name: str, version: int, work_dir: Path) -> BaseVersion:
    """Download (verified) and load one registered version with its id maps and item categories."""
    from recloop.artifacts import Artifact
    from recloop.errors import ArtifactError
    from recloop.models.base import Recommender
    from recloop.registry import ModelRegistry

    registry = ModelRegistry(store, model_name)
    prefix = registry.version_prefix(version)
    if not Artifact.exists(store, prefix):
        raise ArtifactError(f"model {model_name!r} has no version {version} in {registry.uri}")
    art = RegisteredModel.open(store, prefix)
    local = work_dir / f"v{version}"
    model = Recommender.load(art.download_bundle(local / RegisteredModel.BUNDLE))
    users, items = art.user_ids(), art.item_ids()
    if users is None or items is None:
        raise ArtifactError(f"{art.uri} has no id maps; it cannot be matched with logged user and item ids")
    items = items.sort_values("item_idx")
    item_ids = np.empty(model.n_items, dtype=object)
    item_ids[:] = [str(i) for i in range(model.n_items)]
    item_ids[items["item_idx"].to_numpy(np.int64)] = items["item_id"].astype(str).to_numpy()
    categories: list[list[str]] | None = None
    side = art.items()
    if side is not None:
        if "categories" in side.columns:
            categories = [[] for _ in range(model.n_items)]
            for idx, cats in zip(side["item_idx"].to_numpy(np.int64), side["categories"]):
                if 0 <= idx < model.n_items and cats is not None:
                    categories[idx] = [str(c) for c in cats]
    user_index = dict(zip(users["user_id"].astype(str), users["user_idx"].astype(int)))
    return BaseVersion(version, model, user_index, item_ids, categories)


@dataclass
class Pool:
    """A request's candidate pool: raw item ids, best base score first, and those scores."""

    items: np.ndarray
    scores: np.ndarray
    history_length: int  # the training history the pool was computed from


def candidate_pools(
    base: BaseVersion, user_ids: Sequence[str], size: int, excluded_items: Sequence[str] = ()
) -> dict[str, Pool]:
    """The top `size` unseen items of each known user under `base` (unknown users are skipped)."""
    known = [(u, base.user_index[u]) for u in dict.fromkeys(user_ids) if u in base.user_index]
    if not known:
        return {}
    candidates = None
    if excluded_items:
        blocked = set(excluded_items)
        candidates = np.array([i for i, item in enumerate(base.item_ids) if item not in blocked], np.int64)
    recs = base.model.recommend(
        users=np.array([idx for _, idx in known], np.int64), k=size, exclude_seen=True, candidates=candidates
    )
    lengths = base.model.fitted_histories().lengths()
    pools = {}
    for row, (user, idx) in enumerate(known):
        ok = (recs.ids[row] >= 0) & np.isfinite(recs.scores[row])
        pools[user] = Pool(base.item_ids[recs.ids[row][ok]], recs.scores[row][ok].astype(np.float64), int(lengths[idx]))
    return pools


def feature_space_for(base: BaseVersion, config: PolicyConfig) -> FeatureSpace:
    return FeatureSpace.build(list(base.item_ids), base.interaction_counts(), base.item_categories, config.categories)


# ---------------------------------------------------------------------------------------------- logged data


@dataclass
class LoggedImpression:
    """One logged slate with its reconstructed pool, as features."""

    request_id: str
    served_at: int  # epoch ms, for the time-ordered holdout
    pool_x: np.ndarray  # (P, d) features of the pool, best base score first
    shown_x: np.ndarray  # (S, d) features of the shown items, slot order
    shown_in_pool: np.ndarray  # (S,) index of each shown item in the pool, -1 if outside it
    rewards: np.ndarray  # (S,)
    propensities: np.ndarray  # (S,) logged


@dataclass
class BanditData:
    impressions: list[LoggedImpression]
    skipped: dict[str, int] = field(default_factory=dict)  # requests left out, by reason

    @property
    def n_slots(self) -> int:
        return int(sum(len(i.rewards) for i in self.impressions))


def build_bandit_data(slots: pd.DataFrame, pools: dict[tuple[int, str], Pool], space: FeatureSpace) -> BanditData:
    """Turn the feedback step's bandit log (one row per shown slot) into per-request features.

    `pools` maps (model_version, user_id) to the reconstructed pool.
    """
    skipped: dict[str, int] = {}
    out: list[LoggedImpression] = []
    for request_id, rows in slots.sort_values(["served_at", "request_id", "position"]).groupby(
        "request_id", sort=False
    ):
        first = rows.iloc[0]
        if first["fallback_reason"] is not None and not _isna(first["fallback_reason"]):
            reason = "fallback_slate"
        elif _isna(first["user_id"]):
            reason = "no_user"
        else:
            reason = None
        pool = None
        if reason is None:
            pool = pools.get((int(first["model_version"]), str(first["user_id"])))
            if pool is None:
                reason = "no_pool"
        hist = int(first["history_length"]) if not _isna(first["history_length"]) else -1
        if reason is None and pool is not None and hist != pool.history_length:
            reason = "posted_history"  # scored from a history sent with the request: its pool is unknown
        if reason is not None or pool is None or not len(pool.items):
            key = reason or "empty_pool"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        where = {item: j for j, item in enumerate(pool.items)}
        items = rows["item_id"].astype(str).to_numpy()
        scores = rows["score"].to_numpy(np.float64)
        out.append(
            LoggedImpression(
                request_id=str(request_id),
                served_at=int(first["served_at"].value // 1_000_000) if hasattr(first["served_at"], "value") else 0,
                pool_x=space.features(pool.items, pool.scores, hist),
                shown_x=space.features(items, scores, hist, reference_scores=pool.scores),
                shown_in_pool=np.array([where.get(i, -1) for i in items], np.int64),
                rewards=rows["reward"].to_numpy(np.float64),
                propensities=rows["propensity"].to_numpy(np.float64),
            )
        )
    return BanditData(out, skipped)


def _isna(value: Any) -> bool:
    try:
        return value is None or bool(value != value)  # NaN / NaT
    except (TypeError, ValueError):
        return False


def decisions_for(policy: LinUCBPolicy, impressions: Sequence[LoggedImpression]) -> LoggedDecisions:
    """The candidate's probability of each logged action (given the logged slots above) and DR terms."""
    rewards, logged, target, q_logged, q_target, group = [], [], [], [], [], []
    for g, imp in enumerate(impressions):
        s_pool = policy.scores(imp.pool_x)
        q_pool = policy.predict_reward(imp.pool_x)
        q_shown = policy.predict_reward(imp.shown_x)
        available = np.ones(len(imp.pool_x), bool)
        for t, idx in enumerate(imp.shown_in_pool):
            p = policy.slot_distribution(s_pool, available)
            target.append(float(p[idx]) if idx >= 0 else 0.0)
            q_target.append(float(p @ q_pool))
            q_logged.append(float(q_shown[t]))
            rewards.append(float(imp.rewards[t]))
            logged.append(float(imp.propensities[t]))
            group.append(g)
            if idx >= 0:
                available[idx] = False
    return LoggedDecisions(
        np.asarray(rewards),
        np.asarray(logged),
        np.asarray(target),
        np.asarray(q_logged),
        np.asarray(q_target),
        np.asarray(group, np.int64),
    )


def fit(policy: LinUCBPolicy, impressions: Sequence[LoggedImpression]) -> LinUCBPolicy:
    if impressions:
        policy.update(np.vstack([i.shown_x for i in impressions]), np.concatenate([i.rewards for i in impressions]))
    return policy


@dataclass
class PolicyOutcome:
    policy: LinUCBPolicy
    report: OffPolicyReport
    gate: GateDecision
    n_fit_slots: int
    n_holdout_slots: int
    warm_started: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "decision": "blessed" if self.gate.passed else "rejected",
            "gate": self.gate.to_dict(),
            "ope": self.report.to_dict(),
            "fit_slots": self.n_fit_slots,
            "holdout_slots": self.n_holdout_slots,
            "warm_started": self.warm_started,
            "features": self.policy.space.names,
            "theta": [float(v) for v in self.policy.theta],
        }


def train_and_evaluate(
    config: PolicyConfig, data: BanditData, space: FeatureSpace, warm_start: LinUCBPolicy | None = None
) -> PolicyOutcome:
    """Fit on the older requests, evaluate on the newest `holdout_share`, then (if it passes) fit on all."""
    ordered = sorted(data.impressions, key=lambda i: (i.served_at, i.request_id))
    n_hold = max(1, math.ceil(config.holdout_share * len(ordered))) if len(ordered) > 1 else 0
    fit_part, holdout = ordered[: len(ordered) - n_hold], ordered[len(ordered) - n_hold :]
    candidate = LinUCBPolicy(config, space)
    warm = warm_start is not None and warm_start.space.names == space.names
    if warm:
        assert warm_start is not None
        candidate.A, candidate.b = warm_start.A.copy(), warm_start.b.copy()
        candidate.n_updates = warm_start.n_updates
    fit(candidate, fit_part)
    gate_cfg = config.gate
    report = estimate(
        decisions_for(candidate, holdout),
        bootstrap=gate_cfg.bootstrap,
        confidence=gate_cfg.confidence,
        max_weight=gate_cfg.max_weight,
        min_lift=gate_cfg.min_lift,
        seed=config.seed,
    )
    decision = policy_gate(report, gate_cfg.estimator, gate_cfg.use_lower_bound)
    if decision.passed:
        fit(candidate, holdout)
    return PolicyOutcome(
        candidate,
        report,
        decision,
        int(sum(len(i.rewards) for i in fit_part)),
        int(sum(len(i.rewards) for i in holdout)),
        warm,
    )


# ---------------------------------------------------------------------------------------------- alias


def alias_key(model_name: str) -> str:
    return f"{POLICIES_PREFIX}/{model_name}/{POLICY_ALIAS}"


def read_policy_alias(store: ArtifactStore, model_name: str) -> tuple[dict[str, Any] | None, str | None]:
    """(alias, etag) of the production policy; (None, None) when none was published."""
    from recloop.errors import ArtifactError

    key = alias_key(model_name)
    info = store.stat(key)
    if info is None:
        return None, None
    try:
        alias = json.loads(store.get_bytes(key))
    except FileNotFoundError:
        return None, None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{store.uri(key)} is corrupt ({exc}); delete it to fall back to the model's own "
            "ranking, then re-run the feedback step"
        ) from None
    return alias, info.etag


def promote_policy(
    store: ArtifactStore,
    model_name: str,
    artifact_uri: str,
    run_id: str,
    outcome: PolicyOutcome,
    expected_etag: str | None,
) -> dict[str, Any]:
    """Point the policy alias at `{artifact_uri}/policy`, if it is still the alias read before training."""
    previous, _ = read_policy_alias(store, model_name)
    alias = {
        "artifact": artifact_uri,
        "folder": FeedbackBatch.POLICY,
        "run_id": run_id,
        "policy": outcome.policy.name,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous_run_id": (previous or {}).get("run_id"),
        "gate": outcome.gate.to_dict(),
    }
    try:
        store.put_if_match(alias_key(model_name), json.dumps(alias, indent=2, sort_keys=True).encode(), expected_etag)
    except ConflictError:
        raise ConflictError(
            f"the policy alias {store.uri(alias_key(model_name))} changed while this feedback run "
            "trained its policy (another run published one); re-run the feedback step"
        ) from None
    return alias


def load_production_policy(store: ArtifactStore, model_name: str, work_dir: Path) -> LinUCBPolicy | None:
    """The published policy of `model_name`, or None when there is none."""
    from recloop.artifacts import Artifact

    alias, _ = read_policy_alias(store, model_name)
    if alias is None:
        return None
    root = store.root.rstrip("/") + "/"
    uri = str(alias["artifact"])
    key = uri[len(root) :] if uri.startswith(root) else uri
    art = Artifact.open(store, key)
    folder = str(alias.get("folder", FeedbackBatch.POLICY))
    return LinUCBPolicy.load(art.download_dir(folder, work_dir / FeedbackBatch.POLICY))
