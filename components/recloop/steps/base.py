"""The step contract and its one runner: `run_step(name, ctx)` over artifact locations.

Each step module under `recloop.steps` defines `run(ctx, inputs, output) -> Manifest` (per-candidate steps
also take `candidate`); what it reads and writes is declared once in `recloop.steps.graph`. `inputs` maps
an input role (the upstream step's name) to an artifact URI; `output` is the URI the step commits its
artifact to. `run_step` fills both from the run layout `{root}/runs/{run_id}/{step}[/{candidate}]`,
checks every declared input once (for all steps alike), and reuses a step whose artifact is already
committed from the same config, run parameters and inputs (idempotent resume). The CLI (`recloop step
NAME`), the in-process pipeline and the Airflow tasks are thin wrappers around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from recloop.artifacts import MANIFEST, Artifact, Manifest, run_prefix
from recloop.errors import ArtifactError, ConfigError
from recloop.interrupts import interruptible
from recloop.steps.graph import Input, Step, find_step

if TYPE_CHECKING:
    from recloop.artifacts import ArtifactWriter
    from recloop.config import PipelineConfig
    from recloop.models.base import ModelConfig
    from recloop.store import ArtifactStore

_logger = logging.getLogger("recloop")


@dataclass(frozen=True)
class RunParams:
    """Typed run parameters (CLI flags, Airflow `Param`s)."""

    since: datetime | None = None  # ingest only events after this (overrides data.since)
    models: tuple[str, ...] | None = None  # candidate names to train; None = all in config
    dry_run: bool = False  # everything but publish
    force: bool = False  # recompute even when a committed artifact exists


class Progress(Protocol):
    def __call__(self, description: str, total: float | None = None, unit: str = "") -> Callable[[float], None]: ...


def _no_progress(description: str, total: float | None = None, unit: str = "") -> Callable[[float], None]:
    def advance(amount: float = 1.0) -> None:
        pass

    return advance


@dataclass
class StepContext:
    config: PipelineConfig
    store: ArtifactStore
    run_id: str
    params: RunParams = RunParams()
    log: Callable[[str], None] = _logger.info
    # progress(description, total) -> advance(n); the CLI plugs rich progress bars in here.
    progress: Progress = field(default=_no_progress)
    # Set by run_step while a step runs; recorded in the manifest by `writer` (see reuse_key()).
    reuse_key: str | None = field(default=None, repr=False)
    # The step run_step is running; `writer` records it in the manifest.
    step_name: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig,
        run_id: str,
        params: RunParams | None = None,
        log: Callable[[str], None] | None = None,
        progress: Progress | None = None,
    ) -> StepContext:
        """The context of one run of `config`, on the store the config names."""
        from recloop.store import open_store

        return cls(
            config=config,
            store=open_store(config.store),
            run_id=run_id,
            params=params or RunParams(),
            log=log or _logger.info,
            progress=progress or _no_progress,
        )

    def key(self, uri: str) -> str:
        """Store key for a URI under this store's root (inputs arrive as URIs)."""
        root = self.store.root.rstrip("/") + "/"
        if uri.startswith(root):
            return uri[len(root) :]
        if "://" in uri:
            raise ArtifactError(f"{uri} is outside the configured store root {self.store.root}")
        return uri.strip("/")

    def open(self, uri: str) -> Artifact:
        return Artifact.open(self.store, self.key(uri))

    def writer(self, output: str, parents: list[str] | None = None) -> ArtifactWriter:
        from recloop.artifacts import ArtifactWriter

        key = self.key(output)
        return ArtifactWriter(
            self.store,
            key,
            step=self.step_name or key.rsplit("/", 1)[-1],
            run_id=self.run_id,
            config_hash=self.config.config_hash(),
            parents=parents,
            reuse_key=self.reuse_key,
        )

    @property
    def candidates(self) -> list[ModelConfig]:
        """The candidate models of this run: `config.models`, or those named in `params.models`."""
        return select_candidates(self.config.models, self.params.models, self.config.source)

    def candidate_uris(self, folder: str) -> dict[str, str]:
        """{candidate: artifact URI} of the candidates committed in a per-candidate folder (e.g. a run's
        `train/`), in config order: those `params.models` selects, else every configured one (a folder
        may still hold a candidate an earlier config of the run had; it is not this run's)."""
        prefix = self.key(folder)
        names = {k[len(prefix) + 1 :].split("/", 1)[0] for k in self.store.list(prefix) if k.endswith("/" + MANIFEST)}
        configured = _configured_names(self.config)
        if self.params.models is not None:
            names &= set(self.params.models)
        elif configured:
            names &= set(configured)
        order = {name: i for i, name in enumerate(configured)}
        return {
            name: f"{folder.rstrip('/')}/{name}" for name in sorted(names, key=lambda n: (order.get(n, len(order)), n))
        }


