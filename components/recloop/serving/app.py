"""The online API (FastAPI): recommendations, similar items, feedback, health, metrics.

`create_app(runtime)` builds the application from typed settings; `recloop serve` runs it under uvicorn.
Routes (OpenAPI at /docs and /openapi.json):

    GET  /v1/recommendations?user_id=&k=&exclude_seen=&category=   a known (or unknown: fallback) user
    POST /v1/recommendations    {user_id?, session_id?, history: [item ids], k, exclude_seen, category?}
    GET  /v1/items/{item_id}/similar?k=&category=&user_id=
    POST /v1/feedback           {events: [{item_id, event_type, request_id?, user_id?, ...}]}  (API key)
    GET  /v1/model              the served version
    GET  /v1/admin/status       watcher and log state (API key)
    POST /v1/admin/reload       check the production alias now (API key)
    POST /v1/admin/flush        write buffered logs now (API key)
    GET  /healthz  /readyz  /metrics

A pure ASGI middleware in front of everything assigns the request id (X-Request-ID), sheds load beyond
`limits.max_concurrency` with 429 (health, readiness and metrics are never shed), refuses bodies over
`limits.max_body_bytes` with 413, records Prometheus metrics and writes an access log line without the
query string (it may hold a user id).
"""

# No `from __future__ import annotations`: FastAPI and pydantic read the route and body annotations at
# runtime, and those refer to bounds built inside create_app from the config.
import contextlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, Awaitable, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from recloop.config import ServingConfig
from recloop.serving.eventlog import EventLogs, LogFull
from recloop.serving.loader import ModelHolder, ServedModel
from recloop.serving.metrics import ServingMetrics
from recloop.serving.ranking import Slate, SlateEngine, SlateQuery
from recloop.serving.security import ApiKeys, Pseudonymizer, presented_key

if TYPE_CHECKING:
    from fastapi import FastAPI

    from recloop.store import ArtifactStore

log = logging.getLogger("recloop.serving")
access_log = logging.getLogger("recloop.serving.access")

