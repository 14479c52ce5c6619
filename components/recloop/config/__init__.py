"""Typed pipeline configuration: one YAML file validated once, at the edge, into pydantic objects.

`load(path)` returns a `PipelineConfig` or raises `ConfigError` listing every problem as
`path.to.key: what is wrong (got X)`. Everything downstream receives typed objects, never dicts.

This package sits just above `recloop.errors`, the only other part of recloop it imports. One module
per group of sections (`store`, `data`, `evaluation`, `execution`, `serving`, `feedback`, `models`),
the whole file in `pipeline`, file reading in `loader`, and `docs` renders the reference pages from
the field descriptions. The names below are the public API; model configs are imported from
`recloop.config.models`.
"""

from __future__ import annotations

from recloop.config.base import Duration, StrictModel, format_validation_error, parse_duration
from recloop.config.data import (
    DataConfig,
    DataFormat,
    ImplicitConfig,
    InteractionColumns,
    InteractionSource,
    ItemSource,
    PreprocessConfig,
    SplitConfig,
    TagSource,
    UserSource,
    ValidationConfig,
    template_fields,
)
from recloop.config.evaluation import ColdStartConfig, EvaluationConfig, GateConfig, PublishConfig
from recloop.config.execution import (
    CRON_PRESETS,
    AirflowApiConfig,
    ContainerResources,
    DockerExecutionConfig,
    DockerMount,
    ExecutionConfig,
    FaultInjectionConfig,
    KubernetesExecutionConfig,
    ResourceQuantities,
    SecretEnv,
    StepExecutionConfig,
    Toleration,
)
from recloop.config.feedback import FeedbackAbuseConfig, FeedbackConfig, PolicyConfig, PolicyGateConfig
from recloop.config.loader import (
    SECRET_KEYS,
    apply_overrides,
    from_dict,
    json_schema,
    load,
    load_raw,
    parse_override,
)
from recloop.config.pipeline import PipelineConfig
from recloop.config.serving import (
    ServingAnnConfig,
    ServingAuthConfig,
    ServingConfig,
    ServingExplorationConfig,
    ServingFallbackConfig,
    ServingLimitsConfig,
    ServingLogsConfig,
    ServingPrivacyConfig,
    ServingRulesConfig,
)
from recloop.config.store import RetryConfig, StoreConfig
from recloop.config.tuning import Budget, TuningConfig

__all__ = [
    "CRON_PRESETS",
    "SECRET_KEYS",
    "AirflowApiConfig",
    "Budget",
    "ColdStartConfig",
    "ContainerResources",
    "DataConfig",
    "DataFormat",
    "DockerExecutionConfig",
    "DockerMount",
    "Duration",
    "EvaluationConfig",
    "ExecutionConfig",
    "FaultInjectionConfig",
    "FeedbackAbuseConfig",
    "FeedbackConfig",
    "GateConfig",
    "ImplicitConfig",
    "InteractionColumns",
    "InteractionSource",
    "ItemSource",
    "KubernetesExecutionConfig",
    "PipelineConfig",
    "PolicyConfig",
    "PolicyGateConfig",
    "PreprocessConfig",
    "PublishConfig",
    "ResourceQuantities",
    "RetryConfig",
    "SecretEnv",
    "ServingAnnConfig",
    "ServingAuthConfig",
    "ServingConfig",
    "ServingExplorationConfig",
    "ServingFallbackConfig",
    "ServingLimitsConfig",
    "ServingLogsConfig",
    "ServingPrivacyConfig",
    "ServingRulesConfig",
    "SplitConfig",
    "StepExecutionConfig",
    "StoreConfig",
    "StrictModel",
    "TagSource",
    "Toleration",
    "TuningConfig",
    "UserSource",
    "ValidationConfig",
    "apply_overrides",
    "format_validation_error",
    "from_dict",
    "json_schema",
    "load",
    "load_raw",
    "parse_duration",
    "parse_override",
    "template_fields",
]
