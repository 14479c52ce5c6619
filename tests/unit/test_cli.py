"""`recloop step NAME ...`: help, argument checks, exit codes, outputs, input overrides, progress."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pytest

from recloop.artifacts import Artifact
from recloop.cli import main
from recloop.commands import step as step_cmd
from recloop.console import ProgressBars
from recloop.steps.graph import FEEDBACK, TRAINING, find_step
from recloop.store import FileStore
from support.s3 import S3Server

EVENTS = """user_id,item_id,timestamp,rating
u1,i1,1700000000,4.0
u1,i2,1700000100,3.5
u1,i3,1700000200,5.0
u2,i1,1700000300,2.0
u2,i3,1700000400,4.5
u3,i2,1700000500,1.0
"""


def _write_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "events.csv").write_text(EVENTS)
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""name: cli-test
store: {{root: "file://store"}}
data:
  interactions:
    path: events.csv
    columns: {{user: user_id, item: item_id, timestamp: timestamp, rating: rating}}
{extra}""")
    return cfg


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------- help


def test_step_group_help_lists_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "step", "--help")
    assert code == 0
    for name in (*TRAINING.names, *FEEDBACK.names):
        assert f" {name} " in out


@pytest.mark.parametrize("name", [*TRAINING.names, *FEEDBACK.names])
def test_every_step_command_has_help(capsys: pytest.CaptureFixture[str], name: str) -> None:
    spec = find_step(name)
    code, out, _ = _run(capsys, "step", name, "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert f"step {name} [OPTIONS]" in flat  # program name comes from argv[0]
    assert " ".join(spec.description.split()[:6]) in flat
    # Inputs with their artifact kinds, and the output's files, come from the step graph.
    assert "Inputs (roles" in flat and " ".join(spec.describe_inputs().split()) in flat
    assert f"Output: runs/{{run_id}}/{name}/" in flat and all(f"`{f}`" in flat for f in spec.output.files)
    for option in ("--config", "--run-id", "--since", "--force", "--set", "--input", "--output", "--json"):
        assert option in flat


def test_train_and_publish_have_their_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--model" in " ".join(_run(capsys, "step", "train", "--help")[1].split())
    assert "--dry-run" in " ".join(_run(capsys, "step", "publish", "--help")[1].split())


# ---------------------------------------------------------------------------------------------- running


def test_ingest_prints_uri_and_summary_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path)
    store_uri = f"file://{tmp_path / 'store'}"
    code, out, err = _run(capsys, "step", "ingest", "--config", str(cfg), "--run-id", "r1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{store_uri}/runs/r1/ingest"
    assert lines[1].startswith("ingest · run r1 · committed in ")
    assert '  rows: {"interactions": 6}' in lines
    art = Artifact.open(FileStore(store_uri), "runs/r1/ingest")
    assert art.manifest.summary["rows"] == {"interactions": 6}
    created = art.manifest.created_at

    code, out, err = _run(capsys, "step", "ingest", "-c", str(cfg), "--run-id", "r1")
    assert code == 0
    assert f"ingest: reusing committed artifact {store_uri}/runs/r1/ingest" in err
    assert out.splitlines()[1].startswith("ingest · run r1 · reused committed artifact")
    assert Artifact.open(FileStore(store_uri), "runs/r1/ingest").manifest.created_at == created

    code, out, err = _run(capsys, "step", "ingest", "-c", str(cfg), "--run-id", "r1", "--force", "--json")
    assert code == 0 and "reusing" not in err
    brief = json.loads(out)
    assert brief["uri"] == f"{store_uri}/runs/r1/ingest" and brief["step"] == "ingest" and brief["run_id"] == "r1"
    assert brief["summary"]["rows"] == {"interactions": 6}


def test_set_since_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path)
    other_root = f"file://{tmp_path / 'elsewhere'}"
    code, out, err = _run(
        capsys,
        "step",
        "ingest",
        "-c",
        str(cfg),
        "--run-id",
        "r2",
        "--set",
        f"store.root={other_root}",
        "--since",
        "2023-11-14T22:15:00",
        "--output",
        f"{other_root}/custom/ingest",
        "--json",
    )
    assert code == 0, err
    brief = json.loads(out)
    assert brief["uri"] == f"{other_root}/custom/ingest"
    # 1700000100 = 2023-11-14T22:15:00Z: only the 4 events strictly after it remain.
    assert brief["summary"]["rows"] == {"interactions": 4}
    assert not (tmp_path / "store").exists()


def test_input_override_reads_another_runs_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path)
    store_uri = f"file://{tmp_path / 'store'}"
    assert _run(capsys, "step", "ingest", "-c", str(cfg), "--run-id", "source-run")[0] == 0
    code, out, err = _run(
        capsys,
        "step",
        "validate",
        "-c",
        str(cfg),
        "--run-id",
        "other-run",
        "--input",
        f"ingest={store_uri}/runs/source-run/ingest/",
    )
    assert code == 0, err
    assert out.splitlines()[0] == f"{store_uri}/runs/other-run/validate"
    store = FileStore(store_uri)
    art = Artifact.open(store, "runs/other-run/validate")
    assert art.manifest.summary["rows"] == 6
    assert not Artifact.exists(store, "runs/other-run/ingest")


