"""feedback: served slates + feedback events -> labelled interactions, bandit logs, abuse quarantine.

Reads the serving logs (`{serving.logs.prefix}/impressions|feedback/{date}/*.parquet`, schema in
`recloop.serving.eventlog`) for one time window and writes `runs/{run}/feedback/`:

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

Window. Impressions are processed once their attribution window has closed: served in (since, until],
until = now - feedback.attribution_window; a feedback event counts for a slate when received within that
window after it was served. The window is claimed in `feedback/{name}/state.json` with a compare-and-swap
before any work, so concurrent runs cannot process the same logs twice; a retry of the same run id redoes
exactly its own window and overwrites its own appended file, and a run that finds an earlier claim whose
artifact never committed (a crash) takes that window over and removes the crashed run's partial output.

Users. Logs carry HMAC pseudonyms. With `serving.privacy.hmac_key` set, pseudonyms of users known to the
served model versions are mapped back to their ids, so feedback extends those users' histories; otherwise
(or for users the model never saw) the pseudonym is the user id of the appended interactions.

Abuse rules (`feedback.abuse`), applied in this order, each event quarantined under the first that hits:
not_shown / user_mismatch (the event names a slate that did not show that item / was another user's),
bot_burst, user_rate_cap, repeated_event, unattributed_spike, item_rate_cap. Events without any user
(anonymous, no slate) are dropped and counted; events arriving after the attribution window are `late`.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from recloop.artifacts import Artifact, run_prefix, safe_run_id
from recloop.errors import ConflictError, DataError
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from recloop.artifacts import ArtifactWriter, Manifest
    from recloop.config import FeedbackAbuseConfig, PipelineConfig
    from recloop.store import ArtifactStore


STATE_NAME = "state.json"
IMPRESSIONS = "impressions"
FEEDBACK = "feedback"
RECOMMENDATIONS = "recommendations"
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Order matters: an event is quarantined under the first rule that hits it.
ABUSE_RULES: tuple[str, ...] = ("not_shown", "user_mismatch", "bot_burst", "user_rate_cap", "repeated_event",
                                "unattributed_spike", "item_rate_cap")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def state_key(pipeline_name: str) -> str:
    return f"feedback/{pipeline_name}/{STATE_NAME}"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment is not None else None


def _parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# ---------------------------------------------------------------------------------------------- window


@dataclass
class Window:
    since: datetime | None  # exclusive
    until: datetime  # inclusive
    took_over: str | None = None  # run id of a crashed claim this run took over
    retry: bool = False


def claim_window(store: ArtifactStore, pipeline_name: str, run_id: str, window: timedelta,
                 now: datetime, until: datetime | None = None) -> Window:
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
            raise DataError(f"{store.uri(key)} is not valid JSON ({exc}); delete it to reprocess every log, or "
                            "restore it from the newest feedback artifact's report.json (window)") from None
    if state is not None and state.get("run_id") == run_id:
        return Window(_parse_iso(state.get("previous_until")), _parse_iso(state["processed_until"]) or now,
                      state.get("took_over"), retry=True)
    took_over = None
    since = _parse_iso(state.get("processed_until")) if state else None
    if state is not None and not Artifact.exists(store, run_prefix(str(state["run_id"]), "feedback")):
        # The claiming run never committed: redo its window as part of this one.
        since = _parse_iso(state.get("previous_until"))
        took_over = str(state["run_id"])
    until = until if until is not None else now - window
    if until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    if since is not None and until < since:
        until = since
    claim = {"run_id": run_id, "previous_until": _iso(since), "processed_until": _iso(until),
             "claimed_at": _iso(now), "took_over": took_over}
    try:
        store.put_if_match(key, json.dumps(claim, indent=2).encode(), info.etag if info else None)
    except ConflictError:
        raise ConflictError(f"another feedback run claimed new logs at the same time ({store.uri(key)} changed); "
                            "run one feedback step at a time and retry this one") from None
    return Window(since, until, took_over)


# ---------------------------------------------------------------------------------------------- reading logs


def _log_keys(store: ArtifactStore, prefix: str, first_day: str | None, last_day: str) -> list[str]:
    keys = []
    for key in store.list(prefix):
        rest = key[len(prefix) + 1:]
        day, _, name = rest.partition("/")
        if not _DAY_RE.match(day) or not name.endswith(".parquet"):
            continue
        if (first_day is None or day >= first_day) and day <= last_day:
            keys.append(key)
    return keys


def _read_tables(store: ArtifactStore, keys: list[str], schema: pa.Schema) -> pa.Table:
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
            raise DataError(f"{store.uri(key)} is not a readable Parquet log ({exc}); move it out of the log "
                            "folder (it was written by something else or truncated) and re-run feedback") from None
        missing = [f.name for f in schema if f.name not in table.column_names]
        for name in missing:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
        tables.append(table.select(schema.names).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _seq(value: Any) -> list[Any]:
    """A logged list cell (None, list or numpy array) as a list."""
    return [] if value is None else list(value)


def _day(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).date().isoformat()


# ---------------------------------------------------------------------------------------------- users


class UserResolver:
    """Pseudonym -> user id for users the served model versions know (needs serving.privacy.hmac_key)."""

    def __init__(self, mapping: dict[str, str] | None):
        self.mapping = mapping
        self._recovered: set[str] = set()
        self._kept: set[str] = set()

    @property
    def mode(self) -> str:
        return "hmac" if self.mapping is not None else "pseudonyms"

    @property
    def recovered(self) -> int:
        """Distinct users mapped back to their ids."""
        return len(self._recovered)

    @property
    def kept_pseudonym(self) -> int:
        """Distinct users whose pseudonym stays their id."""
        return len(self._kept)

    def __call__(self, user_key: str | None) -> str | None:
        if user_key is None:
            return None
        if self.mapping is not None and user_key in self.mapping:
            self._recovered.add(user_key)
            return self.mapping[user_key]
        self._kept.add(user_key)
        return user_key


def user_resolver(ctx: StepContext, model_versions: list[int]) -> UserResolver:
    key = ctx.config.serving.privacy.hmac_key
    if key is None:
        return UserResolver(None)
    from recloop.registry import ID_MAPS_DIR, ModelRegistry
    from recloop.serving.security import Pseudonymizer

    pseudonym = Pseudonymizer(key.get_secret_value(), "serving.privacy.hmac_key")
    registry = ModelRegistry(ctx.store, ctx.config.serving.model_name or ctx.config.model_name)
    versions = set(model_versions)
    alias = registry.production()
    if alias is not None:
        versions.add(alias.version)
    mapping: dict[str, str] = {}
    for version in sorted(versions):
        prefix = registry.version_prefix(version)
        if not Artifact.exists(ctx.store, prefix):
            continue
        art = Artifact.open(ctx.store, prefix)
        if f"{ID_MAPS_DIR}/users.parquet" not in art.manifest.files:
            continue
        for user_id in art.read_parquet(f"{ID_MAPS_DIR}/users.parquet", columns=["user_id"])["user_id"].astype(str):
            mapping.setdefault(pseudonym(user_id) or "", user_id)
    return UserResolver(mapping)


# ---------------------------------------------------------------------------------------------- abuse


def flag_abuse(events: pd.DataFrame, item_impressions: dict[tuple[str, str], int], rewards: dict[str, float],
               rules: FeedbackAbuseConfig) -> pd.Series:
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
        if np.any(t[n - 1:] - t[: len(t) - n + 1] < span_ms):
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


# ---------------------------------------------------------------------------------------------- joining


def _lookup(keys: pd.Series, table: pd.Series) -> pd.Series:
    """keys.map(table) that keeps the table's dtype when the table is empty (map would fall back to float)."""
    import pandas as pd

    if table.empty:
        return pd.Series(pd.array([None] * len(keys), dtype=table.dtype), index=keys.index)
    return keys.map(table)


