"""Typed pipeline configuration: one YAML file validated once, at the edge, into pydantic objects.

`load(path)` returns a `PipelineConfig` or raises `ConfigError` listing every problem as
`path.to.key: what is wrong (got X)`. Everything downstream receives typed objects, never dicts.

Layering (lowest to highest): built-in defaults, the files named by `extends:` (deep-merged, recursively),
the file itself, then `--set a.b=value` overrides. `${ENV_VAR}` is expanded only inside secret fields.
Relative paths inside `data` and `file://` store roots resolve against the directory of the file that
declares them, so a config means the same thing whatever the working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from recloop.errors import ConfigError

# ---------------------------------------------------------------------------------------------- helpers

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'90s', '15m', '12h', '1d', '2w' or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f"expected a duration like '30s', '15m', '12h' or '1d' (got {value!r})")


def _format_duration(td: timedelta) -> str:
    # Must parse back through parse_duration: ':g' gave '3.1536e+07s' for 365 days, which it rejects.
    seconds = td.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.6f}".rstrip("0") + "s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(_format_duration)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


# ---------------------------------------------------------------------------------------------- store


class RetryConfig(StrictModel):
    """Bounded exponential back-off with full jitter for transient store errors."""

    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per operation, the first included.")
    base_delay_s: float = Field(0.2, gt=0, description="Delay before the first retry; doubles each retry.")
    max_delay_s: float = Field(5.0, gt=0, description="Cap on a single delay.")


class StoreConfig(StrictModel):
    root: str = Field(
        "file://.recloop/store",
        description="Root URI of the artifact store: file:///abs/path, file://relative/path or s3://bucket/prefix.",
    )
    endpoint_url: str | None = Field(None, description="S3 endpoint (SeaweedFS, MinIO, ...); None = AWS.")
    region: str | None = Field(None, description="S3 region name.")
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    access_key_id: SecretStr | None = Field(None, description="S3 key id; None = the standard AWS chain.")
    secret_access_key: SecretStr | None = None
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        None, description="Ask S3 to encrypt objects at rest."
    )
    multipart_threshold_mb: int = Field(64, ge=5, description="Uploads above this size use multipart.")
    retry: RetryConfig = RetryConfig()

    @field_validator("root")
    @classmethod
    def _check_root(cls, v: str) -> str:
        if not re.match(r"^(file|s3)://.+", v):
            raise ValueError(f"must start with file:// or s3:// and name a location (got {v!r})")
        if v.startswith("s3://") and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", v):
            raise ValueError(f"S3 bucket name is not valid (got {v!r})")
        return v.rstrip("/")


# ---------------------------------------------------------------------------------------------- data

DataFormat = Literal["auto", "csv", "tsv", "parquet", "jsonl"]


class InteractionColumns(StrictModel):
    """Maps source column names onto recloop's internal interaction schema."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None
    event_type: str | None = None
    weight: str | None = None
    context: list[str] = Field(default_factory=list, description="Extra columns kept as context features.")


class InteractionSource(StrictModel):
    path: str = Field(..., description="Local path, glob, or s3:// URI of the interaction events.")
    format: DataFormat = "auto"
    columns: InteractionColumns = InteractionColumns()
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso"] = Field(
        "s", description="How the timestamp column is encoded: epoch units or ISO-8601 strings."
    )
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' (csv) or tab (tsv).")
    encoding: str = "utf-8"


class TagSource(StrictModel):
    """Free-text tags per item (MovieLens tags.csv), folded into the item text as `{tags}`."""

    path: str
    format: DataFormat = "auto"
    item: str = "item_id"
    tag: str = "tag"
    max_tags: int = Field(20, ge=1, description="Most frequent tags kept per item.")
    delimiter: str | None = None
    encoding: str = "utf-8"


class ItemSource(StrictModel):
    path: str = Field(..., description="Local path, glob, or s3:// URI of the item catalog.")
    format: DataFormat = "auto"
    id: str = Field("item_id", description="Column holding the item id (matches interactions.columns.item).")
    category: str | None = Field(None, description="Column holding categories; '|'-separated lists allowed.")
    text: str = Field(
        "{title}",
        description="Template rendering an item's text from its columns, e.g. '{title}. Genres: {genres}'.",
    )
    tags: TagSource | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"

    @field_validator("text")
    @classmethod
    def _check_template(cls, v: str) -> str:
        fields = template_fields(v)
        if not fields:
            raise ValueError(f"the text template must reference at least one column like '{{title}}' (got {v!r})")
        return v


class UserSource(StrictModel):
    path: str
    format: DataFormat = "auto"
    id: str = "user_id"
    delimiter: str | None = None
    encoding: str = "utf-8"


