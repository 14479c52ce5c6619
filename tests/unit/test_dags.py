"""The Airflow DAG factory: DagBag parsing (errors, speed), DAG shape, params, schedules, retries and the
commands the kubernetes / docker step containers get. Nothing here runs a DAG (see test_e2e_airflow.py)."""

from __future__ import annotations

import os
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recloop.errors import ConfigError
from support.paths import REPO

DAGS_DIR = REPO / "dags"
RUN_ID = "manual__2025-03-01T12:00:00+00:00"
PARSE_BUDGET_S = 2.0


@pytest.fixture(scope="module", autouse=True)
def airflow_home(tmp_path_factory: pytest.TempPathFactory):
    """Airflow reads AIRFLOW_HOME when first imported: point it at a scratch folder for this module."""
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        mp.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
        yield home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
    store: {root: "file://store"}
    data:
      interactions: {path: "data/interactions.csv", format: csv}
    models:
      - {type: popularity}
      - {type: ease, lambda: 50}
"""


def config_text(name: str, execution: str = "", extra: str = "") -> str:
    return (
        f"name: {name}\n"
        + textwrap.dedent(BASE)
        + textwrap.dedent(extra)
        + ("execution:\n" + textwrap.indent(textwrap.dedent(execution), "  ") if execution else "")
    )


KUBERNETES = """
    mode: kubernetes
    image: registry.example.com/recloop:1.2.3
    resources: {requests: {cpu: "1", memory: 2Gi}, limits: {cpu: "2", memory: 4Gi}}
    env: {RECLOOP_LOG_LEVEL: info}
    kubernetes:
      namespace: ml
      service_account: recloop-steps
      node_selector: {pool: cpu}
      tolerations: [{key: dedicated, value: ml, effect: NoSchedule}]
      secrets:
        - {secret: s3-credentials, key: access_key_id, env: AWS_ACCESS_KEY_ID}
        - {secret: s3-credentials, key: secret_access_key, env: AWS_SECRET_ACCESS_KEY}
        - {secret: llm-api-keys}
      config_map: recloop-pipelines
      image_pull_secrets: [regcred]
    steps:
      train:
        timeout_minutes: 240
        resources: {requests: {cpu: "4", memory: 16Gi, gpu: 1}, limits: {memory: 16Gi, gpu: 1}}
        node_selector: {pool: gpu}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
"""

DOCKER = """
    mode: docker
    image: recloop:dev
    env: {RECLOOP_LOG_LEVEL: debug}
    resources: {limits: {cpu: 1500m, memory: 3Gi}}
    docker: {network_mode: host, mounts: [{source: /srv/models, target: /models}]}
