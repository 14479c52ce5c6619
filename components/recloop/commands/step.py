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
from datetime import datetime, timezone
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

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Pipeline config YAML file.",
                                         show_default=False)]
RunIdOpt = Annotated[str, typer.Option("--run-id", help="Run id: names the run folder runs/{run_id}/ and "
                                                         "lets a re-run reuse committed steps.", show_default=False)]
SinceOpt = Annotated[Optional[str], typer.Option(
    "--since", metavar="ISO", help="Only events after this time, ISO-8601 (overrides data.since); "
                                   "a time without zone is UTC.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even if the step's artifact is committed.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY.PATH=VALUE",
                                                     help="Override a config value (parsed as YAML); repeatable.")]
InputOpt = Annotated[Optional[list[str]], typer.Option(
    "--input", metavar="ROLE=URI", help="Read input ROLE (an upstream step's name) from URI instead of "
                                        "runs/{run_id}/ROLE; repeatable.")]
OutputOpt = Annotated[Optional[str], typer.Option(
    "--output", metavar="URI", help="Commit the artifact here instead of runs/{run_id}/{step}.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object {uri, step, run_id, summary}.")]
ModelOpt = Annotated[Optional[list[str]], typer.Option("--model", "--models", metavar="NAME",
                                                       help="train: only these candidates; repeatable.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="publish: check everything but do not publish.")]


class StepCommand(TyperCommand):
    """A step command whose help text comes from the step's SPEC, read only when help is shown."""

    @property  # type: ignore[override]
    def help(self) -> str:
        return step_help(self.name or "")

    @help.setter
    def help(self, value: str | None) -> None:
        pass

    @property  # type: ignore[override]
    def short_help(self) -> str:
        text = step_help(self.name or "", short=True)
        return text

    @short_help.setter
    def short_help(self, value: str | None) -> None:
        pass


def step_help(name: str, short: bool = False) -> str:
    """The step's description and inputs, from its SPEC (or why it is not available)."""
    from recloop.steps.base import load_step

    try:
        spec, _ = load_step(name)
    except ModuleNotFoundError:
        return f"{name} (not available in this installation)"
    first = spec.description.strip().split("\n", 1)[0].rstrip(".")
    if short:
        return first
    inputs = ", ".join(spec.inputs) if spec.inputs else "none (reads the configured data sources)"
    return (f"{spec.description.strip()}\n\n"
            f"Inputs (roles; default runs/{{run_id}}/ROLE, override with --input ROLE=URI): {inputs}.\n\n"
            f"Output: runs/{{run_id}}/{name}/ under store.root, committed by its _MANIFEST.json.")


# -------------------------------------------------------------------------------------------- parsing


def parse_since(value: str | None) -> datetime | None:
    """ISO-8601 -> aware datetime (naive means UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO-8601 time; use e.g. 2024-05-01 or "
                                 "2024-05-01T12:00:00+00:00", param_hint="--since") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_inputs(pairs: list[str] | None, allowed: tuple[str, ...], step: str) -> dict[str, str]:
    """['ingest=s3://b/runs/r/ingest'] -> {'ingest': 's3://...'}; roles must be the step's inputs."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        role, sep, uri = pair.partition("=")
        role, uri = role.strip(), uri.strip()
        if not sep or not role or not uri:
            raise typer.BadParameter(f"{pair!r}: expected ROLE=URI, e.g. ingest=s3://bucket/runs/r1/ingest",
                                     param_hint="--input")
        if role not in allowed:
            expected = ", ".join(allowed) if allowed else f"none ({step} takes no inputs)"
            raise typer.BadParameter(f"{role!r} is not an input of {step}; its inputs: {expected}",
                                     param_hint="--input")
        if role in out:
            raise typer.BadParameter(f"input {role!r} given twice", param_hint="--input")
        out[role] = uri.rstrip("/")
    return out


def check_run_id(run_id: str) -> str:
    from recloop.artifacts import safe_run_id

    try:
        safe_run_id(run_id)
    except ValueError:
        raise typer.BadParameter(f"{run_id!r} is not a usable run id; use letters, digits, '.', '_' or '-'",
                                 param_hint="--run-id") from None
    return run_id


# -------------------------------------------------------------------------------------------- output


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_result(console: Console, manifest: Manifest, seconds: float, reused: bool) -> None:
    """The artifact URI (alone on its line, for scripts) and a short summary."""
    console.print(manifest.uri, markup=False, highlight=False, soft_wrap=True)
    how = "reused committed artifact" if reused else f"committed in {seconds:.1f} s"
    console.print(f"{manifest.step} · run {manifest.run_id} · {how} · {len(manifest.files)} file(s)",
                  markup=False, highlight=False, style="dim")
    for key, value in manifest.summary.items():
        console.print(f"  {key}: {_short(value)}", markup=False, highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------------------------- commands


def run_one(name: str, config: Path, run_id: str, since: str | None, force: bool, set_: list[str] | None,
            inputs: list[str] | None, output: str | None, as_json: bool, models: list[str] | None = None,
            dry_run: bool = False) -> None:
    """Shared body of every step command."""
    from rich.console import Console

    from recloop import config as config_mod
    from recloop.console import ProgressBars
    from recloop.errors import RecloopError
    from recloop.steps.base import RunParams, StepContext, default_inputs, load_step, run_step
    from recloop.store import open_store

    check_run_id(run_id)
    since_at = parse_since(since)
    try:
        spec, _ = load_step(name)
    except ModuleNotFoundError as exc:
        raise RecloopError(f"step {name!r} is not available in this installation ({exc}); "
                           "reinstall recloop or check the step name") from None
    input_uris = parse_inputs(inputs, spec.inputs, name)
    cfg = config_mod.load(config, set_ or [])
    store = open_store(cfg.store)

    out = Console()
    err = Console(stderr=True)
    params = RunParams(since=since_at, models=tuple(models) if models else None, dry_run=dry_run, force=force)
    reused = False

    def log(message: str) -> None:
        nonlocal reused
        if message.startswith(f"{name}: reusing committed artifact"):
            reused = True
        err.print(message, markup=False, highlight=False, soft_wrap=True)

    started = time.monotonic()
    with ProgressBars(err, delay_s=PROGRESS_DELAY_S, hide_finished=True, time_remaining=True) as progress:
        ctx = StepContext(config=cfg, store=store, run_id=run_id, params=params, log=log, progress=progress)
        # Defaults fill the roles not overridden: a container may be handed just some URIs.
        resolved = {**default_inputs(ctx, spec), **input_uris}
        manifest = run_step(name, ctx, inputs=resolved, output=output.rstrip("/") if output else None)
    seconds = time.monotonic() - started
    if as_json:
        typer.echo(json.dumps(manifest.brief(), default=str, sort_keys=True))
    else:
        print_result(out, manifest, seconds, reused)


def add_step_command(name: str) -> None:
    """Register `recloop step NAME` (train and publish get their own extra options)."""
    if any(c.name == name for c in app.registered_commands):
        return
    if name == "train":
        def command(config: ConfigOpt, run_id: RunIdOpt, model: ModelOpt = None, since: SinceOpt = None,
                    force: ForceOpt = False, set_: SetOpt = None, input_: InputOpt = None,
                    output: OutputOpt = None, as_json: JsonOpt = False) -> None:
            run_one(name, config, run_id, since, force, set_, input_, output, as_json, models=model)
    elif name == "publish":
        def command(config: ConfigOpt, run_id: RunIdOpt, dry_run: DryRunOpt = False,  # type: ignore[misc]
                    since: SinceOpt = None, force: ForceOpt = False, set_: SetOpt = None, input_: InputOpt = None,
                    output: OutputOpt = None, as_json: JsonOpt = False) -> None:
            run_one(name, config, run_id, since, force, set_, input_, output, as_json, dry_run=dry_run)
    else:
        def command(config: ConfigOpt, run_id: RunIdOpt, since: SinceOpt = None,  # type: ignore[misc]
                    force: ForceOpt = False, set_: SetOpt = None, input_: InputOpt = None,
                    output: OutputOpt = None, as_json: JsonOpt = False) -> None:
            run_one(name, config, run_id, since, force, set_, input_, output, as_json)
    app.command(name, cls=StepCommand)(command)


def _register_pipeline_steps() -> None:
    from recloop.steps.base import LOOP_STEP_MODULES, STEP_MODULES

    for step_name in (*STEP_MODULES, *LOOP_STEP_MODULES):
        add_step_command(step_name)


_register_pipeline_steps()
