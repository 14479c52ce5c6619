"""Recommendation quality benchmark on MovieLens latest-small (leave-last-out, full ranking).

    .venv/bin/python bench/quality.py [--config configs/movielens.yaml] [--models ease,mf] [--out results.json]

The data go through the real `ingest` and `preprocess` steps (into a throw-away store; validation is
skipped, it does not change the data when it passes). Each model family has a small hyper-parameter grid;
the configuration with the best NDCG@10 on the VALID split is kept (the test split is never looked at for
choices). That model, trained on train only as the pipeline does, then ranks every item for each test
user from their train + valid history, seen items excluded, with the evaluate step's own query builder,
ranking and metrics (`recloop.evaluation`), so the numbers match what `recloop run` reports.

Checks (exit status 1 if one fails):
  * EASE, item-kNN and MF each beat popularity clearly: test NDCG@10 at least 1.5x popularity's;
  * recloop's EASE is within 2 % (test NDCG@10) of a direct numpy implementation of the closed form
    B = I - P / diag(P), P = (X^T X + lambda I)^-1, on the same split with the chosen lambda.

To add a model family: put its grid in GRIDS (and, for a new baseline check, extend check()).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "movielens.yaml"
K = 10
CLEAR_MARGIN = 1.5  # "clearly better than popularity": at least this times its test NDCG@10
EASE_REFERENCE_TOLERANCE = 0.02

# Small grids, chosen on validation NDCG@10. Keys are model config fields as written in YAML.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}, {"half_life": "365d"}, {"window": "730d"}],
    "itemknn": [{"neighbours": n, "shrinkage": 10.0, "weighting": w} for n in (50, 200) for w in ("none", "bm25")],
    "ease": [{"lambda": lam} for lam in (100.0, 300.0, 1000.0)],
    "mf": [{"factors": f, "regularization": reg, "alpha": a, "epochs": 20, "patience": 3}
           for f, reg, a in ((64, 0.05, 10.0), (64, 1.0, 10.0), (128, 1.0, 10.0), (128, 5.0, 20.0))],
}


@dataclass
class Result:
    family: str
    params: dict[str, Any]
    valid_ndcg: float
    test: dict[str, float]
    train_seconds: float
    score_seconds: float
    tried: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def prepare(config_path: Path, store_root: Path):
    """Run the real ingest and preprocess steps; returns (training data, preprocess artifact)."""
    from recloop import config as config_mod
    from recloop.steps.base import StepContext, run_step
    from recloop.steps.train import load_training_data
    from recloop.store import open_store

    cfg = config_mod.load(config_path, overrides={"store.root": f"file://{store_root}"})
    ctx = StepContext(config=cfg, store=open_store(cfg.store), run_id="bench-quality", log=lambda m: None)
    run_step("ingest", ctx)
    manifest = run_step("preprocess", ctx, inputs={"ingest": ctx.store.uri("runs/bench-quality/ingest")})
    preprocess = ctx.open(manifest.uri)
    return load_training_data(preprocess), preprocess


def test_metrics(queries, score_fn: Callable) -> tuple[dict[str, float], float]:
    """Test NDCG/HR/MRR@K with the evaluate step's ranking; and the seconds scoring took."""
    from recloop.evaluation.metrics import ranking_metrics
    from recloop.evaluation.protocols import rank

    start = time.perf_counter()
    recs = rank(queries, score_fn, K)
    seconds = time.perf_counter() - start
    values = ranking_metrics(recs, queries.targets, [K], metrics=("ndcg", "hr", "mrr"))
    return {name: float(v.mean()) for name, v in values.items()}, seconds


def tune(family: str, grid: list[dict[str, Any]], data, log: Callable[[str], None]):
    """Fit every grid point on train, keep the best on valid NDCG@10. Returns (model, params, valid, s, tried)."""
    from recloop.models import registry
    from recloop.models.early_stopping import validation_ndcg

    cls = registry.get(family)
    best = None
    tried = []
    for params in grid:
        model = cls(cls.config_cls.model_validate({"type": family, **params}))
        start = time.perf_counter()
        model.fit(data.train, data.valid)
        seconds = time.perf_counter() - start
        valid = validation_ndcg(model, data.valid)
        tried.append((params, valid))
        log(f"  {family:<10} {_params(params):<62} valid ndcg@{K}={valid:.4f}  fit {seconds:6.1f}s")
        if best is None or valid > best[2]:
            best = (model, params, valid, seconds)
        else:
            del model  # EASE holds an n_items^2 matrix; keep one at a time
    assert best is not None
    return (*best, tried)


