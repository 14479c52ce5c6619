"""Reference docs rendered from the config classes, so field descriptions are written once, in code.

`render_config_reference()` is `docs/config.md`: every section reachable from `PipelineConfig`, each field
with its YAML key, type, default and description. `render_models_doc(text)` refreshes the parameter tables
of `docs/models.md` between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED -->` markers and
keeps the hand-written prose around them. `recloop config docs --write` (or `make docs`) rewrites both.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Collection, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from recloop.config.base import format_duration
from recloop.config.models import (
    MODEL_CONFIG_TYPES,
    ChatEndpoint,
    EncoderConfig,
    ModelConfig,
    SASRecConfig,
    TextSASRecConfig,
    model_type_name,
)
from recloop.config.pipeline import PipelineConfig
from recloop.config.search import describe_range
from recloop.errors import RecloopError

CONFIG_DOC = Path("docs/config.md")
MODELS_DOC = Path("docs/models.md")
TUNING_DOC = Path("docs/tuning.md")
REGENERATE = "recloop config docs --write"  # what `make docs` runs

_BEGIN_RE = re.compile(r"<!-- BEGIN GENERATED: ([a-z0-9_.]+) -->\n")
_END = "<!-- END GENERATED -->"


class DocsError(RecloopError):
    """A docs file lacks the markers its generated blocks go between."""


# ---------------------------------------------------------------------------------------------- walking


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Pydantic model classes inside a field annotation (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def sections(root: type[BaseModel] = PipelineConfig, path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """(YAML path, model class) for `root` and every config model reachable from it, depth first.

    List entries get `[]` (`models[]`), dict values `.*`; the model union under `models[]` yields one
    entry per model config, as `models[type=ease]`."""
    yield path, root
    for name, field in root.model_fields.items():
        key = field.alias or name
        here = f"{path}.{key}" if path else key
        here += _container_suffix(field.annotation)
        found = list(dict.fromkeys(_models_in(field.annotation)))
        for cls in found:
            if issubclass(cls, ModelConfig):
                sub = f"{here.removesuffix('[]')}[type={model_type_name(cls)}]"
            else:  # one of several section shapes (e.g. a search range): the heading names which
                sub = f"{here} ({cls.__name__})" if len(found) > 1 else here
            yield from sections(cls, sub)


def _container_suffix(annotation: Any) -> str:
    """`[]` per list level and `.*` per dict level around the sections a field holds."""
    origin = _container(annotation)
    if origin is None:
        return ""
    inner = get_args(_non_null(_strip(annotation)))[-1]
    return ("[]" if origin is list else ".*") + _container_suffix(inner)


def _non_null(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return annotation


def config_models(root: type[BaseModel] = PipelineConfig) -> list[type[BaseModel]]:
    """Every config class reachable from `root`, each once."""
    return list(dict.fromkeys(cls for _, cls in sections(root)))


def missing_descriptions(root: type[BaseModel] = PipelineConfig) -> list[str]:
    """`Class.field` for every field without a description, in every config class reachable from `root`."""
    return [
        f"{cls.__qualname__}.{name}"
        for cls in config_models(root)
        for name, field in cls.model_fields.items()
        if not (field.description or "").strip()
    ]


def _container(annotation: Any) -> Any:
    """`list` or `dict` when the field holds one (also when it may be null), else None."""
    annotation = _strip(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = {_container(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    origin = get_origin(annotation)
    return origin if origin in (list, dict) else None


# ---------------------------------------------------------------------------------------------- formatting


def _strip(annotation: Any) -> Any:
    """The annotation without `Annotated[...]` metadata."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def format_type(annotation: Any) -> str:
    """A short, YAML-minded name of a field's type: `int`, `duration`, `"a" | "b"`, `list of str`."""
    annotation = _strip(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        if all(isinstance(a, type) and issubclass(a, ModelConfig) for a in args):
            return "model entry (by `type`)"
        if len([a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]) > 1:
            parts = [
                a.__name__ if isinstance(a, type) and issubclass(a, BaseModel) else format_type(a)
                for a in args
                if a is not type(None)
            ]
        else:
            parts = [format_type(a) for a in args if a is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    if origin is list:
        return f"list of {format_type(get_args(annotation)[0])}"
    if origin is tuple:
        return "[" + ", ".join(format_type(a) for a in get_args(annotation)) + "]"
    if origin is dict:
        key, value = get_args(annotation)
        return f"map {format_type(key)} → {format_type(value)}"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        if issubclass(annotation, SecretStr):
            return "secret"
        if issubclass(annotation, datetime):
            return "datetime"
        if issubclass(annotation, timedelta):
            return "duration"
        return annotation.__name__
    return "any" if annotation is Any else str(annotation).replace("typing.", "")


def format_default(field: FieldInfo) -> str:
    """The default as it would be written in YAML; `required` when there is none."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, timedelta):
        return f"`{format_duration(value)}`"
    if value is None:
        return "`null`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def field_table(cls: type[BaseModel], exclude: Collection[str] = frozenset()) -> str:
    """Markdown table of a config class's fields: key, type, default, description."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        if name in exclude:
            continue
        key = field.alias or name
        rows.append(
            f"| `{key}` | {_cell(format_type(field.annotation))} | {_cell(format_default(field))} "
            f"| {_cell(field.description or '')} |"
        )
    return "\n".join(rows) + "\n"


def _doc(cls: type[BaseModel]) -> str:
    return " ".join((cls.__dict__.get("__doc__") or "").split())  # the class's own docstring, not inherited


# ---------------------------------------------------------------------------------------------- pages


def render_config_reference() -> str:
    """docs/config.md: every config section and field, generated from the config classes."""
    out = [
        "# Config reference",
        "",
        f"<!-- Generated from components/recloop/config/ by `{REGENERATE}`; edit the field descriptions "
        "there, not this file. -->",
        "",
        "Every key a pipeline config file may hold, section by section. Durations are written like `30s`, "
        "`15m`, `12h`, `1d`, `2w`; `secret` fields may use `${ENV_VAR}`. Unknown keys are errors. The "
        "parameters of each `models:` entry are listed per model type in [models.md](models.md).",
        "",
    ]
    walk = [
        (path, cls)
        for path, cls in sections()
        if not (issubclass(cls, ModelConfig) or cls in (EncoderConfig, ChatEndpoint))
    ]  # those: models.md
    paths: dict[type[BaseModel], list[str]] = {}
    for path, cls in walk:
        paths.setdefault(cls, []).append(path)
    # A class met at several paths is documented once, under its most direct path, where that path comes.
    order = [path for path, _ in walk]
    primary = {
        cls: min(found, key=lambda p: (p.count("*") + p.count("[]"), order.index(p))) for cls, found in paths.items()
    }
    for cls in sorted(paths, key=lambda c: order.index(primary[c])):
        path, others = primary[cls], [p for p in paths[cls] if p != primary[cls]]
        out += [f"## `{path}`" if path else "## Top level", ""]
        if _doc(cls):
            out += [_doc(cls), ""]
        if others:
            out += ["The same keys also under " + ", ".join(f"`{p}`" for p in others) + ".", ""]
        out += [field_table(cls).rstrip("\n"), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def model_tables() -> dict[str, str]:
    """Generated blocks of docs/models.md by name: one per model type, plus `encoder` and `endpoint`."""
    common = set(ModelConfig.model_fields)
    blocks = {}
    for cls in MODEL_CONFIG_TYPES:
        inherited = set(SASRecConfig.model_fields) if cls is TextSASRecConfig else common
        blocks[model_type_name(cls)] = field_table(cls, exclude=inherited)
    blocks["common"] = field_table(ModelConfig, exclude={"type"})
    blocks["encoder"] = field_table(EncoderConfig)
    blocks["llm_rerank.endpoint"] = field_table(ChatEndpoint)
    return blocks


def search_space_tables() -> dict[str, str]:
    """Generated block of docs/tuning.md: every model type's default search space."""
    lines = ["| model type | cost | parameter | range |", "| --- | --- | --- | --- |"]
    for cls in MODEL_CONFIG_TYPES:
        space = cls.search_space or {}
        if not space:
            lines.append(f"| `{model_type_name(cls)}` | – | – | not tuned (no default space) |")
        for i, (param, spec) in enumerate(space.items()):
            name, cost = (f"`{model_type_name(cls)}`", f"{cls.tuning_cost:g}") if i == 0 else ("", "")
            lines.append(f"| {name} | {cost} | `{param}` | {describe_range(spec)} |")
    return {"default_spaces": "\n".join(lines) + "\n"}


def render_models_doc(text: str) -> str:
    """`text` (docs/models.md) with every generated block replaced by its current table."""
    return render_blocks(text, model_tables(), MODELS_DOC)


def render_blocks(text: str, blocks: dict[str, str], doc: str | Path) -> str:
    """`text` with every generated block replaced by its current content.

    Raises ValueError for an unknown block name, an unterminated block, or a block without a place."""
    out, pos, seen = [], 0, set()
    for match in _BEGIN_RE.finditer(text):
        if match.start() < pos:
            continue
        name = match.group(1)
        if name not in blocks:
            raise DocsError(f"{doc}: unknown generated block {name!r}; known: {', '.join(blocks)}")
        end = text.find(_END, match.end())
        if end < 0:
            raise DocsError(f"{doc}: block {name!r} has no `{_END}` line")
        out += [text[pos : match.end()], blocks[name]]
        pos = end
        seen.add(name)
    out.append(text[pos:])
    missing = [name for name in blocks if name not in seen]
    if missing:
        raise DocsError(
            f"{doc}: no generated block for {', '.join(missing)}; add "
            f"`<!-- BEGIN GENERATED: NAME -->` / `{_END}` lines where each table belongs"
        )
    return "".join(out)


def generated_docs(root: Path) -> dict[Path, str]:
    """Path (under the repository `root`) -> the content it should have."""
    models_text, tuning_text = (_hand_written(root / doc) for doc in (MODELS_DOC, TUNING_DOC))
    return {
        root / CONFIG_DOC: render_config_reference(),
        root / MODELS_DOC: render_models_doc(models_text),
        root / TUNING_DOC: render_blocks(tuning_text, search_space_tables(), TUNING_DOC),
    }


def _hand_written(path: Path) -> str:
    """A doc whose prose surrounds generated blocks; DocsError when it is not there."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DocsError(
            f"{path} does not exist: the generated tables go inside its prose; run from the repository root "
            "or pass --root"
        ) from None


def stale_docs(root: Path) -> dict[Path, str]:
    """Generated doc files whose committed content differs from what the config classes give -> that content."""
    return {
        path: text
        for path, text in generated_docs(root).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    }
