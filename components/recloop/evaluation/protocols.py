"""Evaluation protocols: leakage-free queries from a preprocess artifact, ranking, segments, fingerprint.

A query is one user: the history a model may look at, the held-out target items, and (optionally) the
candidate items to rank. For split `test` the history is the user's train + valid events, for `valid`
their train events; either way only events no later than the user's first target event are kept, so a
split that is not strictly chronological cannot leak the future into the history.

Ranking is over the whole catalog with the history's items excluded (`exclude_seen`), or, with sampled
negatives, over each user's targets plus N sampled items the user never interacted with. An item mask
restricts which items may be recommended and count as targets (the hook for cold-start protocols:
`queries.with_item_mask(mask)`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import scipy.sparse as sp

from recloop.artifacts.kinds import Dataset
from recloop.data.interactions import Histories, Interactions
from recloop.errors import ArtifactError
from recloop.models.base import top_k
from recloop.models.ranking_metrics import Targets

if TYPE_CHECKING:
    import pandas as pd

    from recloop.artifacts.kinds import Dataset
from recloop.artifacts import Artifact

# (b, n_items) scores for a batch of histories; `users` are the query users' ids in the current split.
ScoreFn = Callable[[Histories, np.ndarray], np.ndarray]


class TimedScoreFn(Protocol):
    """A scorer that also reads when each query happens (the time of its first target event): models
    whose scores depend on the moment (the ranker's time-of-day features) are evaluated through it."""

    reads_time: bool

    def __call__(self, histories: Histories, users: np.ndarray, times: np.ndarray) -> np.ndarray: ...


# History-length buckets (inclusive upper bounds); the last bucket is open-ended.
HISTORY_BUCKETS: tuple[int, ...] = (5, 20)
HEAD_SHARE = 0.2  # head items: the most popular items holding the first 20 % of training interactions


# ---------------------------------------------------------------------------------------------- split data


@dataclass(frozen=True)
class SplitData:
    """A preprocess artifact in memory: the three splits, id maps and item side information."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    user_ids: np.ndarray  # str per user_idx
    item_ids: np.ndarray  # str per item_idx
    item_categories: list[list[str]] | None  # per item_idx, None when the catalog has no categories
    uri: str = ""
    summary: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def train_interactions(self) -> Interactions:
        return _interactions(self.train, self.n_users, self.n_items)


_SPLIT_COLUMNS = ["user_idx", "item_idx", "timestamp", "weight"]


def _interactions(df: pd.DataFrame, n_users: int, n_items: int) -> Interactions:
    return Interactions.from_frame(df, n_users, n_items)


def _id_array(df: pd.DataFrame, idx_col: str, id_col: str, where: str) -> np.ndarray:
    idx = df[idx_col].to_numpy(np.int64)
    if len(idx) and not np.array_equal(np.sort(idx), np.arange(len(idx))):
        raise ArtifactError(f"{where}: {idx_col} must be contiguous 0..{len(idx) - 1}; re-run preprocess")
    out = np.empty(len(idx), dtype=object)
    out[idx] = df[id_col].astype(str).to_numpy()
    return out


def load_split(artifact: Artifact) -> SplitData:
    """Read the splits, id maps and item categories of a committed preprocess artifact (hash-checked)."""
    dataset = Dataset(artifact)
    dataset.require(*Dataset.SPLITS, Dataset.USER_IDS, Dataset.ITEM_IDS)
    splits = {name: dataset.split(name, columns=_SPLIT_COLUMNS) for name in ("train", "valid", "test")}
    user_ids = _id_array(dataset.user_ids(), "user_idx", "user_id", f"{artifact.uri}/{Dataset.USER_IDS}")
    item_ids = _id_array(dataset.item_ids(), "item_idx", "item_id", f"{artifact.uri}/{Dataset.ITEM_IDS}")
    categories = None
    items = dataset.items()
    if items is not None:
        if "categories" in items.columns:
            cats: list[list[str]] = [[] for _ in range(len(item_ids))]
            for idx, value in zip(items["item_idx"].to_numpy(np.int64), items["categories"]):
                if 0 <= idx < len(cats) and value is not None:
                    cats[idx] = [str(c) for c in value]
            categories = cats if any(cats) else None
    for name, df in splits.items():
        if len(df) and (df["user_idx"].max() >= len(user_ids) or df["item_idx"].max() >= len(item_ids)):
            raise ArtifactError(f"{artifact.uri}/{name}.parquet has ids outside its id maps; re-run preprocess")
    return SplitData(
        splits["train"],
        splits["valid"],
        splits["test"],
        user_ids,
        item_ids,
        categories,
        artifact.uri,
        dict(artifact.manifest.summary),
    )


# ---------------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class EvalQueries:
    """One row per evaluated user; see the module docstring."""

    split: str
    users: np.ndarray  # int64 user_idx per row
    histories: Histories  # per row, chronological, n_items = catalog size
    targets: Targets  # per row, held-out items (each row non-empty)
    n_items: int
    exclude_seen: bool = True
    item_mask: np.ndarray | None = None  # bool (n_items,): items that may be recommended / be targets
    candidates: Targets | None = None  # per row: the only items to rank (sampled protocol)
    user_ids: np.ndarray | None = None  # str per user_idx (for the fingerprint)
    item_ids: np.ndarray | None = None  # str per item_idx
    stats: dict = field(default_factory=dict)
    times: np.ndarray | None = None  # int64 per row: epoch seconds of the row's first target event

    def __len__(self) -> int:
        return len(self.users)

    @property
    def protocol(self) -> str:
        return "sampled" if self.candidates is not None else "full"

    def select(self, rows: np.ndarray) -> EvalQueries:
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            users=self.users[rows],
            histories=self.histories.select(rows),
            targets=self.targets.select(rows),
            candidates=None if self.candidates is None else self.candidates.select(rows),
            times=None if self.times is None else self.times[rows],
        )

    def with_item_mask(self, mask: np.ndarray) -> EvalQueries:
        """Only items where `mask` is True may be recommended or count as targets; users left without
        targets are dropped. Masks combine with an existing one (logical and)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_items,):
            raise ValueError(f"item mask must have one entry per item ({self.n_items}); got shape {mask.shape}")
        combined = mask if self.item_mask is None else (self.item_mask & mask)
        restricted = replace(
            self,
            targets=self.targets.restrict_items(combined),
            item_mask=combined,
            candidates=None if self.candidates is None else self.candidates.restrict_items(combined),
        )
        keep = np.flatnonzero(restricted.targets.counts() > 0)
        out = restricted.select(keep)
        stats = dict(self.stats, users_without_eligible_targets=int(len(self) - len(keep)))
        return replace(out, stats=stats)

    def fingerprint(self) -> str:
        """sha256 over the split name and the sorted (user id, item id) target pairs."""
        users = self.users[self.targets.row_ids()]
        items = self.targets.items
        u = self.user_ids[users] if self.user_ids is not None else users.astype(str)
        i = self.item_ids[items] if self.item_ids is not None else items.astype(str)
        lines = sorted(f"{a}\t{b}" for a, b in zip(u, i))
        h = hashlib.sha256(f"recloop-split-v1\n{self.split}\n".encode())
        h.update("\n".join(lines).encode())
        return h.hexdigest()

    def history_lengths(self) -> np.ndarray:
        return self.histories.lengths()


