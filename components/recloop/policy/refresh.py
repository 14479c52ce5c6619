"""The feedback run's policy update: train the bandit policy on the run's logged slots, evaluate it
off-policy, write it into the feedback artifact, and (when it passes the gate) move the policy alias.

Called by the feedback step (policy.enabled); the pieces live in `recloop.policy.training`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from recloop.artifacts.kinds import FeedbackBatch
from recloop.policy import training

if TYPE_CHECKING:
    import pandas as pd

    from recloop.artifacts import ArtifactWriter
    from recloop.config import PipelineConfig
    from recloop.store import ArtifactStore


@dataclass
class PolicyRefresh:
    summary: dict[str, Any]  # the decision and why (report.json `policy`, the artifact summary)
    promote: Callable[[], Any] | None = None  # moves the alias; call just before the manifest commits


def _skipped(reason: str, **details: Any) -> PolicyRefresh:
    return PolicyRefresh({"decision": "skipped", **details, "reason": reason})


def refresh_policy(
    store: ArtifactStore,
    cfg: PipelineConfig,
    run_id: str,
    slots: pd.DataFrame,
    writer: ArtifactWriter,
    log: Callable[[str], None],
) -> PolicyRefresh:
    """Train, evaluate and maybe publish the bandit policy from `slots` (the feedback run's bandit log)."""
    model_name = cfg.serving.model_name or cfg.model_name
    recs = slots[slots["fallback_reason"].isna() & slots["user_id"].notna()]
    if len(slots) < cfg.policy.min_slots:
        return _skipped(
            f"{len(slots)} logged slots, fewer than policy.min_slots ({cfg.policy.min_slots}); the "
            "policy is trained once enough slates were served"
        )
    alias, etag = training.read_policy_alias(store, model_name)
    with tempfile.TemporaryDirectory(prefix="recloop-policy-") as tmp_name:
        tmp = Path(tmp_name)
        bases: dict[int, training.BaseVersion] = {}
        pools: dict[tuple[int, str], training.Pool] = {}
        missing_versions = []
        for key, rows in recs.groupby("model_version"):
            version = int(cast(int, key))  # model_version is an integer column of the recommendations log
            try:
                base = training.load_base_version(store, model_name, version, tmp)
            except Exception as exc:  # noqa: BLE001 - a version deleted from the registry only shrinks the log
                missing_versions.append({"version": version, "error": str(exc)})
                continue
            bases[version] = base
            found = training.candidate_pools(
                base, rows["user_id"].astype(str).tolist(), cfg.policy.candidates, cfg.serving.rules.excluded_items
            )
            pools.update({(version, user): pool for user, pool in found.items()})
        if not bases:
            return _skipped(
                "none of the logged model versions could be loaded from the registry "
                f"{model_name!r}: {missing_versions}"
            )
        newest = bases[max(bases)]
        space = training.feature_space_for(newest, cfg.policy)
        data = training.build_bandit_data(slots, pools, space)
        if data.n_slots < cfg.policy.min_slots:
            return _skipped(
                f"only {data.n_slots} logged slots have a reconstructable candidate pool (fewer "
                f"than policy.min_slots {cfg.policy.min_slots})",
                skipped_requests=data.skipped,
            )
        warm = None
        if alias is not None:
            try:
                warm = training.load_production_policy(store, model_name, tmp / "warm")
            except Exception as exc:  # noqa: BLE001 - a broken old policy must not block a new one
                log(f"feedback: the published policy cannot be loaded ({exc}); training from scratch")
        outcome = training.train_and_evaluate(cfg.policy, data, space, warm)
        details = {
            **outcome.to_dict(),
            "skipped_requests": data.skipped,
            "missing_versions": missing_versions,
            "pool_size": cfg.policy.candidates,
            "alias_key": training.alias_key(model_name) if outcome.gate.passed else None,
        }
        outcome.policy.save(tmp / FeedbackBatch.POLICY)
        writer.add_dir(FeedbackBatch.POLICY, tmp / FeedbackBatch.POLICY)
        writer.put_json(FeedbackBatch.POLICY_REPORT, details)
    promote = None
    if outcome.gate.passed:
        # Run last, just before the manifest commits, so the alias never names a folder still being written.
        def promote() -> Any:
            return training.promote_policy(store, model_name, writer.manifest.uri, run_id, outcome, etag)

    summary = {
        "decision": details["decision"],
        "estimator": outcome.gate.estimator,
        "candidate_value": outcome.gate.candidate_value,
        "logging_value": outcome.gate.logging_value,
        "reason": outcome.gate.reason,
    }
    log(f"feedback: policy {outcome.policy.name} {details['decision']}: {outcome.gate.reason}")
    return PolicyRefresh(summary, promote)
