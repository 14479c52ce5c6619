"""Replay simulator of the learning loop: serve -> log -> feedback -> retrain -> gate -> publish, R times.

The world is replayed from the data itself. Events are ordered by time; the newest `future_share` of them
is held out as "the future" and cut into R consecutive rounds with equal numbers of events. The loop
starts from a model trained on the past only. In round r every user active in that round's events (or a
sample of them) asks for a slate; the slate comes from the production model through the serving layer's
own ranking (`SlateEngine`, with the config's rules and epsilon-greedy exploration) or, once the feedback
step has published one, through the bandit policy over the model's candidates. A shown item counts as
clicked when it is among the user's interactions in that round (their "next interactions"); the click
is logged at that interaction's time. Impressions and clicks are written with serving's log writer, the
feedback step turns them into interactions appended to the training data, and the training pipeline
retrains, gates and publishes. Nothing goes over HTTP; all artifacts land in the configured store.

Everything a simulation writes is kept apart from the real pipeline: pipeline and model name
`{name}-{sim id}`, data under `simulations/{sim id}/data/`, logs under `simulations/{sim id}/logs/`,
report `simulations/{sim id}/report.html` (+ `report.json`, `ctr.png`).

Per round the report shows the online CTR of the served slates (clicked / shown), the CTR the initial
model would have had on the same users and round (a frozen control: how much the loop itself added), the
offline metric of the retrained model and of the champion on the retraining run's split, the gate's
decision, and what feedback added or quarantined. A closing verdict says whether the loop improved, and
if not, why (too little feedback next to the training data, the gate kept rejecting, no significant
difference).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from recloop.errors import ConfigError, DataError, RecloopError

if TYPE_CHECKING:
    import pandas as pd

    from recloop.config import PipelineConfig
    from recloop.pipeline import PipelineResult
    from recloop.policy.online import PolicyHolder
    from recloop.serving.loader import ServedModel
    from recloop.store import ArtifactStore

SIMULATIONS_PREFIX = "simulations"


class SimulationError(RecloopError):
    """The simulation cannot go on (e.g. the initial model was not blessed)."""


@dataclass(frozen=True)
class SimulationSettings:
    rounds: int
    users_per_round: int | None = None  # None = every user active in the round
    k: int = 10
    future_share: float = 0.3
    epsilon: float = 0.1  # serving exploration while simulating, so off-policy evaluation has support
    organic: bool = True  # report the round's other interactions as organic feedback (the app's own events)
    seed: int = 0
    sim_id: str | None = None

    def check(self) -> None:
        problems = []
        if self.rounds < 1:
            problems.append(f"--rounds must be at least 1 (got {self.rounds})")
        if self.users_per_round is not None and self.users_per_round < 1:
            problems.append(f"--users-per-round must be at least 1 (got {self.users_per_round})")
        if self.k < 1:
            problems.append(f"--k must be at least 1 (got {self.k})")
        if not 0 < self.future_share < 1:
            problems.append(f"--future-share must lie strictly between 0 and 1 (got {self.future_share})")
        if not 0 <= self.epsilon < 1:
            problems.append(f"--epsilon must lie in [0, 1) (got {self.epsilon})")
        if self.sim_id is not None and not _valid_sim_id(self.sim_id):
            problems.append(f"--sim-id must be lower-case letters, digits and '-', at most 30 (got {self.sim_id!r})")
        if problems:
            raise ConfigError("simulate options", problems)


def _valid_sim_id(value: str) -> bool:
    import re

    return bool(re.match(r"^[a-z0-9][a-z0-9\-]{0,29}$", value))


@dataclass
class RoundResult:
    round: int
    window_start: str
    window_end: str
    model_version: int | None
    policy: str
    users: int
    shown: int
    clicks: int
    ctr: float | None
    control_ctr: float | None  # the initial model, greedy, on the same users and round
    organic_events: int = 0
    new_interactions: int = 0
    quarantined: int = 0
    offline_metric: str | None = None
    offline_candidate: float | None = None
    offline_champion: float | None = None
    gate: str | None = None
    gate_reasons: list[str] = field(default_factory=list)
    published_version: int | None = None
    policy_decision: str | None = None
    seconds: float = 0.0


@dataclass
class SimulationResult:
    sim_id: str
    pipeline: str
    report_uri: str
    rounds: list[RoundResult]
    initial_version: int | None
    initial_offline: float | None
    verdict: str
    improved: bool
    data: dict[str, Any]


# ---------------------------------------------------------------------------------------------- setup


def _default_sim_id() -> str:
    return "sim-" + datetime.now(UTC).strftime("%Y%m%dt%H%M%S")


def read_source_events(
    cfg: PipelineConfig, store: ArtifactStore, sim_id: str, log: Callable[[str], None]
) -> pd.DataFrame:
    """All interactions the config names, through the ingest step (any format, local or S3)."""
    from recloop.artifacts.kinds import RawEvents
    from recloop.steps.base import StepContext, run_step

    ctx = StepContext(config=cfg, store=store, run_id=f"{sim_id}-source", log=log)
    manifest = run_step("ingest", ctx)
    frame = RawEvents(ctx.open(manifest.uri)).interactions()
    frame = frame[frame["user_id"].notna() & frame["item_id"].notna() & frame["timestamp"].notna()]
    if frame.empty:
        raise DataError(f"{cfg.data.interactions.path}: no usable interactions to simulate with")
    return frame.sort_values(["timestamp", "source_file", "source_row"], kind="stable").reset_index(drop=True)


def split_rounds(events: pd.DataFrame, rounds: int, future_share: float) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """(past, [round 1 events, ...]): the newest `future_share` of events cut into equal-count rounds."""
    n = len(events)
    n_future = int(round(n * future_share))
    if n_future < rounds or n - n_future < 1:
        raise DataError(
            f"{n} events cannot be split into a past and {rounds} future rounds with future share "
            f"{future_share:g}; lower --rounds or raise --future-share"
        )
    start = n - n_future
    bounds = np.linspace(start, n, rounds + 1).round().astype(int)
    return events.iloc[:start], [events.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def sim_config(
    cfg: PipelineConfig,
    store: ArtifactStore,
    sim_id: str,
    data_key: str,
    settings: SimulationSettings,
    has: dict[str, bool],
    click_rating: float | None,
    attribution: timedelta,
) -> PipelineConfig:
    """The simulation's own pipeline: its data folder, model name, logs and secrets."""
    from recloop.config import from_dict

    # Python mode keeps secrets (SecretStr) and typed values as they are; JSON mode would mask the secrets.
    raw = cfg.model_dump(mode="python", exclude={"models"})
    raw["models"] = [m.model_dump(mode="python") for m in cfg.models]
    local = store.local_path(data_key)
    data_path = str(local) if local is not None else store.uri(data_key)
    columns: dict[str, Any] = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
    for name in ("rating", "event_type", "weight"):
        if has.get(name):
            columns[name] = name
    raw["name"] = f"{cfg.name}-{sim_id}"[:63]
    raw["data"]["interactions"] = {"path": data_path, "format": "parquet", "columns": columns, "timestamp_unit": "s"}
    raw["data"]["since"] = None
    raw["publish"]["model_name"] = None
    serving = raw["serving"]
    serving["model_name"] = None
    serving["logs"]["prefix"] = f"{SIMULATIONS_PREFIX}/{sim_id}/logs"
    serving["privacy"]["hmac_key"] = secrets.token_urlsafe(32)
    serving["exploration"] = {"epsilon": settings.epsilon, "seed": settings.seed}
    serving["auth"]["api_keys"] = None
    fb = raw["feedback"]
    fb["output"] = f"{data_path}/feedback"
    fb["format"] = "parquet"
    fb["attribution_window"] = attribution
    if click_rating is not None:
        fb["event_ratings"] = {**fb.get("event_ratings", {}), "click": click_rating}
    return from_dict(raw, f"{cfg.source} (simulation {sim_id})")


