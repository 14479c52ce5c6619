"""Serving log records as the feedback step reads them: impression slates and feedback events, written
through serving's own `EventLog` (so the step reads exactly what the server writes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from recloop.config import ServingLogsConfig
from recloop.eventlog.records import feedback_schema, impression_schema
from recloop.serving.eventlog import EventLog


def slate(
    request_id: str,
    user: str | None,
    items: list[str],
    served_at: datetime,
    *,
    version: int = 1,
    propensities: list[float] | None = None,
    policy: str = "epsilon_greedy",
    endpoint: str = "recommendations",
) -> dict[str, Any]:
    """An impression record: the slate `items` served for `request_id`."""
    return {
        "request_id": request_id,
        "served_at": served_at,
        "endpoint": endpoint,
        "user_key": user,
        "user_known": True,
        "model_name": "test",
        "model_version": version,
        "model_type": "popularity",
        "policy": policy,
        "search": "exact",
        "k": len(items),
        "exclude_seen": True,
        "history_length": 3,
        "item_ids": items,
        "scores": [float(10 - i) for i in range(len(items))],
        "propensities": propensities or [1.0] * len(items),
        "latency_ms": 1.0,
    }


def event(
    feedback_id: str,
    request_id: str | None,
    user: str | None,
    item: str,
    when: datetime,
    event_type: str = "click",
    value: float | None = None,
) -> dict[str, Any]:
    """A feedback record: `user` did `event_type` on `item`."""
    return {
        "feedback_id": feedback_id,
        "received_at": when,
        "event_time": when,
        "request_id": request_id,
        "user_key": user,
        "item_id": item,
        "event_type": event_type,
        "value": value,
    }


def write_logs(store: Any, impressions: list[dict], feedback: list[dict], prefix: str = "logs") -> None:
    """Through serving's own writer, so the step reads exactly what the server writes."""
    settings = ServingLogsConfig(prefix=prefix)
    if impressions:
        log = EventLog(
            store, "impressions", impression_schema(), "served_at", settings, "test-1", None, refuse_when_full=False
        )
        log.append(impressions)
        assert log.flush() == len(impressions)
    if feedback:
        log = EventLog(
            store, "feedback", feedback_schema(), "received_at", settings, "test-1", None, refuse_when_full=True
        )
        log.append(feedback)
        assert log.flush() == len(feedback)