"""


def dagbag(config_dir: Path | None, monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    if config_dir is None:
        monkeypatch.delenv("RECLOOP_CONFIG_DIR", raising=False)
    else:
        monkeypatch.setenv("RECLOOP_CONFIG_DIR", str(config_dir))
    return DagBag(dag_folder=str(DAGS_DIR))


def parse_seconds(bag) -> float:
    (stat,) = [s for s in bag.dagbag_stats if s.file.endswith("recloop_pipelines.py")]
    return stat.duration.total_seconds()


@pytest.fixture
def mode_configs(tmp_path: Path) -> Path:
    """A config folder with one pipeline per execution mode plus an `extends` partial."""
    folder = tmp_path / "configs"
    write(folder / "_common.yaml", "validation: {on_failure: quarantine}\n")
    write(folder / "local.yaml", "extends: _common.yaml\n" + config_text("local", "retries: 1\n"))
    write(folder / "cluster.yaml", config_text("cluster", KUBERNETES))
    write(folder / "boxed.yaml", config_text("boxed", DOCKER))
    return folder


def build(folder: Path) -> dict:
    from recloop.orchestration.factory import build_dags

    return build_dags(folder)


# ------------------------------------------------------------------------------------------------ DagBag


def test_dagbag_parses_the_shipped_configs_without_errors_in_under_2s(monkeypatch):
    from recloop.config import load

    bag = dagbag(None, monkeypatch)
    assert bag.import_errors == {}
    names = [load(p).name for p in sorted((REPO / "configs").glob("*.yaml")) if not p.name.startswith("_")]
    assert names, "configs/ ships no pipeline config"
    assert sorted(bag.dag_ids) == sorted(f"{n}_{kind}" for n in names for kind in ("train", "feedback"))
    assert parse_seconds(bag) < PARSE_BUDGET_S


def test_dagbag_parses_every_execution_mode_in_under_2s(mode_configs, monkeypatch):
    kubernetes_provider = "airflow.providers.cncf.kubernetes.operators.pod"
    provider_loaded_before = kubernetes_provider in sys.modules
    bag = dagbag(mode_configs, monkeypatch)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == [
        "boxed_feedback",
        "boxed_train",
        "cluster_feedback",
        "cluster_train",
        "local_feedback",
        "local_train",
    ]
    assert parse_seconds(bag) < PARSE_BUDGET_S
    assert type(bag.dags["cluster_train"].get_task("data.ingest")).__name__ == "RecloopPodOperator"
    assert type(bag.dags["boxed_train"].get_task("data.ingest")).__name__ == "RecloopDockerOperator"
    # The providers load when a container task runs, not at parse time.
    assert provider_loaded_before or kubernetes_provider not in sys.modules


def test_parsing_needs_no_secrets_and_touches_no_store(tmp_path, monkeypatch):
    monkeypatch.delenv("RECLOOP_TEST_UNSET_KEY", raising=False)
    folder = tmp_path / "configs"
    write(
        folder / "s3.yaml",
        config_text(
            "s3pipe",
            extra="""
        store:
          root: s3://no-such-bucket/prefix
          endpoint_url: http://127.0.0.1:9
          access_key_id: ${RECLOOP_TEST_UNSET_KEY}
          secret_access_key: ${RECLOOP_TEST_UNSET_KEY}
    """,
        ),
    )
    bag = dagbag(folder, monkeypatch)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["s3pipe_feedback", "s3pipe_train"]


def test_a_broken_config_is_an_import_error_naming_the_file_and_key(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    write(folder / "bad.yaml", config_text("bad", extra="validation: {max_dupe_rate: 0.1}\n"))
    bag = dagbag(folder, monkeypatch)
    (message,) = bag.import_errors.values()
    assert f"invalid configuration in {folder / 'bad.yaml'}" in message
    assert "validation.max_dupe_rate: unknown key; remove it or check its spelling" in message


def test_config_folder_errors_say_what_to_fix(tmp_path):
    from recloop.orchestration.factory import build_dags

    with pytest.raises(ConfigError) as missing:
        build_dags(tmp_path / "nowhere")
    assert missing.value.errors == [
        "RECLOOP_CONFIG_DIR: this folder does not exist; point it at the folder holding the pipeline configs"
    ]

    write(tmp_path / "a.yaml", config_text("same"))
    write(tmp_path / "b.yaml", config_text("same"))
    with pytest.raises(ConfigError) as duplicate:
        build_dags(tmp_path)
    assert duplicate.value.source == str(tmp_path / "b.yaml")
    assert duplicate.value.errors == [
        f"name: 'same' is also the name of {tmp_path / 'a.yaml'}; each pipeline needs its own name "
        "(it names the DAGs, the store paths and the model)"
    ]


def test_unknown_steps_in_execution_settings_are_config_errors(tmp_path):
    from recloop.orchestration.factory import build_dags

    write(
        tmp_path / "p.yaml",
        config_text(
            "p",
            """
        steps: {trian: {retries: 1}}
        fault_injection: {step: publsh}
    """,
        ),
    )
    with pytest.raises(ConfigError) as err:
        build_dags(tmp_path)
    steps = "evaluate, feedback, gate, ingest, preprocess, publish, train, tune, validate"
    assert err.value.errors == [
        f"execution.steps.trian: unknown step; steps are {steps}",
        f"execution.fault_injection.step: unknown step 'publsh'; steps are {steps}",
    ]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (
            "daily",
            "execution.schedule: 'daily' is not a schedule: use a 5-field cron expression ('0 3 * * *'), "
            "a preset (@hourly, @daily, @weekly, @monthly, @quarterly, @yearly), 'feedback', or an Asset "
            "URI like 'recloop://name/feedback' (got 'daily')",
        ),
        (
            ["@daily", "0 3 * * *"],
            "execution.schedule: at most one cron expression or preset per schedule "
            "(assets may be added to it) (got ['@daily', '0 3 * * *'])",
        ),
        ([], "execution.schedule: an empty list never triggers; use null for manual runs only (got [])"),
    ],
)
def test_bad_schedules_are_rejected_at_load(tmp_path, schedule, message):
    from recloop.config import load

    path = write(tmp_path / "p.yaml", config_text("p"))
    with pytest.raises(ConfigError) as err:
        load(path, {"execution.schedule": schedule})
    assert err.value.errors == [message]


# ------------------------------------------------------------------------------------------------ shape


def test_training_dag_tasks_groups_and_dependencies(mode_configs):
    from recloop.orchestration import tasks

    dag = build(mode_configs)["local_train"]
    assert [t.task_id for t in dag.tasks] == [
        "prepare",
        "data.ingest",
        "data.validate",
        "data.preprocess",
        "model.tune",
        "model.train",
        "release.evaluate",
        "release.gate",
        "release.decide",
        "release.publish",
    ]
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    # The graph draws the loop itself: one edge per link of the chain (9 for 10 tasks); inputs that skip a
    # link (publish reads train, preprocess and evaluate) and prepare's run-wide values travel otherwise.
    assert upstream == {
        "prepare": [],
        "data.ingest": ["prepare"],
        "data.validate": ["data.ingest"],
        "data.preprocess": ["data.validate"],
        "model.tune": ["data.preprocess"],
        "model.train": ["model.tune"],
        "release.evaluate": ["model.train"],
        "release.gate": ["release.evaluate"],
        "release.decide": ["release.gate"],
        "release.publish": ["release.decide"],
    }
    assert sum(len(t.upstream_task_ids) for t in dag.tasks) == 9
    # The model group is mapped as a whole: one instance per configured candidate, in which train follows
    # that candidate's own tune (not every candidate's); each task instance is named by its candidate.
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    from recloop.config import load

    group = dag.task_group.children["model"]
    assert isinstance(group, MappedTaskGroup)
    candidates = [m.candidate_name for m in load(mode_configs / "local.yaml").models]
    assert group._expand_input.value == {"candidate": candidates}
    assert sorted(group.children) == ["model.train", "model.tune"]
    for task_id in ("model.tune", "model.train"):
        task = dag.get_task(task_id)
        assert task.task_group is group and task.map_index_template == "{{ recloop_candidate }}"
    assert dag.get_task("release.evaluate").trigger_rule == "none_failed_min_one_success"
    assert sorted(dag.task_group.children) == ["data", "model", "prepare", "release"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.tags == {"mode:inprocess", "pipeline:local", "recloop", "training"}
    assert dag.get_task("release.decide").task_type == "_ShortCircuitDecoratedOperator"
    # Each step is a @task calling run_step through tasks.run_pipeline_step, which resolves its inputs itself.
    for task in dag.tasks:
        assert task.doc_md and len(task.doc_md) > 80, task.task_id
        assert task.owner == "recloop"
        assert task.on_failure_callback and task.on_retry_callback
    for step in STEPS:
        task = next(t for t in dag.tasks if t.task_id.endswith("." + step))
        assert task.python_callable is tasks.run_pipeline_step
        expected = {"step": step, "config_path": str(mode_configs / "local.yaml")}
        if step in ("tune", "train"):
            candidate = task.op_kwargs.pop("candidate")
            assert candidate.__class__.__name__ == "MappedArgument"
        assert task.op_kwargs == expected
    assert "recloop pipeline `local`" in dag.doc_md and "airflow dags trigger local_train" in dag.doc_md


def test_retries_back_off_and_timeouts_come_from_config(tmp_path):
    write(
        tmp_path / "p.yaml",
        config_text(
            "p",
            """
        retries: 3
        retry_delay: 10s
        retry_backoff: 3
        max_retry_delay: 5m
        timeout_minutes: 30
        owner: ml-platform
        tags: [team-recs]
        steps: {train: {retries: 1, retry_delay: 2m, timeout_minutes: 240}}
    """,
        ),
    )
    dag = build(tmp_path)["p_train"]
    ingest, train = dag.get_task("data.ingest"), dag.get_task("model.train")
    assert (ingest.retries, ingest.retry_delay, ingest.execution_timeout) == (
        3,
        timedelta(seconds=10),
        timedelta(minutes=30),
    )
    assert (train.retries, train.retry_delay, train.execution_timeout) == (
        1,
        timedelta(minutes=2),
        timedelta(minutes=240),
    )
    for task in (ingest, train):
        assert task.retry_exponential_backoff == 3.0
        assert task.max_retry_delay == timedelta(minutes=5)
        assert task.owner == "ml-platform"
    assert "team-recs" in dag.tags


def test_params_have_json_schema_for_the_trigger_form(mode_configs):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    dag = build(mode_configs)["local_train"]
    schemas = {name: dag.params.get_param(name).schema for name in dag.params}
    assert list(schemas) == ["models", "since", "dry_run", "overrides", "force"]
    # Every param is optional: a type without null shows as required ("*") in the trigger form.
    assert all("null" in schema["type"] for schema in schemas.values())
    assert schemas["models"]["type"] == ["array", "null"]
    assert schemas["models"]["items"] == {"type": "string", "enum": ["popularity", "ease"]}
    assert schemas["models"]["examples"] == ["popularity", "ease"]
    assert schemas["since"]["type"] == ["null", "string"] and schemas["since"]["format"] == "date-time"
    assert schemas["dry_run"]["type"] == schemas["force"]["type"] == ["boolean", "null"]
    assert schemas["overrides"]["items"]["type"] == "string"
    for name, schema in schemas.items():
        # Markdown (description_md) so `code` renders; a plain description would show the backticks.
        assert schema["title"] and schema["description_md"] and dag.params.get_param(name).description is None
    assert dag.params.dump() == {"models": [], "since": None, "dry_run": False, "overrides": [], "force": False}

    def validated(**values):
        params = ParamsDict({name: dag.params.get_param(name) for name in dag.params})
        for name, value in values.items():
            params[name] = value
        return params.validate()

    assert validated(models=["ease"], dry_run=True)["models"] == ["ease"]
    with pytest.raises(ParamValidationError):
        validated(models=["sasrec"])  # not a candidate of this config
    with pytest.raises(ParamValidationError):
        validated(overrides=["no equals sign"])
    with pytest.raises(ParamValidationError):
        validated(dry_run="yes")


def test_run_request_turns_params_into_typed_values_and_cli_flags():
    from recloop.orchestration.params import RunRequest

    request = RunRequest.from_params(
        {
            "models": ["ease"],
            "since": "2024-05-01T00:00:00Z",
            "dry_run": True,
            "force": True,
            "overrides": ["evaluation.k=[5,10]", "gate.absolute={ndcg@10: 0.5}"],
        },
        candidates=["popularity", "ease"],
    )
    assert request.since == datetime(2024, 5, 1, tzinfo=UTC)
    assert request.run_params().models == ("ease",) and request.run_params().dry_run is True
    assert request.cli_flags("train") == [
        "--since",
        "2024-05-01T00:00:00+00:00",
        "--models",
        "ease",
        "--force",
        "--set",
        "evaluation.k=[5,10]",
        "--set",
        "gate.absolute={ndcg@10: 0.5}",
    ]
    # Only `recloop step train` takes --models.
    assert request.cli_flags("ingest") == [
        "--since",
        "2024-05-01T00:00:00+00:00",
        "--force",
        "--set",
        "evaluation.k=[5,10]",
        "--set",
        "gate.absolute={ndcg@10: 0.5}",
    ]
    assert RunRequest.from_xcom(request.to_xcom()) == request
    # Conf from the CLI or an Asset-triggered run may hold a plain string; a naive time means UTC.
    loose = RunRequest.from_params({"models": "popularity, ease", "since": "2024-05-01 06:00"})
    assert loose.models == ("popularity", "ease") and loose.since == datetime(2024, 5, 1, 6, tzinfo=UTC)
    assert RunRequest.from_params({}) == RunRequest()

    with pytest.raises(ConfigError) as err:
        RunRequest.from_params(
            {"models": ["bpr"], "since": "last tuesday", "dry_run": "yes", "overrides": ["evaluation.k"]},
            candidates=["popularity", "ease"],
        )
    assert err.value.errors == [
        "overrides: 'evaluation.k' is not KEY.PATH=VALUE (e.g. evaluation.k=[5,10])",
        "models: unknown candidate(s) bpr; this config has popularity, ease",
        "dry_run: expected true or false (got 'yes')",
        "since: not an ISO-8601 time like 2024-01-31T00:00:00Z (got 'last tuesday')",
    ]


# ------------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (None, "none"),
        ("@daily", "cron:0 0 * * *"),
        ("30 2 * * 1", "cron:30 2 * * 1"),
        ("feedback", "asset:recloop://sched/feedback"),
        (["feedback", "s3://landing/events"], "any:recloop://sched/feedback,s3://landing/events"),
        (["@weekly", "feedback"], "cron-or:0 0 * * 0|recloop://sched/feedback"),
    ],
)
def test_training_schedule_is_cron_asset_or_both(tmp_path, schedule, expected):
    from airflow.sdk import Asset, AssetAny
    from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule

    from recloop.orchestration.timetable import NoMissedRunsCronTimetable

    write(tmp_path / "p.yaml", config_text("sched"))
    from recloop.config import load
    from recloop.orchestration.factory import build_training_dag

    path = tmp_path / "p.yaml"
    dag = build_training_dag(load(path, {"execution.schedule": schedule}), path)
    schedule_obj = dag.schedule
    if expected == "none":
        assert schedule_obj is None
    elif expected.startswith("cron:"):
        assert isinstance(schedule_obj, NoMissedRunsCronTimetable)
        assert schedule_obj._expression == expected[5:]
    elif expected.startswith("asset:"):
        assert schedule_obj == Asset(expected[6:])
    elif expected.startswith("any:"):
        assert isinstance(schedule_obj, AssetAny)
        assert [a.uri for a in schedule_obj.objects] == expected[4:].split(",")
    else:
        cron, uri = expected[8:].split("|")
        assert isinstance(schedule_obj, AssetOrTimeSchedule)
        assert schedule_obj.timetable._expression == cron
        assert schedule_obj.asset_condition == Asset(uri)


def test_unpausing_a_cron_dag_does_not_start_a_run_for_a_time_already_past(monkeypatch):
    """Missed trigger times are not made up: Airflow's own cron timetable, with catchup off, would run
    the latest one at once (here 00:00, on unpausing at 10:00); recloop's waits for the next one."""
    from datetime import timedelta

    import airflow.timetables.trigger as core_trigger
    from airflow._shared.timezones.timezone import datetime as tz_datetime
    from airflow.timetables.base import DataInterval, TimeRestriction

    from recloop.orchestration import timetable

    now = tz_datetime(2026, 12, 8, 10, 0)
    monkeypatch.setattr(core_trigger, "utcnow", lambda: now)
    monkeypatch.setattr(timetable, "_now", lambda: now)
    daily = timetable.NoMissedRunsCronTimetable("0 0 * * *", timezone="UTC")
    no_catchup = TimeRestriction(earliest=tz_datetime(2024, 1, 1), latest=None, catchup=False)
    last_run_a_week_ago = DataInterval(now - timedelta(days=7, hours=10), now - timedelta(days=7, hours=10))
    for last in (None, last_run_a_week_ago):
        airflows = core_trigger.CronTriggerTimetable("0 0 * * *", timezone="UTC")
        past = airflows.next_dagrun_info(last_automated_data_interval=last, restriction=no_catchup)
        assert past is not None and past.run_after == tz_datetime(2026, 12, 8, 0, 0)  # Airflow's: runs at once
        info = daily.next_dagrun_info(last_automated_data_interval=last, restriction=no_catchup)
        assert info is not None and info.run_after == tz_datetime(2026, 12, 9, 0, 0)
    # With catchup on, nothing changes.
    catchup = TimeRestriction(earliest=tz_datetime(2026, 12, 1), latest=None, catchup=True)
    info = daily.next_dagrun_info(last_automated_data_interval=None, restriction=catchup)
    assert info is not None and info.run_after == tz_datetime(2026, 12, 1, 0, 0)


