"""The impression and feedback log records, and where their files live in the store.

Layout (one file per flush and day; keys never collide across replicas or restarts):

    {logs.prefix}/impressions/{YYYY-MM-DD}/{YYYYMMDDTHHMMSS.fffZ}-{instance}-{seq:06d}.parquet
    {logs.prefix}/feedback/{YYYY-MM-DD}/{YYYYMMDDTHHMMSS.fffZ}-{instance}-{seq:06d}.parquet

The day is the UTC date of each record's `served_at` (impressions) or `received_at` (feedback).
Delivery is at-least-once, so readers de-duplicate on `request_id` (impressions) and `feedback_id`
(feedback). No raw user id ever reaches a log: `user_key` / `session_key` are keyed HMAC pseudonyms
(`recloop.eventlog.pseudonym`).

IMPRESSION_SCHEMA (one row per served slate):
  request_id string         the id returned to the client (X-Request-ID); joins feedback
  served_at timestamp[ms, UTC]
  endpoint string           recommendations | similar
  user_key string?          pseudonym of user_id (null: anonymous request)
  session_key string?       pseudonym of session_id
  user_known bool           the model was trained on this user
  model_name string, model_version int64, model_type string
  policy string             greedy | epsilon_greedy (how slots were filled)
  fallback_reason string?   unknown_user | no_history | cold_history | model_error (null: personalized)
  search string             exact | ann | ann_exhausted | fallback:<popular|trending|text> | similar
  k int64, category string?, exclude_seen bool
  anchor_item_id string?    the item of a similar-items request
  history_length int64      history items the slate was computed from
  item_ids list<string>     shown items, slot order (position 1 first)
  scores list<float64>      model (or fallback) score of each shown item
  propensities list<float64> probability the policy put each item in its slot given the slots above
  latency_ms float64

FEEDBACK_SCHEMA (one row per event):
  feedback_id string        unique per event (assigned by the server)
  received_at timestamp[ms, UTC]
  event_time timestamp[ms, UTC]   client's time of the event (received_at when not given)
  request_id string?        the slate the event responds to (null: organic event)
  user_key string?, session_key string?
  item_id string            raw item id
  event_type string         e.g. click, view, add_to_cart, purchase, rating, dismiss
  value float64?            e.g. the rating, a purchase amount
  position int64?           1-based slot of the item in that slate, when the client knows it
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from recloop.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

    from recloop.store import ArtifactStore

IMPRESSIONS = "impressions"
FEEDBACK = "feedback"
RECOMMENDATIONS = "recommendations"  # the endpoint of personalized slates (the other is "similar")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def impression_schema() -> pa.Schema:
    import pyarrow as pa

    ts = pa.timestamp("ms", tz="UTC")
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("served_at", ts),
            ("endpoint", pa.string()),
            ("user_key", pa.string()),
            ("session_key", pa.string()),
            ("user_known", pa.bool_()),
            ("model_name", pa.string()),
            ("model_version", pa.int64()),
            ("model_type", pa.string()),
            ("policy", pa.string()),
            ("fallback_reason", pa.string()),
            ("search", pa.string()),
            ("k", pa.int64()),
            ("category", pa.string()),
            ("exclude_seen", pa.bool_()),
            ("anchor_item_id", pa.string()),
            ("history_length", pa.int64()),
            ("item_ids", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
            ("propensities", pa.list_(pa.float64())),
            ("latency_ms", pa.float64()),
        ]
    )


def feedback_schema() -> pa.Schema:
    import pyarrow as pa

    ts = pa.timestamp("ms", tz="UTC")
    return pa.schema(
        [
            ("feedback_id", pa.string()),
            ("received_at", ts),
            ("event_time", ts),
            ("request_id", pa.string()),
            ("user_key", pa.string()),
            ("session_key", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("value", pa.float64()),
            ("position", pa.int64()),
        ]
    )


def log_day(moment: datetime) -> str:
    """The UTC day (YYYY-MM-DD) whose folder holds a record of this time."""
    return moment.astimezone(UTC).date().isoformat()


def log_file_key(prefix: str, log: str, day: date, instance: str, seq: int, written_at: datetime) -> str:
    """The key of one flushed file of `log` (impressions | feedback) for `day`."""
    stamp = written_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    return f"{prefix}/{log}/{day.isoformat()}/{stamp}-{instance}-{seq:06d}.parquet"


def log_file_keys(store: ArtifactStore, prefix: str, log: str, first_day: str | None, last_day: str) -> list[str]:
    """The files of `log` under `prefix` for the days first_day..last_day (None: from the first)."""
    folder = f"{prefix}/{log}"
    keys = []
    for key in store.list(folder):
        rest = key[len(folder) + 1 :]
        day, _, name = rest.partition("/")
        if not _DAY_RE.match(day) or not name.endswith(".parquet"):
            continue
        if (first_day is None or day >= first_day) and day <= last_day:
            keys.append(key)
    return keys


def read_log_files(store: ArtifactStore, keys: list[str], schema: pa.Schema) -> pa.Table:
    """The files as one table of `schema` (columns missing from older files are null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for key in keys:
        local = store.local_path(key)
        try:
            table = pq.read_table(local) if local is not None else pq.read_table(pa.BufferReader(store.get_bytes(key)))
        except FileNotFoundError:
            continue  # removed by retention between listing and reading
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{store.uri(key)} is not a readable Parquet log ({exc}); move it out of the log "
                "folder (it was written by something else or truncated) and re-run feedback"
            ) from None
        missing = [f.name for f in schema if f.name not in table.column_names]
        for name in missing:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
        tables.append(table.select(schema.names).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def listed(value: Any) -> list[Any]:
    """A logged list cell (None, list or numpy array) as a list."""
    return [] if value is None else list(value)
