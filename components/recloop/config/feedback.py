"""The learning loop: `feedback:` (serving logs -> training data) and `policy:` (the bandit trained on them)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator

from recloop.config.base import Duration, StrictModel


class FeedbackAbuseConfig(StrictModel):
    """Rules that quarantine feedback before it reaches training; each quarantined event names its rule."""

    max_user_events_per_day: int | None = Field(
        1000,
        ge=1,
        description="A user with more feedback events than this on one UTC day has all of that "
        "day's events quarantined (user_rate_cap); None = no cap.",
    )
    max_item_events_per_day: int | None = Field(
        None,
        ge=1,
        description="Positive events an item may collect per UTC day; later ones are quarantined "
        "(item_rate_cap); None = no cap.",
    )
    max_repeat_events: int = Field(
        1,
        ge=1,
        description="Positive events of one type by one user on one item kept per run; more are "
        "repeated clicks (repeated_event).",
    )
    burst_events: int = Field(
        30,
        ge=2,
        description="A user with this many events inside `burst_window` is bot-like: all of the "
        "user's events in the run are quarantined (bot_burst).",
    )
    burst_window: Duration = Field(timedelta(seconds=60), description="Window of the bot-burst rule.")
    spike_min_events: int = Field(
        20,
        ge=1,
        description="Unattributed positive events (no matching impression) of an item on one day "
        "are quarantined (unattributed_spike) when there are at least this many ...",
    )
    spike_ratio: float = Field(
        3.0, gt=0, description="... and more than this many times the item's impressions that day."
    )


class FeedbackConfig(StrictModel):
    """The feedback step: serving logs -> labelled interactions, bandit logs, abuse quarantine."""

    rewards: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "add_to_cart": 1.0, "purchase": 1.0, "rating": 1.0},
        description="Positive event types and their reward; other types (view, dismiss) are reported but "
        "neither rewarded nor appended for training.",
    )
    attribution_window: Duration = Field(
        timedelta(hours=1),
        description="Events count for a slate when received within this after it was "
        "served; impressions younger than this wait for the next run.",
    )
    until: datetime | None = Field(
        None,
        description="Process impressions served up to this time instead of now - attribution_window "
        "(replays and backfills of historical logs).",
    )
    output: str | None = Field(
        None,
        description="Folder (local path or s3:// URI) the clean interactions are appended to, in the "
        "ingest input format; include it in data.interactions.path. None = {store.root}/feedback/interactions.",
    )
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field(
        "auto", description="Format of appended files; auto = the format of data.interactions."
    )
    event_ratings: dict[str, float] = Field(
        default_factory=dict,
        description="Rating written for events of these types (e.g. click: 4.0) when "
        "data.interactions maps a rating column; `rating` events write their value.",
    )
    abuse: FeedbackAbuseConfig = Field(
        FeedbackAbuseConfig(), description="Rules quarantining bot-like or abusive feedback before it reaches training."
    )

    @field_validator("rewards")
    @classmethod
    def _check_rewards(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not r > 0}
        if not v or bad:
            raise ValueError(f"name at least one positive event type with a reward > 0 (got {v})")
        return v


class PolicyGateConfig(StrictModel):
    """Off-policy gate: the candidate policy must beat the logging policy on held-out logs."""

    estimator: Literal["ips", "snips", "dr"] = Field("snips", description="Estimator the decision uses.")
    min_lift: float = Field(0.0, ge=-1, description="Required relative lift over the logging policy's value.")
    use_lower_bound: bool = Field(
        True, description="Compare the lower end of the candidate's bootstrap interval, not its point estimate."
    )
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples (of whole slates) for the intervals.")
    confidence: float = Field(0.9, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    max_weight: float | None = Field(
        100.0, gt=0, description="Clip importance weights at this value (lower variance, some bias); None = off."
    )


class PolicyConfig(StrictModel):
    """Contextual-bandit reranker over the base model's candidates, trained by the feedback step."""

    enabled: bool = Field(False, description="Train, off-policy evaluate and (if it passes) publish a policy.")
    algorithm: Literal["linucb"] = Field(
        "linucb",
        description="LinUCB: shared ridge regression over candidate features plus an upper "
        "confidence bonus; deterministic scores, so logged propensities are exact.",
    )
    alpha: float = Field(0.5, ge=0, description="Width of the LinUCB confidence bonus.")
    ridge: float = Field(1.0, gt=0, description="L2 regularization of the reward regression.")
    exploration: Literal["epsilon_greedy", "softmax"] = Field(
        "softmax", description="How slots are drawn from the scores: epsilon-greedy or a softmax (Plackett-Luce)."
    )
    epsilon: float = Field(0.1, ge=0, lt=1, description="epsilon_greedy: chance a slot shows a uniform draw.")
    temperature: float = Field(0.05, gt=0, description="softmax: temperature over the UCB scores.")
    candidates: int = Field(50, ge=2, le=10000, description="Base-model candidates the policy reranks.")
    categories: int = Field(16, ge=0, le=256, description="Most frequent item categories used as features.")
    min_slots: int = Field(200, ge=1, description="Logged slots needed before a policy is trained.")
    holdout_share: float = Field(
        0.3, gt=0, lt=1, description="Newest share of the logs held out to evaluate the candidate policy."
    )
    gate: PolicyGateConfig = Field(
        PolicyGateConfig(), description="Off-policy evaluation the candidate policy must pass before it is published."
    )
    seed: int = Field(0, description="Seed of the hold-out split and the bootstrap resamples.")