# ---------------------------------------------------------------------------------------------- serving


@dataclass
class Served:
    request_id: str
    user_id: str
    items: list[str]
    scores: list[float]
    propensities: list[float]
    policy: str
    fallback: str | None
    search: str
    history_length: int
    user_known: bool


def serve_users(
    served: ServedModel,
    cfg: PipelineConfig,
    users: list[str],
    k: int,
    request_prefix: str,
    bandit: PolicyHolder | None,
    greedy: bool = False,
) -> list[Served]:
    """One slate per user from the serving layer's ranking (with the published bandit policy, if any)."""
    from recloop.serving.ranking import SlateEngine, SlateQuery

    settings = cfg.serving
    if greedy:
        settings = settings.model_copy(update={"exploration": settings.exploration.model_copy(update={"epsilon": 0.0})})
    engine = SlateEngine(settings, None if greedy else bandit)
    model = served.model
    out = []
    for n, user_id in enumerate(users):
        request_id = f"{request_prefix}-{n}"
        user = served.users.get(user_id)
        history = model.fitted_histories().row(user).astype(np.int64) if user is not None else np.zeros(0, np.int64)
        query = SlateQuery(
            user=user,
            history=history,
            history_is_training=user is not None,
            k=k,
            exclude_seen=True,
            category=None,
            request_id=request_id,
            unknown_user=user is None,
        )
        s = engine.recommend(served, query)
        out.append(
            Served(
                request_id,
                user_id,
                [served.catalog.item_ids[int(i)] for i in s.items],
                [float(v) for v in s.scores],
                [float(p) for p in s.propensities],
                s.policy,
                s.fallback,
                s.search,
                len(history),
                user is not None,
            )
        )
    return out