class DataConfig(StrictModel):
    interactions: InteractionSource
    items: ItemSource | None = None
    users: UserSource | None = None
    since: datetime | None = Field(None, description="Watermark: ingest only events after this time.")
    chunk_rows: int = Field(250_000, ge=1_000, description="Rows read per chunk; bounds ingest memory.")


def template_fields(template: str) -> list[str]:
    """Column names referenced by a `{name}` text template."""
    import string

    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:
        raise ValueError(f"malformed text template {template!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------- validation


class ValidationConfig(StrictModel):
    on_failure: Literal["fail", "quarantine", "warn"] = Field(
        "fail", description="fail: stop (exit 3); quarantine: set bad rows aside and go on; warn: log only."
    )
    min_valid_share: float = Field(
        0.9, ge=0, le=1, description="With quarantine: the share of valid rows below which the step still fails."
    )
    min_rows: int = Field(1, ge=0, description="Minimum number of interactions.")
    max_duplicate_rate: float = Field(0.05, ge=0, le=1, description="Max share of exact duplicate events.")
    future_tolerance: Duration = Field(timedelta(days=1), description="Allowed clock skew into the future.")
    min_catalog_coverage: float = Field(
        0.95, ge=0, le=1, description="Min share of interaction items present in the catalog (if one is given)."
    )
    rating_range: tuple[float, float] | None = Field(None, description="[min, max] allowed ratings.")
    allowed_event_types: list[str] | None = None
    min_interactions_per_user: int = Field(1, ge=1, description="Users below this are reported.")
    min_interactions_per_item: int = Field(1, ge=1, description="Items below this are reported.")
    max_cold_start_share: float = Field(
        1.0, ge=0, le=1, description="Max share of catalog items without interactions."
    )
    data_docs: bool = Field(True, description="Render great-expectations Data Docs HTML to the store.")

    @field_validator("rating_range")
    @classmethod
    def _check_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"min must not exceed max (got {list(v)})")
        return v


# ---------------------------------------------------------------------------------------------- preprocess


class ImplicitConfig(StrictModel):
    """How explicit feedback becomes implicit positives."""

    min_rating: float | None = Field(None, description="Keep events with rating >= this (None keeps all).")
    event_weights: dict[str, float] | None = Field(
        None, description="Weight per event type; events of types not listed are dropped."
    )


class SplitConfig(StrictModel):
    method: Literal["leave_last_out", "time_cutoff"] = "leave_last_out"
    cutoff: datetime | None = Field(None, description="time_cutoff: events after this are held out.")
    valid_cutoff: datetime | None = Field(
        None, description="time_cutoff: events between this and `cutoff` form the validation split."
    )
    test_share: float = Field(
        0.1, gt=0, lt=1, description="time_cutoff without explicit cutoffs: latest share of events for test."
    )
    valid_share: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_cutoffs(self) -> SplitConfig:
        if self.valid_cutoff and self.cutoff and self.valid_cutoff >= self.cutoff:
            raise ValueError("valid_cutoff must be earlier than cutoff")
        return self


class PreprocessConfig(StrictModel):
    dedupe: bool = Field(True, description="Drop exact duplicate (user, item, timestamp) events.")
    implicit: ImplicitConfig = ImplicitConfig()
    min_user_interactions: int = Field(3, ge=1)
    min_item_interactions: int = Field(1, ge=1)
    kcore: bool = Field(False, description="Iterate the min-count filters until both hold (k-core).")
    catalog_items: Literal["interacted", "all"] = Field(
        "interacted",
        description="Which items get ids: those with training interactions, or every catalog item "
        "(lets text-aware models recommend items nobody has interacted with yet).",
    )
    split: SplitConfig = SplitConfig()


# ---------------------------------------------------------------------------------------------- later steps


class ColdStartConfig(StrictModel):
    item_share: float = Field(0.0, ge=0, lt=1, description="Share of items held out of training entirely.")
    seed: int = 0


class EvaluationConfig(StrictModel):
    k: list[int] = Field(default_factory=lambda: [10, 20])
    primary: str = Field("ndcg@10", description="Metric that ranks candidates, as name@k.")
    sampled_negatives: int | None = Field(None, ge=1, description="Sampled ranking; None = full ranking.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples for 95% confidence intervals.")
    split: Literal["test", "valid"] = "test"
    cold_start: ColdStartConfig = ColdStartConfig()
    seed: int = 0

    @field_validator("k")
    @classmethod
    def _check_k(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"must be a non-empty list of positive cut-offs (got {v})")
        return sorted(set(v))

    @field_validator("primary")
    @classmethod
    def _check_primary(cls, v: str) -> str:
        from recloop.evaluation.names import GATEABLE_METRICS, split_metric

        split_metric(v, GATEABLE_METRICS)
        return v


