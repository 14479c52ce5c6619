"""The main job: run the training graph's steps in order, in-process.

Every step of `recloop.steps.graph.TRAINING`, in the order it declares (per-candidate steps once per
candidate), through `execute_step`, so a re-run with the same run id resumes
after the last committed step. An unblessed candidate ends the run green with publish skipped and the
reasons reported; `dry_run` skips publish too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from recloop.artifacts import Manifest
from recloop.artifacts.kinds import Blessing, Evaluation
from recloop.steps.base import StepContext, execute_step
from recloop.steps.graph import TRAINING

TRAINING_STEPS: tuple[str, ...] = TRAINING.names


@dataclass
class StepOutcome:
    step: str  # the step, or "step candidate" for one candidate of a per-candidate step
    status: str  # "done", "reused", "skipped"
    seconds: float
    manifest: Manifest | None = None
    note: str = ""


@dataclass
class PipelineResult:
    run_id: str
    steps: list[StepOutcome] = field(default_factory=list)
    blessing: dict | None = None
    metrics: dict | None = None
    published_version: int | None = None

    @property
    def outcome(self) -> dict[str, StepOutcome]:
        return {s.step: s for s in self.steps}


def run_pipeline(
    ctx: StepContext, steps: tuple[str, ...] = TRAINING_STEPS, on_step: Callable[[str, str], None] | None = None
) -> PipelineResult:
    """Run `steps` in order for `ctx.run_id` (per-candidate steps once per candidate); stop (raise) at
    the first failing step."""
    result = PipelineResult(run_id=ctx.run_id)
    report = on_step or (lambda name, status: None)
    for name in steps:
        step = TRAINING[name]
        if name == "publish":
            skip = _publish_skip_reason(ctx, result)
            if skip:
                result.steps.append(StepOutcome(name, "skipped", 0.0, note=skip))
                report(name, f"skipped: {skip}")
                continue
        for candidate in [m.candidate_name for m in ctx.candidates] if step.per_candidate else [None]:
            label = f"{name} {candidate}" if candidate else name
            report(label, "running")
            start = time.perf_counter()
            outcome = execute_step(step, ctx, candidate=candidate)
            result.steps.append(
                StepOutcome(
                    label, "reused" if outcome.reused else "done", time.perf_counter() - start, outcome.manifest
                )
            )
            report(label, result.steps[-1].status)
        manifest = result.steps[-1].manifest
        assert manifest is not None
        if name == "evaluate":
            result.metrics = ctx.open(manifest.uri).read_json(Evaluation.METRICS)
        elif name == "gate":
            result.blessing = ctx.open(manifest.uri).read_json(Blessing.BLESSING)
        elif name == "publish":
            result.published_version = manifest.summary.get("version")
    return result


def _publish_skip_reason(ctx: StepContext, result: PipelineResult) -> str | None:
    if ctx.params.dry_run:
        return "dry run: everything but publish"
    blessing = result.blessing
    if blessing is not None and blessing.get("decision") != "blessed":
        reasons = "; ".join(blessing.get("reasons", [])) or "no candidate passed the gate"
        return f"not blessed: {reasons}"
    return None
