"""End to end on real Airflow 3 (`airflow dags test`, SQLite metadata DB) and real S3 (SeaweedFS).

One scenario, three DAG runs of the training DAG built from a config whose store is the S3 server:
1. a normal run: every task succeeds, each step commits a valid manifest to S3, a production model exists;
2. a run whose gate cannot pass: publish is skipped, the run is green, the production alias is untouched;
3. a run whose `train` task is made to fail once: Airflow retries it, the run succeeds, the failed attempt
   is recorded in S3, and the data and model files are byte-identical to run 1's;
4. a run with a bad config override: `prepare` fails it before any step, naming the override;
5. a run whose data fail validation: the permanent failure fails `validate` on its first try, no retries.
Small synthetic data and fast models (popularity + EASE) keep it around three minutes on two cores.

A second mode (`slow` too) runs the same DAG under a real scheduler and LocalExecutor on PostgreSQL
(`airflow standalone`, as `make up` starts it), triggered and inspected through the REST API.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from support.net import free_port
from support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.s3, pytest.mark.timeout(900)]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
PIPELINE = "e2e"
DAG_ID = f"{PIPELINE}_train"
STEPS = ("ingest", "validate", "preprocess", "tune", "train", "evaluate", "gate", "publish")
# The committed artifacts of a run: one per step, and one per candidate for tune and train.
ARTIFACTS = (
    "ingest",
    "validate",
    "preprocess",
    "tune/popularity",
    "tune/ease",
    "train/popularity",
    "train/ease",
    "evaluate",
    "gate",
    "publish",
)
TASKS = (
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
)


def write_config(folder: Path, data_dir: Path, store_root: str, endpoint: str, execution_extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PIPELINE}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: {PIPELINE}
        store:
          root: {store_root}
          endpoint_url: {endpoint}
          region: us-east-1
          access_key_id: ${{AWS_ACCESS_KEY_ID}}
          secret_access_key: ${{AWS_SECRET_ACCESS_KEY}}
        data:
          interactions:
            path: {data_dir}/interactions.csv
            columns: {{user: user_id, item: item_id, timestamp: timestamp, rating: rating}}
          items: {{path: {data_dir}/items.csv, id: item_id, category: category,
                  text: "{{title}}. {{category}}. {{description}}"}}
        validation: {{on_failure: fail, rating_range: [0.5, 5.0], max_duplicate_rate: 0.0, data_docs: false}}
        preprocess: {{min_user_interactions: 3}}
        models:
          - {{type: popularity}}
          - {{type: ease, lambda: 50}}
        tuning: {{budget: 3 trials, candidates: [ease], startup_trials: 2}}
        evaluation: {{k: [10], primary: ndcg@10, bootstrap: 20}}
        gate: {{absolute: {{ndcg@10: 0.01}}}}
        execution: {{retries: 2, retry_delay: 1s, retry_backoff: 2, timeout_minutes: 10, schedule: null{execution_extra}}}
    """)
    )
    return path


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> dict[str, Any]:
    """An Airflow home (SQLite, no examples) whose DAGs folder is the repo's `dags/`, pointed at a config
    folder with one pipeline on a fresh S3 bucket, and the synthetic data it reads."""
    from recloop.data import synth

    base = tmp_path_factory.mktemp("e2e_airflow")
    data_dir = base / "data"
    synth.generate(n_users=120, n_items=60, seed=3, events_per_user=20).write(data_dir)
    bucket = s3_server.new_bucket()
    config = write_config(base / "configs", data_dir, f"s3://{bucket}/recloop", s3_server.endpoint_url)
    env = {
        **os.environ,
        **s3_server.env(),
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "RECLOOP_CONFIG_DIR": str(config.parent),
    }
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return {"env": env, "db": base / "airflow" / "airflow.db", "config": config, "bucket": bucket}