class GateConfig(StrictModel):
    absolute: dict[str, float] = Field(default_factory=dict, description="metric@k -> minimum value.")
    relative_to_champion: dict[str, float] = Field(
        default_factory=dict, description="metric@k -> minimum ratio of the champion's value."
    )
    require_significant: bool = Field(False, description="Improvement over champion must pass a paired bootstrap.")
    alpha: float = Field(0.05, gt=0, lt=1)

    @field_validator("absolute", "relative_to_champion")
    @classmethod
    def _check_metrics(cls, v: dict[str, float], info: Any) -> dict[str, float]:
        from recloop.evaluation.names import GATEABLE_METRICS, split_metric

        for metric, bound in v.items():
            split_metric(metric, GATEABLE_METRICS)
            if info.field_name == "relative_to_champion" and bound <= 0:
                raise ValueError(f"{metric}: the ratio to the champion must be positive, e.g. 0.99 (got {bound})")
        return v


class PublishConfig(StrictModel):
    model_name: str | None = Field(None, description="Registry name; defaults to the pipeline name.")


_CRON_PRESETS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@quarterly": "0 0 1 */3 *", "@yearly": "0 0 1 1 *",
}
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")


def _check_schedule(value: str | list[str] | None) -> str | list[str] | None:
    """A schedule is None, or one entry / a list of entries: a cron expression or preset, `feedback`
    (this pipeline's feedback Asset) or an Asset URI (`scheme://...`). At most one time-based entry."""
    if value is None:
        return None
    entries = [value] if isinstance(value, str) else list(value)
    if not entries:
        raise ValueError("an empty list never triggers; use null for manual runs only")
    crons = 0
    for entry in entries:
        entry = entry.strip()
        if entry == "feedback" or re.match(r"^[a-z][a-z0-9+.\-]*://\S+$", entry):
            continue
        crons += 1
        fields = _CRON_PRESETS.get(entry, entry).split()
        if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
            raise ValueError(
                f"{entry!r} is not a schedule: use a 5-field cron expression ('0 3 * * *'), a preset "
                f"({', '.join(_CRON_PRESETS)}), 'feedback', or an Asset URI like 'recloop://name/feedback'"
            )
    if crons > 1:
        raise ValueError("at most one cron expression or preset per schedule (assets may be added to it)")
    return value


class ResourceQuantities(StrictModel):
    cpu: str | None = Field(None, description="CPU quantity, e.g. '500m' or '2'.")
    memory: str | None = Field(None, description="Memory quantity, e.g. '512Mi' or '4Gi'.")
    gpu: int | None = Field(None, ge=0, description="NVIDIA GPUs (`nvidia.com/gpu`).")


class ContainerResources(StrictModel):
    """Requests and limits for a step container (Kubernetes resources; docker uses the limits)."""

    requests: ResourceQuantities = ResourceQuantities()
    limits: ResourceQuantities = ResourceQuantities()


class Toleration(StrictModel):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class SecretEnv(StrictModel):
    """An existing Kubernetes Secret exposed to step pods as environment variables."""

    secret: str = Field(..., description="Name of the Kubernetes Secret.")
    key: str | None = Field(None, description="One key of the Secret; omitted = every key (envFrom).")
    env: str | None = Field(None, description="Environment variable receiving `key`; defaults to the key.")


class KubernetesExecutionConfig(StrictModel):
    """`execution.mode: kubernetes`: each step is a pod running `recloop step NAME --config ... --run-id ...`."""

    namespace: str | None = Field(None, description="Namespace for step pods; None = the one Airflow runs in.")
    kubernetes_conn_id: str = Field("kubernetes_default", description="Airflow connection to the cluster.")
    in_cluster: bool | None = Field(None, description="Use the in-cluster service account config.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list, description="Names of registry Secrets.")
    service_account: str | None = Field(None, description="Service account the step pods run as.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    secrets: list[SecretEnv] = Field(default_factory=list, description="Secrets exposed as env vars (S3 keys...).")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    config_map: str | None = Field(
        None, description="ConfigMap holding this config file (key = the file name), mounted at `config_dir`; "
        "None = the image or a pod template provides the file there.")
    config_dir: str = Field("/etc/recloop", description="Folder holding the config file inside the pod.")
    config_file: str | None = Field(
        None, description="The config's file name inside `config_dir` (e.g. 'config.yaml', the key of the serving "
        "chart's ConfigMap); None = this config's own file name.")
    startup_timeout_seconds: int = Field(600, ge=10, description="How long a pod may stay Pending.")
    on_finish_action: Literal["delete_pod", "delete_succeeded_pod", "keep_pod"] = "delete_succeeded_pod"


class DockerMount(StrictModel):
    source: str = Field(..., description="Host path.")
    target: str = Field(..., description="Path inside the container.")
    read_only: bool = True


class DockerExecutionConfig(StrictModel):
    """`execution.mode: docker`: each step is a container on the worker's Docker engine."""

    docker_url: str = Field("unix://var/run/docker.sock", description="Docker engine address.")
    network_mode: str | None = Field(None, description="e.g. 'host' to reach a store on the worker's loopback.")
    mount_local_paths: bool = Field(
        True, description="Bind-mount the config folder, local data folders and a file:// store root at the "
        "same paths inside the container, so it sees the files the worker sees.")
    mounts: list[DockerMount] = Field(default_factory=list, description="Extra bind mounts.")
    pass_env: list[str] = Field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"],
        description="Worker environment variables passed privately (never logged) into the container.")
    user: str | None = Field(None, description="User to run the container as; None = the image's user.")
    auto_remove: Literal["never", "success", "force"] = "success"


