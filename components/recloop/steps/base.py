"""The step contract: `run(ctx, inputs, output) -> Manifest` over artifact locations.

Each step module under `recloop.steps` defines `SPEC` (its name, inputs and description) and `run`.
`inputs` maps an input role (the upstream step's name) to an artifact URI; `output` is the URI the
step commits its artifact to. The runner (`run_step`) fills both from the run layout
`{root}/runs/{run_id}/{step}` and skips a step whose artifact is already committed (idempotent resume).
The CLI (`recloop step NAME`) and the Airflow tasks are thin wrappers around `run_step`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Protocol

from recloop.artifacts import MANIFEST, Artifact, Manifest, run_prefix
from recloop.errors import ArtifactError

if TYPE_CHECKING:
    from recloop.config import PipelineConfig
    from recloop.store import ArtifactStore

log = logging.getLogger("recloop")


@dataclass(frozen=True)
class StepSpec:
    name: str
    inputs: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class RunParams:
    """Typed run parameters (CLI flags, Airflow `Param`s)."""

    since: datetime | None = None  # ingest only events after this (overrides data.since)
    models: tuple[str, ...] | None = None  # candidate names to train; None = all in config
    dry_run: bool = False  # everything but publish
    force: bool = False  # recompute even when a committed artifact exists


class Progress(Protocol):
    def __call__(self, description: str, total: float | None = None) -> Callable[[float], None]: ...


def _no_progress(description: str, total: float | None = None) -> Callable[[float], None]:
    return lambda advance=1.0: None


@dataclass
class StepContext:
    config: PipelineConfig
    store: ArtifactStore
    run_id: str
    params: RunParams = RunParams()
    log: Callable[[str], None] = log.info
    # progress(description, total) -> advance(n); the CLI plugs rich progress bars in here.
    progress: Progress = field(default=_no_progress)
    # Set by run_step while a step runs; recorded in the manifest by `writer` (see reuse_key()).
    reuse_key: str | None = field(default=None, repr=False)

    def key(self, uri: str) -> str:
        """Store key for a URI under this store's root (inputs arrive as URIs)."""
        root = self.store.root.rstrip("/") + "/"
        if uri.startswith(root):
            return uri[len(root):]
        if "://" in uri:
            raise ArtifactError(f"{uri} is outside the configured store root {self.store.root}")
        return uri.strip("/")

    def open(self, uri: str) -> Artifact:
        return Artifact.open(self.store, self.key(uri))

    def writer(self, output: str, parents: list[str] | None = None):
        from recloop.artifacts import ArtifactWriter

        spec_step = self.key(output).rsplit("/", 1)[-1]
        return ArtifactWriter(self.store, self.key(output), step=spec_step, run_id=self.run_id,
                              config_hash=self.config.config_hash(), parents=parents, reuse_key=self.reuse_key)


StepRun = Callable[[StepContext, dict[str, str], str], Manifest]

# The training pipeline in order. A step's default inputs are the outputs of the steps it names.
STEP_MODULES: dict[str, str] = {
    "ingest": "recloop.steps.ingest",
    "validate": "recloop.steps.validate",
    "preprocess": "recloop.steps.preprocess",
    "train": "recloop.steps.train",
    "evaluate": "recloop.steps.evaluate",
    "gate": "recloop.steps.gate",
    "publish": "recloop.steps.publish",
}
# Steps outside the training order (the feedback DAG runs them on their own schedule).
LOOP_STEP_MODULES: dict[str, str] = {
    "feedback": "recloop.steps.feedback",
}


def load_step(name: str) -> tuple[StepSpec, StepRun]:
    modules = {**STEP_MODULES, **LOOP_STEP_MODULES}
    if name not in modules:
        raise KeyError(f"unknown step {name!r}; steps: {', '.join(modules)}")
    module = importlib.import_module(modules[name])
    return module.SPEC, module.run


def default_inputs(ctx: StepContext, spec: StepSpec) -> dict[str, str]:
    return {dep: ctx.store.uri(run_prefix(ctx.run_id, dep)) for dep in spec.inputs}


def reuse_key(ctx: StepContext, inputs: dict[str, str]) -> str:
    """Fingerprint of a step's run params and the exact input artifacts it reads.

    A committed artifact is reused only when this and the config hash both match, so re-running an
    upstream step (new manifest) or changing `--since`/`--model`/`--dry-run` recomputes downstream.
    """
    digests: dict[str, str | None] = {}
    for role, uri in sorted(inputs.items()):
        try:
            digests[role] = hashlib.sha256(ctx.store.get_bytes(f"{ctx.key(uri)}/{MANIFEST}")).hexdigest()
        except FileNotFoundError:
            digests[role] = None  # the step itself reports the missing input
    params = {
        "since": ctx.params.since.isoformat() if ctx.params.since else None,
        "models": sorted(ctx.params.models) if ctx.params.models is not None else None,
        "dry_run": ctx.params.dry_run,
    }
    payload = json.dumps({"params": params, "inputs": digests}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def run_step(name: str, ctx: StepContext, inputs: dict[str, str] | None = None,
             output: str | None = None) -> Manifest:
    """Run one step (or reuse its committed artifact) and return its manifest."""
    spec, run = load_step(name)
    inputs = default_inputs(ctx, spec) if inputs is None else inputs
    output = output or ctx.store.uri(run_prefix(ctx.run_id, name))
    key = reuse_key(ctx, inputs)
    if not ctx.params.force and Artifact.exists(ctx.store, ctx.key(output)):
        manifest = ctx.open(output).manifest
        if manifest.config_hash != ctx.config.config_hash():
            ctx.log(f"{name}: committed artifact {output} was made with another config; recomputing")
        elif manifest.reuse_key != key:
            ctx.log(f"{name}: committed artifact {output} was made from other inputs or run parameters; recomputing")
        else:
            ctx.log(f"{name}: reusing committed artifact {output}")
            return manifest
    previous, ctx.reuse_key = ctx.reuse_key, key
    try:
        return run(ctx, inputs, output)
    finally:
        ctx.reuse_key = previous
