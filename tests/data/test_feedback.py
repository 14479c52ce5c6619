"""The feedback step: serving logs (written by serving's own EventLog) -> labelled interactions, bandit logs,
abuse quarantine, and files the next ingest reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recloop.config import StoreConfig
from recloop.feedback.sink import appended_name
from recloop.feedback.window import claim_window
from recloop.steps import feedback as feedback_step
from recloop.steps.base import RunParams, StepContext, run_step
from support.feedback_helpers import event, slate, write_logs
from support.helpers import make_config, make_context

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def basic_logs() -> tuple[list[dict], list[dict]]:
    impressions = [
        slate("r1", "u1", ["a", "b", "c"], at(0)),
        slate("r2", "u2", ["b", "c", "d"], at(60)),
        slate("r3", "u1", ["d", "e", "f"], at(120), propensities=[0.9, 0.05, 0.05]),
        slate("r2", "u2", ["b", "c", "d"], at(60)),  # the same slate written twice (at-least-once delivery)
    ]
    feedback = [
        event("f1", "r1", "u1", "b", at(10)),
        event("f2", "r2", "u2", "d", at(65)),
        event("f3", "r2", "u2", "d", at(80), "purchase", 12.5),
        event("f4", "r3", "u1", "e", at(125), "view"),
        event("f5", None, "u3", "g", at(300), "rating", 4.0),
        event("f1", "r1", "u1", "b", at(10)),  # duplicate delivery of f1
    ]
    return impressions, feedback


def test_joins_slates_and_events_into_interactions_bandit_log_and_ingestible_files(tmp_path: Path) -> None:
    events_dir = tmp_path / "events"
    events_dir.mkdir()
    (events_dir / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\nu1,a,4.0,1700000000\nu2,c,3.5,1700000100\n"
    )
    cfg = make_config(
        tmp_path / "store",
        {
            "data.interactions": {
                "path": str(events_dir),
                "columns": {"user": "userId", "item": "movieId", "timestamp": "timestamp", "rating": "rating"},
            },
            "feedback.output": str(events_dir / "feedback"),
            "feedback.event_ratings": {"click": 4.0},
        },
    )
    ctx = make_context(cfg, run_id="fb1")
    write_logs(ctx.store, *basic_logs())

    manifest = run_step("feedback", ctx)
    art = ctx.open(manifest.uri)

    inter = art.read_parquet("interactions.parquet")
    got = sorted(
        zip(
            inter["user_id"],
            inter["item_id"],
            inter["event_type"],
            inter["reward"],
            inter["position"].astype("float").fillna(0).astype(int),
        )
    )
    assert got == [
        ("u1", "b", "click", 1.0, 2),
        ("u2", "d", "click", 1.0, 3),
        ("u2", "d", "purchase", 1.0, 3),
        ("u3", "g", "rating", 1.0, 0),
    ]
    slots = art.read_parquet("bandit_log.parquet")
    assert len(slots) == 9  # three distinct slates of three items
    clicked = slots[slots["clicked"]]
    assert sorted(zip(clicked["request_id"], clicked["item_id"], clicked["position"])) == [
        ("r1", "b", 2),
        ("r2", "d", 3),
    ]
    assert slots.loc[slots["request_id"] == "r3", "propensity"].tolist() == [0.9, 0.05, 0.05]

    s = manifest.summary
    assert (s["new_interactions"], s["impressions"], s["shown"], s["clicks"]) == (4, 3, 9, 2)
    assert s["ctr"] == round(2 / 9, 6)
    assert s["quarantined"] == 0
    report = art.read_json("report.json")
    assert report["read"]["duplicate_impressions"] == 1 and report["read"]["duplicate_feedback"] == 1
    assert report["events"]["organic"] == 1 and report["events"]["attributed"] == 4
    assert report["online"]["by_position"] == {"1": 0.0, "2": round(1 / 3, 6), "3": round(1 / 3, 6)}
    assert "CTR 22.22%" in art.read_bytes("report.md").decode()

    # Appended in the ingest input format: the config's column names, epoch seconds, event ratings.
    appended = events_dir / "feedback" / "feedback-fb1.csv"
    assert s["appended_uri"] == str(appended) and s["picked_up_by_next_ingest"] is True
    rows = pd.read_csv(appended).sort_values(["timestamp", "movieId"]).fillna(-1.0)
    assert list(rows.columns) == ["userId", "movieId", "timestamp", "rating"]
    assert rows.values.tolist() == [  # purchases have no configured rating (-1 stands for empty)
        ["u1", "b", int(at(10).timestamp()), 4.0],
        ["u2", "d", int(at(65).timestamp()), 4.0],
        ["u2", "d", int(at(80).timestamp()), -1.0],
        ["u3", "g", int(at(300).timestamp()), 4.0],
    ]

    # The next ingest reads the original events and the appended feedback together.
    ingest = run_step("ingest", make_context(cfg, run_id="next"))
    assert ingest.summary["rows"]["interactions"] == 2 + 4


@pytest.fixture(params=[pytest.param("file"), pytest.param("s3", marks=pytest.mark.s3)])
def store_section(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """The same test against a file:// store and an S3 (SeaweedFS) store."""
    if request.param == "file":
        return StoreConfig(root=f"file://{tmp_path / 'store'}")
    return request.getfixturevalue("s3_store_config")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The feedback step's notion of now (it processes logs up to now - attribution window)."""
    now = [T0 + timedelta(hours=2)]
    monkeypatch.setattr(feedback_step, "_utcnow", lambda: now[0])
    return now