class StepExecutionConfig(StrictModel):
    """Per-step overrides of the execution defaults (e.g. a longer timeout or a GPU node for `train`)."""

    retries: int | None = Field(None, ge=0, le=10)
    retry_delay: Duration | None = None
    timeout_minutes: int | None = Field(None, ge=1)
    resources: ContainerResources | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None


class FaultInjectionConfig(StrictModel):
    """Make one step's task fail on its first attempt(s), to exercise Airflow's retries (tests, drills)."""

    step: str = Field(..., description="Step whose task fails, e.g. 'train'.")
    fail_attempts: int = Field(1, ge=1, le=10, description="Attempts that fail before one may succeed.")
    at: Literal["start", "end"] = Field(
        "start", description="start: before the step runs; end: after its artifact is committed.")


class AirflowApiConfig(StrictModel):
    """Airflow's public REST API, used to write run notes (the Task SDK cannot set them)."""

    url: str = Field("http://127.0.0.1:8080", description="Base URL of the Airflow API server.")
    username: str | None = Field(None, description="User for POST /auth/token.")
    password: SecretStr | None = Field(None, description="Password for that user (use ${ENV_VAR}).")
    token: SecretStr | None = Field(None, description="A ready bearer token instead of username/password.")


class ExecutionConfig(StrictModel):
    mode: Literal["inprocess", "kubernetes", "docker"] = "inprocess"
    retries: int = Field(2, ge=0, le=10)
    retry_delay: Duration = timedelta(seconds=30)
    timeout_minutes: int = Field(60, ge=1)
    retry_backoff: float = Field(
        2.0, ge=1.0, le=10.0, description="Exponential back-off multiplier between retries (1 = constant).")
    max_retry_delay: Duration = Field(timedelta(minutes=30), description="Cap on one retry delay.")
    steps: dict[str, StepExecutionConfig] = Field(
        default_factory=dict, description="Per-step overrides keyed by step name (ingest, ..., publish).")
    schedule: str | list[str] | None = Field(
        "feedback", description="When the training DAG runs: null (manual only), a cron expression or preset "
        "('@daily'), 'feedback' (this pipeline's feedback Asset), an Asset URI, or a list mixing one cron "
        "with assets (runs on either).")
    feedback_schedule: str | None = Field(
        "@daily", description="When the feedback DAG runs (cron or preset); null = manual only.")
    timezone: str = Field("UTC", description="Time zone of cron schedules.")
    owner: str = Field("recloop", description="Airflow task owner shown in the UI.")
    tags: list[str] = Field(default_factory=list, description="Extra Airflow DAG tags.")
    image: str = Field("recloop:latest", description="Container image for the kubernetes and docker modes.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra env vars for step containers.")
    resources: ContainerResources = ContainerResources()
    kubernetes: KubernetesExecutionConfig = KubernetesExecutionConfig()
    docker: DockerExecutionConfig = DockerExecutionConfig()
    fault_injection: FaultInjectionConfig | None = None
    airflow_api: AirflowApiConfig | None = Field(
        None, description="Set to let tasks write run notes (why publish was skipped) through the REST API.")

    @field_validator("schedule", "feedback_schedule")
    @classmethod
    def _check_schedules(cls, v: str | list[str] | None) -> str | list[str] | None:
        return _check_schedule(v)

    @field_validator("feedback_schedule")
    @classmethod
    def _check_feedback_schedule(cls, v: str | None) -> str | None:
        if v is not None and (v.strip() == "feedback" or "://" in v):
            raise ValueError(f"the feedback DAG runs on time only: use a cron expression or preset (got {v!r})")
        return v


# ---------------------------------------------------------------------------------------------- serving