def test_the_cron_timetable_is_registered_so_airflow_serializes_the_dag(mode_configs, tmp_path):
    from airflow.serialization.serialized_objects import DagSerialization

    from recloop.config import load
    from recloop.orchestration.factory import build_feedback_dag
    from recloop.orchestration.timetable import NoMissedRunsCronTimetable

    path = mode_configs / "local.yaml"
    dag = build_feedback_dag(load(path), path)
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert type(restored.timetable) is NoMissedRunsCronTimetable
    assert restored.timetable._expression == "0 0 * * *"


def test_feedback_dag_emits_the_asset_the_training_dag_waits_for(mode_configs):
    from airflow.sdk import Asset

    from recloop.orchestration.timetable import NoMissedRunsCronTimetable

    dags = build(mode_configs)
    feedback, training = dags["local_feedback"], dags["local_train"]
    assert [t.task_id for t in feedback.tasks] == ["feedback", "check", "emit"]
    assert sorted(feedback.get_task("emit").upstream_task_ids) == ["check", "feedback"]
    assert feedback.get_task("emit").outlets == [Asset("recloop://local/feedback")]
    assert training.schedule == Asset("recloop://local/feedback")
    assert isinstance(feedback.schedule, NoMissedRunsCronTimetable) and feedback.schedule._expression == "0 0 * * *"
    assert feedback.max_active_runs == 1 and feedback.doc_md
    assert all(t.doc_md for t in feedback.tasks)


