"""Task callables of the recloop DAGs. They run inside Airflow task processes, never at parse time.

Each in-process step task reads the run-wide values `prepare` validated (the run request and config
hash) from XCom, loads the run's config (file + the run's overrides), checks it is the config `prepare`
validated (same hash), builds a `StepContext` and calls `recloop.steps.base.run_step`, which resolves
the step's declared inputs from the run's layout. Only the artifact URI and a small summary
(`Manifest.brief()`) go back through XCom. Because `run_step` reuses a committed artifact, a retried or
cleared task resumes instead of redoing finished work.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from recloop.errors import PERMANENT_EXIT_CODES, ConfigError, RecloopError, ValidationFailed
from recloop.orchestration.params import OVERRIDES_SOURCE, RunRequest

if TYPE_CHECKING:
    from recloop.config import FaultInjectionConfig, PipelineConfig
    from recloop.steps.base import StepContext

log = logging.getLogger("recloop.orchestration")
T = TypeVar("T")


class InjectedFault(RecloopError):
    """A failure requested by `execution.fault_injection` (tests and retry drills): it stands for a
    transient fault, so it keeps the task's retries."""


def fail_permanent_errors_now(task_callable: Callable[..., T]) -> Callable[..., T]:
    """Wrap a task callable: an error whose exit code is permanent (configuration, usage, data) fails the
    task without its retries; transient ones (store time-outs, 5xx, injected faults) are retried."""

    @functools.wraps(task_callable)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return task_callable(*args, **kwargs)
        except RecloopError as exc:
            if exc.exit_code not in PERMANENT_EXIT_CODES:
                raise
            from airflow.sdk.exceptions import AirflowFailException

            failure = AirflowFailException(f"{exc}\n(a permanent failure, exit code {exc.exit_code}: not retried)")
            # The message says it all: no chained recloop traceback in the task log. The failure record
            # names the recloop error through this attribute.
            failure.recloop_error = exc  # type: ignore[attr-defined]
            raise failure from None

    return run


class StepUnavailable(RecloopError):
    """The step's module is not part of this recloop installation."""


def check_fault(fault: FaultInjectionConfig | None, step: str, attempt: int, at: str) -> None:
    """Raise `InjectedFault` when the config asks this step to fail on this attempt."""
    if fault is None or fault.step != step or fault.at != at or attempt > fault.fail_attempts:
        return
    where = "before running" if at == "start" else "after committing its artifact"
    raise InjectedFault(
        f"{step}: injected failure {where}, attempt {attempt} of {fault.fail_attempts} planned failure(s) "
        "(execution.fault_injection); Airflow retries the task. Remove execution.fault_injection from the "
        "config (or from the run's `overrides` param, where it was set there) to stop these failures."
    )


class LogProgress:
    """`StepContext.progress` for task logs: a line at the start, at each quarter, and at most every
    `min_interval_s` in between (a progress bar would flood the log)."""

    def __init__(self, say: Callable[[str], None], min_interval_s: float = 15.0):
        self.say = say
        self.min_interval_s = min_interval_s

    def __call__(self, description: str, total: float | None = None, unit: str = "") -> Callable[[float], None]:
        state = {"done": 0.0, "quarter": 0, "last": time.monotonic()}
        self.say(f"{description}: started" + (f" ({quantity(total, unit)} to do)" if total else ""))

        def advance(amount: float = 1.0) -> None:
            state["done"] += amount
            now = time.monotonic()
            quarter = int(4 * state["done"] / total) if total else 0
            if quarter > state["quarter"] or now - state["last"] >= self.min_interval_s:
                state["quarter"] = max(quarter, state["quarter"])
                state["last"] = now
                share = f" ({100 * state['done'] / total:.0f}%)" if total else ""
                done = quantity(state["done"], unit)
                self.say(f"{description}: {done}{f' of {quantity(total, unit)}' if total else ''} done{share}")

        return advance


def quantity(value: float, unit: str = "") -> str:
    """A progress count for people: '1.3 MiB' for bytes, '1,409,140 rows', '3' (never '1.40914e+06')."""
    if unit == "bytes":
        size, prefix = float(value), ""
        for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
            if abs(size) < 1024 or prefix == "Ti":
                break
            size /= 1024
        return f"{size:.0f} B" if not prefix else f"{size:.1f} {prefix}B"
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return f"{text} {unit}".rstrip()


