"""Abuse rules (`feedback.abuse`): which feedback events are quarantined, and why.

Applied in this order, each event quarantined under the first that hits: not_shown / user_mismatch (the
event names a slate that did not show that item / was another user's; found by the join), bot_burst,
user_rate_cap, repeated_event, unattributed_spike, item_rate_cap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.eventlog.records import listed, log_day

if TYPE_CHECKING:
    import pandas as pd

    from recloop.config import FeedbackAbuseConfig

# Order matters: an event is quarantined under the first rule that hits it.
ABUSE_RULES: tuple[str, ...] = (
    "not_shown",
    "user_mismatch",
    "bot_burst",
    "user_rate_cap",
    "repeated_event",
    "unattributed_spike",
    "item_rate_cap",
)


def impressions_per_item_day(impressions: pd.DataFrame) -> dict[tuple[str, str], int]:
    """How often each item was shown on each (UTC) day: the baseline of the unattributed_spike rule."""
    counts: dict[tuple[str, str], int] = {}
    for items, served_at in zip(impressions["item_ids"], impressions["served_at"]):
        d = log_day(served_at.to_pydatetime())
        for item in listed(items):
            counts[(str(item), d)] = counts.get((str(item), d), 0) + 1
    return counts


def flag_abuse(
    events: pd.DataFrame,
    item_impressions: dict[tuple[str, str], int],
    rewards: dict[str, float],
    rules: FeedbackAbuseConfig,
) -> pd.Series:
    """The quarantine reason of each event (None = clean).

    `events` needs: user_key, item_id, event_type, event_time, attributed (bool), integrity (a reason from
    the slate join or None). `item_impressions` counts impressions per (item_id, day).
    """
    import pandas as pd

    reason = pd.Series(events["integrity"].to_numpy(object), index=events.index, dtype=object)
    if events.empty:
        return reason
    positive = events["event_type"].isin(list(rewards)).to_numpy()
    day = events["event_time"].dt.strftime("%Y-%m-%d")

    def mark(mask: np.ndarray, name: str) -> None:
        free = reason.isna().to_numpy()
        reason[mask & free] = name

    # bot_burst: any run of `burst_events` events by one user inside `burst_window`.
    span_ms = rules.burst_window.total_seconds() * 1000.0
    bots: set[str] = set()
    for user, times in events.groupby("user_key", sort=False)["event_time"]:
        if len(times) < rules.burst_events:
            continue
        t = np.sort(times.to_numpy("datetime64[ms]").astype(np.int64))
        n = rules.burst_events
        if np.any(t[n - 1 :] - t[: len(t) - n + 1] < span_ms):
            bots.add(str(user))
    mark(events["user_key"].isin(bots).to_numpy(), "bot_burst")

    if rules.max_user_events_per_day is not None:
        per_user_day = events.groupby([events["user_key"], day])["item_id"].transform("size")
        mark((per_user_day > rules.max_user_events_per_day).to_numpy(), "user_rate_cap")

    order = np.argsort(events["event_time"].to_numpy("datetime64[ms]"), kind="stable")
    ranked = events.iloc[order]
    # Rank of each positive event among the same (user, item, type), oldest first, among events still clean.
    still = reason.iloc[order].isna().to_numpy() & positive[order]
    nth = ranked[still].groupby(["user_key", "item_id", "event_type"]).cumcount()
    repeat = np.zeros(len(events), bool)
    repeat[order[still]] = (nth >= rules.max_repeat_events).to_numpy()
    mark(repeat, "repeated_event")

    unattributed = positive & ~events["attributed"].to_numpy(bool) & reason.isna().to_numpy()
    if unattributed.any():
        counts = events[unattributed].groupby([events["item_id"][unattributed], day[unattributed]]).size()
        spiking = set()
        for (item, d), count in counts.items():
            shown = item_impressions.get((str(item), str(d)), 0)
            if count >= rules.spike_min_events and count > rules.spike_ratio * shown:
                spiking.add((str(item), str(d)))
        if spiking:
            keys = list(zip(events["item_id"].astype(str), day))
            mark(unattributed & np.array([k in spiking for k in keys]), "unattributed_spike")

    if rules.max_item_events_per_day is not None:
        still = reason.iloc[order].isna().to_numpy() & positive[order]
        nth = ranked[still].groupby([ranked["item_id"][still], day.iloc[order][still]]).cumcount()
        capped = np.zeros(len(events), bool)
        capped[order[still]] = (nth >= rules.max_item_events_per_day).to_numpy()
        mark(capped, "item_rate_cap")
    return reason


def top_offenders(quarantined: pd.DataFrame, column: str, n: int = 5) -> list[dict[str, Any]]:
    """The `n` users or items (`column`) with the most quarantined events, and their reasons."""
    if quarantined.empty:
        return []

    def distinct_reasons(reasons: pd.Series) -> list[str]:
        return sorted(set(reasons))

    counts = quarantined.groupby(column)["quarantine_reason"].agg(["size", distinct_reasons])
    counts.columns = ["events", "reasons"]
    counts = counts.sort_values("events", ascending=False).head(n)
    return [{column: str(k), "events": int(row.events), "reasons": list(row.reasons)} for k, row in counts.iterrows()]
