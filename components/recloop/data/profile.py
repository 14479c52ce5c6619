"""A profile of interaction events: size, density, history lengths, duplicates, and whether order matters.

Whether order matters is measured, not assumed. Sort each user's events by time and take every pair of
consecutive items (a, b); count the share of pairs that recur, i.e. the same (a, b) follows on for some
other event too. Then shuffle each user's events (seed 0) and count again: the shuffle keeps who
consumed what and how popular it is, and destroys only the order. Order matters when the time-ordered
share is at least `ORDER_LIFT` times the shuffled one; with fewer than `MIN_RECURRING_PAIRS` recurring
pairs either way there is too little data to tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

ORDER_LIFT = 1.2
MIN_RECURRING_PAIRS = 50
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class HistoryLengths:
    """Events per user."""

    p10: float
    median: float
    p90: float
    mean: float
    max: int


@dataclass(frozen=True)
class OrderSignal:
    """Recurring consecutive pairs in time order vs. shuffled within users (see the module docstring)."""

    ordered_share: float
    shuffled_share: float
    recurring_pairs: int  # recurring pairs in time order
    tie_share: float  # consecutive events of one user with the same timestamp

    @property
    def lift(self) -> float | None:
        return self.ordered_share / self.shuffled_share if self.shuffled_share > 0 else None

    @property
    def verdict(self) -> Literal["matters", "weak", "unknown"]:
        if self.recurring_pairs < MIN_RECURRING_PAIRS:
            return "unknown"
        lift = self.lift
        return "matters" if lift is None or lift >= ORDER_LIFT else "weak"

    def lift_text(self) -> str:
        """'×3.06', or what stands in when no pair recurs once shuffled."""
        lift = self.lift
        return f"×{lift:.2f}" if lift is not None else "no pair recurs once shuffled"

    def explain(self) -> str:
        shares = (
            f"{self.ordered_share:.1%} of consecutive item pairs recur in time order vs "
            f"{self.shuffled_share:.1%} shuffled within users"
        )
        if self.verdict == "unknown":
            return f"too few recurring pairs to tell ({self.recurring_pairs} < {MIN_RECURRING_PAIRS}; {shares})"
        if self.verdict == "matters":
            return f"{shares} ({self.lift_text()}, at least {ORDER_LIFT}): order matters"
        return f"{shares} ({self.lift_text()}, below {ORDER_LIFT}): order carries little signal"


@dataclass(frozen=True)
class DataProfile:
    n_events: int
    n_users: int
    n_items: int
    history: HistoryLengths
    order: OrderSignal
    duplicate_share: float  # exact (user, item, time) duplicates
    repeat_share: float  # events on an item the user already had
    users_with_three: float  # share of users with >= 3 events (leave-last-out needs a train, valid and test event)
    users_with_five: float
    first_ms: int
    last_ms: int
    event_types: tuple[tuple[str, int], ...]  # (type, events), most frequent first
    rating_range: tuple[float, float] | None

    @property
    def density(self) -> float:
        return self.n_events / (self.n_users * self.n_items) if self.n_users and self.n_items else 0.0

    @property
    def events_per_item(self) -> float:
        return self.n_events / self.n_items if self.n_items else 0.0


def profile_events(events: pa.Table) -> DataProfile:
    """Profile rows of the interactions contract (`normalize_interactions` output) that parsed cleanly."""
    import numpy as np
    import pandas as pd

    users = pd.factorize(events.column("user_id").to_numpy())[0]
    items = pd.factorize(events.column("item_id").to_numpy())[0]
    times = events.column("timestamp").cast("int64").to_numpy()
    order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then file order
    users, items, times = users[order], items[order], times[order]
    per_user = np.bincount(users)
    frame = pd.DataFrame({"u": users, "i": items, "t": times})
    return DataProfile(
        n_events=len(users),
        n_users=len(per_user),
        n_items=int(items.max()) + 1 if len(items) else 0,
        history=HistoryLengths(
            p10=float(np.percentile(per_user, 10)),
            median=float(np.median(per_user)),
            p90=float(np.percentile(per_user, 90)),
            mean=float(per_user.mean()),
            max=int(per_user.max()),
        ),
        order=order_signal(users, items, times),
        duplicate_share=float(frame.duplicated(["u", "i", "t"]).mean()),
        repeat_share=float(frame.duplicated(["u", "i"]).mean()),
        users_with_three=float((per_user >= 3).mean()),
        users_with_five=float((per_user >= 5).mean()),
        first_ms=int(times.min()),
        last_ms=int(times.max()),
        event_types=_event_types(events),
        rating_range=_rating_range(events),
    )


def order_signal(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> OrderSignal:
    """`users` sorted, each user's `items` and `times` in time order (integer codes)."""
    import numpy as np

    same_user = users[1:] == users[:-1]
    n_items = int(items.max()) + 1 if len(items) else 1
    ordered, recurring = _recurring_share(items, same_user, n_items)
    rng = np.random.default_rng(SHUFFLE_SEED)
    shuffled_items = items[np.lexsort((rng.random(len(items)), users))]
    shuffled, _ = _recurring_share(shuffled_items, same_user, n_items)
    ties = (times[1:] == times[:-1])[same_user]
    return OrderSignal(ordered, shuffled, recurring, float(ties.mean()) if len(ties) else 0.0)


def _recurring_share(items: np.ndarray, same_user: np.ndarray, n_items: int) -> tuple[float, int]:
    import numpy as np

    pairs = (items[:-1].astype(np.int64) * n_items + items[1:])[same_user]
    if not len(pairs):
        return 0.0, 0
    _, counts = np.unique(pairs, return_counts=True)
    recurring = int(counts[counts >= 2].sum())
    return recurring / len(pairs), recurring


def _event_types(events: pa.Table) -> tuple[tuple[str, int], ...]:
    column = events.column("event_type")
    if column.null_count == len(column):
        return ()
    counts = column.value_counts().to_pylist()
    pairs = [(str(c["values"]), int(c["counts"])) for c in counts if c["values"] is not None]
    return tuple(sorted(pairs, key=lambda p: (-p[1], p[0])))


def _rating_range(events: pa.Table) -> tuple[float, float] | None:
    import pyarrow.compute as pc

    bounds = pc.min_max(events.column("rating"))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return None if low is None else (float(low), float(high))
