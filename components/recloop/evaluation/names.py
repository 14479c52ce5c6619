"""Metric names as written in configs (`ndcg@10`). They are defined in `recloop.config.metrics` (config
validation needs them and config is a layer below evaluation); evaluation code imports them from here."""

from __future__ import annotations

from recloop.config.metrics import (  # noqa: F401 (this module's interface for the evaluation layer)
    ACCURACY_METRICS,
    ALL_METRICS,
    BEYOND_ACCURACY_METRICS,
    BIAS_METRICS,
    GATEABLE_METRICS,
    METRIC_LABELS,
    split_metric,
)