# ------------------------------------------------------------------------------------------------ containers

STEPS = ("ingest", "validate", "preprocess", "tune", "train", "evaluate", "gate", "publish")


def render(dag, task_id: str, candidate: str | None = None, **params):
    """A container task rendered for one run; a per-candidate task as its mapped group's instance for
    `candidate` (default: the first configured one)."""
    import copy
    from types import SimpleNamespace

    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    task = copy.deepcopy(dag.get_task(task_id))
    context = {"params": {**dag.params.dump(), **params}, "run_id": RUN_ID, "dag": dag}
    if isinstance(task.task_group, MappedTaskGroup):
        candidates = task.task_group._expand_input.value["candidate"]
        assert task.map_index_template == "{{ task.recloop_candidate }}"
        context["ti"] = SimpleNamespace(map_index=candidates.index(candidate or candidates[0]))
    task.render_template_fields(context)
    return task


def test_kubernetes_mode_pods_run_recloop_step_with_config_run_id_and_params(mode_configs):
    dag = build(mode_configs)["cluster_train"]
    for step in STEPS:
        task_id = next(t.task_id for t in dag.tasks if t.task_id.endswith("." + step))
        task = render(dag, task_id, since="2024-06-01T00:00:00Z", overrides=["evaluation.k=[5]"])
        pod = task.build_operator().build_pod_request_obj(dry_run=True)
        (container,) = pod.spec.containers
        assert container.command == ["recloop"]
        assert container.args == [
            "step",
            step,
            "--config",
            "/etc/recloop/cluster.yaml",
            "--run-id",
            RUN_ID,
            "--since",
            "2024-06-01T00:00:00+00:00",
            *(["--model", "popularity"] if step in ("tune", "train") else []),
            "--set",
            "evaluation.k=[5]",
        ]
        assert container.image == "registry.example.com/recloop:1.2.3"
        assert pod.metadata.namespace == "ml"
        assert pod.metadata.labels["recloop.io/step"] == step
        assert pod.spec.service_account_name == "recloop-steps"
        assert [s.name for s in pod.spec.image_pull_secrets] == ["regcred"]
        env = {e.name: e for e in container.env}
        assert env["RECLOOP_LOG_LEVEL"].value == "info"
        assert (
            env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name,
            env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.key,
        ) == ("s3-credentials", "access_key_id")
        assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.key == "secret_access_key"
        assert container.env_from[0].secret_ref.name == "llm-api-keys"
        (mount,) = container.volume_mounts
        assert (mount.mount_path, mount.read_only) == ("/etc/recloop", True)
        (volume,) = pod.spec.volumes
        assert volume.config_map.name == "recloop-pipelines" and volume.name == mount.name
        if step == "train":
            assert container.resources.requests == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
            assert container.resources.limits == {"memory": "16Gi", "nvidia.com/gpu": "1"}
            assert pod.spec.node_selector == {"pool": "gpu"}
            assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [
                ("nvidia.com/gpu", "Exists", "NoSchedule")
            ]
            assert task.execution_timeout == timedelta(minutes=240)
        else:
            assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
            assert container.resources.limits == {"cpu": "2", "memory": "4Gi"}
            assert pod.spec.node_selector == {"pool": "cpu"}
            assert [(t.key, t.value, t.effect) for t in pod.spec.tolerations] == [("dedicated", "ml", "NoSchedule")]
    # One pod per candidate; models chosen at trigger time reach the steps that read every candidate, and
    # `force` every pod; dry_run is the DAG's (publish skipped).
    assert dag.task_group.children["model"]._expand_input.value == {"candidate": ["popularity", "ease"]}
    train = render(dag, "model.train", candidate="ease", models=["popularity", "ease"], force=True, dry_run=True)
    assert train.build_operator().arguments == train.arguments
    assert train.arguments == [
        "step",
        "train",
        "--config",
        "/etc/recloop/cluster.yaml",
        "--run-id",
        RUN_ID,
        "--model",
        "ease",
        "--force",
    ]
    assert render(dag, "release.evaluate", models=["ease"]).arguments == [
        "step",
        "evaluate",
        "--config",
        "/etc/recloop/cluster.yaml",
        "--run-id",
        RUN_ID,
        "--models",
        "ease",
    ]
    # The serving chart's ConfigMap holds the config under its own key (`config.yaml`).
    from recloop.config import load
    from recloop.orchestration.factory import build_training_dag

    path = mode_configs / "cluster.yaml"
    chart_dag = build_training_dag(load(path, {"execution.kubernetes.config_file": "config.yaml"}), path)
    assert render(chart_dag, "data.ingest").arguments[2:4] == ["--config", "/etc/recloop/config.yaml"]
    # The in-process tasks (prepare, decide) stay plain Python tasks in every mode.
    assert dag.get_task("release.decide").task_type == "_ShortCircuitDecoratedOperator"
    assert sorted(dag.get_task("release.decide").upstream_task_ids) == ["release.gate"]


