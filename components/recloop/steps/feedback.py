"""feedback: served slates + feedback events -> labelled interactions, bandit logs, abuse quarantine.

Reads the serving logs (`{serving.logs.prefix}/impressions|feedback/{date}/*.parquet`, schema in
`recloop.eventlog.records`) for one time window and writes `runs/{run}/feedback/`:

    interactions.parquet          clean positive events (user_id, item_id, timestamp, event_type, value,
                                  reward, request_id, position, model_version, policy, attributed)
    bandit_log.parquet            one row per shown slot of a recommendations slate: request_id, served_at,
                                  user_key, user_id, model_version, policy, position, item_id, score,
                                  propensity, history_length, fallback_reason, reward, clicked
    quarantine/feedback.parquet   events set aside, with `quarantine_reason` (only when there are some)
    report.json, report.md        counts at every stage, quarantine reasons and offenders, online CTR
    policy/, policy_report.json   the bandit policy and its off-policy evaluation (policy.enabled)

and appends the clean interactions to `feedback.output` as one file in the ingest input format (the
columns named by `data.interactions.columns`, the timestamp in `timestamp_unit`), so the next ingest picks
them up when `data.interactions.path` covers that folder (see docs/learning-loop.md).

The parts live in `recloop.feedback` (window: which logs are closed and claimed once per run; users:
pseudonyms -> user ids; join: events attached to slates, labelled interactions; abuse: the quarantine
rules; sink: the appended file; report) and `recloop.policy.refresh` (the policy update).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from recloop.artifacts.kinds import FeedbackBatch
from recloop.feedback.abuse import ABUSE_RULES, flag_abuse, impressions_per_item_day, top_offenders
from recloop.feedback.join import join_logs, label_interactions, reward_slots
from recloop.feedback.report import online_stats, render_summary
from recloop.feedback.sink import append_interactions
from recloop.feedback.users import user_resolver
from recloop.feedback.window import claim_window, iso, read_window_logs
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    from recloop.artifacts import Manifest


def _utcnow() -> datetime:
    return datetime.now(UTC)


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    cfg = ctx.config
    fb_cfg = cfg.feedback
    window = claim_window(ctx.store, cfg.name, ctx.run_id, fb_cfg.attribution_window, _utcnow(), fb_cfg.until)
    ctx.log(
        f"feedback: window ({iso(window.since) or 'the beginning'}, {iso(window.until)}]"
        + (f", taking over the unfinished claim of run {window.took_over}" if window.took_over else "")
        + (" (retry of this run's claim)" if window.retry else "")
    )
    logs = read_window_logs(ctx.store, cfg.serving.logs.prefix, window, fb_cfg.attribution_window)
    impressions = logs.impressions
    joined = join_logs(impressions, logs.previous_requests, logs.feedback, window, fb_cfg.attribution_window)
    versions = sorted({int(v) for v in impressions["model_version"].dropna()})
    resolve = user_resolver(ctx.store, cfg, versions)

    events = joined.events
    events["quarantine_reason"] = flag_abuse(
        events, impressions_per_item_day(impressions), fb_cfg.rewards, fb_cfg.abuse
    )
    quarantined = events[events["quarantine_reason"].notna()]
    clean_events = events[events["quarantine_reason"].isna()]
    labelled = label_interactions(clean_events, impressions, fb_cfg.rewards, resolve)
    interactions = labelled.interactions
    slots = reward_slots(joined.slots, labelled.positive, resolve)
    online = online_stats(slots)
    appended = append_interactions(cfg, ctx.store, ctx.run_id, interactions, window.took_over)

    reasons = quarantined["quarantine_reason"].value_counts().to_dict()
    report: dict[str, Any] = {
        "window": {
            "since": iso(window.since),
            "until": iso(window.until),
            "took_over": window.took_over,
            "attribution_window_s": fb_cfg.attribution_window.total_seconds(),
        },
        "read": logs.read,
        "impressions": {
            "slates": len(impressions),
            "recommendation_slates": int(slots["request_id"].nunique()) if len(slots) else 0,
            "model_versions": versions,
        },
        "events": {
            **joined.counts,
            "in_scope": len(events),
            "by_type": {str(k): int(v) for k, v in events["event_type"].value_counts().items()},
        },
        "quarantine": {
            "events": len(quarantined),
            "by_reason": {r: int(reasons.get(r, 0)) for r in ABUSE_RULES},
            "top_users": top_offenders(quarantined, "user_key"),
            "top_items": top_offenders(quarantined, "item_id"),
        },
        "clean": {
            "events": len(clean_events),
            "positive_events": len(labelled.positive),
            "duplicate_interactions": labelled.duplicates,
            "interactions": len(interactions),
        },
        "users": {"mapping": resolve.mode, "recovered": resolve.recovered, "kept_pseudonym": resolve.kept_pseudonym},
        "online": online,
        "appended": {
            "uri": appended.uri,
            "format": appended.format,
            "rows": appended.rows,
            "picked_up_by_next_ingest": appended.picked_up,
        },
    }
    if appended.uri and not appended.picked_up:
        report["appended"]["hint"] = (
            f"data.interactions.path ({cfg.data.interactions.path}) does not include "
            f"{appended.uri}: point it at a folder or glob that covers "
            f"{appended.destination}"
        )
    with ctx.writer(output) as writer:
        writer.put_parquet(FeedbackBatch.INTERACTIONS, interactions)
        writer.put_parquet(FeedbackBatch.BANDIT_LOG, slots)
        if len(quarantined):
            q = quarantined.drop(columns=["integrity"]).reset_index(drop=True)
            writer.put_parquet(FeedbackBatch.QUARANTINE, q)
        policy = None
        if cfg.policy.enabled:
            from recloop.policy.refresh import refresh_policy

            policy = refresh_policy(ctx.store, cfg, ctx.run_id, slots, writer, ctx.log)
            report["policy"] = policy.summary
        writer.put_json(FeedbackBatch.REPORT, report)
        writer.put_bytes(FeedbackBatch.SUMMARY, render_summary(cfg.name, ctx.run_id, report).encode())
        writer.summary.update(
            {
                "new_interactions": len(interactions),
                "impressions": len(impressions),
                "shown": online["shown"],
                "clicks": online["clicked"],
                "ctr": online["ctr"],
                "quarantined": len(quarantined),
                "quarantine_reasons": {k: int(v) for k, v in reasons.items()},
                "window_since": iso(window.since),
                "window_until": iso(window.until),
                "appended_uri": appended.uri,
                "picked_up_by_next_ingest": appended.picked_up,
                "policy": policy.summary if policy else None,
            }
        )
        if policy is not None and policy.promote is not None:
            policy.promote()
    ctx.log(
        f"feedback: {len(impressions)} slates, {online['clicked']} of {online['shown']} shown items clicked "
        f"(CTR {online['ctr'] if online['ctr'] is not None else '-'}), {len(quarantined)} events quarantined, "
        f"{len(interactions)} new interactions" + (f" -> {appended.uri}" if appended.uri else "")
    )
    if appended.uri and not appended.picked_up:
        ctx.log(f"feedback: WARNING {report['appended']['hint']}")
    return writer.manifest
