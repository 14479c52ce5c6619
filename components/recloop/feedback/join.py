"""Impressions joined with feedback events: events attached to their slates, slates exploded into slots,
and the clean positive events labelled as interactions (with reward, position, model version, policy).

Events without any user (anonymous, no slate) are dropped and counted; events arriving after the
attribution window are `late`; events naming a slate that did not show the item, or that was another
user's, get an integrity reason (`not_shown`, `user_mismatch`) the abuse rules quarantine first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

from recloop.eventlog.records import RECOMMENDATIONS, listed

if TYPE_CHECKING:
    import pandas as pd

    from recloop.feedback.window import Window

SLOT_COLUMNS = [
    "request_id",
    "served_at",
    "user_key",
    "model_name",
    "model_version",
    "policy",
    "position",
    "item_id",
    "score",
    "propensity",
    "history_length",
    "fallback_reason",
    "user_known",
]


def _lookup(keys: pd.Series, table: pd.Series) -> pd.Series:
    """keys.map(table) that keeps the table's dtype when the table is empty (map would fall back to float)."""
    import pandas as pd

    if table.empty:
        # pandas-stubs' pd.array overloads take only literal dtypes; any dtype works at run time.
        return pd.Series(pd.array([None] * len(keys), dtype=table.dtype), index=keys.index)  # type: ignore[arg-type,list-item]
    return keys.map(table)


@dataclass
class Joined:
    events: pd.DataFrame  # every event in scope with user_key resolved, attributed flag, reason
    slots: pd.DataFrame  # one row per shown slot of in-window impressions
    counts: dict[str, int] = field(default_factory=dict)


def join_logs(
    impressions: pd.DataFrame,
    previous_requests: set[str],
    feedback: pd.DataFrame,
    window: Window,
    attribution: timedelta,
) -> Joined:
    """Attach each feedback event to its slate; explode slates into slots."""
    import pandas as pd

    counts: dict[str, int] = {}
    served = impressions.set_index("request_id")
    fb = feedback.copy()
    in_window = fb["request_id"].isin(served.index)
    since = pd.Timestamp(window.since) if window.since is not None else None
    until = pd.Timestamp(window.until)
    received = fb["received_at"]
    organic = fb["request_id"].isna()
    in_range = (received <= until) & ((received > since) if since is not None else True)
    earlier = ~organic & ~in_window & fb["request_id"].isin(previous_requests)
    unknown = ~organic & ~in_window & ~earlier & in_range
    counts["handled_earlier"] = int((earlier & in_range).sum())
    scope = in_window | (organic & in_range) | unknown
    fb = fb[scope].copy()
    in_window = fb["request_id"].isin(served.index)
    slate_user = _lookup(fb["request_id"], served["user_key"]).where(in_window)
    slate_time = _lookup(fb["request_id"], served["served_at"]).where(in_window)
    late = in_window & (fb["received_at"] > slate_time + pd.Timedelta(attribution))
    counts["late"] = int(late.sum())
    fb = fb[~late].copy()
    in_window = in_window[~late]
    slate_user, slate_time = slate_user[~late], slate_time[~late]
    fb["attributed"] = in_window.to_numpy(bool)
    # The slate's user stands in for events that carry none; a different user is an integrity failure.
    has_own = fb["user_key"].notna()
    mismatch = in_window & has_own & slate_user.notna() & (fb["user_key"] != slate_user)
    fb["user_key"] = fb["user_key"].where(has_own, slate_user)
    shown_sets = served["item_ids"].map(lambda items: set(listed(items)))
    shown = [
        item in shown_sets.get(req, ()) if att else True
        for item, req, att in zip(fb["item_id"], fb["request_id"], fb["attributed"])
    ]
    integrity = pd.Series(None, index=fb.index, dtype=object)
    integrity[mismatch.to_numpy(bool)] = "user_mismatch"
    integrity[~np.asarray(shown, bool)] = "not_shown"
    fb["integrity"] = integrity
    no_user = fb["user_key"].isna()
    counts["no_user"] = int(no_user.sum())
    fb = fb[~no_user].copy()
    counts["attributed"] = int(fb["attributed"].sum())
    counts["organic"] = int(fb["request_id"].isna().sum())
    counts["unknown_request"] = int((fb["request_id"].notna() & ~fb["attributed"]).sum())
    return Joined(fb, _slots(impressions), counts)


