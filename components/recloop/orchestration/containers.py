"""Step tasks for `execution.mode: kubernetes` and `docker`: each step runs `recloop step` in a container.

A per-candidate step such as train is a mapped task: one instance (and container) per candidate, named by
it. Each container runs

    recloop step NAME --config CONFIG --run-id RUN_ID [--since ISO] [--model NAME | --models NAME...] [--force] [--set k=v]...

`--model` names the candidate of a mapped instance; steps reading every candidate (evaluate, publish) get
the run's selection as `--models`, once per name.

`RecloopPodOperator` / `RecloopDockerOperator` hold the container settings as plain data and build the
provider's operator (`KubernetesPodOperator`, `DockerOperator`) only when the task runs: importing the
Kubernetes provider costs a second or more, which the DAG file must not pay at parse time.
The argument list is built when the task renders its templates, so the UI's "Rendered Template" shows the
exact command, from the run id and the run's params, never from Jinja strings (a config path ending in
`.yaml` would otherwise be taken for a template file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from recloop.errors import PERMANENT_EXIT_CODES, ConfigError
from recloop.orchestration.params import RunRequest

if TYPE_CHECKING:
    from recloop.config import ContainerResources, PipelineConfig


def step_arguments(
    step: str, config_path: str, run_id: str, request: RunRequest, candidate: str | None = None
) -> list[str]:
    """Arguments after the `recloop` entrypoint for one step (one candidate of a per-candidate step) of a run."""
    return ["step", step, "--config", config_path, "--run-id", run_id, *request.cli_flags(step, candidate)]


def _run_nested(operator: Any, context: Any) -> Any:
    """Run an operator built inside this task. Airflow's ExecutorSafeguard would log that its execute()
    was called "outside of the Task Runner"; the nesting is deliberate, so vouch for it."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    tracker = getattr(ExecutorSafeguard, "tracker", None)
    if tracker is None:
        return operator.execute(context)
    token = tracker.set(operator)
    try:
        return operator.execute(context)
    finally:
        tracker.reset(token)


def permanent_failure(exit_code: int | None, cause: BaseException) -> BaseException | None:
    """Airflow's fail-now exception for a container that exited with a permanent failure's code
    (configuration or data: a retry would fail the same way); None for any other exit."""
    if exit_code not in PERMANENT_EXIT_CODES:
        return None
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"{cause}\n(the step exited {exit_code}, a permanent failure: not retried)")


def docker_exit_code(exc: BaseException) -> int | None:
    """The container's exit code in the docker provider's failure ("Docker container failed: {'StatusCode': 2, ...}")."""
    found = re.search(r"'StatusCode': (\d+)", str(exc))
    return int(found.group(1)) if found else None


def pod_exit_code(remote_pod: Any, container: str) -> int | None:
    """The exit code of the pod's `container`, once it has terminated."""
    statuses = (remote_pod.status.container_statuses if remote_pod is not None and remote_pod.status else None) or []
    status = next((x for x in statuses if x.name == container), None)
    terminated = status.state.terminated if status is not None and status.state else None
    return terminated.exit_code if terminated is not None else None


