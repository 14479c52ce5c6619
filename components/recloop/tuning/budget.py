"""How a tuning budget is split across candidates.

The rule: a time budget is wall time for the whole tune step; each tuned candidate gets the share
`budget x cost / (sum of the tuned candidates' costs)`, where cost is its model type's `tuning_cost`
(a closed-form fit costs ~1, ALS 2, a sequential transformer 6). Shares are computed over every configured
tuned candidate, not only those a run selects, so a candidate's share is the same whether the DAG tunes all
of them side by side (each mapped task keeps to its own share) or one is rerun alone. Time a candidate
does not use (it reached `max_trials`) is not handed on: the shares stay independent. A trial budget
(`N trials`) gives every tuned candidate N trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recloop.config.models import ModelConfig
from recloop.config.tuning import TuningConfig


@dataclass(frozen=True)
class Share:
    """One candidate's part of the budget: wall seconds (with a trial cap) or an exact trial count."""

    seconds: float | None
    trials: int

    def describe(self) -> str:
        if self.seconds is None:
            return f"{self.trials} trials"
        return f"{self.seconds:.0f}s (at most {self.trials} trials)"


def share_of(tuning: TuningConfig, candidate: ModelConfig, tuned: Sequence[ModelConfig]) -> Share:
    """`candidate`'s share of `tuning.budget` among the `tuned` candidates (it must be one of them)."""
    budget = tuning.budget
    if budget is None:
        raise ValueError("tuning is off (no tuning.budget)")
    if budget.trials is not None:
        return Share(seconds=None, trials=budget.trials)
    total_cost = sum(type(m).tuning_cost for m in tuned)
    seconds = float(budget.seconds or 0) * type(candidate).tuning_cost / total_cost
    return Share(seconds=seconds, trials=tuning.max_trials)
