"""The bad-input corpus (tests/corpus/bad_input/, see its README): every case through `recloop step`.

Each case runs `recloop step ingest` and, if that succeeds, `recloop step validate` in-process via
`recloop.cli.main`. Asserted: the exit code, one error message naming the file/row/key at fault and the
fix, no traceback, nothing committed for the failing step; and that quarantine mode keeps every valid row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recloop.artifacts import Artifact
from recloop.cli import main
from recloop.store import FileStore
from support.paths import TESTS

CORPUS = TESTS / "corpus" / "bad_input"
VALIDATION_FIX = "set validation.on_failure: quarantine to set bad rows aside"


@dataclass(frozen=True)
class Case:
    name: str
    step: str  # the step that must fail
    exit_code: int
    says: tuple[str, ...]  # substrings of the error message ({dir} = the case folder)
    failed_checks: tuple[str, ...] = ()  # validate: expectations listed as failed in the report


CASES = [
    Case(
        "missing_column",
        "ingest",
        3,
        (
            "{dir}/ratings.csv: column 'timestamp' (set by data.interactions.columns.timestamp) not found",
            "Columns found: 'userId', 'movieId', 'rating'",
            "Set data.interactions.columns.timestamp to one of the columns found, or fix the file",
        ),
    ),
    Case(
        "wrong_column_mapping",
        "ingest",
        3,
        (
            "{dir}/ratings.csv: column 'user_id' (set by data.interactions.columns.user) not found",
            "Columns found: 'userId', 'movieId', 'rating', 'timestamp'",
        ),
    ),
    Case(
        "empty_file",
        "ingest",
        3,
        ("{dir}/ratings.csv: file is empty", "point data.interactions.path at the right file"),
    ),
    Case(
        "header_only",
        "ingest",
        3,
        ("{dir}/ratings.csv: no rows (the file has a header but no data)", "data.interactions.path"),
    ),
    Case(
        "non_utf8",
        "ingest",
        3,
        (
            "{dir}/ratings.csv: bytes that are not valid utf-8 text",
            "set data.interactions.encoding to the file's encoding",
        ),
    ),
    Case(
        "truncated_gzip",
        "ingest",
        3,
        ("{dir}/ratings.csv.gz: gzip data is truncated or corrupt", "re-compress the file"),
    ),
    Case(
        "corrupt_parquet",
        "ingest",
        3,
        ("{dir}/ratings.parquet: not a readable Parquet file", "set data.interactions.format"),
    ),
    Case(
        "missing_file",
        "ingest",
        2,  # a configured path that names nothing is a configuration error
        ("data.interactions.path: '{dir}/no_such_ratings.csv' does not exist; fix the path",),
    ),
    Case(
        "unknown_config_key",
        "ingest",
        2,
        (
            "invalid configuration in {dir}/config.yaml",
            "data.interactions.colums: unknown key; remove it or check its spelling",
        ),
    ),
    Case(
        "bad_config_value",
        "ingest",
        2,
        (
            "invalid configuration in {dir}/config.yaml (2 error(s))",
            "validation.on_failure: Input should be 'fail', 'quarantine' or 'warn' (got 'sometimes')",
            "validation.max_duplicate_rate: Input should be less than or equal to 1 (got 1.5)",
        ),
    ),
    Case(
        "wrong_type",
        "validate",
        3,
        (
            "{dir}/ratings.csv line 4:",
            "ingest_issue=timestamp 'abc' is not a number",
            "{dir}/ratings.csv line 8:",
            "ingest_issue=rating 'five' is not a number",
            VALIDATION_FIX,
        ),
        failed_checks=("rows_parsed_cleanly", "timestamp_not_null"),
    ),
    Case(
        "nan_negative_ids",
        "validate",
        3,
        (
            "{dir}/ratings.csv line 3:",
            "ingest_issue=user id is missing",
            "{dir}/ratings.csv line 9:",
            "ingest_issue=item id is missing",
            VALIDATION_FIX,
        ),
        failed_checks=("rows_parsed_cleanly", "user_id_not_null", "item_id_not_null"),
    ),
    Case(
        "future_timestamps",
        "validate",
        3,
        (
            "timestamp_not_in_future",
            "2 rows",
            "{dir}/ratings.csv line 5:",
            "{dir}/ratings.csv line 10:",
            "timestamp=2100-01-01T00:00:00+00:00",
            VALIDATION_FIX,
        ),
        failed_checks=("timestamp_not_in_future",),
    ),
    Case(
        "duplicate_events",
        "validate",
        3,
        (
            "duplicate_rate",
            "6 rows (50.00%)",
            "{dir}/ratings.csv line 8:",
            "duplicate_of={dir}/ratings.csv:2",
            VALIDATION_FIX,
        ),
        failed_checks=("duplicate_rate",),
    ),
    Case(
        "items_missing_from_catalog",
        "validate",
        3,
        ("catalog_coverage", "6 rows (50.00%)", "{dir}/ratings.csv line 8: user_id=2, item_id=106", VALIDATION_FIX),
        failed_checks=("catalog_coverage",),
    ),
    Case(
        "brackets_in_values",
        "validate",
        3,
        ("{dir}/ratings.csv line 3: user_id=[/admin]", "timestamp 'yesterday' is not a number", VALIDATION_FIX),
        failed_checks=("rows_parsed_cleanly", "timestamp_not_null"),
    ),
]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _step(capsys: pytest.CaptureFixture[str], step: str, case_dir: Path, root: str) -> tuple[int, str, str]:
    """`recloop step STEP` in-process; an exception escaping main is a traceback the user would see."""
    argv = ["step", step, "--config", str(case_dir / "config.yaml"), "--run-id", "r1", "--set", f"store.root={root}"]
    try:
        code = main(argv)
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"`recloop {' '.join(argv)}` escaped with a traceback: {type(exc).__name__}: {exc}")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corpus_has_a_test_for_every_case() -> None:
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders == {c.name for c in CASES} | {"quarantine_mixed"}
    assert len(folders) >= 12


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_fails_with_a_helpful_message(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case_dir = CORPUS / case.name
    root = f"file://{tmp_path / 'store'}"
    store = FileStore(root)
    if case.step == "validate":
        code, _, err = _step(capsys, "ingest", case_dir, root)
        assert code == 0, f"ingest should keep unparseable rows for validate to judge: {err}"
    code, out, err = _step(capsys, case.step, case_dir, root)
    message = _flat(err)
    assert code == case.exit_code, message
    assert message.startswith("error: ")
    assert "Traceback" not in err and out == ""
    for expected in case.says:
        assert _flat(expected.format(dir=case_dir)) in message
    assert not Artifact.exists(store, f"runs/r1/{case.step}")  # nothing committed for the failing step
    if case.step == "validate":
        report_uri = f"{root}/runs/r1/validate-failed/result.json"
        assert f"Full report: {report_uri}" in message
        report = Artifact.open(store, "runs/r1/validate-failed").read_json("result.json")
        failed = {e["name"] for e in report["expectations"] if not e["success"]}
        assert failed == set(case.failed_checks)


def test_literal_nan_id_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case_dir = CORPUS / "nan_negative_ids"
    root = f"file://{tmp_path / 'store'}"
    assert _step(capsys, "ingest", case_dir, root)[0] == 0
    _, _, err = _step(capsys, "validate", case_dir, root)
    assert f"{case_dir}/ratings.csv line 6:" in _flat(err)


def test_quarantine_keeps_every_valid_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case_dir = CORPUS / "quarantine_mixed"
    root = f"file://{tmp_path / 'store'}"
    store = FileStore(root)
    assert _step(capsys, "ingest", case_dir, root)[0] == 0
    code, out, err = _step(capsys, "validate", case_dir, root)
    assert code == 0, err
    assert out.splitlines()[0] == f"{root}/runs/r1/validate"
    bad_rows = {3, 6, 12, 17}  # unparseable timestamp, missing user, year 2100, missing timestamp

    ingested = Artifact.open(store, "runs/r1/ingest").read_parquet("interactions.parquet")
    validated = Artifact.open(store, "runs/r1/validate")
    assert validated.manifest.summary["valid_rows"] == 16
    assert validated.manifest.summary["quarantined_rows"] == 4
    with validated.path("interactions.parquet") as p:
        valid = pq.read_table(p).to_pandas()
    with validated.path("quarantine/interactions.parquet") as p:
        quarantined = pq.read_table(p).to_pandas()

    assert sorted(valid["source_row"]) == sorted(set(range(1, 21)) - bad_rows)
    assert sorted(quarantined["source_row"]) == sorted(bad_rows)
    assert quarantined["quarantine_reason"].notna().all() and (quarantined["quarantine_reason"] != "").all()
    # Valid rows pass through unchanged: same values as ingest wrote, same schema.
    columns = ["user_id", "item_id", "timestamp", "rating", "source_row"]
    expected = ingested[~ingested["source_row"].isin(bad_rows)][columns].sort_values("source_row")
    got = valid[columns].sort_values("source_row")
    assert got.reset_index(drop=True).equals(expected.reset_index(drop=True))
    assert list(valid.columns) == list(ingested.columns)