class RecloopContainerOperator(BaseOperator):
    """One pipeline step in a container. Subclasses turn `container_settings` into the real operator."""

    # recloop_candidate is templated so that, inside a mapped task group, the group's mapped argument is
    # resolved to this instance's candidate before the arguments are built from it.
    template_fields = ("recloop_candidate", "arguments", "container_settings")
    template_fields_renderers = {"container_settings": "json"}
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        recloop_step: str,
        recloop_config_path: str,
        recloop_container_config: str,
        container_settings: dict[str, Any],
        recloop_candidate: Any | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.recloop_step = recloop_step
        self.recloop_candidate = recloop_candidate  # a per-candidate step's candidate (resolved when rendered)
        self.recloop_config_path = recloop_config_path  # the config on the worker (fault injection reads it)
        self.recloop_container_config = recloop_container_config  # the same file as the container sees it
        self.container_settings = container_settings
        self.arguments: list[str] = []
        self._inner: BaseOperator | None = None

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        request = RunRequest.from_params(context.get("params") or {})
        self.arguments = step_arguments(
            self.recloop_step, self.recloop_container_config, str(context["run_id"]), request, self.recloop_candidate
        )

    def build_operator(self) -> BaseOperator:
        raise NotImplementedError

    def execute(self, context: Any) -> None:
        from recloop.orchestration.tasks import skip_unselected_candidate

        skip_unselected_candidate(RunRequest.from_params(context.get("params") or {}), self.recloop_candidate)
        self._fault_check(context, "start")
        self._inner = self.build_operator()
        _run_nested(self._inner, context)
        self._fault_check(context, "end")

    def on_kill(self) -> None:
        if self._inner is not None:
            self._inner.on_kill()

    def _fault_check(self, context: Any, at: str) -> None:
        from recloop.orchestration.callbacks import load_run_config
        from recloop.orchestration.tasks import check_fault

        cfg = load_run_config(self.recloop_config_path, context.get("params"))
        check_fault(cfg.execution.fault_injection, self.recloop_step, int(context["ti"].try_number), at)


def _step_resources(cfg: PipelineConfig, step: str) -> ContainerResources:
    override = cfg.execution.steps.get(step)
    return override.resources if override and override.resources else cfg.execution.resources


# ------------------------------------------------------------------------------------------------ kubernetes


def _k8s_quantities(q: Any) -> dict[str, str]:
    out = {}
    if q.cpu:
        out["cpu"] = q.cpu
    if q.memory:
        out["memory"] = q.memory
    if q.gpu:
        out["nvidia.com/gpu"] = str(q.gpu)
    return out


class RecloopPodOperator(RecloopContainerOperator):
    """A step as a Kubernetes pod (the cncf-kubernetes provider's KubernetesPodOperator, built at run time)."""

    def build_operator(self) -> BaseOperator:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from airflow.providers.cncf.kubernetes.secret import Secret
        from airflow.sdk.exceptions import AirflowException
        from kubernetes.client import models as k8s

        s = self.container_settings
        resources = None
        if s["requests"] or s["limits"]:
            resources = k8s.V1ResourceRequirements(requests=s["requests"] or None, limits=s["limits"] or None)
        volumes, mounts = [], []
        if s["config_map"]:
            volumes.append(
                k8s.V1Volume(name="recloop-config", config_map=k8s.V1ConfigMapVolumeSource(name=s["config_map"]))
            )
            mounts.append(k8s.V1VolumeMount(name="recloop-config", mount_path=s["config_dir"], read_only=True))
        secrets = [
            Secret("env", x["env"] or x["key"], x["secret"], x["key"]) if x["key"] else Secret("env", None, x["secret"])
            for x in s["secrets"]
        ]

        class FailFastPodOperator(KubernetesPodOperator):
            def cleanup(self, pod: Any, remote_pod: Any, *args: Any, **kwargs: Any) -> None:
                try:
                    super().cleanup(pod, remote_pod, *args, **kwargs)
                except AirflowException as exc:
                    failure = permanent_failure(pod_exit_code(remote_pod, self.base_container_name), exc)
                    if failure is None:
                        raise
                    raise failure from exc

        return FailFastPodOperator(
            task_id=self.task_id,
            cmds=["recloop"],
            arguments=list(self.arguments),
            name=s["name"],
            image=s["image"],
            image_pull_policy=s["image_pull_policy"],
            image_pull_secrets=[k8s.V1LocalObjectReference(name=n) for n in s["image_pull_secrets"]] or None,
            namespace=s["namespace"],
            kubernetes_conn_id=s["kubernetes_conn_id"],
            in_cluster=s["in_cluster"],
            service_account_name=s["service_account"],
            node_selector=s["node_selector"] or None,
            tolerations=[k8s.V1Toleration(**t) for t in s["tolerations"]] or None,
            container_resources=resources,
            secrets=secrets or None,
            env_vars=s["env"] or None,
            labels=s["labels"],
            annotations=s["annotations"] or None,
            volumes=volumes or None,
            volume_mounts=mounts or None,
            startup_timeout_seconds=s["startup_timeout_seconds"],
            on_finish_action=s["on_finish_action"],
            get_logs=True,
            do_xcom_push=False,
        )


