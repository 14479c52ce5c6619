"""`recloop model list|show|history|promote|rollback`: the model registry from the command line.

Every command takes `--config FILE` (or `RECLOOP_CONFIG`) to find the store; NAME defaults to the
config's model name (`publish.model_name`, else the pipeline name).
"""

from __future__ import annotations

import getpass
import socket
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from recloop.registry import AliasChange, ModelRegistry
    from recloop.store import ArtifactStore

app = typer.Typer(
    help="Model registry: list versions, show one, see the history, promote or roll back.", no_args_is_help=True
)

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="RECLOOP_CONFIG",
        help="Pipeline config YAML; its `store` section locates the registry.",
    ),
]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE (YAML value).")]
NameArg = Annotated[Optional[str], typer.Argument(help="Model name; default: the config's model name.")]


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _actor() -> str:
    """Who runs the command, for the audit history (read here, at the edge)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _open(config: Path, overrides: list[str] | None) -> tuple[ArtifactStore, str]:
    from recloop import config as config_mod
    from recloop.store import open_store

    cfg = config_mod.load(config, overrides or [])
    return open_store(cfg.store), cfg.model_name


def _registry(config: Path, overrides: list[str] | None, name: str | None) -> ModelRegistry:
    from recloop.errors import ArtifactError
    from recloop.registry import ModelRegistry

    store, default_name = _open(config, overrides)
    registry = ModelRegistry(store, name or default_name, actor=_actor())
    if not registry.exists():
        from recloop.registry import list_models

        known = ", ".join(list_models(store)) or "none yet"
        raise ArtifactError(
            f"no model named {registry.name!r} in {store.root} (models: {known}); "
            "publish one with `recloop step publish` or check --config"
        )
    return registry


def _when(iso: str | None) -> str:
    """'2026-01-02T03:04:05.678+00:00' -> '2026-01-02 03:04:05 UTC' (full precision stays in the store)."""
    if not iso:
        return "—"
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if moment.tzinfo is not None else "")


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    return str(value)


# ---------------------------------------------------------------------------------------------- list


@app.command("list")
def list_(config: ConfigOpt, name: NameArg = None, set_: SetOpt = None) -> None:
    """Without NAME: every model in the store. With NAME: its versions, production marked."""
    from rich.table import Table

    from recloop.registry import ModelRegistry, format_version, list_models

    console = _console()
    if name is None:
        store, _ = _open(config, set_)
        table = Table(title=f"Models in {store.root}", title_justify="left")
        for col in ("model", "versions", "latest", "production", "production since"):
            table.add_column(col, overflow="fold")
        names = list_models(store)
        for model in names:
            reg = ModelRegistry(store, model)
            versions = reg.list_versions()
            alias = reg.production()
            table.add_row(
                model,
                str(len(versions)),
                format_version(versions[-1].version) if versions else "—",
                format_version(alias.version) if alias else "—",
                _when(alias.updated_at) if alias else "—",
            )
        if not names:
            console.print(f"No models in {store.root} yet: a blessed run's publish step registers one.")
            return
        console.print(table)
        return

    reg = _registry(config, set_, name)
    alias = reg.production()
    table = Table(title=f"Versions of {reg.name!r} ({reg.uri})", title_justify="left")
    # The title carries the base URI; each version lives at {base}/v{N}.
    for col in ("version", "", "candidate", "type", "primary metric", "run id", "created"):
        table.add_column(col, overflow="fold", no_wrap=col in ("version", "primary metric"))
    for v in reg.list_versions():
        mark = "production" if alias and alias.version == v.version else ""
        primary = f"{v.primary_metric}={_num(v.primary_value)}" if v.primary_metric else "—"
        table.add_row(
            format_version(v.version),
            mark,
            v.candidate,
            v.model_type,
            primary,
            v.run_id,
            _when(v.created_at),
            style="bold green" if mark else None,
        )
    console.print(table)
    if alias is None:
        console.print("No version is in production yet.")


# ---------------------------------------------------------------------------------------------- show


def _metric_rows(block: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str, str]]:
    """(metric, value, 95% CI) rows from a candidate's metrics block, whatever its nesting."""
    rows: list[tuple[str, str, str]] = []
    if not isinstance(block, dict) or depth > 3:
        return rows
    for key, value in block.items():
        label = f"{prefix}{key}"
        if isinstance(value, dict) and "value" in value:
            low, high = value.get("ci_low"), value.get("ci_high")
            if low is None and isinstance(value.get("ci"), (list, tuple)) and len(value["ci"]) == 2:
                low, high = value["ci"]
            ci = f"[{_num(low)}, {_num(high)}]" if low is not None and high is not None else ""
            rows.append((label, _num(value["value"]), ci))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((label, _num(value), ""))
        elif isinstance(value, dict):
            rows.extend(_metric_rows(value, "" if key == "metrics" and not prefix else f"{label}.", depth + 1))
    return rows


