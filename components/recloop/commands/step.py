"""`recloop step NAME`: run one pipeline step, the unit a container or an Airflow task executes.

One sub-command per step (`recloop step ingest --help` shows what that step reads and writes). Each
loads and validates the config once, builds a `StepContext` and calls `run_step`, which reuses the
step's committed artifact for this run id unless `--force`. Output: the artifact URI on stdout, then a
short summary (or, with `--json`, one JSON object: uri, step, run_id, summary).

Exit codes (via `recloop.cli.main`): 0 ok, 2 bad config or usage, 3 data failed validation or cannot
be read, 1 anything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    from rich.console import Console

    from recloop.artifacts import Manifest

app = typer.Typer(
    help="Run one pipeline step (reusing its committed artifact for the run id unless --force).",
    no_args_is_help=True,
)

# Progress bars appear only for work still going after this long (short steps stay quiet), and go when done.
PROGRESS_DELAY_S = 1.0

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Pipeline config YAML file.", show_default=False)]
RunIdOpt = Annotated[
    str,
    typer.Option(
        "--run-id",
        help="Run id: names the run folder runs/{run_id}/ and lets a re-run reuse committed steps.",
        show_default=False,
    ),
]
SinceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--since",
        metavar="ISO",
        help="Only events after this time, ISO-8601 (overrides data.since); a time without zone is UTC.",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even if the step's artifact is committed.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY.PATH=VALUE", help="Override a config value (parsed as YAML); repeatable."),
]
InputOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--input",
        metavar="ROLE=URI",
        help="Read input ROLE (an upstream step's name) from URI instead of runs/{run_id}/ROLE; repeatable.",
    ),
]
OutputOpt = Annotated[
    Optional[str],
    typer.Option("--output", metavar="URI", help="Commit the artifact here instead of runs/{run_id}/{step}."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object {uri, step, run_id, summary}.")]
ModelOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--model",
        "--models",
        metavar="NAME",
        help="Only these candidates (a candidate's `name:`, else its `type:`); repeatable. Default: every configured "
        "candidate. train commits one artifact per candidate.",
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="publish: check everything but do not publish.")]


class StepCommand(TyperCommand):
    """A step command whose help text comes from the step's SPEC, read only when help is shown."""

    @property
    def help(self) -> str:
        return step_help(self.name or "")

    @help.setter
    def help(self, value: str | None) -> None:
        pass

    @property
    def short_help(self) -> str:
        text = step_help(self.name or "", short=True)
        return text

    @short_help.setter
    def short_help(self, value: str | None) -> None:
        pass


def step_help(name: str, short: bool = False) -> str:
    """The step's description, inputs and output, from the step graph."""
    from recloop.steps.graph import find_step

    spec = find_step(name)
    if short:
        return spec.summary().rstrip(".")
    notes = f"\n\n{spec.notes.strip()}" if spec.notes else ""
    return (
        f"{spec.description.strip()}\n\n"
        f"Inputs (roles; default runs/{{run_id}}/ROLE, override with --input ROLE=URI): {spec.describe_inputs()}.\n\n"
        f"Output: {spec.describe_output()}; under store.root, committed by its _MANIFEST.json.{notes}"
    )


# -------------------------------------------------------------------------------------------- parsing


def parse_since(value: str | None) -> datetime | None:
    """ISO-8601 -> aware datetime (naive means UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO-8601 time; use e.g. 2024-05-01 or 2024-05-01T12:00:00+00:00", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_inputs(pairs: list[str] | None, allowed: tuple[str, ...], step: str) -> dict[str, str]:
    """['ingest=s3://b/runs/r/ingest'] -> {'ingest': 's3://...'}; roles must be the step's inputs."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        role, sep, uri = pair.partition("=")
        role, uri = role.strip(), uri.strip()
        if not sep or not role or not uri:
            raise typer.BadParameter(
                f"{pair!r}: expected ROLE=URI, e.g. ingest=s3://bucket/runs/r1/ingest", param_hint="--input"
            )
        if role not in allowed:
            expected = ", ".join(allowed) if allowed else f"none ({step} takes no inputs)"
            raise typer.BadParameter(
                f"{role!r} is not an input of {step}; its inputs: {expected}", param_hint="--input"
            )
        if role in out:
            raise typer.BadParameter(f"input {role!r} given twice", param_hint="--input")
        out[role] = uri.rstrip("/")
    return out


def check_run_id(run_id: str) -> str:
    from recloop.artifacts import safe_run_id

    try:
        safe_run_id(run_id)
    except ValueError:
        raise typer.BadParameter(
            f"{run_id!r} is not a usable run id; use letters, digits, '.', '_' or '-'", param_hint="--run-id"
        ) from None
    return run_id


