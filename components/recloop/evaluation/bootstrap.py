"""Bootstrap over users: percentile confidence intervals and a paired test of two models.

Users are the unit of resampling (their per-user metric values are what varies between samples of users).
Resample indices come from `numpy.random.default_rng(seed)` in a fixed order, so the same (n_users,
n_resamples, seed) always draws the same resamples: CIs of a candidate and of the champion, computed
separately on the same users, use identical resamples, and re-running an evaluation reproduces its CIs.
Work is chunked so memory stays near `_CELLS_PER_CHUNK` values whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_CELLS_PER_CHUNK = 4_000_000


def resample_chunks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of shape (chunk, n), `n_resamples` rows in total, drawn with replacement.

    The chunking depends only on n, so the same (n, n_resamples, seed) yields the same resamples.
    """
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
    done = 0
    while done < n_resamples:
        size = min(per_chunk, n_resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_columns) means of resampled rows of `values` ((n,) or (n, n_columns)); NaN-aware."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    n, width = v.shape
    if n == 0 or n_resamples <= 0:
        return np.full((max(n_resamples, 0), width), np.nan)
    out = []
    for idx in resample_chunks(n, n_resamples, seed):
        chunk = np.empty((len(idx), width))
        for j in range(width):  # one column at a time keeps memory at one (chunk, n) block
            sample = v[:, j][idx]
            valid = ~np.isnan(sample)
            if valid.all():
                chunk[:, j] = sample.mean(axis=1)
                continue
            # A resample where every value is NaN has no mean: NaN, without a warning.
            totals = np.where(valid, sample, 0.0).sum(axis=1)
            counts = valid.sum(axis=1)
            chunk[:, j] = np.divide(totals, counts, out=np.full(len(totals), np.nan), where=counts > 0)
        out.append(chunk)
    return np.concatenate(out, axis=0)


@dataclass(frozen=True)
class Interval:
    value: float  # the point estimate on all users
    low: float
    high: float

    def to_json(self) -> dict[str, float | None]:
        return {"value": _num(self.value), "ci_low": _num(self.low), "ci_high": _num(self.high)}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _nanmean_columns(v: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(v)
    counts = valid.sum(axis=0)
    totals = np.where(valid, v, 0.0).sum(axis=0)
    return np.divide(totals, counts, out=np.full(totals.shape, np.nan), where=counts > 0)


def percentile_intervals(values: np.ndarray, n_resamples: int, seed: int, confidence: float = 0.95) -> list[Interval]:
    """Mean and percentile CI for each column of `values` (n_users,) or (n_users, n_columns).

    With `n_resamples == 0` the interval bounds are NaN (no bootstrap requested).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    point = _nanmean_columns(v) if len(v) else np.full(v.shape[1], np.nan)
    if n_resamples <= 0 or len(v) == 0:
        return [Interval(float(p), float("nan"), float("nan")) for p in point]
    means = bootstrap_means(v, n_resamples, seed)
    tail = (1.0 - confidence) / 2 * 100
    out = []
    for j, p in enumerate(point):
        col = means[:, j]
        col = col[~np.isnan(col)]
        if len(col) == 0:
            out.append(Interval(float(p), float("nan"), float("nan")))
            continue
        low, high = np.percentile(col, [tail, 100 - tail])
        out.append(Interval(float(p), float(low), float(high)))
    return out


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus champion on the same users."""

    candidate: float
    champion: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float  # one-sided: share of resamples where the candidate is not better (H1: candidate > champion)
    n_users: int
    n_resamples: int

    def to_json(self) -> dict[str, float | int | None]:
        ratio = self.candidate / self.champion if self.champion else None
        return {
            "candidate": _num(self.candidate),
            "champion": _num(self.champion),
            "diff": _num(self.diff),
            "ratio": _num(ratio) if ratio is not None else None,
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "p_value": _num(self.p_value),
            "n_users": self.n_users,
            "n_resamples": self.n_resamples,
        }


def paired_bootstrap(
    candidate: np.ndarray, champion: np.ndarray, n_resamples: int, seed: int, confidence: float = 0.95
) -> PairedComparison:
    """Paired bootstrap of mean(candidate − champion) over users present in both (non-NaN in both).

    p_value = (1 + #resamples with mean difference <= 0) / (1 + n_resamples): small when the candidate is
    better on almost every resample of users. NaN without resamples.
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs per-user values for the same users (shapes {a.shape} vs {b.shape})")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    d = a - b
    n = len(d)
    if n == 0:
        nan = float("nan")
        return PairedComparison(nan, nan, nan, nan, nan, nan, 0, n_resamples)
    mean_a, mean_b, mean_d = float(a.mean()), float(b.mean()), float(d.mean())
    if n_resamples <= 0:
        nan = float("nan")
        return PairedComparison(mean_a, mean_b, mean_d, nan, nan, nan, n, 0)
    means = bootstrap_means(d, n_resamples, seed)[:, 0]
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    p = (1.0 + float(np.sum(means <= 0.0))) / (1.0 + n_resamples)
    return PairedComparison(mean_a, mean_b, mean_d, float(low), float(high), p, n, n_resamples)
