"""Tuning: budgets and their split, search spaces, the Optuna study (reproducible, pruned, resumable,
parallel on PostgreSQL) and the tune step feeding train, without ever reading the test split."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recloop import config as config_mod
from recloop.artifacts import Artifact, ArtifactWriter, run_prefix
from recloop.artifacts.kinds import Dataset, TrainedModel, TuningStudy
from recloop.config.search import Choice, FloatRange, IntRange
from recloop.config.tuning import Budget, parse_budget
from recloop.errors import ConfigError
from recloop.steps.base import StepContext, run_step
from recloop.store import FileStore
from recloop.tuning.budget import Share, share_of
from recloop.tuning.space import InvalidParams, apply_params, configured_point, space_for
from recloop.tuning.study import StudySettings, run_study

N_USERS, N_ITEMS = 40, 20


def _config(models: list[dict[str, Any]], tuning: dict[str, Any] | None = None, root: str = "file:///tmp/x") -> Any:
    raw: dict[str, Any] = {
        "name": "movies",
        "store": {"root": root},
        "data": {"interactions": {"path": "/data/ratings.csv"}},
        "models": models,
    }
    if tuning is not None:
        raw["tuning"] = tuning
    return config_mod.from_dict(raw)


# ------------------------------------------------------------------------------------------------ budget


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", Budget(seconds=1800.0)),
        ("1h30m", Budget(seconds=5400.0)),
        ("45s", Budget(seconds=45.0)),
        (900, Budget(seconds=900.0)),
        ("2h", Budget(seconds=7200.0)),
        ("40 trials", Budget(trials=40)),
        ("1 trial", Budget(trials=1)),
    ],
)
def test_budgets_parse_as_wall_time_or_trials(text: Any, expected: Budget) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["soon", "0 trials", "0m", "-5m", "30 minutes"])
def test_bad_budgets_say_what_is_expected(text: str) -> None:
    with pytest.raises(
        ConfigError, match=r"tuning.budget: .*expected a wall time like '30m'|needs at least 1|must be positive"
    ):
        _config([{"type": "ease"}], {"budget": text})


def test_a_time_budget_is_split_by_model_cost_and_a_trial_budget_is_per_candidate() -> None:
    cfg = _config([{"type": "popularity"}, {"type": "ease"}, {"type": "sasrec"}], {"budget": "725s"})
    tuned = list(cfg.models)
    # costs 0.25 + 1 + 6 = 7.25: 725 s give 25 s, 100 s and 600 s.
    assert [share_of(cfg.tuning, m, tuned) for m in tuned] == [
        Share(seconds=25.0, trials=100),
        Share(seconds=100.0, trials=100),
        Share(seconds=600.0, trials=100),
    ]
    by_trials = _config([{"type": "ease"}, {"type": "sasrec"}], {"budget": "12 trials"})
    assert {share_of(by_trials.tuning, m, list(by_trials.models)) for m in by_trials.models} == {
        Share(seconds=None, trials=12)
    }


# ------------------------------------------------------------------------------------------------ spaces


def test_spaces_default_per_model_type_and_are_replaced_per_candidate() -> None:
    cfg = _config(
        [
            {"type": "ease"},
            {"type": "itemknn"},
            {"type": "llm_rerank", "base": {"type": "ease"}, "backend": "local", "model_path": "/m"},
        ],
        {"budget": "10m", "spaces": {"itemknn": {"neighbours": {"low": 5, "high": 50}}}},
    )
    ease, itemknn, rerank = cfg.models
    assert space_for(cfg.tuning, ease) == {"lambda": FloatRange(low=1.0, high=1e5, log=True)}
    assert space_for(cfg.tuning, itemknn) == {"neighbours": IntRange(low=5, high=50)}
    assert space_for(cfg.tuning, rerank) == {}  # no default space: not tuned
    off = _config([{"type": "ease"}])
    assert space_for(off.tuning, off.models[0]) == {}
    only = _config([{"type": "ease"}, {"type": "mf"}], {"budget": "10m", "candidates": ["mf"]})
    assert [bool(space_for(only.tuning, m)) for m in only.models] == [False, True]


def test_choice_ranges_and_round_trip_through_yaml_dumps() -> None:
    cfg = _config(
        [{"type": "sasrec"}],
        {
            "budget": "5 trials",
            "spaces": {"sasrec": {"dim": {"choice": [32, 64]}, "lr": {"low": 1e-4, "high": 1e-2, "log": True}}},
        },
    )
    assert cfg.tuning.spaces["sasrec"] == {
        "dim": Choice(choice=[32, 64]),
        "lr": FloatRange(low=1e-4, high=1e-2, log=True),
    }
    dumped = cfg.model_dump(mode="json", by_alias=True)
    assert dumped["tuning"]["budget"] == "5 trials"
    assert config_mod.from_dict(dumped).tuning == cfg.tuning


def test_spaces_must_name_configured_candidates_and_their_parameters() -> None:
    with pytest.raises(ConfigError) as err:
        _config([{"type": "ease"}], {"budget": "5m", "spaces": {"ease": {"lamda": {"low": 1.0, "high": 10.0}}}})
    assert (
        "tuning.spaces.ease: lamda is not a parameter of model type 'ease'; its parameters: lambda, max_items, seed, use_weights"
        in str(err.value)
    )
    with pytest.raises(ConfigError, match="tuning.candidates: unknown candidate\\(s\\) 'sasrec'; configured: ease"):
        _config([{"type": "ease"}], {"budget": "5m", "candidates": ["sasrec"]})
    with pytest.raises(ConfigError, match=r"low \(5.0\) must not exceed high \(1.0\)"):
        _config([{"type": "ease"}], {"budget": "5m", "spaces": {"ease": {"lambda": {"low": 5.0, "high": 1.0}}}})


def test_params_are_validated_like_a_config_entry() -> None:
    cfg = _config([{"type": "sasrec", "dim": 64, "heads": 2}])
    tuned = apply_params(cfg.models[0], {"dim": 32, "lr": 0.002})
    assert (tuned.dim, tuned.heads, tuned.lr, tuned.epochs) == (32, 2, 0.002, 100)
    with pytest.raises(InvalidParams, match=r"dim \(30\) must be divisible by heads \(4\)"):
        apply_params(cfg.models[0], {"dim": 30, "heads": 4})


# ------------------------------------------------------------------------------------------------ study


def _quadratic(params: dict[str, Any], report: Any) -> float:
    return -((params["x"] - 3.0) ** 2)


def test_a_trial_budget_gives_the_same_best_params_twice() -> None:
    space = {"x": FloatRange(low=0.0, high=10.0)}
    runs = [
        run_study(space, _quadratic, StudySettings(name="s", share=Share(None, 12), startup_trials=4), lambda _m: None)
        for _ in range(2)
    ]
    assert runs[0].best_params == runs[1].best_params
    assert runs[0].trials["params"].tolist() == runs[1].trials["params"].tolist()
    assert len(runs[0].trials) == 12 and runs[0].states == {"complete": 12}
    assert abs(runs[0].best_params["x"] - 3.0) < 1.5


def test_trials_whose_validation_curve_trails_the_median_are_pruned() -> None:
    def curve(params: dict[str, Any], report: Any) -> float:
        value = 0.0
        for epoch in range(1, 11):
            value = 0.1 * epoch if params["good"] else 0.01
            report(epoch, value)
        return value

    space = {"good": Choice(choice=[True, False]), "noise": FloatRange(low=0.0, high=1.0)}
    outcome = run_study(space, curve, StudySettings(name="p", share=Share(None, 16), startup_trials=2), lambda _m: None)
    trials = outcome.trials
    pruned = trials[trials["state"] == "pruned"]
    assert len(pruned) > 0
    assert all(not json.loads(p)["good"] for p in pruned["params"])
    assert outcome.best_params["good"] is True and outcome.best_value == pytest.approx(1.0)
    # The curve is kept per trial: (epoch, value) pairs up to where it stopped.
    assert json.loads(trials.loc[trials["value"].idxmax(), "curve"]) == [
        [e, pytest.approx(0.1 * e)] for e in range(1, 11)
    ]


def test_a_time_share_cuts_the_running_trial_at_its_next_validation_check() -> None:
    calls = []

    def first_quick_then_slow(params: dict[str, Any], report: Any) -> float:
        calls.append(report.trial_number)
        for epoch in range(1, 6 if len(calls) == 1 else 1000):
            time.sleep(0.02)
            report(epoch, 0.5)
        return 0.5

    started = time.monotonic()
    outcome = run_study(
        {"x": FloatRange(low=0.0, high=1.0)},
        first_quick_then_slow,
        StudySettings(name="t", share=Share(seconds=0.5, trials=100), pruning=False),
        lambda _m: None,
    )
    assert time.monotonic() - started < 5
    assert outcome.trials["state"].tolist() == ["complete", "pruned"]
    assert outcome.trials["note"].tolist() == ["", "stopped: the candidate's budget ran out"]
    assert outcome.best_trial == 0 and outcome.best_value == 0.5


def test_the_first_trial_finishes_past_the_share_and_no_other_starts() -> None:
    # Until a trial completes, the running one is the fit train would do anyway (and then reuses).
    def overrunning(params: dict[str, Any], report: Any) -> float:
        for epoch in range(1, 16):
            time.sleep(0.02)
            report(epoch, 0.25)
        return 0.25

    outcome = run_study(
        {"x": FloatRange(low=0.0, high=1.0)},
        overrunning,
        StudySettings(name="t", share=Share(seconds=0.1, trials=100), pruning=False),
        lambda _m: None,
    )
    assert outcome.trials["state"].tolist() == ["complete"]
    assert outcome.best_trial == 0 and outcome.best_value == 0.25


def test_a_rerun_resumes_the_study_from_its_journal(tmp_path: Path) -> None:
    import optuna

    journal = tmp_path / "journal.log"
    space = {"x": FloatRange(low=0.0, high=10.0)}
    first = run_study(space, _quadratic, StudySettings(name="r", share=Share(None, 3), journal_path=journal), print)
    # An interrupted run leaves a trial RUNNING in the journal: the rerun marks it failed and carries on.
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    stale = optuna.load_study(study_name="r", storage=JournalStorage(JournalFileBackend(str(journal))))
    stale.ask()
    logs: list[str] = []
    second = run_study(
        space, _quadratic, StudySettings(name="r", share=Share(None, 6), journal_path=journal), logs.append
    )
    assert second.resumed_trials == 4  # 3 complete + 1 interrupted
    assert second.trials["params"].tolist()[:3] == first.trials["params"].tolist()
    assert second.trials["state"].tolist() == ["complete"] * 3 + ["fail"] + ["complete"] * 2
    assert logs[0].startswith("resuming study r: 4 trials done")


@pytest.mark.slow
def test_parallel_workers_share_one_study_on_postgresql(tmp_path: Path) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    try:
        sqlalchemy.create_engine(url).connect().close()
    except Exception as exc:  # the machines running CI start PostgreSQL; a laptop may not
        pytest.skip(f"PostgreSQL at {url} is not reachable: {exc}")
    pids = tmp_path / "pids"
    pids.mkdir()

    def objective(params: dict[str, Any], report: Any) -> float:
        (pids / f"{os.getpid()}-{uuid.uuid4().hex}").touch()
        time.sleep(0.2)
        return -((params["x"] - 3.0) ** 2)

    name = f"recloop-test-{uuid.uuid4().hex}"
    outcome = run_study(
        {"x": FloatRange(low=0.0, high=10.0)},
        objective,
        StudySettings(name=name, share=Share(None, 8), parallel=2, storage_url=url),
        lambda _m: None,
    )
    assert len(outcome.trials) == 8 and outcome.states == {"complete": 8}
    assert len({p.name.split("-")[0] for p in pids.iterdir()}) == 2  # two processes ran trials
    import optuna

    optuna.delete_study(study_name=name, storage=url)


# ------------------------------------------------------------------------------------------------ the step


def _write_preprocess(store: FileStore, run_id: str = "r1") -> None:
    rng = np.random.default_rng(0)
    rows = []
    for user in range(N_USERS):
        block = np.arange(0, 10) if user % 2 else np.arange(10, 20)
        for order, item in enumerate(rng.permutation(block)[:8]):
            rows.append((user, int(item), 1_700_000_000 + user * 1000 + order * 10))
    events = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).astype(
        {"user_idx": np.int32, "item_idx": np.int32, "timestamp": np.int64}
    )
    events["weight"] = np.float32(1.0)
    from_end = events.groupby("user_idx").cumcount(ascending=False)
    with ArtifactWriter(store, run_prefix(run_id, "preprocess"), step="preprocess", run_id=run_id) as w:
        w.put_parquet(Dataset.TRAIN, events[from_end >= 2])
        w.put_parquet(Dataset.VALID, events[from_end == 1])
        w.put_parquet(Dataset.TEST, events[from_end == 0])
        w.summary.update({"n_users": N_USERS, "n_items": N_ITEMS})


def _ctx(store: FileStore, models: list[dict[str, Any]], tuning: dict[str, Any] | None, log: list[str]) -> StepContext:
    ctx = StepContext(config=_config(models, tuning, root=store.root), store=store, run_id="r1")
    ctx.log = log.append
    return ctx


def test_tune_searches_on_valid_only_and_train_fits_the_best_params(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}/store")
    _write_preprocess(store)
    (tmp_path / "store/runs/r1/preprocess" / Dataset.TEST).unlink()  # tune and train must never need it
    log: list[str] = []
    models = [{"type": "ease", "lambda": 100}, {"type": "mf", "factors": 4, "epochs": 6, "patience": 2}]
    ctx = _ctx(store, models, {"budget": "4 trials", "startup_trials": 2}, log)
    for name in ("ease", "mf"):
        run_step("tune", ctx, candidate=name)
        run_step("train", ctx, candidate=name)
    study = TuningStudy.open(store, "runs/r1/tune/ease")
    record = study.study()
    assert record["tuned"] is True and record["n_trials"] == 4 and record["budget"] == "4 trials"
    assert record["space"] == {"lambda": "[1, 100000] log"}
    assert record["best_value"] == pytest.approx(study.trials()["value"].max())
    assert set(study.trials().columns) == {"number", "state", "value", "seconds", "params", "curve", "note"}
    report = Artifact.open(store, "runs/r1/train/ease").read_json(TrainedModel.REPORT)
    assert report["tuned_params"] == record["best_params"]
    assert report["config"]["lambda"] == record["best_params"]["lambda"]
    # The tuned configuration refits to the best trial's validation score (same data, same seed).
    assert report["best_valid_metric"] == pytest.approx(record["best_value"], abs=1e-9)
    mf_trials = TuningStudy.open(store, "runs/r1/tune/mf").trials()
    assert all(len(json.loads(c)) >= 1 for c in mf_trials["curve"])  # MF reports every validation check
    assert store.list("_staging/runs/r1/tune/_journal") == []  # the resume journal goes once the study is committed
    assert store.exists("runs/r1/tune/ease/" + TuningStudy.JOURNAL)


def test_without_a_budget_tune_commits_at_once_and_train_keeps_the_configured_params(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}/store")
    _write_preprocess(store)
    log: list[str] = []
    ctx = _ctx(store, [{"type": "ease", "lambda": 100}], None, log)
    run_step("tune", ctx, candidate="ease")
    run_step("train", ctx, candidate="ease")
    study = TuningStudy.open(store, "runs/r1/tune/ease")
    assert study.study() == {
        "tuned": False,
        "reason": "tuning is off (set tuning.budget, e.g. `tuning: {budget: 30m}`)",
        "best_params": {},
    }
    assert len(study.trials()) == 0
    assert (
        "tune: ease is not tuned: tuning is off (set tuning.budget, e.g. `tuning: {budget: 30m}`); train uses its configured parameters"
        in log
    )
    report = Artifact.open(store, "runs/r1/train/ease").read_json(TrainedModel.REPORT)
    assert report["tuned_params"] == {} and report["config"]["lambda"] == 100


def test_a_trial_budget_finds_the_same_best_params_in_every_run(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}/store")
    found = []
    for run_id in ("r1", "another-run"):
        _write_preprocess(store, run_id)
        ctx = _ctx(store, [{"type": "itemknn"}], {"budget": "4 trials", "startup_trials": 2}, [])
        ctx.run_id = run_id
        run_step("tune", ctx, candidate="itemknn")
        study = TuningStudy.open(store, f"runs/{run_id}/tune/itemknn")
        found.append((study.best_params(), study.trials()["params"].tolist()))
    assert found[0] == found[1]


def test_the_configured_values_are_the_first_trial_so_tuning_never_ends_below_them(tmp_path: Path) -> None:
    cfg = _config([{"type": "sasrec", "dim": 64, "lr": 0.01, "epochs": 30, "max_len": 77}], {"budget": "3 trials"})
    # lr 0.01 and max_len 77 lie outside the default space: the search draws them; the rest start as configured.
    assert configured_point(cfg.models[0], space_for(cfg.tuning, cfg.models[0])) == {
        "dim": 64,
        "layers": 2,
        "dropout": 0.2,
        "lr_schedule": "constant",
        "epochs": 30,
    }
    store = FileStore(f"file://{tmp_path}/store")
    _write_preprocess(store)
    ctx = _ctx(store, [{"type": "ease", "lambda": 100}], {"budget": "3 trials"}, [])
    run_step("tune", ctx, candidate="ease")
    study = TuningStudy.open(store, "runs/r1/tune/ease")
    trials = study.trials()
    assert json.loads(trials["params"].iloc[0]) == {"lambda": 100.0}
    assert study.study()["best_value"] >= trials["value"].iloc[0]


def test_train_keeps_the_best_trials_model_and_fits_again_only_when_asked_or_when_the_config_changed(
    tmp_path: Path,
) -> None:
    store = FileStore(f"file://{tmp_path}/store")
    _write_preprocess(store)
    models = [{"type": "mf", "factors": 4, "epochs": 6, "patience": 2}]
    log: list[str] = []
    ctx = _ctx(store, models, {"budget": "4 trials", "startup_trials": 2}, log)
    run_step("tune", ctx, candidate="mf")
    run_step("train", ctx, candidate="mf")
    study = TuningStudy.open(store, "runs/r1/tune/mf")
    best = study.study()["best_trial"]
    fit = study.best_fit()
    assert fit is not None and fit["trial"] == best and fit["value"] == pytest.approx(study.study()["best_value"])
    trained = Artifact.open(store, "runs/r1/train/mf")
    report = trained.read_json(TrainedModel.REPORT)
    assert report["reused_trial"] == best
    assert report["train_seconds"] == fit["seconds"] and report["history"] == fit["history"] != []
    assert report["best_valid_metric"] == pytest.approx(fit["value"], abs=1e-9)
    kept = study.artifact.manifest.files[f"{TuningStudy.BEST_MODEL}/{TrainedModel.ARRAYS}"].sha256
    assert trained.manifest.files[TrainedModel.ARRAYS].sha256 == kept  # the very same arrays
    assert any(f"kept the model of tuning trial {best}" in line for line in log)

    # refit: true fits the best parameters again, to the same validation score (same splits, same seed).
    refit_ctx = _ctx(store, models, {"budget": "4 trials", "startup_trials": 2, "refit": True}, [])
    run_step("train", refit_ctx, candidate="mf")
    refit = Artifact.open(store, "runs/r1/train/mf").read_json(TrainedModel.REPORT)
    assert refit["reused_trial"] is None
    assert refit["best_valid_metric"] == pytest.approx(fit["value"], abs=1e-6)

    # A config changed since the tune step (another seed) is never answered with the kept model.
    log.clear()
    changed = _ctx(store, [{**models[0], "seed": 7}], {"budget": "4 trials", "startup_trials": 2}, log)
    run_step("train", changed, candidate="mf")
    assert Artifact.open(store, "runs/r1/train/mf").read_json(TrainedModel.REPORT)["reused_trial"] is None
    assert "train: mf: the config or splits changed since the tune step; fitting again" in log
