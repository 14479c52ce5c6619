"""Time-respecting train / valid / test splits over an event table.

Both splits label each event TRAIN, VALID or TEST and never look at anything but user, time and source
order, so they are cheap, deterministic and testable on hand-made arrays.

- leave-last-out: per user, events are ordered by timestamp, then source order; the last is TEST and the
  one before it VALID, the rest TRAIN. A user needs 2 events for a test event and 3 for a valid one as
  well; users with a single event stay in train.
- time cut-off: every event after `cutoff` is TEST, every event after `valid_cutoff` (and not after
  `cutoff`) is VALID. Missing cut-offs are placed so that roughly the latest `test_share` (then
  `valid_share`) of all events is held out; events sharing the cut-off timestamp stay on the earlier side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")


def leave_last_out(user: np.ndarray, timestamp: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Labels (int8) for leave-last-out; `order` breaks timestamp ties (default: position)."""
    n = len(user)
    labels = np.full(n, TRAIN, dtype=np.int8)
    if not n:
        return labels
    order = np.arange(n) if order is None else order
    idx = np.lexsort((order, timestamp, user))
    sorted_user = user[idx]
    # Position of each event counted from its user's last event (0 = last).
    starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    lengths = np.diff(np.r_[starts, n])
    per_event_len = np.repeat(lengths, lengths)
    pos = np.arange(n) - np.repeat(starts, lengths)
    from_end = per_event_len - 1 - pos
    sorted_labels = np.full(n, TRAIN, dtype=np.int8)
    sorted_labels[(from_end == 0) & (per_event_len >= 2)] = TEST
    sorted_labels[(from_end == 1) & (per_event_len >= 3)] = VALID
    labels[idx] = sorted_labels
    return labels


@dataclass(frozen=True)
class Cutoffs:
    """Resolved cut-offs as epoch nanoseconds: TEST is > test_after, VALID is in (valid_after, test_after]."""

    test_after: int
    valid_after: int

    def iso(self) -> dict[str, str]:
        return {"cutoff": _iso(self.test_after), "valid_cutoff": _iso(self.valid_after)}


def _iso(ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return dt.isoformat(timespec="milliseconds" if ns % 1_000_000_000 else "seconds")


def to_epoch_ns(value: datetime) -> int:
    """A config datetime (naive means UTC) as epoch nanoseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _share_cutoff(sorted_ts: np.ndarray, share: float, total: int) -> int:
    """The timestamp after which about `share * total` of the latest events in `sorted_ts` lie.

    At least one event stays before the cut-off; ties at the cut-off stay before it.
    """
    m = len(sorted_ts)
    if m == 0:
        return np.iinfo(np.int64).min
    k = int(round(share * total))
    k = min(max(k, 1), m - 1) if m >= 2 else 0
    return int(sorted_ts[m - k - 1])


def resolve_cutoffs(
    timestamp: np.ndarray, cutoff: datetime | None, valid_cutoff: datetime | None, test_share: float, valid_share: float
) -> Cutoffs:
    """Explicit cut-offs as given; missing ones from the shares (see module doc)."""
    sorted_ts = np.sort(timestamp)
    n = len(sorted_ts)
    test_after = to_epoch_ns(cutoff) if cutoff is not None else _share_cutoff(sorted_ts, test_share, n)
    if valid_cutoff is not None:
        valid_after = to_epoch_ns(valid_cutoff)
    else:
        before = sorted_ts[: np.searchsorted(sorted_ts, test_after, side="right")]
        valid_after = _share_cutoff(before, valid_share, n)
    return Cutoffs(test_after=test_after, valid_after=min(valid_after, test_after))


def time_cutoff(timestamp: np.ndarray, cutoffs: Cutoffs) -> np.ndarray:
    """Labels (int8) for a global time cut-off; `timestamp` in epoch nanoseconds."""
    labels = np.full(len(timestamp), TRAIN, dtype=np.int8)
    labels[timestamp > cutoffs.valid_after] = VALID
    labels[timestamp > cutoffs.test_after] = TEST
    return labels