def log_round(
    store: ArtifactStore,
    cfg: PipelineConfig,
    served: ServedModel,
    slates: list[Served],
    next_items: dict[str, pd.DataFrame],
    served_at: dict[str, datetime],
    organic: pd.DataFrame | None,
) -> tuple[int, int, int]:
    """Write the round's impressions, clicks and (optionally) organic events with serving's log writer;
    returns (shown, clicks, organic events)."""
    from recloop.eventlog.pseudonym import Pseudonymizer
    from recloop.serving.eventlog import EventLogs

    assert cfg.serving.privacy.hmac_key is not None
    pseudonym = Pseudonymizer(cfg.serving.privacy.hmac_key.get_secret_value(), "serving.privacy.hmac_key")
    logs = EventLogs(store, cfg.serving.logs, instance="simulator")
    impressions, feedback = [], []
    shown = clicks = 0
    for s in slates:
        when = served_at[s.user_id]
        key = pseudonym(s.user_id)
        impressions.append(
            {
                "request_id": s.request_id,
                "served_at": when,
                "endpoint": "recommendations",
                "user_key": key,
                "session_key": None,
                "user_known": s.user_known,
                "model_name": served.model_name,
                "model_version": served.version,
                "model_type": served.model_type,
                "policy": s.policy,
                "fallback_reason": s.fallback,
                "search": s.search,
                "k": len(s.items),
                "category": None,
                "exclude_seen": True,
                "anchor_item_id": None,
                "history_length": s.history_length,
                "item_ids": s.items,
                "scores": s.scores,
                "propensities": s.propensities,
                "latency_ms": 0.0,
            }
        )
        shown += len(s.items)
        upcoming = next_items[s.user_id]
        first_time = dict(zip(upcoming["item_id"].astype(str), upcoming["timestamp"]))
        for position, item in enumerate(s.items, start=1):
            t = first_time.get(item)
            if t is None:
                continue
            clicks += 1
            at = t.to_pydatetime()
            feedback.append(
                {
                    "feedback_id": f"{s.request_id}-{position}",
                    "received_at": at,
                    "event_time": at,
                    "request_id": s.request_id,
                    "user_key": key,
                    "session_key": None,
                    "item_id": item,
                    "event_type": "click",
                    "value": None,
                    "position": position,
                }
            )
    n_organic = 0
    if organic is not None and len(organic):
        # Everything else users did this round, reported by the app without a slate: click-throughs of the
        # slates above are not repeated.
        taken = {(f["user_key"], f["item_id"]) for f in feedback}
        rated = "rating" in organic.columns and organic["rating"].notna().any()
        for n, row in enumerate(organic.itertuples(index=False)):
            key = pseudonym(str(row.user_id))
            if (key, str(row.item_id)) in taken:
                continue
            # The ingest schema makes timestamp a datetime column and rating a numeric one (NaN when absent).
            at = cast("pd.Timestamp", row.timestamp).to_pydatetime()
            rating = cast(float, row.rating) if rated else None
            value = float(rating) if rating is not None and rating == rating else None
            feedback.append(
                {
                    "feedback_id": f"organic-{served.version}-{n}-{int(at.timestamp())}",
                    "received_at": at,
                    "event_time": at,
                    "request_id": None,
                    "user_key": key,
                    "session_key": None,
                    "item_id": str(row.item_id),
                    "event_type": "rating" if value is not None else "click",
                    "value": value,
                    "position": None,
                }
            )
            n_organic += 1
    logs.impressions.append(impressions)
    logs.feedback.append(feedback)
    for log_ in (logs.impressions, logs.feedback):
        log_.flush()
        if log_.buffered:
            raise SimulationError(f"could not write the simulated {log_.name} log to {store.root}; check the store")
    return shown, clicks, n_organic


