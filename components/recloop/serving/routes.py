"""The serving API's routes: recommendations, similar items, feedback, model and admin, probes.

Each `*_routes` function returns an APIRouter over the app's shared `ServingState`; `create_app`
includes them in this order (the OpenAPI spec lists them so).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at runtime, and those refer
# to bounds from the config and to the request models built per app.
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from recloop.config import ServingConfig
from recloop.eventlog.pseudonym import Pseudonymizer
from recloop.serving.eventlog import EventLogs, LogFull
from recloop.serving.loader import ModelHolder, ServedModel
from recloop.serving.metrics import ServingMetrics
from recloop.serving.ranking import Slate, SlateEngine, SlateQuery
from recloop.serving.schemas import (
    FeedbackAccepted,
    FeedbackRequest,
    Health,
    Readiness,
    RecommendationsRequest,
    RequestModels,
    SlateResponse,
)
from recloop.serving.security import ApiKeys, presented_key

API_KEY_HEADER = "X-API-Key"
_SLATE_ERRORS: dict[int | str, dict[str, Any]] = {
    429: {"description": "Overloaded: retry shortly"},
    503: {"description": "No model loaded yet"},
}


@dataclass
class ServingState:
    """What the routes share: the settings, the served model, the logs, metrics and the slate engine."""

    settings: ServingConfig
    holder: ModelHolder
    logs: EventLogs
    metrics: ServingMetrics
    engine: SlateEngine
    pseudonymize: Pseudonymizer


# FastAPI answers 400 itself when a body cannot be parsed at all (not JSON, or not the declared media type).
UNPARSABLE_BODY = {"description": "The body could not be parsed (send JSON with Content-Type: application/json)"}


def key_check(api_keys: ApiKeys) -> Callable[..., None]:
    """The dependency that requires a valid API key (`X-API-Key: KEY` or `Authorization: Bearer KEY`)."""
    key_header = APIKeyHeader(
        name=API_KEY_HEADER,
        auto_error=False,
        description="An API key from RECLOOP_API_KEYS (or `Authorization: Bearer KEY`).",
    )
    # Declared so the OpenAPI spec lists the Bearer form the server accepts (either scheme suffices).
    bearer = HTTPBearer(auto_error=False, description="The same API key as `Authorization: Bearer KEY`.")

    def require_key(
        request: Request,
        x_api_key: str | None = Depends(key_header),
        _bearer: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        if not api_keys.configured:
            raise HTTPException(
                401,
                "this server accepts no API keys yet: set RECLOOP_API_KEYS (or serving.auth.api_keys) and restart it",
            )
        if not api_keys.check(presented_key(x_api_key, request.headers.get("authorization"))):
            raise HTTPException(
                401,
                f"a valid API key is required: send it as `{API_KEY_HEADER}: KEY`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_key


def served_now(holder: ModelHolder) -> ServedModel:
    served = holder.current
    if served is None:
        raise HTTPException(
            503,
            f"no model is loaded yet ({holder.last_error or 'loading'}); retry shortly",
            headers={"Retry-After": "5"},
        )
    return served


def category_id(served: ServedModel, category: str | None) -> int | None:
    if category is None:
        return None
    found = served.catalog.category_index.get(category)
    if found is None:
        known = sorted(served.catalog.category_names)
        listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
        raise HTTPException(
            404,
            f"category {category!r} is not in the catalog of {served.model_name} "
            f"v{served.version} (categories: {listing})",
        )
    return found


def respond(
    served: ServedModel, slate: Slate, request_id: str, user_known: bool, ignored: list[str] | None = None
) -> Response:
    """The SlateResponse as JSON bytes, built directly: the hot path skips re-validating its own output
    (the schema test checks that it matches SlateResponse). Scores are finite: pools drop the rest."""
    item_ids = served.catalog.item_ids
    catalog = served.catalog
    items = [
        {
            "item_id": item_ids[int(i)],
            "rank": rank,
            "score": float(score),
            "propensity": float(p),
            "categories": catalog.categories_of(int(i)),
            "explanation": {
                "method": e.method,
                "because": [{"item_id": item_ids[h], "weight": w} for h, w in e.because],
                "shared_categories": e.shared_categories,
                "shared_terms": e.shared_terms,
            },
        }
        for rank, (i, score, p, e) in enumerate(
            zip(slate.items, slate.scores, slate.propensities, slate.explanations), 1
        )
    ]
    body = {
        "request_id": request_id,
        "model": {"name": served.model_name, "version": served.version, "type": served.model_type},
        "policy": slate.policy,
        "fallback": slate.fallback,
        "search": slate.search,
        "user_known": user_known,
        "items": items,
        "ignored_history_items": ignored or [],
    }
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")


@dataclass
class SlateRequest:
    """What a slate was asked for, as it goes into the impression log."""

    request_id: str
    endpoint: str
    user_id: str | None
    session_id: str | None
    user_known: bool
    k: int
    category: str | None
    exclude_seen: bool
    history_length: int
    started: float
    anchor: str | None = None


def log_slate(state: ServingState, served: ServedModel, slate: Slate, asked: SlateRequest) -> None:
    """Count the slate in the metrics and append it to the impression log (pseudonymized)."""
    metrics, logs, pseudonymize = state.metrics, state.logs, state.pseudonymize
    if slate.fallback is not None:
        metrics.fallbacks.labels(reason=slate.fallback, policy=slate.search.split(":")[-1]).inc()
    metrics.search.labels(method=slate.search.split(":")[0]).inc()
    if not state.settings.logs.impressions:
        return
    logs.impressions.append(
        [
            {
                "request_id": asked.request_id,
                "served_at": datetime.now(UTC),
                "endpoint": asked.endpoint,
                "user_key": pseudonymize(asked.user_id),
                "session_key": pseudonymize(asked.session_id, "session"),
                "user_known": asked.user_known,
                "model_name": served.model_name,
                "model_version": served.version,
                "model_type": served.model_type,
                "policy": slate.policy,
                "fallback_reason": slate.fallback,
                "search": slate.search,
                "k": asked.k,
                "category": asked.category,
                "exclude_seen": asked.exclude_seen,
                "anchor_item_id": asked.anchor,
                "history_length": asked.history_length,
                "item_ids": [served.catalog.item_ids[int(i)] for i in slate.items],
                "scores": [float(s) for s in slate.scores],
                "propensities": [float(p) for p in slate.propensities],
                "latency_ms": round((time.perf_counter() - asked.started) * 1000, 3),
            }
        ]
    )
    if logs.impressions.buffered >= state.settings.logs.flush_rows:
        logs.nudge()


def recommendation_routes(state: ServingState, bodies: RequestModels, read_access: list[Any]) -> APIRouter:
    limits = state.settings.limits
    engine = state.engine
    if TYPE_CHECKING:
        # The body class is built per app (its bounds come from the config): FastAPI reads it at run time,
        # mypy checks the route against the fields every such class has.
        RecommendationsBody: TypeAlias = RecommendationsRequest
    else:
        RecommendationsBody = bodies.recommendations
    router = APIRouter()

    @router.get(
        "/v1/recommendations",
        response_model=SlateResponse,
        tags=["recommendations"],
        dependencies=read_access,
        responses={
            404: {"description": "Unknown category"},
            422: {"description": "Invalid parameters"},
            **_SLATE_ERRORS,
        },
    )
    def recommend_get(
        request: Request,
        user_id: Annotated[str, Query(pattern=limits.id_pattern, max_length=256, description="Raw user id.")],
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = limits.default_k,
        exclude_seen: Annotated[bool, Query(description="Leave out items the user interacted with.")] = True,
        category: Annotated[
            str | None, Query(min_length=1, max_length=128, description="Only items of this category.")
        ] = None,
    ) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id
        served = served_now(state.holder)
        cat = category_id(served, category)
        user = served.users.get(user_id)
        if user is not None:
            history = served.model.fitted_histories().row(user).astype(np.int64)
        else:
            history = np.zeros(0, np.int64)
        query = SlateQuery(
            user=user,
            history=history,
            history_is_training=user is not None,
            k=k,
            exclude_seen=exclude_seen,
            category=cat,
            request_id=request_id,
            unknown_user=user is None,
        )
        slate = engine.recommend(served, query)
        log_slate(
            state,
            served,
            slate,
            SlateRequest(
                request_id,
                "recommendations",
                user_id,
                None,
                user is not None,
                k,
                category,
                exclude_seen,
                len(history),
                started,
            ),
        )
        return respond(served, slate, request_id, user is not None)

    @router.post(
        "/v1/recommendations",
        response_model=SlateResponse,
        tags=["recommendations"],
        dependencies=read_access,
        responses={
            400: UNPARSABLE_BODY,
            404: {"description": "Unknown category"},
            422: {"description": "Invalid body"},
            **_SLATE_ERRORS,
        },
    )
    def recommend_post(request: Request, body: RecommendationsBody) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id
        served = served_now(state.holder)
        cat = category_id(served, body.category)
        user = served.users.get(body.user_id) if body.user_id is not None else None
        index_of = served.catalog.index_of
        posted = [index_of.get(i) for i in body.history]
        ignored = [raw for raw, idx in zip(body.history, posted) if idx is None]
        known = np.asarray([i for i in posted if i is not None], dtype=np.int64)
        if user is not None:
            base = served.model.fitted_histories().row(user).astype(np.int64)
            history = np.concatenate([base, known]) if len(known) else base
        else:
            history = known
        query = SlateQuery(
            user=user,
            history=history,
            history_is_training=user is not None and len(known) == 0,
            k=body.k,
            exclude_seen=body.exclude_seen,
            category=cat,
            request_id=request_id,
            unknown_user=body.user_id is not None and user is None,
        )
        slate = engine.recommend(served, query)
        log_slate(
            state,
            served,
            slate,
            SlateRequest(
                request_id,
                "recommendations",
                body.user_id,
                body.session_id,
                user is not None,
                body.k,
                body.category,
                body.exclude_seen,
                len(history),
                started,
            ),
        )
        return respond(served, slate, request_id, user is not None, ignored)

    @router.get(
        "/v1/items/{item_id}/similar",
        response_model=SlateResponse,
        tags=["recommendations"],
        dependencies=read_access,
        responses={
            404: {"description": "Unknown item or category"},
            422: {"description": "Invalid parameters"},
            **_SLATE_ERRORS,
        },
    )
    def similar(
        request: Request,
        item_id: Annotated[str, Path(pattern=limits.id_pattern, max_length=256, description="Raw item id.")],
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = limits.default_k,
        category: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        user_id: Annotated[
            str | None,
            Query(pattern=limits.id_pattern, max_length=256, description="Who asks (logged pseudonymized only)."),
        ] = None,
    ) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id
        served = served_now(state.holder)
        item = served.catalog.index_of.get(item_id)
        if item is None:
            raise HTTPException(404, f"item {item_id!r} is not in the catalog of {served.model_name} v{served.version}")
        cat = category_id(served, category)
        slate = engine.similar(served, item, k, cat, request_id)
        known = user_id is not None and served.users.get(user_id) is not None
        log_slate(
            state,
            served,
            slate,
            SlateRequest(request_id, "similar", user_id, None, known, k, category, False, 1, started, anchor=item_id),
        )
        return respond(served, slate, request_id, known)

    return router


def feedback_routes(state: ServingState, bodies: RequestModels, require_key: Callable[..., None]) -> APIRouter:
    logs, pseudonymize = state.logs, state.pseudonymize
    if TYPE_CHECKING:
        # Built per app like RecommendationsBody above.
        FeedbackBody: TypeAlias = FeedbackRequest
    else:
        FeedbackBody = bodies.feedback
    router = APIRouter()

    @router.post(
        "/v1/feedback",
        response_model=FeedbackAccepted,
        status_code=202,
        tags=["feedback"],
        dependencies=[Depends(require_key)],
        responses={
            400: UNPARSABLE_BODY,
            401: {"description": "Missing or invalid API key"},
            422: {"description": "Invalid events"},
            429: {"description": "Overloaded, or the feedback buffer is full: retry later"},
        },
    )
    def feedback(body: FeedbackBody) -> Any:
        now = datetime.now(UTC)
        records = []
        for event in body.events:
            # Kept as sent (naive = UTC): implausible times are the validate step's call
            # (validation.future_tolerance), as for every other source of events.
            when = event.timestamp or now
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            records.append(
                {
                    "feedback_id": uuid.uuid4().hex,
                    "received_at": now,
                    "event_time": when.astimezone(UTC),
                    "request_id": event.request_id,
                    "user_key": pseudonymize(event.user_id),
                    "session_key": pseudonymize(event.session_id, "session"),
                    "item_id": event.item_id,
                    "event_type": event.event_type,
                    "value": event.value,
                    "position": event.position,
                }
            )
        try:
            logs.feedback.append(records)
        except LogFull as exc:
            return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "5"})
        if logs.feedback.buffered >= state.settings.logs.flush_rows:
            logs.nudge()
        return FeedbackAccepted(accepted=len(records), feedback_ids=[r["feedback_id"] for r in records])

    return router


def operation_routes(state: ServingState, require_key: Callable[..., None], read_access: list[Any]) -> APIRouter:
    """The served model, admin calls (API key), and the health, readiness and metrics probes."""
    holder, logs, metrics = state.holder, state.logs, state.metrics
    router = APIRouter()

    @router.get(
        "/v1/model",
        tags=["operations"],
        dependencies=read_access,
        responses={503: {"description": "No model loaded yet"}},
    )
    def model_info() -> dict[str, Any]:
        return served_now(holder).describe()

    @router.get(
        "/v1/admin/status",
        tags=["operations"],
        dependencies=[Depends(require_key)],
        responses={401: {"description": "Missing or invalid API key"}},
    )
    def admin_status() -> dict[str, Any]:
        served = holder.current
        return {
            "model": served.describe() if served else None,
            "production_version": holder.production_version,
            "last_check_at": holder.last_check_at,
            "last_error": holder.last_error,
            "logs": {
                "instance": logs.instance,
                "impressions_buffered": logs.impressions.buffered,
                "feedback_buffered": logs.feedback.buffered,
            },
        }

    @router.post(
        "/v1/admin/reload",
        status_code=202,
        tags=["operations"],
        dependencies=[Depends(require_key)],
        responses={401: {"description": "Missing or invalid API key"}},
    )
    def admin_reload() -> dict[str, Any]:
        holder.request_check()
        served = holder.current
        return {"detail": "checking the production alias now", "serving_version": served.version if served else None}

    @router.post(
        "/v1/admin/flush",
        tags=["operations"],
        dependencies=[Depends(require_key)],
        responses={401: {"description": "Missing or invalid API key"}},
    )
    def admin_flush() -> dict[str, Any]:
        written = {"feedback": logs.feedback.flush(), "impressions": logs.impressions.flush()}
        return {
            "written": written,
            "still_buffered": {"feedback": logs.feedback.buffered, "impressions": logs.impressions.buffered},
        }

    @router.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        responses={503: {"description": "No model loaded yet", "model": Readiness}},
    )
    def readyz() -> Any:
        served = holder.current
        if served is not None:
            return Readiness(status="ready", model=served.model_name, version=served.version)
        status = "no_model" if holder.last_error and "no production version" in holder.last_error else "loading"
        body = Readiness(status=status, model=holder.registry.name, detail=holder.last_error)
        return JSONResponse(body.model_dump(), status_code=503)

    @router.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    def prometheus() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    return router
