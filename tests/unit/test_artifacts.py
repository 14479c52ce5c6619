"""Artifacts (manifest written last, verified reads) and `run_step` reuse, on file:// and S3."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recloop import config as config_mod
from recloop.artifacts import MANIFEST, Artifact, ArtifactWriter, Manifest, run_prefix, safe_run_id
from recloop.artifacts.kinds import ArtifactKind
from recloop.errors import ArtifactError
from recloop.steps.base import RunParams, StepContext, run_step
from recloop.steps.graph import Input, Step, find_step
from recloop.store import FileStore, S3Store

# ---------------------------------------------------------------------------------------------- writer / reader


class RecordingMixin:
    """Records every mutating store call, in order (wraps the real store; nothing is faked)."""

    ops: list[tuple[str, str]]

    def put_bytes(self, key: str, data: bytes) -> None:
        self.ops.append(("put", key))
        super().put_bytes(key, data)  # type: ignore[misc]

    def put_file(self, key: str, path: Any) -> None:
        self.ops.append(("put", key))
        super().put_file(key, path)  # type: ignore[misc]

    def move(self, src: str, dest: str) -> None:
        self.ops.append(("move", dest))
        super().move(src, dest)  # type: ignore[misc]

    def delete(self, key: str) -> None:
        self.ops.append(("delete", key))
        super().delete(key)  # type: ignore[misc]

    def delete_prefix(self, prefix: str) -> int:
        self.ops.append(("delete_prefix", prefix))
        return super().delete_prefix(prefix)  # type: ignore[misc]


class RecordingFileStore(RecordingMixin, FileStore):
    pass


class RecordingS3Store(RecordingMixin, S3Store):
    pass


@pytest.fixture(params=[pytest.param("file"), pytest.param("s3", marks=pytest.mark.s3)])
def recording_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "file":
        store: Any = RecordingFileStore(f"file://{tmp_path / 'store'}")
    else:
        store = RecordingS3Store(request.getfixturevalue("s3_store_config"))
    store.ops = []
    return store


def _write_sample(store: Any, prefix: str = "runs/r1/probe") -> Manifest:
    df = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "score": [0.5, 1.5, 2.5]})
    with ArtifactWriter(
        store, prefix, step="probe", run_id="r1", config_hash="c0ffee", parents=["file:///up/stream"]
    ) as w:
        w.put_parquet("table.parquet", df)
        w.put_json("stats.json", {"rows": 3})
        w.put_bytes("nested/dir/blob.bin", b"\x00\x01")
        w.summary["rows"] = 3
    return w.manifest


def test_files_are_staged_and_the_manifest_is_written_last(recording_store: Any) -> None:
    _write_sample(recording_store)
    prefix, staging = "runs/r1/probe", "_staging/runs/r1/probe"
    # Deleting single staged objects is part of a move (S3) or of clearing staging: not the protocol.
    ops = [op for op in recording_store.ops if not (op[0] == "delete" and op[1].startswith(staging))]
    names = ["nested/dir/blob.bin", "stats.json", "table.parquet"]
    # Nothing touches the folder until the commit: stale staging goes, the files are uploaded to staging.
    assert ops[0] == ("delete_prefix", staging)
    uploads = ops[1:4]
    assert [op for op, _ in uploads] == ["put"] * 3
    assert sorted(k.split("/", 5)[-1] for _, k in uploads) == names
    assert all(k.startswith(staging + "/") for _, k in uploads)
    token = uploads[0][1].split("/")[4]
    # Commit: the staged manifest records it, the old manifest goes, files move in, the manifest is last.
    assert ops[4] == ("put", f"{staging}/{token}/{MANIFEST}")
    assert ops[5] == ("delete", f"{prefix}/{MANIFEST}")
    assert sorted(ops[6:9]) == [("move", f"{prefix}/{n}") for n in names]
    assert ops[9:] == [("put", f"{prefix}/{MANIFEST}"), ("delete_prefix", staging)]
    assert recording_store.list("_staging") == []


def test_a_failed_writer_leaves_the_folder_as_it_found_it(any_store: Any) -> None:
    before = _write_sample(any_store)
    with pytest.raises(RuntimeError, match="boom"):
        with ArtifactWriter(any_store, "runs/r1/probe", step="probe", run_id="r1") as w:
            w.put_bytes("stats.json", b'{"rows": 99}')
            w.put_bytes("extra.bin", b"never committed")
            raise RuntimeError("boom")
    art = Artifact.open(any_store, "runs/r1/probe")
    assert art.manifest.to_json() == before.to_json()
    assert art.read_json("stats.json") == {"rows": 3}
    assert sorted(any_store.list("runs/r1/probe")) == [
        f"runs/r1/probe/{n}" for n in (MANIFEST, "nested/dir/blob.bin", "stats.json", "table.parquet")
    ]
    assert any_store.list("_staging") == []


def test_a_rewrite_drops_files_the_new_artifact_does_not_have(any_store: Any) -> None:
    _write_sample(any_store)
    with ArtifactWriter(any_store, "runs/r1/probe", step="probe", run_id="r1") as w:
        w.put_json("stats.json", {"rows": 0})
    assert any_store.list("runs/r1/probe") == [f"runs/r1/probe/{MANIFEST}", "runs/r1/probe/stats.json"]
    assert Artifact.open(any_store, "runs/r1/probe").read_json("stats.json") == {"rows": 0}


def test_committed_artifact_reads_back_verified(any_store: Any, tmp_path: Path) -> None:
    written = _write_sample(any_store)
    art = Artifact.open(any_store, "runs/r1/probe/")
    m = art.manifest
    assert m.step == "probe" and m.run_id == "r1" and m.config_hash == "c0ffee"
    assert m.parents == ["file:///up/stream"] and m.summary == {"rows": 3}
    assert m.uri == any_store.uri("runs/r1/probe") == art.uri
    assert m.created_at == written.created_at and m.created_at.endswith("+00:00")
    assert sorted(m.files) == ["nested/dir/blob.bin", "stats.json", "table.parquet"]
    table = m.files["table.parquet"]
    assert table.rows == 3 and table.schema == {"user_id": "str", "score": "float64"}
    assert m.files["nested/dir/blob.bin"].size == 2
    assert art.read_parquet("table.parquet")["score"].tolist() == [0.5, 1.5, 2.5]
    assert art.read_json("stats.json") == {"rows": 3}
    assert art.read_bytes("nested/dir/blob.bin") == b"\x00\x01"
    out = art.download_dir("nested", tmp_path / "dl")
    assert (out / "dir" / "blob.bin").read_bytes() == b"\x00\x01"
    assert Artifact.exists(any_store, "runs/r1/probe")


def test_reader_refuses_missing_manifest(any_store: Any) -> None:
    any_store.put_bytes("runs/r1/half/part-0", b"written by something that died before committing")
    assert not Artifact.exists(any_store, "runs/r1/half")  # a folder without a manifest does not exist
    with pytest.raises(
        ArtifactError,
        match=r"runs/r1/half has no _MANIFEST.json: the step that writes it has not "
        r"completed; run it first",
    ):
        Artifact.open(any_store, "runs/r1/half")


def test_reader_refuses_tampered_and_missing_files(any_store: Any) -> None:
    _write_sample(any_store)
    art = Artifact.open(any_store, "runs/r1/probe")
    any_store.put_bytes("runs/r1/probe/stats.json", b'{"rows": 4}')
    with pytest.raises(
        ArtifactError,
        match=r"runs/r1/probe/stats.json does not match its manifest \(sha256 "
        r".*re-run the step that wrote it",
    ):
        art.read_json("stats.json")
    any_store.delete("runs/r1/probe/table.parquet")
    with pytest.raises(ArtifactError, match="lists 'table.parquet' but the file is missing"):
        art.read_parquet("table.parquet")
    with pytest.raises(
        ArtifactError,
        match=r"has no file 'other.csv' \(it has: nested/dir/blob.bin, stats.json, "
        r"table.parquet\)",
    ):
        art.read_bytes("other.csv")
    with pytest.raises(ArtifactError, match="has no folder 'missing'"):
        art.download_dir("missing", "/tmp/never")


def test_errors_inside_a_read_block_are_not_rewritten(any_store: Any) -> None:
    _write_sample(any_store)
    art = Artifact.open(any_store, "runs/r1/probe")
    with pytest.raises(FileNotFoundError, match="caller's own"):
        with art.path("stats.json"):
            raise FileNotFoundError("caller's own")


def test_corrupt_manifest_is_refused(any_store: Any) -> None:
    any_store.put_bytes(f"runs/r1/bad/{MANIFEST}", b"{not json")
    with pytest.raises(ArtifactError, match=r"_MANIFEST.json is corrupt .*re-run the step that wrote it"):
        Artifact.open(any_store, "runs/r1/bad")
    any_store.put_bytes(f"runs/r1/bad/{MANIFEST}", b"[1, 2]")
    with pytest.raises(ArtifactError, match="is corrupt"):
        Artifact.open(any_store, "runs/r1/bad")


def test_manifest_from_newer_version_still_opens(file_store: FileStore) -> None:
    m = Manifest(step="s", run_id="r", uri="file:///x")
    d = json.loads(m.to_json())
    d["added_by_a_later_version"] = {"x": 1}
    file_store.put_bytes(f"runs/r/s/{MANIFEST}", json.dumps(d).encode())
    assert Artifact.open(file_store, "runs/r/s").manifest.step == "s"


def test_rewrite_replaces_stale_files(any_store: Any) -> None:
    with ArtifactWriter(any_store, "runs/r1/x", step="x", run_id="r1") as w:
        w.put_bytes("old-only.txt", b"1")
        w.put_bytes("both.txt", b"old")
    with ArtifactWriter(any_store, "runs/r1/x", step="x", run_id="r1") as w:
        w.put_bytes("both.txt", b"new")
    art = Artifact.open(any_store, "runs/r1/x")
    assert sorted(art.manifest.files) == ["both.txt"]
    assert any_store.list("runs/r1/x") == ["runs/r1/x/_MANIFEST.json", "runs/r1/x/both.txt"]
    assert art.read_bytes("both.txt") == b"new"


def test_run_ids_become_safe_path_segments() -> None:
    assert safe_run_id("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00_00_00_00_00"
    assert safe_run_id(" scheduled__x/y ") == "scheduled__x_y"
    assert run_prefix("a b", "ingest") == "runs/a_b/ingest"
    for bad in ("", "  ", ".", ".."):
        with pytest.raises(ValueError, match="invalid run id"):
            safe_run_id(bad)


# ---------------------------------------------------------------------------------------------- run_step
# Two tiny steps registered for these tests: `probe_source` (no inputs) and `probe_sink` (reads it).

CALLS: list[str] = []
SOURCE = Step("probe_source", "recloop_test_probe_source", "test step: writes one file", output=ArtifactKind)
SINK = Step(
    "probe_sink",
    "recloop_test_probe_sink",
    "test step: copies its input",
    output=ArtifactKind,
    inputs={"probe_source": Input(ArtifactKind)},
)


def _run_source(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    CALLS.append("probe_source")
    with ctx.writer(output) as w:
        w.put_json("data.json", {"name": ctx.config.name, "since": str(ctx.params.since), "n": len(CALLS)})
    return w.manifest


def _run_sink(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    CALLS.append("probe_sink")
    upstream = ctx.open(inputs["probe_source"])
    with ctx.writer(output, parents=[upstream.uri]) as w:
        w.put_json("copy.json", upstream.read_json("data.json"))
        w.summary["copied"] = True
    return w.manifest


class _StepModule:
    def __init__(self, run: Any):
        self.run = run


@pytest.fixture
def probe_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import sys

    for step, fn in ((SOURCE, _run_source), (SINK, _run_sink)):
        monkeypatch.setitem(sys.modules, step.module, _StepModule(fn))
    CALLS.clear()
    return CALLS


def _ctx(
    store: Any,
    name: str = "probe",
    params: RunParams | None = None,
    logs: list[str] | None = None,
    run_id: str = "run-1",
) -> StepContext:
    cfg = config_mod.from_dict({"name": name, "data": {"interactions": {"path": "/nonexistent/x.csv"}}})
    return StepContext(
        config=cfg,
        store=store,
        run_id=run_id,
        params=params or RunParams(),
        log=(logs.append if logs is not None else lambda m: None),
    )


def test_run_step_reuses_a_committed_artifact(any_store: Any, probe_steps: list[str]) -> None:
    first = run_step(SOURCE, _ctx(any_store))
    logs: list[str] = []
    again = run_step(SOURCE, _ctx(any_store, logs=logs))
    assert probe_steps == ["probe_source"]  # ran once
    assert again.created_at == first.created_at and again.files == first.files
    assert logs == [f"probe_source: reusing committed artifact {any_store.uri('runs/run-1/probe_source')}"]
    assert first.uri == any_store.uri("runs/run-1/probe_source")
    assert first.reuse_key is not None and first.config_hash == _ctx(any_store).config.config_hash()


def test_run_step_force_recomputes(any_store: Any, probe_steps: list[str]) -> None:
    run_step(SOURCE, _ctx(any_store))
    run_step(SOURCE, _ctx(any_store, params=RunParams(force=True)))
    assert probe_steps == ["probe_source", "probe_source"]
    assert Artifact.open(any_store, "runs/run-1/probe_source").read_json("data.json")["n"] == 2


def test_run_step_recomputes_when_config_or_params_change(any_store: Any, probe_steps: list[str]) -> None:
    from datetime import datetime

    run_step(SOURCE, _ctx(any_store, name="probe"))
    logs: list[str] = []
    run_step(SOURCE, _ctx(any_store, name="probe-renamed", logs=logs))
    assert logs == [
        f"probe_source: committed artifact {any_store.uri('runs/run-1/probe_source')} was made "
        "with another config; recomputing"
    ]
    logs.clear()
    since = RunParams(since=datetime(2024, 1, 1, tzinfo=UTC))
    run_step(SOURCE, _ctx(any_store, name="probe-renamed", params=since, logs=logs))
    assert "was made from other inputs or run parameters; recomputing" in logs[0]
    assert probe_steps == ["probe_source"] * 3
    art = Artifact.open(any_store, "runs/run-1/probe_source")
    assert art.read_json("data.json")["since"] == "2024-01-01 00:00:00+00:00"


def test_downstream_recomputes_after_upstream_rerun(any_store: Any, probe_steps: list[str]) -> None:
    run_step(SOURCE, _ctx(any_store))
    run_step(SINK, _ctx(any_store))
    run_step(SINK, _ctx(any_store))  # reused
    assert probe_steps == ["probe_source", "probe_sink"]
    run_step(SOURCE, _ctx(any_store, params=RunParams(force=True)))
    sink = run_step(SINK, _ctx(any_store))  # its input changed: recomputed, not reused
    assert probe_steps == ["probe_source", "probe_sink", "probe_source", "probe_sink"]
    assert Artifact.open(any_store, "runs/run-1/probe_sink").read_json("copy.json")["n"] == 3
    assert sink.parents == [any_store.uri("runs/run-1/probe_source")]


def test_explicit_inputs_and_output(any_store: Any, probe_steps: list[str]) -> None:
    src = run_step(SOURCE, _ctx(any_store, run_id="elsewhere"))
    out = any_store.uri("custom/place")
    sink = run_step(SINK, _ctx(any_store), inputs={"probe_source": src.uri}, output=out)
    assert sink.uri == out and sink.parents == [src.uri]
    assert not Artifact.exists(any_store, "runs/run-1/probe_source")


def test_missing_input_is_a_clear_error(any_store: Any, probe_steps: list[str]) -> None:
    with pytest.raises(
        ArtifactError,
        match="runs/run-1/probe_source has no _MANIFEST.json: the step that writes it has not completed; run it first",
    ):
        run_step(SINK, _ctx(any_store))


def test_failed_step_leaves_nothing_committed_and_rerun_completes(
    any_store: Any, probe_steps: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashing(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
        with ctx.writer(output) as w:
            w.put_json("data.json", {"partial": True})
            raise OSError("disk full")

    import sys

    monkeypatch.setattr(sys.modules["recloop_test_probe_source"], "run", crashing)
    with pytest.raises(OSError, match="disk full"):
        run_step(SOURCE, _ctx(any_store))
    assert not Artifact.exists(any_store, "runs/run-1/probe_source")
    monkeypatch.setattr(sys.modules["recloop_test_probe_source"], "run", _run_source)
    run_step(SOURCE, _ctx(any_store))
    assert Artifact.open(any_store, "runs/run-1/probe_source").read_json("data.json")["name"] == "probe"


def test_unknown_step_is_named() -> None:
    with pytest.raises(KeyError, match="unknown step 'nope'; steps: ingest, validate"):
        find_step("nope")


def test_a_failed_writer_deletes_its_staged_files_even_where_a_listing_lags(tmp_path: Path) -> None:
    # A listing may not yet show an object written a moment ago (seen on SeaweedFS under load, by the
    # interrupt loop): the writer deletes what it staged by name, not only what a listing returns.
    class LaggingListing(FileStore):
        def list(self, prefix: str = "") -> list[str]:
            return [k for k in super().list(prefix) if not k.startswith("_staging/")]

        def delete_prefix(self, prefix: str) -> int:  # by listing, as on S3
            keys = self.list(prefix)
            for key in keys:
                self.delete(key)
            return len(keys)

    store = LaggingListing(f"file://{tmp_path / 'store'}")
    with pytest.raises(RuntimeError, match="step failed"):
        with ArtifactWriter(store, "runs/r1/ingest", step="ingest", run_id="r1") as writer:
            writer.put_json("a.json", {"x": 1})
            writer.put_json("b.json", {"y": 2})
            raise RuntimeError("step failed")
    left = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert left == []