def build_queries(data: SplitData, split: str = "test", exclude_seen: bool = True) -> EvalQueries:
    """Leakage-free queries for `split` ('test': history = train + valid; 'valid': history = train)."""
    import pandas as pd

    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid' (got {split!r})")
    target_df = data.test if split == "test" else data.valid
    history_df = pd.concat([data.train, data.valid], ignore_index=True) if split == "test" else data.train
    if len(target_df) == 0:
        raise ArtifactError(
            f"{data.uri}: the {split} split is empty, so there is nothing to evaluate; check "
            "preprocess.split (and min_user_interactions) so users keep held-out events"
        )
    t_user = target_df["user_idx"].to_numpy(np.int64)
    t_item = target_df["item_idx"].to_numpy(np.int64)
    t_time = target_df["timestamp"].to_numpy(np.int64)
    users = np.unique(t_user)
    row_of_user = np.full(data.n_users, -1, dtype=np.int64)
    row_of_user[users] = np.arange(len(users))
    first_target = np.full(len(users), np.iinfo(np.int64).max)
    np.minimum.at(first_target, row_of_user[t_user], t_time)

    h_user = history_df["user_idx"].to_numpy(np.int64)
    h_row = row_of_user[h_user]
    h_time = history_df["timestamp"].to_numpy(np.int64)
    in_query = h_row >= 0
    # An event later than the user's first target is the future from the target's point of view.
    future = in_query & (h_time > first_target[np.where(in_query, h_row, 0)])
    keep = in_query & ~future
    hist = Interactions.from_arrays(
        h_row[keep],
        history_df["item_idx"].to_numpy(np.int64)[keep],
        h_time[keep],
        history_df["weight"].to_numpy(np.float32)[keep],
        len(users),
        data.n_items,
    )
    histories = hist.histories()
    targets = Targets.from_pairs(row_of_user[t_user], t_item, len(users))

    repeats = 0
    if exclude_seen:
        # A target the user already has in their history can never be recommended when seen items are
        # excluded; it would only lower every model's score, so it is not a target.
        seen = seen_matrix(histories)
        entry_rows = targets.row_ids()
        already = np.asarray(seen[entry_rows, targets.items]).ravel() > 0 if len(entry_rows) else np.zeros(0, bool)
        repeats = int(already.sum())
        targets = targets.keep(~already)
    rows = np.flatnonzero(targets.counts() > 0)
    queries = EvalQueries(
        split=split,
        users=users,
        histories=histories,
        targets=targets,
        n_items=data.n_items,
        exclude_seen=exclude_seen,
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        times=first_target,
    )
    out = queries.select(rows)
    stats = {
        "target_users": int(len(users)),
        "evaluated_users": int(len(rows)),
        "target_events": int(len(target_df)),
        "future_history_events_dropped": int(future.sum()),
        "repeat_targets_dropped": repeats,
    }
    return replace(out, stats=stats)