def test_default_output_is_the_store_and_the_report_says_ingest_will_not_see_it(store_section: StoreConfig) -> None:
    cfg = make_config(store_section, {"data.interactions.path": "/nonexistent/events.csv"})
    ctx = make_context(cfg, run_id="fb1")
    write_logs(ctx.store, *basic_logs())

    manifest = run_step("feedback", ctx)

    key = "feedback/interactions/feedback-fb1.csv"
    assert manifest.summary["appended_uri"] == ctx.store.uri(key)
    lines = ctx.store.get_bytes(key).decode().splitlines()
    assert lines[0] == "user_id,item_id,timestamp" and len(lines) == 1 + 4
    assert manifest.summary["picked_up_by_next_ingest"] is False
    report = ctx.open(manifest.uri).read_json("report.json")
    assert "does not include" in report["appended"]["hint"]
    assert (manifest.summary["clicks"], manifest.summary["shown"]) == (2, 9)


def abuse_logs() -> tuple[list[dict], list[dict]]:
    imps: list[dict] = []
    fb: list[dict] = []
    n = 0

    def ev(*args: Any, **kwargs: Any) -> None:
        nonlocal n
        n += 1
        fb.append(event(f"e{n}", *args, **kwargs))

    for i in range(5):  # bot: five clicks within four seconds
        ev(None, "bot", f"x{i}", at(1000 + i))
    for i in range(9):  # heavy: nine organic clicks a minute apart, over the daily cap of 8
        ev(None, "heavy", f"h{i}", at(2000 + 60 * i))
    imps.append(slate("r10", "rep", ["p", "q"], at(3000)))
    for i in range(3):  # rep: the same shown item clicked three times
        ev("r10", "rep", "p", at(3010 + 20 * i))
    for i in range(4):  # four users click an item nobody was shown
        ev(None, f"s{i}", "spiky", at(4000 + 30 * i))
    for i in range(5):  # five slates show "hot" and each user clicks it; the item cap is 3 a day
        imps.append(slate(f"c{i}", f"c{i}", ["hot", "cold"], at(5000 + 30 * i)))
        ev(f"c{i}", f"c{i}", "hot", at(5005 + 30 * i))
    imps.append(slate("r20", "ns", ["a"], at(6000)))
    ev("r20", "ns", "zz", at(6005))  # clicked an item the slate did not show
    imps.append(slate("r21", "m1", ["a"], at(6100)))
    ev("r21", "m2", "a", at(6105))  # another user's slate
    imps.append(slate("r22", "lt", ["a"], at(6200)))
    ev("r22", "lt", "a", at(6200 + 2 * 3600))  # after the one-hour attribution window
    ev(None, None, "a", at(6300))  # anonymous organic event
    return imps, fb


