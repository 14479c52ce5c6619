"""SIGINT, SIGTERM and SIGKILL at random moments of the data steps, through the real `recloop` entry point.

Each trial forks a child (recloop already imported, so a trial costs the step, not the interpreter start),
which runs `recloop step STEP --force` as the console script does; the parent sends the signal after a
random delay inside the step's measured duration. After every trial:

* the exit code follows the shell's convention: 130 for SIGINT, 143 for SIGTERM (or the step finished
  before the signal: 0 and a committed artifact), and an interrupted step names itself and the rerun;
* no file in the store lies outside a committed artifact, except staging (a SIGKILL can leave staged files,
  never an artifact folder without its manifest);
* a rerun without --force finishes, and its artifact's files equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from recloop import cli
from recloop.artifacts import MANIFEST, STAGING, Artifact
from recloop.data.synth import generate
from recloop.store import FileStore, S3Store

STEPS = ("ingest", "validate", "preprocess")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
TRIALS_PER_SIGNAL = 30  # over the three steps, per store
SEED = 11


def write_config(tmp_path: Path, store: dict[str, Any]) -> Path:
    data = generate(n_users=300, n_items=200, seed=3, events_per_user=30).write(tmp_path / "data")
    config = {
        "name": "interrupts",
        "store": store,
        "data": {
            "interactions": {
                "path": str(data["interactions"]),
                "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"},
                "timestamp_unit": "s",
            },
            "items": {"path": str(data["items"]), "id": "item_id", "text": "{title}. {description}"},
            "users": {"path": str(data["users"]), "id": "user_id"},
        },
        "validation": {"on_failure": "fail", "rating_range": [0.5, 5.0]},
        "preprocess": {"min_user_interactions": 5, "split": {"method": "leave_last_out"}},
        "models": [{"type": "popularity"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fork_step(config: Path, step: str, run_id: str, force: bool, log: Path) -> int:
    """Fork a child running `recloop step STEP` exactly as the console script; returns its pid."""
    # Signals wait until the child has the dispositions of a fresh process, not pytest's handlers.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return pid
    code = 70
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [
            "recloop",
            "step",
            step,
            "--config",
            str(config),
            "--run-id",
            run_id,
            *(["--force"] if force else []),
        ]
        cli.entry()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os._exit(code)


def shell_exit_code(status: int) -> int:
    """What a shell reports: the exit code, or 128 + the signal that killed the process."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_step(config: Path, step: str, run_id: str, log: Path, force: bool = False) -> tuple[int, float]:
    started = time.perf_counter()
    _, status = os.waitpid(fork_step(config, step, run_id, force, log), 0)
    return shell_exit_code(status), time.perf_counter() - started


def stray_files(store: Any) -> list[str]:
    """Files outside every committed artifact and outside staging."""
    keys = store.list("")
    manifests = {k[: -len(MANIFEST) - 1] for k in keys if k.endswith("/" + MANIFEST)}
    listed = {f"{folder}/{name}" for folder in manifests for name in Artifact.open(store, folder).manifest.files}
    return [k for k in keys if not k.startswith(STAGING + "/") and not k.endswith("/" + MANIFEST) and k not in listed]


def commits_in_progress(store: Any) -> set[str]:
    """Folders whose staged manifest is written: a commit was under way (only SIGKILL stops one)."""
    staged = [k for k in store.list(STAGING) if k.endswith("/" + MANIFEST)]
    return {k[len(STAGING) + 1 :].rsplit("/", 2)[0] for k in staged}


def file_hashes(store: Any, run_id: str, step: str) -> dict[str, str]:
    files = Artifact.open(store, f"runs/{run_id}/{step}").manifest.files
    return {name: entry.sha256 for name, entry in files.items()}


def stable_files(store: Any, step: str) -> dict[str, str]:
    """The files two uninterrupted runs (run ids ref and ref2) write identically: all but timestamped ones."""
    ref, ref2 = file_hashes(store, "ref", step), file_hashes(store, "ref2", step)
    return {name: digest for name, digest in ref.items() if ref2.get(name) == digest}


