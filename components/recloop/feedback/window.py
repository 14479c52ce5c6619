"""The feedback window: which serving logs are closed, claimed once per run, and reading them.

Impressions are processed once their attribution window has closed: served in (since, until],
until = now - feedback.attribution_window; a feedback event counts for a slate when received within that
window after it was served. The window is claimed in `feedback/{name}/state.json` with a compare-and-swap
before any work, so concurrent runs cannot process the same logs twice; a retry of the same run id redoes
exactly its own window, and a run that finds an earlier claim whose artifact never committed (a crash)
takes that window over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from recloop.artifacts import Artifact, run_prefix
from recloop.artifacts.kinds import FeedbackBatch
from recloop.errors import ConflictError, DataError
from recloop.eventlog.records import (
    FEEDBACK,
    IMPRESSIONS,
    feedback_schema,
    impression_schema,
    log_day,
    log_file_keys,
    read_log_files,
)

if TYPE_CHECKING:
    import pandas as pd

    from recloop.store import ArtifactStore

STATE_NAME = "state.json"


def state_key(pipeline_name: str) -> str:
    return f"feedback/{pipeline_name}/{STATE_NAME}"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment is not None else None


def _parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class Window:
    since: datetime | None  # exclusive
    until: datetime  # inclusive
    took_over: str | None = None  # run id of a crashed claim this run took over
    retry: bool = False


def claim_window(
    store: ArtifactStore,
    pipeline_name: str,
    run_id: str,
    window: timedelta,
    now: datetime,
    until: datetime | None = None,
) -> Window:
    """Decide this run's window and record the claim (compare-and-swap on the state object).

    The window ends at `until` when given (replays, backfills), else at now - `window`.
    """
    key = state_key(pipeline_name)
    info = store.stat(key)
    state: dict[str, Any] | None = None
    if info is not None:
        try:
            state = json.loads(store.get_bytes(key))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{store.uri(key)} is not valid JSON ({exc}); delete it to reprocess every log, or "
                f"restore it from the newest feedback artifact's {FeedbackBatch.REPORT} (window)"
            ) from None
    if state is not None and state.get("run_id") == run_id:
        return Window(
            _parse_iso(state.get("previous_until")),
            _parse_iso(state["processed_until"]) or now,
            state.get("took_over"),
            retry=True,
        )
    took_over = None
    since = _parse_iso(state.get("processed_until")) if state else None
    if state is not None and not Artifact.exists(store, run_prefix(str(state["run_id"]), "feedback")):
        # The claiming run never committed: redo its window as part of this one.
        since = _parse_iso(state.get("previous_until"))
        took_over = str(state["run_id"])
    until = until if until is not None else now - window
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if since is not None and until < since:
        until = since
    claim = {
        "run_id": run_id,
        "previous_until": iso(since),
        "processed_until": iso(until),
        "claimed_at": iso(now),
        "took_over": took_over,
    }
    try:
        store.put_if_match(key, json.dumps(claim, indent=2).encode(), info.etag if info else None)
    except ConflictError:
        raise ConflictError(
            f"another feedback run claimed new logs at the same time ({store.uri(key)} changed); "
            "run one feedback step at a time and retry this one"
        ) from None
    return Window(since, until, took_over)


@dataclass
class WindowLogs:
    impressions: pd.DataFrame  # slates served in the window, de-duplicated
    previous_requests: set[str]  # request ids of the previous window's tail (their feedback was handled)
    feedback: pd.DataFrame  # events that may belong to the window, de-duplicated
    read: dict[str, int]  # files, records and duplicates read


def read_window_logs(store: ArtifactStore, logs_prefix: str, window: Window, attribution: timedelta) -> WindowLogs:
    """In-window impressions (deduped), request ids of the previous window's tail, feedback in scope."""
    import pandas as pd

    first = window.since - attribution if window.since is not None else None
    imp_keys = log_file_keys(store, logs_prefix, IMPRESSIONS, log_day(first) if first else None, log_day(window.until))
    fb_keys = log_file_keys(
        store,
        logs_prefix,
        FEEDBACK,
        log_day(window.since) if window.since else None,
        log_day(window.until + attribution),
    )
    impressions = read_log_files(store, imp_keys, impression_schema()).to_pandas(types_mapper=None)
    feedback = read_log_files(store, fb_keys, feedback_schema()).to_pandas(types_mapper=None)
    read = {
        "impression_files": len(imp_keys),
        "feedback_files": len(fb_keys),
        "impression_records": len(impressions),
        "feedback_records": len(feedback),
    }
    impressions = impressions.sort_values(["served_at", "request_id"], kind="stable")
    before = len(impressions)
    impressions = impressions.drop_duplicates("request_id", keep="first")
    read["duplicate_impressions"] = before - len(impressions)
    before = len(feedback)
    feedback = feedback.drop_duplicates("feedback_id", keep="first")
    read["duplicate_feedback"] = before - len(feedback)
    until = pd.Timestamp(window.until)
    since = pd.Timestamp(window.since) if window.since is not None else None
    current = impressions["served_at"] <= until
    if since is not None:
        current &= impressions["served_at"] > since
    previous = set(impressions.loc[~current & (impressions["served_at"] <= until), "request_id"].astype(str))
    return WindowLogs(impressions[current].reset_index(drop=True), previous, feedback.reset_index(drop=True), read)