def replay_ctr(slates: list[Served], next_items: dict[str, pd.DataFrame]) -> float | None:
    shown = sum(len(s.items) for s in slates)
    hits = sum(sum(1 for i in s.items if i in set(next_items[s.user_id]["item_id"].astype(str))) for s in slates)
    return hits / shown if shown else None


# ---------------------------------------------------------------------------------------------- the loop


def _offline(result: PipelineResult) -> tuple[str | None, float | None, float | None]:
    metrics = result.metrics or {}
    primary = metrics.get("primary")
    best = metrics.get("best_candidate")
    cand = champ = None
    try:
        cand = metrics["candidates"][best]["metrics"][primary]["value"]
    except (KeyError, TypeError):
        pass
    try:
        champ = metrics["champion"]["metrics"][primary]["value"]
    except (KeyError, TypeError):
        pass
    return primary, cand, champ


def _load_served(store: ArtifactStore, cfg: PipelineConfig, work: Path) -> ServedModel | None:
    from recloop.registry import ModelRegistry
    from recloop.serving.loader import load_version

    registry = ModelRegistry(store, cfg.model_name, actor="recloop simulate")
    alias = registry.production()
    if alias is None:
        return None
    return load_version(store, registry, alias.version, cfg.serving, work / f"v{alias.version}")


