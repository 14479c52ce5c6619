"""Prometheus metrics of one server (its own registry, so several apps in one process never clash)."""

from __future__ import annotations

from typing import Any

# Latency buckets around the 10 ms target, up to multi-second outliers.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "recloop_request_duration_seconds",
            "Request latency by route.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "recloop_requests_total", "Requests by route and HTTP status.", ["method", "route", "status"], registry=r
        )
        self.in_flight = Gauge("recloop_requests_in_flight", "Requests being processed now.", registry=r)
        self.shed = Counter(
            "recloop_requests_shed_total",
            "Requests refused with 429 because the server was at its concurrency limit.",
            registry=r,
        )
        self.model_version = Gauge(
            "recloop_model_version", "Version of the model being served (0 = none).", ["model"], registry=r
        )
        self.model_info = Gauge(
            "recloop_model_info",
            "1 for the served version, with its facts as labels.",
            ["model", "version", "model_type", "search"],
            registry=r,
        )
        self.swaps = Counter("recloop_model_swaps_total", "Hot swaps to a new production version.", registry=r)
        self.load_failures = Counter("recloop_model_load_failures_total", "Versions that failed to load.", registry=r)
        self.fallbacks = Counter(
            "recloop_fallback_total",
            "Slates served by the fallback policy, by reason.",
            ["reason", "policy"],
            registry=r,
        )
        self.search = Counter(
            "recloop_search_total",
            "Candidate searches by method (exact, ann, ann_exhausted: "
            "the index could not supply enough allowed items, searched exactly).",
            ["method"],
            registry=r,
        )
        self.log_rows = Counter(
            "recloop_log_rows_written_total", "Log records written to the store.", ["log"], registry=r
        )
        self.log_failures = Counter(
            "recloop_log_flush_failures_total", "Failed log flushes (records kept).", ["log"], registry=r
        )
        self.log_dropped = Counter(
            "recloop_log_rows_dropped_total",
            "Impression records dropped because the buffer was full (the store was unreachable for long).",
            ["log"],
            registry=r,
        )
        self.log_buffered = Gauge(
            "recloop_log_rows_buffered", "Log records waiting to be written.", ["log"], registry=r
        )
        self._labels: dict[str, Any] | None = None

    def set_model(self, model: str, version: int, model_type: str, search: str) -> None:
        self.model_version.labels(model=model).set(version)
        if self._labels is not None:
            try:
                self.model_info.remove(*self._labels.values())
            except KeyError:
                pass
        self._labels = {"model": model, "version": str(version), "model_type": model_type, "search": search}
        self.model_info.labels(**self._labels).set(1)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