class ServingAuthConfig(StrictModel):
    """API keys. Only their sha256 digests are kept in memory; compare in constant time."""

    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys (each >= 16 characters) or `sha256:<hex digest>` entries; "
        "use ${RECLOOP_API_KEYS}. None = `recloop serve` reads the RECLOOP_API_KEYS environment variable.")
    protect_reads: bool = Field(
        False, description="Require a key on read routes (recommendations, similar items) too; feedback and "
        "admin routes always require one.")


class ServingPrivacyConfig(StrictModel):
    hmac_key: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 that pseudonymizes user ids before anything is written "
        "(>= 16 characters; use ${RECLOOP_USER_HMAC_KEY}). None = `recloop serve` reads RECLOOP_USER_HMAC_KEY.")


class ServingLimitsConfig(StrictModel):
    """Request validation bounds and load shedding."""

    default_k: int = Field(10, ge=1, description="Slate size when the request gives no k.")
    max_k: int = Field(100, ge=1, le=1000, description="Largest k a request may ask for (422 above).")
    max_history: int = Field(500, ge=1, description="Most items a posted history may hold.")
    max_feedback_events: int = Field(100, ge=1, description="Most events in one POST /v1/feedback.")
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body (413 above).")
    id_pattern: str = Field(
        r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$", description="Regular expression user and item ids must match.")
    max_concurrency: int = Field(
        32, ge=1, description="Requests processed at once; more are shed at once with 429 (never queued to death).")

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
        "popular", description="popular: most interacted items; trending: interactions decayed by age; text: "
        "items whose text is closest to the given history (popular when there is none).")
    trending_half_life: Duration = Field(
        timedelta(days=7), description="trending: an interaction this old (relative to the newest) counts half.")


class ServingRulesConfig(StrictModel):
    """Business rules applied to every slate."""

    excluded_items: list[str] = Field(default_factory=list, description="Item ids never recommended.")
    blocked_categories: list[str] = Field(default_factory=list, description="Items of these categories are never recommended.")
    max_per_category: int | None = Field(None, ge=1, description="At most this many items sharing a category per slate.")
    mmr_lambda: float | None = Field(
        None, ge=0, le=1, description="Diversify by maximal marginal relevance: lambda * relevance - (1 - lambda) "
        "* max similarity to items already chosen (1 = relevance only; None = off).")
    candidate_pool: int = Field(
        100, ge=1, le=10000, description="Top items re-ranked by the rules above (and explored among).")


class ServingExplorationConfig(StrictModel):
    epsilon: float = Field(
        0.0, ge=0, lt=1, description="Each slot shows a uniformly drawn pool item with this probability "
        "(epsilon-greedy; logged propensities make off-policy evaluation possible). 0 = greedy.")
    seed: int | None = Field(None, description="Seed for exploration draws (with the request id); None = random.")


class ServingAnnConfig(StrictModel):
    """Approximate top-k (HNSW over inner products) for catalogs too large for exact search."""

    enabled: bool = True
    min_items: int = Field(50_000, ge=1, description="Catalogs with fewer items are searched exactly.")
    m: int = Field(16, ge=4, le=128, description="HNSW graph degree.")
    ef_construction: int = Field(200, ge=10, description="HNSW build-time candidate list size.")
    ef_search: int = Field(64, ge=10, description="Initial search-time candidate list; raised until target_recall holds.")
    max_ef_search: int = Field(1024, ge=10, description="Upper bound for the ef_search tuning.")
    target_recall: float = Field(0.95, gt=0, le=1, description="recall@10 against exact search to reach when tuning.")
    recall_queries: int = Field(500, ge=10, description="Queries sampled to measure recall@10.")
    build_threads: int = Field(1, ge=1, description="Threads for building; 1 gives byte-identical indexes (idempotent publish).")


class ServingLogsConfig(StrictModel):
    """Impression and feedback logs written to the store under `{prefix}/impressions|feedback/{date}/`."""

    prefix: str = Field("logs", description="Store key prefix of the logs.")
    impressions: bool = Field(True, description="Log every served slate.")
    flush_rows: int = Field(1000, ge=1, description="Flush a log when it buffers this many records.")
    flush_interval: Duration = Field(timedelta(seconds=30), description="Flush buffered records at least this often.")
    max_buffer_rows: int = Field(
        200_000, ge=1, description="While the store is unreachable: impressions beyond this are dropped (counted); "
        "feedback beyond it is refused with 429, so acknowledged feedback is never dropped.")
    spool_dir: str | None = Field(
        None, description="Local folder where acknowledged feedback is fsync'ed before the answer and replayed "
        "at start-up: survives a crash or an unreachable store (mount a volume). None = memory until flushed.")

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
    auth: ServingAuthConfig = ServingAuthConfig()
    privacy: ServingPrivacyConfig = ServingPrivacyConfig()
    limits: ServingLimitsConfig = ServingLimitsConfig()
    fallback: ServingFallbackConfig = ServingFallbackConfig()
    rules: ServingRulesConfig = ServingRulesConfig()
    exploration: ServingExplorationConfig = ServingExplorationConfig()
    ann: ServingAnnConfig = ServingAnnConfig()
    logs: ServingLogsConfig = ServingLogsConfig()

    @field_validator("poll_interval")
    @classmethod
    def _check_poll(cls, v: timedelta) -> timedelta:
        if v.total_seconds() < 0.05:
            raise ValueError(f"must be at least 50ms (got {v.total_seconds():g}s)")
        return v