def _current_context() -> Mapping[str, Any]:
    from airflow.sdk import get_current_context

    return get_current_context()


def _say(message: str) -> None:
    log.info(message)


def load_checked_config(config_path: str, run: Mapping[str, Any]) -> tuple[PipelineConfig, RunRequest]:
    """The run's config, refusing one that changed since `prepare` validated it."""
    from recloop.config import load

    request = RunRequest.from_xcom(run["request"])
    cfg = load(config_path, list(request.overrides), overrides_source=OVERRIDES_SOURCE)
    if cfg.config_hash() != run["config_hash"]:
        raise ConfigError(
            config_path,
            [
                f"the config changed after this run started (hash {cfg.config_hash()[:12]}, the run began with "
                f"{run['config_hash'][:12]}); restore the file to retry this run, or trigger a new run"
            ],
        )
    return cfg, request


def step_context(cfg: PipelineConfig, request: RunRequest, run_id: str) -> StepContext:
    from recloop.steps.base import StepContext

    return StepContext.from_config(cfg, run_id, request.run_params(), log=_say, progress=LogProgress(_say))


def prepared_run(context: Mapping[str, Any]) -> Mapping[str, Any]:
    """What `prepare` returned for this DAG run (read from XCom, not passed along an edge)."""
    run = context["ti"].xcom_pull(task_ids="prepare")
    if not run:
        raise ConfigError(
            "DAG run",
            [
                "the `prepare` task of this run has no result; clear `prepare` and its "
                "downstream tasks to re-validate the run"
            ],
        )
    return run


def skip_unselected_candidate(request: RunRequest, candidate: str | None) -> None:
    """A mapped candidate the run's `models` param leaves out is skipped (the run stays green)."""
    if candidate is not None and request.models and candidate not in request.models:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(
            f"candidate {candidate!r} is not selected by this run's `models` param ({', '.join(request.models)})"
        )


@fail_permanent_errors_now
def prepare_run(config_path: str) -> dict[str, Any]:
    """Validate the run's params and config once, before any step: bad overrides fail here, fast."""
    from recloop.artifacts import safe_run_id
    from recloop.config import load

    context = _current_context()
    request = RunRequest.from_params(context["params"])
    cfg = load(config_path, list(request.overrides), overrides_source=OVERRIDES_SOURCE)
    candidates = [m.candidate_name for m in cfg.models]
    request = RunRequest.from_params(context["params"], candidates)  # re-check models against this config
    run_id = str(context["run_id"])
    _say(f"pipeline {cfg.name} from {config_path} (config hash {cfg.config_hash()[:12]})")
    _say(f"run {run_id}: artifacts under {cfg.store.root}/runs/{safe_run_id(run_id)}/")
    _say(
        "models: "
        + ", ".join(request.models or candidates or ["none configured"])
        + (f"; since {request.since.isoformat()}" if request.since else "")
        + ("; DRY RUN (publish will be skipped)" if request.dry_run else "")
        + (f"; overrides: {', '.join(request.overrides)}" if request.overrides else "")
    )
    return {
        "run_id": run_id,
        "config_path": config_path,
        "config_hash": cfg.config_hash(),
        "store_root": cfg.store.root,
        "request": request.to_xcom(),
    }


def _load_step_or_explain(step: str) -> None:
    from recloop.steps.graph import find_step

    try:
        spec = find_step(step)
    except KeyError:
        raise StepUnavailable(
            f"step {step!r} is not declared in recloop.steps.graph; upgrade recloop or remove the step from the DAG"
        ) from None
    try:
        spec.load()
    except ModuleNotFoundError as exc:
        if exc.name != spec.module:
            raise
        raise StepUnavailable(
            f"step {step!r}: module {exc.name} is not installed in this recloop version; "
            "upgrade recloop on the Airflow workers"
        ) from None


