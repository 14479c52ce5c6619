"""Run parameters of the training DAG: the Airflow `Param` schemas (what the trigger form shows) and
`RunRequest`, the validated, typed form the tasks and containers use.

Params are validated twice on purpose: Airflow checks the JSON schema when a run is triggered, and
`RunRequest.from_params` turns the values into typed objects with recloop's own error messages (a
run triggered by an Asset event or through `dags test -c` may carry values the form never saw).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from recloop.errors import ConfigError
from recloop.steps.base import RunParams
from recloop.steps.graph import find_step

if TYPE_CHECKING:
    from recloop.config import PipelineConfig

PARAMS_SOURCE = "DAG run parameters"
OVERRIDES_SOURCE = "the DAG run's `overrides` param"
OVERRIDE_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*=.*$"
_OVERRIDE_RE = re.compile(OVERRIDE_PATTERN, re.DOTALL)


def training_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The `params` of a training DAG: typed Airflow `Param`s with JSON schema for the trigger form.

    Every param is optional, so each type admits null (the form marks a param without null as required);
    descriptions are `description_md`, which the form renders as Markdown (a plain description shows its
    backticks)."""
    from airflow.sdk import Param

    candidates = [m.candidate_name for m in cfg.models]
    model_items: dict[str, Any] = {"type": "string"}
    if candidates:
        model_items["enum"] = candidates
    return {
        "models": Param(
            [],
            type=["array", "null"],
            items=model_items,
            examples=candidates,
            uniqueItems=True,
            title="Models to train",
            description_md="Candidate names to train and evaluate; empty trains every model in the config "
            f"({', '.join(candidates) or 'none configured'}).",
            section="Run",
        ),
        "since": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Since (watermark)",
            description_md="Ingest only events strictly after this ISO-8601 time (an incremental run); "
            "empty uses `data.since` from the config. The last run's watermark is the ingest manifest's "
            "`max_timestamp`.",
            section="Run",
        ),
        "dry_run": Param(
            False,
            type=["boolean", "null"],
            title="Dry run",
            description_md="Run every step but publish: the production model is left untouched.",
            section="Run",
        ),
        "overrides": Param(
            [],
            type=["array", "null"],
            items={"type": "string", "pattern": OVERRIDE_PATTERN},
            title="Config overrides",
            description_md="One KEY.PATH=VALUE per line, the value parsed as YAML, applied on top of the "
            "config file for this run only (e.g. `evaluation.k=[5,10]`, `gate.absolute={ndcg@10: 0.05}`).",
            section="Advanced",
        ),
        "force": Param(
            False,
            type=["boolean", "null"],
            title="Recompute committed steps",
            description_md="Recompute a step even when this run already committed its artifact (normally a "
            "retried or cleared step reuses it).",
            section="Advanced",
        ),
    }


def _as_list(value: Any, name: str, errors: list[str]) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [line.strip() for line in re.split(r"[\n,]" if name == "models" else r"\n", value) if line.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    errors.append(f"{name}: expected a list of strings (got {value!r})")
    return []


def _parse_since(value: Any, errors: list[str]) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            errors.append(f"since: not an ISO-8601 time like 2024-01-31T00:00:00Z (got {value!r})")
            return None
    # A watermark without a zone means UTC, as everywhere in recloop's artifacts.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RunRequest:
    """What one triggered run asks for, validated."""

    overrides: tuple[str, ...] = ()
    since: datetime | None = None
    models: tuple[str, ...] | None = None
    dry_run: bool = False
    force: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any], candidates: list[str] | None = None) -> RunRequest:
        """Validate the DAG run's params; `candidates` (the config's model names) checks `models`."""
        errors: list[str] = []
        overrides = _as_list(params.get("overrides"), "overrides", errors)
        for expr in overrides:
            if not _OVERRIDE_RE.match(expr):
                errors.append(f"overrides: {expr!r} is not KEY.PATH=VALUE (e.g. evaluation.k=[5,10])")
        models = _as_list(params.get("models"), "models", errors)
        if candidates is not None:
            unknown = [m for m in models if m not in candidates]
            if unknown:
                errors.append(
                    f"models: unknown candidate(s) {', '.join(unknown)}; this config has "
                    f"{', '.join(candidates) or 'no models'}"
                )
        flags = {}
        for name in ("dry_run", "force"):
            value = params.get(name, False)
            if value is None:
                value = False
            if not isinstance(value, bool):
                errors.append(f"{name}: expected true or false (got {value!r})")
            flags[name] = bool(value)
        since = _parse_since(params.get("since"), errors)
        if errors:
            raise ConfigError(PARAMS_SOURCE, errors)
        return cls(overrides=tuple(overrides), since=since, models=tuple(models) or None, **flags)

    def run_params(self) -> RunParams:
        return RunParams(since=self.since, models=self.models, dry_run=self.dry_run, force=self.force)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "overrides": list(self.overrides),
            "since": self.since.isoformat() if self.since else None,
            "models": list(self.models) if self.models else None,
            "dry_run": self.dry_run,
            "force": self.force,
        }

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> RunRequest:
        return cls.from_params(data)

    def cli_flags(self, step: str, candidate: str | None = None) -> list[str]:
        """`recloop step STEP` flags carrying this request into a container: `--model` names the candidate
        of a per-candidate step; steps reading every candidate get the selection (`--models`, once per
        name); dry_run is the DAG's business (it skips publish)."""
        flags: list[str] = []
        if self.since is not None:
            flags += ["--since", self.since.isoformat()]
        if candidate is not None:
            flags += ["--model", candidate]
        elif self.models and find_step(step).reads_candidates:
            for name in self.models:
                flags += ["--models", name]
        if self.force:
            flags.append("--force")
        for expr in self.overrides:
            flags += ["--set", expr]
        return flags
