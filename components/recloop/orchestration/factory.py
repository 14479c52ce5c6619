"""The DAG factory: one training DAG and one feedback DAG per pipeline config in a folder.

    dags/recloop_pipelines.py:  globals().update(build_dags(config_dir))

Parse time is kept small (the DagBag must parse in well under 2 s): configs are read and validated
(pydantic), DAG objects are built, and nothing else happens — no store or network access, no heavy
imports (steps, models, torch, great_expectations load inside the tasks). Secrets stay `${VAR}` at parse
time: the scheduler needs no credentials. Files whose name starts with `_` are partials for `extends:`
and get no DAG. A broken config raises `ConfigError` naming the file and every problem, which Airflow
shows as the DAG file's import error.

Training DAG `{name}_train`, drawn from the step graph (`recloop.steps.graph.TRAINING`): prepare →
data(ingest → validate → preprocess) → model[one mapped instance per candidate](tune → train) →
release(evaluate → gate → decide → publish). A candidate's train waits for its own tune only: the group is
mapped as a whole. Edges are the graph's transitive reduction, so the DAG shows the loop
itself; each task resolves every input it declares from the run's layout, and reads the run-wide values
(`prepare`'s validated request and config hash) from XCom instead of through an edge. `decide` is a
short-circuit: an unblessed candidate or a dry run skips publish, the run stays green, and the reason
goes to the task log and the run note.
Feedback DAG `{name}_feedback`: feedback → check → emit, where `emit` updates the Asset
`recloop://{name}/feedback` that (with the default `execution.schedule: feedback`) triggers training.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.artifacts.kinds import Blessing, FeedbackBatch
from recloop.config import PipelineConfig, load
from recloop.errors import ConfigError
from recloop.steps.graph import FEEDBACK, TRAINING

if TYPE_CHECKING:
    from airflow.sdk import DAG

# A fixed past start: with catchup off, nothing is backfilled, and the DAG is valid from its first parse.
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)

_RETRY_HELP = (
    "**Retry:** clear this task in the Grid view (or `airflow tasks clear DAG_ID -t TASK_REGEX -s DATE -e DATE`). "
    "A step whose artifact this run already committed is reused, not recomputed; trigger a new run with "
    "`force: true` to recompute."
)
PREPARE_DOC = (
    "Validates the run's params and the config with its overrides, once, before any step (a bad "
    "override fails here in seconds), and hands the config hash to every step so that a config edited "
    "mid-run is refused instead of mixing two configs in one run. Reads only the config file."
)
DECIDE_DOC = (
    f"Short-circuit before publish. **Reads** `runs/{{run}}/gate/{Blessing.BLESSING}`. Lets publish run only for "
    "a blessed candidate outside a dry run; otherwise publish is skipped, the run ends green, and the "
    "reason is logged here and written as the run note (when `execution.airflow_api` is set)."
)


def dag_ids(pipeline_name: str) -> tuple[str, str]:
    """(training DAG id, feedback DAG id) of a pipeline."""
    return f"{pipeline_name}_train", f"{pipeline_name}_feedback"


def feedback_asset_uri(pipeline_name: str) -> str:
    return f"recloop://{pipeline_name}/feedback"


class _UnexpandedEnv(dict):
    """Parse-time environment: every `${VAR}` stays as written (no credentials needed to parse)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return "${" + key + "}"


def config_files(config_dir: Path) -> list[Path]:
    if not config_dir.is_dir():
        raise ConfigError(
            str(config_dir),
            ["RECLOOP_CONFIG_DIR: this folder does not exist; point it at the folder holding the pipeline configs"],
        )
    return sorted(
        p
        for p in config_dir.iterdir()
        if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(("_", "."))
    )


def load_for_parsing(path: Path) -> PipelineConfig:
    """Load and validate a config without expanding secrets, and check the orchestration settings."""
    cfg = load(path, env=_UnexpandedEnv())
    known = set(TRAINING.names) | set(FEEDBACK.names)
    errors = [
        f"execution.steps.{name}: unknown step; steps are {', '.join(sorted(known))}"
        for name in cfg.execution.steps
        if name not in known
    ]
    fault = cfg.execution.fault_injection
    if fault is not None and fault.step not in known:
        errors.append(
            f"execution.fault_injection.step: unknown step {fault.step!r}; steps are {', '.join(sorted(known))}"
        )
    if errors:
        raise ConfigError(str(path), errors)
    return cfg


