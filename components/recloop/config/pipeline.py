"""`PipelineConfig`: the whole config file, one field per section."""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import Field, PrivateAttr, field_validator, model_validator

from recloop.config.base import StrictModel
from recloop.config.data import DataConfig, PreprocessConfig, ValidationConfig
from recloop.config.evaluation import EvaluationConfig, GateConfig, PublishConfig
from recloop.config.execution import ExecutionConfig
from recloop.config.feedback import FeedbackConfig, PolicyConfig
from recloop.config.models import ModelConfig, ModelEntry
from recloop.config.serving import ServingConfig
from recloop.config.store import StoreConfig
from recloop.config.tuning import TuningConfig


def tunable_keys(config_cls: type[ModelConfig]) -> set[str]:
    """The YAML keys of a model config a search may set (all but `type`, `name` and nested sections)."""
    keys = set()
    for field_name, info in config_cls.model_fields.items():
        if field_name in ("type", "name") or isinstance(info.default, StrictModel):
            continue
        keys.add(info.alias or field_name)
    return keys


class PipelineConfig(StrictModel):
    """The whole pipeline: one field per YAML section; `models` entries are told apart by their `type:`."""

    name: str = Field(..., description="Pipeline name: lower-case letters, digits, '-' and '_'.")
    store: StoreConfig = Field(
        StoreConfig(),
        description="Artifact store holding every run's artifacts, the model registry and the serving logs.",
    )
    data: DataConfig = Field(
        ..., description="Where the raw interactions (and optionally the item catalog and users) are read from."
    )
    validation: ValidationConfig = Field(
        ValidationConfig(), description="Data-quality checks of the validate step and what a failure does."
    )
    preprocess: PreprocessConfig = Field(
        PreprocessConfig(),
        description="Cleaning, implicit-feedback conversion, min-count filters and the train/valid/test split.",
    )
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="Candidate models trained and compared by evaluate; each entry is "
        "`type:` (see docs/models.md) plus that model's parameters.",
    )
    tuning: TuningConfig = Field(
        TuningConfig(),
        description="Hyper-parameter search of the tune step (between preprocess and train); off until a "
        "`budget` is set.",
    )
    evaluation: EvaluationConfig = Field(
        EvaluationConfig(),
        description="Offline metrics of the evaluate step: cut-offs, the ranking metric, bootstrap intervals.",
    )
    gate: GateConfig = Field(
        GateConfig(), description="Thresholds the best candidate must pass before publish may promote it."
    )
    publish: PublishConfig = Field(PublishConfig(), description="How the blessed model is published to the registry.")
    execution: ExecutionConfig = Field(
        ExecutionConfig(),
        description="How Airflow runs the steps: where (in process, Docker, Kubernetes), retries, timeouts, schedules.",
    )
    serving: ServingConfig = Field(
        ServingConfig(), description="The online API of `recloop serve` over the registry's production model."
    )
    feedback: FeedbackConfig = Field(
        FeedbackConfig(), description="The feedback step turning serving logs into labelled training interactions."
    )
    policy: PolicyConfig = Field(
        PolicyConfig(),
        description="Optional contextual-bandit reranker trained from the feedback logs and gated off-policy.",
    )

    # Set by load(): where the file came from (for messages and lineage); not part of the schema.
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        return self._source

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9_\-]{0,62}$", v):
            raise ValueError(f"use lower-case letters, digits, '-' and '_' (got {v!r})")
        return v

    @field_validator("models")
    @classmethod
    def _check_candidate_names(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        # Candidate names key reports and name the train artifact's folders: unique, one path segment.
        names = [m.candidate_name for m in v]
        for name in names:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$", name):
                raise ValueError(
                    f"candidate name {name!r} must be letters, digits, '.', '-' or '_' "
                    f"(it names a folder); set a different `name:` (got names {names})"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            where = "; ".join(
                f"{d!r} at models[{', '.join(str(i) for i, n in enumerate(names) if n == d)}]" for d in duplicates
            )
            raise ValueError(
                f"candidate names must be unique ({where}); give each entry a distinct `name:` (got names {names})"
            )
        return v

    @model_validator(mode="after")
    def _check_gate_cutoffs(self) -> PipelineConfig:
        # Gate and ranking metrics must be computed by evaluate: their cut-offs must be in evaluation.k.
        ks = self.evaluation.k
        named = [("evaluation.primary", self.evaluation.primary)]
        named += [(f"gate.absolute.{m}", m) for m in self.gate.absolute]
        named += [(f"gate.relative_to_champion.{m}", m) for m in self.gate.relative_to_champion]
        for where, metric in named:
            k = int(metric.rsplit("@", 1)[1])
            if k not in ks:
                raise ValueError(f"{where}: cut-off {k} is not evaluated; add {k} to evaluation.k (now {ks})")
        if self.gate.require_significant and self.evaluation.bootstrap == 0:
            raise ValueError(
                "gate.require_significant needs bootstrap resamples; set evaluation.bootstrap > 0 "
                "(e.g. 1000) or turn require_significant off"
            )
        return self

    @model_validator(mode="after")
    def _check_tuning(self) -> PipelineConfig:
        # Spaces and tuned candidates must name configured candidates and parameters their type has.
        by_name = {m.candidate_name: m for m in self.models}
        for where, names in (
            ("tuning.candidates", self.tuning.candidates or []),
            ("tuning.spaces", self.tuning.spaces),
        ):
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise ValueError(
                    f"{where}: unknown candidate(s) {', '.join(map(repr, unknown))}; configured: "
                    f"{', '.join(by_name) or 'none'}"
                )
        for name, space in self.tuning.spaces.items():
            keys = tunable_keys(type(by_name[name]))
            wrong = sorted(set(space) - keys)
            if wrong:
                raise ValueError(
                    f"tuning.spaces.{name}: {', '.join(wrong)} is not a parameter of model type "
                    f"{by_name[name].type!r}; its parameters: {', '.join(sorted(keys))}"
                )
        return self

    @property
    def model_name(self) -> str:
        return self.publish.model_name or self.name

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the validated config (secrets excluded)."""
        # `serving` only tunes the online API: changing it must not invalidate pipeline artifacts.
        payload = json.dumps(self.model_dump(mode="json", exclude={"serving"}), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()
