"""Run one candidate's Optuna study: TPE sampling, median pruning on the validation curve, a budget share,
resumption from a journal or an RDB storage, and trials in several processes.

The objective is given: `objective(params, report)` fits a model with `params` and returns its validation
NDCG@10, calling `report(epoch, value)` after each validation check (which may raise `optuna.TrialPruned`);
`report.trial_number` names the trial (the tune step keeps the best trial's model under it).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from recloop.config.search import SearchSpace, describe_range
from recloop.tuning.budget import Share
from recloop.tuning.space import InvalidParams, suggest

if TYPE_CHECKING:
    import optuna


class Report(Protocol):
    """What an objective calls after each validation check; it knows which trial it reports for."""

    trial_number: int

    def __call__(self, epoch: int, value: float) -> None: ...


Objective = Callable[[dict[str, Any], Report], float]
# Epochs before a trial may be pruned: the first validation checks of any model are noisy.
PRUNING_WARMUP_EPOCHS = 3


@dataclass(frozen=True)
class StudySettings:
    """Where the study lives and how it searches."""

    name: str
    share: Share
    # What the sampler's seed is derived from besides `seed` (default: the name). The tune step gives the
    # candidate's name, so runs with different run ids draw the same trials and find the same best.
    seed_key: str | None = None
    seed: int = 0
    startup_trials: int = 5
    pruning: bool = True
    parallel: int = 1
    storage_url: str | None = None  # an Optuna RDB URL; else the journal file
    journal_path: Path | None = None
    # Tried first when the study is new (the configured values): the best found is never below it.
    first_point: dict[str, Any] | None = None


@dataclass
class StudyOutcome:
    """What the tune step commits: every trial and the best of them."""

    best_params: dict[str, Any]
    best_value: float | None
    best_trial: int | None
    trials: pd.DataFrame
    importances: dict[str, float]
    seconds: float
    resumed_trials: int
    states: dict[str, int] = field(default_factory=dict)


def run_study(
    space: SearchSpace,
    objective: Objective,
    settings: StudySettings,
    log: Callable[[str], None],
    after_trial: Callable[[], None] | None = None,
) -> StudyOutcome:
    """Search `space` within `settings.share`; resumes the study if its storage already holds trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(settings)
    resumed = _close_stale_trials(study)
    if settings.first_point and not study.trials:
        study.enqueue_trial(settings.first_point, skip_if_exists=True)
    finished = [t for t in study.trials if t.state.is_finished()]
    spent = sum(_seconds(t) for t in finished)
    remaining_trials = max(settings.share.trials - len(finished), 0)
    remaining_seconds = None if settings.share.seconds is None else max(settings.share.seconds - spent, 0.0)
    if finished:
        log(f"resuming study {settings.name}: {len(finished)} trials done, {spent:.0f}s spent")
    log(
        f"searching {', '.join(f'{k} {describe_range(v)}' for k, v in space.items())} within {settings.share.describe()}"
    )
    started = time.monotonic()
    if remaining_trials and (remaining_seconds is None or remaining_seconds > 0):
        deadline = None if remaining_seconds is None else started + remaining_seconds
        _optimize(study, space, objective, settings, deadline, remaining_trials, log, after_trial)
    return _outcome(study, settings, time.monotonic() - started + spent, resumed)


def _open_study(settings: StudySettings, worker: int = 0) -> optuna.Study:
    """The study on its storage; each worker process opens its own (own connections, own sampler seed)."""
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=_sampler_seed(settings) + worker,
        n_startup_trials=settings.startup_trials,
        multivariate=True,
        constant_liar=settings.parallel > 1,
    )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=PRUNING_WARMUP_EPOCHS)
        if settings.pruning
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        study_name=settings.name,
        storage=_storage(settings),
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def _storage(settings: StudySettings) -> Any:
    if settings.storage_url:
        return settings.storage_url
    if settings.journal_path is None:
        return None  # in memory: nothing to resume from
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    settings.journal_path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(settings.journal_path)))