def test_missing_upstream_artifact_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path)
    code, _, err = _run(capsys, "step", "validate", "-c", str(cfg), "--run-id", "never-ingested")
    assert code == 1
    assert "error:" in err and "ingest" in err and "run" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "yesterday"], "'yesterday' is not an ISO-8601 time"),
        (["--input", "train=file:///x"], "'train' is not an input of validate; its inputs: ingest"),
        (["--input", "ingest"], "expected ROLE=URI"),
        (["--set", "validation.on_failure=explode"], "validation.on_failure"),
        (["--set", "validation.bogus_key=1"], "validation.bogus_key: unknown key; remove it or check its spelling"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    cfg = _write_config(tmp_path)
    code, _, err = _run(capsys, "step", "validate", "-c", str(cfg), "--run-id", "r1", *args)
    assert code == 2
    assert expected in " ".join(err.split())
    assert "Traceback" not in err


def test_bad_run_id_and_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path)
    code, _, err = _run(capsys, "step", "ingest", "-c", str(cfg), "--run-id", "..")
    assert code == 2 and "'..' is not a usable run id" in " ".join(err.split())
    code, _, err = _run(capsys, "step", "ingest", "-c", str(tmp_path / "nope.yaml"), "--run-id", "r1")
    assert code == 2 and "nope.yaml: file not found; check the path" in " ".join(err.split())
    code, _, err = _run(capsys, "step", "ingest", "--run-id", "r1")
    assert code == 2 and "--config" in err


def test_console_script_exit_codes(tmp_path: Path) -> None:
    """The installed `recloop` entry point: exit status and a one-message error, no traceback."""
    cfg = _write_config(tmp_path, extra="validation:\n  on_failure: sometimes\n")
    recloop = Path(sys.executable).parent / "recloop"
    proc = subprocess.run(
        [str(recloop), "step", "ingest", "-c", str(cfg), "--run-id", "r1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 2
    assert "validation.on_failure" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.s3
def test_step_on_s3_store(tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_server: S3Server) -> None:
    from recloop.store import S3Store

    cfg = _write_config(tmp_path)
    bucket = s3_server.new_bucket()
    overrides = [
        "--set",
        f"store.root=s3://{bucket}/pipelines",
        "--set",
        f"store.endpoint_url={s3_server.endpoint_url}",
        "--set",
        f"store.access_key_id={s3_server.access_key}",
        "--set",
        f"store.secret_access_key={s3_server.secret_key}",
        "--set",
        "store.region=us-east-1",
    ]
    code, out, err = _run(capsys, "step", "ingest", "-c", str(cfg), "--run-id", "s3run", *overrides)
    assert code == 0, err
    assert out.splitlines()[0] == f"s3://{bucket}/pipelines/runs/s3run/ingest"
    store = S3Store(s3_server.store_config(bucket, prefix="pipelines"))
    art = Artifact.open(store, "runs/s3run/ingest")
    assert len(art.read_parquet("interactions.parquet")) == 6
    code, _, err = _run(
        capsys,
        "step",
        "ingest",
        "-c",
        str(cfg),
        "--run-id",
        "s3run",
        *overrides,
        "--set",
        "store.secret_access_key=wrong",
    )
    assert code == 1
    assert re.search(r"access denied \(\w+\); check store credentials", err)


# ---------------------------------------------------------------------------------------------- progress


def test_progress_bars_appear_only_for_slow_work() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with ProgressBars(console, delay_s=0.2, hide_finished=True) as progress:
        fast = progress("fast work", total=3)
        for _ in range(3):
            fast(1)
        slow = progress("slow work", total=10)
        slow(1)
        hidden_at_start = progress.bars.tasks[1].visible
        time.sleep(0.25)
        slow(1)
        visible_after_delay = progress.bars.tasks[1].visible
        tasks = {t.description: t for t in progress.bars.tasks}
    assert not tasks["fast work"].visible and tasks["fast work"].completed == 3
    assert hidden_at_start is False and visible_after_delay is True
    assert tasks["slow work"].completed == 2


def test_run_progress_bars_show_at_once_and_stay_until_the_end() -> None:
    """`recloop run`'s bars: no delay, and a finished bar stays until the run ends."""
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with ProgressBars(console) as progress:
        advance = progress("work", total=2)
        visible_before_any_work = progress.bars.tasks[0].visible
        advance(2)
        task = progress.bars.tasks[0]
    assert visible_before_any_work is True
    assert task.visible is True and task.finished


def test_progress_is_quiet_off_a_terminal() -> None:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    with ProgressBars(console, delay_s=0.0) as progress:
        advance = progress("work", total=2)
        advance(1)
        advance(1)
    assert buffer.getvalue() == ""


def test_parse_helpers() -> None:
    from datetime import datetime

    assert step_cmd.parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert step_cmd.parse_since("2024-05-01T12:00:00+02:00").utcoffset().total_seconds() == 7200  # type: ignore[union-attr]
    assert step_cmd.parse_since(None) is None
    assert step_cmd.parse_inputs(["ingest=s3://b/runs/r/ingest/"], ("ingest",), "validate") == {
        "ingest": "s3://b/runs/r/ingest"
    }
    assert step_cmd.parse_inputs(None, ("ingest",), "validate") == {}
