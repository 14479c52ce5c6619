"""tune: search one candidate's hyper-parameters on the validation split (one node per candidate).

Input: the preprocess artifact (train and valid splits only: the test split is never read). Output
`runs/{run}/tune/{candidate}/`, a `TuningStudy`: `study.json` (tuned or why not, budget share, seed, space,
best parameters and value, importances), `trials.parquet` (every trial), the Optuna journal, and the best
trial's model (`best_model/`, `best_fit.json`), which train then reuses rather than fitting the same
parameters on the same splits a second time.

Each trial fits the candidate with the drawn parameters on train, early-stopped on valid as train does,
and scores validation NDCG@10 (the same `validation_ndcg` train reports). Iterative models report every
validation check, so a trial whose curve falls below the median of earlier trials is pruned. While the
step runs, the journal is copied to `runs/{run}/tune/_journal/{candidate}.log` after every trial: a rerun
with the same run id resumes the study there (or from `tuning.storage`, an RDB shared by workers).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.artifacts.core import run_prefix, staging_prefix
from recloop.artifacts.kinds import TuningStudy
from recloop.config.search import describe_range
from recloop.models.base import FitContext
from recloop.steps.train import (
    FitRecord,
    StoreTextEmbedder,
    TrainingData,
    fit_model,
    load_training_data,
    splits_digest,
)
from recloop.tuning.budget import share_of
from recloop.tuning.space import apply_params, configured_point, space_for
from recloop.tuning.study import Report, StudyOutcome, StudySettings, run_study, trials_frame

if TYPE_CHECKING:
    from recloop.artifacts import Manifest
    from recloop.config.models import ModelConfig
    from recloop.models.base import Recommender
    from recloop.steps.base import StepContext

JOURNAL_FOLDER = "_journal"  # under the tune folder's staging: resume state, never part of an artifact


def run(ctx: StepContext, inputs: dict[str, str], output: str, candidate: str) -> Manifest:
    model_cfg = next(m for m in ctx.config.models if m.candidate_name == candidate)
    preprocess = ctx.open(inputs["preprocess"])
    space = space_for(ctx.config.tuning, model_cfg)
    reason = _not_tuned_reason(ctx, model_cfg, space)
    with tempfile.TemporaryDirectory(prefix="recloop-tune-") as tmp:
        journal = Path(tmp) / "journal.log"
        keeper = BestTrialKeeper(Path(tmp) / "trials", splits_digest(preprocess))
        if reason is None:
            data = load_training_data(preprocess)
            if data.valid is None:
                reason = "the preprocess artifact has no validation events to tune on"
        if reason is not None:
            ctx.log(f"tune: {candidate} is not tuned: {reason}; train uses its configured parameters")
            study, outcome = {"tuned": False, "reason": reason, "best_params": {}}, None
        else:
            outcome = _search(ctx, model_cfg, space, data, journal, keeper)
            study = _study_record(ctx, model_cfg, space, outcome)
        best_fit = None if outcome is None else keeper.folder(outcome.best_trial)
        with ctx.writer(output, parents=[preprocess.uri]) as writer:
            trials = outcome.trials if outcome is not None else trials_frame([])
            TuningStudy.write(writer, study, trials, journal if outcome is not None else None, best_fit)
    ctx.store.delete(_journal_key(ctx, candidate))
    return writer.manifest


def _not_tuned_reason(ctx: StepContext, model_cfg: ModelConfig, space: dict[str, Any]) -> str | None:
    tuning = ctx.config.tuning
    if not tuning.enabled:
        return "tuning is off (set tuning.budget, e.g. `tuning: {budget: 30m}`)"
    if tuning.candidates is not None and model_cfg.candidate_name not in tuning.candidates:
        return "not listed in tuning.candidates"
    if not space:
        return f"model type {model_cfg.type!r} has no search space (add one under tuning.spaces)"
    return None


class BestTrialKeeper:
    """Keeps the model of the best trial this process has completed, in `root/{trial}/` (`bundle/` and
    `fit.json`), so train can reuse the study's best one. Worker processes each keep their own best;
    the study's best is among them."""

    def __init__(self, root: Path, data_digest: str):
        self.root = root
        self.data_digest = data_digest
        self.best_value = -math.inf
        self.best_trial: int | None = None

    def offer(
        self, trial: int, value: float, model: Recommender, cfg: ModelConfig, seconds: float, record: FitRecord
    ) -> None:
        if not math.isfinite(value) or value <= self.best_value:
            return
        folder = self.root / str(trial)
        model.save(folder / "bundle")
        fit = {
            "trial": trial,
            "value": value,
            "seconds": round(seconds, 3),
            "history": record.history,
            "config": cfg.model_dump(mode="json", by_alias=True),
            "data_digest": self.data_digest,
        }
        (folder / "fit.json").write_text(json.dumps(fit, default=str))
        if self.best_trial is not None:
            shutil.rmtree(self.root / str(self.best_trial), ignore_errors=True)
        self.best_value, self.best_trial = value, trial

    def folder(self, trial: int | None) -> Path | None:
        """The kept folder of `trial` (None when no process kept it, e.g. it ran before a resume)."""
        if trial is None:
            return None
        folder = self.root / str(trial)
        return folder if (folder / "fit.json").exists() else None