def test_docker_mode_containers_run_recloop_step_with_local_paths_mounted(mode_configs):
    from recloop.config import load

    dag = build(mode_configs)["boxed_train"]
    cfg = load(mode_configs / "boxed.yaml")
    for step in STEPS:
        task_id = next(t.task_id for t in dag.tasks if t.task_id.endswith("." + step))
        task = render(dag, task_id)
        container = task.build_operator()
        assert container.entrypoint == ["recloop"]
        assert container.command == [
            "step",
            step,
            "--config",
            str(mode_configs / "boxed.yaml"),
            "--run-id",
            RUN_ID,
            *(["--model", "popularity"] if step in ("tune", "train") else []),
        ]
        assert container.image == "recloop:dev"
        assert container.environment == {"RECLOOP_LOG_LEVEL": "debug"}
        assert container.network_mode == "host"
        assert (container.cpus, container.mem_limit) == (1.5, "3g")
        mounts = {(m["Source"], m["Target"], m["ReadOnly"]) for m in container.mounts}
        store_dir = cfg.store.root[len("file://") :]
        assert mounts == {
            ("/srv/models", "/models", True),
            (str(mode_configs), str(mode_configs), True),  # the config, at the worker's path
            (str(mode_configs / "data"), str(mode_configs / "data"), True),  # its local data
            (store_dir, store_dir, False),  # a file:// store, writable
        }
        assert task.container_settings["pass_env"] == [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ]


