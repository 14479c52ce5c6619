"""What a data profile implies for the config: the candidate models, their sizes, the preprocess and
validation settings, each with the reason it is written.

Candidates: popularity always (the baseline); itemknn and mf always; ease only up to its own `max_items`
(read from `EaseConfig`); sasrec when the median history reaches `SEQUENTIAL_MIN_MEDIAN_HISTORY` events
and order is not measured to carry little signal (see `recloop.data.profile`); text_knn, and text_sasrec
next to sasrec, only when the items have text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recloop.config.data import PreprocessConfig, ValidationConfig
from recloop.config.models import (
    EaseConfig,
    ItemKNNConfig,
    MFConfig,
    PopularityConfig,
    SASRecConfig,
    TextKNNConfig,
    TextSASRecConfig,
    model_type_name,
)
from recloop.data.infer.render import Budget, ModelEntry, Setting
from recloop.data.profile import DataProfile
from recloop.errors import UsageError

# Sequential models learn from what came before each event: below this median history they see too little.
SEQUENTIAL_MIN_MEDIAN_HISTORY = 10
# Median history at which sequential models read the last 200 items instead of 50.
LONG_HISTORY = 50
# Fewer users than this give few training steps per epoch: sequential models take batches of 32.
FEW_USERS = 5_000
# Events per item at or above which EASE's penalty can be light (100); sparser items want 300.
DENSE_ITEM_EVENTS = 50
# Users need this many events to be kept when most have them (else leave-last-out's minimum of 3).
MIN_USER_EVENTS = 5


@dataclass(frozen=True)
class Skipped:
    type: str
    reason: str


@dataclass(frozen=True)
class ModelPlan:
    chosen: tuple[ModelEntry, ...]
    skipped: tuple[Skipped, ...]


def parse_budget(text: str) -> Budget:
    """--budget as `tuning.budget` reads it ('30m', '1h30m', '40 trials'); UsageError otherwise."""
    from recloop.config.tuning import parse_budget as parse_config_budget

    try:
        parsed = parse_config_budget(text.strip())
    except ValueError as exc:
        raise UsageError(f"--budget {text!r}: {exc}") from None
    return Budget(text.strip().lower(), parsed.seconds, parsed.trials)


def plan_models(profile: DataProfile, text_columns: tuple[str, ...] | None) -> ModelPlan:
    """The candidates, in `models:` order; `text_columns` None when there is no item catalog."""
    chosen = [ModelEntry(PopularityConfig(), "popularity: the baseline every other candidate must beat")]
    skipped: list[Skipped] = []
    chosen.append(_itemknn(profile))
    ease = _ease(profile)
    if isinstance(ease, ModelEntry):
        chosen.append(ease)
    else:
        skipped.append(ease)
    chosen.append(_mf(profile))
    sequential, why = _sequential(profile)
    params = _sequence_params(profile)
    if sequential:
        chosen.append(ModelEntry(SASRecConfig(**params), f"sasrec: {why}; {_describe_params(params)}"))
    else:
        skipped.append(Skipped(model_type_name(SASRecConfig), why))
    if not text_columns:
        why = "no item catalog (--items)" if text_columns is None else "the items have no text (titles, descriptions)"
        for cls in (TextKNNConfig, TextSASRecConfig):
            skipped.append(Skipped(model_type_name(cls), why))
        return ModelPlan(tuple(chosen), tuple(skipped))
    words = ", ".join(text_columns)
    chosen.append(ModelEntry(TextKNNConfig(), f"text_knn: the items have text ({words}); ranks items without events"))
    if sequential:
        reason = f"text_sasrec: sasrec over item text and ids; {why}; {_describe_params(params)}"
        chosen.append(ModelEntry(TextSASRecConfig(**params), reason))
    else:
        skipped.append(Skipped(model_type_name(TextSASRecConfig), why))
    return ModelPlan(tuple(chosen), tuple(skipped))


def _itemknn(profile: DataProfile) -> ModelEntry:
    neighbours = min(max(profile.n_items // 10, 20), 200, max(profile.n_items - 1, 1))
    config = ItemKNNConfig(neighbours=neighbours)
    return ModelEntry(config, f"itemknn: item-item neighbours; neighbours {neighbours}: a tenth of the items, 20..200")


def _ease(profile: DataProfile) -> ModelEntry | Skipped:
    limit = EaseConfig.model_fields["max_items"].default
    if profile.n_items > limit:
        return Skipped(model_type_name(EaseConfig), f"{profile.n_items:,} items exceed EASE's max_items ({limit:,})")
    dense = profile.events_per_item >= DENSE_ITEM_EVENTS
    l2 = 100.0 if dense else 300.0
    why = f"{profile.events_per_item:.0f} events per item {'≥' if dense else '<'} {DENSE_ITEM_EVENTS}"
    return ModelEntry(
        EaseConfig(l2=l2),
        f"ease: {profile.n_items:,} items ≤ its max_items {limit:,}; lambda {l2:g}: {why}"
        + ("" if dense else ", sparser items want a stronger penalty"),
    )


def _mf(profile: DataProfile) -> ModelEntry:
    root = math.sqrt(max(profile.n_items, 1))
    factors = min(256, max(16, 2 ** math.ceil(math.log2(root))))
    return ModelEntry(
        MFConfig(factors=factors),
        f"mf: implicit ALS; factors {factors}: the power of two ≥ √items ({root:.0f}), within 16..256",
    )


def _sequential(profile: DataProfile) -> tuple[bool, str]:
    median = profile.history.median
    if median < SEQUENTIAL_MIN_MEDIAN_HISTORY:
        return False, f"median history {median:g} events < {SEQUENTIAL_MIN_MEDIAN_HISTORY}: too short for sequences"
    order = profile.order
    if order.verdict == "weak":
        return False, f"histories are long enough (median {median:g}) but {order.explain()}"
    if order.verdict == "unknown":
        return True, f"median history {median:g} ≥ {SEQUENTIAL_MIN_MEDIAN_HISTORY} events (order: {order.explain()})"
    return (
        True,
        f"median history {median:g} ≥ {SEQUENTIAL_MIN_MEDIAN_HISTORY} events and order matters ({order.lift_text()})",
    )


def _sequence_params(profile: DataProfile) -> dict[str, int]:
    params = {"max_len": 200 if profile.history.median >= LONG_HISTORY else 50}
    if profile.n_users < FEW_USERS:
        params["batch_size"] = 32
    return params


def _describe_params(params: dict[str, int]) -> str:
    text = f"max_len {params['max_len']} (median history {'≥' if params['max_len'] == 200 else '<'} {LONG_HISTORY})"
    if "batch_size" in params:
        text += f", batch_size 32 (< {FEW_USERS:,} users: few steps per epoch)"
    return text


def validation_settings(profile: DataProfile, catalog_share: float | None) -> tuple[list[Setting], list[str]]:
    """Settings the data needs to pass validation as it is, and what to check about them."""
    defaults = ValidationConfig.model_fields
    settings: list[Setting] = []
    checks: list[str] = []
    if profile.rating_range is not None:
        low, high = profile.rating_range
        settings.append(Setting("rating_range", [low, high], f"the ratings seen lie in {low:g}..{high:g}"))
    allowed_duplicates = defaults["max_duplicate_rate"].default
    if profile.duplicate_share > allowed_duplicates:
        ceiling = math.ceil(profile.duplicate_share * 100) / 100
        why = f"{profile.duplicate_share:.1%} of events are exact (user, item, time) duplicates"
        settings.append(Setting("max_duplicate_rate", ceiling, f"{why}, above the default {allowed_duplicates:g}"))
        checks.append(f"{why}: validation allows {ceiling:g}; find out why the data repeats events")
    min_coverage = defaults["min_catalog_coverage"].default
    if catalog_share is not None and catalog_share < min_coverage:
        floor = math.floor(catalog_share * 100) / 100
        why = f"only {catalog_share:.1%} of the interacted items are in the catalog"
        settings.append(Setting("min_catalog_coverage", floor, f"{why} (default {min_coverage:g})"))
        checks.append(f"{why}: validation allows down to {floor:g}; is the items file complete?")
    return settings, checks


def preprocess_settings(profile: DataProfile) -> list[Setting]:
    settings = [_min_user_events(profile)]
    if profile.event_types:
        weights = tuple(Setting(t, 1.0, f"{n:,} events; raise strong signals") for t, n in profile.event_types)
        implicit = (Setting("event_weights", weights, "every event type seen, weighted equally for a start"),)
        settings.append(Setting("implicit", implicit, "which events count as positives, and how much"))
    leave_last_out = profile.users_with_three >= 0.5
    method = "leave_last_out" if leave_last_out else "time_cutoff"
    why = (
        f"{profile.users_with_three:.0%} of users have 3+ events: hold out each user's last one (test) and the one before"
        if leave_last_out
        else f"only {profile.users_with_three:.0%} of users have the 3 events leave-last-out needs: split at points in time"
    )
    settings.append(Setting("split", (Setting("method", method, why),), "always by time, so no future event leaks"))
    return settings


def _min_user_events(profile: DataProfile) -> Setting:
    share = profile.users_with_five
    if share >= 0.8:
        return Setting(
            "min_user_interactions",
            MIN_USER_EVENTS,
            f"{share:.0%} of users have {MIN_USER_EVENTS}+ events; sparser users make evaluation noisy",
        )
    default = PreprocessConfig.model_fields["min_user_interactions"].default
    why = f"only {share:.0%} of users have {MIN_USER_EVENTS}+ events: keep users from {default} (leave-last-out's minimum)"
    return Setting("min_user_interactions", default, why)
