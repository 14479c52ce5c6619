"""What happens around a task: failure records in the store and run notes in Airflow.

`FailureRecorder` is the DAGs' `on_failure_callback` / `on_retry_callback`: it writes
`runs/{run_id}/_failures/{task_id}.json` (final failure) or `{task_id}.try-{n}.json` (a failed attempt
Airflow will retry) to the pipeline's store and logs it, so a failure is found next to the run's
artifacts. A mapped task instance (one candidate of train) adds its map index to the name,
`{task_id}[{map_index}].json` / `{task_id}[{map_index}].try-{n}.json`, and records it as `map_index`
(-1 for an unmapped task). Callbacks must never raise: a store outage (often the very cause of the
failure) is logged.

`set_run_note` writes the DAG run's note through Airflow's public REST API: the Task SDK has no call for
it, so it needs `execution.airflow_api`; without it the note is skipped and the log says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from recloop.artifacts import run_prefix

if TYPE_CHECKING:
    from recloop.config import AirflowApiConfig, PipelineConfig

log = logging.getLogger("recloop.orchestration")
NOTE_MAX_CHARS = 1000  # Airflow's limit on a run note


def load_run_config(config_path: str, params: Mapping[str, Any] | None) -> PipelineConfig:
    """The config a run used: the file plus the run's `overrides` param (without them if they are bad)."""
    from recloop.config import load
    from recloop.errors import ConfigError

    overrides = list((params or {}).get("overrides") or [])
    try:
        return load(config_path, overrides)
    except ConfigError:
        if not overrides:
            raise
        return load(config_path)


def failure_record_key(run_id: str, task_id: str, try_number: int | None = None, map_index: int = -1) -> str:
    name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
    name = name if try_number is None else f"{name}.try-{try_number}"
    return f"{run_prefix(run_id, '_failures')}/{name}.json"


class FailureRecorder:
    """Task callback writing a JSON failure record to the store (final failures and retried attempts)."""

    def __init__(self, config_path: str, final: bool):
        self.config_path = config_path
        self.final = final

    def __call__(self, context: Mapping[str, Any]) -> None:
        try:
            self.record(context)
        except Exception as exc:  # a callback that raises would hide the task's own error
            log.warning("could not record the failure of %s in the store: %s", context.get("ti"), exc)

    def record(self, context: Mapping[str, Any]) -> str:
        from recloop.store import open_store

        ti = context["ti"]
        run_id = str(context["run_id"])
        exc = context.get("exception")
        try_number = int(getattr(ti, "try_number", 0) or 0)
        map_index = getattr(ti, "map_index", -1)
        map_index = map_index if isinstance(map_index, int) else -1
        record = {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "map_index": map_index,
            "run_id": run_id,
            "try_number": try_number,
            "max_tries": int(getattr(ti, "max_tries", 0) or 0),
            "final": self.final,
            "will_retry": not self.final,
            "error_type": type(_root_error(exc)).__name__ if exc is not None else None,
            "error": str(exc) if exc is not None else str(context.get("reason") or "unknown"),
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": self.config_path,
        }
        cfg = load_run_config(self.config_path, context.get("params"))
        store = open_store(cfg.store)
        key = failure_record_key(run_id, ti.task_id, None if self.final else try_number, map_index)
        store.put_bytes(key, json.dumps(record, indent=2, sort_keys=True).encode())
        what = "failed" if self.final else f"failed attempt {try_number} (Airflow will retry)"
        log.error(
            "%s %s in run %s: %s: %s; recorded at %s",
            ti.task_id,
            what,
            run_id,
            record["error_type"],
            record["error"],
            store.uri(key),
        )
        return store.uri(key)


def _root_error(exc: BaseException) -> BaseException:
    """The recloop error behind Airflow's fail-now wrapper (permanent failures), else `exc`."""
    cause = getattr(exc, "recloop_error", None)
    return cause if isinstance(cause, BaseException) else exc


def set_run_note(
    api: AirflowApiConfig | None, dag_id: str, run_id: str, note: str, say: Callable[[str], None] = log.info
) -> bool:
    """Best effort: PATCH the run's note; says why when it cannot (never raises)."""
    if api is None:
        say("run note not written: set execution.airflow_api (url and credentials) to let tasks write it")
        return False
    import httpx

    base = api.url.rstrip("/")
    try:
        with httpx.Client(timeout=10.0) as client:
            if api.token is not None:
                token = api.token.get_secret_value()
            else:
                body = {
                    "username": api.username or "",
                    "password": api.password.get_secret_value() if api.password else "",
                }
                response = client.post(f"{base}/auth/token", json=body)
                response.raise_for_status()
                token = response.json()["access_token"]
            response = client.patch(
                f"{base}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}",
                params={"update_mask": "note"},
                json={"note": note[:NOTE_MAX_CHARS]},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        say(f"run note not written: Airflow API at {base} answered {exc}; check execution.airflow_api")
        return False
    return True
