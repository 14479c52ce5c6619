"""Gate step: read evaluate's metrics.json, apply `gate:` thresholds, write blessing.json.

The step succeeds whether the decision is `blessed` or `rejected`: the decision is data (publish refuses a
rejection; the DAG can branch on the manifest summary's `decision`). It fails only when its input is not
a usable evaluate artifact.

blessing.json: decision, candidate, model_type, model_name, run_id, evaluate_uri, bundle_uri,
split_fingerprint, primary_metric, primary_value, thresholds [{metric, kind, required, value, passed,
detail}] of the chosen candidate, champion_version, champion_evaluated, reasons, every candidate's
verdict, and the gate settings used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from recloop.artifacts import Manifest
from recloop.artifacts.kinds import Blessing, Evaluation
from recloop.errors import ArtifactError
from recloop.steps.base import StepContext


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    from recloop.evaluation.gate import judge

    evaluate = ctx.open(inputs["evaluate"])
    try:
        doc = evaluate.read_json(Evaluation.METRICS)
    except ValueError as exc:
        raise ArtifactError(f"{evaluate.uri}/{Evaluation.METRICS} is not valid JSON ({exc}); re-run evaluate") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), dict) or not doc.get("split_fingerprint"):
        raise ArtifactError(
            f"{evaluate.uri}/{Evaluation.METRICS} is not an evaluate report (no candidates or split "
            "fingerprint); point gate at the evaluate step's output and re-run evaluate"
        )
    primary = ctx.config.evaluation.primary
    if doc.get("primary") not in (None, primary):
        ctx.log(f"gate: {Evaluation.METRICS} ranked candidates by {doc['primary']}; this config's primary is {primary}")
    decision = judge(doc, ctx.config.gate, primary)
    chosen = decision.chosen
    candidate_block = (doc["candidates"].get(decision.candidate) or {}) if decision.candidate else {}
    blessing: dict[str, Any] = {
        "decision": decision.decision,
        "candidate": decision.candidate,
        "model_type": chosen.model_type if chosen else None,
        "model_name": ctx.config.model_name,
        "run_id": ctx.run_id,
        "evaluate_uri": evaluate.uri,
        "bundle_uri": candidate_block.get("bundle_uri"),
        "split": doc.get("split"),
        "split_fingerprint": doc["split_fingerprint"],
        "primary_metric": primary,
        "primary_value": chosen.primary_value if chosen else None,
        "thresholds": [t.to_json() for t in chosen.thresholds] if chosen else [],
        "champion_version": decision.champion_version,
        "champion_evaluated": decision.champion_evaluated,
        "reasons": decision.reasons,
        "candidates": {name: v.to_json() for name, v in decision.verdicts.items()},
        "gate": ctx.config.gate.model_dump(mode="json"),
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with ctx.writer(output, parents=[evaluate.uri]) as writer:
        writer.put_json(Blessing.BLESSING, blessing)
        writer.summary.update(
            {
                k: blessing[k]
                for k in (
                    "decision",
                    "candidate",
                    "model_type",
                    "primary_metric",
                    "primary_value",
                    "champion_version",
                    "split_fingerprint",
                )
            }
        )
        writer.summary["reasons"] = decision.reasons[:5]
    verb = "BLESSED" if decision.decision == "blessed" else "REJECTED"
    ctx.log(f"gate: {verb} {decision.candidate or ''}".rstrip())
    for reason in decision.reasons:
        ctx.log(f"gate:   - {reason}")
    return writer.manifest
