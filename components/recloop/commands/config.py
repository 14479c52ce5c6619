"""`recloop config validate|schema|show|docs`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Validate and show pipeline configs; export their schema and reference docs.", no_args_is_help=True
)

ConfigOpt = Annotated[Path, typer.Argument(help="Pipeline config YAML file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE (YAML value).")]


@app.command("validate")
def validate(
    file: ConfigOpt,
    set_: SetOpt = None,
    check_access: Annotated[
        bool, typer.Option("--check-access", help="Also list s3:// inputs with the store's credentials.")
    ] = False,
    skip_inputs: Annotated[
        bool,
        typer.Option(
            "--skip-inputs", help="Check the config only, not its input paths (for a config whose data comes later)."
        ),
    ] = False,
) -> None:
    """Validate FILE, and that its local input paths name files; print every problem as
    `path.to.key: what is wrong` (exit 2) or a summary."""
    from recloop import config
    from recloop.data.readers import missing_inputs
    from recloop.errors import ConfigError

    cfg = config.load(file, set_ or [])
    problems = [] if skip_inputs else missing_inputs(cfg.data, cfg.store, remote=check_access)
    if problems:
        raise ConfigError(cfg.source, problems)
    models = ", ".join(m.candidate_name for m in cfg.models) or "none"
    typer.echo(f"{file}: valid (pipeline {cfg.name!r}, store {cfg.store.root}, models: {models})")


@app.command("show")
def show(file: ConfigOpt, set_: SetOpt = None) -> None:
    """Print the fully resolved config (defaults, extends and overrides applied) as JSON."""
    from recloop import config

    cfg = config.load(file, set_ or [])
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@app.command("schema")
def schema(out: Annotated[Optional[Path], typer.Option(help="Write to this file instead of stdout.")] = None) -> None:
    """Print the JSON Schema of pipeline config files (for editor completion and checks)."""
    from recloop import config

    text = json.dumps(config.json_schema(), indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        typer.echo(text)


@app.command("docs")
def docs(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the files instead of checking them.")] = False,
    root: Annotated[Path, typer.Option(help="Repository root holding docs/.")] = Path("."),
) -> None:
    """Check (or with --write, regenerate) docs/config.md and the parameter tables of docs/models.md."""
    from recloop.config import docs as config_docs
    from recloop.errors import RecloopError

    stale = config_docs.stale_docs(root)
    if write:
        for path, text in stale.items():
            path.write_text(text, encoding="utf-8")
        typer.echo(f"rewrote: {', '.join(map(str, stale))}" if stale else "docs already up to date")
        return
    if stale:
        raise RecloopError(
            f"out of date: {', '.join(map(str, stale))}; run `{config_docs.REGENERATE}` "
            "(or `make docs`) and commit the result"
        )
    typer.echo("docs up to date")