@dataclass
class Joined:
    events: pd.DataFrame  # every event in scope with user_key resolved, attributed flag, reason
    slots: pd.DataFrame  # one row per shown slot of in-window impressions
    counts: dict[str, int] = field(default_factory=dict)


def join_logs(impressions: pd.DataFrame, previous_requests: set[str], feedback: pd.DataFrame, window: Window,
              attribution: timedelta) -> Joined:
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
    scope = (in_window | (organic & in_range) | unknown)
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
    shown_sets = served["item_ids"].map(lambda items: set(_seq(items)))
    shown = [item in shown_sets.get(req, ()) if att else True
             for item, req, att in zip(fb["item_id"], fb["request_id"], fb["attributed"])]
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

    recs = impressions[impressions["endpoint"] == RECOMMENDATIONS]
    rows = []
    for rec in recs.itertuples(index=False):
        items = _seq(rec.item_ids)
        scores = _seq(rec.scores) or [np.nan] * len(items)
        props = _seq(rec.propensities) or [np.nan] * len(items)
        for pos, (item, score, prop) in enumerate(zip(items, scores, props), start=1):
            rows.append((rec.request_id, rec.served_at, rec.user_key, rec.model_name, rec.model_version, rec.policy,
                         pos, item, score, prop, rec.history_length, rec.fallback_reason, rec.user_known))
    slots = pd.DataFrame(rows, columns=["request_id", "served_at", "user_key", "model_name", "model_version",
                                        "policy", "position", "item_id", "score", "propensity", "history_length",
                                        "fallback_reason", "user_known"])
    if slots.empty:
        slots = slots.astype({"served_at": "datetime64[ms, UTC]", "model_version": "int64", "position": "int64",
                              "score": "float64", "propensity": "float64", "history_length": "int64"})
    return Joined(fb, slots, counts)


