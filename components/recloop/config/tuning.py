"""The `tuning:` section: the hyper-parameter search the tune step runs before train.

`tuning: {budget: 30m}` alone tunes every candidate whose model type ships a search space, within 30
minutes of wall time for the whole step; `budget: 20 trials` runs a fixed number of trials per candidate
instead (reproducible: same seed, same best params).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, field_validator

from recloop.config.base import StrictModel, parse_duration
from recloop.config.search import ParamRange, parse_range

# The budget `recloop init` writes when --budget is not given. Search only: train reuses each candidate's
# best trial (or fits it once) and text models embed the catalog once, so a ~100k-event data set runs end to end in
# well under 45 minutes on 2 cores (docs/tuning.md).
INIT_BUDGET = "20m"
_TRIALS_RE = re.compile(r"^\s*(\d+)\s*trials?\s*$")
_COMPOUND_RE = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


@dataclass(frozen=True)
class Budget:
    """How much search: wall seconds for the whole step, or trials per candidate (exactly one is set)."""

    seconds: float | None = None
    trials: int | None = None

    def __str__(self) -> str:
        if self.trials is not None:
            return f"{self.trials} trials"
        seconds = float(self.seconds or 0)
        return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


def parse_budget(value: Any) -> Budget:
    """'30m', '1h30m', '45s', 1800 (seconds) or '40 trials' -> Budget."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, str):
        trials = _TRIALS_RE.match(value)
        if trials:
            if int(trials.group(1)) < 1:
                raise ValueError("a trial budget needs at least 1 trial")
            return Budget(trials=int(trials.group(1)))
        compound = _COMPOUND_RE.match(value)
        if compound and any(compound.groups()):
            h, m, s = (int(g or 0) for g in compound.groups())
            return _positive(Budget(seconds=float(h * 3600 + m * 60 + s)))
    try:
        return _positive(Budget(seconds=parse_duration(value).total_seconds()))
    except ValueError:
        raise ValueError(
            f"expected a wall time like '30m', '1h30m', '900s', or a trial count like '40 trials' (got {value!r})"
        ) from None


def _positive(budget: Budget) -> Budget:
    if not budget.seconds or budget.seconds <= 0:
        raise ValueError("a time budget must be positive, e.g. '30m'")
    return budget


BudgetField = Annotated[Budget, BeforeValidator(parse_budget), PlainSerializer(str)]


class TuningConfig(StrictModel):
    """Hyper-parameter search per candidate (Optuna TPE on validation NDCG@10; the test split is never read)."""

    budget: BudgetField | None = Field(
        None,
        description="Search budget: wall time for the whole tune step ('30m', '1h30m'), split across the tuned "
        "candidates in proportion to their model type's cost, or a trial count per candidate ('40 trials', "
        "reproducible). None = no tuning: train uses the configured parameters.",
    )
    candidates: list[str] | None = Field(
        None,
        description="Candidate names to tune; None = every candidate whose model type has a search space "
        "(default or in `spaces`).",
    )
    spaces: dict[str, dict[str, ParamRange]] = Field(
        default_factory=dict,
        description="Per candidate name, the search space replacing its model type's default: parameter (its "
        "YAML key) -> {low, high[, log, step]} or {choice: [...]}. See docs/tuning.md for the defaults.",
    )
    max_trials: int = Field(
        100, ge=1, description="Most trials per candidate under a time budget (closed-form models finish early)."
    )
    startup_trials: int = Field(
        5,
        ge=1,
        description="Random trials before TPE models the space, and trials completed before pruning starts.",
    )
    pruning: bool = Field(
        True,
        description="Stop a trial of an iterative model early when its validation curve falls below the median "
        "of earlier trials at the same epoch (Optuna's MedianPruner).",
    )
    refit: bool = Field(
        False,
        description="Fit each tuned candidate again in train with its best parameters. False = train reuses the "
        "best trial's model, which was fitted with those parameters on the same splits and seed (the same "
        "model, without paying for its fit twice); it refits anyway when the config or data changed since.",
    )
    seed: int = Field(0, description="Seed of the TPE sampler (trial models keep their own `seed`).")
    parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes running trials of one candidate at once, sharing the study's storage. On a "
        "machine with few cores leave 1 (trials already use every core).",
    )
    storage: str | None = Field(
        None,
        description="Optuna RDB storage URL shared by workers, e.g. the Airflow metadata PostgreSQL "
        "(postgresql+psycopg2://user@host:5432/db). None = a journal file kept with the run's artifacts "
        "(resumable on any store).",
    )

    @field_validator("spaces", mode="before")
    @classmethod
    def _parse_spaces(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {
            name: {param: parse_range(spec) for param, spec in (space or {}).items()}
            if isinstance(space, dict)
            else space
            for name, space in v.items()
        }

    @property
    def enabled(self) -> bool:
        return self.budget is not None
