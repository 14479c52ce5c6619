"""`recloop init`: configs inferred from data files, golden files for the demo data and ml-latest-small,
unusual column names and formats, and every bad input ending in exit 2 with a message naming the fix.

Regenerate the golden files with `RECLOOP_UPDATE_GOLDEN=1 pytest tests/data/test_init_command.py` and review
the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from recloop import config
from recloop.cli import main
from recloop.config.models import EaseConfig
from recloop.config.pipeline import PipelineConfig
from support.paths import TESTS, movielens

GOLDEN = TESTS / "corpus" / "golden"
ML_PLACEHOLDER = "<ml-latest-small>"
UPDATE_GOLDEN = os.environ.get("RECLOOP_UPDATE_GOLDEN") == "1"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def check_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing; create it with RECLOOP_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"differs from {path}; if intended, RECLOOP_UPDATE_GOLDEN=1"


def model_types(cfg: PipelineConfig) -> list[str]:
    return [m.type for m in cfg.models]


# ---------------------------------------------------------------------------------------------- golden files


def test_demo_data_gives_the_golden_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "data", "synth", "--out", "data", "--seed", "7")[0] == 0
    code, out, err = run(
        capsys,
        *("init", "--interactions", "data/interactions.csv", "--items", "data/items.csv"),
        *("--users", "data/users.csv", "--name", "demo", "--out", "init_demo.yaml"),
    )
    assert (code, err) == (0, "")
    text = (tmp_path / "init_demo.yaml").read_text()
    check_golden(text, "init_demo.yaml")
    cfg = config.load(tmp_path / "init_demo.yaml")
    assert cfg.data.interactions.path == str(tmp_path / "data" / "interactions.csv")
    assert model_types(cfg) == ["popularity", "itemknn", "ease", "mf", "sasrec", "text_knn", "text_sasrec"]
    assert "→ Unix seconds (2024-01-04..2024-12-31)" in out
    assert "wrote init_demo.yaml" in out
    assert run(capsys, "config", "validate", "init_demo.yaml")[0] == 0


def test_movielens_gives_the_golden_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "init_movielens.yaml"
    dataset = movielens()
    code, out, err = run(
        capsys,
        *("init", "--interactions", str(dataset / "ratings.csv"), "--items", str(dataset / "movies.csv")),
        *("--name", "movielens", "--out", str(out_file)),
    )
    assert (code, err) == (0, "")
    check_golden(out_file.read_text().replace(str(dataset), ML_PLACEHOLDER), "init_movielens.yaml")
    cfg = config.load(out_file)
    assert cfg.data.items is not None
    assert (cfg.data.items.id, cfg.data.items.category, cfg.data.items.text) == (
        "movieId",
        "genres",
        "{title}. Genres: {genres}",
    )
    assert model_types(cfg) == ["popularity", "itemknn", "ease", "mf", "sasrec", "text_knn", "text_sasrec"]
    assert "→ Unix seconds (1995-01-09..2016-10-16)" in out
    assert run(capsys, "config", "validate", str(out_file))[0] == 0


# ---------------------------------------------------------------------------------------------- unusual data


def unusual_events() -> pd.DataFrame:
    """30 customers x 8 events on 40 SKUs, ISO event times, an action column and a weight per action."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    actions, weights = ["view", "view", "cart", "purchase"], [1, 1, 2, 5]
    rows = [
        {
            "customer": f"c{c:03d}",
            "sku": f"SKU-{(c * 7 + k * 3) % 40:04d}",
            "event_time": (start + timedelta(hours=10 * c + k)).isoformat(),
            "action": actions[k % 4],
            "weight": weights[k % 4],
        }
        for c in range(30)
        for k in range(8)
    ]
    return pd.DataFrame(rows)


def unusual_items() -> pd.DataFrame:
    colours, fabrics = ["red", "blue", "green", "black"], ["cotton", "wool"]
    return pd.DataFrame(
        {
            "product_code": [f"SKU-{i:04d}" for i in range(40)],
            "name": [f"{colours[i % 4].title()} {fabrics[i % 2]} shirt no. {i}" for i in range(40)],
            "tags": [f"{colours[i % 4]};{fabrics[i % 2]}" for i in range(40)],
            "price": [9.5 + i for i in range(40)],
        }
    )


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    elif path.suffix == ".parquet":
        typed = frame.copy()
        if "event_time" in typed:  # a typed timestamp column, as Parquet writers produce
            typed["event_time"] = pd.to_datetime(typed["event_time"])
        typed.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".parquet"])
