"""validate step: the great-expectations suite, the three on_failure modes, quarantine and the report."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recloop.artifacts import Artifact, ArtifactWriter, run_prefix
from recloop.errors import ValidationFailed
from recloop.steps import validate
from recloop.steps.base import run_step
from support.helpers import interactions_table, make_config, make_context, write_ingest_artifact

FUTURE = 4102444800  # 2100-01-01T00:00:00Z
# source_row = position + 1. Comments name what is wrong with a row.
ROWS = [
    ("u1", "i1", 1000, 3.0, "click", None),
    ("u1", "i2", 1001, 4.0, "click", None),
    (None, "i3", 1002, 3.0, "click", None),  # 3: null user
    ("u2", "i1", 1003, 5.0, "buy", None),
    ("u2", "i2", 1004, 9.0, "click", None),  # 5: rating out of range
    ("u2", "i3", 1005, 3.0, "click", None),
    ("u3", "i4", 1006, 3.0, "hover", None),  # 7: unknown event type
    ("u3", "i5", 1007, 2.0, "click", None),
    ("u3", "i1", FUTURE, 3.0, "click", None),  # 9: in the future
    ("u4", "i2", 1009, 3.0, "buy", None),
    ("u4", "zz", 1010, 3.0, "click", None),  # 11: not in the catalog
    ("u4", "i3", 1011, 3.0, "click", None),
    ("u1", "i2", 1001, 4.0, "click", None),  # 13: repeats row 2
    ("u1", "i3", 1013, 3.0, "click", None),
    ("u2", "i4", 1014, None, "click", "rating 'abc' is not a number"),  # 15: ingest could not parse it
    ("u3", "i2", 1015, 3.0, "click", None),
    ("u4", "yy", 1016, 0.0, "click", None),  # 17: out of range and not in the catalog
    ("u1", "i4", 1017, 3.0, "buy", None),
    ("u2", "i2", 1004, 3.0, "click", None),  # 19: same key as row 5, but row 5 is invalid: kept
    ("u3", "i3", 1019, 3.0, "click", None),
]
EVENTS = pd.DataFrame(ROWS, columns=["user_id", "item_id", "timestamp", "rating", "event_type", "ingest_issue"])
CATALOG = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4", "i5", "i6"]})
RULES = {
    "validation.rating_range": [0.5, 5.0],
    "validation.allowed_event_types": ["click", "buy"],
    "validation.data_docs": False,
}
EXPECTED_REASONS = {
    3: "user_id is null",
    5: "rating 9 outside [0.5, 5]",
    7: "event type 'hover' is not one of ['click', 'buy']",
    9: "timestamp 2100-01-01T00:00:00+00:00 is in the future (later than now + 1d)",
    11: "item not in the catalog",
    13: "duplicate of events.csv:3 (same user, item and timestamp)",
    15: "ingest: rating 'abc' is not a number",
    17: "rating 0 outside [0.5, 5]; item not in the catalog",
}
ROW_FAILURES = [
    "rows_parsed_cleanly",
    "user_id_not_null",
    "rating_in_range",
    "event_type_allowed",
    "timestamp_not_in_future",
    "catalog_coverage",
]


def _setup(tmp_path, overrides: dict, events: pd.DataFrame = EVENTS, catalog: pd.DataFrame | None = CATALOG):
    log: list[str] = []
    ctx = make_context(make_config(tmp_path / "store", {**RULES, **overrides}), log=log)
    ingest_uri = write_ingest_artifact(ctx.store, "r1", events, catalog)
    return ctx, ingest_uri, log


def _run(ctx, ingest_uri):
    return validate.run(ctx, {"ingest": ingest_uri}, ctx.store.uri(run_prefix("r1", "validate")))


def _clean_events(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{k % 4}" for k in range(n)],
            "item_id": [f"i{k % 5 + 1}" for k in range(n)],
            "timestamp": [1000 + k for k in range(n)],
            "rating": [3.0] * n,
        }
    )


def test_clean_data_passes_with_every_check_reported_and_data_docs(tmp_path):
    ctx, ingest_uri, _ = _setup(tmp_path, {"validation.data_docs": True}, events=_clean_events())
    manifest = _run(ctx, ingest_uri)
    assert manifest.summary == {
        "success": True,
        "rows": 20,
        "valid_rows": 20,
        "quarantined_rows": 0,
        "invalid_rows": 0,
        "failed_expectations": [],
    }
    art = Artifact.open(ctx.store, "runs/r1/validate")
    result = art.read_json("result.json")
    assert [e["name"] for e in result["expectations"]] == [
        "columns_present",
        "min_rows",
        "type:user_id",
        "type:item_id",
        "type:timestamp",
        "type:rating",
        "type:event_type",
        "type:weight",
        "type:source_file",
        "type:source_row",
        "type:ingest_issue",
        "rows_parsed_cleanly",
        "user_id_not_null",
        "item_id_not_null",
        "timestamp_not_null",
        "rating_in_range",
        "event_type_allowed",
        "timestamp_not_in_future",
        "duplicate_rate",
        "catalog_coverage",
        "catalog:item_id_not_null",
        "catalog:item_id_unique",
        "users_min_interactions",
        "items_min_interactions",
        "cold_start_share",
    ]
    assert all(e["success"] for e in result["expectations"])
    by_name = {e["name"]: e for e in result["expectations"]}
    assert by_name["min_rows"]["observed_value"] == 20
    assert by_name["rating_in_range"]["expectation_type"] == "expect_column_values_to_be_between"
    assert by_name["cold_start_share"]["observed_value"] == pytest.approx(1 / 6)  # i6 has no interaction
    assert by_name["cold_start_share"]["sample_rows"] == [{"item_id": "i6"}]
    # No rows were set aside, so preprocess reads ingest's file: validate writes no interactions.
    assert "interactions.parquet" not in manifest.files
    assert result["data_docs"] == "data_docs/index.html"
    assert "data_docs/index.html" in manifest.files
    page = next(f for f in manifest.files if f.startswith("data_docs/validations/interactions/"))
    html = art.read_bytes(page).decode()
    assert "rating" in html and "item_in_catalog" in html
    assert manifest.parents == [ingest_uri]


def test_fail_mode_raises_with_one_screen_summary_and_commits_report_aside(tmp_path):
    ctx, ingest_uri, _ = _setup(tmp_path, {"validation.on_failure": "fail"})
    with pytest.raises(ValidationFailed) as info:
        _run(ctx, ingest_uri)
    err = info.value
    assert err.exit_code == 3
    message = str(err)
    lines = message.splitlines()
    assert len(lines) <= 40
    assert lines[0] == f"data validation failed for {ingest_uri} (20 rows): 6 of 23 checks failed"
    for name in ROW_FAILURES:
        assert f"  - {name} (" in message
    assert "duplicate_rate" not in message  # 1 repeat in 20 rows is exactly the 5% allowed
    assert "events.csv line 6: user_id=u2, item_id=i2" in message and "rating=9.0" in message
    assert "events.csv line 4: user_id=None" in message
    failed_uri = ctx.store.uri("runs/r1/validate-failed")
    assert f"Full report: {failed_uri}/result.json" in message

    # The report is committed next to the run; the validate artifact itself does not exist.
    assert not Artifact.exists(ctx.store, "runs/r1/validate")
    failed = Artifact.open(ctx.store, "runs/r1/validate-failed")
    result = failed.read_json("result.json")
    assert result["success"] is False
    assert result["failed_expectations"] == ROW_FAILURES
    assert failed.manifest.summary["failed_expectations"] == ROW_FAILURES
    by_name = {e["name"]: e for e in result["expectations"]}
    assert [(r["source_file"], r["source_row"]) for r in by_name["rating_in_range"]["sample_rows"]] == [
        ("events.csv", 5),
        ("events.csv", 17),
    ]
    assert by_name["catalog_coverage"]["observed_value"] is None
    assert by_name["catalog_coverage"]["unexpected_count"] == 2


def test_gx_counts_agree_with_quarantined_rows(tmp_path):
    """GX's unexpected counts and recloop's row masks implement the same predicates."""
    ctx, ingest_uri, _ = _setup(tmp_path, {"validation.on_failure": "warn"})
    _run(ctx, ingest_uri)
    result = Artifact.open(ctx.store, "runs/r1/validate").read_json("result.json")
    counts = {e["name"]: e["unexpected_count"] for e in result["expectations"] if e["row_level"]}
    assert counts == {
        "rows_parsed_cleanly": 1,
        "user_id_not_null": 1,
        "item_id_not_null": 0,
        "timestamp_not_null": 0,
        "rating_in_range": 2,
        "event_type_allowed": 1,
        "timestamp_not_in_future": 1,
        "duplicate_rate": 1,
        "catalog_coverage": 2,
    }


def test_quarantine_splits_rows_exactly_with_reasons(tmp_path):
    ctx, ingest_uri, log = _setup(tmp_path, {"validation.on_failure": "quarantine", "validation.min_valid_share": 0.5})
    manifest = _run(ctx, ingest_uri)
    assert manifest.summary == {
        "success": True,
        "rows": 20,
        "valid_rows": 12,
        "quarantined_rows": 8,
        "invalid_rows": 8,
        "failed_expectations": ROW_FAILURES,
    }
    art = Artifact.open(ctx.store, "runs/r1/validate")
    valid = art.read_parquet("interactions.parquet")
    bad = art.read_parquet("quarantine/interactions.parquet")
    assert len(valid) + len(bad) == len(EVENTS)
    assert dict(zip(bad["source_row"], bad["quarantine_reason"])) == EXPECTED_REASONS
    assert sorted(valid["source_row"]) == sorted(set(range(1, 21)) - set(EXPECTED_REASONS))
    # Valid rows keep ingest's exact Arrow schema, so preprocess reads them like ingest's file.
    ingest = Artifact.open(ctx.store, "runs/r1/ingest")
    with ingest.path("interactions.parquet") as p:
        ingest_schema = pq.read_schema(p)
    with art.path("interactions.parquet") as p:
        assert pq.read_schema(p).equals(ingest_schema, check_metadata=False)
    assert manifest.files["interactions.parquet"].rows == 12
    assert manifest.files["quarantine/interactions.parquet"].rows == 8
    assert any("quarantined 8 of 20 rows" in line for line in log)


def test_quarantine_fails_below_min_valid_share(tmp_path):
    ctx, ingest_uri, _ = _setup(tmp_path, {"validation.on_failure": "quarantine", "validation.min_valid_share": 0.7})
    with pytest.raises(ValidationFailed) as info:
        _run(ctx, ingest_uri)
    message = str(info.value)
    assert "even after quarantining 8 bad rows" in message
    assert "only 12 of 20 rows (60.00%) are valid; validation.min_valid_share is 70.00%" in message
    assert "rows were quarantined for: rows_parsed_cleanly (1), user_id_not_null (1)" in message
    failed = Artifact.open(ctx.store, "runs/r1/validate-failed")
    assert failed.manifest.summary["success"] is False
    assert failed.manifest.files["quarantine/interactions.parquet"].rows == 8
    assert not Artifact.exists(ctx.store, "runs/r1/validate")


def test_warn_mode_logs_and_passes(tmp_path):
    ctx, ingest_uri, log = _setup(tmp_path, {"validation.on_failure": "warn"})
    manifest = _run(ctx, ingest_uri)
    assert manifest.summary["success"] is False
    assert manifest.summary["failed_expectations"] == ROW_FAILURES
    assert (manifest.summary["valid_rows"], manifest.summary["quarantined_rows"]) == (20, 0)
    assert "interactions.parquet" not in manifest.files
    assert any(line.startswith("validate: WARNING data failed 6 checks") for line in log)


@pytest.mark.parametrize(("repeats", "passes"), [(1, True), (2, False)])
def test_duplicate_rate_threshold_is_inclusive(tmp_path, repeats, passes):
    events = _clean_events(20)
    events.loc[20 - repeats :, ["user_id", "item_id", "timestamp"]] = events.loc[
        : repeats - 1, ["user_id", "item_id", "timestamp"]
    ].to_numpy()
    ctx, ingest_uri, _ = _setup(tmp_path, {"validation.max_duplicate_rate": 0.05}, events=events)
    if passes:
        assert _run(ctx, ingest_uri).summary["invalid_rows"] == 1
    else:
        with pytest.raises(ValidationFailed, match=r"duplicate_rate .*: 2 rows \(10.00%\)"):
            _run(ctx, ingest_uri)


def test_future_tolerance_uses_the_validation_clock(tmp_path):
    now = int(time.time())
    events = _clean_events(4)
    events.loc[2, "timestamp"] = now + 12 * 3600  # within the 1d tolerance
    events.loc[3, "timestamp"] = now + 3 * 86400  # beyond it
    ctx, ingest_uri, _ = _setup(
        tmp_path, {"validation.on_failure": "quarantine", "validation.min_valid_share": 0.5}, events=events
    )
    _run(ctx, ingest_uri)
    bad = Artifact.open(ctx.store, "runs/r1/validate").read_parquet("quarantine/interactions.parquet")
    assert bad["source_row"].tolist() == [4]
    assert "is in the future (later than now + 1d)" in bad["quarantine_reason"].iloc[0]


def test_missing_contract_column_fails_even_in_quarantine_mode(tmp_path):
    ctx = make_context(make_config(tmp_path / "store", {**RULES, "validation.on_failure": "quarantine"}))
    table = interactions_table(_clean_events(5)).drop_columns(["ingest_issue", "event_type"])
    with ArtifactWriter(ctx.store, "runs/r1/ingest", step="ingest", run_id="r1") as w:
        pq.write_table(table, w.local("interactions.parquet"))
        w.add_file("interactions.parquet")
    with pytest.raises(ValidationFailed) as info:
        _run(ctx, ctx.store.uri("runs/r1/ingest"))
    message = str(info.value)
    assert "columns_present" in message and "even after quarantining 0 bad rows" in message
    result = Artifact.open(ctx.store, "runs/r1/validate-failed").read_json("result.json")
    assert result["columns_missing"] == ["event_type", "ingest_issue"]


def test_wrong_column_type_is_reported(tmp_path):
    ctx = make_context(make_config(tmp_path / "store", RULES))
    table = interactions_table(_clean_events(5))
    naive = pa.array(table.column("timestamp").to_pandas().dt.tz_localize(None), pa.timestamp("ms"))
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", naive)
    with ArtifactWriter(ctx.store, "runs/r1/ingest", step="ingest", run_id="r1") as w:
        pq.write_table(table, w.local("interactions.parquet"))
        w.add_file("interactions.parquet")
    with pytest.raises(
        ValidationFailed,
        match=r"type:timestamp \(timestamp is a timezone-aware timestamp\): "
        r"observed \"datetime64\"",
    ):
        _run(ctx, ctx.store.uri("runs/r1/ingest"))


def test_recommender_checks_report_and_cold_start_blocks(tmp_path):
    ctx, ingest_uri, _ = _setup(
        tmp_path,
        {"validation.min_interactions_per_user": 6, "validation.max_cold_start_share": 0.1},
        events=_clean_events(22),
    )
    with pytest.raises(ValidationFailed) as info:
        _run(ctx, ingest_uri)
    message = str(info.value)
    assert "1 of 23 checks failed" in message and "cold_start_share" in message
    assert "users_min_interactions" not in message  # reported, not blocking
    result = Artifact.open(ctx.store, "runs/r1/validate-failed").read_json("result.json")
    users = next(e for e in result["expectations"] if e["name"] == "users_min_interactions")
    # 22 events over u0..u3: u0 and u1 have 6, u2 and u3 have 5.
    assert users["success"] is False and users["blocking"] is False
    assert users["sample_rows"] == [{"user_id": "u2", "interactions": 5}, {"user_id": "u3", "interactions": 5}]


def test_min_rows_and_no_catalog(tmp_path):
    ctx, ingest_uri, _ = _setup(tmp_path, {"validation.min_rows": 50}, events=_clean_events(20), catalog=None)
    with pytest.raises(ValidationFailed, match=r"min_rows \(at least 50 interactions\): observed 20"):
        _run(ctx, ingest_uri)
    result = Artifact.open(ctx.store, "runs/r1/validate-failed").read_json("result.json")
    names = [e["name"] for e in result["expectations"]]
    assert "catalog_coverage" not in names and "cold_start_share" not in names


def test_run_step_uses_ingest_of_the_same_run(tmp_path):
    ctx, _, _ = _setup(tmp_path, {}, events=_clean_events())
    manifest = run_step("validate", ctx)
    assert manifest.uri == ctx.store.uri("runs/r1/validate")
    assert manifest.summary["success"] is True


def test_outcome_replaces_the_other_outcome_of_the_same_run(tmp_path):
    ctx, ingest_uri, log = _setup(tmp_path, {"validation.on_failure": "fail"})
    with pytest.raises(ValidationFailed):
        _run(ctx, ingest_uri)
    assert Artifact.exists(ctx.store, "runs/r1/validate-failed")

    # The user relaxes the config and re-runs: the stale failure report goes away.
    ctx.config = make_config(
        tmp_path / "store", {**RULES, "validation.on_failure": "quarantine", "validation.min_valid_share": 0.5}
    )
    _run(ctx, ingest_uri)
    assert Artifact.exists(ctx.store, "runs/r1/validate")
    assert not Artifact.exists(ctx.store, "runs/r1/validate-failed")
    assert any("removing the report of an earlier failed attempt" in line for line in log)

    # A stricter config fails again: the earlier success must not stay readable for preprocess.
    ctx.config = make_config(tmp_path / "store", {**RULES, "validation.on_failure": "fail"})
    with pytest.raises(ValidationFailed):
        _run(ctx, ingest_uri)
    assert not Artifact.exists(ctx.store, "runs/r1/validate")
    assert ctx.store.list("runs/r1/validate/") == []


def test_the_validate_log_shows_recloops_lines_not_great_expectations_noise(tmp_path: Path) -> None:
    """As an Airflow task logs it (root logger at INFO, a fresh process): GX registers ~200 functions at
    import, each an INFO line; only recloop's own lines should be there."""
    import subprocess
    import sys

    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,1700000100\n")
    code = f"""
import logging
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
from recloop import config
from recloop.steps.base import StepContext, run_step
cfg = config.from_dict({{"name": "t", "store": {{"root": "file://{tmp_path / "store"}"}},
    "data": {{"interactions": {{"path": "{events}"}}}}, "validation": {{"data_docs": False}}}})
ctx = StepContext.from_config(cfg, "r1", log=logging.getLogger("recloop").info)
for step in ("ingest", "validate"):
    run_step(step, ctx)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith("great_expectations")] == []
    assert any(line.startswith("recloop INFO validate: 2 valid rows, 0 quarantined") for line in lines), lines


@pytest.mark.parametrize("on_failure", ["fail", "quarantine", "warn"])
def test_a_broken_catalog_row_obeys_on_failure(tmp_path: Path, on_failure: str) -> None:
    from recloop import config
    from recloop.steps.base import StepContext

    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i1,1700000100\n")
    items = tmp_path / "items.csv"
    # The unterminated quote swallows the rest of the file into one unreadable row.
    items.write_text('item_id,title,year\ni1,One,2001\ni2,"Two, broken,2002\ni3,Three,2003\n')
    cfg = config.from_dict(
        {
            "name": "t",
            "store": {"root": f"file://{tmp_path / 'store'}"},
            "data": {"interactions": {"path": str(events)}, "items": {"path": str(items), "id": "item_id"}},
            "validation": {"on_failure": on_failure, "data_docs": False, "max_cold_start_share": 1.0},
        }
    )
    ctx = StepContext.from_config(cfg, "r1", log=lambda m: None)
    ingest = run_step("ingest", ctx)
    assert ingest.summary["dropped"]["items"]["broken_rows"] == 1
    if on_failure == "fail":
        with pytest.raises(ValidationFailed, match=r"catalog_rows_readable .*: 1 row \(50\.00%\)"):
            run_step("validate", ctx)
        return
    summary = run_step("validate", ctx).summary
    assert summary["success"] is (on_failure == "quarantine")  # set aside at ingest: quarantined already
    assert "catalog_rows_readable" in summary["failed_expectations"]


def test_the_fix_in_a_row_reason_is_never_cut(tmp_path: Path) -> None:
    from recloop import config
    from recloop.steps.base import StepContext

    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1700000000000\nu2,i2,1700000000000000000\n")
    cfg = config.from_dict(
        {
            "name": "t",
            "store": {"root": f"file://{tmp_path / 'store'}"},
            "data": {"interactions": {"path": str(events), "timestamp_unit": "ms"}},
            "validation": {"on_failure": "fail", "data_docs": False},
        }
    )
    ctx = StepContext.from_config(cfg, "r1", log=lambda m: None)
    run_step("ingest", ctx)
    with pytest.raises(ValidationFailed) as failed:
        run_step("validate", ctx)
    assert (
        "ingest_issue=timestamp '1700000000000000000' is out of range for timestamp_unit 'ms' "
        "(outside 1900-2200: check data.interactions.timestamp_unit)"
    ) in str(failed.value)
