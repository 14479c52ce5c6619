"""Model registry: `@register("ease", EaseConfig)` ties a config `type:` to a Recommender class.

Built-in model modules are imported lazily by `model_config_types()` / `get()`, so importing the registry
is cheap. Model modules must keep heavy imports (torch, transformers) inside functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recloop.models.base import ModelConfig, Recommender

# Modules that register built-in models; a missing one is a packaging bug, so import errors propagate.
BUILTIN_MODULES: tuple[str, ...] = (
    "recloop.models.popularity",
    "recloop.models.itemknn",
    "recloop.models.ease",
    "recloop.models.mf",
    "recloop.models.text_knn",
    "recloop.models.sasrec",
    "recloop.models.llm_rerank",
)

_REGISTRY: dict[str, tuple[type[Recommender], type[ModelConfig]]] = {}
_loaded = False


def register(type_name: str, config_cls: type[ModelConfig]):
    """Class decorator registering a Recommender under `type_name` with its pydantic config."""

    def deco(cls: type[Recommender]) -> type[Recommender]:
        existing = _REGISTRY.get(type_name)
        if existing is not None and existing[0] is not cls:
            if existing[0].__qualname__ != cls.__qualname__ or existing[0].__module__ != cls.__module__:
                raise ValueError(f"model type {type_name!r} is registered twice ({existing[0]} and {cls})")
        cls.type_name = type_name
        cls.config_cls = config_cls
        _REGISTRY[type_name] = (cls, config_cls)
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A built-in whose module is not written yet is skipped; anything else is a real error.
            if exc.name != module:
                raise
    _loaded = True


def model_config_types() -> list[type[ModelConfig]]:
    _load_builtins()
    return [cfg for _, cfg in _REGISTRY.values()]


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(type_name: str) -> type[Recommender]:
    _load_builtins()
    try:
        return _REGISTRY[type_name][0]
    except KeyError:
        raise KeyError(f"unknown model type {type_name!r}; available: {', '.join(available())}") from None