# ---------------------------------------------------------------------------------------------- appending


@dataclass
class Destination:
    """Where clean interactions are appended: the store, a local folder, or an s3:// folder."""

    uri: str
    write: Callable[[str, bytes], None]
    delete: Callable[[str], None]


def destination(ctx: StepContext) -> Destination:
    out = ctx.config.feedback.output
    if out is None:
        prefix = "feedback/interactions"
        return Destination(ctx.store.uri(prefix), lambda name, data: ctx.store.put_bytes(f"{prefix}/{name}", data),
                           lambda name: ctx.store.delete(f"{prefix}/{name}"))
    if out.startswith("s3://"):
        from recloop.data.readers import s3_data_store

        store, key = s3_data_store(out.rstrip("/") + "/", ctx.config.store)
        key = key.strip("/")

        def s3_key(name: str) -> str:
            return f"{key}/{name}" if key else name

        return Destination(out.rstrip("/"), lambda name, data: store.put_bytes(s3_key(name), data),
                           lambda name: store.delete(s3_key(name)))
    folder = Path(out[len("file://"):] if out.startswith("file://") else out)

    def write_local(name: str, data: bytes) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        except OSError as exc:
            raise DataError(f"feedback.output: cannot write to {folder} ({exc.strerror or exc}); fix the path "
                            "or its permissions") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)

    def delete_local(name: str) -> None:
        (folder / name).unlink(missing_ok=True)

    return Destination(str(folder), write_local, delete_local)


def output_format(cfg: PipelineConfig) -> str:
    """feedback.format, or (auto) the format the configured interactions are in."""
    if cfg.feedback.format != "auto":
        return cfg.feedback.format
    source = cfg.data.interactions
    if source.format != "auto":
        return "csv" if source.format == "tsv" else source.format
    from recloop.data.readers import infer_format, resolve_sources

    try:
        fmt, _ = infer_format(source.path, "auto", "data.interactions")
    except DataError:
        try:  # a folder or a glob: the format of the files already there
            fmt = resolve_sources(source.path, "auto", cfg.store, "data.interactions")[0].format
        except (DataError, IndexError):
            return "parquet"  # nothing to match: Parquet keeps types exactly
    return "csv" if fmt == "tsv" else fmt


def appended_name(run_id: str, fmt: str) -> str:
    return f"feedback-{safe_run_id(run_id)}.{fmt}"


