"""The pure preprocess function: exact splits, ids, items and stats on hand-built frames, no store."""

from __future__ import annotations

import pandas as pd
import pytest

from recloop.config import ColdStartConfig, PreprocessConfig
from recloop.data.preprocess import preprocess
from recloop.errors import DataError

# Rows 5 and 6 are the same (user, item, timestamp) with equal weight: the first in source order stays.
EVENTS = pd.DataFrame(
    [
        ("1", "a", 100, 4.0),
        ("1", "b", 200, 5.0),
        ("1", "c", 300, 3.0),
        ("2", "b", 150, 5.0),
        ("2", "a", 250, 2.0),
        ("2", "a", 250, 4.0),
        ("2", "c", 350, 4.0),
        ("3", "c", 400, 5.0),
    ],
    columns=["user_id", "item_id", "timestamp", "rating"],
).assign(timestamp=lambda d: pd.to_datetime(d["timestamp"], unit="s", utc=True))
KEEP_ALL = PreprocessConfig(min_user_interactions=1, min_item_interactions=1)
NO_COLD = ColdStartConfig()


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[["user_idx", "item_idx", "timestamp", "rating"]].itertuples(index=False)]


def test_leave_last_out_gives_exact_splits_ids_and_stats():
    calls: list[int] = []
    result = preprocess(EVENTS, None, KEEP_ALL, NO_COLD, source="mem://events", progress=calls.append)

    assert result.user_ids == ["1", "2", "3"]
    assert result.item_ids == ["a", "b", "c"]
    # (user_idx, item_idx, epoch seconds, rating), sorted by user then time.
    assert _rows(result.splits["train"]) == [(0, 0, 100, 4.0), (1, 1, 150, 5.0), (2, 2, 400, 5.0)]
    assert _rows(result.splits["valid"]) == [(0, 1, 200, 5.0), (1, 0, 250, 2.0)]
    assert _rows(result.splits["test"]) == [(0, 2, 300, 3.0), (1, 2, 350, 4.0)]
    assert {str(t) for t in result.splits["train"].dtypes} == {"int32", "int64", "float32", "float64"}
    assert result.splits["train"]["weight"].tolist() == [1.0, 1.0, 1.0]

    assert result.stats["source"] == "mem://events"
    assert result.stats["input_rows"] == 8
    assert result.stats["dropped"]["duplicates"] == 1
    assert result.stats["dropped"]["min_count_filter"] == 0
    assert result.stats["n_users"] == 3 and result.stats["n_items"] == 3
    assert result.stats["density"] == pytest.approx(7 / 9)
    assert result.split_info == {"method": "leave_last_out"}
    assert result.cold_items is None
    assert calls == [1, 1, 1, 1]
    # Without a catalog, an item's text is its id.
    assert result.items.to_dict("list") == {
        "item_idx": [0, 1, 2],
        "item_id": ["a", "b", "c"],
        "text": ["a", "b", "c"],
        "categories": [[], [], []],
    }


def test_input_frame_is_not_modified():
    before = EVENTS.copy()
    preprocess(EVENTS, None, KEEP_ALL, NO_COLD)
    pd.testing.assert_frame_equal(EVENTS, before)


def _time_cutoff(catalog_items: str) -> PreprocessConfig:
    split = KEEP_ALL.split.model_copy(
        update={
            "method": "time_cutoff",
            "cutoff": pd.Timestamp(300, unit="s", tz="UTC").to_pydatetime(),
            "valid_cutoff": pd.Timestamp(200, unit="s", tz="UTC").to_pydatetime(),
        }
    )
    return KEEP_ALL.model_copy(update={"split": split, "catalog_items": catalog_items})


