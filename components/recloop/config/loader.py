"""Reading config files: `extends:` layering, `--set` overrides, `${ENV}` secrets, then validation.

Layering (lowest to highest): built-in defaults, the files named by `extends:` (deep-merged, recursively),
the file itself, then `--set a.b=value` overrides. `${ENV_VAR}` is expanded only inside secret fields.
Relative paths inside `data` and `file://` store roots resolve against the directory of the file that
declares them, so a config means the same thing whatever the working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from recloop.config.base import format_validation_error
from recloop.config.pipeline import PipelineConfig
from recloop.errors import ConfigError

SECRET_KEYS = {"access_key_id", "secret_access_key", "api_key", "api_keys", "hmac_key", "token", "password"}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _interpolate(node: Any, path: str, env: dict[str, str], errors: list[str]) -> Any:
    """Expand ${VAR} in secret fields; anywhere else it is an error (config stays reviewable)."""
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}.{i}", env, errors) for i, v in enumerate(node)]
    if isinstance(node, str) and _ENV_RE.search(node):
        leaf = path.rsplit(".", 1)[-1]
        parent = path.rsplit(".", 2)[-2] if path.count(".") >= 1 else ""
        if leaf not in SECRET_KEYS and parent not in SECRET_KEYS:
            errors.append(
                f"{path}: ${{...}} interpolation is only allowed in secret fields "
                f"({', '.join(sorted(SECRET_KEYS))}); write the value itself (got {node!r})"
            )
            return node

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                errors.append(f"{path}: environment variable {name} is not set; export it or remove the reference")
                return ""
            return env[name]

        return _ENV_RE.sub(repl, node)
    return node


def _resolve_relative_paths(raw: dict, base_dir: Path) -> dict:
    """Make data paths and file:// store roots absolute against the declaring file's directory."""

    def fix(p: Any) -> Any:
        if not isinstance(p, str) or "://" in p or p.startswith("/"):
            return p
        return str((base_dir / p).resolve()) if "*" not in p else str(base_dir.resolve() / p)

    data = raw.get("data")
    if isinstance(data, dict):
        for section in ("interactions", "items", "users"):
            src = data.get(section)
            if isinstance(src, dict):
                if "path" in src:
                    src["path"] = fix(src["path"])
                tags = src.get("tags")
                if isinstance(tags, dict) and "path" in tags:
                    tags["path"] = fix(tags["path"])
    feedback = raw.get("feedback")
    if isinstance(feedback, dict) and "output" in feedback:
        feedback["output"] = fix(feedback["output"])
    store = raw.get("store")
    if isinstance(store, dict) and isinstance(store.get("root"), str):
        root = store["root"]
        if root.startswith("file://") and not root.startswith("file:///"):
            store["root"] = "file://" + str((base_dir / root[len("file://") :]).resolve())
    return raw


def _read_yaml(path: Path, errors: list[str], seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        errors.append(f"extends: circular reference through {path}")
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.append(f"{path}: file not found; check the path")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{path}: cannot read ({exc})")
        return {}
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(f"{path}:{where}: not valid YAML ({problem})")
        return {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{path}: the top level must be a mapping of sections (got {type(raw).__name__})")
        return {}
    raw = _resolve_relative_paths(raw, path.parent)
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else list(parents):
        merged = _deep_merge(merged, _read_yaml((path.parent / parent).resolve(), errors, seen + (path,)))
    return _deep_merge(merged, raw)


def parse_override(expr: str) -> tuple[list[str], Any]:
    """'evaluation.k=[5,10]' -> (['evaluation', 'k'], [5, 10]); the value is parsed as YAML."""
    if "=" not in expr:
        raise ConfigError("--set", [f"{expr}: expected KEY.PATH=VALUE"])
    key, value = expr.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("--set", [f"{expr}: empty key"])
    return parts, yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = raw
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit():
                node = node[int(part)]
                continue
            node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list) and last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def from_dict(raw: dict, source: str = "<memory>") -> PipelineConfig:
    """Validate an already-merged mapping (no file, no interpolation)."""
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc, raw)) from None
    cfg._source = source
    return cfg


def load_raw(
    path: str | Path, overrides: list[str] | dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> dict:
    """Read, merge `extends`, apply overrides and interpolate secrets; no schema validation yet."""
    path = Path(path).expanduser().resolve()
    errors: list[str] = []
    raw = _read_yaml(path, errors)
    if errors:
        raise ConfigError(str(path), errors)
    if overrides:
        raw = apply_overrides(raw, overrides)
    raw = _interpolate(raw, "", dict(os.environ) if env is None else env, errors)
    if errors:
        raise ConfigError(str(path), errors)
    return raw


def load(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    overrides_source: str = "--set",
) -> PipelineConfig:
    """Load and validate a pipeline config file. Raises ConfigError listing every problem; a problem with
    an overridden key names `overrides_source` (the flag, or the DAG run's param) instead of the file."""
    source = str(Path(path).expanduser().resolve())
    raw = load_raw(path, overrides, env)
    try:
        return from_dict(raw, source)
    except ConfigError as exc:
        if not overrides or isinstance(overrides, dict):  # a mapping comes from code, not from a person
            raise
        raise blame_overrides(exc, overrides, overrides_source) from None


def blame_overrides(exc: ConfigError, overrides: list[str], overrides_source: str) -> ConfigError:
    """`exc` with each error about an overridden key traced to its override, and, when the overrides
    caused every error, `overrides_source` as the source (the file itself is fine)."""
    written = {".".join(parse_override(o)[0]): o for o in overrides}
    errors, blamed = [], 0
    for line in exc.errors:
        key = line.split(":", 1)[0].strip()
        cause = next((o for k, o in written.items() if key == k or key.startswith(k + ".")), None)
        if cause is None:
            errors.append(line)
            continue
        blamed += 1
        errors.append(f"{line} (set by {overrides_source}: {cause})")
    source = f"{overrides_source} (applied to {exc.source})" if blamed == len(exc.errors) else exc.source
    return ConfigError(source, errors)


def json_schema() -> dict:
    """JSON Schema of the config file, for editors (`recloop config schema`)."""
    return PipelineConfig.model_json_schema()