def test_unusual_column_names_in_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    events = write_table(unusual_events(), tmp_path / f"events{suffix}")
    items = write_table(unusual_items(), tmp_path / f"products{suffix}")
    out_file = tmp_path / "shop.yaml"
    code, out, err = run(
        capsys, "init", "--interactions", str(events), "--items", str(items), "--name", "shop", "--out", str(out_file)
    )
    assert (code, err) == (0, "")
    cfg = config.load(out_file)
    source = cfg.data.interactions
    assert source.format == suffix[1:]
    assert source.columns.model_dump() == {
        "user": "customer",
        "item": "sku",
        "timestamp": "event_time",
        "rating": None,
        "event_type": "action",
        "weight": "weight",
        "context": [],
    }
    assert source.timestamp_unit == "iso"
    assert cfg.data.items is not None
    assert (cfg.data.items.id, cfg.data.items.category, cfg.data.items.text) == (
        "product_code",
        "tags",
        "{name}. Tags: {tags}",
    )
    assert cfg.preprocess.implicit.event_weights == {"view": 1.0, "cart": 1.0, "purchase": 1.0}
    # Eight events per customer: too short for sequential models; the reason is printed and in the file.
    assert model_types(cfg) == ["popularity", "itemknn", "ease", "mf", "text_knn"]
    text = out_file.read_text()
    assert "left out: sasrec: median history 8 events < 10: too short for sequences" in text
    assert "- sasrec: median history 8 events < 10: too short for sequences" in out
    # ';' lists are not split into categories: said, with the fix.
    assert "items column 'tags' holds ';'-separated lists" in out
    if suffix == ".parquet":
        assert "(a typed timestamp column)" in text
    else:
        assert "holds ISO dates 2024-03-01..2024-03-13 (ISO-8601 text)" in text


def test_epoch_milliseconds_and_a_semicolon_delimiter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [f"u{u};i{(u + k) % 7};{1_700_000_000_000 + 60_000 * (10 * u + k)}" for u in range(5) for k in range(4)]
    events = tmp_path / "events.csv"
    events.write_text("member_no;article_id;ts\n" + "\n".join(rows) + "\n")
    code, out, err = run(
        capsys, "init", "--interactions", str(events), "--name", "t", "--out", str(tmp_path / "t.yaml")
    )
    assert (code, err) == (0, "")
    cfg = config.load(tmp_path / "t.yaml")
    source = cfg.data.interactions
    assert (source.columns.user, source.columns.item, source.columns.timestamp) == ("member_no", "article_id", "ts")
    assert (source.timestamp_unit, source.delimiter) == ("ms", ";")
    assert "→ Unix milliseconds (2023-11-14..2023-11-14)" in out
    # Without a catalog there is no text: the text models are left out, saying why.
    assert "- text_knn: no item catalog (--items)" in out


def test_ease_is_left_out_above_its_item_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limit = EaseConfig.model_fields["max_items"].default
    n_items, n_users = limit + 1, 2_000
    per_user = -(-(n_items + 500) // n_users)
    rows = [
        f"u{u},i{(u * per_user + k) % n_items},{1_600_000_000 + k}" for u in range(n_users) for k in range(per_user)
    ]
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    code, out, _ = run(
        capsys, "init", "--interactions", str(events), "--name", "big", "--out", str(tmp_path / "b.yaml")
    )
    assert code == 0
    assert "ease" not in model_types(config.load(tmp_path / "b.yaml"))
    assert f"- ease: {n_items:,} items exceed EASE's max_items ({limit:,})" in out


@pytest.mark.s3
def test_reads_interactions_from_s3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s3_server
) -> None:
    bucket = s3_server.new_bucket()
    body = unusual_events().to_csv(index=False).encode()
    s3_server.client().put_object(Bucket=bucket, Key="raw/events.csv", Body=body)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{bucket}/raw/events.csv"
    code, _, err = run(
        capsys,
        *("init", "--interactions", uri, "--endpoint-url", s3_server.endpoint_url),
        *("--name", "s3", "--out", str(tmp_path / "s3.yaml")),
    )
    assert (code, err) == (0, "")
    cfg = config.load(tmp_path / "s3.yaml")
    assert (cfg.data.interactions.path, cfg.store.endpoint_url) == (uri, s3_server.endpoint_url)
    assert cfg.data.interactions.columns.user == "customer"