def build_dags(config_dir: str | Path) -> dict[str, DAG]:
    """Every DAG for every config in `config_dir`, keyed by DAG id."""
    dags: dict[str, DAG] = {}
    owners: dict[str, Path] = {}
    for path in config_files(Path(config_dir).resolve()):
        cfg = load_for_parsing(path)
        if cfg.name in owners:
            raise ConfigError(
                str(path),
                [
                    f"name: {cfg.name!r} is also the name of {owners[cfg.name]}; each pipeline needs its own name "
                    "(it names the DAGs, the store paths and the model)"
                ],
            )
        owners[cfg.name] = path
        for dag in (build_training_dag(cfg, path), build_feedback_dag(cfg, path)):
            dags[dag.dag_id] = dag
    return dags


# ------------------------------------------------------------------------------------------------ pieces


def task_settings(cfg: PipelineConfig, step: str | None) -> dict[str, Any]:
    """Retries and timeout of one step's task (`execution` defaults, `execution.steps.<step>` overrides)."""
    ex = cfg.execution
    override = ex.steps.get(step) if step else None

    def pick(name: str) -> Any:
        value = getattr(override, name) if override is not None else None
        return getattr(ex, name) if value is None else value

    return {
        "retries": pick("retries"),
        "retry_delay": pick("retry_delay"),
        "execution_timeout": timedelta(minutes=pick("timeout_minutes")),
    }


def default_args(cfg: PipelineConfig, config_path: Path) -> dict[str, Any]:
    from recloop.orchestration.callbacks import FailureRecorder

    ex = cfg.execution
    return {
        "owner": ex.owner,
        **task_settings(cfg, None),
        # Airflow's multiplier form: delay * backoff**(try-1), jittered, capped by max_retry_delay.
        "retry_exponential_backoff": ex.retry_backoff if ex.retry_backoff > 1 else 0,
        "max_retry_delay": ex.max_retry_delay,
        "on_failure_callback": FailureRecorder(str(config_path), final=True),
        "on_retry_callback": FailureRecorder(str(config_path), final=False),
    }


def _split_schedule(entries: str | list[str] | None) -> tuple[str | None, list[str]]:
    from recloop.config import CRON_PRESETS

    if entries is None:
        return None, []
    cron, assets = None, []
    for entry in [entries] if isinstance(entries, str) else entries:
        entry = entry.strip()
        if entry == "feedback" or "://" in entry:
            assets.append(entry)
        else:
            cron = CRON_PRESETS.get(entry, entry)
    return cron, assets


def training_schedule(cfg: PipelineConfig) -> Any:
    """`execution.schedule` as an Airflow schedule: None, a cron timetable, assets, or either."""
    from airflow.sdk import Asset, AssetAny, AssetOrTimeSchedule

    from recloop.orchestration.timetable import NoMissedRunsCronTimetable

    cron, entries = _split_schedule(cfg.execution.schedule)
    assets = [Asset(feedback_asset_uri(cfg.name) if e == "feedback" else e) for e in entries]
    asset_condition = None if not assets else assets[0] if len(assets) == 1 else AssetAny(*assets)
    timetable = NoMissedRunsCronTimetable(cron, timezone=cfg.execution.timezone) if cron else None
    if timetable is not None and asset_condition is not None:
        # A core timetable, registered by recloop's plugin: the SDK's annotation names only its own classes.
        return AssetOrTimeSchedule(timetable=timetable, assets=asset_condition)  # type: ignore[arg-type]
    return timetable if timetable is not None else asset_condition


def feedback_schedule(cfg: PipelineConfig) -> Any:
    from recloop.orchestration.timetable import NoMissedRunsCronTimetable

    cron, _ = _split_schedule(cfg.execution.feedback_schedule)
    return NoMissedRunsCronTimetable(cron, timezone=cfg.execution.timezone) if cron else None


def describe_schedule(value: str | list[str] | None) -> str:
    if value is None:
        return "manual only"
    return " or ".join(f"`{v}`" for v in ([value] if isinstance(value, str) else value))


