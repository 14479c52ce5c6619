"""Model registry: `@register(EaseConfig)` ties a model config class (and its `type:`) to a Recommender class.

The model `type` is read from the config class's `type` Literal, so it is written once. Built-in config
classes live in `recloop.config.models` (they type `PipelineConfig.models`); loading the built-ins checks
that each of them has exactly one Recommender. Built-in model modules are imported lazily by `get()` /
`available()`, so importing the registry is cheap. Model modules must keep heavy imports (torch,
transformers) inside functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from recloop.config.models import MODEL_CONFIG_TYPES, ModelConfig, model_type_name

if TYPE_CHECKING:
    from recloop.models.base import Recommender

# Modules that register built-in models; a missing one is a packaging bug, so import errors propagate.
BUILTIN_MODULES: tuple[str, ...] = (
    "recloop.models.popularity",
    "recloop.models.itemknn",
    "recloop.models.ease",
    "recloop.models.mf",
    "recloop.models.text_knn",
    "recloop.models.sasrec",
    "recloop.models.llm_rerank",
    "recloop.models.blend",
    "recloop.models.ranker",
)

_REGISTRY: dict[str, tuple[type[Recommender], type[ModelConfig]]] = {}
_loaded = False


def register(config_cls: type[ModelConfig]):
    """Class decorator registering a Recommender for the model `type` its config class accepts."""
    type_name = model_type_name(config_cls)
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(
            f'{config_cls.__qualname__} needs a model type: declare `type: Literal["name"] = "name"` on it'
        )

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
    _check_builtins()
    _loaded = True


def _check_builtins() -> None:
    """Every model type a config file may name has a Recommender registered with that same config class."""
    for config_cls in MODEL_CONFIG_TYPES:
        type_name = model_type_name(config_cls)
        registered = _REGISTRY.get(type_name)
        if registered is None or registered[1] is not config_cls:
            got = "nothing" if registered is None else f"{registered[0].__qualname__} with {registered[1].__qualname__}"
            raise RuntimeError(
                f"model type {type_name!r} ({config_cls.__qualname__} in recloop.config.models) "
                f"has no Recommender registered for it (got {got}); decorate the model class "
                f"with @register({config_cls.__qualname__}) in a module of BUILTIN_MODULES"
            )


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(type_name: str) -> type[Recommender]:
    _load_builtins()
    try:
        return _REGISTRY[type_name][0]
    except KeyError:
        raise KeyError(f"unknown model type {type_name!r}; available: {', '.join(available())}") from None
