"""ingest step: formats, column mapping, timestamps, kept bad rows, structural errors, since watermark,
chunking, catalog text with folded tags, users, globs, and MovieLens row counts."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recloop import config
from recloop.artifacts import MANIFEST, Artifact, run_prefix
from recloop.config import PipelineConfig
from recloop.errors import ConfigError, DataError, InputNotFound
from recloop.steps.base import RunParams, StepContext, run_step
from recloop.store import FileStore
from support.paths import REPO, movielens

# (user, item, epoch seconds, rating): the same five events in every format.
EVENTS = [
    ("u1", "i1", 1700000000, 4.0),
    ("u1", "i2", 1700000100, 3.5),
    ("u2", "i1", 1700000200, 5.0),
    ("u2", "i3", 1700000300, 2.0),
    ("u3", "i2", 1700000400, 1.0),
]
EVENT_FRAME = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "timestamp", "rating"])


def make_cfg(tmp_path: Path, data: dict[str, Any]) -> PipelineConfig:
    return config.from_dict({"name": "t", "store": {"root": f"file://{tmp_path / 'store'}"}, "data": data})


def ingest(
    cfg: PipelineConfig,
    tmp_path: Path,
    since: datetime | None = None,
    progress: list[tuple[str, float | None]] | None = None,
) -> Artifact:
    store = FileStore(f"file://{tmp_path / 'store'}")

    def track(description: str, total: float | None = None, unit: str = ""):
        if progress is not None:
            progress.append((description, total))
        return lambda advance=1.0: None

    ctx = StepContext(cfg, store, "r1", params=RunParams(since=since, force=True), progress=track)
    run_step("ingest", ctx)
    return Artifact.open(store, run_prefix("r1", "ingest"))


def committed(tmp_path: Path) -> bool:
    return (tmp_path / "store" / "runs" / "r1" / "ingest" / MANIFEST).exists()


def events_csv(path: Path, sep: str = ",") -> Path:
    path.write_text(
        "user_id,item_id,timestamp,rating\n".replace(",", sep) + "".join(sep.join(map(str, e)) + "\n" for e in EVENTS)
    )
    return path


def expected_rows(source_file: str) -> list[dict[str, Any]]:
    return [
        {
            "user_id": u,
            "item_id": i,
            "timestamp": datetime.fromtimestamp(t, tz=UTC),
            "rating": r,
            "event_type": None,
            "weight": None,
            "source_file": source_file,
            "source_row": n,
            "ingest_issue": None,
        }
        for n, (u, i, t, r) in enumerate(EVENTS, start=1)
    ]


def read_rows(art: Artifact, name: str = "interactions.parquet") -> list[dict[str, Any]]:
    with art.path(name) as p:
        return pq.read_table(p).to_pylist()


INTERACTION_SCHEMA = {
    "user_id": "string",
    "item_id": "string",
    "timestamp": "timestamp[ms, tz=UTC]",
    "rating": "double",
    "event_type": "string",
    "weight": "double",
    "source_file": "string",
    "source_row": "int64",
    "ingest_issue": "string",
}


# ---------------------------------------------------------------------------------------------- formats


def _write(fmt: str, path: Path) -> None:
    if fmt in ("csv", "tsv"):
        events_csv(path, "," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        EVENT_FRAME.to_parquet(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in EVENT_FRAME.to_dict("records")))


@pytest.mark.parametrize(
    "name", ["ev.csv", "ev.tsv", "ev.parquet", "ev.jsonl", "ev.csv.gz", "ev.tsv.gz", "ev.jsonl.gz", "ev.parquet.gz"]
)
def test_every_format_gives_the_same_contract_rows(tmp_path: Path, name: str) -> None:
    fmt = name.split(".")[1]
    plain = tmp_path / f"plain.{fmt}"
    _write(fmt, plain)
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        plain.rename(path)
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path), "columns": {"rating": "rating"}}})
    progress: list[tuple[str, float | None]] = []
    art = ingest(cfg, tmp_path, progress=progress)

    assert read_rows(art) == expected_rows(str(path))
    entry = art.manifest.files["interactions.parquet"]
    assert entry.rows == 5
    assert entry.schema == INTERACTION_SCHEMA
    summary = art.manifest.summary
    assert summary["rows"] == {"interactions": 5}
    assert summary["min_timestamp"] == "2023-11-14T22:13:20.000+00:00"
    assert summary["max_timestamp"] == "2023-11-14T22:20:00.000+00:00"
    assert summary["sources"] == {"interactions": [str(path)]}
    assert progress == [("ingest interactions", float(path.stat().st_size))]


def test_explicit_format_and_delimiter_override_the_extension(tmp_path: Path) -> None:
    path = events_csv(tmp_path / "events.dat", sep=";")
    cfg = make_cfg(
        tmp_path,
        {"interactions": {"path": str(path), "format": "csv", "delimiter": ";", "columns": {"rating": "rating"}}},
    )
    assert read_rows(ingest(cfg, tmp_path)) == expected_rows(str(path))


def test_column_mapping_event_type_weight_and_context(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text(
        "who,what,when,stars,kind,w,device,extra\n"
        "7,100,2024-03-01T12:00:00Z,4.5,click,0.5,ios,zzz\n"
        "8,101,2024-03-01 13:30:00+02:00,,view,1,android,zzz\n"
    )
    cfg = make_cfg(
        tmp_path,
        {
            "interactions": {
                "path": str(path),
                "timestamp_unit": "iso",
                "columns": {
                    "user": "who",
                    "item": "what",
                    "timestamp": "when",
                    "rating": "stars",
                    "event_type": "kind",
                    "weight": "w",
                    "context": ["device"],
                },
            }
        },
    )
    art = ingest(cfg, tmp_path)
    assert read_rows(art) == [
        {
            "user_id": "7",
            "item_id": "100",
            "timestamp": datetime(2024, 3, 1, 12, tzinfo=UTC),
            "rating": 4.5,
            "event_type": "click",
            "weight": 0.5,
            "ctx_device": "ios",
            "source_file": str(path),
            "source_row": 1,
            "ingest_issue": None,
        },
        # An empty rating is "no rating" (null), not a problem; the offset is converted to UTC.
        {
            "user_id": "8",
            "item_id": "101",
            "timestamp": datetime(2024, 3, 1, 11, 30, tzinfo=UTC),
            "rating": None,
            "event_type": "view",
            "weight": 1.0,
            "ctx_device": "android",
            "source_file": str(path),
            "source_row": 2,
            "ingest_issue": None,
        },
    ]
    assert art.manifest.files["interactions.parquet"].schema["ctx_device"] == "string"


@pytest.mark.parametrize(
    ("unit", "value"),
    [
        ("s", "1700000000"),
        ("s", "1700000000.0"),
        ("ms", "1700000000000"),
        ("us", "1700000000000000"),
        ("ns", "1700000000000000000"),
        ("iso", "2023-11-14T22:13:20Z"),
        ("iso", "2023-11-14T23:13:20+01:00"),
    ],
)
def test_timestamp_units(tmp_path: Path, unit: str, value: str) -> None:
    path = tmp_path / "ev.csv"
    path.write_text(f"user_id,item_id,timestamp\nu1,i1,{value}\n")
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path), "timestamp_unit": unit}})
    (row,) = read_rows(ingest(cfg, tmp_path))
    assert row["timestamp"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert row["ingest_issue"] is None


def test_typed_parquet_columns(tmp_path: Path) -> None:
    path = tmp_path / "ev.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2], pa.int64()),
                "item_id": pa.array([10.0, 11.0], pa.float64()),  # writers that widened an int id column
                "timestamp": pa.array([datetime(2024, 1, 1), datetime(2024, 1, 2)], pa.timestamp("us")),
                "rating": pa.array([3, 4], pa.int32()),
            }
        ),
        path,
    )
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path), "columns": {"rating": "rating"}}})
    rows = read_rows(ingest(cfg, tmp_path))
    assert [(r["user_id"], r["item_id"], r["timestamp"], r["rating"]) for r in rows] == [
        ("1", "10", datetime(2024, 1, 1, tzinfo=UTC), 3.0),
        ("2", "11", datetime(2024, 1, 2, tzinfo=UTC), 4.0),
    ]


# ---------------------------------------------------------------------------------------------- bad rows


def test_unparseable_values_are_kept_with_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    path.write_text(
        "user_id,item_id,timestamp,rating\n"
        "u1,i1,abc,4\n"
        "u2,,1700000000,x\n"
        "u3,i3\n"
        ",i4,1e20,nan\n"
        " u5 , i5 ,1700000000,3\n"
        "u6,i6,2024-01-01,5\n"
    )
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path), "columns": {"rating": "rating"}}})
    art = ingest(cfg, tmp_path)
    rows = read_rows(art)
    got = [(r["source_row"], r["user_id"], r["item_id"], r["timestamp"], r["rating"], r["ingest_issue"]) for r in rows]
    ts = datetime.fromtimestamp(1700000000, tz=UTC)
    assert got == [
        (1, "u1", "i1", None, 4.0, "timestamp 'abc' is not a number"),
        (2, "u2", None, ts, None, "item id is missing; rating 'x' is not a number"),
        (3, None, None, None, None, "row has 2 fields, expected 4: 'u3,i3'"),
        (
            4,
            None,
            "i4",
            None,
            None,
            "user id is missing; timestamp '1e20' is out of range for timestamp_unit 's' "
            "(outside 1900-2200: check data.interactions.timestamp_unit); "
            "rating 'nan' is not a finite number",
        ),
        (5, "u5", "i5", ts, 3.0, None),
        (
            6,
            "u6",
            "i6",
            None,
            5.0,
            "timestamp '2024-01-01' is not a number (set data.interactions.timestamp_unit to 'iso' for dates)",
        ),
    ]
    assert art.manifest.summary["issue_rows"] == 5
    assert art.manifest.files["interactions.parquet"].rows == 6


def test_bad_json_lines_are_kept_with_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    path.write_text(
        '{"user_id": "u1", "item_id": "i1", "timestamp": 1700000000}\n'
        '{"user_id": "u2", "item_id": \n'
        "\n"
        '["not", "an", "object"]\n'
        '{"user_id": 3, "item_id": "i3", "timestamp": "later"}\n'
    )
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path)}})
    rows = read_rows(ingest(cfg, tmp_path))
    assert [(r["source_row"], r["user_id"], r["ingest_issue"]) for r in rows] == [
        (1, "u1", None),
        (2, None, 'line is not valid JSON (Expecting value): \'{"user_id": "u2", "item_id":\''),
        (3, None, "line is a JSON list, expected an object"),
        (4, "3", "timestamp 'later' is not a number"),
    ]


def test_ids_with_control_characters_are_flagged_at_ingest_and_shown_escaped(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    path.write_bytes(b"user_id,item_id,timestamp\nu1,i1,1700000000\nu\x002,i2,1700000001\nu3,i\x1b[31m3,1700000002\n")
    rows = read_rows(ingest(make_cfg(tmp_path, {"interactions": {"path": str(path)}}), tmp_path))
    assert [(r["source_row"], r["user_id"], r["item_id"], r["ingest_issue"]) for r in rows] == [
        (1, "u1", "i1", None),
        (2, None, "i2", "user id 'u\\x002' contains control characters; fix the exporter or the file's encoding"),
        (3, "u3", None, "item id 'i\\x1b[31m3' contains control characters; fix the exporter or the file's encoding"),
    ]


# ---------------------------------------------------------------------------------------------- structural errors


def test_missing_mapped_column_names_file_column_found_and_key(tmp_path: Path) -> None:
    path = events_csv(tmp_path / "ev.csv")
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path), "columns": {"user": "userId", "rating": "stars"}}})
    with pytest.raises(DataError) as exc:
        ingest(cfg, tmp_path)
    assert str(exc.value) == (
        f"{path}: column 'userId' (set by data.interactions.columns.user) not found; column 'stars' (set by "
        "data.interactions.columns.rating) not found. Columns found: 'user_id', 'item_id', 'timestamp', 'rating'. "
        "Set data.interactions.columns.user, data.interactions.columns.rating to one of the columns found, "
        "or fix the file."
    )
    assert not committed(tmp_path)


def _structural_case(tmp_path: Path, case: str) -> tuple[Path, dict[str, Any]]:
    if case == "empty":
        path = tmp_path / "ev.csv"
        path.write_bytes(b"")
    elif case == "header_only":
        path = tmp_path / "ev.csv"
        path.write_text("user_id,item_id,timestamp\n")
    elif case == "latin1":
        path = tmp_path / "ev.csv"
        path.write_bytes(b"user_id,item_id,timestamp\nrenee,caf\xe9,1700000000\n")
    elif case == "truncated_gzip":
        path = tmp_path / "ev.csv.gz"
        body = b"user_id,item_id,timestamp\n" + b"".join(b"u%d,i%d,1700000000\n" % (i, i) for i in range(50000))
        packed = gzip.compress(body)
        path.write_bytes(packed[: len(packed) // 2])
    elif case == "corrupt_parquet":
        path = tmp_path / "ev.parquet"
        EVENT_FRAME.to_parquet(path, index=False)
        path.write_bytes(path.read_bytes()[:-20])
    elif case == "missing":
        path = tmp_path / "nope.csv"
    elif case == "no_glob_match":
        path = tmp_path / "part-*.csv"
    else:
        path = tmp_path / "ev.xlsx"
        path.write_bytes(b"PK")
    return path, {"interactions": {"path": str(path)}}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "{path}: file is empty; remove it or point data.interactions.path at the right file"),
        (
            "header_only",
            "{path}: no rows (the file has a header but no data); remove the file or point "
            "data.interactions.path at the data",
        ),
        (
            "latin1",
            "{path}: bytes that are not valid utf-8 text (In CSV column #1: Row #2: CSV "
            "conversion error to string: invalid UTF8 data); set data.interactions.encoding to the file's "
            "encoding (e.g. 'latin-1' or 'cp1252') or re-export the file as UTF-8",
        ),
        (
            "truncated_gzip",
            "{path}: gzip data is truncated or corrupt (Truncated compressed stream); re-copy or re-compress the file",
        ),
        (
            "corrupt_parquet",
            "{path}: not a readable Parquet file (Parquet magic bytes not found in footer. Either the "
            "file is corrupted or this is not a parquet file.); the file is corrupt or not Parquet: "
            "re-export it or set data.interactions.format to its real format",
        ),
        (
            "unknown_ext",
            "{path}: cannot tell the file format from its name; set data.interactions.format to one of "
            "csv, tsv, parquet, jsonl (gzip is detected from a .gz ending)",
        ),
    ],
)
def test_structural_problems_raise_a_clear_data_error(tmp_path: Path, case: str, message: str) -> None:
    path, data = _structural_case(tmp_path, case)
    with pytest.raises(DataError) as exc:
        ingest(make_cfg(tmp_path, data), tmp_path)
    assert str(exc.value) == message.format(path=path)
    assert not committed(tmp_path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "missing",
            "data.interactions.path: '{path}' does not exist; fix the path (relative paths are resolved "
            "against the config file's directory)",
        ),
        ("no_glob_match", "data.interactions.path: no files match '{path}'; check the pattern and directory"),
    ],
)
def test_a_path_that_names_nothing_is_a_configuration_error(tmp_path: Path, case: str, message: str) -> None:
    path, data = _structural_case(tmp_path, case)
    with pytest.raises(InputNotFound) as exc:
        ingest(make_cfg(tmp_path, data), tmp_path)
    assert str(exc.value) == message.format(path=path) and exc.value.exit_code == 2
    assert not committed(tmp_path)


def test_latin1_file_reads_with_the_configured_encoding(tmp_path: Path) -> None:
    path, data = _structural_case(tmp_path, "latin1")
    data["interactions"]["encoding"] = "latin-1"
    (row,) = read_rows(ingest(make_cfg(tmp_path, data), tmp_path))
    assert (row["user_id"], row["item_id"]) == ("renee", "café")


def test_wrong_delimiter_is_explained(tmp_path: Path) -> None:
    path = events_csv(tmp_path / "ev.csv", sep="\t")
    with pytest.raises(DataError) as exc:
        ingest(make_cfg(tmp_path, {"interactions": {"path": str(path)}}), tmp_path)
    assert str(exc.value) == (
        f"{path}: the header 'user_id\\titem_id\\ttimestamp\\trating' has no ',' delimiter "
        "but contains '\\t'; set data.interactions.delimiter (or .format) to match the file"
    )


def test_failed_rerun_leaves_the_folder_as_it_found_it(tmp_path: Path) -> None:
    path = events_csv(tmp_path / "ev.csv")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\ni1,One\ni2,Two\n")
    cfg = make_cfg(tmp_path, {"interactions": {"path": str(path)}, "items": {"path": str(items)}})
    ingest(cfg, tmp_path)
    folder = tmp_path / "store" / "runs" / "r1" / "ingest"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["_MANIFEST.json", "interactions.parquet", "items.parquet"]
    path.write_text("user_id,item_id,timestamp\n")  # a header and no rows: fails after items are read
    with pytest.raises(DataError):
        ingest(cfg, tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p for p in (tmp_path / "store" / "_staging").rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------------------------------- since, globs, chunks


def test_since_keeps_only_later_events_and_params_override_config(tmp_path: Path) -> None:
    path = events_csv(tmp_path / "ev.csv")
    at_second_event = datetime.fromtimestamp(1700000100, tz=UTC)
    data = {"interactions": {"path": str(path)}, "since": "2000-01-01T00:00:00Z"}
    art = ingest(make_cfg(tmp_path, data), tmp_path, since=at_second_event)
    rows = read_rows(art)
    # Strictly after: the event exactly at the watermark was ingested last time.
    assert [r["source_row"] for r in rows] == [3, 4, 5]
    summary = art.manifest.summary
    assert summary["rows"] == {"interactions": 3}
    assert summary["skipped_before_since"] == 2
    assert summary["since"] == "2023-11-14T22:15:00+00:00"
    assert summary["min_timestamp"] == "2023-11-14T22:16:40.000+00:00"
    assert summary["max_timestamp"] == "2023-11-14T22:20:00.000+00:00"

    # The config watermark applies when the run gives none; a naive datetime means UTC.
    art = ingest(make_cfg(tmp_path, {**data, "since": "2023-11-14T22:18:20"}), tmp_path)
    assert [r["source_row"] for r in read_rows(art)] == [5]

    # Nothing newer: an empty table and no watermark (the caller keeps its previous one).
    art = ingest(make_cfg(tmp_path, data), tmp_path, since=datetime(2030, 1, 1, tzinfo=UTC))
    assert read_rows(art) == []
    assert art.manifest.summary["max_timestamp"] is None


def test_glob_and_directory_sources_read_every_file_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "part-2.csv").write_text("user_id,item_id,timestamp\nu2,i2,1700000200\n")
    (folder / "part-1.csv").write_text("user_id,item_id,timestamp\nu1,i1,1700000100\nu1,i3,1700000150\n")
    (folder / "notes.md").write_text("not data")
    for path in (folder / "part-*.csv", folder):
        art = ingest(make_cfg(tmp_path, {"interactions": {"path": str(path)}}), tmp_path)
        rows = read_rows(art)
        assert [(Path(r["source_file"]).name, r["source_row"], r["item_id"]) for r in rows] == [
            ("part-1.csv", 1, "i1"),
            ("part-1.csv", 2, "i3"),
            ("part-2.csv", 1, "i2"),
        ]
        assert art.manifest.summary["sources"]["interactions"] == [
            str(folder / "part-1.csv"),
            str(folder / "part-2.csv"),
        ]


def test_tiny_chunks_give_identical_output(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    lines = ["user_id,item_id,timestamp,rating"]
    for n in range(1, 4501):
        if n in (999, 1000, 2001, 4500):
            lines.append(f"u{n},broken")  # rows pyarrow cannot split, on and around chunk borders
        elif n % 700 == 0:
            lines.append(f"u{n},i{n % 37},soon,{n % 5}")
        else:
            lines.append(f"u{n % 97},i{n % 37},{1700000000 + n},{n % 5 + 0.5}")
    path.write_text("\n".join(lines) + "\n")
    data = {"interactions": {"path": str(path), "columns": {"rating": "rating"}}}
    with ingest(make_cfg(tmp_path, data), tmp_path).path("interactions.parquet") as p:
        whole = pq.read_table(p)
    small = make_cfg(tmp_path, {**data, "chunk_rows": 1000})
    with ingest(small, tmp_path).path("interactions.parquet") as p:
        assert pq.ParquetFile(p).metadata.num_row_groups == 5  # it really went in chunks
        chunked = pq.read_table(p)
    assert chunked.equals(whole)
    assert whole.column("source_row").to_pylist() == list(range(1, 4501))
    issues = dict(zip(whole.column("source_row").to_pylist(), whole.column("ingest_issue").to_pylist()))
    assert issues[1000] == "row has 2 fields, expected 4: 'u1000,broken'"
    assert issues[1400] == "timestamp 'soon' is not a number"
    assert sum(v is not None for v in issues.values()) == 4 + 6


def test_csv_reader_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    from recloop.config import StoreConfig
    from recloop.data.readers import open_table, resolve_sources

    path = tmp_path / "wide.csv"
    padding = "x" * 1000
    with path.open("w") as f:
        f.write("user_id,item_id,timestamp,padding\n")
        for block in range(60):
            f.write("".join(f"u{n},i{n},1700000000,{padding}\n" for n in range(block * 1000, block * 1000 + 1000)))
    assert path.stat().st_size > 60e6
    (src,) = resolve_sources(str(path), "auto", StoreConfig(), "data.interactions")
    baseline = pa.total_allocated_bytes()
    peak = rows = 0
    with src.local() as local:
        reader = open_table(src, local, chunk_rows=1000, config_key="data.interactions")
        for chunk in reader.chunks(["user_id"]):
            rows += chunk.table.num_rows
            peak = max(peak, pa.total_allocated_bytes() - baseline)
    assert rows == 60_000
    # pyarrow reads a bounded number of blocks ahead: far less than the 60 MB file.
    assert peak < 30e6


# ---------------------------------------------------------------------------------------------- items, tags, users


def _catalog(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Heat (1995),\n"
        "1,Toy Story again,Comedy\n"
    )
    (tmp_path / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,1,Pixar,1\n2,1,pixar ,2\n3,1,fun,3\n4,1,toys,4\n5,1,Fun,5\n6,1,pixar,6\n7,1,CGI,7\n"
        "8,2,politics,8\n"
    )
    events_csv(tmp_path / "ev.csv")
    return {
        "interactions": {"path": str(tmp_path / "ev.csv")},
        "items": {
            "path": str(tmp_path / "movies.csv"),
            "id": "movieId",
            "category": "genres",
            "text": "{title}. Genres: {genres}. Tags: {tags}",
            "tags": {"path": str(tmp_path / "tags.csv"), "item": "movieId", "tag": "tag", "max_tags": 3},
        },
    }


def test_items_text_with_folded_tags_and_categories(tmp_path: Path) -> None:
    art = ingest(make_cfg(tmp_path, _catalog(tmp_path)), tmp_path)
    assert read_rows(art, "items.parquet") == [
        # Top 3 tags by frequency (ties alphabetical), lower-cased and de-duplicated.
        {
            "item_id": "1",
            "text": "Toy Story (1995). Genres: Adventure|Animation|Children. Tags: pixar, fun, cgi",
            "categories": ["Adventure", "Animation", "Children"],
            "title": "Toy Story (1995)",
            "genres": "Adventure|Animation|Children",
        },
        {
            "item_id": "2",
            "text": "American President, The (1995). Genres: Comedy|Drama|Romance. Tags: politics",
            "categories": ["Comedy", "Drama", "Romance"],
            "title": "American President, The (1995)",
            "genres": "Comedy|Drama|Romance",
        },
        {
            "item_id": "3",
            "text": "Heat (1995). Genres: . Tags:",
            "categories": [],
            "title": "Heat (1995)",
            "genres": None,
        },
    ]
    entry = art.manifest.files["items.parquet"]
    assert entry.rows == 3
    assert entry.schema == {
        "item_id": "string",
        "text": "string",
        "categories": "list<item: string>",
        "title": "string",
        "genres": "string",
    }
    summary = art.manifest.summary
    assert summary["rows"] == {"items": 3, "interactions": 5}
    assert summary["dropped"]["items"] == {"missing_id": 0, "duplicate_id": 1, "broken_rows": 0}
    assert summary["sources"]["tags"] == [str(tmp_path / "tags.csv")]


def test_parquet_catalog_with_list_categories_and_numeric_ids(tmp_path: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "id": pa.array([7, 8], pa.int64()),
                "name": ["Seven", "Eight"],
                "tags": pa.array([["Drama", "War"], []], pa.list_(pa.string())),
                "year": pa.array([1999, None], pa.int32()),
            }
        ),
        tmp_path / "catalog.parquet",
    )
    data = {
        "interactions": {"path": str(events_csv(tmp_path / "ev.csv"))},
        "items": {"path": str(tmp_path / "catalog.parquet"), "id": "id", "category": "tags", "text": "{name} ({year})"},
    }
    assert read_rows(ingest(make_cfg(tmp_path, data), tmp_path), "items.parquet") == [
        {
            "item_id": "7",
            "text": "Seven (1999)",
            "categories": ["Drama", "War"],
            "name": "Seven",
            "tags": '["Drama", "War"]',
            "year": "1999",
        },
        {"item_id": "8", "text": "Eight ()", "categories": [], "name": "Eight", "tags": "[]", "year": None},
    ]


def test_template_field_missing_from_catalog_is_a_config_error(tmp_path: Path) -> None:
    data = _catalog(tmp_path)
    data["items"]["text"] = "{title} ({year}) {tags}"
    del data["items"]["tags"]
    with pytest.raises(ConfigError) as exc:
        ingest(make_cfg(tmp_path, data), tmp_path)
    assert exc.value.errors == [
        f"data.items.text: the template uses {{year}}, {{tags}} but the catalog {tmp_path / 'movies.csv'} has "
        "no such column (columns found: 'movieId', 'title', 'genres'; {tags} needs a tag source in "
        "data.items.tags); use the columns found or fix the catalog"
    ]
    assert not (tmp_path / "store" / "runs").exists()  # checked before anything is written


def test_users_table(tmp_path: Path) -> None:
    data = {
        "interactions": {"path": str(events_csv(tmp_path / "ev.csv"))},
        "users": {"path": str(tmp_path / "users.jsonl"), "id": "uid"},
    }
    (tmp_path / "users.jsonl").write_text(
        '{"uid": "u1", "age": 31, "country": "FR"}\n{"uid": "u2", "age": null, "country": "DE"}\n'
    )
    art = ingest(make_cfg(tmp_path, data), tmp_path)
    assert read_rows(art, "users.parquet") == [
        {"user_id": "u1", "age": "31", "country": "FR"},
        {"user_id": "u2", "age": None, "country": "DE"},
    ]
    assert art.manifest.summary["rows"] == {"users": 2, "interactions": 5}


# ---------------------------------------------------------------------------------------------- real data


def test_movielens_row_counts_match_the_source_files(tmp_path: Path) -> None:
    movielens()  # fails, not skips, without the shared copy CI always has
    cfg = config.load(REPO / "configs" / "movielens.yaml", [f"store.root=file://{tmp_path / 'store'}"])
    art = ingest(cfg, tmp_path)
    summary = art.manifest.summary
    assert summary["rows"] == {"items": 9125, "interactions": 100004}
    assert summary["issue_rows"] == 0
    assert summary["min_timestamp"] == "1995-01-09T11:46:49.000+00:00"
    assert summary["max_timestamp"] == "2016-10-16T17:57:24.000+00:00"
    items = art.read_parquet("items.parquet").set_index("item_id")
    assert (
        items.loc["1", "text"] == "Toy Story (1995). Genres: Adventure|Animation|Children|Comedy|Fantasy. Tags: pixar"
    )
    assert list(items.loc["1", "categories"]) == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


def test_cli_preview_shows_parsed_rows_and_issues(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recloop.cli import app

    (tmp_path / "ev.csv").write_text("uid,iid,ts\nu1,i1,1700000000\nu2,i2,abc\nu3,i3,1700000300\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "name: t\ndata:\n  interactions:\n    path: ev.csv\n    columns: {user: uid, item: iid, timestamp: ts}\n"
    )
    result = CliRunner().invoke(app, ["data", "preview", str(cfg_path), "--rows", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"1 file(s); first: {tmp_path / 'ev.csv'} (csv); columns: uid, iid, ts" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(lines) == 2  # --rows 2
    assert "u1" in lines[0] and "2023-11-14 22:13:20+00:00" in lines[0]
    assert "u2" in lines[1] and "timestamp 'abc' is not a number" in lines[1]


@pytest.mark.s3
def test_ingest_reads_s3_sources_and_writes_to_an_s3_store(s3_store: Any, s3_store_config: Any) -> None:
    # Raw data lives in the store's bucket outside its prefix; it is read with the store's endpoint/keys.
    bucket = s3_store.bucket
    raw = config.from_dict(
        {
            "name": "raw",
            "store": {**s3_store_config.model_dump(mode="python"), "root": f"s3://{bucket}"},
            "data": {"interactions": {"path": "unused.csv"}},
        }
    )
    from recloop.store import S3Store

    raw_store = S3Store(raw.store)
    raw_store.put_bytes("raw/events/part-1.csv", b"user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,1700000100\n")
    raw_store.put_bytes("raw/events/part-2.csv.gz", gzip.compress(b"user_id,item_id,timestamp\nu3,i1,1700000200\n"))
    raw_store.put_bytes("raw/items.jsonl", b'{"item_id": "i1", "title": "One"}\n{"item_id": "i2", "title": "Two"}\n')
    cfg = config.from_dict(
        {
            "name": "t",
            "store": s3_store_config.model_dump(mode="python"),
            "data": {
                "interactions": {"path": f"s3://{bucket}/raw/events/part-*"},
                "items": {"path": f"s3://{bucket}/raw/items.jsonl"},
            },
        }
    )
    run_step("ingest", StepContext(cfg, s3_store, "r1", params=RunParams(force=True)))
    art = Artifact.open(s3_store, run_prefix("r1", "ingest"))
    assert art.uri == f"s3://{bucket}/recloop/runs/r1/ingest"
    assert art.manifest.summary["rows"] == {"items": 2, "interactions": 3}
    assert art.manifest.summary["sources"] == {
        "interactions": [f"s3://{bucket}/raw/events/part-1.csv", f"s3://{bucket}/raw/events/part-2.csv.gz"],
        "items": [f"s3://{bucket}/raw/items.jsonl"],
    }
    rows = read_rows(art)
    assert [(r["user_id"], r["source_file"], r["source_row"]) for r in rows] == [
        ("u1", f"s3://{bucket}/raw/events/part-1.csv", 1),
        ("u2", f"s3://{bucket}/raw/events/part-1.csv", 2),
        ("u3", f"s3://{bucket}/raw/events/part-2.csv.gz", 1),
    ]
    assert read_rows(art, "items.parquet") == [
        {"item_id": "i1", "text": "One", "categories": [], "title": "One"},
        {"item_id": "i2", "text": "Two", "categories": [], "title": "Two"},
    ]

    missing = config.from_dict(
        {**cfg.model_dump(mode="python"), "data": {"interactions": {"path": f"s3://{bucket}/raw/nothing/*.csv"}}}
    )
    with pytest.raises(InputNotFound) as exc:
        run_step("ingest", StepContext(missing, s3_store, "r2", params=RunParams(force=True)))
    message = (
        f"data.interactions.path: no objects match 's3://{bucket}/raw/nothing/*.csv'; "
        "check the bucket, prefix and pattern"
    )
    assert str(exc.value) == message
    # `recloop config validate --check-access` lists s3:// inputs the same way; without it they are not read.
    from recloop.data.readers import missing_inputs

    assert missing_inputs(missing.data, missing.store, remote=True) == [message]
    assert missing_inputs(missing.data, missing.store, remote=False) == []
