"""`python -m recloop_dev` (make up / down): finding the checkout it serves, without starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recloop_dev.local_stack import find_repo, main
from support.paths import REPO


def _checkout(root: Path) -> Path:
    (root / "dags").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_repo_is_found_from_any_folder_inside_the_checkout(tmp_path: Path) -> None:
    repo = _checkout(tmp_path / "repo")
    (repo / "configs" / "deep").mkdir(parents=True)
    assert find_repo(repo / "configs" / "deep") == repo
    assert find_repo(repo) == repo
    assert find_repo(REPO / "components" / "recloop_dev") == REPO


def test_outside_a_checkout_the_error_says_to_pass_repo(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")  # a project, but not one with DAGs
    with pytest.raises(SystemExit, match=r"no recloop checkout at or above .*pass --repo PATH"):
        find_repo(tmp_path)


def test_status_uses_the_state_folder_of_the_given_repo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _checkout(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)  # outside the checkout: --repo alone decides
    assert main(["status", "--repo", str(repo)]) == 1
    assert "not running" in capsys.readouterr().out
    monkeypatch.chdir(repo / "dags")  # inside it: found from the current directory
    assert main(["down"]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no dags/ folder"):
        main(["status", "--repo", str(tmp_path)])


def test_module_entry_point_runs(tmp_path: Path) -> None:
    repo = _checkout(tmp_path / "repo")
    done = subprocess.run(
        [sys.executable, "-m", "recloop_dev", "status", "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "components")},
    )
    assert done.returncode == 1, done.stderr
    assert "not running (`make up` starts it)" in done.stdout
