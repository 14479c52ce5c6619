"""Terminal output shared by the CLI commands: rich progress bars behind `StepContext.progress`."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBars:
    """`StepContext.progress` backed by rich bars: `with ProgressBars(console) as progress:` then
    `advance = progress(description, total)` and `advance(n)`. Off a terminal (CI, container logs) no bars
    are drawn; all bars go when the block ends.

    `delay_s`: a task's bar appears only once the task has run that long (short work stays quiet); 0 shows
    it at once. `hide_finished`: a bar disappears when its task reaches its total, instead of staying until
    the block ends. `time_remaining`: add an estimated-time-left column.
    """

    def __init__(
        self, console: Console, *, delay_s: float = 0.0, hide_finished: bool = False, time_remaining: bool = False
    ):
        self.delay_s = delay_s
        self.hide_finished = hide_finished
        columns = [
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        if time_remaining:
            columns.append(TimeRemainingColumn())
        self.bars = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)

    def __enter__(self) -> ProgressBars:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def __call__(self, description: str, total: float | None = None, unit: str = "") -> Callable[[float], None]:
        shown = self.delay_s <= 0
        task = self.bars.add_task(description, total=total, visible=shown)
        started = time.monotonic()

        def advance(n: float = 1.0) -> None:
            nonlocal shown
            self.bars.advance(task, n)
            if not shown and time.monotonic() - started >= self.delay_s:
                shown = True
                self.bars.update(task, visible=True)
            if self.hide_finished and total is not None and self.bars.tasks[task].completed >= total:
                self.bars.update(task, visible=False)

        return advance


def _fmt_metric(entry: object) -> str:
    if isinstance(entry, dict):
        value, ci = entry.get("value"), entry.get("ci")
        if value is None:
            return "–"
        if ci and len(ci) == 2 and ci[0] is not None:
            return f"{value:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        return f"{value:.4f}"
    if isinstance(entry, (int, float)):
        return f"{entry:.4f}"
    return "–"


def print_pipeline_summary(console: Console, result) -> None:  # result: recloop.pipeline.PipelineResult
    """The closing table of `recloop run`: steps, each candidate's metrics with CIs, gate, published version."""
    from rich.table import Table

    steps = Table(title=f"run {result.run_id}", show_header=True)
    for col in ("step", "status", "seconds", "artifact / note"):
        steps.add_column(col)
    for s in result.steps:
        steps.add_row(s.step, s.status, f"{s.seconds:.1f}", s.note or (s.manifest.uri if s.manifest else ""))
    console.print(steps)

    metrics = result.metrics or {}
    candidates = metrics.get("candidates", {})
    blessing = result.blessing or {}
    if candidates:
        names = sorted({m for c in candidates.values() for m in c.get("metrics", {})})
        shown = [m for m in names if m.split("@")[0] in ("ndcg", "recall", "hr", "mrr")][:6] or names[:6]
        table = Table(title="candidates (95% CI)")
        table.add_column("candidate")
        for m in shown:
            table.add_column(m)
        table.add_column("gate")
        per = {c.get("candidate"): c for c in blessing.get("candidates", []) if isinstance(c, dict)}
        for name, block in candidates.items():
            verdict = per.get(name, {}).get("decision", "")
            if not verdict:
                verdict = (
                    "blessed ✓" if blessing.get("candidate") == name and blessing.get("decision") == "blessed" else ""
                )
            table.add_row(name, *[_fmt_metric(block.get("metrics", {}).get(m)) for m in shown], verdict)
        champion = metrics.get("champion")
        if champion and champion.get("metrics"):
            table.add_row(
                f"champion v{champion.get('version')}",
                *[_fmt_metric(champion["metrics"].get(m)) for m in shown],
                "(production)",
            )
        console.print(table)
    if blessing:
        decision = blessing.get("decision")
        colour = "green" if decision == "blessed" else "yellow"
        console.print(f"gate: [{colour}]{decision}[/] · candidate {blessing.get('candidate')}")
        for reason in blessing.get("reasons", []):
            console.print(f"  - {reason}")
    if result.published_version is not None:
        console.print(f"[bold green]published[/] version v{result.published_version}")
    elif "publish" in result.outcome:
        console.print(f"publish: {result.outcome['publish'].status} {result.outcome['publish'].note}")