# -------------------------------------------------------------------------------------------- output


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_result(console: Console, manifest: Manifest, seconds: float, reused: bool) -> None:
    """The artifact URI (alone on its line, for scripts) and a short summary."""
    console.print(manifest.uri, markup=False, highlight=False, soft_wrap=True)
    how = "reused committed artifact" if reused else f"committed in {seconds:.1f} s"
    console.print(
        f"{manifest.step} · run {manifest.run_id} · {how} · {len(manifest.files)} file(s)",
        markup=False,
        highlight=False,
        style="dim",
    )
    for key, value in manifest.summary.items():
        console.print(f"  {key}: {_short(value)}", markup=False, highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------------------------- commands


def run_one(
    name: str,
    config: Path,
    run_id: str,
    since: str | None,
    force: bool,
    set_: list[str] | None,
    inputs: list[str] | None,
    output: str | None,
    as_json: bool,
    models: list[str] | None = None,
    dry_run: bool = False,
) -> None:
    """Shared body of every step command."""
    from rich.console import Console

    from recloop import config as config_mod
    from recloop.console import ProgressBars
    from recloop.steps.base import RunParams, StepContext, execute_step
    from recloop.steps.graph import find_step

    check_run_id(run_id)
    since_at = parse_since(since)
    spec = find_step(name)
    input_uris = parse_inputs(inputs, tuple(spec.inputs), name)
    cfg = config_mod.load(config, set_ or [])

    out = Console()
    err = Console(stderr=True)
    params = RunParams(since=since_at, models=tuple(models) if models else None, dry_run=dry_run, force=force)

    def log(message: str) -> None:
        err.print(message, markup=False, highlight=False, soft_wrap=True)

    with ProgressBars(err, delay_s=PROGRESS_DELAY_S, hide_finished=True, time_remaining=True) as progress:
        ctx = StepContext.from_config(cfg, run_id, params, log=log, progress=progress)
        # A per-candidate step runs once for each selected candidate, each committing its own artifact.
        candidates = [m.candidate_name for m in ctx.candidates] if spec.per_candidate else [None]
        if output and len(candidates) > 1:
            raise typer.BadParameter(
                f"{name} commits one artifact per candidate; with --output name one candidate (--model NAME)",
                param_hint="--output",
            )
        for candidate in candidates:
            started = time.monotonic()
            # Roles not given are resolved from the run layout: a container may be handed just some URIs.
            result = execute_step(
                spec, ctx, inputs=input_uris, output=output.rstrip("/") if output else None, candidate=candidate
            )
            seconds = time.monotonic() - started
            if as_json:
                typer.echo(json.dumps(result.manifest.brief(), default=str, sort_keys=True))
            else:
                print_result(out, result.manifest, seconds, result.reused)


def add_step_command(name: str) -> None:
    """Register `recloop step NAME`; steps that train or read candidates take --model, publish --dry-run."""
    from recloop.steps.graph import find_step

    if any(c.name == name for c in app.registered_commands):
        return
    # One function per option set: typer reads the options from the signature.
    command: Callable[..., None]
    if name == "publish":

        def publish_command(
            config: ConfigOpt,
            run_id: RunIdOpt,
            model: ModelOpt = None,
            dry_run: DryRunOpt = False,
            since: SinceOpt = None,
            force: ForceOpt = False,
            set_: SetOpt = None,
            input_: InputOpt = None,
            output: OutputOpt = None,
            as_json: JsonOpt = False,
        ) -> None:
            run_one(name, config, run_id, since, force, set_, input_, output, as_json, models=model, dry_run=dry_run)

        command = publish_command
    elif find_step(name).reads_candidates:

        def candidates_command(
            config: ConfigOpt,
            run_id: RunIdOpt,
            model: ModelOpt = None,
            since: SinceOpt = None,
            force: ForceOpt = False,
            set_: SetOpt = None,
            input_: InputOpt = None,
            output: OutputOpt = None,
            as_json: JsonOpt = False,
        ) -> None:
            run_one(name, config, run_id, since, force, set_, input_, output, as_json, models=model)

        command = candidates_command
    else:

        def step_command(
            config: ConfigOpt,
            run_id: RunIdOpt,
            since: SinceOpt = None,
            force: ForceOpt = False,
            set_: SetOpt = None,
            input_: InputOpt = None,
            output: OutputOpt = None,
            as_json: JsonOpt = False,
        ) -> None:
            run_one(name, config, run_id, since, force, set_, input_, output, as_json)

        command = step_command
    app.command(name, cls=StepCommand)(command)


def _register_pipeline_steps() -> None:
    from recloop.steps.graph import FEEDBACK, TRAINING

    for step_name in (*TRAINING.names, *FEEDBACK.names):
        add_step_command(step_name)


_register_pipeline_steps()
