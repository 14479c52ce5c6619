"""The main job: run the training loop's steps in order, in-process.

ingest → validate → preprocess → train → evaluate → gate → publish, through `run_step`, so a re-run with
the same run id resumes after the last committed step. An unblessed candidate ends the run green with
publish skipped and the reasons reported; `dry_run` skips publish too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from recloop.artifacts import Artifact, Manifest, run_prefix
from recloop.steps.base import STEP_MODULES, StepContext, run_step

TRAINING_STEPS: tuple[str, ...] = tuple(STEP_MODULES)


@dataclass
class StepOutcome:
    step: str
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


def run_pipeline(ctx: StepContext, steps: tuple[str, ...] = TRAINING_STEPS,
                 on_step: Callable[[str, str], None] | None = None) -> PipelineResult:
    """Run `steps` in order for `ctx.run_id`; stop (raise) at the first failing step."""
    result = PipelineResult(run_id=ctx.run_id)
    for name in steps:
        if name == "publish":
            skip = _publish_skip_reason(ctx, result)
            if skip:
                result.steps.append(StepOutcome(name, "skipped", 0.0, note=skip))
                if on_step:
                    on_step(name, f"skipped: {skip}")
                continue
        if on_step:
            on_step(name, "running")
        reused = _is_committed(ctx, name)
        start = time.perf_counter()
        manifest = run_step(name, ctx)
        seconds = time.perf_counter() - start
        outcome = StepOutcome(name, "reused" if reused else "done", seconds, manifest)
        result.steps.append(outcome)
        if name == "evaluate":
            result.metrics = ctx.open(manifest.uri).read_json("metrics.json")
        elif name == "gate":
            result.blessing = ctx.open(manifest.uri).read_json("blessing.json")
        elif name == "publish":
            result.published_version = manifest.summary.get("version")
        if on_step:
            on_step(name, outcome.status)
    return result


def _is_committed(ctx: StepContext, name: str) -> bool:
    """Whether run_step will reuse this step's artifact (same rule as run_step)."""
    prefix = run_prefix(ctx.run_id, name)
    if ctx.params.force or not Artifact.exists(ctx.store, prefix):
        return False
    return Artifact.open(ctx.store, prefix).manifest.config_hash == ctx.config.config_hash()


def _publish_skip_reason(ctx: StepContext, result: PipelineResult) -> str | None:
    if ctx.params.dry_run:
        return "dry run: everything but publish"
    blessing = result.blessing
    if blessing is not None and blessing.get("decision") != "blessed":
        reasons = "; ".join(blessing.get("reasons", [])) or "no candidate passed the gate"
        return f"not blessed: {reasons}"
    return None