# ---------------------------------------------------------------------------------------------- feedback


class FeedbackAbuseConfig(StrictModel):
    """Rules that quarantine feedback before it reaches training; each quarantined event names its rule."""

    max_user_events_per_day: int | None = Field(
        1000, ge=1, description="A user with more feedback events than this on one UTC day has all of that "
        "day's events quarantined (user_rate_cap); None = no cap.")
    max_item_events_per_day: int | None = Field(
        None, ge=1, description="Positive events an item may collect per UTC day; later ones are quarantined "
        "(item_rate_cap); None = no cap.")
    max_repeat_events: int = Field(
        1, ge=1, description="Positive events of one type by one user on one item kept per run; more are "
        "repeated clicks (repeated_event).")
    burst_events: int = Field(
        30, ge=2, description="A user with this many events inside `burst_window` is bot-like: all of the "
        "user's events in the run are quarantined (bot_burst).")
    burst_window: Duration = Field(timedelta(seconds=60), description="Window of the bot-burst rule.")
    spike_min_events: int = Field(
        20, ge=1, description="Unattributed positive events (no matching impression) of an item on one day "
        "are quarantined (unattributed_spike) when there are at least this many ...")
    spike_ratio: float = Field(
        3.0, gt=0, description="... and more than this many times the item's impressions that day.")


class FeedbackConfig(StrictModel):
    """The feedback step: serving logs -> labelled interactions, bandit logs, abuse quarantine."""

    rewards: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "add_to_cart": 1.0, "purchase": 1.0, "rating": 1.0},
        description="Positive event types and their reward; other types (view, dismiss) are reported but "
        "neither rewarded nor appended for training.")
    attribution_window: Duration = Field(
        timedelta(hours=1), description="Events count for a slate when received within this after it was "
        "served; impressions younger than this wait for the next run.")
    until: datetime | None = Field(
        None, description="Process impressions served up to this time instead of now - attribution_window "
        "(replays and backfills of historical logs).")
    output: str | None = Field(
        None, description="Folder (local path or s3:// URI) the clean interactions are appended to, in the "
        "ingest input format; include it in data.interactions.path. None = {store.root}/feedback/interactions.")
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field(
        "auto", description="Format of appended files; auto = the format of data.interactions.")
    event_ratings: dict[str, float] = Field(
        default_factory=dict, description="Rating written for events of these types (e.g. click: 4.0) when "
        "data.interactions maps a rating column; `rating` events write their value.")
    abuse: FeedbackAbuseConfig = FeedbackAbuseConfig()

    @field_validator("rewards")
    @classmethod
    def _check_rewards(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not r > 0}
        if not v or bad:
            raise ValueError(f"name at least one positive event type with a reward > 0 (got {v})")
        return v


