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

Assembled from `schemas` (request and response models), `routes` (the routers) and `middleware` (request
id, load shedding, body limit, metrics and access log in front of everything).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recloop.config import ServingConfig
from recloop.eventlog.pseudonym import Pseudonymizer
from recloop.serving.eventlog import EventLogs
from recloop.serving.loader import ModelHolder
from recloop.serving.metrics import ServingMetrics
from recloop.serving.security import ApiKeys

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    from recloop.store import ArtifactStore


@dataclass
class ServeRuntime:
    """Everything the app needs, validated at the edge by `recloop serve` (or a test)."""

    settings: ServingConfig
    model_name: str
    store: ArtifactStore
    api_keys: ApiKeys
    pseudonymize: Pseudonymizer


def create_app(
    runtime: ServeRuntime,
    holder: ModelHolder | None = None,
    logs: EventLogs | None = None,
    metrics: ServingMetrics | None = None,
) -> FastAPI:
    """The FastAPI application. `holder`/`logs` default to ones over `runtime.store` (tests may pass their
    own); their threads start with the app (lifespan) and stop, flushing the logs, when it shuts down."""
    import anyio.to_thread
    from fastapi import Depends, FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from recloop.policy.online import PolicyHolder
    from recloop.serving.middleware import ServingMiddleware
    from recloop.serving.ranking import SlateEngine
    from recloop.serving.routes import (
        API_KEY_HEADER,
        ServingState,
        feedback_routes,
        key_check,
        operation_routes,
        recommendation_routes,
    )
    from recloop.serving.schemas import request_models

    settings = runtime.settings
    limits = settings.limits
    metrics = metrics or ServingMetrics()
    holder = holder or ModelHolder(runtime.store, runtime.model_name, settings, metrics)
    logs = logs or EventLogs(runtime.store, settings.logs, metrics)
    bandit = PolicyHolder(runtime.store, runtime.model_name, settings.poll_interval.total_seconds())
    state = ServingState(settings, holder, logs, metrics, SlateEngine(settings, bandit), runtime.pseudonymize)
    require_key = key_check(runtime.api_keys)
    # Read routes declare (and check) the key only when reads are protected, so the spec tells the truth.
    read_access = [Depends(require_key)] if settings.auth.protect_reads else []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(
        ServingMiddleware, max_concurrency=limits.max_concurrency, max_body_bytes=limits.max_body_bytes, metrics=metrics
    )
    app.add_exception_handler(StarletteHTTPException, _http_error)
    bodies = request_models(limits)
    app.include_router(recommendation_routes(state, bodies, read_access))
    app.include_router(feedback_routes(state, bodies, require_key))
    app.include_router(operation_routes(state, require_key, read_access))
    return app


async def _http_error(request: Request, exc: Any) -> Response:
    """FastAPI's HTTP error response, except that a 405's `Allow` lists every method the path takes:
    Starlette lists only the first route matching the path (GET, where POST is there too)."""
    from fastapi.exception_handlers import http_exception_handler

    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return await http_exception_handler(request, exc)


def allowed_methods(request: Request) -> list[str]:
    """The methods of every route of the app whose path matches the request's."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)
