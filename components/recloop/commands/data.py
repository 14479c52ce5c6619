"""`recloop data synth|preview`: make synthetic data, and check how ingest will read a config's sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Generate synthetic data and preview how sources are read.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the CSV files to.")] = Path(
        ".recloop/demo/data"
    ),
    users: Annotated[int, typer.Option("--users", min=1, help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option("--items", min=2, help="Number of catalog items.")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives identical files.")] = 0,
    events_per_user: Annotated[float, typer.Option("--events-per-user", min=1.0, help="Mean events per user.")] = 50.0,
    days: Annotated[int, typer.Option("--days", min=1, help="Length of the period the events span.")] = 365,
    user_effect: Annotated[
        float, typer.Option("--user-effect", min=0.0, help="How much age group and region shift tastes (0 = not).")
    ] = 0.0,
    context_effect: Annotated[
        float,
        typer.Option(
            "--context-effect", min=0.0, help="How much device and part of day shift tastes (0 = not; adds `device`)."
        ),
    ] = 0.0,
) -> None:
    """Write interactions.csv, items.csv and users.csv of a synthetic world with known structure."""
    from recloop.data.synth import generate, period

    data = generate(
        users,
        items,
        seed,
        events_per_user=events_per_user,
        days=days,
        user_effect=user_effect,
        context_effect=context_effect,
    )
    paths = data.write(out)
    start, end = period(days)
    frames = {"interactions": data.interactions, "items": data.items, "users": data.users}
    for name, path in paths.items():
        typer.echo(f"wrote {path} ({len(frames[name])} rows, {path.stat().st_size / 1024:.0f} KiB)")
    typer.echo(f"{len(data.truth.topic_names)} topics, events from {start.date()} to {end.date()}, seed {seed}")


@app.command("preview")
def preview(
    config_file: Annotated[Path, typer.Argument(help="Pipeline config YAML file.")],
    rows: Annotated[int, typer.Option("--rows", min=1, max=1000, help="Rows to show.")] = 10,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE.")] = None,
) -> None:
    """Read the first rows of the interactions source as ingest would, with any per-row issues."""
    from rich.console import Console
    from rich.table import Table

    from recloop import config
    from recloop.data.normalize import interaction_columns, interactions_schema, normalize_interactions
    from recloop.data.readers import open_table, resolve_sources

    cfg = config.load(config_file, set_ or [])
    source = cfg.data.interactions
    files = resolve_sources(source.path, source.format, cfg.store, "data.interactions")
    src = files[0]
    schema = interactions_schema(source.columns.context)
    wanted = interaction_columns(source)
    with src.local() as path:
        reader = open_table(
            src,
            path,
            chunk_rows=rows,
            config_key="data.interactions",
            delimiter=source.delimiter,
            encoding=source.encoding,
        )
        try:
            reader.require(wanted)
            chunk = next(reader.chunks(list(dict.fromkeys(wanted.values()))), None)
        finally:
            reader.close()
    console = Console()
    console.print(
        f"{len(files)} file(s); first: {src.uri} ({src.format}{', gzip' if src.gzip else ''}); "
        f"columns: {', '.join(reader.columns)}"
    )
    if chunk is None:
        console.print("no rows")
        return
    table = normalize_interactions(chunk, source, src.uri, schema).slice(0, rows)
    shown = [
        c
        for c in table.column_names
        if c != "source_file" and table.column(c).null_count < table.num_rows or c == "ingest_issue"
    ]
    view = Table(*shown)
    for record in table.select(shown).to_pylist():
        view.add_row(*("" if v is None else str(v) for v in record.values()))
    console.print(view)
