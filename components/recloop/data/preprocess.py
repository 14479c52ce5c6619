"""Preprocessing as a pure function: validated interactions in, contiguous-id train / valid / test out.

`preprocess(interactions, catalog, cfg, cold_start)` takes pandas frames and returns a `PreprocessResult`
(pandas frames, id lists, stats); it reads and writes no store. The preprocess step does the I/O.
Stages, each counted in the stats:

1. drop rows without user, item or timestamp (only possible when validation warned instead of failing);
2. implicit feedback: keep ratings >= `implicit.min_rating`; with `implicit.event_weights`, keep only the
   listed event types. weight = source weight (1 if absent) x event-type weight (1 without the map);
3. dedupe: among events with the same (user, item, timestamp) keep the heaviest, the first in source
   order on ties;
4. min-count filters: drop users with fewer than `min_user_interactions` events and items with fewer than
   `min_item_interactions` (both counted on the same data); with `kcore`, repeat until both hold;
5. split by time (`recloop.data.splits`): leave-last-out per user, or a global cut-off;
6. cold start (with `cold_start.item_share > 0`): a seeded share of items loses every train/valid event;
7. contiguous ids: users with a training event; items with a training event (`catalog_items: interacted`)
   or, with `all`, every item in the data or the catalog. Ids follow the sorted original ids (numeric
   order when every id is an integer). Held-out events whose user or item got no id are dropped: they
   could not be scored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from recloop.config import ColdStartConfig, ImplicitConfig, PreprocessConfig

_INT_ID = re.compile(r"^-?\d+$")


@dataclass
class PreprocessResult:
    """What preprocessing produced: the splits, id maps, aligned item frame, stats and cold items."""

    splits: dict[str, pd.DataFrame]  # train / valid / test: user_idx, item_idx, timestamp, weight, rating
    user_ids: list[str]  # user_idx -> original user id
    item_ids: list[str]  # item_idx -> original item id
    items: pd.DataFrame  # item_idx, item_id, text, categories for every item id
    stats: dict[str, Any]
    cold_items: pd.DataFrame | None  # item_idx, item_id of the cold-start items; None without cold start

    @property
    def split_info(self) -> dict[str, Any]:
        """How the data was split: the method, resolved cut-offs, cold-start item count."""
        return self.stats["split"]


# ---------------------------------------------------------------------------------------------- stages


def drop_unusable(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows without user, item or timestamp cannot be placed anywhere."""
    usable = df["user_id"].notna() & df["item_id"].notna() & df["timestamp"].notna()
    return df.loc[usable], int((~usable).sum())