def pod_operator(
    cfg: PipelineConfig, config_path: Path, step: str, task_kwargs: dict[str, Any], candidate: Any | None = None
) -> Any:
    """The pod task of one step, configured from `execution` (+ `execution.steps.<step>`)."""
    ex, kube = cfg.execution, cfg.execution.kubernetes
    override = ex.steps.get(step)
    node_selector = override.node_selector if override and override.node_selector is not None else kube.node_selector
    tolerations = override.tolerations if override and override.tolerations is not None else kube.tolerations
    resources = _step_resources(cfg, step)
    settings = {
        "name": re.sub(r"[^a-z0-9-]", "-", f"recloop-{cfg.name}-{step}")[:50].strip("-"),
        "image": ex.image,
        "image_pull_policy": kube.image_pull_policy,
        "image_pull_secrets": list(kube.image_pull_secrets),
        "namespace": kube.namespace,
        "kubernetes_conn_id": kube.kubernetes_conn_id,
        "in_cluster": kube.in_cluster,
        "service_account": kube.service_account,
        "node_selector": dict(node_selector),
        "tolerations": [
            {
                "key": t.key,
                "operator": t.operator,
                "value": t.value,
                "effect": t.effect,
                "toleration_seconds": t.toleration_seconds,
            }
            for t in tolerations
        ],
        "requests": _k8s_quantities(resources.requests),
        "limits": _k8s_quantities(resources.limits),
        "secrets": [{"secret": x.secret, "key": x.key, "env": x.env} for x in kube.secrets],
        "env": dict(ex.env),
        "labels": {
            "app.kubernetes.io/name": "recloop",
            "app.kubernetes.io/component": "step",
            "recloop.io/pipeline": cfg.name,
            "recloop.io/step": step,
            **kube.labels,
        },
        "annotations": dict(kube.annotations),
        "config_map": kube.config_map,
        "config_dir": kube.config_dir,
        "startup_timeout_seconds": kube.startup_timeout_seconds,
        "on_finish_action": kube.on_finish_action,
    }
    return _instantiate(
        RecloopPodOperator,
        candidate,
        dict(
            recloop_step=step,
            recloop_config_path=str(config_path),
            recloop_container_config=f"{kube.config_dir.rstrip('/')}/{kube.config_file or config_path.name}",
            container_settings=settings,
            **task_kwargs,
        ),
    )


# ------------------------------------------------------------------------------------------------ docker

_DOCKER_UNITS = {"Ki": "k", "Mi": "m", "Gi": "g", "K": "k", "M": "m", "G": "g", "k": "k", "m": "m", "g": "g"}


def docker_memory(quantity: str | None) -> str | None:
    """Kubernetes-style memory ('512Mi', '4Gi') -> Docker's ('512m', '4g')."""
    if not quantity:
        return None
    m = re.fullmatch(r"(\d+)([KMG]i?|[kmg])?", quantity.strip())
    if not m:
        raise ValueError(f"memory {quantity!r} is not like '512Mi' or '4Gi'")
    return m.group(1) + _DOCKER_UNITS.get(m.group(2) or "", "")


def docker_cpus(quantity: str | None) -> float:
    if not quantity:
        return 1.0
    q = quantity.strip()
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def local_mount_paths(cfg: PipelineConfig, config_path: Path) -> list[tuple[str, bool]]:
    """(host path, read_only) for what a container must see at the worker's paths: the config folder and
    local data folders read-only, a file:// store root read-write."""
    paths: list[tuple[str, bool]] = [(str(config_path.parent), True)]
    for source in (cfg.data.interactions, cfg.data.items, cfg.data.users):
        if source is None:
            continue
        tags = getattr(source, "tags", None)
        for p in [source.path] + ([tags.path] if tags is not None else []):
            if "://" not in p:
                literal = re.split(r"[*?\[]", p, maxsplit=1)[0]
                paths.append((str(Path(literal) if literal.endswith("/") else Path(literal).parent), True))
    if cfg.store.root.startswith("file://"):
        # A relative root (the built-in default) is relative to the worker's working directory.
        paths.append((str(Path(cfg.store.root[len("file://") :]).resolve()), False))
    merged: dict[str, bool] = {}
    for path, read_only in paths:
        merged[path] = merged.get(path, True) and read_only
    return sorted(merged.items())