def with_sampled_negatives(queries: EvalQueries, n_negatives: int, seed: int) -> EvalQueries:
    """Candidates per user: their targets plus `n_negatives` items sampled uniformly, without replacement,
    among eligible items they never interacted with (fewer when not that many exist). Seeded."""
    rng = np.random.default_rng(seed)
    n_items = queries.n_items
    eligible = queries.item_mask if queries.item_mask is not None else np.ones(n_items, dtype=bool)
    ineligible = np.flatnonzero(~eligible)
    rows, items = [], []
    for r in range(len(queries)):
        # Sample positions in the complement of the forbidden items without materializing it.
        forbidden = np.unique(
            np.concatenate([queries.histories.row(r).astype(np.int64), queries.targets.row(r), ineligible])
        )
        free = n_items - len(forbidden)
        take = min(n_negatives, free)
        if take > 0:
            pos = np.sort(rng.choice(free, size=take, replace=False))
            # The j-th free item is pos + (number of forbidden items f with f - rank(f) <= pos).
            picked = pos + np.searchsorted(forbidden - np.arange(len(forbidden)), pos, side="right")
            rows.append(np.full(take, r, dtype=np.int64))
            items.append(picked)
        rows.append(np.full(queries.targets.counts()[r], r, dtype=np.int64))
        items.append(queries.targets.row(r))
    cand = Targets.from_pairs(
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        np.concatenate(items) if items else np.zeros(0, np.int64),
        len(queries),
    )
    return replace(queries, candidates=cand, stats=dict(queries.stats, sampled_negatives=n_negatives))


# ---------------------------------------------------------------------------------------------- ranking


