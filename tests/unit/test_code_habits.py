"""Code habits CI enforces: ruff lint and format, mypy, and the import contracts of pyproject.toml.

Each check runs the tool as `make lint` does and fails with the tool's own output. The import contracts
(layers, independence, forbidden, protected) are described in docs/architecture.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO

COMPONENTS = REPO / "components"
LINTED = ("components", "tests", "dags", "bench")  # the Makefile's `lint` target checks the same folders
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path = REPO, components: Path = COMPONENTS) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(components), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=540)


def _lint_imports(cwd: Path = REPO, components: Path = COMPONENTS) -> subprocess.CompletedProcess[str]:
    return _run([str(BIN / "lint-imports"), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd, components)


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_import_contracts_hold() -> None:
    done = _lint_imports()
    assert done.returncode == 0, (
        "an import breaks the contracts in pyproject.toml [tool.importlinter]; move the imported code to the "
        f"layer that may be imported (docs/architecture.md), do not loosen the contract:\n{_output(done)}"
    )


def test_wrong_way_imports_break_the_contracts(tmp_path: Path) -> None:
    components = tmp_path / "components"
    for package in ("recloop", "recloop_dev"):
        shutil.copytree(COMPONENTS / package, components / package, ignore=shutil.ignore_patterns("__pycache__"))

    def add_import(module: str, line: str) -> None:
        path = components / module
        path.write_text(path.read_text() + f"\n{line}\n")

    add_import("recloop/models/popularity.py", "from recloop.evaluation import gate")  # upward
    add_import("recloop/feedback/users.py", "from recloop.policy import features")  # across independent packages
    add_import("recloop/errors.py", "import recloop_dev")  # runtime -> developer tools
    add_import("recloop/steps/ingest.py", "import airflow")  # Airflow outside orchestration

    done = _lint_imports(cwd=tmp_path, components=components)
    out = done.stdout
    assert done.returncode == 1 and "Contracts: 0 kept, 4 broken." in out, _output(done)
    assert "recloop.models is not allowed to import recloop.evaluation" in out, out
    assert "recloop.feedback is not allowed to import recloop.policy" in out, out
    assert "recloop.errors -> recloop_dev" in out, out
    assert "recloop.steps.ingest -> airflow" in out, out


def test_ruff_lint_passes() -> None:
    done = _run([sys.executable, "-m", "ruff", "check", *LINTED])
    assert done.returncode == 0, f"`ruff check --fix` repairs most of these:\n{_output(done)}"


def test_ruff_format_is_applied() -> None:
    done = _run([sys.executable, "-m", "ruff", "format", "--check", *LINTED])
    assert done.returncode == 0, f"run `ruff format {' '.join(LINTED)}`:\n{_output(done)}"


@pytest.mark.slow
def test_mypy_passes() -> None:
    done = _run([sys.executable, "-m", "mypy"])  # packages and settings: pyproject.toml [tool.mypy]
    assert done.returncode == 0, _output(done)