def to_ingest_format(clean: pd.DataFrame, cfg: PipelineConfig, fmt: str) -> bytes:
    """Clean positive events as rows the configured ingest reads: mapped column names, timestamp unit."""
    import pandas as pd

    source = cfg.data.interactions
    cols = source.columns
    unit = source.timestamp_unit
    ts = clean["timestamp"]
    if unit == "iso":
        stamp: Any = ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    else:
        ms = ts.astype("datetime64[ms, UTC]").astype("int64")
        stamp = {"s": ms // 1000, "ms": ms, "us": ms * 1000, "ns": ms * 1_000_000}[unit]
    out = pd.DataFrame({cols.user: clean["user_id"].astype(str), cols.item: clean["item_id"].astype(str),
                        cols.timestamp: stamp})
    if cols.rating:
        rated = clean["event_type"].map(cfg.feedback.event_ratings).astype("float64")
        out[cols.rating] = clean["value"].where(clean["event_type"] == "rating", rated).astype("float64")
    if cols.event_type:
        out[cols.event_type] = clean["event_type"].astype(str)
    if cols.weight:
        out[cols.weight] = clean["reward"].astype("float64")
    for name in cols.context:
        out[name] = pd.Series([None] * len(out), dtype=object)
    buf = io.BytesIO()
    if fmt == "parquet":
        out.to_parquet(buf, index=False)
    elif fmt == "jsonl":
        out.to_json(buf, orient="records", lines=True)
    else:
        delimiter = source.delimiter or ("\t" if source.format == "tsv" else ",")
        buf.write(out.to_csv(index=False, sep=delimiter).encode(source.encoding))
    return buf.getvalue()


def picked_up(cfg: PipelineConfig, uri: str) -> bool:
    """Whether the next ingest's `data.interactions.path` includes the appended file."""
    from recloop.data.readers import resolve_sources

    try:
        files = resolve_sources(cfg.data.interactions.path, cfg.data.interactions.format, cfg.store, "data.interactions")
    except DataError:
        return False
    return any(os.path.abspath(f.uri) == os.path.abspath(uri) if "://" not in uri else f.uri == uri for f in files)


# ---------------------------------------------------------------------------------------------- the step


def _frames(ctx: StepContext, window: Window) -> tuple[pd.DataFrame, set[str], pd.DataFrame, dict[str, int]]:
    """In-window impressions (deduped), request ids of the previous window's tail, feedback in scope."""
    import pandas as pd

    from recloop.serving.eventlog import feedback_schema, impression_schema

    logs = ctx.config.serving.logs.prefix
    attribution = ctx.config.feedback.attribution_window
    first = window.since - attribution if window.since is not None else None
    imp_keys = _log_keys(ctx.store, f"{logs}/{IMPRESSIONS}", _day(first) if first else None, _day(window.until))
    fb_keys = _log_keys(ctx.store, f"{logs}/{FEEDBACK}", _day(window.since) if window.since else None,
                        _day(window.until + attribution))
    impressions = _read_tables(ctx.store, imp_keys, impression_schema()).to_pandas(types_mapper=None)
    feedback = _read_tables(ctx.store, fb_keys, feedback_schema()).to_pandas(types_mapper=None)
    read = {"impression_files": len(imp_keys), "feedback_files": len(fb_keys),
            "impression_records": len(impressions), "feedback_records": len(feedback)}
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
    return impressions[current].reset_index(drop=True), previous, feedback.reset_index(drop=True), read


def _empty_interactions() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"user_id": pd.Series(dtype=object), "item_id": pd.Series(dtype=object),
                         "timestamp": pd.Series(dtype="datetime64[ms, UTC]"), "event_type": pd.Series(dtype=object),
                         "value": pd.Series(dtype="float64"), "reward": pd.Series(dtype="float64"),
                         "request_id": pd.Series(dtype=object), "position": pd.Series(dtype="Int64"),
                         "model_version": pd.Series(dtype="Int64"), "policy": pd.Series(dtype=object),
                         "attributed": pd.Series(dtype=bool)})


