"""preprocess step: exact ids, splits and stats on hand-made frames; time-ordering and k-core properties."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pytest

from recloop.artifacts import Artifact
from recloop.artifacts.kinds import Dataset
from recloop.data.preprocess import filter_min_counts
from recloop.data.splits import TEST, TRAIN, VALID, leave_last_out, resolve_cutoffs, time_cutoff
from recloop.errors import DataError
from recloop.steps import preprocess
from recloop.steps.base import run_step
from support.helpers import make_config, make_context, utc, write_ingest_artifact

# Source order matters: rows 3 and 4 share a timestamp, row 11 repeats row 1 exactly.
EVENTS = pd.DataFrame(
    [
        ("1", "a", 100, 4.0),
        ("1", "b", 200, 5.0),
        ("1", "c", 300, 3.0),
        ("1", "d", 300, 4.0),
        ("2", "b", 150, 5.0),
        ("2", "c", 250, 2.0),
        ("2", "a", 350, 4.0),
        ("10", "d", 120, 4.0),
        ("10", "a", 220, 1.0),
        ("3", "c", 500, 5.0),
        ("1", "a", 100, 4.0),
    ],
    columns=["user_id", "item_id", "timestamp", "rating"],
)
ALL_KEPT = {"preprocess.min_user_interactions": 1, "preprocess.min_item_interactions": 1}


def _run(
    tmp_path,
    events: pd.DataFrame,
    overrides: dict | None = None,
    items: pd.DataFrame | None = None,
    validate: bool = False,
    store=None,
):
    cfg = make_config(store or tmp_path / "store", {**ALL_KEPT, **(overrides or {})})
    ctx = make_context(cfg)
    ingest_uri = write_ingest_artifact(ctx.store, "r1", events, items)
    inputs = {"ingest": ingest_uri}
    if validate:
        inputs["validate"] = run_step("validate", ctx).uri
    manifest = preprocess.run(ctx, inputs, ctx.store.uri("runs/r1/preprocess"))
    return Dataset.open(ctx.store, "runs/r1/preprocess"), manifest


def _rows(art: Dataset, split: Literal["train", "valid", "test"]) -> list[tuple]:
    df = art.split(split)
    return [tuple(r) for r in df[["user_idx", "item_idx", "timestamp"]].itertuples(index=False)]


def test_leave_last_out_exact_ids_splits_and_stats(tmp_path):
    art, manifest = _run(tmp_path, EVENTS)

    # Users in numeric id order (1, 2, 3, 10), not lexicographic; items a..d.
    users = art.user_ids()
    assert users["user_id"].tolist() == ["1", "2", "3", "10"]
    assert users["user_idx"].tolist() == [0, 1, 2, 3]
    assert art.item_ids()["item_id"].tolist() == ["a", "b", "c", "d"]

    # User 1's tie at t=300 is broken by source order: c (row 3) is valid, d (row 4) is test.
    # User "3" has a single event and stays in train; user "10" has two: one train, one test.
    assert _rows(art, "train") == [(0, 0, 100), (0, 1, 200), (1, 1, 150), (2, 2, 500), (3, 3, 120)]
    assert _rows(art, "valid") == [(0, 2, 300), (1, 2, 250)]
    assert _rows(art, "test") == [(0, 3, 300), (1, 0, 350), (3, 0, 220)]

    train = art.split("train")
    assert {c: str(t) for c, t in train.dtypes.items()} == {
        "user_idx": "int32",
        "item_idx": "int32",
        "timestamp": "int64",
        "weight": "float32",
        "rating": "float64",
    }
    assert train["rating"].tolist() == [4.0, 5.0, 5.0, 5.0, 4.0]
    assert train["weight"].tolist() == [1.0] * 5

    s = manifest.summary
    assert (s["n_users"], s["n_items"], s["n_train"], s["n_valid"], s["n_test"]) == (4, 4, 5, 2, 3)
    assert s["density"] == pytest.approx(10 / 16)
    assert s["split"] == "leave_last_out"

    stats = art.stats()
    assert stats["input_rows"] == 11
    assert stats["dropped"]["duplicates"] == 1
    assert stats["dropped"]["min_count_filter"] == 0
    assert stats["splits"]["test"] == {
        "rows": 3,
        "users": 3,
        "items": 2,
        "min_timestamp": "1970-01-01T00:03:40+00:00",
        "max_timestamp": "1970-01-01T00:05:50+00:00",
    }
    assert stats["source"].endswith("runs/r1/ingest")
    assert set(manifest.files) >= {
        "train.parquet",
        "valid.parquet",
        "test.parquet",
        "id_maps/users.parquet",
        "id_maps/items.parquet",
        "items.parquet",
        "stats.json",
    }

    items = art.items()  # no catalog: text is the item id
    assert items["text"].tolist() == ["a", "b", "c", "d"]
    assert [list(c) for c in items["categories"]] == [[], [], [], []]


def test_time_cutoff_explicit_drops_heldout_without_ids(tmp_path):
    art, manifest = _run(
        tmp_path,
        EVENTS,
        {
            "preprocess.split.method": "time_cutoff",
            "preprocess.split.cutoff": "1970-01-01T00:05:00Z",
            "preprocess.split.valid_cutoff": "1970-01-01T00:03:20Z",
        },
    )
    # Train is t <= 200: users 1, 2, 10 and items a, b, d get ids. User "3" (only a test event) and
    # item c (no training event) cannot be scored, so their held-out events are dropped.
    assert art.user_ids()["user_id"].tolist() == ["1", "2", "10"]
    assert art.item_ids()["item_id"].tolist() == ["a", "b", "d"]
    assert _rows(art, "train") == [(0, 0, 100), (0, 1, 200), (1, 1, 150), (2, 2, 120)]
    assert _rows(art, "valid") == [(0, 2, 300), (2, 0, 220)]
    assert _rows(art, "test") == [(1, 0, 350)]
    assert manifest.summary["cutoff"] == "1970-01-01T00:05:00+00:00"
    assert manifest.summary["valid_cutoff"] == "1970-01-01T00:03:20+00:00"
    stats = art.stats()
    assert stats["dropped"]["heldout_user_without_training_events"] == 1
    assert stats["dropped"]["heldout_item_without_id"] == 2
    # The step summary says it, with the setting that keeps them (catalog_items: interacted is the default).
    assert manifest.summary["heldout_events_dropped"] == {
        "heldout_item_without_id": 2,
        "heldout_user_without_training_events": 1,
    }
    from recloop.data.preprocess import heldout_drops

    assert heldout_drops(stats["dropped"], make_config(tmp_path / "s", ALL_KEPT).preprocess, True) == (
        "2 held-out event(s) of items without a training event were dropped (dropped.heldout_item_without_id; "
        "preprocess.catalog_items: all gives every catalog item an id and keeps them); 1 held-out event(s) of "
        "users without a training event were dropped (dropped.heldout_user_without_training_events: a model "
        "cannot rank for them)"
    )


def test_an_empty_test_split_names_the_counter_that_emptied_it(tmp_path):
    from recloop.errors import DataError

    # Every test event's item is new after the cutoff: the test split empties through held-out items.
    events = pd.DataFrame(
        {"user_id": ["1", "1", "2", "2"], "item_id": ["a", "b", "a", "z"], "timestamp": [100, 200, 150, 400]}
    )
    with pytest.raises(DataError) as failed:
        _run(
            tmp_path,
            events,
            {"preprocess.split.method": "time_cutoff", "preprocess.split.cutoff": "1970-01-01T00:05:00Z"},
        )
    assert "the test split is empty after preprocessing 4 rows (2 held-out event(s) of items without a training" in str(
        failed.value
    )
    assert "min-count" not in str(failed.value)


def test_catalog_items_all_keeps_cold_items_with_catalog_text(tmp_path):
    catalog = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "text": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"],
            "categories": [["x"], ["y", "z"], [], ["x"], ["q"]],
        }
    )
    art, manifest = _run(
        tmp_path,
        EVENTS,
        {
            "preprocess.split.method": "time_cutoff",
            "preprocess.split.cutoff": "1970-01-01T00:05:00Z",
            "preprocess.split.valid_cutoff": "1970-01-01T00:03:20Z",
            "preprocess.catalog_items": "all",
        },
        items=catalog,
    )
    items = art.items()
    assert items["item_idx"].tolist() == [0, 1, 2, 3, 4]
    assert items["item_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert items["text"].tolist() == ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]
    assert [list(c) for c in items["categories"]] == [["x"], ["y", "z"], [], ["x"], ["q"]]
    # Item c has no training event but an id now, so its validation events stay.
    assert _rows(art, "valid") == [(0, 2, 300), (0, 3, 300), (1, 2, 250), (2, 0, 220)]
    assert manifest.summary["n_items"] == 5


def test_heldout_events_never_precede_training_events(tmp_path):
    rng = np.random.default_rng(7)
    n = 600
    events = pd.DataFrame(
        {
            "user_id": rng.integers(0, 40, n).astype(str),
            "item_id": rng.integers(0, 25, n).astype(str),
            "timestamp": rng.integers(1_000, 1_060, n),
        }
    )  # many ties on purpose
    art, _ = _run(tmp_path, events, {"preprocess.dedupe": False, "preprocess.catalog_items": "all"})
    train, valid, test = (art.split(s) for s in ("train", "valid", "test"))
    last_train = train.groupby("user_idx")["timestamp"].max()
    for held in (valid, test):
        first_held = held.groupby("user_idx")["timestamp"].min()
        assert (last_train.reindex(first_held.index) <= first_held).all()
    pairs = valid.merge(test, on="user_idx", suffixes=("_valid", "_test"))
    assert len(pairs) == len(valid) and (pairs["timestamp_valid"] <= pairs["timestamp_test"]).all()
    # One test event per user with >= 2 events, one valid per user with >= 3.
    assert test["user_idx"].is_unique and valid["user_idx"].is_unique
    assert len(train) + len(valid) + len(test) == n


def test_global_cutoff_from_shares_separates_splits(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    events = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, n).astype(str),
            "item_id": rng.integers(0, 10, n).astype(str),
            "timestamp": rng.integers(10_000, 20_000, n),
        }
    )
    art, manifest = _run(
        tmp_path,
        events,
        {
            "preprocess.split.method": "time_cutoff",
            "preprocess.split.test_share": 0.2,
            "preprocess.split.valid_share": 0.1,
        },
    )
    cutoff = int(pd.Timestamp(manifest.summary["cutoff"]).timestamp())
    valid_cutoff = int(pd.Timestamp(manifest.summary["valid_cutoff"]).timestamp())
    train, valid, test = (art.split(s) for s in ("train", "valid", "test"))
    assert train["timestamp"].max() <= valid_cutoff < valid["timestamp"].min()
    assert valid["timestamp"].max() <= cutoff < test["timestamp"].min()
    # Shares hold up to timestamp ties (every user and item has training events here).
    assert len(test) == pytest.approx(0.2 * n, abs=3)
    assert len(valid) == pytest.approx(0.1 * n, abs=3)


def test_min_count_filter_single_pass_and_kcore_fixed_point(tmp_path):
    # u2 has 2 events; dropping it leaves i3 with 1, dropping that leaves u3 with 2: a chain only k-core follows.
    pairs = [
        ("u0", "i0"),
        ("u0", "i1"),
        ("u0", "i2"),
        ("u1", "i0"),
        ("u1", "i1"),
        ("u1", "i2"),
        ("u2", "i0"),
        ("u2", "i3"),
        ("u3", "i3"),
        ("u3", "i0"),
        ("u3", "i1"),
    ]
    events = pd.DataFrame(pairs, columns=["user_id", "item_id"]).assign(timestamp=range(100, 100 + len(pairs)))
    filters = {
        "preprocess.min_user_interactions": 3,
        "preprocess.min_item_interactions": 2,
        "preprocess.catalog_items": "all",
    }

    art, m = _run(tmp_path / "single", events, filters)
    assert art.user_ids()["user_id"].tolist() == ["u0", "u1", "u3"]
    assert m.summary["n_train"] + m.summary["n_valid"] + m.summary["n_test"] == 9
    assert art.stats()["filter"]["passes"] == 1

    art, m = _run(tmp_path / "kcore", events, {**filters, "preprocess.kcore": True})
    assert art.user_ids()["user_id"].tolist() == ["u0", "u1"]
    assert art.item_ids()["item_id"].tolist() == ["i0", "i1", "i2"]
    stats = art.stats()
    assert stats["dropped"]["min_count_filter"] == 5
    assert stats["filter"]["passes"] == 4  # three passes that drop, one that confirms the fixed point
    all_events = pd.concat([art.split(s) for s in ("train", "valid", "test")])
    assert all_events.groupby("user_idx").size().min() >= 3
    assert all_events.groupby("item_idx").size().min() >= 2


def test_filter_min_counts_unit():
    user = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    item = np.array([0, 1, 2, 0, 1, 2, 0, 3, 3, 0, 1])
    keep, passes = filter_min_counts(user, item, 3, 2, kcore=True)
    assert keep.tolist() == [True] * 6 + [False] * 5
    assert passes == 4
    keep, passes = filter_min_counts(user, item, 3, 2, kcore=False)
    assert keep.tolist() == [True] * 6 + [False, False] + [True] * 3
    assert passes == 1


def test_event_weights_and_dedupe_keep_heaviest(tmp_path):
    events = pd.DataFrame(
        [
            ("u", "i1", 10, "view", None),
            ("u", "i1", 10, "buy", None),  # same (user, item, time): buy wins
            ("u", "i2", 20, "like", None),  # not in event_weights: dropped
            ("u", "i3", 30, "view", 2.0),  # source weight multiplies the event weight
            ("u", "i4", 40, "buy", None),
            ("v", "i1", 5, "view", None),
            ("v", "i3", 6, "view", None),
        ],
        columns=["user_id", "item_id", "timestamp", "event_type", "weight"],
    )
    art, m = _run(
        tmp_path,
        events,
        {"preprocess.implicit.event_weights": {"view": 1.0, "buy": 5.0}, "preprocess.catalog_items": "all"},
    )
    train = art.split("train")
    valid = art.split("valid")
    test = art.split("test")
    # Items i1, i3, i4 get ids 0, 1, 2 (i2 only had "like" events).
    # user u: i1 (buy, 5) train, i3 (view x 2) valid, i4 (buy) test; user v: i1 train, i3 test.
    assert list(zip(train["user_idx"], train["item_idx"], train["weight"])) == [(0, 0, 5.0), (1, 0, 1.0)]
    assert list(zip(valid["item_idx"], valid["weight"])) == [(1, 2.0)]
    assert list(zip(test["user_idx"], test["item_idx"], test["weight"])) == [(0, 2, 5.0), (1, 1, 1.0)]
    dropped = art.stats()["dropped"]
    assert dropped["event_type_not_weighted"] == 1
    assert dropped["duplicates"] == 1


def test_min_rating_keeps_positives(tmp_path):
    events = EVENTS.copy()
    events.loc[5, "rating"] = np.nan  # ("2", "c", 250): no rating, cannot be a positive
    art, m = _run(tmp_path, events, {"preprocess.implicit.min_rating": 4.0})
    dropped = art.stats()["dropped"]
    assert dropped["below_min_rating"] == 2  # ("1","c",3.0) and ("10","a",1.0)
    assert dropped["no_rating"] == 1
    all_events = pd.concat([art.split(s) for s in ("train", "valid", "test")])
    assert (all_events["rating"] >= 4.0).all()
    assert len(all_events) == 11 - 1 - 2 - 1  # minus duplicate, low ratings, missing rating


def test_min_rating_without_any_rating_is_a_clear_error(tmp_path):
    events = EVENTS.drop(columns=["rating"])
    with pytest.raises(DataError, match="min_rating is set but no interaction has a rating"):
        _run(tmp_path, events, {"preprocess.implicit.min_rating": 3.5})


def test_everything_filtered_out_names_the_filters(tmp_path):
    with pytest.raises(DataError, match="no interactions are left.*min_user_interactions"):
        _run(tmp_path, EVENTS, {"preprocess.min_user_interactions": 50})


def test_reads_only_valid_rows_after_quarantine(tmp_path):
    events = EVENTS.iloc[:10].copy()
    events.loc[1, "rating"] = 9.0  # ("1", "b", 200): out of range -> quarantined
    art, m = _run(
        tmp_path,
        events,
        {
            "validation.on_failure": "quarantine",
            "validation.rating_range": [0.5, 5.0],
            "validation.min_valid_share": 0.5,
            "validation.data_docs": False,
        },
        validate=True,
    )
    stats = art.stats()
    assert stats["source"].endswith("runs/r1/validate")
    assert stats["input_rows"] == 9
    all_events = pd.concat([art.split(s) for s in ("train", "valid", "test")])
    assert 9.0 not in all_events["rating"].tolist()
    assert len(all_events) == 9
    # User 1 now has a, c, d: c (t=300, row 3) becomes valid, d test, a train.
    assert _rows(art, "train")[:1] == [(0, 0, 100)]
    assert m.parents[-1].endswith("runs/r1/validate")


@pytest.mark.s3
def test_validate_and_preprocess_on_s3(tmp_path, s3_store_config):
    events = EVENTS.iloc[:10].copy()
    events.loc[1, "rating"] = 9.0
    art, m = _run(
        tmp_path,
        events,
        {
            "validation.on_failure": "quarantine",
            "validation.rating_range": [0.5, 5.0],
            "validation.min_valid_share": 0.5,
        },
        validate=True,
        store=s3_store_config,
    )
    assert m.uri == f"{s3_store_config.root}/runs/r1/preprocess"
    assert art.stats()["input_rows"] == 9
    assert _rows(art, "test") == [(0, 3, 300), (1, 0, 350), (3, 0, 220)]
    validated = Artifact.open(art.artifact.store, "runs/r1/validate")
    assert validated.manifest.summary["quarantined_rows"] == 1
    assert "data_docs/index.html" in validated.manifest.files
    assert b"<html" in validated.read_bytes("data_docs/index.html").lower()


def test_without_quarantine_reads_ingest(tmp_path):
    art, _ = _run(tmp_path, EVENTS.iloc[:10], {"validation.data_docs": False}, validate=True)
    assert art.stats()["source"].endswith("runs/r1/ingest")


# ---------------------------------------------------------------------------------------------- splits unit


def test_leave_last_out_labels_unit():
    user = np.array([5, 5, 5, 7, 7, 9, 5])
    ts = np.array([10, 30, 30, 1, 2, 3, 20])
    labels = leave_last_out(user, ts)
    # user 5 in time order: 10, 20, 30 (position 1), 30 (position 2): the tie goes by position.
    assert labels.tolist() == [TRAIN, VALID, TEST, TRAIN, TEST, TRAIN, TRAIN]


def test_resolve_cutoffs_from_shares_unit():
    ts = np.arange(1, 11, dtype=np.int64) * 1_000_000_000  # 1 s .. 10 s
    cut = resolve_cutoffs(ts, None, None, test_share=0.2, valid_share=0.3)
    assert (cut.test_after, cut.valid_after) == (8_000_000_000, 5_000_000_000)
    assert time_cutoff(ts, cut).tolist() == [TRAIN] * 5 + [VALID] * 3 + [TEST] * 2
    explicit = resolve_cutoffs(ts, utc(1970, 1, 1, 0, 0, 6), None, test_share=0.5, valid_share=0.2)
    assert (explicit.test_after, explicit.valid_after) == (6_000_000_000, 4_000_000_000)