def ease_reference_scores(train, l2: float) -> Callable:
    """The closed form written directly in numpy (general inverse, float64): the accuracy reference."""
    x = train.to_csr(binary=True).astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return lambda histories, users: np.asarray(histories.to_csr(binary=True) @ b)


def check(results: dict[str, Result], ease_reference: float | None) -> list[str]:
    failures = []
    pop = results.get("popularity")
    if pop is not None:
        for family in ("ease", "itemknn", "mf"):
            if family in results:
                mine, base = results[family].test[f"ndcg@{K}"], pop.test[f"ndcg@{K}"]
                if mine < CLEAR_MARGIN * base:
                    failures.append(f"{family} test ndcg@{K} {mine:.4f} is not >= {CLEAR_MARGIN} x popularity "
                                    f"({base:.4f})")
    if ease_reference is not None and "ease" in results:
        mine = results["ease"].test[f"ndcg@{K}"]
        gap = abs(mine - ease_reference) / ease_reference
        if gap > EASE_REFERENCE_TOLERANCE:
            failures.append(f"recloop EASE ndcg@{K} {mine:.4f} differs from the numpy reference {ease_reference:.4f} "
                            f"by {gap:.1%} (> {EASE_REFERENCE_TOLERANCE:.0%})")
    return failures


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "defaults"


def table(results: dict[str, Result], ease_reference: float | None) -> str:
    head = (f"{'model':<11} {'chosen on valid':<58} {'valid':>7} {'NDCG@10':>8} {'HR@10':>7} {'MRR@10':>7} "
            f"{'train s':>8} {'score s':>8}")
    lines = [head, "-" * len(head)]
    for r in results.values():
        lines.append(f"{r.family:<11} {_params(r.params):<58} {r.valid_ndcg:7.4f} {r.test[f'ndcg@{K}']:8.4f} "
                     f"{r.test[f'hr@{K}']:7.4f} {r.test[f'mrr@{K}']:7.4f} {r.train_seconds:8.1f} "
                     f"{r.score_seconds:8.2f}")
    if ease_reference is not None:
        lines.append(f"{'ease-numpy':<11} {'reference closed form, same lambda':<58} {'':>7} {ease_reference:8.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config naming the data")
    parser.add_argument("--models", default=",".join(GRIDS), help="comma-separated model families to run")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-reference", action="store_true", help="skip the numpy EASE reference")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.models.split(",") if f.strip()]
    unknown = [f for f in families if f not in GRIDS]
    if unknown:
        parser.error(f"unknown model families {unknown}; known: {', '.join(GRIDS)}")

    from recloop.evaluation.protocols import build_queries, load_split

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recloop-bench-") as tmp:
        data, preprocess = prepare(args.config, Path(tmp) / "store")
        split = load_split(preprocess)
        queries = build_queries(split, "test", exclude_seen=True)
        log(f"data: {data.n_users} users, {data.n_items} items, {len(data.train)} train / {len(data.valid)} valid "
            f"events; {len(queries)} test users (history = train + valid, seen items excluded, full ranking)")
        results: dict[str, Result] = {}
        ease_reference = None
        for family in families:
            model, params, valid, train_seconds, tried = tune(family, GRIDS[family], data, log)
            metrics, score_seconds = test_metrics(queries, model.score_histories)
            results[family] = Result(family, params, valid, metrics, train_seconds, score_seconds, tried)
            if family == "ease" and not args.no_reference:
                ref_metrics, _ = test_metrics(queries, ease_reference_scores(data.train, model.config.l2))
                ease_reference = ref_metrics[f"ndcg@{K}"]
            del model
    log("")
    log(table(results, ease_reference))
    failures = check(results, ease_reference)
    log(f"\ntotal {time.perf_counter() - started:.0f}s; " + ("all checks passed" if not failures else "FAILED:"))
    for failure in failures:
        log(f"  - {failure}")
    if args.out:
        args.out.write_text(json.dumps({
            "k": K, "results": {f: vars(r) for f, r in results.items()}, "ease_reference_ndcg": ease_reference,
            "failures": failures}, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
