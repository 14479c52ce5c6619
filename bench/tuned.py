"""Tuned vs hand-tuned quality on MovieLens latest-small: does `recloop init` + the tune step find
settings as good as the hand-tuned ones, and does it recover from bad ones?

    .venv/bin/python bench/tuned.py [--budget 20m] [--models ease,mf] [--arms hand,init,init-tuned,bad-tuned]
    .venv/bin/python bench/quality.py --tuned ...          (the same)

Arms, each a real in-process pipeline run (ingest → ... → evaluate) under its own run id in one store
under .recloop/bench/tuned/ (git ignores it; the store's text-embedding cache serves every arm):
  hand        configs/movielens.yaml as committed (hand-tuned on this data set), no tuning;
  init        the config `recloop init` writes for the raw files, with tuning off (model defaults);
  init-tuned  the same config with `tuning.budget` (the default budget, or --budget);
  bad-tuned   configs/movielens.yaml with deliberately bad parameters, tuned with the same budget
              (parameters inside the search space are re-drawn by the search; the arm shows it recovers).
Per candidate: validation NDCG@10 (train's `best_valid_metric`), test NDCG@10 (the evaluate step, full
ranking, bootstrap CI), trials and tune seconds; the last column is the ratio of test NDCG@10 to the
`hand` arm's, measured in the same run. Choices are made on validation only, by the tune step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HAND_CONFIG = REPO / "configs" / "movielens.yaml"
DATA = REPO.parent / "shared" / "datasets" / "ml-latest-small"
STORE = REPO / ".recloop" / "bench" / "tuned"
ARMS = ("hand", "init", "init-tuned", "bad-tuned")
# The issue's targets for the init-tuned arm: beat a plain, hand-tuned SASRec on test NDCG@10 (its run by
# bench/sasrec_ablation.py --variants reference, committed under bench/results/), and finish in 45 minutes.
PLAIN_SASREC = REPO / "bench" / "results" / "2026-12-05-plain-sasrec-reference.json"
WHOLE_RUN_TARGET_S = 45 * 60
# Far from anything good on any data set: tiny or absurd values the search has to move away from.
BAD_PARAMS: dict[str, dict[str, Any]] = {
    "popularity": {"window": "1d"},
    "itemknn": {"neighbours": 2, "shrinkage": 0.0},
    "ease": {"lambda": 1_000_000.0},
    "mf": {"factors": 2, "regularization": 50.0, "epochs": 1},
    "text_knn": {"half_life": 0.1, "max_history": 1},
    "sasrec": {"dim": 16, "lr": 1e-5, "epochs": 2},
    "text_sasrec": {"dim": 16, "lr": 1e-5, "epochs": 2},
}


@dataclass
class Row:
    arm: str
    candidate: str
    valid: float | None
    test: float | None
    ci: tuple[float | None, float | None]
    trials: int | None
    tune_seconds: float | None
    train_seconds: float | None
    params: dict[str, Any]
    reused_trial: int | None = None  # train kept this tuning trial's model instead of fitting again


def init_config(out: Path, name: str) -> Path:
    """`recloop init` on the raw MovieLens files (what a new user runs)."""
    recloop = Path(sys.executable).parent / "recloop"
    command = [
        str(recloop), "init", "--interactions", str(DATA / "ratings.csv"), "--items", str(DATA / "movies.csv"),
        "--name", name, "--out", str(out), "--force",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"recloop init failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return out


def arm_config(arm: str, budget: str, models: list[str] | None, work: Path) -> Any:
    from recloop import config as config_mod

    if arm in ("init", "init-tuned"):
        source = init_config(work / "init.yaml", "movielens-init")
    else:
        source = HAND_CONFIG
    raw = config_mod.load_raw(source)
    if models:
        raw["models"] = [m for m in raw["models"] if (m.get("name") or m["type"]) in models]
    if arm == "bad-tuned":
        raw["models"] = [{**m, **BAD_PARAMS.get(m["type"], {})} for m in raw["models"]]
    raw["tuning"] = {**(raw.get("tuning") or {}), "budget": budget} if arm.endswith("tuned") else {}
    raw["store"] = {"root": f"file://{STORE / 'store'}"}
    raw["name"] = f"bench-{arm}"
    return config_mod.from_dict(raw, source=str(source))


def run_arm(arm: str, budget: str, models: list[str] | None, work: Path) -> list[Row]:
    from recloop.pipeline import run_pipeline
    from recloop.steps.base import StepContext

    cfg = arm_config(arm, budget, models, work)
    ctx = StepContext.from_config(cfg, run_id=arm, log=lambda m: print(f"  [{arm}] {m}", flush=True))
    steps = ("ingest", "preprocess", "tune", "train", "evaluate")
    result = run_pipeline(ctx, steps=steps)
    candidates = (result.metrics or {}).get("candidates") or {}
    rows = []
    for name, block in candidates.items():
        ndcg = (block.get("metrics") or {}).get("ndcg@10") or {}
        train = block.get("train") or {}
        study = _study(ctx, name)
        rows.append(
            Row(
                arm=arm,
                candidate=name,
                valid=train.get("best_valid_metric"),
                test=ndcg.get("value"),
                ci=(ndcg.get("ci_low"), ndcg.get("ci_high")),
                trials=study.get("n_trials"),
                tune_seconds=study.get("seconds"),
                train_seconds=train.get("train_seconds"),
                params=study.get("best_params") or {},
                reused_trial=_train_report(ctx, name).get("reused_trial"),
            )
        )
    return rows


def _study(ctx: Any, candidate: str) -> dict[str, Any]:
    from recloop.artifacts.kinds import TuningStudy

    try:
        return TuningStudy.open(ctx.store, f"runs/{ctx.run_id}/tune/{candidate}").study()
    except Exception:  # an arm without the tune step's artifact: nothing to show
        return {}


def _train_report(ctx: Any, candidate: str) -> dict[str, Any]:
    from recloop.artifacts import Artifact
    from recloop.artifacts.kinds import TrainedModel

    try:
        return dict(Artifact.open(ctx.store, f"runs/{ctx.run_id}/train/{candidate}").read_json(TrainedModel.REPORT))
    except Exception:  # an arm without the candidate's train artifact: nothing to show
        return {}


def table(rows: list[Row]) -> str:
    hand = {r.candidate: r.test for r in rows if r.arm == "hand"}
    lines = [
        "| arm | candidate | valid NDCG@10 | test NDCG@10 (95 % CI) | vs hand | trials | tune s | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r.test / hand[r.candidate]:.3f}" if r.test and hand.get(r.candidate) else "–"
        ci = f" ({r.ci[0]:.4f}–{r.ci[1]:.4f})" if None not in r.ci else ""
        train = _f(r.train_seconds, 0) if r.reused_trial is None else f"kept trial {r.reused_trial}"
        lines.append(
            f"| {r.arm} | {r.candidate} | {_f(r.valid)} | {_f(r.test)}{ci} | {ratio} | {r.trials or '–'} | "
            f"{_f(r.tune_seconds, 0)} | {train} |"
        )
    return "\n".join(lines)


def target_lines(rows: list[Row], whole_run_s: float, reference: Path) -> list[str]:
    """met/MISSED for the init-tuned arm: its candidate with the best validation NDCG@10 (chosen on
    validation only) against the plain SASRec's test NDCG@10, and the arm's whole run time."""
    lines = [
        f"target whole run <= {WHOLE_RUN_TARGET_S / 60:.0f} min: "
        f"{'met' if whole_run_s <= WHOLE_RUN_TARGET_S else 'MISSED'} ({whole_run_s / 60:.1f} min)"
    ]
    tuned = [r for r in rows if r.arm == "init-tuned" and r.valid is not None and r.test is not None]
    if not tuned or not reference.is_file():
        why = "no init-tuned candidate scored" if not tuned else f"no reference at {reference}"
        return lines + [f"target beat the plain SASRec on test NDCG@10: not measured ({why})"]
    plain = json.loads(reference.read_text())["rows"][0]["test_ndcg"]
    # Chosen on validation (leakage-free), and as the gate chooses what recloop serves (best on test).
    for how, best in (
        ("best on validation", max(tuned, key=lambda r: r.valid or 0.0)),
        ("the gate's choice, best on test", max(tuned, key=lambda r: r.test or 0.0)),
    ):
        test = best.test or 0.0
        lines.append(
            f"target beat the plain SASRec on test NDCG@10 ({how}): {'met' if test > plain else 'MISSED'} "
            f"({best.candidate} {test:.4f} vs {plain:.4f}, {test / plain - 1:+.1%}; reference from {reference.name})"
        )
    return lines


def _f(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from recloop.config.tuning import INIT_BUDGET

    parser.add_argument(
        "--budget",
        default=INIT_BUDGET,
        help=f"tuning budget of the tuned arms (default: recloop init's, {INIT_BUDGET})",
    )
    parser.add_argument("--models", help="comma-separated candidate names (default: every configured one)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms of {', '.join(ARMS)}")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--reference",
        type=Path,
        default=PLAIN_SASREC,
        help="plain SASRec result (bench/sasrec_ablation.py --variants reference --out) the init-tuned arm must beat",
    )
    args = parser.parse_args(argv)
    if not (DATA / "ratings.csv").is_file():
        print(f"MovieLens latest-small not found at {DATA}; see its README for where to get it", file=sys.stderr)
        return 2
    models = args.models.split(",") if args.models else None
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        print(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    work = STORE / "configs"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for arm in arms:
        started = time.perf_counter()
        rows += run_arm(arm, args.budget, models, work)
        seconds[arm] = time.perf_counter() - started
        print(f"{arm}: {seconds[arm]:.0f}s", flush=True)
    print(table(rows))
    if "init-tuned" in seconds:
        for line in target_lines(rows, seconds["init-tuned"], args.reference):
            print(line)
    if args.out:
        args.out.write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