@fail_permanent_errors_now
def run_pipeline_step(step: str, config_path: str, candidate: str | None = None) -> dict[str, Any]:
    """One pipeline step (one candidate of a per-candidate step) in the task process; returns its manifest
    brief (URI + summary) for XCom."""
    from recloop.steps.base import resolve_inputs, run_step
    from recloop.steps.graph import find_step

    context = _current_context()
    cfg, request = load_checked_config(config_path, prepared_run(context))
    if candidate is not None:
        context["recloop_candidate"] = candidate  # type: ignore[index]  # names the mapped instance
    skip_unselected_candidate(request, candidate)
    attempt = int(context["ti"].try_number)
    check_fault(cfg.execution.fault_injection, step, attempt, "start")
    _load_step_or_explain(step)
    ctx = step_context(cfg, request, str(context["run_id"]))
    inputs = resolve_inputs(ctx, find_step(step), candidate=candidate)
    for role, uri in sorted(inputs.items()):
        _say(f"{step}: input {role} = {uri}")
    started = time.monotonic()
    try:
        manifest = run_step(step, ctx, inputs=inputs, candidate=candidate)
    except ValidationFailed as exc:
        _explain_failed_validation(cfg, context, ctx, exc)
        raise
    _say(f"{step}: committed {manifest.uri} in {time.monotonic() - started:.1f}s; summary {manifest.summary}")
    for name, url in report_links(ctx, manifest.uri).items():
        _say(f"{step}: open {name} in a browser: {url}")
    check_fault(cfg.execution.fault_injection, step, attempt, "end")
    brief = manifest.brief()
    if step == "publish":
        _note_published(cfg, context, brief)
    return brief


# How long a pre-signed link to a report stays valid (S3's maximum).
LINK_EXPIRY_S = 7 * 24 * 3600


def browser_files(names: Iterable[str]) -> list[str]:
    """The files of an artifact a person opens in a browser: the evaluation report, and the Data Docs index
    and validation pages. Each page gets its own link: on S3 a pre-signed page's relative links to the
    others are not signed, so they would not open."""
    from recloop.artifacts.kinds import Evaluation, ValidationReport

    docs = f"{ValidationReport.DATA_DOCS}/"
    pages = sorted(n for n in names if n.startswith(f"{docs}validations/") and n.endswith(".html"))
    return [n for n in (Evaluation.REPORT, ValidationReport.DATA_DOCS_INDEX) if n in names] + pages


def report_links(ctx: StepContext, artifact_uri: str) -> dict[str, str]:
    """Links a browser opens to the artifact's reports: pre-signed (7 days) on S3, file:// locally.
    s3:// URIs in logs and notes cannot be clicked."""
    from recloop.artifacts import Artifact

    artifact = Artifact.open(ctx.store, ctx.key(artifact_uri))
    return {
        name: ctx.store.browser_url(f"{artifact.prefix}/{name}", LINK_EXPIRY_S)
        for name in browser_files(artifact.manifest.files)
    }


def _explain_failed_validation(
    cfg: PipelineConfig, context: Mapping[str, Any], ctx: StepContext, exc: ValidationFailed
) -> None:
    """Where people look when validation fails the run: the task log and the run note link the failed
    report's Data Docs (the error itself names only its s3:// URI)."""
    from recloop.artifacts.kinds import ValidationReport
    from recloop.orchestration.callbacks import set_run_note

    if exc.report_uri is None:
        return
    links = report_links(ctx, exc.report_uri)
    for name, url in links.items():
        _say(f"validate: open the failed validation's {name} in a browser: {url}")
    note = f"Validation failed; nothing was trained. Report: {exc.report_uri}"
    if ValidationReport.DATA_DOCS_INDEX in links:  # run notes render Markdown: links people can click
        note += f" [Data Docs]({links[ValidationReport.DATA_DOCS_INDEX]})"
    pages = [url for name, url in links.items() if name.startswith(f"{ValidationReport.DATA_DOCS}/validations/")]
    note += "".join(f" [validation result {i}]({url})" for i, url in enumerate(pages, 1))
    set_run_note(cfg.execution.airflow_api, context["dag"].dag_id, str(context["run_id"]), note, _say)


def _note_published(cfg: PipelineConfig, context: Mapping[str, Any], brief: Mapping[str, Any]) -> None:
    from recloop.orchestration.callbacks import set_run_note

    summary = brief.get("summary") or {}
    version = summary.get("version")
    what = f"{cfg.model_name} v{version}" if version is not None else cfg.model_name
    note = f"Published {what} ({summary.get('candidate') or 'blessed candidate'}): {brief['uri']}"
    _say(note)
    set_run_note(cfg.execution.airflow_api, context["dag"].dag_id, str(context["run_id"]), note, _say)


