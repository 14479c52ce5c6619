"""Metric names as written in configs (`ndcg@10`): pure facts shared by config validation and evaluation."""

from __future__ import annotations

# Accuracy metrics: one value per user, averaged.
ACCURACY_METRICS: tuple[str, ...] = ("hr", "recall", "precision", "f1", "ndcg", "mrr", "map")
# Beyond-accuracy metrics where higher means better (so `>=` thresholds make sense for them).
BEYOND_ACCURACY_METRICS: tuple[str, ...] = ("coverage", "novelty", "diversity")
# Popularity-bias metrics: lower means less bias; reported, never gated.
BIAS_METRICS: tuple[str, ...] = ("arp", "head_share")
# Names a gate threshold or `evaluation.primary` may use.
GATEABLE_METRICS: tuple[str, ...] = ACCURACY_METRICS + BEYOND_ACCURACY_METRICS
ALL_METRICS: tuple[str, ...] = GATEABLE_METRICS + BIAS_METRICS

METRIC_LABELS: dict[str, str] = {
    "hr": "Hit rate",
    "recall": "Recall",
    "precision": "Precision",
    "f1": "F1",
    "ndcg": "NDCG",
    "mrr": "MRR",
    "map": "MAP",
    "coverage": "Catalog coverage",
    "novelty": "Novelty (bits)",
    "diversity": "Intra-list diversity",
    "arp": "Avg. rec. popularity",
    "head_share": "Head-item share",
}


def split_metric(name: str, allowed: tuple[str, ...] = ALL_METRICS) -> tuple[str, int]:
    """'ndcg@10' -> ('ndcg', 10); ValueError naming the allowed metrics otherwise."""
    base, sep, k = str(name).partition("@")
    if not sep or not k.isdigit() or int(k) < 1:
        raise ValueError(f"metric must look like 'ndcg@10' (name@k, k >= 1) (got {name!r})")
    if base not in allowed:
        raise ValueError(f"unknown metric {base!r} in {name!r}; use one of: {', '.join(allowed)}")
    return base, int(k)
