"""Search-space ranges: what the tuning step may try for one model parameter.

Written in YAML as `{low: 1e-4, high: 1e-2, log: true}` (a float range), `{low: 1, high: 4}` with integer
bounds (an integer range) or `{choice: [32, 64, 128]}` (a categorical). Each model config class ships a
default space (`ModelConfig.search_space`); `tuning.spaces.{candidate}` replaces it for one candidate.
Ranges know nothing about Optuna: the tuning package turns them into `trial.suggest_*` calls.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from recloop.config.base import StrictModel


class FloatRange(StrictModel):
    """A float parameter drawn from [low, high], uniformly or on a log scale."""

    low: float = Field(..., description="Smallest value tried.")
    high: float = Field(..., description="Largest value tried.")
    log: bool = Field(False, description="Draw on a log scale (for rates and penalties spanning decades).")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        _check_bounds(self.low, self.high, self.log)
        return self


class IntRange(StrictModel):
    """An integer parameter drawn from [low, high] (in `step`s), uniformly or on a log scale."""

    low: int = Field(..., description="Smallest value tried.")
    high: int = Field(..., description="Largest value tried.")
    log: bool = Field(False, description="Draw on a log scale (for sizes spanning decades).")
    step: int = Field(1, ge=1, description="Spacing of the values tried (low, low + step, ...); 1 with log.")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("an integer range on a log scale takes step 1")
        return self


class Choice(StrictModel):
    """A categorical parameter: one of the listed values (null allowed, e.g. `window: {choice: [null, 30d]}`)."""

    choice: list[Any] = Field(..., min_length=1, description="The values tried.")


ParamRange = IntRange | FloatRange | Choice
SearchSpace = dict[str, ParamRange]


def _check_bounds(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0 (got {low})")


def parse_range(value: Any) -> ParamRange:
    """A YAML mapping -> the range it spells: `choice` → Choice; integer bounds → IntRange; else FloatRange."""
    if isinstance(value, (IntRange, FloatRange, Choice)):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected {{low, high[, log]}} or {{choice: [...]}} (got {value!r})")
    if "choice" in value:
        return Choice.model_validate(value)
    bounds = (value.get("low"), value.get("high"))
    if all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        return IntRange.model_validate(value)
    return FloatRange.model_validate(value)


def describe_range(spec: ParamRange) -> str:
    """One line for docs and logs: `[1e-4, 1e-2] log`, `{32, 64, 128}`."""
    if isinstance(spec, Choice):
        return "{" + ", ".join("null" if v is None else str(v) for v in spec.choice) + "}"
    scale = " log" if spec.log else ""
    step = f" step {spec.step}" if isinstance(spec, IntRange) and spec.step != 1 else ""
    return f"[{spec.low:g}, {spec.high:g}]{scale}{step}"
