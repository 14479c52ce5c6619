"""`recloop init`: write a commented, validated pipeline config inferred from the data files.

Reading, printing and writing live here; the inference is `recloop.data.infer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from recloop.config.tuning import INIT_BUDGET

if TYPE_CHECKING:
    from rich.console import Console

    from recloop.config import StoreConfig
    from recloop.data.infer.render import Budget
    from recloop.data.infer.starter import SourceSpec, Starter

app = typer.Typer()

ColumnOpt = Optional[str]
DEFAULT_MAX_ROWS = 2_000_000


def _opt(flag: str, text: str) -> object:
    return typer.Option(flag, help=text, show_default=False)


@app.command("init")
def init(
    interactions: Annotated[str, typer.Option("--interactions", help="Interaction events: CSV/TSV/Parquet/JSONL file, directory, glob or s3:// URI.")],
    name: Annotated[str, typer.Option("--name", help="Pipeline name (lower-case letters, digits, '-', '_').")],
    out: Annotated[Path, typer.Option("--out", help="Config file to write.")],
    items: Annotated[ColumnOpt, _opt("--items", "Item catalog (ids, titles, categories, descriptions).")] = None,
    users: Annotated[ColumnOpt, _opt("--users", "User table.")] = None,
    budget: Annotated[ColumnOpt, _opt("--budget", f"Tuning budget: wall time (30m, 1h30m) or trials per candidate (40 trials); default {INIT_BUDGET}.")] = None,
    user_col: Annotated[ColumnOpt, _opt("--user-col", "Interactions column holding the user id.")] = None,
    item_col: Annotated[ColumnOpt, _opt("--item-col", "Interactions column holding the item id.")] = None,
    time_col: Annotated[ColumnOpt, _opt("--time-col", "Interactions column holding the event time.")] = None,
    time_unit: Annotated[ColumnOpt, _opt("--time-unit", "How the time is encoded: s, ms, us, ns or iso.")] = None,
    rating_col: Annotated[ColumnOpt, _opt("--rating-col", "Interactions column holding a rating, or 'none'.")] = None,
    weight_col: Annotated[ColumnOpt, _opt("--weight-col", "Interactions column holding an event weight, or 'none'.")] = None,
    event_col: Annotated[ColumnOpt, _opt("--event-col", "Interactions column holding the event type, or 'none'.")] = None,
    item_id_col: Annotated[ColumnOpt, _opt("--item-id-col", "Items column holding the item id.")] = None,
    category_col: Annotated[ColumnOpt, _opt("--category-col", "Items column holding categories, or 'none'.")] = None,
    text_cols: Annotated[ColumnOpt, _opt("--text-cols", "Comma-separated items columns for the text, or 'none'.")] = None,
    user_id_col: Annotated[ColumnOpt, _opt("--user-id-col", "Users column holding the user id.")] = None,
    endpoint_url: Annotated[ColumnOpt, _opt("--endpoint-url", "S3 endpoint for s3:// inputs (SeaweedFS, MinIO).")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", min=1, help="Rows read per input for the profile.")] = DEFAULT_MAX_ROWS,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:  # fmt: skip
    """Infer columns, profile the data and write a commented config with candidate models that suit it.

    Prints what was inferred and why, and what to check. When the data leaves a choice open (two columns
    that could be the event time, say) it asks, naming the flag that settles it, and exits 2.
    """
    from rich.console import Console

    from recloop.config import StoreConfig
    from recloop.data.infer.interactions import InteractionHints
    from recloop.data.infer.plan import parse_budget
    from recloop.data.infer.starter import Hints, StarterInputs, infer_starter
    from recloop.data.infer.tables import ItemHints

    parsed_budget = parse_budget(budget if budget is not None else INIT_BUDGET)
    _check_name(name)
    _check_out(out, force)
    store = StoreConfig(endpoint_url=endpoint_url)
    hints = Hints(
        InteractionHints(user_col, item_col, time_col, time_unit, rating_col, weight_col, event_col),
        ItemHints(item_id_col, category_col, _column_list(text_cols)),
        user_id_col,
    )
    inputs = StarterInputs(
        name,
        _read(interactions, "--interactions", "data.interactions", out, max_rows, store),
        _read(items, "--items", "data.items", out, max_rows, store) if items else None,
        _read(users, "--users", "data.users", out, max_rows, store) if users else None,
        parsed_budget,
        endpoint_url,
    )
    starter = infer_starter(inputs, hints)
    _write(out, starter.text)
    console = Console(soft_wrap=True, highlight=False)
    print_starter(console, starter, parsed_budget)
    console.print(f"[bold green]wrote[/] {out} · check it with `recloop config validate {out}`")


def _column_list(value: str | None) -> tuple[str, ...] | None:
    from recloop.data.infer.roles import NONE

    if value is None:
        return None
    if value.strip() == NONE:
        return ()
    return tuple(c.strip() for c in value.split(",") if c.strip())


def _check_name(name: str) -> None:
    from recloop.config import from_dict
    from recloop.errors import ConfigError, UsageError

    try:
        from_dict({"name": name, "data": {"interactions": {"path": "-"}}})
    except ConfigError as exc:
        problems = "; ".join(e.removeprefix("name: ") for e in exc.errors)
        raise UsageError(f"--name {name!r}: {problems}") from None


def _check_out(out: Path, force: bool) -> None:
    from recloop.errors import UsageError

    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; name the config file to write, e.g. {out / 'pipeline.yaml'}")
    if out.exists() and not force:
        raise UsageError(f"--out {out}: the file exists; pass --force to overwrite it or name another file")


def _read(path: str, flag: str, key: str, out: Path, max_rows: int, store: StoreConfig) -> SourceSpec:
    from recloop.data.infer.starter import SourceSpec
    from recloop.data.sample import read_sample

    return SourceSpec(read_sample(path, flag, key, max_rows, store), config_path(path, out))


def config_path(given: str, out: Path) -> str:
    """The path as the config at `out` names it: relative paths resolve against the config's folder."""
    if "://" in given or os.path.isabs(given):
        return given
    return os.path.relpath(os.path.abspath(given), os.path.abspath(out.parent))


