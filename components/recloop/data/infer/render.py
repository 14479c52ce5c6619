"""Commented YAML: every key on its own line with a `# why` comment, model entries in flow style.

The tree is built of `Setting`s (a key, its value or child settings, and the comment) and `ModelEntry`s
(a typed model config and the comment above it); `render` turns it into text that `recloop.config.load`
reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import yaml

from recloop.config.models import ModelConfig

Scalar = Union[str, int, float, bool, None]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class ModelEntry:
    """One `models:` entry: only the parameters set when the config was built are written."""

    config: ModelConfig
    comment: str


@dataclass(frozen=True)
class Setting:
    key: str
    value: Scalar | list[Scalar] | tuple[Setting, ...] | tuple[ModelEntry, ...]
    comment: str


@dataclass(frozen=True)
class Budget:
    """A `--budget` for tuning: as written (`1h30m`), and in seconds or trials per candidate."""

    text: str
    seconds: float | None
    trials: int | None = None


def render(header: Sequence[str], settings: Sequence[Setting], budget: Budget | None) -> str:
    lines = [f"# {line}".rstrip() for line in header]
    for setting in settings:
        lines += _lines(setting, 0)
    lines += tuning_section(budget)
    return "\n".join(lines) + "\n"


def tuning_section(budget: Budget | None) -> list[str]:
    """The one place `recloop init` writes the `tuning:` section."""
    if budget is None:
        return []
    what = (
        f"{budget.trials} trials per candidate"
        if budget.trials is not None
        else f"{budget.seconds:,.0f} s of wall time for the whole tune step, split by model cost"
    )
    return [
        f"tuning: {{budget: {budget.text}}}  # --budget: hyper-parameter search on validation NDCG@10, {what}"
        " (docs/tuning.md)"
    ]


def _lines(setting: Setting, depth: int) -> list[str]:
    pad = "  " * depth
    key = _flow(setting.key)
    value = setting.value
    if isinstance(value, tuple) and value and isinstance(value[0], ModelEntry):
        out = [f"{pad}{key}:  # {setting.comment}"]
        for entry in value:
            assert isinstance(entry, ModelEntry)
            out += [f"{pad}  # {entry.comment}", f"{pad}  - {_flow(entry_fields(entry.config))}"]
        return out
    if isinstance(value, tuple):
        out = [f"{pad}{key}:" + (f"  # {setting.comment}" if setting.comment else "")]
        for child in value:
            assert isinstance(child, Setting)
            out += _lines(child, depth + 1)
        return out
    return [f"{pad}{key}: {_flow(value)}  # {setting.comment}"]


def entry_fields(config: ModelConfig) -> dict[str, object]:
    """`type` and the parameters explicitly set, under their YAML names (EASE's `lambda`)."""
    fields = config.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"type"})
    return {"type": config.type, **fields}


def _flow(value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()