def _sampler_seed(settings: StudySettings) -> int:
    # One seed per candidate: two candidates never draw the same sequence by accident.
    key = settings.seed_key or settings.name
    return (settings.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31


def _close_stale_trials(study: optuna.Study) -> int:
    """Trials left RUNNING by an interrupted run can never finish: mark them failed. Returns how many
    finished trials the study already held."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])


def _optimize(
    study: optuna.Study,
    space: SearchSpace,
    objective: Objective,
    settings: StudySettings,
    deadline: float | None,
    n_trials: int,
    log: Callable[[str], None],
    after_trial: Callable[[], None] | None,
) -> None:
    import optuna

    total = len(study.trials) + n_trials
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(total, states=None),
        _trial_logger(log, after_trial),
    ]
    trial_fn = _trial_function(space, objective, settings, deadline)
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def work(worker: int) -> None:
        own = study if worker == 0 and settings.parallel <= 1 else _open_study(settings, worker)
        own.optimize(trial_fn, n_trials=n_trials, timeout=timeout, callbacks=callbacks, catch=(Exception,))

    if settings.parallel <= 1 or (settings.storage_url is None and settings.journal_path is None):
        work(0)
        return
    # Workers share the study through its storage. fork keeps the objective's loaded data without
    # pickling it; each worker opens the storage anew rather than sharing the parent's connections.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=work, args=(i,), name=f"tune-{settings.name}-{i}") for i in range(settings.parallel)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [w.name for w in workers if w.exitcode]
    if failed:
        log(f"tuning workers {', '.join(failed)} exited abnormally; their trials are marked failed")
        _close_stale_trials(study)


def _trial_function(
    space: SearchSpace, objective: Objective, settings: StudySettings, deadline: float | None
) -> Callable[[optuna.Trial], float]:
    import optuna

    def run_trial(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        try:
            return float(objective(params, _TrialReport(trial, settings.pruning, deadline)))
        except InvalidParams as exc:
            trial.set_user_attr("note", f"invalid combination: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("note", f"failed: {type(exc).__name__}: {exc}")
            raise

    return run_trial


class _TrialReport:
    """Reports a validation check to the trial; prunes below the median or past the deadline."""

    def __init__(self, trial: optuna.Trial, pruning: bool, deadline: float | None):
        self.trial = trial
        self.trial_number = trial.number
        self.pruning = pruning
        self.deadline = deadline

    def __call__(self, epoch: int, value: float) -> None:
        import optuna

        self.trial.report(float(value), int(epoch))
        if self.pruning and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation NDCG@10 {value:.4f} at epoch {epoch} is below the median")
        if self.deadline is not None and time.monotonic() > self.deadline and self._another_trial_completed():
            self.trial.set_user_attr("note", "stopped: the candidate's budget ran out")
            raise optuna.TrialPruned("the candidate's budget ran out")

    def _another_trial_completed(self) -> bool:
        # Until one trial completes, the running one is the fit train would otherwise do itself (and
        # reuses): cutting it would waste the time spent, and train would pay it again.
        from optuna.trial import TrialState

        return bool(self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _trial_logger(
    log: Callable[[str], None], after_trial: Callable[[], None] | None
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = "" if trial.value is None else f" ndcg@10={trial.value:.4f}"
        try:
            best = f" (best {study.best_value:.4f}, trial {study.best_trial.number})"
        except ValueError:
            best = ""
        note = trial.user_attrs.get("note")
        log(
            f"trial {trial.number} {trial.state.name.lower()}{value} in {_seconds(trial):.1f}s{best}: "
            f"{json.dumps(trial.params, default=str)}{f' ({note})' if note else ''}"
        )
        if after_trial is not None:
            after_trial()

    return on_trial


def _seconds(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _outcome(study: optuna.Study, settings: StudySettings, seconds: float, resumed: int) -> StudyOutcome:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return StudyOutcome(
        best_params=dict(best.params) if best else {},
        best_value=None if best is None else float(best.value),  # type: ignore[arg-type]
        best_trial=None if best is None else best.number,
        trials=trials_frame(trials),
        importances=_importances(study, settings, len(complete)),
        seconds=round(seconds, 3),
        resumed_trials=resumed,
        states=states,
    )


def trials_frame(trials: list[optuna.trial.FrozenTrial]) -> pd.DataFrame:
    """One row per trial: number, state, value, seconds, parameters and validation curve as JSON."""
    rows = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "seconds": round(_seconds(t), 3),
            "params": json.dumps(t.params, sort_keys=True, default=str),
            "curve": json.dumps(sorted(t.intermediate_values.items())),
            "note": str(t.user_attrs.get("note", "")),
        }
        for t in trials
    ]
    columns = ["number", "state", "value", "seconds", "params", "curve", "note"]
    return pd.DataFrame(rows, columns=columns).astype({"value": "float64"})


def _importances(study: optuna.Study, settings: StudySettings, n_complete: int) -> dict[str, float]:
    """fANOVA parameter importances (sum 1); empty with too few completed trials to say."""
    import optuna

    if n_complete < 3:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=settings.seed)
        return {
            k: round(float(v), 6)
            for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
        }
    except (RuntimeError, ValueError):  # e.g. every trial drew the same values
        return {}