def test_abuse_rules_quarantine_exactly_the_offending_events(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path / "store",
        {
            "feedback.abuse": {
                "burst_events": 5,
                "burst_window": "10s",
                "max_user_events_per_day": 8,
                "max_repeat_events": 1,
                "spike_min_events": 4,
                "spike_ratio": 1.0,
                "max_item_events_per_day": 3,
            }
        },
    )
    ctx = make_context(cfg, run_id="fb1")
    write_logs(ctx.store, *abuse_logs())

    manifest = run_step("feedback", ctx)

    art = ctx.open(manifest.uri)
    report = art.read_json("report.json")
    assert report["quarantine"]["by_reason"] == {
        "not_shown": 1,
        "user_mismatch": 1,
        "bot_burst": 5,
        "user_rate_cap": 9,
        "repeated_event": 2,
        "unattributed_spike": 4,
        "item_rate_cap": 2,
    }
    assert report["events"]["late"] == 1 and report["events"]["no_user"] == 1
    q = art.read_parquet("quarantine/feedback.parquet")
    assert len(q) == 24 and set(q.loc[q["user_key"] == "bot", "quarantine_reason"]) == {"bot_burst"}
    # The oldest repeated click and the first three clicks on "hot" stay.
    inter = art.read_parquet("interactions.parquet").sort_values("timestamp")
    assert list(zip(inter["user_id"], inter["item_id"])) == [("rep", "p"), ("c0", "hot"), ("c1", "hot"), ("c2", "hot")]
    assert inter["timestamp"].iloc[0] == pd.Timestamp(at(3010))
    assert manifest.summary["quarantine_reasons"]["user_rate_cap"] == 9
    assert report["quarantine"]["top_users"][0] == {"user_key": "heavy", "events": 9, "reasons": ["user_rate_cap"]}


def test_each_log_is_processed_once_retries_redo_their_window_and_crashed_claims_are_taken_over(
    tmp_path: Path, clock: list[datetime]
) -> None:
    events_dir = tmp_path / "events"
    cfg = make_config(tmp_path / "store", {"feedback.output": str(events_dir)})
    store = make_context(cfg).store
    write_logs(store, *basic_logs())
    first = run_step("feedback", make_context(cfg, run_id="fb1"))
    assert first.summary["new_interactions"] == 4
    assert first.summary["window_until"] == (T0 + timedelta(hours=1)).isoformat(timespec="milliseconds")

    # Nothing new: an empty artifact (the feedback DAG then does not trigger training).
    clock[0] = T0 + timedelta(hours=2, minutes=1)
    second = run_step("feedback", make_context(cfg, run_id="fb2"))
    assert (second.summary["new_interactions"], second.summary["impressions"]) == (0, 0)
    assert second.summary["window_since"] == first.summary["window_until"]
    assert not (events_dir / "feedback-fb2.csv").exists()

    n2 = T0 + timedelta(minutes=90)
    write_logs(store, [slate("n2", "u9", ["c", "d"], n2)], [event("g2", "n2", "u9", "d", n2 + timedelta(seconds=5))])
    clock[0] = T0 + timedelta(hours=3)
    third = run_step("feedback", make_context(cfg, run_id="fb3"))
    assert (third.summary["impressions"], third.summary["new_interactions"]) == (1, 1)
    assert (events_dir / "feedback-fb3.csv").read_text().count("\n") == 2

    # Retrying fb3 later (forced recompute) redoes exactly its own window and rewrites its own file.
    clock[0] = T0 + timedelta(hours=5)
    retry = run_step("feedback", StepContext(config=cfg, store=store, run_id="fb3", params=RunParams(force=True)))
    assert (retry.summary["window_since"], retry.summary["window_until"]) == (
        third.summary["window_since"],
        third.summary["window_until"],
    )
    assert retry.summary["new_interactions"] == 1
    assert sorted(p.name for p in events_dir.iterdir()) == ["feedback-fb1.csv", "feedback-fb3.csv"]

    # A run that claimed a window and crashed before committing: the next run takes its window over and
    # removes the crashed run's partial output.
    crashed = claim_window(store, cfg.name, "crashed", cfg.feedback.attribution_window, T0 + timedelta(hours=4))
    assert (crashed.since, crashed.until) == (T0 + timedelta(hours=2), T0 + timedelta(hours=3))
    (events_dir / appended_name("crashed", "csv")).write_text("user_id,item_id,timestamp\npartial,x,1\n")
    n3 = T0 + timedelta(minutes=150)
    write_logs(store, [slate("n3", "u8", ["e"], n3)], [event("g3", "n3", "u8", "e", n3 + timedelta(seconds=5))])
    clock[0] = T0 + timedelta(hours=6)
    taken = run_step("feedback", make_context(cfg, run_id="fb5"))
    assert taken.summary["window_since"] == third.summary["window_until"]
    assert (taken.summary["impressions"], taken.summary["new_interactions"]) == (1, 1)
    report = make_context(cfg).open(taken.uri).read_json("report.json")
    assert report["window"]["took_over"] == "crashed"
    assert not (events_dir / "feedback-crashed.csv").exists()