def _online_stats(slots: pd.DataFrame) -> dict[str, Any]:
    def block(frame: pd.DataFrame) -> dict[str, Any]:
        shown = len(frame)
        clicked = int(frame["clicked"].sum()) if shown else 0
        return {"slates": int(frame["request_id"].nunique()) if shown else 0, "shown": shown, "clicked": clicked,
                "ctr": round(clicked / shown, 6) if shown else None}

    out = block(slots)
    out["by_policy"] = {str(k): block(g) for k, g in slots.groupby("policy", dropna=False)} if len(slots) else {}
    out["by_model_version"] = ({str(k): block(g) for k, g in slots.groupby("model_version")} if len(slots) else {})
    out["by_position"] = ({int(k): block(g)["ctr"] for k, g in slots.groupby("position")} if len(slots) else {})
    return out


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    import pandas as pd

    cfg = ctx.config
    fb_cfg = cfg.feedback
    window = claim_window(ctx.store, cfg.name, ctx.run_id, fb_cfg.attribution_window, _utcnow(), fb_cfg.until)
    ctx.log(f"feedback: window ({_iso(window.since) or 'the beginning'}, {_iso(window.until)}]"
            + (f", taking over the unfinished claim of run {window.took_over}" if window.took_over else "")
            + (" (retry of this run's claim)" if window.retry else ""))
    impressions, previous, feedback, read = _frames(ctx, window)
    joined = join_logs(impressions, previous, feedback, window, fb_cfg.attribution_window)
    versions = sorted({int(v) for v in impressions["model_version"].dropna()})
    resolve = user_resolver(ctx, versions)

    events = joined.events
    item_days: dict[tuple[str, str], int] = {}
    for items, served_at in zip(impressions["item_ids"], impressions["served_at"]):
        d = _day(served_at.to_pydatetime())
        for item in _seq(items):
            item_days[(str(item), d)] = item_days.get((str(item), d), 0) + 1
    events["quarantine_reason"] = flag_abuse(events, item_days, fb_cfg.rewards, fb_cfg.abuse)
    quarantined = events[events["quarantine_reason"].notna()]
    clean_events = events[events["quarantine_reason"].isna()]
    positive = clean_events[clean_events["event_type"].isin(list(fb_cfg.rewards))].copy()

    served = impressions.set_index("request_id")
    positive["reward"] = positive["event_type"].map(fb_cfg.rewards).astype("float64")
    positive["user_id"] = [resolve(u) for u in positive["user_key"]]
    positive["model_version"] = positive["request_id"].map(served["model_version"]).astype("Int64")
    positive["policy"] = positive["request_id"].map(served["policy"])
    slot_of = {(r, i): p for r, items in zip(impressions["request_id"], impressions["item_ids"])
               for p, i in enumerate(_seq(items), start=1)}
    positive["position"] = pd.array([slot_of.get((r, i)) if a else None for r, i, a in
                                     zip(positive["request_id"], positive["item_id"], positive["attributed"])],
                                    dtype="Int64")
    positive = positive.rename(columns={"event_time": "timestamp"})
    interactions = positive[list(_empty_interactions().columns)] if len(positive) else _empty_interactions()
    before = len(interactions)
    interactions = interactions.sort_values("timestamp", kind="stable").drop_duplicates(
        ["user_id", "item_id", "timestamp"], keep="first").reset_index(drop=True)
    duplicate_interactions = before - len(interactions)

    slots = joined.slots
    attributed = positive[positive["attributed"]]
    reward_of = attributed.groupby(["request_id", "item_id"])["reward"].max().to_dict() if len(attributed) else {}
    slots["reward"] = [float(reward_of.get((r, i), 0.0)) for r, i in zip(slots["request_id"], slots["item_id"])]
    slots["clicked"] = slots["reward"] > 0
    slots.insert(3, "user_id", [resolve(u) for u in slots["user_key"]])
    online = _online_stats(slots)

    fmt = output_format(cfg)
    dest = destination(ctx)
    name = appended_name(ctx.run_id, fmt)
    if window.took_over:
        dest.delete(appended_name(window.took_over, fmt))
    appended_uri = None
    if len(interactions):
        dest.write(name, to_ingest_format(interactions, cfg, fmt))
        appended_uri = f"{dest.uri}/{name}"
    else:
        dest.delete(name)  # a retry that now finds nothing must not leave an earlier attempt's file
    seen_by_ingest = picked_up(cfg, appended_uri) if appended_uri else None

    reasons = quarantined["quarantine_reason"].value_counts().to_dict()
    report: dict[str, Any] = {
        "window": {"since": _iso(window.since), "until": _iso(window.until), "took_over": window.took_over,
                   "attribution_window_s": fb_cfg.attribution_window.total_seconds()},
        "read": read,
        "impressions": {"slates": len(impressions), "recommendation_slates": int(slots["request_id"].nunique())
                        if len(slots) else 0, "model_versions": versions},
        "events": {**joined.counts, "in_scope": len(events),
                   "by_type": {str(k): int(v) for k, v in events["event_type"].value_counts().items()}},
        "quarantine": {"events": len(quarantined), "by_reason": {r: int(reasons.get(r, 0)) for r in ABUSE_RULES},
                       "top_users": _top(quarantined, "user_key"), "top_items": _top(quarantined, "item_id")},
        "clean": {"events": len(clean_events), "positive_events": len(positive),
                  "duplicate_interactions": duplicate_interactions, "interactions": len(interactions)},
        "users": {"mapping": resolve.mode, "recovered": resolve.recovered, "kept_pseudonym": resolve.kept_pseudonym},
        "online": online,
        "appended": {"uri": appended_uri, "format": fmt, "rows": len(interactions),
                     "picked_up_by_next_ingest": seen_by_ingest},
    }
    if appended_uri and not seen_by_ingest:
        report["appended"]["hint"] = (f"data.interactions.path ({cfg.data.interactions.path}) does not include "
                                      f"{appended_uri}: point it at a folder or glob that covers {dest.uri}")
    with ctx.writer(output) as writer:
        writer.put_parquet("interactions.parquet", interactions)
        writer.put_parquet("bandit_log.parquet", slots)
        if len(quarantined):
            q = quarantined.drop(columns=["integrity"]).reset_index(drop=True)
            writer.put_parquet("quarantine/feedback.parquet", q)
        promotions: list[Callable[[], Any]] = []
        policy_summary = _policy(ctx, writer, slots, report, promotions)
        writer.put_json("report.json", report)
        writer.put_bytes("report.md", render_summary(cfg.name, ctx.run_id, report).encode())
        writer.summary.update({
            "new_interactions": len(interactions), "impressions": len(impressions), "shown": online["shown"],
            "clicks": online["clicked"], "ctr": online["ctr"], "quarantined": len(quarantined),
            "quarantine_reasons": {k: int(v) for k, v in reasons.items()},
            "window_since": _iso(window.since), "window_until": _iso(window.until),
            "appended_uri": appended_uri, "picked_up_by_next_ingest": seen_by_ingest, "policy": policy_summary,
        })
        for promote in promotions:
            promote()
    ctx.log(f"feedback: {len(impressions)} slates, {online['clicked']} of {online['shown']} shown items clicked "
            f"(CTR {online['ctr'] if online['ctr'] is not None else '-'}), {len(quarantined)} events quarantined, "
            f"{len(interactions)} new interactions" + (f" -> {appended_uri}" if appended_uri else ""))
    if appended_uri and not seen_by_ingest:
        ctx.log(f"feedback: WARNING {report['appended']['hint']}")
    return writer.manifest