def _write(out: Path, text: str) -> None:
    """Write through a temporary file that must load as a valid config first."""
    from recloop import config

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        config.load(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)


def print_starter(console: Console, starter: Starter, budget: Budget | None) -> None:
    from rich.markup import escape

    guess = starter.interactions
    console.print("[bold]Interactions[/] (flag to change it in brackets)")
    for column in guess.columns:
        shown = column.column or "—"
        console.print(
            f"  {column.key.rsplit('.', 1)[1]:<11} {escape(shown):<14} {escape(column.reason)}  [{column.flag}]"
        )
    unit = guess.time_unit
    console.print(f"  {'time unit':<11} {unit.unit:<14} {escape(unit.reason)}  [--time-unit]")
    if starter.items is not None:
        items = starter.items
        console.print("[bold]Items[/]")
        for column in (items.id, items.category):
            shown = column.column or "—"
            console.print(
                f"  {column.key.rsplit('.', 1)[1]:<11} {escape(shown):<14} {escape(column.reason)}  [{column.flag}]"
            )
        console.print(
            f"  {'text':<11} {escape(items.text.template or '—')}  ({escape(items.text.reason)})  [--text-cols]"
        )
    if starter.users is not None:
        console.print("[bold]Users[/]")
        console.print(
            f"  {'id':<11} {escape(starter.users.id.column or '—'):<14} {escape(starter.users.id.reason)}  [--user-id-col]"
        )
    _print_plan(console, starter, budget)


def _print_plan(console: Console, starter: Starter, budget: Budget | None) -> None:
    from rich.markup import escape

    profile = starter.profile
    h = profile.history
    console.print("[bold]Profile[/]")
    console.print(
        f"  {profile.n_users:,} users, {profile.n_items:,} items, {profile.n_events:,} events, density {profile.density:.2%}"
    )
    console.print(f"  events per user: median {h.median:g} (10th percentile {h.p10:g}, 90th {h.p90:g})")
    console.print(f"  order: {escape(profile.order.explain())}")
    console.print("[bold]Models[/]")
    for entry in starter.models.chosen:
        console.print(f"  [green]+[/] {escape(entry.comment)}")
    for skipped in starter.models.skipped:
        console.print(f"  [yellow]-[/] {skipped.type}: {escape(skipped.reason)}")
    if budget is not None:
        console.print(f"  tuning budget {budget.text}: the `tuning` line at the end of the config")
    if starter.checks:
        console.print("[bold]Check[/]")
        for check in starter.checks:
            console.print(f"  - {escape(check)}")
