"""The ranking stage against its retrievers, and how its gain grows with the number of labels.

    .venv/bin/python bench/ranker.py                          # synthetic (user and context effects) and MovieLens
    .venv/bin/python bench/ranker.py --data synthetic --label-shares 0.05,0.2

For each data set, through the real ingest and preprocess steps (leave-last-out, full ranking, seen items
excluded, test history = train + valid): each retriever alone, then the `ranker` over them at several
`label_share` values (more labels, fewer events for the retrievers' first fit). Per row: test NDCG@10
with a 95 % bootstrap CI over users, and for the rankers the labels they learned from and the paired
difference to the best retriever (chosen on validation) with its CI, measured in the same run.

Data: synthetic = `recloop data synth` with user and context effects (2,000 users, 500 items; age group
and region as user attributes, the ranker's only view of the effects: device and time are not features
yet); MovieLens latest-small from ../shared/datasets (genres are the categories, title + genres + tags the
text; no user attributes).
Target: the ranker at the default label_share (0.2) does not lose to its best retriever by more than
noise (the upper end of the paired difference's CI is above 0); on synthetic data it beats it (the lower
end is above 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEFAULT_STORE, REPO, prepare  # noqa: E402

K = 10
RESAMPLES = 2000
DEFAULT_SHARE = 0.2
RETRIEVERS = [
    {"type": "itemknn", "neighbours": 200, "shrinkage": 10.0, "weighting": "bm25"},
    {"type": "ease", "lambda": 300.0},
    {"type": "mf", "factors": 64, "regularization": 1.0, "alpha": 10.0, "epochs": 20, "patience": 3},
    {"type": "popularity"},
]


def synthetic_config(folder: Path) -> Path:
    from recloop.data.synth import generate

    paths = generate(2000, 500, seed=11, user_effect=1.0, context_effect=1.0).write(folder / "data")
    config = folder / "synthetic.yaml"
    config.write_text(
        "name: ranker-bench\n"
        f"store: {{root: 'file://{folder / 'store'}'}}\n"
        "data:\n"
        f"  interactions: {{path: '{paths['interactions']}', columns: {{user: user_id, item: item_id, "
        "timestamp: timestamp, rating: rating}, timestamp_unit: s}\n"
        f"  items: {{path: '{paths['items']}', id: item_id, category: category, text: '{{title}}. {{description}}'}}\n"
        f"  users: {{path: '{paths['users']}', id: user_id, attributes: {{age_group: {{type: categorical}}, "
        "region: {type: categorical}}}\n"
        "preprocess: {min_user_interactions: 5, split: {method: leave_last_out}}\n"
        "models: [{type: popularity}]\n"
    )
    return config


def per_user_ndcg(queries: Any, model: Any) -> np.ndarray:
    from recloop.evaluation.protocols import model_scorer, rank
    from recloop.models.ranking_metrics import ranking_metrics

    recs = rank(queries, model_scorer(model), K)
    return np.asarray(ranking_metrics(recs, queries.targets, [K], metrics=("ndcg",))[f"ndcg@{K}"], dtype=np.float64)


def ci(values: np.ndarray) -> tuple[float, float]:
    from recloop.evaluation.bootstrap import bootstrap_means

    means = bootstrap_means(values, RESAMPLES, seed=0)[:, 0]
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def run(name: str, config: Path, store: Path, shares: list[float]) -> tuple[list[str], list[str]]:
    from recloop.evaluation.bootstrap import paired_bootstrap
    from recloop.evaluation.protocols import build_queries, load_split
    from recloop.models import registry
    from recloop.models.base import FitContext
    from recloop.models.early_stopping import validation_ndcg

    data, preprocess = prepare(config, store, embed_texts=True)
    queries = build_queries(load_split(preprocess), "test", exclude_seen=True)
    context = FitContext(items=data.items, users=data.users, log=lambda _m: None)
    lines = [
        f"| {name} | model | label_share | positives | valid NDCG@10 | test NDCG@10 (95 % CI) | vs best retriever (CI) | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    retrievers: dict[str, tuple[float, np.ndarray]] = {}
    for params in RETRIEVERS:
        cls = registry.get(params["type"])
        started = time.perf_counter()
        model = cls(cls.config_cls.model_validate(params)).fit(data.train, data.valid, context)
        seconds = time.perf_counter() - started
        valid, test = validation_ndcg(model, data.valid), per_user_ndcg(queries, model)
        retrievers[params["type"]] = (valid, test)
        low, high = ci(test)
        lines.append(
            f"| {name} | {params['type']} | – | – | {valid:.4f} | {test.mean():.4f} ({low:.4f}–{high:.4f}) | – | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    best_name = max(retrievers, key=lambda n: retrievers[n][0])  # chosen on validation
    best = retrievers[best_name][1]
    targets = []
    for share in shares:
        cls = registry.get("ranker")
        config_ = cls.config_cls.model_validate({"type": "ranker", "retrievers": RETRIEVERS, "label_share": share})
        started = time.perf_counter()
        ranker = cls(config_).fit(data.train, data.valid, context)
        seconds = time.perf_counter() - started
        valid, test = validation_ndcg(ranker, data.valid), per_user_ndcg(queries, ranker)
        diff = paired_bootstrap(test, best, RESAMPLES, seed=0)
        low, high = ci(test)
        positives = ranker.fit_report.get("positive_rows", 0)
        lines.append(
            f"| {name} | ranker | {share:g} | {positives} | {valid:.4f} | {test.mean():.4f} ({low:.4f}–{high:.4f}) | "
            f"{diff.diff:+.4f} ({diff.ci_low:+.4f}..{diff.ci_high:+.4f}) vs {best_name} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
        if share == DEFAULT_SHARE:
            if name == "synthetic":
                ok, what = diff.ci_low > 0, "beats its best retriever (CI above 0)"
            else:
                ok, what = diff.ci_high > 0, "does not lose to its best retriever beyond noise (CI reaches 0)"
            targets.append(
                f"target {name}: the ranker {what}: {'met' if ok else 'MISSED'} "
                f"({diff.diff:+.4f}, {diff.ci_low:+.4f}..{diff.ci_high:+.4f} vs {best_name})"
            )
    return lines, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic,movielens", help="comma-separated: synthetic, movielens")
    parser.add_argument("--label-shares", default="0.05,0.1,0.2,0.3", help="label_share values of the ranker rows")
    args = parser.parse_args(argv)
    shares = [float(s) for s in args.label_shares.split(",")]
    if DEFAULT_SHARE not in shares:
        shares.append(DEFAULT_SHARE)
    tables, targets = [], []
    with tempfile.TemporaryDirectory(prefix="recloop-ranker-bench-") as tmp:
        for name in args.data.split(","):
            if name == "synthetic":
                config, store = synthetic_config(Path(tmp)), Path(tmp) / "store"
            elif name == "movielens":
                config, store = REPO / "configs" / "movielens.yaml", DEFAULT_STORE
            else:
                parser.error(f"unknown data set {name!r}; use synthetic or movielens")
            lines, found = run(name, config, store, shares)
            tables.append("\n".join(lines))
            targets += found
    print()
    print("\n\n".join(tables))
    print()
    for line in targets:
        print(line)
    return 0 if all(": met " in t for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
