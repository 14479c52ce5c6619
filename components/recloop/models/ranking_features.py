"""Features of (user, candidate item) pairs for the ranking stage: one module for training and scoring.

`ItemStatistics` is what the features know about the catalog (popularity and last event of each item in
the events the retrievers were fit on, their categories, their text vectors); `candidate_features` turns a
batch of histories and the retrievers' score matrices into the candidate pairs and their feature rows.
The ranker builds its training rows and its scoring rows with the same call, so there is no train/serve
skew to test for beyond that one function (tests/models/test_ranker.py builds a row both ways).

Candidates: each retriever's top `n` items per row, the row's history excluded and, for a retriever that
cannot score items without training events, those items too; the pairs are their union. Features, per
retriever `r`: `r.zscore` (its score standardized over the row's scoreable items, so rows are comparable)
and `r.rank` (1-based rank in its top n, n + 1 when it did not propose the item); then the item's
`log_popularity` and `days_since_last_event` (at the statistics' reference time), the user's
`log_history_length`, `category_affinity` (share of the user's recent items sharing a category with the
candidate) and `text_similarity` (cosine between the mean text vector of the user's recent items and the
candidate's; 0 without text). With user attributes (`UserAttributeTables`, from the users module): per
categorical attribute `user.<name>` (its value, a LightGBM categorical; missing for anonymous users) and
`user.<name>.category_lift` (how much more than average users with that value chose the candidate's
category, in the events the tables were fit on), and per numeric attribute `user.<name>`. (A per-item lift
was tried on synthetic data with user effects and did not help: 0.1545 against 0.1593 test NDCG@10.)
With the time of the query (`TimeContext`): `context.hour` and `context.weekday` (UTC) and
`context.day_part.category_lift`, the candidate category's lift in that part of the day; unknown (NaN,
NaN, 0) when the caller does not say when.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recloop.data.interactions import Histories
from recloop.models.base import UserSide, top_k

SECONDS_PER_DAY = 86400.0
# Items without any event in the statistics' events: this many days since their last one.
NEVER_SEEN_DAYS = 3650.0


@dataclass
class ItemStatistics:
    """What the features know about the catalog, from the events the retrievers were fit on."""

    counts: np.ndarray  # (n_items,) events per item
    last_event: np.ndarray  # (n_items,) int64 epoch seconds of the item's last event; -1 when none
    reference_time: int  # "now" for recency: the last of those events
    categories: sp.csr_matrix  # (n_items, n_categories) 0/1
    text_vectors: np.ndarray | None  # (n_items, d) unit vectors, or None without text

    @classmethod
    def from_histories(
        cls, histories: Histories, categories: sp.csr_matrix, text_vectors: np.ndarray | None
    ) -> ItemStatistics:
        n_items = histories.n_items
        counts = np.bincount(histories.items, minlength=n_items).astype(np.float32)
        last = np.full(n_items, -1, dtype=np.int64)
        if len(histories.items):
            np.maximum.at(last, histories.items, histories.timestamps)
        reference = int(histories.timestamps.max()) if len(histories.timestamps) else 0
        return cls(counts, last, reference, categories, text_vectors)


@dataclass
class UserAttributeTables:
    """User attributes as the features read them: values per user and category lifts per value."""

    codes: dict[str, np.ndarray]  # categorical attribute -> (n_users,) int32 code, -1 = missing
    lifts: dict[str, np.ndarray]  # categorical attribute -> (n_values, n_categories) float32
    numeric: dict[str, np.ndarray]  # numeric attribute -> (n_users,) float32, NaN = missing

    @classmethod
    def fit(cls, users: UserSide, histories: Histories, categories: sp.csr_matrix) -> UserAttributeTables:
        """Lifts from the events of `histories` (row r = user r): P(category | value) / P(category)."""
        event_users = np.repeat(np.arange(len(histories)), histories.lengths())
        lifts = {}
        for name, codes in users.categorical.items():
            n_values = len(users.vocabularies.get(name, [])) or int(codes.max(initial=-1)) + 1
            values = codes[event_users] if len(codes) >= len(histories) else np.full(len(event_users), -1)
            keep = values >= 0
            per_value = sp.csr_matrix(
                (np.ones(int(keep.sum()), np.float32), (values[keep], histories.items[keep])),
                shape=(max(n_values, 1), histories.n_items),
            )
            lifts[name] = _lift(np.asarray((per_value @ categories).todense(), dtype=np.float64))
        return cls(dict(users.categorical), lifts, dict(users.numeric))

    def names(self) -> list[str]:
        categorical = [f"user.{name}{kind}" for name in self.codes for kind in ("", ".category_lift")]
        return categorical + [f"user.{name}" for name in self.numeric]

    def categorical_names(self) -> list[str]:
        return [f"user.{name}" for name in self.codes]

    def columns(
        self, users: np.ndarray | None, rows: np.ndarray, items: np.ndarray, categories: sp.csr_matrix
    ) -> list[np.ndarray]:
        """Feature columns of the pairs; `users` (the rows' user ids) None for anonymous histories."""
        columns = []
        for name, codes in self.codes.items():
            code = (
                np.full(len(rows), -1, np.int64) if users is None else codes[np.asarray(users)[rows]].astype(np.int64)
            )
            lift = np.zeros(len(rows), np.float32)
            known = code >= 0
            if known.any() and categories.shape[1]:
                # The candidate's best-lifted category (most items have one).
                per_pair = sp.csr_matrix(self.lifts[name][code[known]]).multiply(categories[items[known]])
                lift[known] = np.asarray(per_pair.max(axis=1).todense()).ravel()
            columns += [code.astype(np.float32), lift]
        for values in self.numeric.values():
            columns.append(np.full(len(rows), np.nan, np.float32) if users is None else values[np.asarray(users)[rows]])
        return columns


def _lift(counts: np.ndarray) -> np.ndarray:
    """(values, columns) counts -> P(column | value) / P(column); 0 where a column has no events."""
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    overall = counts.sum(axis=0) / max(counts.sum(), 1.0)
    return np.where(overall > 0, share / np.maximum(overall, 1e-12), 0.0).astype(np.float32)


@dataclass
class TimeContext:
    """When a query happens, as the features read it: per part of day (UTC hours 0-5, 6-11, 12-17, 18-23)
    the lift of each category, from the events the features were fit on."""

    lifts: np.ndarray  # (4, n_categories) float32

    NAMES = ("context.hour", "context.weekday", "context.day_part.category_lift")

    @classmethod
    def fit(cls, histories: Histories, categories: sp.csr_matrix) -> TimeContext:
        part = (histories.timestamps // 3600 % 24) // 6
        per_part = sp.csr_matrix(
            (np.ones(len(part), np.float32), (part, histories.items)), shape=(4, histories.n_items)
        )
        return cls(_lift(np.asarray((per_part @ categories).todense(), dtype=np.float64)))

    def columns(
        self, times: np.ndarray | None, rows: np.ndarray, items: np.ndarray, categories: sp.csr_matrix
    ) -> list[np.ndarray]:
        """Hour and weekday (UTC) of each pair's query and its day part's lift for the candidate's category;
        unknown times (NaN, NaN, 0) when the caller did not say when."""
        if times is None or len(rows) == 0:
            return [np.full(len(rows), np.nan, np.float32)] * 2 + [np.zeros(len(rows), np.float32)]
        t = np.asarray(times, dtype=np.int64)[rows]
        hour = t // 3600 % 24
        weekday = (t // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        lift = np.zeros(len(rows), np.float32)
        if categories.shape[1]:
            per_pair = sp.csr_matrix(self.lifts[hour // 6]).multiply(categories[items])
            lift = np.asarray(per_pair.max(axis=1).todense()).ravel().astype(np.float32)
        return [hour.astype(np.float32), weekday.astype(np.float32), lift]


@dataclass
class CandidatePairs:
    """The candidate (row, item) pairs of a batch, sorted by row, and their feature rows."""

    rows: np.ndarray  # int64, row of the batch
    items: np.ndarray  # int64
    features: np.ndarray  # (n_pairs, n_features) float32


def feature_names(
    retrievers: list[str], user_tables: UserAttributeTables | None = None, time_context: TimeContext | None = None
) -> list[str]:
    names = [f"{r}.{kind}" for r in retrievers for kind in ("zscore", "rank")]
    names += ["log_popularity", "days_since_last_event", "log_history_length", "category_affinity", "text_similarity"]
    names += list(TimeContext.NAMES) if time_context is not None else []
    return names + (user_tables.names() if user_tables is not None else [])


def candidate_features(
    histories: Histories,
    retriever_scores: list[np.ndarray],
    scoreable: list[np.ndarray | None],
    n: int,
    stats: ItemStatistics,
    history_window: int,
    user_tables: UserAttributeTables | None = None,
    users: np.ndarray | None = None,
    time_context: TimeContext | None = None,
    times: np.ndarray | None = None,
) -> CandidatePairs:
    """The union of each retriever's top `n` unseen items per row, with the features of every pair.

    `retriever_scores[r]`: (rows, n_items) scores of retriever r; `scoreable[r]`: the items it can score
    (None: all)."""
    n_rows, n_items = len(histories), histories.n_items
    seen = histories.to_csr()
    proposed = np.zeros((n_rows, n_items), dtype=bool)
    zscores, ranks = [], []
    for scores, able in zip(retriever_scores, scoreable):
        masked = np.array(scores, dtype=np.float32, copy=True)
        if able is not None:
            masked[:, ~able] = -np.inf
        valid = np.isfinite(masked)
        zscores.append(_row_zscores(masked, valid))
        masked[seen.nonzero()] = -np.inf
        top, top_scores = top_k(masked, min(n, n_items))
        rank = np.full((n_rows, n_items), n + 1, dtype=np.float32)
        row_idx = np.repeat(np.arange(n_rows), top.shape[1])
        keep = np.isfinite(top_scores.ravel())
        rank[row_idx[keep], top.ravel()[keep]] = np.tile(np.arange(1, top.shape[1] + 1), n_rows)[keep]
        ranks.append(rank)
        proposed[row_idx[keep], top.ravel()[keep]] = True
    rows, items = np.nonzero(proposed)
    columns = []
    for z, rank in zip(zscores, ranks):
        columns += [z[rows, items], rank[rows, items]]
    recent = _recent(histories, history_window)
    columns += [
        np.log1p(stats.counts[items]),
        _days_since(stats, items),
        np.log1p(histories.lengths()[rows].astype(np.float32)),
        _category_affinity(recent, stats.categories, rows, items),
        _text_similarity(recent, stats.text_vectors, rows, items),
    ]
    if time_context is not None:
        columns += time_context.columns(times, rows, items, stats.categories)
    if user_tables is not None:
        columns += user_tables.columns(users, rows, items, stats.categories)
    features = np.column_stack(columns).astype(np.float32) if len(rows) else np.zeros((0, len(columns)), np.float32)
    return CandidatePairs(rows.astype(np.int64), items.astype(np.int64), features)


def _row_zscores(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Scores standardized per row over the finite entries; others 0 (treated like an average item)."""
    filled = np.where(valid, scores, 0.0)
    counts = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = filled.sum(axis=1, keepdims=True) / counts
    var = (np.where(valid, scores - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / counts
    return np.where(valid, (filled - mean) / np.sqrt(np.maximum(var, 1e-12)), 0.0).astype(np.float32)


def _days_since(stats: ItemStatistics, items: np.ndarray) -> np.ndarray:
    last = stats.last_event[items]
    days = (stats.reference_time - last) / SECONDS_PER_DAY
    return np.where(last >= 0, np.maximum(days, 0.0), NEVER_SEEN_DAYS).astype(np.float32)


def _recent(histories: Histories, window: int) -> sp.csr_matrix:
    """(rows, n_items) 0/1 matrix of each row's last `window` items."""
    lasts = histories.last(window)
    lengths = np.array([len(x) for x in lasts], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(lasts) if len(lasts) and lengths.sum() else np.zeros(0, np.int32)
    m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(histories), histories.n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _category_affinity(
    recent: sp.csr_matrix, categories: sp.csr_matrix, rows: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """Share of the row's recent items that share at least one category with the candidate."""
    if categories.shape[1] == 0 or len(rows) == 0:
        return np.zeros(len(rows), np.float32)
    # items x items "shares a category" would be dense; go through the categories of each candidate instead.
    recent_categories = (recent @ categories).tocsr()  # rows x categories: recent items per category
    per_pair = np.asarray(recent_categories[rows].multiply(categories[items]).max(axis=1).todense()).ravel()
    # An upper bound on the items sharing a category (an item in two shared categories counts once per
    # category): clipped to the row's recent items, it is exact for single-category catalogs.
    sizes = np.maximum(np.asarray(recent.sum(axis=1)).ravel(), 1.0)
    return np.minimum(per_pair / sizes[rows], 1.0).astype(np.float32)


def _text_similarity(
    recent: sp.csr_matrix, vectors: np.ndarray | None, rows: np.ndarray, items: np.ndarray
) -> np.ndarray:
    if vectors is None or len(rows) == 0:
        return np.zeros(len(rows), np.float32)
    profile = np.asarray(recent @ vectors, dtype=np.float32)
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", profile[rows], vectors[items]).astype(np.float32)