def test_docker_quantities_translate_from_kubernetes_style():
    from recloop.orchestration.containers import docker_cpus, docker_memory

    assert [docker_memory(q) for q in ("512Mi", "4Gi", "2G", "1024", None)] == ["512m", "4g", "2g", "1024", None]
    assert [docker_cpus(q) for q in ("500m", "2", "1.5", None)] == [0.5, 2.0, 1.5, 1.0]
    with pytest.raises(ValueError, match="memory '4GB' is not like '512Mi' or '4Gi'"):
        docker_memory("4GB")


# ------------------------------------------------------------------------------------------------ faults


def test_fault_injection_fails_only_the_planned_attempts():
    from recloop.config import FaultInjectionConfig
    from recloop.orchestration.tasks import InjectedFault, check_fault

    fault = FaultInjectionConfig(step="train", fail_attempts=2)
    for attempt in (1, 2):
        with pytest.raises(InjectedFault) as err:
            check_fault(fault, "train", attempt, "start")
        assert str(err.value) == (
            f"train: injected failure before running, attempt {attempt} of 2 planned failure(s) "
            "(execution.fault_injection); Airflow retries the task. Remove execution.fault_injection from "
            "the config (or from the run's `overrides` param, where it was set there) to stop these failures."
        )
    check_fault(fault, "train", 3, "start")  # the third attempt runs
    check_fault(fault, "ingest", 1, "start")  # other steps are untouched
    check_fault(fault, "train", 1, "end")  # and so is the other injection point
    check_fault(None, "train", 1, "start")
    with pytest.raises(InjectedFault, match="after committing its artifact"):
        check_fault(FaultInjectionConfig(step="gate", at="end"), "gate", 1, "end")


