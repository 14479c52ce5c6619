"""`serving:`: the online API (auth, limits, fallback, business rules, exploration, ANN index, logs)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from recloop.config.base import Duration, StrictModel


class ServingAuthConfig(StrictModel):
    """API keys. Only their sha256 digests are kept in memory; compare in constant time."""

    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys (each >= 16 characters) or `sha256:<hex digest>` entries; "
        "use ${RECLOOP_API_KEYS}. None = `recloop serve` reads the RECLOOP_API_KEYS environment variable.",
    )
    protect_reads: bool = Field(
        False,
        description="Require a key on read routes (recommendations, similar items) too; feedback and "
        "admin routes always require one.",
    )


class ServingPrivacyConfig(StrictModel):
    """Pseudonymization of user ids in everything the API writes."""

    hmac_key: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 that pseudonymizes user ids before anything is written "
        "(>= 16 characters; use ${RECLOOP_USER_HMAC_KEY}). None = `recloop serve` reads RECLOOP_USER_HMAC_KEY.",
    )


class ServingLimitsConfig(StrictModel):
    """Request validation bounds and load shedding."""

    default_k: int = Field(10, ge=1, description="Slate size when the request gives no k.")
    max_k: int = Field(100, ge=1, le=1000, description="Largest k a request may ask for (422 above).")
    max_history: int = Field(500, ge=1, description="Most items a posted history may hold.")
    max_feedback_events: int = Field(100, ge=1, description="Most events in one POST /v1/feedback.")
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body (413 above).")
    id_pattern: str = Field(
        r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$", description="Regular expression user and item ids must match."
    )
    max_concurrency: int = Field(
        32, ge=1, description="Requests processed at once; more are shed at once with 429 (never queued to death)."
    )

    @field_validator("id_pattern")
    @classmethod
    def _check_pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc}) (got {v!r})") from None
        return v

    @model_validator(mode="after")
    def _check_k(self) -> ServingLimitsConfig:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self


class ServingFallbackConfig(StrictModel):
    """What users the model cannot personalize for get (unknown user, no usable history)."""

    policy: Literal["popular", "trending", "text"] = Field(
        "popular",
        description="popular: most interacted items; trending: interactions decayed by age; text: "
        "items whose text is closest to the given history (popular when there is none).",
    )
    trending_half_life: Duration = Field(
        timedelta(days=7), description="trending: an interaction this old (relative to the newest) counts half."
    )


class ServingRulesConfig(StrictModel):
    """Business rules applied to every slate."""

    excluded_items: list[str] = Field(default_factory=list, description="Item ids never recommended.")
    blocked_categories: list[str] = Field(
        default_factory=list, description="Items of these categories are never recommended."
    )
    max_per_category: int | None = Field(
        None, ge=1, description="At most this many items sharing a category per slate."
    )
    mmr_lambda: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Diversify by maximal marginal relevance: lambda * relevance - (1 - lambda) "
        "* max similarity to items already chosen (1 = relevance only; None = off).",
    )
    candidate_pool: int = Field(
        100, ge=1, le=10000, description="Top items re-ranked by the rules above (and explored among)."
    )


class ServingExplorationConfig(StrictModel):
    """Exploration, so logged slates support off-policy evaluation of new policies."""

    epsilon: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Each slot shows a uniformly drawn pool item with this probability "
        "(epsilon-greedy; logged propensities make off-policy evaluation possible). 0 = greedy.",
    )
    seed: int | None = Field(None, description="Seed for exploration draws (with the request id); None = random.")


class ServingAnnConfig(StrictModel):
    """Approximate top-k (HNSW over inner products) for catalogs too large for exact search."""

    enabled: bool = Field(
        True,
        description="Build an HNSW index when the catalog has at least min_items items; false = always exact search.",
    )
    min_items: int = Field(50_000, ge=1, description="Catalogs with fewer items are searched exactly.")
    m: int = Field(16, ge=4, le=128, description="HNSW graph degree.")
    ef_construction: int = Field(200, ge=10, description="HNSW build-time candidate list size.")
    ef_search: int = Field(
        64, ge=10, description="Initial search-time candidate list; raised until target_recall holds."
    )
    max_ef_search: int = Field(1024, ge=10, description="Upper bound for the ef_search tuning.")
    target_recall: float = Field(0.95, gt=0, le=1, description="recall@10 against exact search to reach when tuning.")
    recall_queries: int = Field(500, ge=10, description="Queries sampled to measure recall@10.")
    build_threads: int = Field(
        1, ge=1, description="Threads for building; 1 gives byte-identical indexes (idempotent publish)."
    )


class ServingLogsConfig(StrictModel):
    """Impression and feedback logs written to the store under `{prefix}/impressions|feedback/{date}/`."""

    prefix: str = Field("logs", description="Store key prefix of the logs.")
    impressions: bool = Field(True, description="Log every served slate.")
    flush_rows: int = Field(1000, ge=1, description="Flush a log when it buffers this many records.")
    flush_interval: Duration = Field(timedelta(seconds=30), description="Flush buffered records at least this often.")
    max_buffer_rows: int = Field(
        200_000,
        ge=1,
        description="While the store is unreachable: impressions beyond this are dropped (counted); "
        "feedback beyond it is refused with 429, so acknowledged feedback is never dropped.",
    )
    spool_dir: str | None = Field(
        None,
        description="Local folder where acknowledged feedback is fsync'ed before the answer and replayed "
        "at start-up: survives a crash or an unreachable store (mount a volume). None = memory until flushed.",
    )

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(p in ("", ".", "..") for p in v.split("/")):
            raise ValueError(f"must be a '/'-separated store key prefix like 'logs' (got {v!r})")
        return v


class ServingConfig(StrictModel):
    """`recloop serve`: the online API over the registry's production model."""

    model_name: str | None = Field(None, description="Registry model to serve; defaults to publish.model_name or name.")
    poll_interval: Duration = Field(timedelta(seconds=15), description="How often the production alias is checked.")
    cache_dir: str | None = Field(None, description="Local folder for downloaded bundles; None = a temporary folder.")
    explain_items: int = Field(3, ge=0, le=20, description="History items (and terms) listed per explanation.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off.")
    auth: ServingAuthConfig = Field(
        ServingAuthConfig(), description="API keys guarding feedback, admin and (optionally) read routes."
    )
    privacy: ServingPrivacyConfig = Field(
        ServingPrivacyConfig(), description="Pseudonymization of user ids before they are logged."
    )
    limits: ServingLimitsConfig = Field(
        ServingLimitsConfig(), description="Request validation bounds and load shedding."
    )
    fallback: ServingFallbackConfig = Field(
        ServingFallbackConfig(), description="Recommendations for users the model cannot personalize for."
    )
    rules: ServingRulesConfig = Field(
        ServingRulesConfig(),
        description="Business rules (exclusions, category caps, diversification) applied to every slate.",
    )
    exploration: ServingExplorationConfig = Field(
        ServingExplorationConfig(), description="Epsilon-greedy exploration with logged propensities."
    )
    ann: ServingAnnConfig = Field(
        ServingAnnConfig(), description="Approximate nearest-neighbour index for large catalogs."
    )
    logs: ServingLogsConfig = Field(
        ServingLogsConfig(), description="Impression and feedback logs written to the store."
    )

    @field_validator("poll_interval")
    @classmethod
    def _check_poll(cls, v: timedelta) -> timedelta:
        if v.total_seconds() < 0.05:
            raise ValueError(f"must be at least 50ms (got {v.total_seconds():g}s)")
        return v