def _slots(impressions: pd.DataFrame) -> pd.DataFrame:
    """One row per shown slot of the recommendations slates."""
    import pandas as pd

    recs = impressions[impressions["endpoint"] == RECOMMENDATIONS]
    rows = []
    for rec in recs.itertuples(index=False):
        items = listed(rec.item_ids)
        scores = listed(rec.scores) or [np.nan] * len(items)
        props = listed(rec.propensities) or [np.nan] * len(items)
        for pos, (item, score, prop) in enumerate(zip(items, scores, props), start=1):
            rows.append(
                (
                    rec.request_id,
                    rec.served_at,
                    rec.user_key,
                    rec.model_name,
                    rec.model_version,
                    rec.policy,
                    pos,
                    item,
                    score,
                    prop,
                    rec.history_length,
                    rec.fallback_reason,
                    rec.user_known,
                )
            )
    slots = pd.DataFrame(rows, columns=SLOT_COLUMNS)
    if slots.empty:
        slots = slots.astype(
            {
                "served_at": "datetime64[ms, UTC]",
                "model_version": "int64",
                "position": "int64",
                "score": "float64",
                "propensity": "float64",
                "history_length": "int64",
            }
        )
    return slots


def _empty_interactions() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "user_id": pd.Series(dtype=object),
            "item_id": pd.Series(dtype=object),
            "timestamp": pd.Series(dtype="datetime64[ms, UTC]"),
            "event_type": pd.Series(dtype=object),
            "value": pd.Series(dtype="float64"),
            "reward": pd.Series(dtype="float64"),
            "request_id": pd.Series(dtype=object),
            "position": pd.Series(dtype="Int64"),
            "model_version": pd.Series(dtype="Int64"),
            "policy": pd.Series(dtype=object),
            "attributed": pd.Series(dtype=bool),
        }
    )


@dataclass
class Labelled:
    positive: pd.DataFrame  # clean events of a rewarded type, with reward, user_id, slate details
    interactions: pd.DataFrame  # the positive events as interactions, one per (user, item, timestamp)
    duplicates: int  # positive events dropped as the same (user, item, timestamp)


def label_interactions(
    clean_events: pd.DataFrame,
    impressions: pd.DataFrame,
    rewards: dict[str, float],
    resolve: Callable[[str | None], str | None],
) -> Labelled:
    """The clean events of a rewarded type as interactions: reward, user id, and the slate's model version,
    policy and slot when attributed."""
    import pandas as pd

    positive = clean_events[clean_events["event_type"].isin(list(rewards))].copy()
    served = impressions.set_index("request_id")
    positive["reward"] = positive["event_type"].map(rewards).astype("float64")
    positive["user_id"] = [resolve(u) for u in positive["user_key"]]
    positive["model_version"] = positive["request_id"].map(served["model_version"]).astype("Int64")
    positive["policy"] = positive["request_id"].map(served["policy"])
    slot_of = {
        (r, i): p
        for r, items in zip(impressions["request_id"], impressions["item_ids"])
        for p, i in enumerate(listed(items), start=1)
    }
    positive["position"] = pd.array(
        [
            slot_of.get((r, i)) if a else None
            for r, i, a in zip(positive["request_id"], positive["item_id"], positive["attributed"])
        ],
        dtype="Int64",
    )
    positive = positive.rename(columns={"event_time": "timestamp"})
    interactions = positive[list(_empty_interactions().columns)] if len(positive) else _empty_interactions()
    before = len(interactions)
    interactions = (
        interactions.sort_values("timestamp", kind="stable")
        .drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
        .reset_index(drop=True)
    )
    return Labelled(positive, interactions, before - len(interactions))


def reward_slots(
    slots: pd.DataFrame, positive: pd.DataFrame, resolve: Callable[[str | None], str | None]
) -> pd.DataFrame:
    """The slots with their reward (the best attributed event's), clicked flag and resolved user id."""
    attributed = positive[positive["attributed"]]
    reward_of = attributed.groupby(["request_id", "item_id"])["reward"].max().to_dict() if len(attributed) else {}
    slots["reward"] = [float(reward_of.get((r, i), 0.0)) for r, i in zip(slots["request_id"], slots["item_id"])]
    slots["clicked"] = slots["reward"] > 0
    slots.insert(3, "user_id", [resolve(u) for u in slots["user_key"]])
    return slots