def test_permanent_errors_fail_the_task_now_and_transient_ones_keep_their_retries():
    from airflow.sdk.exceptions import AirflowFailException

    from recloop.errors import ConfigError, DataError, StoreError, ValidationFailed
    from recloop.orchestration.tasks import InjectedFault, fail_permanent_errors_now

    def failing(error: Exception):
        def task_callable(config_path: str) -> None:
            raise error

        return fail_permanent_errors_now(task_callable)

    for permanent in (ConfigError("c.yaml", ["models: empty"]), DataError("bad rows"), ValidationFailed("3 checks")):
        with pytest.raises(AirflowFailException) as failed:
            failing(permanent)("c.yaml")
        assert str(failed.value).startswith(str(permanent))
        assert f"(a permanent failure, exit code {permanent.exit_code}: not retried)" in str(failed.value)
        # The task log shows the message, not the chained recloop traceback; the record still names the error.
        assert failed.value.__cause__ is None and failed.value.__suppress_context__
        assert failed.value.recloop_error is permanent
    for transient in (StoreError("put s3://b/k failed after 5 attempt(s)"), InjectedFault("drill")):
        with pytest.raises(type(transient)):
            failing(transient)("c.yaml")


def test_container_exit_codes_2_and_3_fail_the_task_now():
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.sdk.exceptions import AirflowFailException
    from kubernetes.client import models as k8s

    from recloop.orchestration.containers import docker_exit_code, permanent_failure, pod_exit_code

    failed = DockerContainerFailedException("Docker container failed: {'StatusCode': 3, 'Error': None}")
    assert docker_exit_code(failed) == 3
    assert isinstance(permanent_failure(docker_exit_code(failed), failed), AirflowFailException)
    assert permanent_failure(1, failed) is None and permanent_failure(None, failed) is None

    def pod(exit_code: int) -> k8s.V1Pod:
        terminated = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code))
        statuses = [
            k8s.V1ContainerStatus(name="istio-proxy", image="i", image_id="", ready=False, restart_count=0),
            k8s.V1ContainerStatus(name="base", image="i", image_id="", ready=False, restart_count=0, state=terminated),
        ]
        return k8s.V1Pod(status=k8s.V1PodStatus(container_statuses=statuses))

    assert [pod_exit_code(pod(code), "base") for code in (2, 1)] == [2, 1]
    assert pod_exit_code(k8s.V1Pod(status=None), "base") is None


def test_log_progress_counts_carry_their_unit():
    from recloop.orchestration.tasks import LogProgress

    lines: list[str] = []
    advance = LogProgress(lines.append, min_interval_s=3600)("ingest interactions", total=1_409_140, unit="bytes")
    advance(1_409_140)
    assert lines == [
        "ingest interactions: started (1.3 MiB to do)",
        "ingest interactions: 1.3 MiB of 1.3 MiB done (100%)",
    ]
    lines.clear()
    advance = LogProgress(lines.append, min_interval_s=3600)("scoring", total=2_500_000.0, unit="users")
    advance(2_500_000.0)
    assert lines[-1] == "scoring: 2,500,000 users of 2,500,000 users done (100%)"


def test_log_progress_reports_quarters_not_every_step():
    from recloop.orchestration.tasks import LogProgress

    lines: list[str] = []
    advance = LogProgress(lines.append, min_interval_s=3600)("training ease", total=100)
    for _ in range(100):
        advance(1)
    assert lines == [
        "training ease: started (100 to do)",
        "training ease: 25 of 100 done (25%)",
        "training ease: 50 of 100 done (50%)",
        "training ease: 75 of 100 done (75%)",
        "training ease: 100 of 100 done (100%)",
    ]