@app.command("show")
def show(
    config: ConfigOpt,
    name: NameArg = None,
    version: Annotated[Optional[int], typer.Option("--version", "-v", help="Default: production.")] = None,
    set_: SetOpt = None,
) -> None:
    """A version's facts, metrics, blessing and lineage (default: the production version)."""
    from rich.table import Table

    from recloop.errors import ArtifactError
    from recloop.registry import format_version

    console = _console()
    reg = _registry(config, set_, name)
    alias = reg.production()
    if version is None:
        if alias is None:
            versions = reg.list_versions()
            if not versions:
                raise ArtifactError(f"model {reg.name!r} has no committed version yet")
            version = versions[-1].version
        else:
            version = alias.version
    info = reg.get(version)
    status = "production" if alias and alias.version == version else "not in production"
    console.print(f"[bold]{reg.name} v{info.version}[/] ({status})")

    facts = Table(show_header=False, box=None, padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column(overflow="fold")
    for label, value in (
        ("uri", info.uri),
        ("candidate", info.candidate),
        ("model type", info.model_type),
        ("run id", info.run_id),
        ("created", _when(info.created_at)),
        ("registered by", info.actor),
        ("config hash", info.config_hash or "—"),
        ("split fingerprint", info.split_fingerprint or "—"),
        ("primary metric", f"{info.primary_metric} = {_num(info.primary_value)}" if info.primary_metric else "—"),
    ):
        facts.add_row(label, value)
    if alias and alias.version == version:
        facts.add_row("production since", f"{_when(alias.updated_at)} by {alias.actor} ({alias.reason or 'no reason'})")
    console.print(facts)

    metrics = info.metrics or {}
    block = (metrics.get("candidates") or {}).get(info.candidate, metrics) if isinstance(metrics, dict) else {}
    rows = _metric_rows(block.get("metrics", block) if isinstance(block, dict) else {})
    if rows:
        table = Table(
            title=f"Metrics of {info.candidate} (split {str(info.split_fingerprint or '')[:12]})", title_justify="left"
        )
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("95% CI", justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        console.print("Metrics: none recorded.")

    blessing = info.blessing or {}
    if blessing:
        decision = blessing.get("decision", "?")
        color = "green" if decision == "blessed" else "red"
        console.print(
            f"Blessing: [{color}]{decision}[/] (champion at evaluation: "
            f"{format_version(blessing.get('champion_version'), '—')})"
        )
        thresholds = [t for t in blessing.get("thresholds") or [] if isinstance(t, dict)]
        if thresholds:
            table = Table(title="Gate thresholds", title_justify="left")
            for col in ("metric", "kind", "required", "value", "passed"):
                table.add_column(col)
            for t in thresholds:
                table.add_row(
                    str(t.get("metric", "")),
                    str(t.get("kind", "")),
                    _num(t.get("required")),
                    _num(t.get("value")),
                    "yes" if t.get("passed") else "[red]no[/]",
                )
            console.print(table)
        for reason in blessing.get("reasons") or []:
            console.print(f"  • {reason}", markup=False)
    else:
        console.print("Blessing: none recorded.")

    if info.lineage:
        table = Table(title="Lineage", title_justify="left")
        table.add_column("step")
        table.add_column("artifact", overflow="fold")
        for step, uri in info.lineage.items():
            table.add_row(step, uri)
        console.print(table)


# ---------------------------------------------------------------------------------------------- history


@app.command("history")
def history(
    config: ConfigOpt,
    name: NameArg = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show the latest N events.")] = 50,
    set_: SetOpt = None,
) -> None:
    """Every alias change and attempt (success, conflict, refused, failed, dry run), oldest first."""
    from rich.table import Table

    from recloop.registry import format_version

    console = _console()
    reg = _registry(config, set_, name)
    events = reg.history()
    table = Table(
        title=f"History of {reg.name!r} (latest {min(limit, len(events))} of {len(events)})", title_justify="left"
    )
    for col in (
        "#",
        "at",
        "action",
        "outcome",
        "version",
        "production before",
        "expected",
        "run id",
        "actor",
        "details",
    ):
        table.add_column(col, overflow="fold")
    colors = {"success": "green", "conflict": "yellow", "refused": "red", "failed": "red"}
    for e in events[-limit:]:
        outcome = f"[{colors[e.outcome]}]{e.outcome}[/]" if e.outcome in colors else e.outcome
        details = e.message if not e.reason or e.reason in e.message else f"{e.message} ({e.reason})"
        table.add_row(
            str(e.seq),
            _when(e.at),
            e.action,
            outcome,
            format_version(e.version, "—"),
            format_version(e.previous_version, "—"),
            format_version(e.expected_version, "—"),
            e.run_id or "—",
            e.actor,
            details,
        )
    console.print(table)


# ---------------------------------------------------------------------------------------------- alias moves


def _print_change(console: Console, name: str, change: AliasChange) -> None:
    from recloop.registry import format_version

    if change.changed:
        console.print(
            f"production of {name!r}: {format_version(change.from_version, '—')} -> "
            f"{format_version(change.to_version)} ({change.alias.uri})"
        )
    else:
        console.print(f"production of {name!r} already is v{change.to_version}; nothing changed")


@app.command("rollback")
def rollback(
    config: ConfigOpt,
    name: NameArg = None,
    to: Annotated[
        Optional[int], typer.Option("--to", help="Version to restore; default: the one production replaced last.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the history.")] = "",
    set_: SetOpt = None,
) -> None:
    """Point production back at the previous version (or --to VERSION). Asks nothing; prints what changed."""
    console = _console()
    reg = _registry(config, set_, name)
    change = reg.rollback(to, reason=reason)
    _print_change(console, reg.name, change)


@app.command("promote")
def promote(
    config: ConfigOpt,
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number to put in production.")],
    expect: Annotated[
        Optional[int], typer.Option(help="Only if production currently is this version (compare-and-swap guard).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the history.")] = "",
    set_: SetOpt = None,
) -> None:
    """Put VERSION in production by hand (no gate check: the operator decides)."""
    from recloop.registry import ANY

    console = _console()
    reg = _registry(config, set_, name)
    change = reg.promote(version, expected=ANY if expect is None else expect, reason=reason or "manual promotion")
    _print_change(console, reg.name, change)