def test_time_cutoff_drops_heldout_events_without_ids():
    result = preprocess(EVENTS, None, _time_cutoff("all"), NO_COLD)

    # Train: events up to 200 s. User 3's only event (400 s) is held out and gets no user id.
    assert result.user_ids == ["1", "2"]
    assert result.item_ids == ["a", "b", "c"]
    assert _rows(result.splits["train"]) == [(0, 0, 100, 4.0), (0, 1, 200, 5.0), (1, 1, 150, 5.0)]
    # The event at exactly the cut-off (300 s) stays on the earlier side.
    assert _rows(result.splits["valid"]) == [(0, 2, 300, 3.0), (1, 0, 250, 2.0)]
    assert _rows(result.splits["test"]) == [(1, 2, 350, 4.0)]
    assert result.stats["dropped"]["heldout_user_without_training_events"] == 1
    assert result.stats["dropped"]["heldout_item_without_id"] == 0
    assert result.split_info["method"] == "time_cutoff"
    assert result.split_info["cutoff"].startswith("1970-01-01T00:05:00")


def test_empty_test_split_is_a_data_error_with_a_hint():
    # Only training items get ids, and c (the only item after the cut-off) has no training event.
    # The hint names the counter that emptied it, not the cut-off.
    with pytest.raises(DataError) as failed:
        preprocess(EVENTS, None, _time_cutoff("interacted"), NO_COLD)
    assert str(failed.value).startswith(
        "the test split is empty after preprocessing 8 rows (2 held-out event(s) of items without a training event "
        "were dropped (dropped.heldout_item_without_id; only an item catalog (data.items) with "
        "preprocess.catalog_items: all gives them ids)"
    )


def test_catalog_all_gives_ids_and_text_to_items_nobody_interacted_with():
    catalog = pd.DataFrame(
        {
            "item_id": ["a", "z", "a"],
            "text": ["Apple", "Zebra", "ignored duplicate"],
            "categories": [["fruit"], ["animal", "stripes"], ["x"]],
        }
    )
    cfg = KEEP_ALL.model_copy(update={"catalog_items": "all"})
    result = preprocess(EVENTS, catalog, cfg, NO_COLD)

    assert result.item_ids == ["a", "b", "c", "z"]
    assert result.items.to_dict("list") == {
        "item_idx": [0, 1, 2, 3],
        "item_id": ["a", "b", "c", "z"],
        "text": ["Apple", "b", "c", "Zebra"],
        "categories": [["fruit"], [], [], ["animal", "stripes"]],
    }
    assert result.stats["n_items_with_training_events"] == 3


def test_min_rating_and_min_counts_filter_before_splitting():
    cfg = PreprocessConfig(min_user_interactions=2, min_item_interactions=1, implicit={"min_rating": 4.0})
    result = preprocess(EVENTS, None, cfg, NO_COLD)

    # Ratings >= 4 leave u1: a, b; u2: b, a (the 4.0 duplicate), c; u3: c. User 3 has one event left.
    assert result.stats["dropped"]["below_min_rating"] == 2
    assert result.stats["dropped"]["min_count_filter"] == 1
    assert result.user_ids == ["1", "2"]
    assert _rows(result.splits["train"]) == [(0, 0, 100, 4.0), (1, 1, 150, 5.0)]
    assert _rows(result.splits["valid"]) == [(1, 0, 250, 4.0)]
    # With user 3 gone no training event has item c, so u2's test event on c has no item id.
    assert result.item_ids == ["a", "b"]
    assert _rows(result.splits["test"]) == [(0, 1, 200, 5.0)]
    assert result.stats["dropped"]["heldout_item_without_id"] == 1


def test_cold_items_lose_train_and_valid_events_but_keep_ids_and_test_events():
    result = preprocess(EVENTS, None, KEEP_ALL, ColdStartConfig(item_share=0.34, seed=3))

    assert result.cold_items is not None and len(result.cold_items) == 1
    cold_idx = int(result.cold_items["item_idx"].iloc[0])
    assert result.item_ids[cold_idx] == result.cold_items["item_id"].iloc[0]
    for name in ("train", "valid"):
        assert cold_idx not in set(result.splits[name]["item_idx"])
    assert result.stats["cold_start"]["test_events"] == int((result.splits["test"]["item_idx"] == cold_idx).sum())
    assert result.split_info["cold_start_items"] == 1


def test_missing_columns_name_the_source():
    with pytest.raises(DataError, match=r"mem://x lack column\(s\) timestamp; re-run ingest"):
        preprocess(EVENTS.drop(columns=["timestamp"]), None, KEEP_ALL, NO_COLD, source="mem://x")
