"""docs/architecture.md: its generated code map and steps table match the code and the import contracts."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from recloop_dev import code_map
from support.paths import REPO

CONTRACTS = """
[tool.importlinter]
root_packages = ["app", "app_dev"]

[[tool.importlinter.contracts]]
name = "layers"
type = "layers"
containers = ["app"]
layers = ["top", "web | jobs", "left : right", "core"]

[[tool.importlinter.contracts]]
name = "jobs apart from left"
type = "independence"
modules = ["app.jobs", "app.left"]

[[tool.importlinter.contracts]]
name = "no dev tools"
type = "forbidden"
source_modules = ["app"]
forbidden_modules = ["app_dev"]

[[tool.importlinter.contracts]]
name = "web framework"
type = "protected"
protected_modules = ["flask"]
allowed_importers = ["app.web"]
ignore_imports = ["app.core.x -> app.top"]  # a reason, in real life
"""


def test_committed_doc_equals_the_generated_one() -> None:
    assert code_map.stale(REPO) is None, (
        f"{code_map.DOC} differs from what the module docstrings, pyproject.toml's import contracts and the "
        f"step graph give; run `{code_map.REGENERATE}` (or `make docs`) and commit the result"
    )


def test_every_module_is_in_the_doc_and_every_package_in_the_layers() -> None:
    doc = (REPO / code_map.DOC).read_text()
    contracts = code_map.read_contracts(REPO / "pyproject.toml")
    for root in code_map.PACKAGE_ROOTS:
        for path in code_map.python_files(REPO / root):
            name = code_map.module_name(path, REPO / root)
            assert f"`{name}`" in doc, name
            if name.startswith("recloop."):
                assert code_map.top_level(name) in contracts.packages, name
    assert "`dags/recloop_pipelines.py`" in doc


def test_may_import_follows_layers_independence_and_forbidden_contracts(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(CONTRACTS)
    contracts = code_map.read_contracts(tmp_path / "pyproject.toml")
    assert contracts.container == "app" and contracts.others == ("app_dev",)
    assert contracts.packages == ["top", "web", "jobs", "left", "right", "core"]
    assert contracts.may_import("top") == ["web", "jobs", "left", "right", "core"]
    assert contracts.may_import("web") == ["left", "right", "core"]  # not jobs: `|` siblings are independent
    assert contracts.may_import("jobs") == ["right", "core"]  # not left: the independence contract
    assert contracts.may_import("left") == ["right", "core"]  # `:` siblings may import each other
    assert contracts.may_import("right") == ["left", "core"]
    assert contracts.may_import("core") == []
    assert ("core", "app_dev") in contracts.barred
    assert contracts.externals == {"web": ("flask",)}
    assert contracts.excused == ("app.core.x -> app.top",)


def test_the_code_map_names_modules_by_their_first_sentence_and_lists_excused_imports(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(CONTRACTS)
    files = {
        "components/app/__init__.py": '"""The app. More."""',
        "components/app/top.py": '"""Top: the entry point. It calls web."""',
        "components/app/web/__init__.py": '"""The web layer: routes | handlers.\n\nDetails."""',
        "components/app/web/routes.py": '"""Routes, e.g. `/items`. Second sentence."""',
        "components/app/jobs.py": '"""Jobs."""',
        "components/app/left.py": '"""Left."""',
        "components/app/right.py": '"""Right."""',
        "components/app/core.py": '"""Core."""',
        "components/app_dev/__init__.py": '"""Dev tools."""',
        "dags/pipelines.py": '"""The DAGs."""',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    roots = ("components/app", "components/app_dev")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(code_map, "PACKAGE_ROOTS", roots)
        text = code_map.render_code_map(tmp_path)
    assert "| `app` | The app. |" in text
    assert "| 2 | `app.web` | `left`, `right`, `core`; the only package that may import `flask` |" in text
    assert "| 3 | `app.left` | `right`, `core` |" in text
    assert "| 4 | `app.core` | nothing |" in text
    assert "### `app.web` (layer 2)\n\nThe web layer: routes \\| handlers." in text
    assert "| `app.web.routes` | Routes, e.g. `/items`. |" in text
    assert "### `app.top` (layer 1)\n\nTop: the entry point.\n" in text
    assert "except in layer 3, whose packages may import each other" in text
    assert "`app_dev` may import any part of `app`; nothing in `app` may import `app_dev`." in text
    assert "| `app_dev` | Dev tools. |" in text and "| `dags/pipelines.py` | The DAGs. |" in text
    assert "- `app.core.x -> app.top`" in text


def test_a_module_without_docstring_or_a_package_without_a_layer_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(CONTRACTS)
    package = tmp_path / "components" / "app"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""The app."""\n')
    (package / "extra.py").write_text("x = 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(code_map, "PACKAGE_ROOTS", ("components/app",))
        with pytest.raises(ValueError, match=r"extra\.py has no docstring; say in its first sentence what"):
            code_map.render_code_map(tmp_path)
        (package / "extra.py").write_text('"""Extra."""\n')
        with pytest.raises(ValueError, match="layers contract does not place extra; add each to the layer"):
            code_map.render_code_map(tmp_path)


def test_check_and_write_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("components/recloop", "components/recloop_dev", "dags"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    doc = tmp_path / code_map.DOC
    doc.parent.mkdir()
    doc.write_text(
        textwrap.dedent("""\
        # Architecture
        <!-- BEGIN GENERATED: steps -->
        <!-- END GENERATED -->
        Between.
        <!-- BEGIN GENERATED: code map -->
        stale
        <!-- END GENERATED -->
        After.
        """)
    )
    assert code_map.main(["--repo", str(tmp_path)]) == 1
    assert "out of date: run `python -m recloop_dev.code_map --write`" in capsys.readouterr().err
    assert code_map.main(["--repo", str(tmp_path), "--write"]) == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("# Architecture\n") and text.endswith("After.\n")
    assert "| training | `train` (one per candidate) |" in text and "### `recloop.steps` (layer 7)" in text
    assert code_map.main(["--repo", str(tmp_path)]) == 0