def test_module_import_is_cheap():
    """`dags/` imports the factory at parse time: it must not pull heavy libraries in by itself."""
    import subprocess
    import sys

    code = (
        "import sys, recloop.orchestration.factory, recloop.orchestration.tasks, "
        "recloop.orchestration.params, recloop.orchestration.callbacks; "
        "print(sorted(m for m in ('torch', 'pandas', 'great_expectations', 'transformers', 'boto3', "
        "'airflow', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "AIRFLOW_HOME": os.environ["AIRFLOW_HOME"]},
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ make up


def test_make_up_configs_extend_each_pipeline_with_the_local_s3_store(mode_configs, tmp_path):
    """`make up` serves every config unchanged but for the store (local SeaweedFS) and run notes; the
    credentials stay `${VAR}` references resolved from Airflow's environment."""
    from recloop.config import load
    from recloop_dev.local_stack import Layout, write_configs

    layout = Layout(tmp_path / "state")
    names = write_configs(layout, mode_configs, "http://127.0.0.1:8333", "http://127.0.0.1:8080")
    assert sorted(names) == ["boxed", "cluster", "local"]
    assert sorted(p.name for p in layout.configs.iterdir()) == ["boxed.yaml", "cluster.yaml", "local.yaml"]
    generated = (layout.configs / "local.yaml").read_text()
    assert "${AWS_SECRET_ACCESS_KEY}" in generated and "${RECLOOP_AIRFLOW_PASSWORD}" in generated
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "RECLOOP_AIRFLOW_PASSWORD": "p"}
    served, original = load(layout.configs / "local.yaml", env=env), load(mode_configs / "local.yaml")
    assert served.store.root == "s3://recloop/local" and served.store.endpoint_url == "http://127.0.0.1:8333"
    assert served.store.secret_access_key.get_secret_value() == "s"
    assert served.execution.airflow_api.password.get_secret_value() == "p"
    assert served.validation.on_failure == "quarantine"  # from the original's own `extends:`
    assert served.data == original.data and served.models == original.models
    assert served.execution.mode == original.execution.mode == "inprocess"


def test_container_commands_are_accepted_by_the_real_recloop_cli(mode_configs, capsys):
    """Every step's container command parses with `recloop step` (flags exist for that step), and the
    ingest command, run here as the container would run it, commits the step's artifact."""
    from recloop.artifacts import Artifact, run_prefix
    from recloop.cli import main
    from recloop.config import load
    from recloop.store import open_store

    dag = build(mode_configs)["boxed_train"]
    params = {"since": "2024-01-01T00:00:00Z", "models": ["ease"], "force": True, "overrides": ["evaluation.k=[5,10]"]}
    for step in STEPS:
        task_id = next(t.task_id for t in dag.tasks if t.task_id.endswith("." + step))
        arguments = render(dag, task_id, **params).arguments
        assert main([*arguments, "--help"]) == 0, (step, capsys.readouterr().err)

    write(
        mode_configs / "data" / "interactions.csv",
        "user_id,item_id,timestamp\nu1,i1,1717200000\nu1,i2,1717200060\nu2,i1,1717200120\n",
    )
    arguments = render(dag, "data.ingest", since="2024-06-01T00:00:00Z").arguments
    assert main(arguments) == 0, capsys.readouterr().err
    store = open_store(load(mode_configs / "boxed.yaml").store)
    manifest = Artifact.open(store, run_prefix(RUN_ID, "ingest")).manifest
    assert manifest.uri == f"file://{mode_configs / 'store'}/{run_prefix(RUN_ID, 'ingest')}"
    assert manifest.run_id == RUN_ID and manifest.summary["rows"]["interactions"] == 2  # one is not after --since


def test_architecture_diagram_draws_both_dags_edge_for_edge(mode_configs):
    """docs/architecture.md's Mermaid diagram names each task by its id (group prefix dropped); between
    the tasks of one DAG it draws exactly that DAG's edges."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    (diagram,) = re.findall(r"```mermaid\n(.*?)```", text, re.DOTALL)
    drawn = set(re.findall(r"^\s*(\w+) -[-.]+>(?:\|[^|]*\|)? (\w+)\s*$", diagram, re.MULTILINE))
    dags = build(mode_configs)
    for dag in (dags["local_train"], dags["local_feedback"]):
        tasks = {t.task_id.rsplit(".", 1)[-1] for t in dag.tasks}
        edges = {(u.rsplit(".", 1)[-1], t.task_id.rsplit(".", 1)[-1]) for t in dag.tasks for u in t.upstream_task_ids}
        assert {(a, b) for a, b in drawn if a in tasks and b in tasks} == edges, dag.dag_id


def test_browser_links_name_the_report_and_each_data_docs_page_a_person_opens():
    from recloop.orchestration.tasks import browser_files

    names = [
        "result.json",
        "data_docs/index.html",
        "data_docs/expectations/interactions.html",
        "data_docs/static/styles/data_docs_default_styles.css",
        "data_docs/validations/interactions/r/20261205T184505Z/recloop-interactions.html",
        "data_docs/validations/items/r/20261205T184505Z/recloop-items.html",
    ]
    assert browser_files(names) == [
        "data_docs/index.html",
        "data_docs/validations/interactions/r/20261205T184505Z/recloop-interactions.html",
        "data_docs/validations/items/r/20261205T184505Z/recloop-items.html",
    ]
    assert browser_files(["metrics.json", "report.html", "per_user.parquet"]) == ["report.html"]
    assert browser_files(["train.parquet"]) == []
