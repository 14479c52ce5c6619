"""`recloop simulate`: replay the learning loop (serve -> log -> feedback -> retrain -> gate -> publish) R times."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer()


@app.command("simulate")
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline config YAML file.")],
    rounds: Annotated[int, typer.Option("--rounds", "-r", help="Serve/feedback/retrain rounds.")] = 3,
    users_per_round: Annotated[
        Optional[int],
        typer.Option(
            "--users-per-round", help="Users served per round (a seeded sample of those active); default: all."
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Slate size.")] = 10,
    future_share: Annotated[
        float,
        typer.Option(
            "--future-share", help="Newest share of the events replayed as the future (split into the rounds)."
        ),
    ] = 0.3,
    epsilon: Annotated[
        float,
        typer.Option(
            "--epsilon", help="Serving exploration while simulating (gives the bandit policy's evaluation support)."
        ),
    ] = 0.1,
    organic: Annotated[
        bool,
        typer.Option(
            "--organic/--no-organic",
            help="Also report each round's other interactions as organic feedback "
            "(events the app sends without a slate); off: the loop learns from slate clicks only.",
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed for user sampling and exploration.")] = 0,
    sim_id: Annotated[
        Optional[str],
        typer.Option("--sim-id", help="Name of this simulation (lower-case, digits, '-'); default: sim-<UTC time>."),
    ] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE (YAML value).")] = None,
) -> None:
    """Replay held-out future interactions through the whole loop and report online CTR and offline metrics
    per round (table here, HTML report with a plot in the store)."""
    from rich.console import Console
    from rich.table import Table

    from recloop import config as config_mod
    from recloop.simulate import TABLE_COLUMNS, SimulationSettings, table_rows
    from recloop.simulate import simulate as run_simulation
    from recloop.store import open_store

    console = Console(highlight=False)
    cfg = config_mod.load(config, set_ or [])
    settings = SimulationSettings(
        rounds=rounds,
        users_per_round=users_per_round,
        k=k,
        future_share=future_share,
        epsilon=epsilon,
        organic=organic,
        seed=seed,
        sim_id=sim_id,
    )
    settings.check()
    store = open_store(cfg.store)

    def on_round(r) -> None:  # r: RoundResult
        ctr = f"{r.ctr:.2%}" if r.ctr is not None else "–"
        control = f"{r.control_ctr:.2%}" if r.control_ctr is not None else "–"
        console.print(
            f"[bold]round {r.round}[/]: {r.users} users, CTR {ctr} (frozen initial model {control}), "
            f"{r.new_interactions} new interactions, gate {r.gate or '–'} ({r.seconds:.0f}s)"
        )

    result = run_simulation(cfg, store, settings, log=lambda m: console.log(m, highlight=False), on_round=on_round)
    # The terminal gets the essential columns; the HTML report has all of them.
    shown = {
        "round": "round",
        "model": "model",
        "users": "users",
        "CTR": "CTR",
        "frozen CTR": "frozen",
        "offline (retrained)": "offline",
        "gate": "gate",
        "new interactions": "new",
        "bandit": "bandit",
    }
    keep = [TABLE_COLUMNS.index(c) for c in shown]
    table = Table(title=f"simulation {result.sim_id} ({result.pipeline})")
    for header in shown.values():
        table.add_column(header, justify="right", no_wrap=True)
    for row in table_rows(result.rounds):
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    console.print(("[green]" if result.improved else "[yellow]") + result.verdict)
    console.print(f"report: {result.report_uri}")
