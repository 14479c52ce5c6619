"""`execution:`: how Airflow runs the steps (in process, Docker, Kubernetes), retries and schedules."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from recloop.config.base import Duration, StrictModel

CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
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
        fields = CRON_PRESETS.get(entry, entry).split()
        if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
            raise ValueError(
                f"{entry!r} is not a schedule: use a 5-field cron expression ('0 3 * * *'), a preset "
                f"({', '.join(CRON_PRESETS)}), 'feedback', or an Asset URI like 'recloop://name/feedback'"
            )
    if crons > 1:
        raise ValueError("at most one cron expression or preset per schedule (assets may be added to it)")
    return value


class ResourceQuantities(StrictModel):
    """Kubernetes-style resource quantities."""

    cpu: str | None = Field(None, description="CPU quantity, e.g. '500m' or '2'.")
    memory: str | None = Field(None, description="Memory quantity, e.g. '512Mi' or '4Gi'.")
    gpu: int | None = Field(None, ge=0, description="NVIDIA GPUs (`nvidia.com/gpu`).")


class ContainerResources(StrictModel):
    """Requests and limits for a step container (Kubernetes resources; docker uses the limits)."""

    requests: ResourceQuantities = Field(
        ResourceQuantities(), description="Resources reserved for the container (Kubernetes scheduling)."
    )
    limits: ResourceQuantities = Field(
        ResourceQuantities(), description="Most the container may use (enforced by Kubernetes and Docker)."
    )


class Toleration(StrictModel):
    """A Kubernetes toleration, letting step pods run on tainted nodes."""

    key: str | None = Field(None, description="Taint key tolerated; None with operator Exists tolerates every taint.")
    operator: Literal["Equal", "Exists"] = Field(
        "Equal", description="Equal: the taint's value must equal `value`; Exists: any value."
    )
    value: str | None = Field(None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect tolerated; None = all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="NoExecute only: how long the pod stays bound after the taint appears; None = forever."
    )


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
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent",
        description="When the kubelet pulls the step image: Always, IfNotPresent, or Never (image preloaded).",
    )
    image_pull_secrets: list[str] = Field(default_factory=list, description="Names of registry Secrets.")
    service_account: str | None = Field(None, description="Service account the step pods run as.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels step pods must match (e.g. a node pool)."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Node taints step pods tolerate.")
    secrets: list[SecretEnv] = Field(default_factory=list, description="Secrets exposed as env vars (S3 keys...).")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on step pods.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Extra annotations on step pods (e.g. for a service mesh or log shipper)."
    )
    config_map: str | None = Field(
        None,
        description="ConfigMap holding this config file (key = the file name), mounted at `config_dir`; "
        "None = the image or a pod template provides the file there.",
    )
    config_dir: str = Field("/etc/recloop", description="Folder holding the config file inside the pod.")
    config_file: str | None = Field(
        None,
        description="The config's file name inside `config_dir` (e.g. 'config.yaml', the key of the serving "
        "chart's ConfigMap); None = this config's own file name.",
    )
    startup_timeout_seconds: int = Field(600, ge=10, description="How long a pod may stay Pending.")
    on_finish_action: Literal["delete_pod", "delete_succeeded_pod", "keep_pod"] = Field(
        "delete_succeeded_pod",
        description="What happens to a finished pod; keep_pod helps debugging, the default keeps only failed ones.",
    )


class DockerMount(StrictModel):
    """A host folder bind-mounted into step containers."""

    source: str = Field(..., description="Host path.")
    target: str = Field(..., description="Path inside the container.")
    read_only: bool = Field(True, description="Mount read-only; the steps write only to the store.")


class DockerExecutionConfig(StrictModel):
    """`execution.mode: docker`: each step is a container on the worker's Docker engine."""

    docker_url: str = Field("unix://var/run/docker.sock", description="Docker engine address.")
    network_mode: str | None = Field(None, description="e.g. 'host' to reach a store on the worker's loopback.")
    mount_local_paths: bool = Field(
        True,
        description="Bind-mount the config folder, local data folders and a file:// store root at the "
        "same paths inside the container, so it sees the files the worker sees.",
    )
    mounts: list[DockerMount] = Field(default_factory=list, description="Extra bind mounts.")
    pass_env: list[str] = Field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"],
        description="Worker environment variables passed privately (never logged) into the container.",
    )
    user: str | None = Field(None, description="User to run the container as; None = the image's user.")
    auto_remove: Literal["never", "success", "force"] = Field(
        "success",
        description="Remove the container when it exits: never, on success only (failed ones stay for "
        "`docker "
        "logs`), or always (force).",
    )


