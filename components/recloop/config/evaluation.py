"""`evaluation:`, `gate:` and `publish:`: how candidates are measured, which may ship, under what name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from recloop.config.base import StrictModel
from recloop.config.metrics import GATEABLE_METRICS, split_metric


class ColdStartConfig(StrictModel):
    """Hold items out of training entirely, to measure how well models rank items nobody has seen."""

    item_share: float = Field(0.0, ge=0, lt=1, description="Share of items held out of training entirely.")
    seed: int = Field(0, description="Seed choosing which items are held out.")


class EvaluationConfig(StrictModel):
    """The evaluate step: metrics of every candidate (and the champion) on the held-out split."""

    k: list[int] = Field(
        default_factory=lambda: [10, 20],
        description="Cut-offs every metric is computed at (metric@k); gate and primary metrics must use one of them.",
    )
    primary: str = Field("ndcg@10", description="Metric that ranks candidates, as name@k.")
    sampled_negatives: int | None = Field(None, ge=1, description="Sampled ranking; None = full ranking.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples for 95% confidence intervals.")
    split: Literal["test", "valid"] = Field(
        "test",
        description="Split the candidates are scored on: test (final numbers) or valid (while tuning, keeping "
        "test unseen).",
    )
    cold_start: ColdStartConfig = Field(
        ColdStartConfig(),
        description="Optional cold-start hold-out: items kept out of training to measure text models on new items.",
    )
    seed: int = Field(
        0, description="Seed of sampled negatives and bootstrap resamples, so reruns give identical reports."
    )

    @field_validator("k")
    @classmethod
    def _check_k(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"must be a non-empty list of positive cut-offs (got {v})")
        return sorted(set(v))

    @field_validator("primary")
    @classmethod
    def _check_primary(cls, v: str) -> str:
        split_metric(v, GATEABLE_METRICS)
        return v


class GateConfig(StrictModel):
    """Conditions the best candidate must meet before publish promotes it; all must hold."""

    absolute: dict[str, float] = Field(default_factory=dict, description="metric@k -> minimum value.")
    relative_to_champion: dict[str, float] = Field(
        default_factory=dict, description="metric@k -> minimum ratio of the champion's value."
    )
    require_significant: bool = Field(False, description="Improvement over champion must pass a paired bootstrap.")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance level of the paired bootstrap test used by require_significant."
    )

    @field_validator("absolute", "relative_to_champion")
    @classmethod
    def _check_metrics(cls, v: dict[str, float], info: Any) -> dict[str, float]:
        for metric, bound in v.items():
            split_metric(metric, GATEABLE_METRICS)
            if info.field_name == "relative_to_champion" and bound <= 0:
                raise ValueError(f"{metric}: the ratio to the champion must be positive, e.g. 0.99 (got {bound})")
        return v


class PublishConfig(StrictModel):
    """The publish step: registering a blessed candidate as the new production model."""

    model_name: str | None = Field(None, description="Registry name; defaults to the pipeline name.")