def dags_test(airflow: dict[str, Any], conf: dict[str, Any] | None = None) -> tuple[str, str]:
    """Run the training DAG once; return (run id, output). Whether the run succeeded is run_state's job."""
    args = [AIRFLOW, "dags", "test", DAG_ID] + (["-c", json.dumps(conf)] if conf else [])
    done = subprocess.run(args, env=airflow["env"], capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert "DagRun Finished" in output, output[-6000:]
    with sqlite3.connect(airflow["db"]) as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
    return run_id, output


def run_state(airflow: dict[str, Any], run_id: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """(dag run state, {task id: (state, try number)}) from Airflow's metadata DB. A mapped task's
    instances are merged into one entry (one state if they agree, the highest try number), and listed
    as `task[rendered map index]` in `mapped_instances`."""
    with sqlite3.connect(airflow["db"]) as db:
        (state,) = db.execute("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)).fetchone()
        rows = db.execute(
            "SELECT task_id, map_index, rendered_map_index, state, try_number FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?",
            (DAG_ID, run_id),
        ).fetchall()
    tasks: dict[str, tuple[str, int]] = {}
    for task_id, map_index, rendered, task_state, tries in rows:
        if map_index >= 0:
            MAPPED_INSTANCES.setdefault(run_id, {})[f"{task_id}[{rendered}]"] = (task_state, tries)
        if task_id in tasks:
            old_state, old_tries = tasks[task_id]
            task_state = old_state if old_state == task_state else f"{old_state}|{task_state}"
            tries = max(tries, old_tries)
        tasks[task_id] = (task_state, tries)
    return state, tasks


MAPPED_INSTANCES: dict[str, dict[str, tuple[str, int]]] = {}


def open_store(airflow: dict[str, Any]):
    from recloop.config import load
    from recloop.store import open_store as open_

    return open_(load(airflow["config"], env=airflow["env"]).store)


def verified_hashes(store: Any, run_id: str, step: str) -> dict[str, str]:
    """Open the step's committed artifact in S3 and verify every file against its manifest."""
    from recloop.artifacts import Artifact, run_prefix

    artifact = Artifact.open(store, run_prefix(run_id, step))
    assert artifact.manifest.step == step.split("/")[0] and artifact.manifest.run_id == run_id
    assert artifact.uri.startswith(f"s3://{airflow_bucket(store)}/")
    for name in artifact.manifest.files:
        with artifact.path(name):  # raises ArtifactError on a missing file or a hash mismatch
            pass
    return {name: entry.sha256 for name, entry in artifact.manifest.files.items()}


def airflow_bucket(store: Any) -> str:
    return store.root[len("s3://") :].split("/", 1)[0]


def test_training_dag_on_airflow_and_s3(airflow):
    from recloop.artifacts import run_prefix

    store = open_store(airflow)
    alias_key = f"models/{PIPELINE}/production.json"
    assert not store.exists(alias_key)

    # 1. A normal run: all green, every step committed to S3, a production model.
    run1, _ = dags_test(airflow)
    state, tasks = run_state(airflow, run1)
    assert state == "success"
    assert {t: s for t, (s, _) in tasks.items()} == {t: "success" for t in TASKS}
    # tune and train are mapped: one task instance per candidate, each named by its candidate in the UI.
    assert MAPPED_INSTANCES[run1] == {
        f"model.{step}[{name}]": ("success", 1) for step in ("tune", "train") for name in ("popularity", "ease")
    }
    hashes1 = {step: verified_hashes(store, run1, step) for step in ARTIFACTS}
    assert "interactions.parquet" in hashes1["ingest"] and "train.parquet" in hashes1["preprocess"]
    assert {"arrays.safetensors", "model.json"} <= set(hashes1["train/popularity"]) & set(hashes1["train/ease"])
    # ease was tuned (3 trials on validation) and trained with the best trial's lambda; popularity was not.
    study1 = json.loads(store.get_bytes(f"{run_prefix(run1, 'tune/ease')}/study.json"))
    train_report = json.loads(store.get_bytes(f"{run_prefix(run1, 'train/ease')}/train_report.json"))
    assert study1["tuned"] is True and study1["n_trials"] == 3
    assert train_report["tuned_params"] == study1["best_params"] and "lambda" in study1["best_params"]
    assert json.loads(store.get_bytes(f"{run_prefix(run1, 'tune/popularity')}/study.json"))["tuned"] is False
    production = json.loads(store.get_bytes(alias_key))
    assert production["version"] == 1 and production["run_id"] == run1
    assert store.list(run_prefix(run1, "_failures")) == []

    # 2. A gate nobody can pass: publish skipped, run green, the reason logged, production untouched.
    alias_before = store.get_bytes(alias_key)
    run2, output2 = dags_test(airflow, {"overrides": ["gate.absolute={ndcg@10: 0.999}"]})
    state, tasks = run_state(airflow, run2)
    assert state == "success"
    assert {t: s for t, (s, _) in tasks.items()} == {**{t: "success" for t in TASKS}, "release.publish": "skipped"}
    blessing = json.loads(store.get_bytes(f"{run_prefix(run2, 'gate')}/blessing.json"))
    assert blessing["decision"] == "rejected"
    assert "Not published: the gate rejected" in output2
    assert not store.exists(f"{run_prefix(run2, 'publish')}/_MANIFEST.json")
    assert store.get_bytes(alias_key) == alias_before

    # 3. train fails on its first attempt: Airflow retries it, the run succeeds with identical files.
    run3, _ = dags_test(airflow, {"overrides": ["execution.fault_injection={step: train, fail_attempts: 1}"]})
    state, tasks = run_state(airflow, run3)
    assert state == "success"
    assert {t: s for t, (s, _) in tasks.items()} == {t: "success" for t in TASKS}
    assert tasks["model.train"][1] == 2 and tasks["release.evaluate"][1] == 1
    # Each candidate's instance failed once and was retried on its own.
    assert MAPPED_INSTANCES[run3] == {
        **{f"model.tune[{name}]": ("success", 1) for name in ("popularity", "ease")},
        **{f"model.train[{name}]": ("success", 2) for name in ("popularity", "ease")},
    }
    for map_index in (0, 1):
        record = json.loads(store.get_bytes(f"{run_prefix(run3, '_failures')}/model.train[{map_index}].try-1.json"))
        assert (
            record["task_id"],
            record["map_index"],
            record["run_id"],
            record["try_number"],
            record["error_type"],
            record["final"],
        ) == ("model.train", map_index, run3, 1, "InjectedFault", False)
    hashes3 = {step: verified_hashes(store, run3, step) for step in ARTIFACTS}
    # Data and model files must match run 1 byte for byte (reports carry timings and run ids; skip those).
    compared = {}
    for step in ("ingest", "validate", "preprocess", "train/popularity", "train/ease"):
        data_files = {n for n in hashes1[step] if n.endswith((".parquet", ".safetensors"))}
        assert data_files == {n for n in hashes3[step] if n.endswith((".parquet", ".safetensors"))}
        for name in data_files:
            assert hashes3[step][name] == hashes1[step][name], f"{step}/{name} differs after the retry"
        compared[step] = sorted(data_files)
    assert compared == {
        "ingest": ["interactions.parquet", "items.parquet"],
        "validate": [],  # nothing was quarantined, so validate wrote no rows of its own
        "preprocess": [
            "id_maps/items.parquet",
            "id_maps/users.parquet",
            "items.parquet",
            "test.parquet",
            "train.parquet",
            "valid.parquet",
        ],
        "train/popularity": ["arrays.safetensors"],
        "train/ease": ["arrays.safetensors"],
    }
    assert json.loads(store.get_bytes(alias_key))["version"] == 2

    # 4. A bad override fails the run in `prepare`, before any step; the failure is recorded in S3.
    run4, _ = dags_test(airflow, {"overrides": ["validation.max_dupe_rate=0.1"]})
    state, tasks = run_state(airflow, run4)
    assert state == "failed"
    assert {t: s for t, (s, _) in tasks.items()} == {**{t: "upstream_failed" for t in TASKS}, "prepare": "failed"}
    record = json.loads(store.get_bytes(f"{run_prefix(run4, '_failures')}/prepare.json"))
    assert (record["task_id"], record["run_id"], record["final"], record["error_type"]) == (
        "prepare",
        run4,
        True,
        "ConfigError",
    )
    # The override, not the config file, is named as the cause.
    assert record["error"].startswith("invalid configuration in the DAG run's `overrides` param (applied to ")
    assert "validation.max_dupe_rate: unknown key; remove it or check its spelling" in record["error"]
    assert "(set by the DAG run's `overrides` param: validation.max_dupe_rate=0.1)" in record["error"]
    assert store.list(run_prefix(run4, "ingest")) == []

    # 5. Data that fail validation (exit 3): a permanent failure fails the task at once, without retries.
    run5, output5 = dags_test(
        airflow, {"overrides": ["validation.rating_range=[4.5, 5.0]", "validation.data_docs=true"]}
    )
    state, tasks = run_state(airflow, run5)
    assert state == "failed"
    assert tasks["data.ingest"] == ("success", 1) and tasks["data.validate"] == ("failed", 1)
    record = json.loads(store.get_bytes(f"{run_prefix(run5, '_failures')}/data.validate.json"))
    assert (record["final"], record["error_type"]) == (True, "ValidationFailed")
    assert "(a permanent failure, exit code 3: not retried)" in record["error"]
    # The task log links the failed validation's Data Docs with pre-signed URLs a browser opens (index and
    # the validation page, each signed), not only its s3:// URI.
    import httpx

    links = dict(re.findall(r"open the failed validation's (data_docs/\S+) in a browser: (http\S+)", output5))
    assert "data_docs/index.html" in links, output5[-4000:]
    assert any(name.startswith("data_docs/validations/") for name in links), sorted(links)
    for url in links.values():
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower(), url


# ------------------------------------------------------------------------------------------------ LocalExecutor


def _postgres_listening() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", 5432)) == 0


@pytest.fixture
def postgres_database() -> Any:
    """A fresh database on the local PostgreSQL (trust auth), dropped afterwards."""
    import psycopg2

    name = f"recloop_e2e_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.slow
@pytest.mark.skipif(
    not _postgres_listening(), reason="needs PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres"
)
def test_scheduler_and_local_executor_on_postgres_through_the_rest_api(tmp_path, s3_server, postgres_database):
    import httpx

    from recloop.artifacts import run_prefix
    from recloop.data import synth
    from recloop_dev import local_stack as local

    layout = local.Layout(tmp_path / "state")
    layout.logs.mkdir(parents=True)
    synth.generate(n_users=120, n_items=60, seed=3, events_per_user=20).write(tmp_path / "data")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bucket = s3_server.new_bucket()
    write_config(
        layout.configs,
        tmp_path / "data",
        f"s3://{bucket}/recloop",
        s3_server.endpoint_url,
        execution_extra=f", airflow_api: {{url: '{url}', username: admin, password: '${{RECLOOP_AIRFLOW_PASSWORD}}'}}",
    )
    keys = {"access_key": s3_server.access_key, "secret_key": s3_server.secret_key, "admin_password": uuid.uuid4().hex}
    airflow = local.start_airflow(layout, keys, port, REPO / "dags", postgres_database)
    log = layout.logs / "airflow.log"
    try:
        token = local._wait(
            lambda: local.api_token(url, keys["admin_password"]), "the API server", 300, log, airflow["process"]
        )
        api = httpx.Client(base_url=f"{url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        local._wait(lambda: local._dags_or_errors(url, token, {DAG_ID}), "the DAG", 300, log, airflow["process"])
        assert api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
        triggered = api.post(
            f"/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"overrides": ["gate.absolute={ndcg@10: 0.999}"]}},
        )
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["dag_run_id"]
        run_path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"

        def finished() -> dict[str, Any] | None:
            run = api.get(run_path).json()
            return run if run["state"] in ("success", "failed") else None

        run = local._wait(finished, "the DAG run", 480, log, airflow["process"])
        tasks = {t["task_id"]: t for t in api.get(f"{run_path}/taskInstances").json()["task_instances"]}
        assert run["state"] == "success", {t: ti["state"] for t, ti in tasks.items()}
        assert {t: ti["state"] for t, ti in tasks.items()} == {
            **{t: "success" for t in TASKS},
            "release.publish": "skipped",
        }
        # The scheduler that ran the tasks loaded LocalExecutor and no other (task instances name an executor
        # only when a task overrides the default; the job table leaves executor_class empty).
        schedulers = api.get("/jobs", params={"job_type": "SchedulerJob"}).json()["jobs"]
        assert [job["state"] for job in schedulers] == ["running"], schedulers
        loaded = re.findall(r"Loaded executor: (\S+)", log.read_text())
        assert loaded and {name.strip(":").split(":")[-1] for name in loaded} == {"LocalExecutor"}, loaded
        assert all(tasks[t].get("executor") is None for t in TASKS)
        # The reason the model was not published is the run's note, written by `decide` through the API.
        assert run["note"].startswith("Not published: the gate rejected ease."), run["note"]
        assert "< required 0.999" in run["note"]
        # The note links the evaluation report with a pre-signed URL a browser opens (not an s3:// URI).
        link = re.search(r"\[Evaluation report\]\((http\S+)\)", run["note"])
        assert link, run["note"]
        page = httpx.get(link.group(1), timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        store = open_store(
            {
                "config": layout.configs / f"{PIPELINE}.yaml",
                "env": {
                    "AWS_ACCESS_KEY_ID": keys["access_key"],
                    "AWS_SECRET_ACCESS_KEY": keys["secret_key"],
                    "RECLOOP_AIRFLOW_PASSWORD": keys["admin_password"],
                },
            }
        )
        for step in ARTIFACTS[:-1]:
            verified_hashes(store, run_id, step)
        assert json.loads(store.get_bytes(f"{run_prefix(run_id, 'gate')}/blessing.json"))["decision"] == "rejected"
        assert not store.exists(f"models/{PIPELINE}/production.json")
    finally:
        local.stop_process_group(airflow["pgid"], process=airflow["process"])


# ------------------------------------------------------------------------------------------- the whole loop


LOOP = "loop"


def _loop_config(path: Path, data_dir: Path, store_root: str, endpoint: str, api_url: str) -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        name: {LOOP}
        store:
          root: {store_root}
          endpoint_url: {endpoint}
          region: us-east-1
          access_key_id: ${{AWS_ACCESS_KEY_ID}}
          secret_access_key: ${{AWS_SECRET_ACCESS_KEY}}
        data:
          interactions:
            path: {data_dir}/events/
            columns: {{user: user_id, item: item_id, timestamp: timestamp, rating: rating}}
          items: {{path: {data_dir}/items.csv, id: item_id, category: category,
                  text: "{{title}}. {{category}}. {{description}}"}}
        validation: {{on_failure: fail, rating_range: [0.5, 5.0], data_docs: false}}
        preprocess: {{min_user_interactions: 3}}
        models:
          - {{type: popularity}}
          - {{type: ease, lambda: 50}}
        evaluation: {{k: [10], primary: ndcg@10, bootstrap: 20}}
        gate: {{absolute: {{ndcg@10: 0.001}}}}
        serving:
          poll_interval: 200ms
          privacy: {{hmac_key: "${{RECLOOP_USER_HMAC_KEY}}"}}
          logs: {{flush_interval: 60s}}
        feedback: {{output: {data_dir}/events/feedback, attribution_window: 1s, event_ratings: {{click: 4.0}}}}
        execution:
          retries: 0
          schedule: feedback
          airflow_api: {{url: '{api_url}', username: admin, password: '${{RECLOOP_AIRFLOW_PASSWORD}}'}}
    """)
    )
    return path


@pytest.mark.slow
@pytest.mark.skipif(
    not _postgres_listening(), reason="needs PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres"
)
def test_served_feedback_runs_the_feedback_dag_whose_asset_retrains(tmp_path, s3_server, postgres_database):
    """The loop on a real scheduler and S3: train and publish, serve and collect clicks, the feedback DAG
    turns the served logs into interactions and updates its Asset, and the Asset-triggered training run
    ingests them, retrains and gates."""
    import time

    import httpx

    from recloop.artifacts import Artifact, run_prefix
    from recloop.config import load
    from recloop.data import synth
    from recloop.store import open_store as open_
    from recloop_dev import local_stack as local
    from support.serving_helpers import API_KEY, HMAC_KEY, ServeProcess

    layout = local.Layout(tmp_path / "state")
    layout.logs.mkdir(parents=True)
    data_dir = tmp_path / "data"
    synth.generate(n_users=120, n_items=60, seed=3, events_per_user=20).write(data_dir)
    (data_dir / "events").mkdir()
    (data_dir / "interactions.csv").rename(data_dir / "events" / "interactions.csv")
    n_events = sum(1 for _ in open(data_dir / "events" / "interactions.csv")) - 1
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bucket = s3_server.new_bucket()
    layout.configs.mkdir(parents=True, exist_ok=True)
    config = _loop_config(
        layout.configs / f"{LOOP}.yaml", data_dir, f"s3://{bucket}/recloop", s3_server.endpoint_url, url
    )
    keys = {"access_key": s3_server.access_key, "secret_key": s3_server.secret_key, "admin_password": uuid.uuid4().hex}
    airflow = local.start_airflow(
        layout, keys, port, REPO / "dags", postgres_database, extra_env={"RECLOOP_USER_HMAC_KEY": HMAC_KEY}
    )
    log = layout.logs / "airflow.log"
    serve = None
    try:
        token = local._wait(
            lambda: local.api_token(url, keys["admin_password"]), "the API server", 300, log, airflow["process"]
        )
        api = httpx.Client(base_url=f"{url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        train_id, feedback_id = f"{LOOP}_train", f"{LOOP}_feedback"
        local._wait(
            lambda: local._dags_or_errors(url, token, {train_id, feedback_id}), "the DAGs", 300, log, airflow["process"]
        )
        for dag in (train_id, feedback_id):
            assert api.patch(f"/dags/{dag}", json={"is_paused": False}).status_code == 200

        def run_of(dag: str, run_id: str) -> dict[str, Any]:
            return api.get(f"/dags/{dag}/dagRuns/{quote(run_id, safe='')}").json()

        def finished(dag: str, run_id: str) -> dict[str, Any] | None:
            run = run_of(dag, run_id)
            return run if run["state"] in ("success", "failed") else None

        def task_states(dag: str, run_id: str) -> dict[str, str]:
            listed = api.get(f"/dags/{dag}/dagRuns/{quote(run_id, safe='')}/taskInstances").json()
            return {t["task_id"]: t["state"] for t in listed["task_instances"]}

        # 1. The first training run publishes version 1.
        first = api.post(f"/dags/{train_id}/dagRuns", json={"logical_date": None}).json()["dag_run_id"]
        run = local._wait(lambda: finished(train_id, first), "the first training run", 480, log, airflow["process"])
        assert run["state"] == "success", task_states(train_id, first)
        assert task_states(train_id, first)["release.publish"] == "success"

        # 2. Serve it; known users get slates and click their first item.
        env = {**s3_server.env(), "RECLOOP_AIRFLOW_PASSWORD": keys["admin_password"]}
        serve = ServeProcess(config, env=env, log_path=tmp_path / "serve.log")
        serve.wait_ready()
        users = sorted(
            {line.split(",")[0] for line in (data_dir / "events" / "interactions.csv").read_text().splitlines()[1:]}
        )[:20]
        clicks = []
        for user in users:
            slate = httpx.get(f"{serve.url}/v1/recommendations", params={"user_id": user, "k": 5}, timeout=30).json()
            assert slate["user_known"] and slate["items"], slate
            clicks.append(
                {
                    "item_id": slate["items"][0]["item_id"],
                    "event_type": "click",
                    "request_id": slate["request_id"],
                    "user_id": user,
                }
            )
        accepted = httpx.post(
            f"{serve.url}/v1/feedback", json={"events": clicks}, headers={"X-API-Key": API_KEY}, timeout=30
        )
        assert accepted.status_code == 202 and accepted.json()["accepted"] == len(users), accepted.text
        assert serve.terminate() == 0  # flushes the impression and feedback logs to S3
        serve = None
        time.sleep(2)  # past the 1 s attribution window

        # 3. The feedback DAG turns the served logs into interactions and updates its Asset.
        fb = api.post(f"/dags/{feedback_id}/dagRuns", json={"logical_date": None}).json()["dag_run_id"]
        run = local._wait(lambda: finished(feedback_id, fb), "the feedback run", 300, log, airflow["process"])
        assert run["state"] == "success", task_states(feedback_id, fb)
        assert task_states(feedback_id, fb) == {"feedback": "success", "check": "success", "emit": "success"}
        store = open_(load(config, env={**os.environ, **env, "RECLOOP_USER_HMAC_KEY": HMAC_KEY}).store)
        summary = Artifact.open(store, run_prefix(fb, "feedback")).manifest.summary
        assert summary["picked_up_by_next_ingest"] is True, summary
        appended = list((data_dir / "events" / "feedback").glob("feedback-*.csv"))
        assert len(appended) == 1 and len(appended[0].read_text().splitlines()) == 1 + len(users)
        events = api.get("/assets/events", params={"source_dag_id": feedback_id}).json()["asset_events"]
        assert [e["uri"] for e in events] == [f"recloop://{LOOP}/feedback"], events

        # 4. The Asset triggers a training run that ingests the clicks, retrains and gates.
        def triggered() -> dict[str, Any] | None:
            runs = api.get(f"/dags/{train_id}/dagRuns", params={"run_type": "asset_triggered"}).json()["dag_runs"]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            return done[0] if done else None

        retrain = local._wait(triggered, "the asset-triggered training run", 480, log, airflow["process"])
        states = task_states(train_id, retrain["dag_run_id"])
        assert retrain["state"] == "success", states
        assert states["release.evaluate"] == states["release.gate"] == "success", states
        ingest = Artifact.open(store, run_prefix(retrain["dag_run_id"], "ingest")).manifest.summary
        assert ingest["rows"]["interactions"] == n_events + len(users), ingest
        blessing = Artifact.open(store, run_prefix(retrain["dag_run_id"], "gate")).read_json("blessing.json")
        assert blessing["decision"] in ("blessed", "rejected") and blessing["reasons"], blessing
    finally:
        if serve is not None:
            serve.kill()
        local.stop_process_group(airflow["pgid"], process=airflow["process"])