def _search(
    ctx: StepContext,
    model_cfg: ModelConfig,
    space: dict[str, Any],
    data: TrainingData,
    journal: Path,
    keeper: BestTrialKeeper,
) -> StudyOutcome:
    from recloop.models.early_stopping import validation_ndcg

    name = model_cfg.candidate_name
    tuning = ctx.config.tuning
    tuned = [m for m in ctx.config.models if space_for(tuning, m)]
    share = share_of(tuning, model_cfg, tuned)
    embedder = StoreTextEmbedder(ctx)
    valid = data.valid
    assert valid is not None  # checked by the caller

    def objective(params: dict[str, Any], report: Report) -> float:
        cfg = apply_params(model_cfg, params)
        record = FitRecord()
        context = FitContext(
            items=data.items, users=data.users, log=lambda _msg: None, text_embedder=embedder, on_validation=report
        )
        model, seconds = fit_model(cfg, data, context, record)
        value = float(validation_ndcg(model, valid))
        keeper.offer(report.trial_number, value, model, cfg, seconds, record)
        return value

    journal_key = _journal_key(ctx, name)
    if tuning.storage is None and ctx.store.exists(journal_key):
        ctx.store.get_file(journal_key, journal)
    settings = StudySettings(
        name=f"{ctx.config.name}.{ctx.run_id}.{name}",
        share=share,
        seed=tuning.seed,
        seed_key=name,
        first_point=configured_point(model_cfg, space),
        startup_trials=tuning.startup_trials,
        pruning=tuning.pruning,
        parallel=tuning.parallel,
        storage_url=tuning.storage,
        journal_path=None if tuning.storage else journal,
    )

    def save_journal() -> None:
        if tuning.storage is None and journal.exists():
            ctx.store.put_file(journal_key, journal)

    return run_study(space, objective, settings, lambda msg: ctx.log(f"tune {name}: {msg}"), save_journal)


def _journal_key(ctx: StepContext, candidate: str) -> str:
    return f"{staging_prefix(run_prefix(ctx.run_id, 'tune'))}/{JOURNAL_FOLDER}/{candidate}.log"


def _study_record(
    ctx: StepContext, model_cfg: ModelConfig, space: dict[str, Any], outcome: StudyOutcome
) -> dict[str, Any]:
    tuning = ctx.config.tuning
    if outcome.best_trial is None:
        ctx.log(f"tune: {model_cfg.candidate_name}: no trial completed; train uses the configured parameters")
    else:
        ctx.log(
            f"tune: {model_cfg.candidate_name}: best validation ndcg@10 {outcome.best_value:.4f} "
            f"(trial {outcome.best_trial} of {len(outcome.trials)}) with {outcome.best_params}"
        )
    return {
        "tuned": True,
        "candidate": model_cfg.candidate_name,
        "type": model_cfg.type,
        "metric": "ndcg@10 (validation)",
        "budget": str(tuning.budget),
        "seed": tuning.seed,
        "space": {k: describe_range(v) for k, v in space.items()},
        "best_params": outcome.best_params,
        "best_value": outcome.best_value,
        "best_trial": outcome.best_trial,
        "n_trials": len(outcome.trials),
        "states": outcome.states,
        "resumed_trials": outcome.resumed_trials,
        "seconds": outcome.seconds,
        "importances": outcome.importances,
    }