def _top(frame: pd.DataFrame, column: str, n: int = 5) -> list[dict[str, Any]]:
    if frame.empty:
        return []
    counts = frame.groupby(column)["quarantine_reason"].agg(["size", lambda s: sorted(set(s))])
    counts.columns = ["events", "reasons"]
    counts = counts.sort_values("events", ascending=False).head(n)
    return [{column: str(k), "events": int(row.events), "reasons": list(row.reasons)} for k, row in counts.iterrows()]


def _policy(ctx: StepContext, writer: ArtifactWriter, slots: pd.DataFrame, report: dict[str, Any],
            pending: list[Callable[[], Any]]) -> dict[str, Any] | None:
    """Train, evaluate and maybe publish the bandit policy; records the outcome in the report."""
    cfg = ctx.config
    if not cfg.policy.enabled:
        return None
    from recloop.policy import training

    model_name = cfg.serving.model_name or cfg.model_name
    recs = slots[slots["fallback_reason"].isna() & slots["user_id"].notna()]
    if len(slots) < cfg.policy.min_slots:
        note = {"decision": "skipped", "reason": f"{len(slots)} logged slots, fewer than policy.min_slots "
                f"({cfg.policy.min_slots}); the policy is trained once enough slates were served"}
        report["policy"] = note
        return note
    alias, etag = training.read_policy_alias(ctx.store, model_name)
    with tempfile.TemporaryDirectory(prefix="recloop-policy-") as tmp_name:
        tmp = Path(tmp_name)
        bases: dict[int, training.BaseVersion] = {}
        pools: dict[tuple[int, str], training.Pool] = {}
        missing_versions = []
        for version, rows in recs.groupby("model_version"):
            try:
                base = training.load_base_version(ctx.store, model_name, int(version), tmp)
            except Exception as exc:  # noqa: BLE001 - a version deleted from the registry only shrinks the log
                missing_versions.append({"version": int(version), "error": str(exc)})
                continue
            bases[int(version)] = base
            found = training.candidate_pools(base, rows["user_id"].astype(str).tolist(), cfg.policy.candidates,
                                             cfg.serving.rules.excluded_items)
            pools.update({(int(version), user): pool for user, pool in found.items()})
        if not bases:
            note = {"decision": "skipped", "reason": "none of the logged model versions could be loaded "
                    f"from the registry {model_name!r}: {missing_versions}"}
            report["policy"] = note
            return note
        newest = bases[max(bases)]
        space = training.feature_space_for(newest, cfg.policy)
        data = training.build_bandit_data(slots, pools, space)
        if data.n_slots < cfg.policy.min_slots:
            note = {"decision": "skipped", "skipped_requests": data.skipped,
                    "reason": f"only {data.n_slots} logged slots have a reconstructable candidate pool (fewer "
                              f"than policy.min_slots {cfg.policy.min_slots})"}
            report["policy"] = note
            return note
        warm = None
        if alias is not None:
            try:
                warm = training.load_production_policy(ctx.store, model_name, tmp / "warm")
            except Exception as exc:  # noqa: BLE001 - a broken old policy must not block a new one
                ctx.log(f"feedback: the published policy cannot be loaded ({exc}); training from scratch")
        outcome = training.train_and_evaluate(cfg.policy, data, space, warm)
        details = {**outcome.to_dict(), "skipped_requests": data.skipped, "missing_versions": missing_versions,
                   "pool_size": cfg.policy.candidates,
                   "alias_key": training.alias_key(model_name) if outcome.gate.passed else None}
        outcome.policy.save(tmp / training.POLICY_FOLDER)
        writer.add_dir(training.POLICY_FOLDER, tmp / training.POLICY_FOLDER)
        writer.put_json("policy_report.json", details)
    if outcome.gate.passed:
        # Moved last, just before the manifest commits, so the alias never names a folder still being written.
        pending.append(lambda: training.promote_policy(ctx.store, model_name, writer.manifest.uri, ctx.run_id,
                                                       outcome, etag))
    summary = {"decision": details["decision"], "estimator": outcome.gate.estimator,
               "candidate_value": outcome.gate.candidate_value, "logging_value": outcome.gate.logging_value,
               "reason": outcome.gate.reason}
    report["policy"] = summary
    ctx.log(f"feedback: policy {outcome.policy.name} {details['decision']}: {outcome.gate.reason}")
    return summary


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
        lines.append("- Users: serving.privacy.hmac_key is not set, so appended interactions use pseudonyms "
                     "(new users to the model); set it to extend known users' histories")
    policy = report.get("policy")
    if policy:
        lines.append(f"- Policy: {policy.get('decision')}: {policy.get('reason')}")
    if o["by_policy"]:
        lines += ["", "| policy | slates | shown | clicked | CTR |", "|---|---:|---:|---:|---:|"]
        for pol, b in o["by_policy"].items():
            rate = "n/a" if b["ctr"] is None else f"{b['ctr']:.2%}"
            lines.append(f"| {pol} | {b['slates']} | {b['shown']} | {b['clicked']} | {rate} |")
    return "\n".join(lines) + "\n"