def apply_implicit(df: pd.DataFrame, cfg: ImplicitConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep positives and compute `weight`; returns the frame and per-reason drop counts."""
    import pandas as pd

    dropped: dict[str, int] = {}
    weight = df["weight"].astype("float64").fillna(1.0) if "weight" in df else pd.Series(1.0, index=df.index)
    keep = pd.Series(True, index=df.index)
    if cfg.min_rating is not None:
        rating = df["rating"] if "rating" in df else pd.Series(np.nan, index=df.index)
        if len(df) and rating.isna().all():
            raise DataError(
                "preprocess.implicit.min_rating is set but no interaction has a rating; map "
                "data.interactions.columns.rating or remove preprocess.implicit.min_rating"
            )
        dropped["no_rating"] = int(rating.isna().sum())
        dropped["below_min_rating"] = int((rating < cfg.min_rating).sum())
        keep &= rating >= cfg.min_rating
    if cfg.event_weights is not None:
        events = df["event_type"] if "event_type" in df else pd.Series(None, index=df.index, dtype=object)
        if len(df) and events.isna().all():
            raise DataError(
                "preprocess.implicit.event_weights is set but no interaction has an event type; map "
                "data.interactions.columns.event_type or remove preprocess.implicit.event_weights"
            )
        event_weight = events.map(cfg.event_weights).astype("float64")
        dropped["event_type_not_weighted"] = int((keep & event_weight.isna()).sum())
        keep &= event_weight.notna()
        weight = weight * event_weight.fillna(0.0)
    out = df.loc[keep].copy()
    out["weight"] = weight.loc[keep].astype("float64")
    return out, dropped


def dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one event per (user, item, timestamp): the heaviest, the first in source order on ties."""
    ranked = df.sort_values(["weight", "_order"], ascending=[False, True], kind="stable")
    keep = ~ranked.duplicated(["user_id", "item_id", "timestamp"], keep="first")
    out = ranked.loc[keep].sort_values("_order", kind="stable")
    return out, int(len(df) - len(out))


def filter_min_counts(
    user: np.ndarray, item: np.ndarray, min_user: int, min_item: int, kcore: bool
) -> tuple[np.ndarray, int]:
    """Mask of events kept by the min-count filters and the number of passes made.

    Both counts come from the same events each pass; with `kcore` passes repeat until nothing changes,
    so every kept user has >= min_user and every kept item >= min_item kept events.
    """
    keep = np.ones(len(user), dtype=bool)
    passes = 0
    while True:
        passes += 1
        user_counts = np.bincount(user[keep], minlength=user.max() + 1 if len(user) else 0)
        item_counts = np.bincount(item[keep], minlength=item.max() + 1 if len(item) else 0)
        new = keep & (user_counts[user] >= min_user) & (item_counts[item] >= min_item)
        changed = int(new.sum()) != int(keep.sum())
        keep = new
        if not kcore or not changed:
            return keep, passes


def sorted_ids(values: Any) -> list[str]:
    """Distinct ids in a stable, human order: numeric when all are integers, else lexicographic."""
    distinct = sorted(set(values))
    if distinct and all(_INT_ID.match(v) for v in distinct):
        return sorted(distinct, key=lambda v: (int(v), v))
    return distinct


def hold_out_items(df: pd.DataFrame, share: float, seed: int, test_code: int) -> tuple[pd.DataFrame, list[str], int]:
    """Pick `share` of the items (seeded) and drop their non-test events, so no model trains on them.

    Returns the remaining frame, the held-out item ids, and how many events were dropped.
    """
    items = np.array(sorted_ids(df["item_id"]), dtype=object)
    n_cold = int(round(share * len(items)))
    if n_cold == 0:
        return df, [], 0
    rng = np.random.default_rng(seed)
    cold = sorted_ids(items[rng.choice(len(items), size=n_cold, replace=False)])
    is_cold = df["item_id"].isin(set(cold)).to_numpy()
    drop = is_cold & (df["_split"].to_numpy() != test_code)
    return df.loc[~drop], cold, int(drop.sum())


def _epoch_ns(ts: pd.Series) -> np.ndarray:
    import pandas as pd

    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        raise DataError(
            f"interactions.timestamp must be a timezone-aware timestamp (got {ts.dtype}); "
            "re-run ingest, which writes timestamp[ms, UTC]"
        )
    return ts.dt.as_unit("ns").astype("int64").to_numpy()


# ---------------------------------------------------------------------------------------------- pipeline


def _positives(df: pd.DataFrame, cfg: PreprocessConfig, dropped: dict[str, int]) -> pd.DataFrame:
    """Stages 1-3: usable rows, implicit positives, dedupe (drop counts go into `dropped`)."""
    df, dropped["missing_user_item_or_timestamp"] = drop_unusable(df)
    df, implicit_drops = apply_implicit(df, cfg.implicit)
    dropped.update(implicit_drops)
    if cfg.dedupe:
        df, dropped["duplicates"] = dedupe(df)
    return df


def _min_count_filtered(df: pd.DataFrame, cfg: PreprocessConfig, stats: dict[str, Any]) -> pd.DataFrame:
    """Stage 4, on dense codes of the original ids; raises DataError when nothing is left."""
    import pandas as pd

    user_codes, _ = pd.factorize(df["user_id"])
    item_codes, _ = pd.factorize(df["item_id"])
    keep, passes = filter_min_counts(
        user_codes, item_codes, cfg.min_user_interactions, cfg.min_item_interactions, cfg.kcore
    )
    stats["dropped"]["min_count_filter"] = int((~keep).sum())
    stats["filter"] = {
        "min_user_interactions": cfg.min_user_interactions,
        "min_item_interactions": cfg.min_item_interactions,
        "kcore": cfg.kcore,
        "passes": passes,
    }
    df = df.loc[keep]
    if df.empty:
        raise DataError(
            f"no interactions are left after preprocessing {stats['input_rows']} rows (dropped: {stats['dropped']}); "
            "lower preprocess.min_user_interactions / min_item_interactions, or check preprocess.implicit"
        )
    return df


def _labelled(df: pd.DataFrame, cfg: PreprocessConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stage 5: the frame with `_split` labels and `_ts` epoch nanoseconds, and how it was split."""
    import pandas as pd

    from recloop.data.splits import leave_last_out, resolve_cutoffs, time_cutoff

    ts_ns = _epoch_ns(df["timestamp"])
    split_info: dict[str, Any] = {"method": cfg.split.method}
    if cfg.split.method == "leave_last_out":
        users_dense = pd.factorize(df["user_id"])[0]
        labels = leave_last_out(users_dense, ts_ns, df["_order"].to_numpy())
    else:
        cutoffs = resolve_cutoffs(
            ts_ns, cfg.split.cutoff, cfg.split.valid_cutoff, cfg.split.test_share, cfg.split.valid_share
        )
        labels = time_cutoff(ts_ns, cutoffs)
        split_info.update(cutoffs.iso())
    return df.assign(_split=labels, _ts=ts_ns), split_info


def heldout_drops(dropped: dict[str, int], cfg: PreprocessConfig, has_catalog: bool) -> str:
    """Why validation and test events were dropped for lack of an id, with the setting that keeps them;
    '' when none were."""
    reasons = []
    if dropped.get("heldout_item_without_id"):
        if not has_catalog:
            keep = "only an item catalog (data.items) with preprocess.catalog_items: all gives them ids"
        elif cfg.catalog_items == "interacted":
            keep = "preprocess.catalog_items: all gives every catalog item an id and keeps them"
        else:
            keep = "they are not in the catalog (data.items) either"
        reasons.append(
            f"{dropped['heldout_item_without_id']} held-out event(s) of items without a training event were "
            f"dropped (dropped.heldout_item_without_id; {keep})"
        )
    if dropped.get("heldout_user_without_training_events"):
        reasons.append(
            f"{dropped['heldout_user_without_training_events']} held-out event(s) of users without a training "
            "event were dropped (dropped.heldout_user_without_training_events: a model cannot rank for them)"
        )
    return "; ".join(reasons)


def _id_lists(
    df: pd.DataFrame, catalog: pd.DataFrame | None, cfg: PreprocessConfig, cold_ids: list[str]
) -> tuple[list[str], list[str]]:
    """Stage 7's ids: users with a training event; items per `catalog_items` (cold items included)."""
    from recloop.data.splits import TRAIN

    train_mask = df["_split"].to_numpy() == TRAIN
    user_ids = sorted_ids(df.loc[train_mask, "user_id"])
    if cfg.catalog_items == "interacted":
        # Cold-start items get ids although no training event has them: that is the point.
        return user_ids, sorted_ids(set(df.loc[train_mask, "item_id"]) | set(cold_ids))
    pool = set(df["item_id"])
    if catalog is not None:
        pool |= set(catalog["item_id"].dropna().astype(str))
    return user_ids, sorted_ids(pool)


def _split_frames(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """train / valid / test frames in the output schema, sorted by user, time, source order."""
    import pandas as pd

    from recloop.data.splits import TEST, TRAIN, VALID

    frames: dict[str, pd.DataFrame] = {}
    for code, name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        part = df.loc[df["_split"] == code].sort_values(["user_idx", "_ts", "_order"], kind="stable")
        frames[name] = pd.DataFrame(
            {
                "user_idx": part["user_idx"].to_numpy(np.int32),
                "item_idx": part["item_idx"].to_numpy(np.int32),
                "timestamp": np.floor_divide(part["_ts"].to_numpy(np.int64), 1_000_000_000),
                "weight": part["weight"].to_numpy(np.float32),
                "rating": part["rating"].to_numpy(np.float64) if "rating" in part else np.full(len(part), np.nan),
            }
        )
    return frames


def preprocess(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame | None,
    cfg: PreprocessConfig,
    cold_start: ColdStartConfig,
    source: str = "interactions",
    progress: Callable[[int], None] = lambda _: None,
) -> PreprocessResult:
    """Validated interactions (user_id, item_id, timezone-aware timestamp; optional rating, weight,
    event_type) and the optional item catalog (item_id; optional text, categories) -> splits with
    contiguous ids.

    `source` names where the interactions came from, in errors and in the stats. `progress(1)` marks each
    of four stages done. Raises DataError when nothing usable is left or the train or test split is empty.
    """
    import pandas as pd

    from recloop.data.splits import SPLIT_NAMES, TEST

    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in interactions.columns]
    if missing:
        raise DataError(f"the interactions of {source} lack column(s) {', '.join(missing)}; re-run ingest")
    n_input = len(interactions)
    df = interactions.reset_index(drop=True)
    df["_order"] = np.arange(len(df), dtype=np.int64)  # source order, the tie-break everywhere
    stats: dict[str, Any] = {"source": source, "input_rows": n_input, "dropped": {}}
    dropped = stats["dropped"]

    df = _positives(df, cfg, dropped)
    progress(1)
    df = _min_count_filtered(df, cfg, stats)
    progress(1)

    df, split_info = _labelled(df, cfg)
    progress(1)

    cold_ids: list[str] = []
    if cold_start.item_share > 0:
        df, cold_ids, dropped["cold_start_train_valid_events"] = hold_out_items(
            df, cold_start.item_share, cold_start.seed, TEST
        )
        split_info["cold_start_items"] = len(cold_ids)

    user_ids, item_ids = _id_lists(df, catalog, cfg, cold_ids)
    user_index, item_index = pd.Index(user_ids), pd.Index(item_ids)
    df["user_idx"] = user_index.get_indexer(pd.Index(df["user_id"]))
    df["item_idx"] = item_index.get_indexer(pd.Index(df["item_id"]))
    unknown_user = (df["user_idx"] < 0).to_numpy()
    unknown_item = (df["item_idx"] < 0).to_numpy() & ~unknown_user
    dropped["heldout_user_without_training_events"] = int(unknown_user.sum())
    dropped["heldout_item_without_id"] = int(unknown_item.sum())
    df = df.loc[~(unknown_user | unknown_item)]
    progress(1)

    frames = _split_frames(df)
    if frames["train"].empty or frames["test"].empty:
        empty = "train" if frames["train"].empty else "test"
        held_out = heldout_drops(dropped, cfg, catalog is not None) if empty == "test" else ""
        hint = held_out or (
            "a user needs at least 2 events to contribute a test event; check preprocess.implicit and "
            "the min-count filters"
            if cfg.split.method == "leave_last_out"
            else "move preprocess.split.cutoff / valid_cutoff inside the data's time range "
            f"({df['timestamp'].min()} .. {df['timestamp'].max()})"
        )
        raise DataError(f"the {empty} split is empty after preprocessing {n_input} rows ({hint}; dropped: {dropped})")

    n_users, n_items = len(user_ids), len(item_ids)
    n_events = sum(len(f) for f in frames.values())
    stats.update(
        {
            "n_users": n_users,
            "n_items": n_items,
            "n_items_with_training_events": int(frames["train"]["item_idx"].nunique()),
            "catalog_items": cfg.catalog_items,
            "density": n_events / (n_users * n_items) if n_users and n_items else 0.0,
            "split": split_info,
            "splits": {name: _split_stats(frames[name]) for name in SPLIT_NAMES},
            "implicit": cfg.implicit.model_dump(mode="json"),
            "dedupe": cfg.dedupe,
        }
    )
    cold_items = None
    if cold_start.item_share > 0:
        cold_idx = np.sort(item_index.get_indexer(pd.Index(cold_ids))).astype(np.int32)
        cold_items = pd.DataFrame({"item_idx": cold_idx, "item_id": [item_ids[i] for i in cold_idx]})
        stats["cold_start"] = {
            "items": len(cold_idx),
            "item_share": cold_start.item_share,
            "test_events": int(frames["test"]["item_idx"].isin(set(cold_idx.tolist())).sum()),
        }
    return PreprocessResult(
        splits=frames,
        user_ids=user_ids,
        item_ids=item_ids,
        items=_aligned_items(item_index, catalog),
        stats=stats,
        cold_items=cold_items,
    )


def _split_stats(df: pd.DataFrame) -> dict[str, Any]:
    from datetime import datetime

    def iso(s: int) -> str:
        return datetime.fromtimestamp(int(s), tz=UTC).isoformat()

    return {
        "rows": int(len(df)),
        "users": int(df["user_idx"].nunique()),
        "items": int(df["item_idx"].nunique()),
        "min_timestamp": iso(df["timestamp"].min()) if len(df) else None,
        "max_timestamp": iso(df["timestamp"].max()) if len(df) else None,
    }


def _aligned_items(item_index: pd.Index, catalog: pd.DataFrame | None) -> pd.DataFrame:
    """item_idx, item_id, text, categories for every id; text falls back to the item id."""
    import pandas as pd

    out = pd.DataFrame({"item_idx": np.arange(len(item_index), dtype=np.int32), "item_id": list(item_index)})
    if catalog is None or "item_id" not in catalog.columns:
        out["text"] = out["item_id"]
        out["categories"] = [[] for _ in range(len(out))]
        return out
    cat = catalog.dropna(subset=["item_id"]).drop_duplicates("item_id", keep="first")
    cat = cat.set_index(cat["item_id"].astype(str).to_numpy())
    text = cat["text"].reindex(out["item_id"]) if "text" in cat else pd.Series(np.nan, index=out["item_id"])
    out["text"] = [t if isinstance(t, str) and t else i for t, i in zip(text.tolist(), out["item_id"])]
    if "categories" in cat:
        cats = cat["categories"].reindex(out["item_id"]).tolist()
        out["categories"] = [[str(c) for c in v] if v is not None and not isinstance(v, float) else [] for v in cats]
    else:
        out["categories"] = [[] for _ in range(len(out))]
    return out