class RecloopDockerOperator(RecloopContainerOperator):
    """A step as a container on the worker's Docker engine (the docker provider's DockerOperator)."""

    def execute(self, context: Any) -> None:
        from airflow.providers.docker.exceptions import DockerContainerFailedException

        try:
            super().execute(context)
        except DockerContainerFailedException as exc:
            failure = permanent_failure(docker_exit_code(exc), exc)
            if failure is None:
                raise
            raise failure from exc

    def build_operator(self) -> BaseOperator:
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import DeviceRequest, Mount

        s = self.container_settings
        # The worker's credentials reach the container here, at the edge, as private (never logged) env.
        private_env = {name: os.environ[name] for name in s["pass_env"] if name in os.environ}
        return DockerOperator(
            task_id=self.task_id,
            image=s["image"],
            entrypoint=["recloop"],
            command=list(self.arguments),
            docker_url=s["docker_url"],
            network_mode=s["network_mode"],
            environment=dict(s["env"]),
            private_environment=private_env,
            mounts=[
                Mount(target=m["target"], source=m["source"], type="bind", read_only=m["read_only"])
                for m in s["mounts"]
            ],
            mount_tmp_dir=False,
            auto_remove=s["auto_remove"],
            user=s["user"],
            cpus=s["cpus"],
            mem_limit=s["mem_limit"],
            device_requests=[DeviceRequest(count=s["gpus"], capabilities=[["gpu"]])] if s["gpus"] else None,
            do_xcom_push=False,
        )


def docker_operator(
    cfg: PipelineConfig, config_path: Path, step: str, task_kwargs: dict[str, Any], candidate: Any | None = None
) -> Any:
    """The container task of one step, configured from `execution` (+ `execution.steps.<step>`)."""
    ex, dock = cfg.execution, cfg.execution.docker
    resources = _step_resources(cfg, step)
    mounts = [{"source": m.source, "target": m.target, "read_only": m.read_only} for m in dock.mounts]
    if dock.mount_local_paths:
        mounts += [{"source": p, "target": p, "read_only": ro} for p, ro in local_mount_paths(cfg, config_path)]
    try:
        mem_limit = docker_memory(resources.limits.memory)
    except ValueError as exc:
        where = f"execution.steps.{step}" if step in ex.steps and ex.steps[step].resources else "execution"
        raise ConfigError(str(config_path), [f"{where}.resources.limits.memory: {exc}"]) from None
    settings = {
        "image": ex.image,
        "docker_url": dock.docker_url,
        "network_mode": dock.network_mode,
        "env": dict(ex.env),
        "pass_env": list(dock.pass_env),
        "mounts": mounts,
        "auto_remove": dock.auto_remove,
        "user": dock.user,
        "cpus": docker_cpus(resources.limits.cpu),
        "mem_limit": mem_limit,
        "gpus": resources.limits.gpu or resources.requests.gpu,
    }
    return _instantiate(
        RecloopDockerOperator,
        candidate,
        dict(
            recloop_step=step,
            recloop_config_path=str(config_path),
            # With mount_local_paths the container sees the config at the worker's path; otherwise mount it
            # yourself (docker.mounts) at /etc/recloop.
            recloop_container_config=str(config_path) if dock.mount_local_paths else f"/etc/recloop/{config_path.name}",
            container_settings=settings,
            **task_kwargs,
        ),
    )


def _instantiate(cls: type[RecloopContainerOperator], candidate: Any | None, kwargs: dict[str, Any]) -> Any:
    """The operator; for a per-candidate step, inside its mapped group, named by its candidate."""
    if candidate is None:
        return cls(**kwargs)
    return cls(map_index_template="{{ task.recloop_candidate }}", recloop_candidate=candidate, **kwargs)