def training_doc(cfg: PipelineConfig, config_path: Path) -> str:
    train_id, feedback_id = dag_ids(cfg.name)
    models = ", ".join(f"`{m.candidate_name}` ({m.type})" for m in cfg.models) or "none configured"
    ex = cfg.execution
    return f"""# recloop pipeline `{cfg.name}` — training

Trains, evaluates, gates and publishes recommendation models from `{config_path}`.

| | |
|---|---|
| Store | `{cfg.store.root}` — artifacts under `runs/<run id>/<step>/`, failures under `runs/<run id>/_failures/` |
| Models | {models} |
| Published as | `{cfg.model_name}` (`models/{cfg.model_name}/production.json`) |
| Schedule | {describe_schedule(ex.schedule)}; the feedback DAG `{feedback_id}` updates `{feedback_asset_uri(cfg.name)}` |
| Execution | `{ex.mode}`; {ex.retries} retries from {ex.retry_delay} (x{ex.retry_backoff:g} back-off), {ex.timeout_minutes} min timeout per step |

**Params:** `models` (subset of candidates), `since` (watermark), `dry_run` (everything but publish),
`overrides` (`key.path=value` lines), `force` (recompute committed steps).

**Trigger:** UI ▶ *Trigger* (form), `airflow dags trigger {train_id} -c '{{"dry_run": true}}'`, or
`POST /api/v2/dags/{train_id}/dagRuns` with `{{"logical_date": null, "conf": {{...}}}}`.

**When publish is skipped:** see the `release.decide` log or the run note — the gate's reasons.

**Retry:** clear the failed task (and downstream). Steps already committed in this run are reused.
"""


def _step_doc(step: str) -> str:
    return f"### {step}\n\n{TRAINING[step].doc()}\n\n{_RETRY_HELP}"


def _container_task(
    cfg: PipelineConfig, config_path: Path, step: str, settings: dict[str, Any], candidate: Any | None
) -> Any:
    from recloop.orchestration import containers

    task_kwargs = {"task_id": step, "doc_md": _step_doc(step), **settings}
    if cfg.execution.mode == "kubernetes":
        return containers.pod_operator(cfg, config_path, step, task_kwargs, candidate)
    return containers.docker_operator(cfg, config_path, step, task_kwargs, candidate)


def _step_task(cfg: PipelineConfig, config_path: Path, step: str, candidate: Any | None = None) -> Any:
    """One step's task: a @task calling run_pipeline_step (inprocess) or a container. Inside a mapped
    group, `candidate` is the group's mapped argument (one task instance per candidate, named by it)."""
    from airflow.sdk import task

    from recloop.orchestration import tasks

    settings = task_settings(cfg, step)
    if step == "evaluate":
        # Candidates the run's `models` param leaves out are skipped, not failed.
        settings["trigger_rule"] = "none_failed_min_one_success"
    if cfg.execution.mode != "inprocess":
        return _container_task(cfg, config_path, step, settings, candidate)
    if candidate is not None:
        settings["map_index_template"] = "{{ recloop_candidate }}"
        return task(task_id=step, doc_md=_step_doc(step), **settings)(tasks.run_pipeline_step)(
            step=step, config_path=str(config_path), candidate=candidate
        )
    return task(task_id=step, doc_md=_step_doc(step), **settings)(tasks.run_pipeline_step)(
        step=step, config_path=str(config_path)
    )


def _mapped_group(cfg: PipelineConfig, config_path: Path, group: str, tooltip: str) -> Any:
    """A group of per-candidate steps, mapped over the configured candidates: instance c runs c's steps in
    graph order, each after its own upstream in the group only."""
    from airflow.sdk import task_group

    upstreams = TRAINING.task_upstreams()
    steps = [s.name for s in TRAINING if s.group == group]

    def candidate_steps(candidate: str) -> None:
        ops: dict[str, Any] = {}
        for step in steps:
            ops[step] = _step_task(cfg, config_path, step, candidate)
            for upstream in upstreams[step]:
                if upstream in ops:
                    ops[upstream] >> ops[step]

    return task_group(group_id=group, tooltip=tooltip)(candidate_steps).expand(
        candidate=[m.candidate_name for m in cfg.models]
    )


# ------------------------------------------------------------------------------------------------ DAGs


