"""A self-contained HTML evaluation report rendered from a `metrics.json` document.

One file, no external CSS/JS/fonts: charts are inline SVG drawn with matplotlib (its `Figure` API, no
pyplot global state), styles are inline. Chart element ids are salted per chart so several SVGs can live in
one page, and no timestamps are embedded, so the same metrics always render the same bytes.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from recloop.evaluation.names import ACCURACY_METRICS, METRIC_LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B", "#9D755D")
CHAMPION_COLOR = "#8C8C8C"
DATA_COLOR = "#222222"

_CSS = """
:root { --fg:#1f2933; --muted:#637381; --line:#e3e8ee; --bg:#f6f8fa; --good:#1a7f37; --bad:#cf222e; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1120px; margin:0 auto; padding:28px 24px 48px; }
header h1 { font-size:24px; margin:0 0 4px; }
header .sub { color:var(--muted); }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px; margin:18px 0; }
section h2 { font-size:17px; margin:0 0 4px; }
section p.note { color:var(--muted); margin:2px 0 12px; font-size:13px; }
.facts { display:grid; grid-template-columns:repeat(auto-fit,minmax(160px,1fr)); gap:10px; margin-top:16px; }
.fact { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.fact .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.fact .v { font-size:18px; font-weight:600; word-break:break-all; }
.headline { font-size:15px; }
.headline b { font-weight:600; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; margin:6px 0 4px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { font-size:12px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.03em; }
th:first-child, td:first-child { text-align:left; }
tbody tr:nth-child(even) { background:#fafbfc; }
td .ci { display:block; color:var(--muted); font-size:11px; }
td.best { font-weight:700; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; vertical-align:middle; }
.pos { color:var(--good); } .neg { color:var(--bad); }
.tag { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; background:#eef2f6; color:var(--muted); }
.tag.err { background:#fdecec; color:var(--bad); }
.chart svg { width:100%; height:auto; display:block; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
@media (max-width: 860px) { .grid2 { grid-template-columns:1fr; } }
dl.defs { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; font-size:13px; margin:0; }
dl.defs dt { font-weight:600; } dl.defs dd { margin:0; color:var(--muted); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px; }
"""

_DEFINITIONS = (
    ("Hit rate", "share of users with at least one held-out item in their top k"),
    ("Recall", "held-out items found in the top k / number of held-out items"),
    ("Precision", "held-out items found in the top k / k"),
    ("NDCG", "discounted gain of the hits (1/log2(rank+1)) / the best possible for min(|held-out|, k) items"),
    ("MRR", "1 / rank of the first hit (0 without one)"),
    ("MAP", "mean of precision at each hit rank, / min(|held-out|, k)"),
    ("Coverage", "share of the catalog recommended to at least one user"),
    ("Novelty", "mean −log2 of the share of training users who interacted with a recommended item"),
    ("Diversity", "1 − mean pairwise similarity within a list (category Jaccard, or co-interaction cosine)"),
    ("ARP", "average number of training interactions of the recommended items"),
    ("Head share", "share of recommended items among the head (most popular items, first 20 % of interactions)"),
    ("CI", "95 % percentile bootstrap interval over users; p: paired bootstrap, H1 candidate > champion"),
)


# ---------------------------------------------------------------------------------------------- helpers


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return f"{x:,}"
    ax = abs(float(x))
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 10:
        return f"{x:.2f}"
    return f"{x:.{digits}f}"


def _value(block: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    if not block:
        return None
    entry = (block.get("metrics") or {}).get(metric)
    return entry if isinstance(entry, dict) else None


def _label(metric: str) -> str:
    base, _, k = metric.partition("@")
    return f"{METRIC_LABELS.get(base, base)}@{k}" if k else METRIC_LABELS.get(base, base)


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "recloop"})
    text = buf.getvalue()
    # Inline <svg> needs neither the XML prolog nor the DOCTYPE.
    text = re.sub(r"^<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    # Element ids ('figure_1', clip paths, markers) must be unique in the page: prefix them per chart,
    # references included.
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{salt}-{m.group(1)}"', text)
    text = re.sub(r'(href="#|url\(#)([^")]+)', lambda m: f"{m.group(1)}{salt}-{m.group(2)}", text)
    return f'<div class="chart">{text}</div>'


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.patch.set_facecolor("white")
    return fig


def _style_axes(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines[["left", "bottom"]].set_color("#b0b8c1")
    ax.tick_params(colors="#3d4852", labelsize=9)
    ax.grid(axis="y", color="#e9edf1", linewidth=0.8)
    ax.set_axisbelow(True)


class _Models:
    """The models in display order, with their colours: candidates, then the champion."""

    def __init__(self, doc: dict[str, Any]):
        ranking = doc.get("ranking") or list(doc.get("candidates") or {})
        self.entries: list[tuple[str, dict[str, Any], str, bool]] = []
        cands = doc.get("candidates") or {}
        for i, name in enumerate(n for n in ranking if n in cands):
            self.entries.append((name, cands[name], PALETTE[i % len(PALETTE)], False))
        champ = doc.get("champion")
        if champ and champ.get("metrics"):
            self.entries.append((f"champion v{champ.get('version')}", champ, CHAMPION_COLOR, True))

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any], str, bool]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


# ---------------------------------------------------------------------------------------------- charts


def _bar_chart(
    models: _Models, groups: Sequence[tuple[str, str]], salt: str, title: str, value_of: Any, ylabel: str = ""
) -> str:
    """Grouped bars: one group per (label, key), one bar per model, CI whiskers where known."""
    import numpy as np

    fig = _figure(10, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    n_models = max(len(models), 1)
    width = 0.8 / n_models
    x = np.arange(len(groups))
    for j, (name, block, color, is_champ) in enumerate(models):
        vals, lows, highs = [], [], []
        for _, key in groups:
            entry = value_of(block, key) or {}
            v = entry.get("value")
            vals.append(np.nan if v is None else v)
            lo, hi = entry.get("ci_low"), entry.get("ci_high")
            lows.append(0 if lo is None or v is None else max(v - lo, 0))
            highs.append(0 if hi is None or v is None else max(hi - v, 0))
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(
            pos,
            vals,
            width * 0.92,
            color=color,
            label=name,
            hatch="//" if is_champ else None,
            edgecolor="white" if not is_champ else "#5f5f5f",
            linewidth=0.6,
        )
        if any(lows) or any(highs):
            ax.errorbar(pos, vals, yerr=[lows, highs], fmt="none", ecolor="#333333", elinewidth=0.9, capsize=2.5)
    ax.set_xticks(x, [label for label, _ in groups])
    ax.set_title(title, fontsize=11, loc="left", color="#1f2933")
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9, color="#3d4852")
    ax.legend(frameon=False, fontsize=8.5, ncols=min(len(models), 4), loc="upper right")
    ymax = ax.get_ylim()[1]
    ax.set_ylim(0, ymax * 1.18)
    return _svg(fig, salt)


def _forest_chart(doc: dict[str, Any], metric: str, salt: str) -> str:
    """Candidate − champion on `metric`, with the paired-bootstrap CI, one row per candidate."""
    rows = []
    for name in doc.get("ranking") or []:
        vs = (doc["candidates"][name].get("vs_champion") or {}).get(metric)
        if vs and vs.get("diff") is not None:
            rows.append((name, vs))
    fig = _figure(10, 0.6 + 0.42 * max(len(rows), 1))
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e9edf1", linewidth=0.8)
    for i, (_name, vs) in enumerate(reversed(rows)):
        d, lo, hi = vs["diff"], vs.get("ci_low"), vs.get("ci_high")
        color = "#1a7f37" if lo is not None and lo > 0 else ("#cf222e" if hi is not None and hi < 0 else "#637381")
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [i, i], color=color, linewidth=2.2, solid_capstyle="round")
        ax.plot([d], [i], "o", color=color, markersize=7)
    ax.axvline(0, color="#333333", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(rows)), [n for n, _ in reversed(rows)])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"{_label(metric)}: candidate − champion (95 % CI)", fontsize=9, color="#3d4852")
    return _svg(fig, salt)


def _popularity_chart(models: _Models, salt: str) -> str:
    fig = _figure(5.2, 3.9)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    ax.grid(axis="x", color="#e9edf1", linewidth=0.8)
    data_curve = None
    for name, block, color, is_champ in models:
        curve = block.get("popularity_curve")
        if not curve or not curve.get("item_share"):
            continue
        data_curve = curve
        ax.plot(
            [100 * x for x in curve["item_share"]],
            [100 * y for y in curve["rec_share"]],
            color=color,
            linewidth=2,
            label=name,
            linestyle="--" if is_champ else "-",
        )
    if data_curve:
        ax.plot(
            [100 * x for x in data_curve["item_share"]],
            [100 * y for y in data_curve["data_share"]],
            color=DATA_COLOR,
            linewidth=1.6,
            linestyle=":",
            label="training data",
        )
        # A log axis resolves the head, where recommendation lists concentrate.
        ax.set_xscale("log")
        ax.set_xlim(100 * data_curve["item_share"][0], 100)
        ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set_ylim(0, 101)
    ax.set_xlabel("most popular items (% of catalog, log scale)", fontsize=9, color="#3d4852")
    ax.set_ylabel("cumulative share (%)", fontsize=9, color="#3d4852")
    ax.set_title("Popularity concentration", fontsize=11, loc="left", color="#1f2933")
    ax.legend(frameon=False, fontsize=8.5, loc="lower right")
    return _svg(fig, salt)


def _percent_formatter() -> FuncFormatter:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: f"{x:g}%")


def _coverage_chart(models: _Models, ks: Sequence[int], salt: str) -> str:
    import numpy as np

    fig = _figure(5.2, 3.9)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    names = [name for name, *_ in models]
    width = 0.8 / max(len(ks), 1)
    y = np.arange(len(names))
    shades = ("#4C78A8", "#9ECAE9", "#2F4B7C", "#C6DBEF")
    for j, k in enumerate(ks):
        vals = [100 * ((_value(block, f"coverage@{k}") or {}).get("value") or 0) for _, block, *_ in models]
        bars = ax.barh(y - 0.4 + width * (j + 0.5), vals, width * 0.9, color=shades[j % len(shades)], label=f"top {k}")
        for bar, v in zip(bars, vals):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {v:.1f}%",
                va="center",
                fontsize=8,
                color="#3d4852",
            )
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e9edf1", linewidth=0.8)
    ax.set_xlabel("catalog coverage (%)", fontsize=9, color="#3d4852")
    ax.set_xlim(0, max(ax.get_xlim()[1] * 1.15, 1))
    ax.set_title("Catalog coverage", fontsize=11, loc="left", color="#1f2933")
    # Above the plot, right of the title: inside it would cover the longest bars' labels.
    ax.legend(
        frameon=False, fontsize=8.5, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(ks), borderaxespad=0.2
    )
    return _svg(fig, salt)


# ---------------------------------------------------------------------------------------------- tables


def _metric_table(models: _Models, metrics: Sequence[str], lower_is_better: Sequence[str] = ()) -> str:
    best: dict[str, float] = {}
    for m in metrics:
        found = [(_value(b, m) or {}).get("value") for _, b, *_ in models]
        vals: list[float] = [v for v in found if v is not None]
        if vals:
            best[m] = min(vals) if m.split("@")[0] in lower_is_better else max(vals)
    head = "".join(f"<th>{_e(_label(m))}</th>" for m in metrics)
    rows = []
    for name, block, color, _ in models:
        cells = []
        for m in metrics:
            entry = _value(block, m) or {}
            v = entry.get("value")
            ci = ""
            if entry.get("ci_low") is not None:
                ci = f'<span class="ci">[{_num(entry["ci_low"])}, {_num(entry["ci_high"])}]</span>'
            cls = ' class="best"' if v is not None and len(models) > 1 and best.get(m) == v else ""
            cells.append(f"<td{cls}>{_num(v)}{ci}</td>")
        rows.append(
            f'<tr><td><span class="swatch" style="background:{color}"></span>{_e(name)}</td>' + "".join(cells) + "</tr>"
        )
    return f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _comparison_table(doc: dict[str, Any], metrics: Sequence[str]) -> str:
    """One row per candidate; per metric the difference to the champion, its CI and p-value."""
    rows = []
    for name in doc.get("ranking") or []:
        vs_all = doc["candidates"][name].get("vs_champion") or {}
        cells = []
        for m in metrics:
            vs = vs_all.get(m) or {}
            d = vs.get("diff")
            cls = "pos" if d is not None and d > 0 else ("neg" if d is not None and d < 0 else "")
            sign = "+" if d is not None and d > 0 else ""
            cells.append(
                f"<td class='{cls}'>{sign}{_num(d)}<span class='ci'>[{_num(vs.get('ci_low'))}, "
                f"{_num(vs.get('ci_high'))}] · p {_num(vs.get('p_value'), 3)}</span></td>"
            )
        rows.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>Δ {_e(_label(m))}</th>" for m in metrics)
    return f"<table><thead><tr><th>candidate</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ---------------------------------------------------------------------------------------------- page


def _headline(doc: dict[str, Any]) -> str:
    primary = doc.get("primary", "")
    best = doc.get("best_candidate")
    parts = []
    if best:
        entry = _value(doc["candidates"][best], primary) or {}
        ci = ""
        if entry.get("ci_low") is not None:
            ci = f" (95 % CI {_num(entry['ci_low'])} – {_num(entry['ci_high'])})"
        parts.append(
            f"Best candidate: <b>{_e(best)}</b> with {_e(_label(primary))} = <b>{_num(entry.get('value'))}</b>{ci}."
        )
    champ = doc.get("champion")
    if champ and champ.get("error"):
        parts.append(
            f'<span class="tag err">champion v{_e(champ.get("version"))} could not be evaluated</span> '
            f"{_e(champ['error'])}"
        )
    elif champ:
        entry = _value(champ, primary) or {}
        parts.append(
            f"Production champion v{_e(champ.get('version'))} ({_e(champ.get('type', ''))}) re-evaluated on "
            f"this split: {_num(entry.get('value'))}."
        )
        if best:
            vs = (doc["candidates"][best].get("vs_champion") or {}).get(primary) or {}
            if vs.get("diff") is not None:
                sign = "+" if vs["diff"] > 0 else ""
                parts.append(
                    f"Difference {sign}{_num(vs['diff'])} (CI {_num(vs.get('ci_low'))} – "
                    f"{_num(vs.get('ci_high'))}, p = {_num(vs.get('p_value'), 3)})."
                )
    else:
        parts.append("No production champion yet: this would be the first model.")
    return '<p class="headline">' + " ".join(parts) + "</p>"


def _importance_section(doc: dict[str, Any]) -> str:
    """Feature importances (share of gain) of learned ranking stages, most important first; '' without."""
    tables = []
    for name, block in (doc.get("candidates") or {}).items():
        gains = (block.get("info") or block).get("feature_importances") or {}
        if not gains:
            continue
        rows = "".join(
            f"<tr><td>{_e(feature)}</td><td class='num'>{_num(100 * share, 1)} %</td>"
            f"<td><div style='background:#4c78a8;height:10px;width:{max(1, round(300 * share))}px'></div></td></tr>"
            for feature, share in sorted(gains.items(), key=lambda kv: -kv[1])
        )
        tables.append(
            f"<h3 style='font-size:14px;margin:14px 0 0'>{_e(name)}</h3><table><thead><tr><th>feature</th>"
            f"<th>share of gain</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    if not tables:
        return ""
    return (
        "<section><h2>Learned ranking: feature importances</h2><p class='note'>Each feature's share of the "
        "total gain of the ranking stage's trees (LightGBM, importance type gain).</p>" + "".join(tables) + "</section>"
    )


def render_report(doc: dict[str, Any]) -> str:
    """The report page for one `metrics.json` document."""
    models = _Models(doc)
    ks = list(doc.get("k") or [])
    primary = str(doc.get("primary", "ndcg@10"))
    primary_k = primary.partition("@")[2]
    proto = doc.get("protocol") or {}
    champ = doc.get("champion") or {}
    title = f"Evaluation · {doc.get('model_name', '')}"

    facts = [
        ("run", doc.get("run_id", "")),
        ("split", f"{doc.get('split', '')} · {proto.get('ranking', '')} ranking"),
        ("users evaluated", _num(proto.get("n_users"))),
        ("items", _num(proto.get("n_items"))),
        ("primary metric", _label(primary)),
        ("bootstrap", f"{proto.get('bootstrap_resamples', 0)} resamples"),
        ("split fingerprint", str(doc.get("split_fingerprint", ""))[:12] + "…"),
    ]
    facts_html = "".join(
        f'<div class="fact"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in facts
    )

    body = [
        f"<header><h1>{_e(title)}</h1><div class='sub'>{_e(len(doc.get('candidates') or {}))} candidate(s) · "
        f"cut-offs {', '.join(str(k) for k in ks)} · sampled negatives: {_e(proto.get('sampled_negatives') or 'none')}"
        f"</div><div class='facts'>{facts_html}</div></header>"
    ]
    body.append(f"<section><h2>Summary</h2>{_headline(doc)}</section>")

    # Accuracy
    acc = [
        "<section><h2>Accuracy</h2><p class='note'>Mean over users with 95 % bootstrap confidence "
        "intervals; the best value per column is bold.</p>"
    ]
    if primary_k:
        groups = [(METRIC_LABELS[m], f"{m}@{primary_k}") for m in ACCURACY_METRICS]
        acc.append(_bar_chart(models, groups, "acc", f"Accuracy at k = {primary_k}", _value))
    for k in ks:
        acc.append(f"<h3 style='font-size:14px;margin:14px 0 0'>Top {k}</h3>")
        acc.append(_metric_table(models, [f"{m}@{k}" for m in ACCURACY_METRICS]))
    acc.append("</section>")
    body.append("".join(acc))

    # Champion comparison
    if champ and champ.get("metrics"):
        known = (
            f"{_num(champ.get('known_items'))} of {_num(champ.get('split_items'))} items, "
            f"{_num(champ.get('known_users'))} of {_num(champ.get('split_users'))} users"
        )
        at_k = primary_k or (str(ks[0]) if ks else "")
        compared = [primary] + [
            f"{m}@{at_k}" for m in ("ndcg", "recall", "hr", "mrr", "map") if f"{m}@{at_k}" != primary
        ]
        comparison = _comparison_table(doc, compared[:5])
        body.append(
            f"<section><h2>Candidates vs production champion v{_e(champ.get('version'))}</h2>"
            f"<p class='note'>Paired bootstrap on the same users. The champion knows {known} of this split; "
            f"items it does not know get no score.</p>{_forest_chart(doc, primary, 'forest')}"
            f"{comparison}</section>"
        )
    elif champ.get("error"):
        body.append(
            f"<section><h2>Production champion</h2><p><span class='tag err'>not evaluated</span> "
            f"{_e(champ['error'])}</p></section>"
        )

    # Segments
    present: set[str] = set()
    for _, block, *_ in models:
        present.update(block.get("segments") or {})
    preferred = [*(proto.get("history_buckets") or []), "head items", "tail items"]
    seg_labels = [lbl for lbl in preferred if lbl in present] + sorted(present - set(preferred))
    if seg_labels:

        def seg_value(block: dict[str, Any], label: str) -> dict[str, Any] | None:
            return ((block.get("segments") or {}).get(label) or {}).get("metrics", {}).get(primary)

        sizes = []
        first = models.entries[0][1] if len(models) else {}
        for label in seg_labels:
            n = ((first.get("segments") or {}).get(label) or {}).get("n_users")
            sizes.append(f"<td>{_num(n)}</td>")
        rows = []
        for name, block, color, _ in models:
            cells = "".join(f"<td>{_num((seg_value(block, lbl) or {}).get('value'))}</td>" for lbl in seg_labels)
            rows.append(f'<tr><td><span class="swatch" style="background:{color}"></span>{_e(name)}</td>{cells}</tr>')
        table = (
            "<table><thead><tr><th>segment</th>"
            + "".join(f"<th>{_e(lbl)}</th>" for lbl in seg_labels)
            + "</tr></thead><tbody><tr><td><i>users</i></td>"
            + "".join(sizes)
            + "</tr>"
            + "".join(rows)
            + "</tbody></table>"
        )
        body.append(
            "<section><h2>By segment</h2><p class='note'>Users by history length; head / tail: only the "
            f"held-out items among the head (or tail) items count. {_e(_label(primary))} per segment.</p>"
            + _bar_chart(models, [(lbl, lbl) for lbl in seg_labels], "seg", f"{_label(primary)} by segment", seg_value)
            + table
            + "</section>"
        )

    # Beyond accuracy
    data_head = proto.get("data_head_share")
    body.append(
        "<section><h2>Beyond accuracy</h2><p class='note'>Coverage, novelty and diversity: higher is broader. "
        "Popularity: a curve above the training-data curve means the model concentrates on popular items more than "
        f"users did; head items hold {_num(100 * data_head if data_head is not None else None, 1)} % of training "
        f"interactions. Diversity basis: {_e(proto.get('diversity_basis', ''))}.</p>"
        f"<div class='grid2'>{_popularity_chart(models, 'pop')}{_coverage_chart(models, ks, 'cov')}</div>"
        + "".join(
            f"<h3 style='font-size:14px;margin:14px 0 0'>Top {k}</h3>"
            + _metric_table(
                models,
                [f"{m}@{k}" for m in ("coverage", "novelty", "diversity", "arp", "head_share")],
                lower_is_better=("arp", "head_share"),
            )
            for k in ks
        )
        + "</section>"
    )

    body.append(_importance_section(doc))

    from recloop.evaluation.report_tuning import tuning_section  # it draws with this module's helpers

    body.append(tuning_section(doc, {name: color for name, _, color, _ in models}))

    # Protocol and definitions
    proto_rows = "".join(
        f"<tr><td>{_e(k.replace('_', ' '))}</td><td>{_e(v)}</td></tr>"
        for k, v in proto.items()
        if not isinstance(v, (dict, list))
    )
    defs = "".join(f"<dt>{_e(a)}</dt><dd>{_e(b)}</dd>" for a, b in _DEFINITIONS)
    body.append(
        f"<section><h2>Protocol</h2><div class='grid2'><table><tbody>{proto_rows}</tbody></table>"
        f"<dl class='defs'>{defs}</dl></div></section>"
    )
    body.append(
        f"<footer>recloop · split fingerprint <code>{_e(doc.get('split_fingerprint', ''))}</code> · "
        f"preprocess {_e(doc.get('preprocess_uri', ''))} · train {_e(doc.get('train_uri', ''))}</footer>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>" + "".join(body) + "</main></body></html>"
    )