class PolicyGateConfig(StrictModel):
    """Off-policy gate: the candidate policy must beat the logging policy on held-out logs."""

    estimator: Literal["ips", "snips", "dr"] = Field("snips", description="Estimator the decision uses.")
    min_lift: float = Field(0.0, ge=-1, description="Required relative lift over the logging policy's value.")
    use_lower_bound: bool = Field(
        True, description="Compare the lower end of the candidate's bootstrap interval, not its point estimate.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples (of whole slates) for the intervals.")
    confidence: float = Field(0.9, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    max_weight: float | None = Field(
        100.0, gt=0, description="Clip importance weights at this value (lower variance, some bias); None = off.")


class PolicyConfig(StrictModel):
    """Contextual-bandit reranker over the base model's candidates, trained by the feedback step."""

    enabled: bool = Field(False, description="Train, off-policy evaluate and (if it passes) publish a policy.")
    algorithm: Literal["linucb"] = Field(
        "linucb", description="LinUCB: shared ridge regression over candidate features plus an upper "
        "confidence bonus; deterministic scores, so logged propensities are exact.")
    alpha: float = Field(0.5, ge=0, description="Width of the LinUCB confidence bonus.")
    ridge: float = Field(1.0, gt=0, description="L2 regularization of the reward regression.")
    exploration: Literal["epsilon_greedy", "softmax"] = Field(
        "softmax", description="How slots are drawn from the scores: epsilon-greedy or a softmax (Plackett-Luce).")
    epsilon: float = Field(0.1, ge=0, lt=1, description="epsilon_greedy: chance a slot shows a uniform draw.")
    temperature: float = Field(0.05, gt=0, description="softmax: temperature over the UCB scores.")
    candidates: int = Field(50, ge=2, le=10000, description="Base-model candidates the policy reranks.")
    categories: int = Field(16, ge=0, le=256, description="Most frequent item categories used as features.")
    min_slots: int = Field(200, ge=1, description="Logged slots needed before a policy is trained.")
    holdout_share: float = Field(
        0.3, gt=0, lt=1, description="Newest share of the logs held out to evaluate the candidate policy.")
    gate: PolicyGateConfig = PolicyGateConfig()
    seed: int = 0


# ---------------------------------------------------------------------------------------------- pipeline


class PipelineConfig(StrictModel):
    """The whole pipeline. `models` is typed by the model registry (see `pipeline_config_type`)."""

    name: str = Field(..., description="Pipeline name: lower-case letters, digits, '-' and '_'.")
    store: StoreConfig = StoreConfig()
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    models: list[Any] = Field(default_factory=list, description="Candidate models, each `type:` + params.")
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    publish: PublishConfig = PublishConfig()
    execution: ExecutionConfig = ExecutionConfig()
    serving: ServingConfig = ServingConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    policy: PolicyConfig = PolicyConfig()

    # Set by load(): where the file came from (for messages and lineage); not part of the schema.
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        return self._source

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9_\-]{0,62}$", v):
            raise ValueError(f"use lower-case letters, digits, '-' and '_' (got {v!r})")
        return v

    @field_validator("models")
    @classmethod
    def _check_candidate_names(cls, v: list[Any]) -> list[Any]:
        # Candidate names key reports and name the train artifact's folders: unique, one path segment.
        names = [m.candidate_name for m in v if hasattr(m, "candidate_name")]
        for name in names:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$", name):
                raise ValueError(f"candidate name {name!r} must be letters, digits, '.', '-' or '_' "
                                 f"(it names a folder); set a different `name:` (got names {names})")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            where = "; ".join(f"{d!r} at models[{', '.join(str(i) for i, n in enumerate(names) if n == d)}]"
                              for d in duplicates)
            raise ValueError(f"candidate names must be unique ({where}); give each entry a distinct "
                             f"`name:` (got names {names})")
        return v

    @model_validator(mode="after")
    def _check_gate_cutoffs(self) -> PipelineConfig:
        # Gate and ranking metrics must be computed by evaluate: their cut-offs must be in evaluation.k.
        ks = self.evaluation.k
        named = [("evaluation.primary", self.evaluation.primary)]
        named += [(f"gate.absolute.{m}", m) for m in self.gate.absolute]
        named += [(f"gate.relative_to_champion.{m}", m) for m in self.gate.relative_to_champion]
        for where, metric in named:
            k = int(metric.rsplit("@", 1)[1])
            if k not in ks:
                raise ValueError(f"{where}: cut-off {k} is not evaluated; add {k} to evaluation.k (now {ks})")
        if self.gate.require_significant and self.evaluation.bootstrap == 0:
            raise ValueError("gate.require_significant needs bootstrap resamples; set evaluation.bootstrap > 0 "
                             "(e.g. 1000) or turn require_significant off")
        return self

    @property
    def model_name(self) -> str:
        return self.publish.model_name or self.name

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the validated config (secrets excluded)."""
        # `serving` only tunes the online API: changing it must not invalidate pipeline artifacts.
        payload = json.dumps(self.model_dump(mode="json", exclude={"serving"}), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


@lru_cache(maxsize=1)
def pipeline_config_type() -> type[PipelineConfig]:
    """PipelineConfig with `models` as a discriminated union over every registered model config."""
    from recloop.models.registry import model_config_types

    types = model_config_types()
    if not types:
        return PipelineConfig
    union = types[0] if len(types) == 1 else Union[tuple(types)]  # noqa: UP007 (runtime union)
    entry = Annotated[union, Field(discriminator="type")]
    return create_model(
        "PipelineConfig",
        __base__=PipelineConfig,
        models=(list[entry], Field(default_factory=list, description="Candidate models, each `type:` + params.")),
    )


# ---------------------------------------------------------------------------------------------- loading

SECRET_KEYS = {"access_key_id", "secret_access_key", "api_key", "api_keys", "hmac_key", "token", "password"}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _interpolate(node: Any, path: str, env: dict[str, str], errors: list[str]) -> Any:
    """Expand ${VAR} in secret fields; anywhere else it is an error (config stays reviewable)."""
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}.{i}", env, errors) for i, v in enumerate(node)]
    if isinstance(node, str) and _ENV_RE.search(node):
        leaf = path.rsplit(".", 1)[-1]
        parent = path.rsplit(".", 2)[-2] if path.count(".") >= 1 else ""
        if leaf not in SECRET_KEYS and parent not in SECRET_KEYS:
            errors.append(
                f"{path}: ${{...}} interpolation is only allowed in secret fields "
                f"({', '.join(sorted(SECRET_KEYS))}); write the value itself (got {node!r})"
            )
            return node

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                errors.append(f"{path}: environment variable {name} is not set; export it or remove the reference")
                return ""
            return env[name]

        return _ENV_RE.sub(repl, node)
    return node


def _resolve_relative_paths(raw: dict, base_dir: Path) -> dict:
    """Make data paths and file:// store roots absolute against the declaring file's directory."""

    def fix(p: Any) -> Any:
        if not isinstance(p, str) or "://" in p or p.startswith("/"):
            return p
        return str((base_dir / p).resolve()) if "*" not in p else str(base_dir.resolve() / p)

    data = raw.get("data")
    if isinstance(data, dict):
        for section in ("interactions", "items", "users"):
            src = data.get(section)
            if isinstance(src, dict):
                if "path" in src:
                    src["path"] = fix(src["path"])
                tags = src.get("tags")
                if isinstance(tags, dict) and "path" in tags:
                    tags["path"] = fix(tags["path"])
    feedback = raw.get("feedback")
    if isinstance(feedback, dict) and "output" in feedback:
        feedback["output"] = fix(feedback["output"])
    store = raw.get("store")
    if isinstance(store, dict) and isinstance(store.get("root"), str):
        root = store["root"]
        if root.startswith("file://") and not root.startswith("file:///"):
            store["root"] = "file://" + str((base_dir / root[len("file://") :]).resolve())
    return raw