@fail_permanent_errors_now
def decide_publish(config_path: str) -> bool:
    """Short-circuit before publish: True only for a blessed candidate outside a dry run. The reason is
    logged and written as the run note, so a skipped publish is explained where people look."""
    from recloop.artifacts.kinds import Blessing
    from recloop.orchestration.callbacks import set_run_note
    from recloop.steps.base import step_output
    from recloop.steps.graph import TRAINING

    context = _current_context()
    cfg, request = load_checked_config(config_path, prepared_run(context))
    ctx = step_context(cfg, request, str(context["run_id"]))
    gate_uri = step_output(ctx, TRAINING["gate"])
    blessing = ctx.open(gate_uri).read_json(Blessing.BLESSING)
    decision = blessing.get("decision")
    candidate = blessing.get("candidate") or "no candidate"
    reasons = [str(r) for r in blessing.get("reasons") or []]
    if decision != "blessed":
        publish = False
        note = (
            f"Not published: the gate rejected {candidate}. "
            + ("; ".join(reasons) if reasons else "No reason recorded")
            + f". Blessing: {gate_uri}"
        )
    elif request.dry_run:
        publish = False
        note = f"Dry run: {candidate} was blessed but publish was skipped (params.dry_run). Blessing: {gate_uri}"
    else:
        publish = True
        note = f"Gate blessed {candidate}" + (f": {'; '.join(reasons)}" if reasons else "") + "; publishing."
    report = report_links(ctx, step_output(ctx, TRAINING["evaluate"])).get("report.html")
    if report:
        note += f" [Evaluation report]({report})"  # run notes render Markdown: a link people can click
    _say(note)
    for threshold in blessing.get("thresholds") or []:
        if isinstance(threshold, Mapping):
            _say(
                "threshold {metric} ({kind}): required {required}, value {value}, passed {passed}".format(
                    **{k: threshold.get(k) for k in ("metric", "kind", "required", "value", "passed")}
                )
            )
    if not publish:
        set_run_note(cfg.execution.airflow_api, context["dag"].dag_id, ctx.run_id, note, _say)
    return publish


# ------------------------------------------------------------------------------------------------ feedback


@fail_permanent_errors_now
def run_feedback_step(config_path: str) -> dict[str, Any]:
    """The feedback DAG's step, in the task process; returns its manifest brief (URI + summary) for XCom."""
    from recloop.config import load
    from recloop.steps.base import run_step

    context = _current_context()
    cfg = load(config_path)
    _load_step_or_explain("feedback")
    check_fault(cfg.execution.fault_injection, "feedback", int(context["ti"].try_number), "start")
    ctx = step_context(cfg, RunRequest(), str(context["run_id"]))
    manifest = run_step("feedback", ctx)
    _say(f"feedback: committed {manifest.uri}; summary {manifest.summary}")
    return manifest.brief()


def feedback_has_news(brief: Mapping[str, Any]) -> bool:
    """Short-circuit: emit the Asset (and so retrain) only when feedback brought new interactions."""
    summary = brief.get("summary") or {}
    rows = summary.get("new_interactions", summary.get("rows"))
    if isinstance(rows, Mapping):
        rows = rows.get("interactions")
    if not rows:
        _say(f"no new interactions in {brief.get('uri')}; training is not triggered")
        return False
    _say(f"{rows} new interactions in {brief.get('uri')}; updating the feedback Asset")
    return True


def emit_feedback_asset(brief: Mapping[str, Any], asset_uri: str) -> dict[str, Any]:
    """Runs with `outlets=[Asset(asset_uri)]`: its success is the Asset event that triggers training."""
    context = _current_context()
    extra = {
        "feedback_uri": brief.get("uri"),
        "run_id": brief.get("run_id"),
        "summary": dict(brief.get("summary") or {}),
    }
    from airflow.sdk import Asset

    context["outlet_events"][Asset(asset_uri)].extra = extra
    _say(f"Asset {asset_uri} updated: {extra}")
    return extra