def simulate(
    cfg: PipelineConfig,
    store: ArtifactStore,
    settings: SimulationSettings,
    log: Callable[[str], None] = print,
    on_round: Callable[[RoundResult], None] | None = None,
) -> SimulationResult:
    """Run the whole replay and write the report; see the module docstring."""
    import pandas as pd

    from recloop.pipeline import run_pipeline
    from recloop.policy.online import PolicyHolder
    from recloop.steps.base import StepContext, run_step

    settings.check()
    try:
        import matplotlib  # noqa: F401 - checked first so a missing plotting library fails in seconds, not rounds
    except ModuleNotFoundError:
        raise SimulationError(
            "recloop simulate draws its report with matplotlib, which is not installed; "
            "install it with `pip install 'recloop[sim]'`"
        ) from None
    if not cfg.models:
        raise ConfigError(
            cfg.source,
            [
                "models: the simulation retrains the configured candidates, but none are "
                "configured; add some (e.g. `--set 'models=[{type: ease, lambda: 200}]'`)"
            ],
        )
    sim_id = settings.sim_id or _default_sim_id()
    base_key = f"{SIMULATIONS_PREFIX}/{sim_id}"
    if store.list(base_key):
        raise ConfigError(
            "--sim-id",
            [f"{store.uri(base_key)} already holds a simulation; choose another --sim-id or delete that folder"],
        )
    log(f"simulation {sim_id}: reading {cfg.data.interactions.path}")
    events = read_source_events(cfg, store, sim_id, log)
    past, future = split_rounds(events, settings.rounds, settings.future_share)
    span = max((r["timestamp"].max() - r["timestamp"].min()).to_pytimedelta() for r in future)
    has = {c: bool(events[c].notna().any()) for c in ("rating", "event_type", "weight")}
    click_rating = float(events["rating"].max()) if has["rating"] else None
    sim = sim_config(cfg, store, sim_id, f"{base_key}/data", settings, has, click_rating, span + timedelta(days=1))
    data_key = f"{base_key}/data"
    seed = pd.DataFrame(
        {
            "user_id": past["user_id"].astype(str),
            "item_id": past["item_id"].astype(str),
            "timestamp": past["timestamp"].astype("datetime64[ms, UTC]").astype("int64") // 1000,
        }
    )
    for c in ("rating", "event_type", "weight"):
        if has[c]:
            seed[c] = past[c].to_numpy()
    buf = io.BytesIO()
    seed.to_parquet(buf, index=False)
    store.put_bytes(f"{data_key}/seed.parquet", buf.getvalue())
    log(
        f"simulation {sim_id}: {len(past)} past events, {settings.rounds} rounds of "
        f"{', '.join(str(len(r)) for r in future)} future events; pipeline {sim.name}"
    )

    rng = np.random.default_rng(settings.seed)
    rounds: list[RoundResult] = []
    bandit = PolicyHolder(store, sim.model_name, poll_interval_s=3600.0) if sim.policy.enabled else None
    with tempfile.TemporaryDirectory(prefix="recloop-sim-") as tmp_name, contextlib.ExitStack() as cleanup:
        if bandit is not None:
            cleanup.callback(bandit.stop)
        work = Path(tmp_name)

        def pipeline(run_id: str) -> PipelineResult:
            ctx = StepContext(config=sim, store=store, run_id=run_id, log=log)
            return run_pipeline(ctx)

        started = time.perf_counter()
        initial = pipeline(f"{sim_id}-r0")
        _, initial_offline, _ = _offline(initial)
        control = _load_served(store, sim, work / "control")
        if control is None:
            reasons = "; ".join((initial.blessing or {}).get("reasons", [])) or "no candidate was blessed"
            raise SimulationError(
                f"the initial model was not published ({reasons}); the loop needs a production "
                "model to serve: relax the gate thresholds or add candidates"
            )
        log(f"simulation {sim_id}: initial model v{control.version} ({time.perf_counter() - started:.1f}s)")
        for r, window in enumerate(future, start=1):
            t_round = time.perf_counter()
            # Replayed slates are historical: the feedback step processes them up to the round's end, not
            # up to the wall clock's now - attribution window.
            round_end = window["timestamp"].max().to_pydatetime() + timedelta(seconds=1)
            sim = sim.model_copy(update={"feedback": sim.feedback.model_copy(update={"until": round_end})})
            served = _load_served(store, sim, work / f"r{r}")
            assert served is not None
            if bandit is not None:
                bandit.check_once()  # a policy the last feedback run published serves from now on
            active = window.groupby("user_id", sort=True)
            # Group keys are user ids, a string column in the ingest schema.
            users = sorted(cast("dict[str, pd.Index]", active.groups))
            if settings.users_per_round is not None and len(users) > settings.users_per_round:
                users = sorted(rng.choice(users, settings.users_per_round, replace=False).tolist())
            next_items = {u: active.get_group(u) for u in users}
            served_at = {u: (next_items[u]["timestamp"].min() - pd.Timedelta(seconds=1)).to_pydatetime() for u in users}
            slates = serve_users(served, sim, users, settings.k, f"{sim_id}-r{r}", bandit)
            shown, clicks, organic = log_round(
                store, sim, served, slates, next_items, served_at, window if settings.organic else None
            )
            control_slates = serve_users(control, sim, users, settings.k, f"{sim_id}-r{r}-control", None, greedy=True)
            fb = run_step("feedback", StepContext(config=sim, store=store, run_id=f"{sim_id}-r{r}-feedback", log=log))
            result = pipeline(f"{sim_id}-r{r}")
            metric, cand, champ = _offline(result)
            blessing = result.blessing or {}
            policies = sorted({s.policy for s in slates})
            rounds.append(
                RoundResult(
                    round=r,
                    window_start=window["timestamp"].min().isoformat(),
                    window_end=window["timestamp"].max().isoformat(),
                    model_version=served.version,
                    policy=", ".join(policies),
                    users=len(users),
                    shown=shown,
                    clicks=clicks,
                    ctr=clicks / shown if shown else None,
                    control_ctr=replay_ctr(control_slates, next_items),
                    organic_events=organic,
                    new_interactions=int(fb.summary.get("new_interactions", 0)),
                    quarantined=int(fb.summary.get("quarantined", 0)),
                    offline_metric=metric,
                    offline_candidate=cand,
                    offline_champion=champ,
                    gate=blessing.get("decision"),
                    gate_reasons=list(blessing.get("reasons", [])),
                    published_version=result.published_version,
                    policy_decision=(fb.summary.get("policy") or {}).get("decision"),
                    seconds=round(time.perf_counter() - t_round, 1),
                )
            )
            if on_round is not None:
                on_round(rounds[-1])
    improved, verdict = judge(rounds, len(past))
    report: dict[str, Any] = {
        "sim_id": sim_id,
        "pipeline": sim.name,
        "config": cfg.source,
        "settings": asdict(settings),
        "data": {
            "past_events": len(past),
            "future_events": [len(w) for w in future],
            "users": int(events["user_id"].nunique()),
            "items": int(events["item_id"].nunique()),
        },
        "initial_version": control.version,
        "initial_offline": initial_offline,
        "rounds": [asdict(r) for r in rounds],
        "improved": improved,
        "verdict": verdict,
    }
    png = plot_png(rounds)
    store.put_bytes(f"{base_key}/report.json", json.dumps(report, indent=2, default=str).encode())
    store.put_bytes(f"{base_key}/ctr.png", png)
    store.put_bytes(f"{base_key}/report.html", render_html(report, png).encode())
    return SimulationResult(
        sim_id,
        sim.name,
        store.uri(f"{base_key}/report.html"),
        rounds,
        control.version,
        initial_offline,
        verdict,
        improved,
        report["data"],
    )