def _read_yaml(path: Path, errors: list[str], seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        errors.append(f"extends: circular reference through {path}")
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.append(f"{path}: file not found; check the path")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{path}: cannot read ({exc})")
        return {}
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(f"{path}:{where}: not valid YAML ({problem})")
        return {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{path}: the top level must be a mapping of sections (got {type(raw).__name__})")
        return {}
    raw = _resolve_relative_paths(raw, path.parent)
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else list(parents):
        merged = _deep_merge(merged, _read_yaml((path.parent / parent).resolve(), errors, seen + (path,)))
    return _deep_merge(merged, raw)


def parse_override(expr: str) -> tuple[list[str], Any]:
    """'evaluation.k=[5,10]' -> (['evaluation', 'k'], [5, 10]); the value is parsed as YAML."""
    if "=" not in expr:
        raise ConfigError("--set", [f"{expr}: expected KEY.PATH=VALUE"])
    key, value = expr.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("--set", [f"{expr}: empty key"])
    return parts, yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = raw
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit():
                node = node[int(part)]
                continue
            node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list) and last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def format_validation_error(exc: ValidationError, raw: dict | None = None) -> list[str]:
    """One `path.to.key: message (got X)` line per pydantic error."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see `recloop config schema`)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"unknown model type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        show_got = err["type"] not in ("missing", "union_tag_invalid") and not isinstance(got, dict)
        if show_got and "(got" not in msg:
            msg = f"{msg} (got {got!r})"
        lines.append(f"{loc}: {msg}")
    return lines


def from_dict(raw: dict, source: str = "<memory>") -> PipelineConfig:
    """Validate an already-merged mapping (no file, no interpolation)."""
    cls = pipeline_config_type()
    try:
        cfg = cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc, raw)) from None
    cfg._source = source
    return cfg


def load_raw(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
             env: dict[str, str] | None = None) -> dict:
    """Read, merge `extends`, apply overrides and interpolate secrets; no schema validation yet."""
    path = Path(path).expanduser().resolve()
    errors: list[str] = []
    raw = _read_yaml(path, errors)
    if errors:
        raise ConfigError(str(path), errors)
    if overrides:
        raw = apply_overrides(raw, overrides)
    raw = _interpolate(raw, "", dict(os.environ) if env is None else env, errors)
    if errors:
        raise ConfigError(str(path), errors)
    return raw


def load(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
         env: dict[str, str] | None = None) -> PipelineConfig:
    """Load and validate a pipeline config file. Raises ConfigError listing every problem."""
    raw = load_raw(path, overrides, env)
    return from_dict(raw, str(Path(path).expanduser().resolve()))


def json_schema() -> dict:
    """JSON Schema of the config file, for editors (`recloop config schema`)."""
    return pipeline_config_type().model_json_schema()