# ---------------------------------------------------------------------------------------------- bad inputs


def write_events(tmp_path: Path, header: str, rows: list[str], name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def init_events(capsys: pytest.CaptureFixture[str], events: Path, *flags: str) -> tuple[int, str, str]:
    out_file = events.parent / "out.yaml"
    return run(capsys, "init", "--interactions", str(events), "--name", "t", "--out", str(out_file), *flags)


def test_empty_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.csv"
    events.write_text("")
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert (
        f"error: --interactions {events}: {events} is empty; point --interactions at a file with a header and rows"
        in err
    )
    assert not (tmp_path / "out.yaml").exists()


def test_header_without_rows_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", [])
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert f"--interactions {events}: no data rows (only a header?)" in err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = init_events(capsys, tmp_path / "nope.csv")
    assert code == 2
    assert f"--interactions {tmp_path / 'nope.csv'}: no such file or directory; check the path" in err


def test_no_timestamp_column_exits_2_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,rating", ["u1,i1,4", "u1,i2,3", "u2,i1,5"])
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert (
        "No column looks like the event time (columns: 'user_id', 'item_id', 'rating'). "
        "Name it with --time-col COLUMN." in err
    )
    assert not (tmp_path / "out.yaml").exists()


AMBIGUOUS_ROWS = [
    f"u{u},i{(u + k) % 5},2024-01-0{1 + k}T10:00:00Z,2024-02-0{1 + k}T10:00:00Z" for u in range(4) for k in range(4)
]


def test_two_timestamp_columns_are_a_question(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,created_at,updated_at", AMBIGUOUS_ROWS)
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert "recloop init needs an answer before it can write the config:" in err
    assert (
        "Which column holds the event time? These could: 'created_at' (named like a time; ISO dates 2024-01-01..2024-01-04); 'updated_at' (named like a time; ISO dates 2024-02-01..2024-02-04)."
        in err
    )
    assert "Settle it with --time-col created_at or --time-col updated_at." in err
    assert not (tmp_path / "out.yaml").exists()


def test_the_flag_settles_the_question(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,created_at,updated_at", AMBIGUOUS_ROWS)
    code, out, err = init_events(capsys, events, "--time-col", "updated_at")
    assert (code, err) == (0, "")
    source = config.load(tmp_path / "out.yaml").data.interactions
    assert (source.columns.timestamp, source.timestamp_unit) == ("updated_at", "iso")
    assert "set by --time-col; ISO dates 2024-02-01..2024-02-04" in out


def test_mixed_magnitudes_ask_for_the_time_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", ["u1,i1,1700000000", "u1,i2,1700000000000"])
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert (
        "numbers of different magnitudes: which time unit are they in? Settle it with --time-unit s or --time-unit ms."
        in err
    )


def test_two_user_columns_are_a_question(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "customer_id,client_id,item_id,ts", ["c1,k1,i1,1700000000", "c2,k2,i1,1700000100"])
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert "Settle it with --user-col customer_id or --user-col client_id." in err


def test_unknown_column_in_a_flag_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", ["u1,i1,1700000000"])
    code, _, err = init_events(capsys, events, "--time-col", "when")
    assert code == 2
    assert "--time-col when: there is no column 'when' (columns: 'user_id', 'item_id', 'timestamp')." in err


def test_catalog_without_the_interacted_ids_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", ["u1,i1,1700000000", "u2,i2,1700000100"])
    items = write_events(tmp_path, "code,title", ["x1,A", "x2,B"], name="items.csv")
    code, _, err = init_events(capsys, events, "--items", str(items))
    assert code == 2
    assert "No unique column holds the ids the interactions use (best: 'code' holds 0 of the 2 ids" in err
    assert "Name it with --item-id-col COLUMN." in err


@pytest.mark.parametrize(
    ("budget", "problem"),
    [
        ("30 minutes", "expected a wall time like '30m', '1h30m', '900s', or a trial count like '40 trials'"),
        ("0m", "a time budget must be positive, e.g. '30m'"),
    ],
)
def test_bad_budget_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: str, problem: str) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", ["u1,i1,1700000000"])
    code, _, err = init_events(capsys, events, "--budget", budget)
    assert code == 2
    assert f"--budget {budget!r}: {problem}" in err


def test_budget_is_kept_for_the_tuning_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(
        tmp_path, "user_id,item_id,timestamp", [f"u{u},i{k},{1_700_000_000 + k}" for u in range(3) for k in range(3)]
    )
    code, _, err = init_events(capsys, events, "--budget", "1h30m")
    assert (code, err) == (0, "")
    text = (tmp_path / "out.yaml").read_text()
    cfg = config.load(tmp_path / "out.yaml")
    if "tuning" in PipelineConfig.model_fields:  # the tuning step has landed: the section is real
        assert "tuning" in cfg.model_dump()
    else:
        assert text.splitlines()[-1].startswith("# tuning: {budget: 1h30m}  # --budget")


def test_existing_out_file_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", [f"u1,i{k},{1_700_000_000 + k}" for k in range(3)])
    (tmp_path / "out.yaml").write_text("keep me\n")
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert "the file exists; pass --force to overwrite it" in err
    assert (tmp_path / "out.yaml").read_text() == "keep me\n"
    assert init_events(capsys, events, "--force")[0] == 0


def test_bad_name_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,timestamp", ["u1,i1,1700000000"])
    code, _, err = run(
        capsys, "init", "--interactions", str(events), "--name", "My Shop", "--out", str(tmp_path / "o.yaml")
    )
    assert code == 2
    assert "--name 'My Shop': use lower-case letters, digits, '-' and '_'" in err


def test_times_ingest_cannot_read_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, "user_id,item_id,date", ["u1,i1,01/02/2024", "u2,i1,03/02/2024"])
    code, _, err = init_events(capsys, events)
    assert code == 2
    assert "Named like one but not read as times: 'date' holds '01/02/2024'." in err
    assert "Name it with --time-col COLUMN." in err


def test_flags_override_what_is_inferred(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [f"u{u},i{(u + k) % 6},{1_700_000_000 + 100 * k},{1 + k % 5}" for u in range(6) for k in range(5)]
    events = write_events(tmp_path, "user_id,item_id,timestamp,rating", rows)
    items = write_events(
        tmp_path,
        "item_id,title,genre,description",
        [f"i{i},Title {i},g{i % 2},A longer description of item {i}" for i in range(6)],
        name="items.csv",
    )
    flags = ("--items", str(items), "--rating-col", "none", "--category-col", "none", "--text-cols", "description")
    code, out, err = init_events(capsys, events, *flags)
    assert (code, err) == (0, "")
    cfg = config.load(tmp_path / "out.yaml")
    assert cfg.data.interactions.columns.rating is None
    assert cfg.data.items is not None
    assert (cfg.data.items.category, cfg.data.items.text) == (None, "{description}")
    assert cfg.validation.rating_range is None
    assert "none (set by --rating-col none)" in out


def test_user_columns_are_typed_as_attributes_by_what_their_values_look_like() -> None:
    from recloop.data.infer.facts import ColumnFacts
    from recloop.data.infer.settings import attribute_type

    def facts(kind: str, distinct: int, chars: float = 6.0, separator: str | None = None) -> ColumnFacts:
        return ColumnFacts("c", kind, 1000, distinct, None, None, False, chars, separator, ())  # type: ignore[arg-type]

    assert attribute_type(facts("text", 5))[0] == "categorical"  # an age band
    assert attribute_type(facts("integer", 12))[0] == "categorical"  # occupation codes
    assert attribute_type(facts("integer", 60))[0] == "numeric"  # an age
    assert attribute_type(facts("number", 900))[0] == "numeric"
    assert attribute_type(facts("text", 40, separator="|"))[0] == "multi"
    assert attribute_type(facts("text", 990, chars=120.0))[0] == "text"  # a free-text profile
    assert attribute_type(facts("text", 800)) == (
        None,
        "text, 800 values: too many values for a category; not an attribute",
    )
    assert attribute_type(facts("datetime", 300))[0] is None  # a signup date
    assert attribute_type(facts("text", 1000))[0] is None  # unique: another id
