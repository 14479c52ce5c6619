"""Building blocks shared by every config section: the strict base model, durations, error lines."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'90s', '15m', '12h', '1d', '2w' or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f"expected a duration like '30s', '15m', '12h' or '1d' (got {value!r})")


def format_duration(td: timedelta) -> str:
    """timedelta -> seconds as written in configs and dumps (`90s`, `0.5s`)."""
    # Must parse back through parse_duration: ':g' gave '3.1536e+07s' for 365 days, which it rejects.
    seconds = td.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.6f}".rstrip("0") + "s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def format_validation_error(exc: ValidationError, raw: dict | None = None) -> list[str]:
    """One `path.to.key: message (got X)` line per pydantic error."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see `recloop config schema`)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"unknown model type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        show_got = err["type"] not in ("missing", "union_tag_invalid") and not isinstance(got, dict)
        if show_got and "(got" not in msg:
            msg = f"{msg} (got {got!r})"
        lines.append(f"{loc}: {msg}")
    return lines