def build_training_dag(cfg: PipelineConfig, config_path: Path) -> DAG:
    from airflow.sdk import DAG, TaskGroup, task

    from recloop.orchestration import tasks
    from recloop.orchestration.params import training_params

    train_id, _ = dag_ids(cfg.name)
    ex = cfg.execution
    dag = DAG(
        dag_id=train_id,
        dag_display_name=f"{cfg.name} · training",
        description=f"recloop: train, evaluate, gate and publish {cfg.model_name}",
        doc_md=training_doc(cfg, config_path),
        schedule=training_schedule(cfg),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"recloop", "training", f"pipeline:{cfg.name}", f"mode:{ex.mode}", *ex.tags}),
        params=training_params(cfg),
        default_args=default_args(cfg, config_path),
    )
    upstreams = TRAINING.task_upstreams()
    with dag:
        prepare = task(task_id="prepare", doc_md=PREPARE_DOC, retries=0)(tasks.prepare_run)(
            config_path=str(config_path)
        )
        ops: dict[str, Any] = {}
        for group, tooltip in TRAINING.groups.items():
            if group in TRAINING.mapped_groups():
                mapped = _mapped_group(cfg, config_path, group, tooltip)
                for step in (s for s in TRAINING if s.group == group):
                    ops[step.name] = mapped
                    for upstream in upstreams[step.name]:
                        if ops[upstream] is not mapped:
                            ops[upstream] >> mapped
                continue
            with TaskGroup(group, tooltip=tooltip):
                for step in (s for s in TRAINING if s.group == group):
                    before = [ops[u] for u in upstreams[step.name]] or [prepare]
                    if step.name == "publish":
                        # The short-circuit that lets publish run stands between it and its upstreams.
                        decide = task.short_circuit(task_id="decide", doc_md=DECIDE_DOC)(tasks.decide_publish)(
                            config_path=str(config_path)
                        )
                        before, decide_after = [decide], before
                        for upstream in decide_after:
                            upstream >> decide
                    ops[step.name] = _step_task(cfg, config_path, step.name)
                    for upstream in before:
                        upstream >> ops[step.name]
    return dag


def build_feedback_dag(cfg: PipelineConfig, config_path: Path) -> DAG:
    from airflow.sdk import DAG, Asset, task

    from recloop.orchestration import tasks

    train_id, feedback_id = dag_ids(cfg.name)
    asset_uri = feedback_asset_uri(cfg.name)
    path = str(config_path)
    dag = DAG(
        dag_id=feedback_id,
        dag_display_name=f"{cfg.name} · feedback",
        description=f"recloop: collect served-model feedback for {cfg.name} and trigger retraining",
        doc_md=f"""# recloop pipeline `{cfg.name}` — feedback

Collects what the served model's users did (impressions, clicks) into `runs/<run id>/feedback/` and, when
there are new interactions, updates the Asset `{asset_uri}`; with `execution.schedule: feedback` that
triggers `{train_id}`. Schedule: {describe_schedule(cfg.execution.feedback_schedule)}.

The `feedback` step processes the serving logs whose attribution window (`feedback.attribution_window`)
has closed, quarantines abuse, writes `runs/<run id>/feedback/{FeedbackBatch.SUMMARY}` and appends the clean interactions
to `feedback.output` (include it in `data.interactions.path`); see docs/learning-loop.md. {_RETRY_HELP}
""",
        schedule=feedback_schedule(cfg),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"recloop", "feedback", f"pipeline:{cfg.name}", *cfg.execution.tags}),
        default_args=default_args(cfg, config_path),
    )
    with dag:
        collected = task(
            task_id="feedback",
            doc_md=(
                "Runs the `feedback` step (serving logs → interactions for the next training run). **Writes** "
                "`runs/{run}/feedback/` and appends clean interactions to `feedback.output`."
            ),
            **task_settings(cfg, "feedback"),
        )(tasks.run_feedback_step)(config_path=path)
        # Airflow types a decorated task's call with the function's own parameters, but what is passed is the
        # upstream task's XComArg (resolved to its value at run time): hence the two ignores below.
        news = task.short_circuit(
            task_id="check",
            doc_md=(
                "Lets `emit` run only when the feedback brought new interactions, so an idle day does not retrain."
            ),
        )(tasks.feedback_has_news)(collected)  # type: ignore[arg-type]
        emitted = task(
            task_id="emit",
            outlets=[Asset(asset_uri)],
            doc_md=(
                f"Updates the Asset `{asset_uri}` (extra: the feedback artifact URI and summary); "
                f"`{train_id}` is scheduled on it."
            ),
        )(tasks.emit_feedback_asset)(collected, asset_uri)  # type: ignore[arg-type]
        news >> emitted
    return dag