def seen_matrix(histories: Histories) -> sp.csr_matrix:
    """Binary rows x items matrix of the histories' items.

    Built from copies: `Histories.to_csr` hands its own arrays to scipy, whose duplicate summing sorts
    them in place and so would reorder the (chronological) histories.
    """
    m = sp.csr_matrix(
        (np.ones(len(histories.items), np.float32), histories.items.copy(), histories.indptr.copy()),
        shape=(len(histories), histories.n_items),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


_SCORE_CELLS = 32_000_000  # dense score cells per batch (128 MB of float32) whatever the catalog size


def model_scorer(model: Any) -> ScoreFn | TimedScoreFn:
    """How `rank` scores with a model: through `score_at` (when each query happens) for models offering
    it, else `score_histories`."""
    score_at = getattr(model, "score_at", None)
    if callable(score_at):
        return _TimedScorer(score_at)
    return lambda histories, users: model.score_histories(histories, users)


class _TimedScorer:
    reads_time = True

    def __init__(self, score_at: Callable[[Histories, np.ndarray, np.ndarray], np.ndarray]):
        self.score_at = score_at

    def __call__(self, histories: Histories, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        return self.score_at(histories, users, times)


def rank(queries: EvalQueries, score_fn: ScoreFn | TimedScoreFn, k: int, batch_size: int = 1024) -> np.ndarray:
    """(n_queries, k) recommended item ids, best first, -1 padded. Non-finite scores mean 'no score'.

    Users are scored in batches of at most `batch_size`, fewer for large catalogs to bound memory."""
    n, n_items = len(queries), queries.n_items
    batch_size = max(1, min(batch_size, _SCORE_CELLS // max(n_items, 1)))
    out = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rows = np.arange(start, stop)
        batch = queries.select(rows)
        if getattr(score_fn, "reads_time", False) and batch.times is not None:
            scores = np.array(score_fn(batch.histories, batch.users, batch.times), dtype=np.float32)  # type: ignore[call-arg]
        else:
            scores = np.array(score_fn(batch.histories, batch.users), dtype=np.float32)  # type: ignore[call-arg]
        if scores.shape != (stop - start, n_items):
            raise ArtifactError(
                f"a model returned scores of shape {scores.shape}, expected "
                f"({stop - start}, {n_items}): it was trained on another item catalog; "
                "re-run train on this preprocess artifact"
            )
        scores[~np.isfinite(scores)] = -np.inf
        if queries.exclude_seen:
            seen = seen_matrix(batch.histories)
            scores[np.repeat(np.arange(stop - start), np.diff(seen.indptr)), seen.indices] = -np.inf
        if queries.item_mask is not None:
            scores[:, ~queries.item_mask] = -np.inf
        if batch.candidates is not None:
            allowed = np.zeros_like(scores, dtype=bool)
            allowed[batch.candidates.row_ids(), batch.candidates.items] = True
            scores[~allowed] = -np.inf
        ids, top = top_k(scores, min(k, n_items))
        ids[~np.isfinite(top)] = -1
        out[start:stop, : ids.shape[1]] = ids
    return out


# ---------------------------------------------------------------------------------------------- segments


def history_segments(queries: EvalQueries, bounds: tuple[int, ...] = HISTORY_BUCKETS) -> dict[str, np.ndarray]:
    """Rows of each history-length bucket, e.g. {'history ≤5': rows, 'history 6–20': ..., 'history >20': ...}."""
    lengths = queries.history_lengths()
    out: dict[str, np.ndarray] = {}
    low = 0
    for high in bounds:
        label = f"history ≤{high}" if low == 0 else f"history {low}–{high}"
        out[label] = np.flatnonzero((lengths >= low) & (lengths <= high))
        low = high + 1
    out[f"history >{bounds[-1]}"] = np.flatnonzero(lengths >= low)
    return out


COLD_SEGMENT = "cold-start items"


def item_segments(
    queries: EvalQueries, head_mask: np.ndarray, cold_mask: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, Targets]]:
    """{'head items': (rows, targets restricted to head items), 'tail items': ..., and with `cold_mask`
    'cold-start items' (items held out of training entirely)}: the lists stay the same (full ranking),
    only the targets that count change; users without a target in the group are left out."""
    out = {}
    groups = [("head items", head_mask), ("tail items", ~head_mask)]
    if cold_mask is not None:
        groups.append((COLD_SEGMENT, cold_mask))
    for label, mask in groups:
        restricted = queries.targets.restrict_items(mask)
        rows = np.flatnonzero(restricted.counts() > 0)
        out[label] = (rows, restricted.select(rows))
    return out
