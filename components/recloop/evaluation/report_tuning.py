"""The report's tuning section: per tuned candidate, the optimization history and parameter importances.

Drawn from `metrics.json`'s `tuning` block (written by evaluate from the tune step's studies), so the
report can be re-rendered from metrics.json alone, like every other section.
"""

from __future__ import annotations

from typing import Any

from recloop.evaluation.report import _e, _figure, _num, _style_axes, _svg


def tuning_section(doc: dict[str, Any], colors: dict[str, str]) -> str:
    """The section's HTML, or "" when no candidate was tuned."""
    tuning = doc.get("tuning") or {}
    if not tuning:
        return ""
    rows = "".join(_summary_row(name, block, colors.get(name, "#637381")) for name, block in tuning.items())
    table = (
        "<table><thead><tr><th>candidate</th><th>best valid NDCG@10</th><th>trials (complete / pruned / failed)</th>"
        f"<th>seconds</th><th>best parameters</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    charts = "".join(
        f"<div>{_history_chart(name, block, colors.get(name, '#637381'))}{_importance_chart(name, block)}</div>"
        for name, block in tuning.items()
    )
    return (
        "<section><h2>Tuning</h2><p class='note'>Hyper-parameters searched by the tune step on the validation "
        "split only (Optuna TPE, median pruning); train refit each candidate with its best trial's parameters. "
        "History: each trial's validation NDCG@10 (pruned trials at their last check) and the best so far. "
        f"Importances: fANOVA share of the variance in the score.</p>{table}<div class='grid2'>{charts}</div></section>"
    )


def _summary_row(name: str, block: dict[str, Any], color: str) -> str:
    states = block.get("states") or {}
    counts = " / ".join(str(states.get(s, 0)) for s in ("complete", "pruned", "fail"))
    params = ", ".join(f"{k}={_short(v)}" for k, v in (block.get("best_params") or {}).items())
    return (
        f'<tr><td><span class="swatch" style="background:{color}"></span>{_e(name)}</td>'
        f"<td>{_num(block.get('best_value'))}</td><td>{counts}</td><td>{_num(block.get('seconds'), 0)}</td>"
        f"<td>{_e(params or 'none completed')}</td></tr>"
    )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _history_chart(name: str, block: dict[str, Any], color: str) -> str:
    trials = [(n, v, s) for n, v, s in block.get("trials") or [] if v is not None]
    fig = _figure(5.2, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    complete = [(n, v) for n, v, s in trials if s == "complete"]
    pruned = [(n, v) for n, v, s in trials if s != "complete"]
    if complete:
        ax.scatter([n for n, _ in complete], [v for _, v in complete], s=18, color=color, label="complete", zorder=3)
        best, line = float("-inf"), []
        for n, v in complete:
            best = max(best, v)
            line.append((n, best))
        ax.step(
            [n for n, _ in line],
            [b for _, b in line],
            where="post",
            color="#24292f",
            linewidth=1.4,
            label="best so far",
        )
    if pruned:
        ax.scatter(
            [n for n, _ in pruned],
            [v for _, v in pruned],
            s=14,
            facecolors="none",
            edgecolors="#8c959f",
            label="pruned / stopped",
        )
    ax.set_title(f"{name}: optimization history", fontsize=10, loc="left")
    ax.set_xlabel("trial")
    ax.set_ylabel("valid NDCG@10")
    if trials:
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _svg(fig, f"tune-hist-{name}")


def _importance_chart(name: str, block: dict[str, Any]) -> str:
    importances = sorted((block.get("importances") or {}).items(), key=lambda kv: kv[1])
    if not importances:
        return "<p class='note'>Too few completed trials to estimate parameter importances.</p>"
    fig = _figure(5.2, 0.6 + 0.3 * len(importances))
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    ax.barh([k for k, _ in importances], [v for _, v in importances], color="#0969da")
    ax.set_title(f"{name}: parameter importance", fontsize=10, loc="left")
    ax.set_xlim(0, 1)
    return _svg(fig, f"tune-imp-{name}")