class StepExecutionConfig(StrictModel):
    """Per-step overrides of the execution defaults (e.g. a longer timeout or a GPU node for `train`)."""

    retries: int | None = Field(None, ge=0, le=10, description="This step's retries; None = execution.retries.")
    retry_delay: Duration | None = Field(
        None, description="This step's first retry delay; None = execution.retry_delay."
    )
    timeout_minutes: int | None = Field(
        None, ge=1, description="This step's timeout; None = execution.timeout_minutes (train often needs more)."
    )
    resources: ContainerResources | None = Field(
        None, description="This step's container resources (e.g. a GPU for train); None = execution.resources."
    )
    node_selector: dict[str, str] | None = Field(
        None,
        description="Kubernetes node labels this step's pod must match; None = execution.kubernetes.node_selector.",
    )
    tolerations: list[Toleration] | None = Field(
        None,
        description="Taints this step's pod tolerates (e.g. of a GPU pool); None = execution.kubernetes.tolerations.",
    )


class FaultInjectionConfig(StrictModel):
    """Make one step's task fail on its first attempt(s), to exercise Airflow's retries (tests, drills)."""

    step: str = Field(..., description="Step whose task fails, e.g. 'train'.")
    fail_attempts: int = Field(1, ge=1, le=10, description="Attempts that fail before one may succeed.")
    at: Literal["start", "end"] = Field(
        "start", description="start: before the step runs; end: after its artifact is committed."
    )


class AirflowApiConfig(StrictModel):
    """Airflow's public REST API, used to write run notes (the Task SDK cannot set them)."""

    url: str = Field("http://127.0.0.1:8080", description="Base URL of the Airflow API server.")
    username: str | None = Field(None, description="User for POST /auth/token.")
    password: SecretStr | None = Field(None, description="Password for that user (use ${ENV_VAR}).")
    token: SecretStr | None = Field(None, description="A ready bearer token instead of username/password.")


class ExecutionConfig(StrictModel):
    """How the Airflow DAGs run the steps and when they are triggered."""

    mode: Literal["inprocess", "kubernetes", "docker"] = Field(
        "inprocess",
        description="inprocess: steps run inside the Airflow worker; docker: one container per step; "
        "kubernetes: one pod per step.",
    )
    retries: int = Field(2, ge=0, le=10, description="Airflow retries of a failed step task.")
    retry_delay: Duration = Field(
        timedelta(seconds=30), description="Wait before the first retry; grows by retry_backoff each retry."
    )
    timeout_minutes: int = Field(60, ge=1, description="Airflow execution timeout of one step attempt.")
    retry_backoff: float = Field(
        2.0, ge=1.0, le=10.0, description="Exponential back-off multiplier between retries (1 = constant)."
    )
    max_retry_delay: Duration = Field(timedelta(minutes=30), description="Cap on one retry delay.")
    steps: dict[str, StepExecutionConfig] = Field(
        default_factory=dict, description="Per-step overrides keyed by step name (ingest, ..., publish)."
    )
    schedule: str | list[str] | None = Field(
        "feedback",
        description="When the training DAG runs: null (manual only), a cron expression or preset "
        "('@daily'), 'feedback' (this pipeline's feedback Asset), an Asset URI, or a list mixing one cron "
        "with assets (runs on either).",
    )
    feedback_schedule: str | None = Field(
        "@daily", description="When the feedback DAG runs (cron or preset); null = manual only."
    )
    timezone: str = Field("UTC", description="Time zone of cron schedules.")
    owner: str = Field("recloop", description="Airflow task owner shown in the UI.")
    tags: list[str] = Field(default_factory=list, description="Extra Airflow DAG tags.")
    image: str = Field("recloop:latest", description="Container image for the kubernetes and docker modes.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra env vars for step containers.")
    resources: ContainerResources = Field(
        ContainerResources(), description="Default CPU/memory/GPU requests and limits of step containers."
    )
    kubernetes: KubernetesExecutionConfig = Field(
        KubernetesExecutionConfig(), description="Pod settings for mode kubernetes."
    )
    docker: DockerExecutionConfig = Field(DockerExecutionConfig(), description="Container settings for mode docker.")
    fault_injection: FaultInjectionConfig | None = Field(
        None, description="Make a step fail on purpose to exercise retries (tests and drills); None = off."
    )
    airflow_api: AirflowApiConfig | None = Field(
        None, description="Set to let tasks write run notes (why publish was skipped) through the REST API."
    )

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