def test_pseudonyms_map_back_to_known_user_ids_with_the_hmac_key(tmp_path: Path) -> None:
    from recloop.eventlog.pseudonym import Pseudonymizer
    from support.policy_helpers import publish_popularity

    key = "k" * 32
    cfg = make_config(tmp_path / "store", {"serving.privacy.hmac_key": key})
    ctx = make_context(cfg, run_id="fb1")
    publish_popularity(ctx.store, cfg.model_name, users=["alice", "bob"], items=["a", "b", "c"])
    pseudo = Pseudonymizer(key, "test")
    write_logs(
        ctx.store,
        [slate("r1", pseudo("alice"), ["a", "b"], at(0)), slate("r2", pseudo("carol"), ["a", "b"], at(5))],
        [event("f1", "r1", pseudo("alice"), "b", at(3)), event("f2", "r2", pseudo("carol"), "a", at(7))],
    )

    manifest = run_step("feedback", ctx)

    inter = ctx.open(manifest.uri).read_parquet("interactions.parquet").sort_values("timestamp")
    # alice is known to the served model; carol is not, so her pseudonym stays her id.
    assert inter["user_id"].tolist() == ["alice", pseudo("carol")]
    report = ctx.open(manifest.uri).read_json("report.json")
    assert report["users"] == {"mapping": "hmac", "recovered": 1, "kept_pseudonym": 1}


def test_feedback_summary_drives_the_feedback_dag_asset_decision(tmp_path: Path) -> None:
    from recloop.orchestration.tasks import feedback_has_news

    cfg = make_config(tmp_path / "store")
    ctx = make_context(cfg, run_id="fb1")
    write_logs(ctx.store, *basic_logs())
    brief = run_step("feedback", ctx).brief()
    assert feedback_has_news(brief) is True
    assert feedback_has_news(run_step("feedback", make_context(cfg, run_id="fb2")).brief()) is False


def test_feedback_is_not_part_of_the_training_order() -> None:
    from recloop.pipeline import TRAINING_STEPS
    from recloop.steps.graph import find_step

    assert TRAINING_STEPS == ("ingest", "validate", "preprocess", "tune", "train", "evaluate", "gate", "publish")
    spec = find_step("feedback")
    assert spec.name == "feedback" and spec.inputs == {}


@pytest.mark.s3
def test_appends_to_an_s3_folder_that_the_next_ingest_reads(s3_server: Any) -> None:
    bucket = s3_server.new_bucket()
    store_cfg = s3_server.store_config(bucket, prefix="recloop")
    client = s3_server.client()
    client.put_object(
        Bucket=bucket, Key="events/ratings.csv", Body=b"userId,movieId,rating,timestamp\nu1,a,4.0,1700000000\n"
    )
    cfg = make_config(
        store_cfg,
        {
            "data.interactions": {
                "path": f"s3://{bucket}/events/",
                "columns": {"user": "userId", "item": "movieId", "timestamp": "timestamp", "rating": "rating"},
            },
            "feedback.output": f"s3://{bucket}/events/feedback",
        },
    )
    ctx = make_context(cfg, run_id="fb1")
    write_logs(ctx.store, *basic_logs())

    manifest = run_step("feedback", ctx)

    assert manifest.summary["appended_uri"] == f"s3://{bucket}/events/feedback/feedback-fb1.csv"
    assert manifest.summary["picked_up_by_next_ingest"] is True
    body = client.get_object(Bucket=bucket, Key="events/feedback/feedback-fb1.csv")["Body"].read().decode()
    assert body.splitlines()[0] == "userId,movieId,timestamp,rating" and len(body.splitlines()) == 5
    ingest = run_step("ingest", make_context(cfg, run_id="next"))
    assert ingest.summary["rows"]["interactions"] == 1 + 4