def signal_loop(config: Path, store: Any, tmp_path: Path) -> list[str]:
    log = tmp_path / "child.log"
    durations = {}
    for run_id in ("ref", "ref2", "sig"):
        for step in STEPS:
            code, seconds = run_step(config, step, run_id, log)
            assert code == 0, log.read_text()
            durations[step] = max(durations.get(step, 0.0), seconds)
    expected = {step: stable_files(store, step) for step in STEPS}
    for step in STEPS:  # every table is compared; only timestamped reports may differ between runs
        parquet = [n for n in file_hashes(store, "ref", step) if n.endswith(".parquet")]
        assert expected[step] and set(parquet) <= set(expected[step]), (step, parquet, sorted(expected[step]))

    rng = random.Random(SEED)
    failures: list[str] = []
    plan = [(sig, STEPS[i % len(STEPS)]) for sig in SIGNALS for i in range(TRIALS_PER_SIGNAL)]
    rng.shuffle(plan)
    for trial, (sig, step) in enumerate(plan):
        delay = rng.uniform(0.0, durations[step])
        staged_before = set(store.list(STAGING))  # a SIGKILLed trial's staging stays until a writer clears it
        pid = fork_step(config, step, "sig", True, log)
        time.sleep(delay)
        os.kill(pid, sig)
        _, status = os.waitpid(pid, 0)
        code = shell_exit_code(status)
        output = log.read_text()
        where = f"trial {trial}: {sig.name} at {delay:.2f} s into {step}"
        if code != 128 + sig:
            if code != 0 or not Artifact.exists(store, f"runs/sig/{step}"):
                failures.append(f"{where}: exit {code}\n{output[-2000:]}")
        elif sig != signal.SIGKILL and "interrupted by" in output:
            if f"during step {step} (run sig)" not in output or "--run-id sig" not in output:
                failures.append(f"{where}: the message does not name the step and the rerun:\n{output[-500:]}")
        stray = stray_files(store)
        if sig == signal.SIGKILL:
            committing = commits_in_progress(store)
            stray = [k for k in stray if not any(k.startswith(folder + "/") for folder in committing)]
        elif set(store.list(STAGING)) - staged_before:
            failures.append(f"{where}: staging left behind: {sorted(set(store.list(STAGING)) - staged_before)}")
        if stray:
            failures.append(f"{where}: files outside a committed artifact: {stray}")
        code, _ = run_step(config, step, "sig", log)
        if code != 0:
            failures.append(f"{where}: the rerun failed with exit {code}\n{log.read_text()[-2000:]}")
            continue
        got = file_hashes(store, "sig", step)
        changed = [name for name, digest in expected[step].items() if got.get(name) != digest]
        if changed:
            failures.append(f"{where}: after the rerun these files differ from an uninterrupted run: {changed}")
    assert len(plan) == TRIALS_PER_SIGNAL * len(SIGNALS)
    return failures


def test_signals_at_random_moments_on_file_store(tmp_path: Path) -> None:
    root = f"file://{tmp_path / 'store'}"
    config = write_config(tmp_path, {"root": root})
    failures = signal_loop(config, FileStore(root), tmp_path)
    assert failures == [], "\n".join(failures)


@pytest.mark.s3
def test_signals_at_random_moments_on_seaweedfs(s3_server: Any, tmp_path: Path) -> None:
    store_cfg = s3_server.store_config(s3_server.new_bucket(), prefix="recloop")
    store = {
        **json.loads(store_cfg.model_dump_json()),
        "access_key_id": s3_server.access_key,
        "secret_access_key": s3_server.secret_key,
    }
    config = write_config(tmp_path, store)
    failures = signal_loop(config, S3Store(store_cfg), tmp_path)
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_command_ended_still_exits_with_its_code(
    sig: signal.Signals, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The window between the command's end and the console script dropping its handlers: the signal's
    # exit code and one line, never a traceback (found by the loop above: exit 70 from the harness).
    real_main = cli.main

    def main_then_signal(argv: list[str] | None = None, restore_signals: bool = True) -> int:
        code = real_main(["config", "schema"], restore_signals=restore_signals)
        signal.raise_signal(sig)
        return code

    restore = cli.interrupts.saved_handlers()
    # As a fresh process has them (an earlier test in this process may have left SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(cli, "main", main_then_signal)
    try:
        with pytest.raises(SystemExit) as exc:
            cli.entry()
    finally:
        restore()
    assert exc.value.code == 128 + sig
    assert (
        capsys.readouterr().err
        == f"interrupted by {sig.name} during the command; nothing it had not committed was kept\n"
    )
