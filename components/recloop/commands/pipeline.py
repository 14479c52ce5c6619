"""`recloop run` (the whole loop in-process) and `recloop demo` (synthetic data + the loop)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer()

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Pipeline config YAML file.")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Run id; re-use one to resume a run.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE (YAML value).")]


def _default_run_id() -> str:
    return "run-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _loop() -> str:
    from recloop.steps.graph import TRAINING

    return " → ".join(f"{s.name} (each candidate)" if s.per_candidate else s.name for s in TRAINING)


@app.command(
    "run",
    help=f"Run {_loop()} in-process.\n\nRe-running with the same --run-id resumes after the last completed step.",
)
def run(
    config: ConfigOpt,
    run_id: RunIdOpt = None,
    set_: SetOpt = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Train only these candidates.")] = None,
    since: Annotated[Optional[datetime], typer.Option(help="Ingest only events after this time.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Everything but publish.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute steps already committed.")] = False,
) -> None:
    from recloop import config as config_mod
    from recloop.steps.base import RunParams

    cfg = config_mod.load(config, set_ or [])
    params = RunParams(since=since, models=tuple(model) if model else None, dry_run=dry_run, force=force)
    _run_and_report(cfg, run_id or _default_run_id(), params)


@app.command("demo")
def demo(
    config: Annotated[Path, typer.Option("--config", "-c", help="Demo pipeline config.")] = Path("configs/demo.yaml"),
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 1000,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 500,
    seed: Annotated[int, typer.Option(help="Synthetic data seed.")] = 7,
    run_id: RunIdOpt = None,
) -> None:
    """Synthesize data where the demo config reads it, then run the whole loop on it."""
    from rich.console import Console

    from recloop import config as config_mod
    from recloop.data import synth
    from recloop.steps.base import RunParams

    cfg = config_mod.load(config)
    data_dir = Path(cfg.data.interactions.path).parent
    console = Console()
    console.print(f"[bold]Synthesizing[/] {users} users × {items} items (seed {seed}) into {data_dir}")
    synth.generate(n_users=users, n_items=items, seed=seed).write(data_dir)
    _run_and_report(cfg, run_id or _default_run_id(), RunParams())


def _run_and_report(cfg, run_id: str, params) -> None:
    from rich.console import Console

    from recloop.console import ProgressBars, print_pipeline_summary
    from recloop.pipeline import run_pipeline
    from recloop.steps.base import StepContext

    console = Console()
    console.print(f"[bold]recloop run[/] {cfg.name} · run id [cyan]{run_id}[/] · store {cfg.store.root}")
    with ProgressBars(console) as bars:
        ctx = StepContext.from_config(
            cfg, run_id, params, log=lambda msg: console.log(msg, highlight=False), progress=bars
        )

        def on_step(step: str, status: str) -> None:
            if status == "running":
                console.rule(f"[bold]{step}", align="left")
            else:
                console.print(f"  {step}: {status}")

        result = run_pipeline(ctx, on_step=on_step)
    print_pipeline_summary(console, result)