def _configured_names(config: PipelineConfig) -> list[str]:
    return [m.candidate_name for m in config.models]


def select_candidates(models: Sequence[ModelConfig], names: Sequence[str] | None, source: str) -> list[ModelConfig]:
    """The configured candidates, or those named in `names` (config order kept)."""
    if not models:
        raise ConfigError(
            source,
            [
                "models: no candidate models are configured; add at least one, e.g. "
                "`models: [{type: popularity}, {type: ease, lambda: 200}]`"
            ],
        )
    configured = [m.candidate_name for m in models]
    if not names:
        return list(models)
    unknown = [n for n in names if n not in configured]
    if unknown:
        raise ConfigError(
            source,
            [
                f"--models: unknown candidate(s) {', '.join(repr(n) for n in unknown)}; configured candidates: "
                f"{', '.join(configured)} (a candidate's name is its `name:`, else its `type:`)"
            ],
        )
    wanted = set(names)
    return [m for m in models if m.candidate_name in wanted]


# ------------------------------------------------------------------------------------------------ inputs


def step_output(ctx: StepContext, step: Step, candidate: str | None = None) -> str:
    """Where a step commits in this run's layout."""
    prefix = run_prefix(ctx.run_id, step.name)
    return ctx.store.uri(f"{prefix}/{candidate}" if step.per_candidate and candidate else prefix)


def resolve_inputs(
    ctx: StepContext, step: Step, given: dict[str, str] | None = None, candidate: str | None = None
) -> dict[str, str]:
    """Every declared input role's URI: `given` ones, the rest from this run's layout (a `same_candidate`
    input: `candidate`'s artifact); an optional input with nothing committed is left out. Raises
    ArtifactError naming each missing required input."""
    given = {role: uri.rstrip("/") for role, uri in (given or {}).items()}
    unknown = sorted(set(given) - set(step.inputs))
    if unknown:
        raise ArtifactError(
            f"{step.name} has no input {', '.join(map(repr, unknown))}; its inputs: {', '.join(step.inputs) or 'none'}"
        )
    resolved: dict[str, str] = {}
    problems: list[str] = []
    for role, channel in step.inputs.items():
        layout = run_prefix(ctx.run_id, role) + (f"/{candidate}" if channel.same_candidate and candidate else "")
        uri = given.get(role) or ctx.store.uri(layout)
        missing = (
            _missing_candidates(ctx, uri) if channel.many else [] if Artifact.exists(ctx.store, ctx.key(uri)) else [uri]
        )
        if missing and channel.optional:
            ctx.log(f"{step.name}: optional input {role} has no committed artifact at {uri}; running without it")
            continue
        problems += [_missing_input(role, channel, m) for m in missing]
        resolved[role] = uri
    if problems:
        raise ArtifactError(f"{step.name} cannot run: " + "; ".join(problems))
    return resolved


def _missing_candidates(ctx: StepContext, folder: str) -> list[str]:
    """The selected candidates (`params.models`) without a committed artifact in `folder`; with no
    selection, the folder itself when it holds none."""
    present = ctx.candidate_uris(folder)
    if ctx.params.models is None:
        return [] if present else [folder]
    return [f"{folder.rstrip('/')}/{name}" for name in ctx.params.models if name not in present]


