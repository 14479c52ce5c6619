"""The feedback run's online statistics and its human summary (report.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import pandas as pd


def online_stats(slots: pd.DataFrame) -> dict[str, Any]:
    """Slates, shown and clicked items and CTR, overall and by policy, model version and position."""

    def block(frame: pd.DataFrame) -> dict[str, Any]:
        shown = len(frame)
        clicked = int(frame["clicked"].sum()) if shown else 0
        return {
            "slates": int(frame["request_id"].nunique()) if shown else 0,
            "shown": shown,
            "clicked": clicked,
            "ctr": round(clicked / shown, 6) if shown else None,
        }

    out = block(slots)
    out["by_policy"] = {str(k): block(g) for k, g in slots.groupby("policy", dropna=False)} if len(slots) else {}
    out["by_model_version"] = {str(k): block(g) for k, g in slots.groupby("model_version")} if len(slots) else {}
    # position is a numeric column (the slot, 1-based).
    out["by_position"] = (
        {int(cast(int, k)): block(g)["ctr"] for k, g in slots.groupby("position")} if len(slots) else {}
    )
    return out


def render_summary(name: str, run_id: str, report: dict[str, Any]) -> str:
    """A short human summary (report.md)."""
    w, o, q, c, a = report["window"], report["online"], report["quarantine"], report["clean"], report["appended"]
    ctr = f"{o['ctr']:.2%}" if o["ctr"] is not None else "n/a"
    lines = [
        f"# Feedback {name} · run {run_id}",
        "",
        f"Window: served after {w['since'] or 'the beginning'} up to {w['until']}"
        + (f" (took over run {w['took_over']})" if w["took_over"] else ""),
        f"- Slates: {report['impressions']['slates']} ({o['shown']} items shown); clicked {o['clicked']} (CTR {ctr})",
        f"- Events in scope: {report['events']['in_scope']} (attributed {report['events'].get('attributed', 0)}, "
        f"organic {report['events'].get('organic', 0)}, unknown slate {report['events'].get('unknown_request', 0)}, "
        f"late {report['events'].get('late', 0)}, without user {report['events'].get('no_user', 0)})",
        f"- Quarantined: {q['events']}"
        + ("" if not q["events"] else " — " + ", ".join(f"{r} {n}" for r, n in q["by_reason"].items() if n)),
        f"- Clean interactions: {c['interactions']} -> {a['uri'] or 'nothing appended'}",
    ]
    if a.get("hint"):
        lines.append(f"- WARNING: {a['hint']}")
    if report["users"]["mapping"] == "pseudonyms":
        lines.append(
            "- Users: serving.privacy.hmac_key is not set, so appended interactions use pseudonyms "
            "(new users to the model); set it to extend known users' histories"
        )
    policy = report.get("policy")
    if policy:
        lines.append(f"- Policy: {policy.get('decision')}: {policy.get('reason')}")
    if o["by_policy"]:
        lines += ["", "| policy | slates | shown | clicked | CTR |", "|---|---:|---:|---:|---:|"]
        for pol, b in o["by_policy"].items():
            rate = "n/a" if b["ctr"] is None else f"{b['ctr']:.2%}"
            lines.append(f"| {pol} | {b['slates']} | {b['shown']} | {b['clicked']} | {rate} |")
    return "\n".join(lines) + "\n"
