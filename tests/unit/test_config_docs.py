"""The config package: described field by field, documented from those descriptions, at the bottom layer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import Field

from recloop.cli import main
from recloop.config import StrictModel, docs
from recloop.config.models import MODEL_CONFIG_TYPES, ChatEndpoint, EncoderConfig, ModelConfig, model_type_name
from recloop.models import registry
from support.helpers import restored_model_registry
from support.paths import REPO


def test_every_config_field_has_a_description() -> None:
    missing = docs.missing_descriptions()
    assert not missing, (
        f"{len(missing)} config field(s) have no description; add `description=` to their Field (it feeds "
        f"docs/config.md, docs/models.md and the JSON schema): {', '.join(missing)}"
    )


def test_the_description_check_walks_nested_lists_maps_and_unions() -> None:
    class Leaf(StrictModel):
        described: int = Field(0, description="Has one.")
        bare: int = 0

    class Other(StrictModel):
        hidden: str = "x"

    class Root(StrictModel):
        leaves: list[Leaf] = Field(default_factory=list, description="A list of leaves.")
        by_name: dict[str, Other] | None = Field(None, description="A map of others.")
        either: Annotated[Union[Leaf, Other], Field(union_mode="left_to_right")] = Field(  # noqa: UP007
            Leaf(), description="One or the other."
        )
        plain: bool = True

    assert [m.rsplit("<locals>.", 1)[-1] for m in docs.missing_descriptions(Root)] == [
        "Root.plain",
        "Leaf.bare",
        "Other.hidden",
    ]
    assert [path for path, _ in docs.sections(Root)] == ["", "leaves[]", "by_name.*", "either (Leaf)", "either (Other)"]


def test_the_walk_reaches_every_model_config_and_nested_section() -> None:
    found = docs.config_models()
    for cls in (*MODEL_CONFIG_TYPES, EncoderConfig, ChatEndpoint):
        assert cls in found, cls
    paths = [path for path, _ in docs.sections()]
    assert {
        "models[type=ease]",
        "models[type=text_sasrec].encoder",
        "execution.kubernetes.tolerations[]",
        "execution.steps.*.tolerations[]",
        "serving.logs",
        "policy.gate",
    } <= set(paths)


def test_committed_docs_equal_the_generated_ones() -> None:
    stale = docs.stale_docs(REPO)
    assert not stale, (
        f"{', '.join(str(p.relative_to(REPO)) for p in stale)} differ from what the config classes "
        f"give; run `{docs.REGENERATE}` (or `make docs`) and commit the result"
    )


def test_config_reference_lists_every_section_field_with_type_default_and_description() -> None:
    text = docs.render_config_reference()
    assert "| `max_attempts` | int | `5` | Attempts per operation, the first included. |" in text
    assert "| `future_tolerance` | duration | `86400s` | Allowed clock skew into the future. |" in text
    assert '| `on_failure` | "fail" \\| "quarantine" \\| "warn" | `"fail"` |' in text
    assert "## `execution.kubernetes.tolerations[]`" in text and "`execution.steps.*.tolerations[]`" in text
    # A class met at several paths is documented once, naming the other places.
    assert text.count("## `execution.resources`") == 1 and "## `execution.steps.*.resources`" not in text
    assert "also under `execution.steps.*.resources`" in text
    # Model parameters live in models.md.
    assert "## `models[type=ease]`" not in text


def test_models_doc_tables_use_yaml_keys_and_keep_the_prose(tmp_path: Path) -> None:
    tables = docs.model_tables()
    assert set(tables) >= {model_type_name(cls) for cls in MODEL_CONFIG_TYPES}
    assert "| `lambda` | float | `200.0` |" in tables["ease"]  # the alias, as written in YAML
    assert "`use_id_embedding`" in tables["text_sasrec"] and "`max_len`" not in tables["text_sasrec"]
    assert "`max_len`" in tables["sasrec"] and "`seed`" not in tables["sasrec"]
    text = "Intro prose.\n" + "".join(
        f"\n## {name}\nHand-written.\n<!-- BEGIN GENERATED: {name} -->\nold table\n<!-- END GENERATED -->\nAfter.\n"
        for name in tables
    )
    rendered = docs.render_models_doc(text)
    assert "old table" not in rendered and rendered.count("Hand-written.") == len(tables)
    assert rendered.startswith("Intro prose.\n") and rendered.count("After.") == len(tables)
    assert tables["mf"] in rendered
    assert docs.render_models_doc(rendered) == rendered


def test_models_doc_errors_name_the_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(docs.DocsError, match="unknown generated block 'nope'"):
        docs.render_models_doc("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED -->\n")
    with pytest.raises(docs.DocsError, match="no generated block for .*ease"):
        docs.render_models_doc("no markers at all\n")
    # Through the CLI: one line saying what to add, exit 1, no traceback.
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    (tmp_path / "docs" / "models.md").write_text("no markers at all\n")
    assert main(["config", "docs", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no generated block for" in err and "Traceback" not in err
    assert main(["config", "docs", "--root", str(tmp_path / "elsewhere")]) == 1
    assert "elsewhere/docs/models.md does not exist" in capsys.readouterr().err
    with pytest.raises(docs.DocsError, match="block 'ease' has no"):
        docs.render_models_doc("<!-- BEGIN GENERATED: ease -->\n| half a table\n")


def test_cli_checks_and_rewrites_the_docs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    assert main(["config", "docs", "--root", str(tmp_path)]) == 0
    models = tmp_path / "docs" / "models.md"
    models.write_text(models.read_text().replace("| `factors` | int | `64` |", "| `factors` | int | `32` |"))
    (tmp_path / "docs" / "config.md").unlink()
    capsys.readouterr()
    assert main(["config", "docs", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "config.md" in err and "models.md" in err and "recloop config docs --write" in err
    assert main(["config", "docs", "--root", str(tmp_path), "--write"]) == 0
    assert models.read_text() == (REPO / "docs" / "models.md").read_text()
    assert (tmp_path / "docs" / "config.md").read_text() == (REPO / "docs" / "config.md").read_text()


def test_config_is_the_bottom_layer() -> None:
    # Validating a whole config, model entries included, imports no model, evaluation or other layer code.
    code = (
        "import sys\n"
        "from recloop import config\n"
        "cfg = config.from_dict({'name': 'x', 'data': {'interactions': {'path': '/tmp/e.csv'}},\n"
        "    'models': [{'type': 'ease', 'lambda': 5}, {'type': 'llm_rerank', 'base': {'type': 'mf'},\n"
        "               'endpoint': {'url': 'http://x/v1', 'model': 'm'}}]})\n"
        "assert cfg.models[0].l2 == 5 and cfg.models[1].base_config().type == 'mf'\n"
        "print(sorted(m for m in sys.modules if m.startswith('recloop.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # noqa: S307 (our own printed list)
    assert loaded and all(m.startswith("recloop.config") or m == "recloop.errors" for m in loaded), loaded


def test_registry_and_config_union_agree() -> None:
    for cls in MODEL_CONFIG_TYPES:
        model = registry.get(model_type_name(cls))
        assert model.config_cls is cls and model.type_name == model_type_name(cls)
    # Every built-in model is one a config file can name (test modules may register throw-away types).
    builtin = [t for t in registry.available() if registry.get(t).__module__.startswith("recloop.")]
    assert builtin == sorted(model_type_name(cls) for cls in MODEL_CONFIG_TYPES)


def test_register_reads_the_type_from_the_config_class() -> None:
    class UntypedConfig(ModelConfig):
        pass

    with pytest.raises(ValueError, match=r"UntypedConfig needs a model type: declare `type: Literal"):
        registry.register(UntypedConfig)

    class ProbeConfig(ModelConfig):
        type: Literal["probe_model"] = Field("probe_model", description="Test-only model type.")

    with restored_model_registry():
        cls = registry.register(ProbeConfig)(type("Probe", (registry.get("popularity"),), {}))
        assert registry.get("probe_model") is cls and cls.type_name == "probe_model"