def _two_proportion_p(c1: int, n1: int, c2: int, n2: int) -> float:
    """Two-sided p-value of a difference between two click rates (normal approximation)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (c1 + c2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n1 + 1 / n2), 1e-18))
    z = abs(c2 / n2 - c1 / n1) / se
    return math.erfc(z / math.sqrt(2))


def judge(rounds: list[RoundResult], past_events: int) -> tuple[bool, str]:
    """Did the loop improve online CTR over the rounds and over the frozen initial model? If not, why."""
    if not rounds:
        return False, "no rounds were run"
    first, last = rounds[0], rounds[-1]
    served = sum(r.shown for r in rounds)
    clicks = sum(r.clicks for r in rounds)
    control = [r.control_ctr for r in rounds if r.control_ctr is not None]
    ctrs = [r.ctr for r in rounds if r.ctr is not None]
    lift = (np.mean(ctrs) - np.mean(control)) if ctrs and control else None
    if len(rounds) == 1:
        trend = None
    else:
        trend = (last.ctr or 0.0) - (first.ctr or 0.0)
    p = _two_proportion_p(first.clicks, first.shown, last.clicks, last.shown) if len(rounds) > 1 else 1.0
    better_than_control = lift is not None and lift > 0
    if (trend is not None and trend > 0 and p < 0.05) or (better_than_control and (trend is None or trend >= 0)):
        parts = []
        if trend is not None:
            parts.append(
                f"CTR went from {first.ctr:.2%} in round 1 to {last.ctr:.2%} in round {last.round} (p = {p:.3g})"
            )
        if lift is not None:
            parts.append(f"the served models averaged {lift:+.2%} CTR over the frozen initial model")
        return True, "The loop improved: " + "; ".join(parts) + "."
    reasons = []
    rejected = [r.round for r in rounds if r.gate != "blessed"]
    if rejected:
        reasons.append(
            f"the gate rejected the retrained model in round(s) {', '.join(map(str, rejected))}, so "
            "production did not change then"
        )
    added = sum(r.new_interactions for r in rounds)
    if past_events and added / past_events < 0.02:
        reasons.append(
            f"feedback added only {added} interactions next to {past_events} past events "
            f"({added / past_events:.1%}): too little new signal to move the model"
        )
    if trend is not None and p >= 0.05:
        reasons.append(
            f"the CTR change from round 1 to {last.round} ({first.ctr or 0:.2%} -> {last.ctr or 0:.2%}) is "
            f"within noise (p = {p:.2f} on {first.shown + last.shown} shown items); run more rounds or "
            "more users per round"
        )
    if lift is not None and lift <= 0:
        reasons.append(
            f"the served models did not beat the frozen initial model ({lift:+.2%} CTR): feedback "
            "(only clicks on recommended items) can narrow the model onto what it already shows"
        )
    if clicks == 0:
        reasons.append(
            f"no shown item was clicked in {served} impressions: the replay has no signal (users' next "
            "interactions rarely match the slate; try a larger --k)"
        )
    return False, "The loop did not improve: " + ("; ".join(reasons) or "no significant change") + "."


# ---------------------------------------------------------------------------------------------- report


def plot_png(rounds: list[RoundResult]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=110)
    ax = fig.add_subplot(1, 2, 1)
    xs = [r.round for r in rounds]
    ax.plot(xs, [r.ctr or 0 for r in rounds], marker="o", label="served (loop)")
    ax.plot(xs, [r.control_ctr or 0 for r in rounds], marker="s", linestyle="--", label="initial model (frozen)")
    ax.set_xlabel("round")
    ax.set_ylabel("online CTR")
    ax.set_xticks(xs)
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(
        xs,
        [r.offline_candidate if r.offline_candidate is not None else np.nan for r in rounds],
        marker="o",
        label="retrained",
    )
    ax2.plot(
        xs,
        [r.offline_champion if r.offline_champion is not None else np.nan for r in rounds],
        marker="s",
        linestyle="--",
        label="champion",
    )
    ax2.set_xlabel("round")
    ax2.set_ylabel(rounds[0].offline_metric or "offline metric" if rounds else "offline metric")
    ax2.set_xticks(xs)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if pct:
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


TABLE_COLUMNS = (
    "round",
    "model",
    "policy",
    "users",
    "shown",
    "clicks",
    "CTR",
    "frozen CTR",
    "offline (retrained)",
    "offline (champion)",
    "gate",
    "published",
    "new interactions",
    "quarantined",
    "bandit",
)


def table_rows(rounds: list[RoundResult]) -> list[list[str]]:
    return [
        [
            str(r.round),
            _fmt(r.model_version and f"v{r.model_version}"),
            r.policy,
            str(r.users),
            str(r.shown),
            str(r.clicks),
            _fmt(r.ctr, True),
            _fmt(r.control_ctr, True),
            _fmt(r.offline_candidate),
            _fmt(r.offline_champion),
            r.gate or "–",
            _fmt(r.published_version and f"v{r.published_version}"),
            str(r.new_interactions),
            str(r.quarantined),
            r.policy_decision or "–",
        ]
        for r in rounds
    ]


def render_html(report: dict[str, Any], png: bytes) -> str:
    rounds = [RoundResult(**r) for r in report["rounds"]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in table_rows(rounds))
    reasons = "".join(
        f"<li>Round {r.round}: {html.escape('; '.join(r.gate_reasons))}</li>" for r in rounds if r.gate_reasons
    )
    d = report["data"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>recloop simulation {html.escape(report["sim_id"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}
.verdict{{padding:.8em;border-radius:6px;background:{"#e6f4ea" if report["improved"] else "#fdecea"}}}</style></head>
<body><h1>Simulation {html.escape(report["sim_id"])}</h1>
<p>Pipeline <code>{html.escape(report["pipeline"])}</code> from <code>{html.escape(str(report["config"]))}</code>.
Replay: {d["past_events"]} past events train the initial model (v{report["initial_version"]}, offline
{_fmt(report["initial_offline"])}); {len(d["future_events"])} rounds of {", ".join(map(str, d["future_events"]))} future
events. A shown item counts as clicked when it is among the user's interactions in that round.</p>
<p class="verdict">{html.escape(report["verdict"])}</p>
<img alt="CTR and offline metric per round" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p><em>frozen CTR</em>: the initial model, greedy, on the same users and round (what the loop added is the
difference). Offline: {html.escape(str(rounds[0].offline_metric if rounds else ""))} of the retrained candidate and of the
production champion on that round's retraining split; each round's split holds newer events than the one before,
so compare the two within a round rather than one round with the next.</p>
<h2>Gate reasons</h2><ul>{reasons}</ul>
</body></html>
"""