def _missing_input(role: str, channel: Input, uri: str) -> str:
    if channel.many and uri.rstrip("/").endswith(f"/{role}"):
        what = (
            f"{uri} holds no committed {channel.kind.title} (no {uri}/NAME/{MANIFEST}); run "
            f"`recloop step {role}` with this run id first"
        )
    else:
        what = (
            f"{uri} has no {MANIFEST}: the step that writes it has not completed; run it first "
            f"(`recloop step {role}`{' --model NAME' if channel.many else ''} with this run id)"
        )
    return f"input {role!r} ({channel.kind.title}): {what}, or pass --input {role}=URI"


def reuse_key(ctx: StepContext, step: Step, inputs: dict[str, str], candidate: str | None = None) -> str:
    """Fingerprint of a step's run params and the exact input artifacts it reads.

    A committed artifact is reused only when this and the config hash both match, so re-running an
    upstream step (new manifest) or changing `--since`/`--model`/`--dry-run` recomputes downstream. A
    per-candidate step depends on its own candidate only, not on which others the run selected.
    """
    digests: dict[str, str | None] = {}
    for role, uri in sorted(inputs.items()):
        members = ctx.candidate_uris(uri) if step.inputs[role].many else {"": uri}
        for name, member in members.items():
            try:
                data = ctx.store.get_bytes(f"{ctx.key(member)}/{MANIFEST}")
                digests[f"{role}/{name}".rstrip("/")] = hashlib.sha256(data).hexdigest()
            except FileNotFoundError:
                digests[f"{role}/{name}".rstrip("/")] = None
    params = {
        "since": ctx.params.since.isoformat() if ctx.params.since else None,
        "models": (
            [candidate] if step.per_candidate else sorted(ctx.params.models) if ctx.params.models is not None else None
        ),
        "dry_run": ctx.params.dry_run,
    }
    payload = json.dumps({"params": params, "inputs": digests}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ runner


@dataclass(frozen=True)
class StepResult:
    manifest: Manifest
    reused: bool


def execute_step(
    step: str | Step,
    ctx: StepContext,
    inputs: dict[str, str] | None = None,
    output: str | None = None,
    candidate: str | None = None,
) -> StepResult:
    """Run one step (one candidate of a per-candidate step), or reuse its committed artifact."""
    spec = find_step(step) if isinstance(step, str) else step
    if spec.per_candidate:
        if not candidate:
            raise ValueError(f"step {spec.name} runs once per candidate; name the candidate")
        if candidate not in {m.candidate_name for m in ctx.candidates}:
            select_candidates(ctx.config.models, [candidate], ctx.config.source)  # names the configured ones
            raise ConfigError(
                ctx.config.source,
                [
                    f"--model: candidate {candidate!r} is not selected for this run "
                    f"(params.models: {', '.join(ctx.params.models or ())})"
                ],
            )
    run = spec.load()
    inputs = resolve_inputs(ctx, spec, inputs, candidate)
    output = output or step_output(ctx, spec, candidate)
    label = f"{spec.name} {candidate}" if candidate else spec.name
    key = reuse_key(ctx, spec, inputs, candidate)
    if not ctx.params.force and Artifact.exists(ctx.store, ctx.key(output)):
        manifest = ctx.open(output).manifest
        if manifest.config_hash != ctx.config.config_hash():
            ctx.log(f"{label}: committed artifact {output} was made with another config; recomputing")
        elif manifest.reuse_key != key:
            ctx.log(f"{label}: committed artifact {output} was made from other inputs or run parameters; recomputing")
        else:
            ctx.log(f"{label}: reusing committed artifact {output}")
            return StepResult(manifest, reused=True)
    previous = ctx.reuse_key, ctx.step_name
    ctx.reuse_key, ctx.step_name = key, spec.name
    try:
        with interruptible(f"step {label}", ctx.run_id):
            manifest = run(ctx, inputs, output, candidate) if spec.per_candidate else run(ctx, inputs, output)
    finally:
        ctx.reuse_key, ctx.step_name = previous
    return StepResult(manifest, reused=False)


def run_step(
    step: str | Step,
    ctx: StepContext,
    inputs: dict[str, str] | None = None,
    output: str | None = None,
    candidate: str | None = None,
) -> Manifest:
    """Run one step (or reuse its committed artifact) and return its manifest."""
    return execute_step(step, ctx, inputs, output, candidate).manifest
