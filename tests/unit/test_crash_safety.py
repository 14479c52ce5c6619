"""A writer SIGKILLed mid-upload never exposes a half artifact, and a re-run with the same run id completes.

A child process runs a step that uploads a large multi-file artifact to S3 (SeaweedFS, multipart
uploads). It is killed while a file is in flight. A reader thread polls the prefix the whole time and,
whenever a manifest is visible, verifies every file it lists. The step is then re-run to completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from recloop.artifacts import MANIFEST, Artifact
from recloop.errors import ArtifactError
from recloop.store import S3Store
from support.s3 import S3Server

FILES = 5
FILE_MB = 11  # above the 5 MiB multipart threshold configured below: two parts each
KILL_DURING_FILE = 2  # killed while uploading this file (0-based)

CHILD = textwrap.dedent('''
    """Run the `bulk` step (defined here) once; print progress lines the test synchronises on."""
    import json
    import os
    import sys
    from pathlib import Path

    from recloop import config as config_mod
    from recloop.artifacts.kinds import ArtifactKind
    from recloop.steps.base import StepContext, run_step
    from recloop.steps.graph import Step

    BULK = Step("bulk", "__main__", "test step: uploads large files", output=ArtifactKind)
    PARAMS = json.loads(Path(sys.argv[1]).read_text())


    def run(ctx, inputs, output):
        with ctx.writer(output) as writer:
            for i in range(PARAMS["files"]):
                name = f"part-{i:03d}.bin"
                path = writer.local(name)
                path.write_bytes(os.urandom(PARAMS["file_mb"] << 20))
                print(f"uploading {i}", flush=True)
                writer.add_file(name, path)
                print(f"uploaded {i}", flush=True)
            writer.summary["files"] = PARAMS["files"]
        return writer.manifest


    if __name__ == "__main__":
        cfg = config_mod.from_dict(PARAMS["config"])
        ctx = StepContext.from_config(cfg, PARAMS["run_id"], log=lambda message: print(message, flush=True))
        manifest = run_step(BULK, ctx)
        print("committed", manifest.uri, flush=True)
''')


class PollingReader(threading.Thread):
    """Polls the artifact prefix; whenever a manifest is visible, every file it lists must verify."""

    def __init__(self, store: S3Store, prefix: str):
        super().__init__(daemon=True)
        self.store = store
        self.prefix = prefix
        self.stop = threading.Event()
        self.polls = 0
        self.partial_states = 0  # polls that saw uploaded files but no manifest
        self.verified: set[str] = set()  # manifest etags whose every file checked out
        self.violations: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.polls += 1
            try:
                keys = self.store.list(self.prefix)
                info = self.store.stat(f"{self.prefix}/{MANIFEST}")
                if info is None:
                    if keys:
                        self.partial_states += 1
                elif info.etag not in self.verified:
                    self._verify(info.etag)
            except Exception as exc:  # noqa: BLE001 (any failure to read is a finding)
                self.violations.append(f"poll {self.polls}: {type(exc).__name__}: {exc}")
            time.sleep(0.02)

    def _verify(self, etag: str) -> None:
        try:
            art = Artifact.open(self.store, self.prefix)
        except ArtifactError as exc:
            if "has no _MANIFEST.json" in str(exc):
                return  # uncommitted between the stat and the read: not visible, not a violation
            raise
        for name in art.manifest.files:
            with art.path(name):  # downloads and checks sha256 against the manifest
                pass
        self.verified.add(etag)


def _read_until(stream: IO[str], marker: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.strip() == marker:
            return lines
    raise AssertionError(f"child never printed {marker!r}; got: {lines}")


@pytest.mark.s3
@pytest.mark.slow
def test_killed_writer_never_exposes_a_half_artifact(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store_cfg = s3_server.store_config(bucket, prefix="crash", multipart_threshold_mb=5)
    store = S3Store(store_cfg)
    config: dict[str, Any] = {
        "name": "crash-test",
        "store": {
            **store_cfg.model_dump(mode="json"),
            "access_key_id": s3_server.access_key,
            "secret_access_key": s3_server.secret_key,
        },
        "data": {"interactions": {"path": "/nonexistent/events.csv"}},
    }
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"config": config, "run_id": "crash-run", "files": FILES, "file_mb": FILE_MB}))
    script = tmp_path / "bulk_child.py"
    script.write_text(CHILD)
    prefix = "runs/crash-run/bulk"
    cmd = [sys.executable, str(script), str(params)]

    reader = PollingReader(store, prefix)
    reader.start()
    try:
        # 1. Kill the writer while file KILL_DURING_FILE is being uploaded (a multipart upload in flight).
        child = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        assert child.stdout is not None
        _read_until(child.stdout, f"uploading {KILL_DURING_FILE}", timeout_s=120)
        time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert store.list(prefix) == []  # killed mid-artifact: nothing reached the folder ...
        staged = store.list(f"_staging/{prefix}")
        assert 0 < len(staged) < FILES, staged  # ... some files were staged, not all, no manifest
        assert not Artifact.exists(store, prefix)
        with pytest.raises(ArtifactError, match="has no _MANIFEST.json"):
            Artifact.open(store, prefix)

        # 2. Re-run the same step with the same run id: it completes.
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"committed {store.uri(prefix)}" in rerun.stdout

        deadline = time.monotonic() + 60
        while not reader.verified and time.monotonic() < deadline and not reader.violations:
            time.sleep(0.05)
    finally:
        reader.stop.set()
        reader.join(timeout=60)

    assert reader.violations == []
    assert len(reader.verified) == 1  # saw the committed artifact and verified all of it
    assert reader.partial_states > 0  # ... and saw the uncommitted states in between

    art = Artifact.open(store, prefix)
    names = sorted(art.manifest.files)
    assert names == [f"part-{i:03d}.bin" for i in range(FILES)]
    assert art.manifest.summary == {"files": FILES}
    for name in names:
        assert art.manifest.files[name].size == FILE_MB << 20
        with art.path(name):
            pass
    # No leftovers from the killed attempt: exactly the manifest's files are stored.
    assert store.list(prefix) == sorted([f"{prefix}/{MANIFEST}"] + [f"{prefix}/{n}" for n in names])

    # 3. A third run reuses the committed artifact (idempotent) instead of rewriting it.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "uploading" not in again.stdout
    assert f"bulk: reusing committed artifact {store.uri(prefix)}" in again.stdout
    assert Artifact.open(store, prefix).manifest.created_at == art.manifest.created_at
