"""The serving API's ASGI middleware: request id, load shedding, body size limit, metrics, access log.

Pure ASGI in front of everything: it assigns the request id (X-Request-ID), sheds load beyond
`limits.max_concurrency` with 429 (health, readiness and metrics are never shed), refuses bodies over
`limits.max_body_bytes` with 413, records Prometheus metrics and writes an access log line without the
query string (it may hold a user id).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recloop.serving.metrics import ServingMetrics

access_log = logging.getLogger("recloop.serving.access")

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
_UNSHED = frozenset({"/healthz", "/readyz", "/metrics"})
_ROUTES = frozenset(
    {
        "/v1/recommendations",
        "/v1/feedback",
        "/v1/model",
        "/v1/admin/status",
        "/v1/admin/reload",
        "/v1/admin/flush",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/openapi.json",
    }
)


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/v1/items/") and path.endswith("/similar"):
        return "/v1/items/{item_id}/similar"
    return "other"


class ServingMiddleware:
    """Request id, load shedding, body size limit, metrics and access log, in one pass."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], max_concurrency: int, max_body_bytes: int, metrics: ServingMetrics
    ):
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
        request_id = given if REQUEST_ID_RE.match(given) else uuid.uuid4().hex
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
                await _plain_json(
                    send_wrapped,
                    429,
                    {
                        "detail": f"the server is at its limit of {self.max_concurrency} concurrent requests; "
                        "retry after a short delay",
                        "request_id": request_id,
                    },
                    retry_after="1",
                )
                return
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
            try:
                declared = headers.get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                    await _plain_json(
                        send_wrapped,
                        413,
                        {
                            "detail": f"the request body has {int(declared)} bytes; the limit is {self.max_body_bytes}",
                            "request_id": request_id,
                        },
                    )
                    return
                if method in ("POST", "PUT", "PATCH"):
                    body, too_large = await _read_body(receive, self.max_body_bytes)
                    if too_large:
                        await _plain_json(
                            send_wrapped,
                            413,
                            {
                                "detail": f"the request body exceeds the limit of {self.max_body_bytes} bytes",
                                "request_id": request_id,
                            },
                        )
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
                access_log.info(
                    "%s %s %d %.1fms rid=%s",
                    method,
                    path if route != "other" else route,
                    status,
                    elapsed * 1000,
                    request_id,
                )


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
