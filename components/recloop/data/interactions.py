"""In-memory interaction data with contiguous integer ids, as models and evaluation consume it.

Preprocess writes Parquet with columns `user_idx`, `item_idx`, `timestamp` (epoch seconds), `weight`;
`Interactions.from_frame` reads that. `Histories` holds one chronologically ordered item sequence per row
(user), the input both for sequence models and for excluding already-seen items.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Interactions:
    """Columnar events; ids are contiguous in [0, n_users) and [0, n_items)."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    timestamp: np.ndarray  # int64 epoch seconds
    weight: np.ndarray  # float32
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        n = len(self.user)
        if not (len(self.item) == len(self.timestamp) == len(self.weight) == n):
            raise ValueError("Interactions columns must have equal lengths")
        if n and (self.user.min() < 0 or self.user.max() >= self.n_users):
            raise ValueError(f"user ids must lie in [0, {self.n_users})")
        if n and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise ValueError(f"item ids must lie in [0, {self.n_items})")

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, keep: np.ndarray) -> Interactions:
        """The events where the boolean mask `keep` is true; same id spaces."""
        return Interactions(
            self.user[keep], self.item[keep], self.timestamp[keep], self.weight[keep], self.n_users, self.n_items
        )

    @classmethod
    def from_arrays(
        cls,
        user: Sequence[int] | np.ndarray,
        item: Sequence[int] | np.ndarray,
        timestamp: Sequence[int] | np.ndarray | None = None,
        weight: Sequence[float] | np.ndarray | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
    ) -> Interactions:
        u = np.asarray(user, dtype=np.int32)
        i = np.asarray(item, dtype=np.int32)
        t = np.arange(len(u), dtype=np.int64) if timestamp is None else np.asarray(timestamp, dtype=np.int64)
        w = np.ones(len(u), dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
        return cls(
            u,
            i,
            t,
            w,
            int(n_users if n_users is not None else (u.max() + 1 if len(u) else 0)),
            int(n_items if n_items is not None else (i.max() + 1 if len(i) else 0)),
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_users: int, n_items: int) -> Interactions:
        weight = df["weight"].to_numpy(np.float32) if "weight" in df else None
        return cls.from_arrays(
            df["user_idx"].to_numpy(), df["item_idx"].to_numpy(), df["timestamp"].to_numpy(), weight, n_users, n_items
        )

    def to_csr(self, binary: bool = False) -> sp.csr_matrix:
        """users x items matrix; repeated (user, item) pairs sum their weights unless binary."""
        data = np.ones(len(self), np.float32) if binary else self.weight
        m = sp.csr_matrix((data, (self.user, self.item)), shape=(self.n_users, self.n_items), dtype=np.float32)
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def histories(self) -> Histories:
        return Histories.from_interactions(self)


@dataclass(frozen=True)
class Histories:
    """Row r is a chronologically ordered item sequence: items[indptr[r]:indptr[r+1]]."""

    indptr: np.ndarray  # int64, len n_rows + 1
    items: np.ndarray  # int32
    weights: np.ndarray  # float32
    timestamps: np.ndarray  # int64
    n_items: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> np.ndarray:
        return self.items[self.indptr[r] : self.indptr[r + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    @classmethod
    def from_lists(cls, sequences: Iterable[Sequence[int]], n_items: int) -> Histories:
        seqs = [np.asarray(s, dtype=np.int32) for s in sequences]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate(seqs).astype(np.int32) if seqs and indptr[-1] else np.zeros(0, np.int32)
        if len(items) and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(f"history item ids must lie in [0, {n_items})")
        ts = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) if len(items) else np.zeros(0, np.int64)
        return cls(indptr, items, np.ones(len(items), np.float32), ts, n_items)

    @classmethod
    def from_interactions(cls, inter: Interactions) -> Histories:
        # Stable sort by (user, timestamp) keeps input order among equal timestamps.
        order = np.lexsort((inter.timestamp, inter.user))
        counts = np.bincount(inter.user, minlength=inter.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, inter.item[order], inter.weight[order], inter.timestamp[order], inter.n_items)

    def select(self, rows: np.ndarray | Sequence[int]) -> Histories:
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(rows) else np.zeros(0, np.int64)
        idx = idx.astype(np.int64)
        return Histories(indptr, self.items[idx], self.weights[idx], self.timestamps[idx], self.n_items)

    def to_csr(self, binary: bool = True) -> sp.csr_matrix:
        data = np.ones(len(self.items), np.float32) if binary else self.weights.copy()
        # Copies: scipy sorts indices in place when summing duplicates, which would destroy the
        # chronological order that sequence models read from `items`.
        m = sp.csr_matrix(
            (data, self.items.copy(), self.indptr.copy()), shape=(len(self), self.n_items), dtype=np.float32
        )
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def last(self, n: int) -> list[np.ndarray]:
        """The last n items of each row (most recent last)."""
        return [self.items[max(self.indptr[r], self.indptr[r + 1] - n) : self.indptr[r + 1]] for r in range(len(self))]
