"""From a candidate's config to the parameters a trial tries, and back to a model config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from recloop.config.base import format_validation_error
from recloop.config.models import ModelConfig
from recloop.config.search import Choice, FloatRange, IntRange, SearchSpace

if TYPE_CHECKING:
    import optuna

    from recloop.config.tuning import TuningConfig


def space_for(tuning: TuningConfig, model_cfg: ModelConfig) -> SearchSpace:
    """The space searched for a candidate: `tuning.spaces[name]` if given, else its type's default; empty
    when the candidate is not tuned (tuning off, or not among `tuning.candidates`)."""
    name = model_cfg.candidate_name
    if not tuning.enabled or (tuning.candidates is not None and name not in tuning.candidates):
        return {}
    if name in tuning.spaces:
        return dict(tuning.spaces[name])
    return dict(type(model_cfg).search_space)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """One value per parameter, drawn by the trial's sampler."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, Choice):
            params[name] = trial.suggest_categorical(name, spec.choice)
        elif isinstance(spec, IntRange):
            params[name] = trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, FloatRange):
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    return params


class InvalidParams(ValueError):
    """A drawn combination the model config refuses (e.g. heads not dividing dim)."""


def apply_params(model_cfg: ModelConfig, params: dict[str, Any]) -> ModelConfig:
    """The candidate's config with `params` (YAML keys) set, validated like a config file entry."""
    if not params:
        return model_cfg
    values = model_cfg.model_dump(mode="json", by_alias=True, exclude_unset=False) | params
    try:
        return type(model_cfg).model_validate(values)
    except ValidationError as exc:
        raise InvalidParams("; ".join(format_validation_error(exc))) from None


def configured_point(model_cfg: ModelConfig, space: SearchSpace) -> dict[str, Any]:
    """The candidate's configured values of the searched parameters that lie inside the space: tried as
    the first trial, so the search never ends below the configuration it started from (on validation)."""
    values = model_cfg.model_dump(mode="json", by_alias=True)
    point: dict[str, Any] = {}
    for name, spec in space.items():
        value = values.get(name)
        if isinstance(spec, Choice):
            if value in spec.choice:
                point[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and spec.low <= value <= spec.high:
            if isinstance(spec, IntRange) and (int(value) != value or (int(value) - spec.low) % spec.step):
                continue
            point[name] = int(value) if isinstance(spec, IntRange) else float(value)
    return point