API_KEY_HEADER = "X-API-Key"
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
_EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
_UNSHED = frozenset({"/healthz", "/readyz", "/metrics"})
_ROUTES = frozenset({"/v1/recommendations", "/v1/feedback", "/v1/model", "/v1/admin/status", "/v1/admin/reload",
                     "/v1/admin/flush", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"})


@dataclass
class ServeRuntime:
    """Everything the app needs, validated at the edge by `recloop serve` (or a test)."""

    settings: ServingConfig
    model_name: str
    store: "ArtifactStore"
    api_keys: ApiKeys
    pseudonymize: Pseudonymizer


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/v1/items/") and path.endswith("/similar"):
        return "/v1/items/{item_id}/similar"
    return "other"


class ServingMiddleware:
    """Request id, load shedding, body size limit, metrics and access log, in one pass."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_concurrency: int, max_body_bytes: int,
                 metrics: ServingMetrics):
        self.app = app
        self.max_concurrency = max_concurrency
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        route = _route_label(path)
        headers = dict(scope.get("headers") or [])
        given = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder = {"status": 500}

        async def send_wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        shed = path not in _UNSHED and self.in_flight >= self.max_concurrency
        try:
            if shed:
                self.metrics.shed.inc()
                await _plain_json(send_wrapped, 429, {
                    "detail": f"the server is at its limit of {self.max_concurrency} concurrent requests; "
                              "retry after a short delay", "request_id": request_id}, retry_after="1")
                return
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
            try:
                declared = headers.get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                    await _plain_json(send_wrapped, 413, {
                        "detail": f"the request body has {int(declared)} bytes; the limit is {self.max_body_bytes}",
                        "request_id": request_id})
                    return
                if method in ("POST", "PUT", "PATCH"):
                    body, too_large = await _read_body(receive, self.max_body_bytes)
                    if too_large:
                        await _plain_json(send_wrapped, 413, {
                            "detail": f"the request body exceeds the limit of {self.max_body_bytes} bytes",
                            "request_id": request_id})
                        return
                    receive = _replay(body)
                await self.app(scope, receive, send_wrapped)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
        finally:
            elapsed = time.perf_counter() - started
            status = status_holder["status"]
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO) and route != "/metrics":
                # The path only: query strings can hold user ids, which must never reach a log.
                access_log.info('%s %s %d %.1fms rid=%s', method, path if route != "other" else route, status,
                                elapsed * 1000, request_id)


async def _read_body(receive: Callable, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _plain_json(send: Callable, status: int, payload: dict[str, Any], retry_after: str | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------- schemas


class Contribution(BaseModel):
    item_id: str = Field(description="A history item (or the anchor item) that made this recommendation likelier.")
    weight: float = Field(description="How much it contributed (model item-item weight or vector similarity).")


class ExplanationOut(BaseModel):
    method: str = Field(description="item_weights | item_vectors | co_occurrence, or the fallback policy name.")
    because: list[Contribution] = Field(description="History items that contributed most, strongest first.")
    shared_categories: list[str] = Field(description="The item's categories also found in the history.")
    shared_terms: list[str] = Field(description="Words of the item's text weighing most in the history's texts.")


class RecommendedItem(BaseModel):
    item_id: str
    rank: int = Field(description="1-based slot.")
    score: float = Field(description="Model score (fallback score for fallback slates); higher is better.")
    propensity: float = Field(description="Probability the serving policy put this item in this slot.")
    categories: list[str]
    explanation: ExplanationOut


class ModelRef(BaseModel):
    name: str
    version: int
    type: str


class SlateResponse(BaseModel):
    request_id: str = Field(description="Echo it in feedback (request_id) to link the event to this slate.")
    model: ModelRef
    policy: str = Field(description="greedy | epsilon_greedy")
    fallback: str | None = Field(description="Why the fallback served (unknown_user, no_history, cold_history, "
                                             "model_error); null for personalized slates.")
    search: str = Field(description="exact | ann | ann_exhausted | fallback:<policy> | similar")
    user_known: bool
    items: list[RecommendedItem]
    ignored_history_items: list[str] = Field(default_factory=list,
                                             description="Posted history items the model does not know.")


class FeedbackAccepted(BaseModel):
    accepted: int
    feedback_ids: list[str]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready | loading | no_model")
    model: str
    version: int | None = None
    detail: str | None = None


# ---------------------------------------------------------------------------------------------- app


def create_app(runtime: ServeRuntime, holder: ModelHolder | None = None, logs: EventLogs | None = None,
               metrics: ServingMetrics | None = None) -> "FastAPI":
    """The FastAPI application. `holder`/`logs` default to ones over `runtime.store` (tests may pass their
    own); their threads start with the app (lifespan) and stop, flushing the logs, when it shuts down."""
    import anyio.to_thread
    from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader

    settings = runtime.settings
    limits = settings.limits
    metrics = metrics or ServingMetrics()
    holder = holder or ModelHolder(runtime.store, runtime.model_name, settings, metrics)
    logs = logs or EventLogs(runtime.store, settings.logs, metrics)
    from recloop.policy.online import PolicyHolder

    bandit = PolicyHolder(runtime.store, runtime.model_name, settings.poll_interval.total_seconds())
    engine = SlateEngine(settings, bandit)
    pseudonymize = runtime.pseudonymize
    api_keys = runtime.api_keys
    IdStr = Annotated[str, StringConstraints(pattern=limits.id_pattern, max_length=256)]
    CategoryStr = Annotated[str, StringConstraints(min_length=1, max_length=128)]
    RequestIdStr = Annotated[str, StringConstraints(pattern=_REQUEST_ID_RE.pattern)]

    class RecommendationsBody(BaseModel):
        """An ad-hoc history (anonymous or session user), optionally on top of a known user's history."""

        model_config = ConfigDict(extra="forbid", regex_engine="python-re")
        user_id: IdStr | None = Field(None, description="A known user's events come first in the history.")
        session_id: IdStr | None = Field(None, description="Logged (pseudonymized) to link a session's slates.")
        history: list[IdStr] = Field(default_factory=list, max_length=limits.max_history,
                                     description="Raw item ids, oldest first.")
        k: int = Field(limits.default_k, ge=1, le=limits.max_k)
        exclude_seen: bool = True
        category: CategoryStr | None = None

    class FeedbackEvent(BaseModel):
        model_config = ConfigDict(extra="forbid", regex_engine="python-re")
        item_id: IdStr
        event_type: Annotated[str, StringConstraints(pattern=_EVENT_TYPE_PATTERN)] = Field(
            description="click, view, add_to_cart, purchase, rating, dismiss, ... (lower-case, <= 32 chars)")
        request_id: RequestIdStr | None = Field(None, description="The slate's request_id, if the event responds to one.")
        user_id: IdStr | None = None
        session_id: IdStr | None = None
        value: float | None = Field(None, allow_inf_nan=False, description="e.g. a rating or an amount.")
        position: int | None = Field(None, ge=1, le=limits.max_k, description="1-based slot in that slate.")
        timestamp: datetime | None = Field(None, description="When it happened (ISO 8601); default: received time.")

    class FeedbackBody(BaseModel):
        model_config = ConfigDict(extra="forbid", regex_engine="python-re")
        events: list[FeedbackEvent] = Field(min_length=1, max_length=limits.max_feedback_events)

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="An API key from RECLOOP_API_KEYS (or `Authorization: Bearer KEY`).")

    def require_key(request: Request, x_api_key: str | None = Depends(key_header)) -> None:
        if not api_keys.configured:
            raise HTTPException(401, "this server accepts no API keys yet: set RECLOOP_API_KEYS (or "
                                     "serving.auth.api_keys) and restart it")
        if not api_keys.check(presented_key(x_api_key, request.headers.get("authorization"))):
            raise HTTPException(401, f"a valid API key is required: send it as `{API_KEY_HEADER}: KEY`",
                                headers={"WWW-Authenticate": "Bearer"})

    # Read routes declare (and check) the key only when reads are protected, so the spec tells the truth.
    read_access = [Depends(require_key)] if settings.auth.protect_reads else []

    def served_now() -> ServedModel:
        served = holder.current
        if served is None:
            raise HTTPException(503, f"no model is loaded yet ({holder.last_error or 'loading'}); retry shortly",
                                headers={"Retry-After": "5"})
        return served

    def category_id(served: ServedModel, category: str | None) -> int | None:
        if category is None:
            return None
        found = served.catalog.category_index.get(category)
        if found is None:
            known = sorted(served.catalog.category_names)
            listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
            raise HTTPException(404, f"category {category!r} is not in the catalog of {served.model_name} "
                                     f"v{served.version} (categories: {listing})")
        return found

    @contextlib.asynccontextmanager
    async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
        # Sync routes run in the thread pool: size it to the concurrency limit (excess is shed anyway).
        anyio.to_thread.current_default_thread_limiter().total_tokens = limits.max_concurrency + 8
        holder.start()
        logs.start()
        bandit.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(bandit.stop)
            await anyio.to_thread.run_sync(holder.stop)
            await anyio.to_thread.run_sync(logs.close)

    app = FastAPI(
        title="recloop serving API",
        version="1",
        description="Recommendations from the model registry's production version, with explanations, "
                    "impression logging and feedback. Raw ids in and out.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.logs = logs
    app.state.metrics = metrics
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=[API_KEY_HEADER, "Authorization", "Content-Type", "X-Request-ID"])
    app.add_middleware(ServingMiddleware, max_concurrency=limits.max_concurrency,
                       max_body_bytes=limits.max_body_bytes, metrics=metrics)

    def respond(served: ServedModel, slate: Slate, request_id: str, user_known: bool,
                ignored: list[str] | None = None) -> Response:
        """The SlateResponse as JSON bytes, built directly: the hot path skips re-validating its own output
        (the schema test checks that it matches SlateResponse). Scores are finite: pools drop the rest."""
        item_ids = served.catalog.item_ids
        catalog = served.catalog
        items = [{
            "item_id": item_ids[int(i)], "rank": rank, "score": float(score), "propensity": float(p),
            "categories": catalog.categories_of(int(i)),
            "explanation": {"method": e.method,
                            "because": [{"item_id": item_ids[h], "weight": w} for h, w in e.because],
                            "shared_categories": e.shared_categories, "shared_terms": e.shared_terms},
        } for rank, (i, score, p, e) in enumerate(zip(slate.items, slate.scores, slate.propensities,
                                                      slate.explanations), 1)]
        body = {"request_id": request_id,
                "model": {"name": served.model_name, "version": served.version, "type": served.model_type},
                "policy": slate.policy, "fallback": slate.fallback, "search": slate.search,
                "user_known": user_known, "items": items, "ignored_history_items": ignored or []}
        return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")

    def log_slate(served: ServedModel, slate: Slate, request_id: str, endpoint: str, user_id: str | None,
                  session_id: str | None, user_known: bool, k: int, category: str | None, exclude_seen: bool,
                  history_length: int, started: float, anchor: str | None = None) -> None:
        if slate.fallback is not None:
            metrics.fallbacks.labels(reason=slate.fallback, policy=slate.search.split(":")[-1]).inc()
        metrics.search.labels(method=slate.search.split(":")[0]).inc()
        if not settings.logs.impressions:
            return
        logs.impressions.append([{
            "request_id": request_id, "served_at": datetime.now(timezone.utc), "endpoint": endpoint,
            "user_key": pseudonymize(user_id), "session_key": pseudonymize(session_id, "session"),
            "user_known": user_known, "model_name": served.model_name, "model_version": served.version,
            "model_type": served.model_type, "policy": slate.policy, "fallback_reason": slate.fallback,
            "search": slate.search, "k": k, "category": category, "exclude_seen": exclude_seen,
            "anchor_item_id": anchor, "history_length": history_length,
            "item_ids": [served.catalog.item_ids[int(i)] for i in slate.items],
            "scores": [float(s) for s in slate.scores], "propensities": [float(p) for p in slate.propensities],
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }])
        if logs.impressions.buffered >= settings.logs.flush_rows:
            logs.nudge()

    # ------------------------------------------------------------------ recommendations
    @app.get("/v1/recommendations", response_model=SlateResponse, tags=["recommendations"],
             dependencies=read_access,
             responses={404: {"description": "Unknown category"}, 422: {"description": "Invalid parameters"},
                        429: {"description": "Overloaded: retry shortly"},
                        503: {"description": "No model loaded yet"}})
    def recommend_get(
        request: Request,
        user_id: Annotated[str, Query(pattern=limits.id_pattern, max_length=256, description="Raw user id.")],
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = limits.default_k,
        exclude_seen: Annotated[bool, Query(description="Leave out items the user interacted with.")] = True,
        category: Annotated[str | None, Query(min_length=1, max_length=128,
                                              description="Only items of this category.")] = None,
    ) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id
        served = served_now()
        cat = category_id(served, category)
        user = served.users.get(user_id)
        if user is not None:
            history = served.model.train_histories.row(user).astype(np.int64)  # type: ignore[union-attr]
        else:
            history = np.zeros(0, np.int64)
        query = SlateQuery(user=user, history=history, history_is_training=user is not None, k=k,
                           exclude_seen=exclude_seen, category=cat, request_id=request_id,
                           unknown_user=user is None)
        slate = engine.recommend(served, query)
        log_slate(served, slate, request_id, "recommendations", user_id, None, user is not None, k, category,
                  exclude_seen, len(history), started)
        return respond(served, slate, request_id, user is not None)

    @app.post("/v1/recommendations", response_model=SlateResponse, tags=["recommendations"],
              dependencies=read_access,
              responses={404: {"description": "Unknown category"}, 422: {"description": "Invalid body"},
                         429: {"description": "Overloaded: retry shortly"},
                         503: {"description": "No model loaded yet"}})
    def recommend_post(request: Request, body: RecommendationsBody) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id
        served = served_now()
        cat = category_id(served, body.category)
        user = served.users.get(body.user_id) if body.user_id is not None else None
        index_of = served.catalog.index_of
        posted = [index_of.get(i) for i in body.history]
        ignored = [raw for raw, idx in zip(body.history, posted) if idx is None]
        known = np.asarray([i for i in posted if i is not None], dtype=np.int64)
        if user is not None:
            base = served.model.train_histories.row(user).astype(np.int64)  # type: ignore[union-attr]
            history = np.concatenate([base, known]) if len(known) else base
        else:
            history = known
        query = SlateQuery(user=user, history=history, history_is_training=user is not None and len(known) == 0,
                           k=body.k, exclude_seen=body.exclude_seen, category=cat, request_id=request_id,
                           unknown_user=body.user_id is not None and user is None)
        slate = engine.recommend(served, query)
        log_slate(served, slate, request_id, "recommendations", body.user_id, body.session_id, user is not None,
                  body.k, body.category, body.exclude_seen, len(history), started)
        return respond(served, slate, request_id, user is not None, ignored)

    @app.get("/v1/items/{item_id}/similar", response_model=SlateResponse, tags=["recommendations"],
             dependencies=read_access,
             responses={404: {"description": "Unknown item or category"}, 422: {"description": "Invalid parameters"},
                        429: {"description": "Overloaded: retry shortly"},
                        503: {"description": "No model loaded yet"}})
    def similar(
        request: Request,
        item_id: Annotated[str, Path(pattern=limits.id_pattern, max_length=256, description="Raw item id.")],
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = limits.default_k,
        category: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        user_id: Annotated[str | None, Query(pattern=limits.id_pattern, max_length=256,
                                             description="Who asks (logged pseudonymized only).")] = None,
    ) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id
        served = served_now()
        item = served.catalog.index_of.get(item_id)
        if item is None:
            raise HTTPException(404, f"item {item_id!r} is not in the catalog of {served.model_name} "
                                     f"v{served.version}")
        cat = category_id(served, category)
        slate = engine.similar(served, item, k, cat, request_id)
        known = user_id is not None and served.users.get(user_id) is not None
        log_slate(served, slate, request_id, "similar", user_id, None, known, k, category, False, 1, started,
                  anchor=item_id)
        return respond(served, slate, request_id, known)

    # ------------------------------------------------------------------ feedback
    @app.post("/v1/feedback", response_model=FeedbackAccepted, status_code=202, tags=["feedback"],
              dependencies=[Depends(require_key)],
              responses={401: {"description": "Missing or invalid API key"},
                         422: {"description": "Invalid events"},
                         429: {"description": "Overloaded, or the feedback buffer is full: retry later"}})
    def feedback(body: FeedbackBody) -> Any:
        now = datetime.now(timezone.utc)
        records = []
        for event in body.events:
            # Kept as sent (naive = UTC): implausible times are the validate step's call
            # (validation.future_tolerance), as for every other source of events.
            when = event.timestamp or now
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            records.append({
                "feedback_id": uuid.uuid4().hex, "received_at": now, "event_time": when.astimezone(timezone.utc),
                "request_id": event.request_id, "user_key": pseudonymize(event.user_id),
                "session_key": pseudonymize(event.session_id, "session"), "item_id": event.item_id,
                "event_type": event.event_type, "value": event.value, "position": event.position,
            })
        try:
            logs.feedback.append(records)
        except LogFull as exc:
            return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "5"})
        if logs.feedback.buffered >= settings.logs.flush_rows:
            logs.nudge()
        return FeedbackAccepted(accepted=len(records), feedback_ids=[r["feedback_id"] for r in records])

    # ------------------------------------------------------------------ model and admin
    @app.get("/v1/model", tags=["operations"], dependencies=read_access,
             responses={503: {"description": "No model loaded yet"}})
    def model_info() -> dict[str, Any]:
        return served_now().describe()

    @app.get("/v1/admin/status", tags=["operations"], dependencies=[Depends(require_key)],
             responses={401: {"description": "Missing or invalid API key"}})
    def admin_status() -> dict[str, Any]:
        served = holder.current
        return {"model": served.describe() if served else None, "production_version": holder.production_version,
                "last_check_at": holder.last_check_at, "last_error": holder.last_error,
                "logs": {"instance": logs.instance, "impressions_buffered": logs.impressions.buffered,
                         "feedback_buffered": logs.feedback.buffered}}

    @app.post("/v1/admin/reload", status_code=202, tags=["operations"], dependencies=[Depends(require_key)],
              responses={401: {"description": "Missing or invalid API key"}})
    def admin_reload() -> dict[str, Any]:
        holder.request_check()
        served = holder.current
        return {"detail": "checking the production alias now", "serving_version": served.version if served else None}

    @app.post("/v1/admin/flush", tags=["operations"], dependencies=[Depends(require_key)],
              responses={401: {"description": "Missing or invalid API key"}})
    def admin_flush() -> dict[str, Any]:
        written = {"feedback": logs.feedback.flush(), "impressions": logs.impressions.flush()}
        return {"written": written, "still_buffered": {"feedback": logs.feedback.buffered,
                                                       "impressions": logs.impressions.buffered}}

    # ------------------------------------------------------------------ probes
    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             responses={503: {"description": "No model loaded yet", "model": Readiness}})
    def readyz() -> Any:
        served = holder.current
        if served is not None:
            return Readiness(status="ready", model=served.model_name, version=served.version)
        status = "no_model" if holder.last_error and "no production version" in holder.last_error else "loading"
        body = Readiness(status=status, model=holder.registry.name, detail=holder.last_error)
        return JSONResponse(body.model_dump(), status_code=503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def prometheus() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    return app
