"""train: fit one candidate model on the preprocess splits and save its bundle (one node per candidate).

Input: the preprocess artifact (`train.parquet`, `valid.parquet`, `items.parquet`, summary `n_users` /
`n_items`). Output `runs/{run}/train/{candidate}/`, a `TrainedModel` artifact:
  model.json, arrays.safetensors   a Recommender bundle (`Recommender.load`)
  train_report.json                type, config, seed, train seconds, epochs, validation NDCG@10, the
                                   per-epoch metrics the model reported, and the data sizes
Summary: `type`, `train_seconds`, `epochs`, `best_valid_metric`, `valid_metric`.

Each candidate is its own artifact, so the DAG maps candidates to separate task instances (retry one
alone, run them on different workers) and a failing candidate never touches another's committed bundle.
Before the fit every random generator is seeded from the model's `seed`. `best_valid_metric` is the
validation NDCG@10 of the model as saved (for early-stopped models: the restored best epoch), computed
the same way for every candidate. `epochs` is the model's `epochs_trained` when it has one, else the
highest `epoch` it reported through `FitContext.progress`, else the number of progress reports that
carried metrics (one per epoch by convention), and null for closed-form models that report none.
The bundle is trained into a scratch folder and uploaded only when the fit succeeded.

Retrains are reproducible: where a model's `max_seconds` cut the production model's training (its
train_report's `stopped_by`), train trains that many epochs instead of by wall time (`stop_after_epoch`).
With a tune artifact, train keeps the best trial's model when it was fitted with the same config on the
same splits (`reused_trial`), else it fits the best parameters.
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.artifacts.kinds import Dataset, TrainedModel, TuningStudy
from recloop.data.interactions import Interactions
from recloop.errors import ArtifactError, DataError
from recloop.models.base import FitContext, ItemSide, UserSide
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    from recloop.artifacts import Artifact, Manifest
    from recloop.config.models import ModelConfig
    from recloop.models.base import Recommender

VALID_METRIC = "ndcg@10"
_SPLIT_COLUMNS = ["user_idx", "item_idx", "timestamp", "weight"]


@dataclass
class TrainingData:
    """What every candidate trains on, read once from the preprocess artifact."""

    train: Interactions
    valid: Interactions | None
    items: ItemSide
    uri: str
    users: UserSide = field(default_factory=UserSide)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items


@dataclass
class CandidateResult:
    name: str
    model_type: str
    config: dict[str, Any]
    train_seconds: float
    epochs: int | None
    best_valid_metric: float | None
    history: list[dict[str, str | float | None]] = field(default_factory=list)  # {"phase": ..., metric: value}
    stopped_by: str | None = None  # what ended an iterative model's training, when it says

    def brief(self) -> dict[str, Any]:
        return {
            "type": self.model_type,
            "train_seconds": self.train_seconds,
            "epochs": self.epochs,
            "best_valid_metric": self.best_valid_metric,
            "stopped_by": self.stopped_by,
        }


def run(ctx: StepContext, inputs: dict[str, str], output: str, candidate: str) -> Manifest:
    model_cfg = next(m for m in ctx.candidates if m.candidate_name == candidate)
    preprocess = ctx.open(inputs["preprocess"])
    study = TuningStudy(ctx.open(inputs["tune"])) if "tune" in inputs else None
    tuned_params = {} if study is None else study.best_params()
    if tuned_params:
        from recloop.tuning.space import apply_params

        model_cfg = apply_params(model_cfg, tuned_params)
        ctx.log(f"train: {candidate} with tuned parameters {tuned_params}")
    model_cfg = reproducible_time_cap(ctx, model_cfg)
    data = load_training_data(preprocess)
    ctx.log(
        f"train: {candidate} ({model_cfg.type}) on {len(data.train)} train / "
        f"{0 if data.valid is None else len(data.valid)} valid events, {data.n_users} users, "
        f"{data.n_items} items"
    )
    with tempfile.TemporaryDirectory(prefix="recloop-train-") as tmp:
        bundle_dir = Path(tmp) / candidate
        reused = None
        if study is not None and tuned_params and not ctx.config.tuning.refit:
            reused = reuse_best_trial(study, model_cfg, data, splits_digest(preprocess), bundle_dir, ctx.log)
        if reused is None:
            result = train_candidate(model_cfg, data, ctx, StoreTextEmbedder(ctx), bundle_dir)
        else:
            result, trial = reused
            ctx.log(
                f"train: {candidate}: kept the model of tuning trial {trial}, fitted with these parameters on the "
                "same splits and seed (set tuning.refit: true to fit it again)"
            )
        report = {
            "preprocess_uri": preprocess.uri,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "n_train": len(data.train),
            "n_valid": 0 if data.valid is None else len(data.valid),
            "valid_metric": VALID_METRIC,
            "candidate": result.name,
            **result.brief(),
            "config": result.config,
            "tuned_params": tuned_params,
            "reused_trial": None if reused is None else reused[1],
            "history": result.history,
        }
        parents = [preprocess.uri] + ([inputs["tune"]] if "tune" in inputs else [])
        with ctx.writer(output, parents=parents) as writer:
            TrainedModel.write(writer, bundle_dir, report)
    metric = "n/a" if result.best_valid_metric is None else f"{result.best_valid_metric:.4f}"
    ctx.log(
        f"train: {result.name} ({result.model_type}) {result.train_seconds:.1f}s, epochs={result.epochs}, "
        f"valid {VALID_METRIC}={metric}"
    )
    return writer.manifest


# ---------------------------------------------------------------------------------------------- pieces


# Where one of these ended the production model's training, a retrain trains the same number of epochs.
_TIME_CAPPED = ("max_seconds", "stop_after_epoch")


def reproducible_time_cap(ctx: StepContext, model_cfg: ModelConfig) -> ModelConfig:
    """`model_cfg`, or, where `max_seconds` cut the production model's training (same candidate), the same
    with that epoch count (`stop_after_epoch`) in place of the time cap: a gated retrain on unchanged data
    then trains the same model whatever the machine's load."""
    cap = getattr(model_cfg, "max_seconds", None)
    if cap is None:
        return model_cfg
    from recloop.registry import ModelRegistry

    champion = ModelRegistry(ctx.store, ctx.config.model_name).champion()
    if champion is None or champion.candidate != model_cfg.candidate_name or "train" not in champion.lineage:
        return model_cfg
    try:
        report = ctx.open(champion.lineage["train"]).read_json(TrainedModel.REPORT)
    except ArtifactError as exc:
        ctx.log(f"train: {model_cfg.candidate_name}: the production model's train report is unreadable ({exc})")
        return model_cfg
    epochs = report.get("epochs")
    if report.get("stopped_by") not in _TIME_CAPPED or not isinstance(epochs, int) or epochs < 1:
        return model_cfg
    ctx.log(
        f"train: {model_cfg.candidate_name}: a time cap ended production v{champion.version}'s training at epoch "
        f"{epochs}; training {epochs} epochs instead of max_seconds {cap:g}, so the "
        "retrain does not depend on the machine's load"
    )
    return model_cfg.model_copy(update={"max_seconds": None, "stop_after_epoch": epochs})


def splits_digest(preprocess: Artifact) -> str:
    """Names the train and valid splits' content: a kept tuning model is reused only on the same splits."""
    files = preprocess.manifest.files
    return ",".join(files[name].sha256 for name in (Dataset.TRAIN, Dataset.VALID) if name in files)


def reuse_best_trial(
    study: TuningStudy,
    model_cfg: ModelConfig,
    data: TrainingData,
    digest: str,
    bundle_dir: Path,
    log: Callable[[str], None],
) -> tuple[CandidateResult, int] | None:
    """The tune step's best trial as this candidate's result (its bundle copied to `bundle_dir`), or None
    when the study kept no model or it was fitted with another config or on other splits."""
    from recloop.models.base import Recommender

    fit = study.best_fit()
    if fit is None or fit.get("trial") != study.study().get("best_trial"):
        return None
    config = model_cfg.model_dump(mode="json", by_alias=True)
    if fit.get("config") != config or fit.get("data_digest") != digest:
        log(f"train: {model_cfg.candidate_name}: the config or splits changed since the tune step; fitting again")
        return None
    study.download_best_model(bundle_dir)
    model = Recommender.load(bundle_dir)
    result = candidate_result(model_cfg, model, data, float(fit["seconds"]), list(fit.get("history") or []))
    return result, int(fit["trial"])


def load_training_data(preprocess: Artifact) -> TrainingData:
    """Train/valid interactions and item side information from a committed preprocess artifact."""
    dataset = Dataset(preprocess)
    dataset.require(Dataset.TRAIN, Dataset.VALID)
    summary = preprocess.manifest.summary
    try:
        n_users, n_items = int(summary["n_users"]), int(summary["n_items"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(
            f"{preprocess.uri}: the manifest summary lacks n_users / n_items; re-run preprocess"
        ) from None
    train_df = dataset.split("train", columns=_SPLIT_COLUMNS)
    valid_df = dataset.split("valid", columns=_SPLIT_COLUMNS)
    try:
        train = Interactions.from_frame(train_df, n_users, n_items)
        valid = Interactions.from_frame(valid_df, n_users, n_items) if len(valid_df) else None
    except ValueError as exc:
        raise ArtifactError(
            f"{preprocess.uri}: splits disagree with n_users={n_users}, n_items={n_items} ({exc}); re-run preprocess"
        ) from None
    if len(train) == 0:
        raise DataError(
            f"the train split of {preprocess.uri} is empty: nothing to learn from; loosen the "
            "preprocess filters (min_user_interactions, implicit.min_rating) or add data"
        )
    users = _user_side(dataset, n_users, summary.get("user_attribute_types") or {})
    return TrainingData(train, valid, _item_side(dataset, n_items), preprocess.uri, users)


def _item_side(dataset: Dataset, n_items: int) -> ItemSide:
    """Texts and categories per contiguous item id; items missing from items.parquet get empty ones."""
    items = dataset.items()
    if items is None:
        return ItemSide()
    idx = items["item_idx"].to_numpy(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_items):
        raise ArtifactError(f"{dataset.uri}/{Dataset.ITEMS} has item_idx outside [0, {n_items}); re-run preprocess")
    texts: list[str] | None = None
    categories: list[list[str]] | None = None
    if "text" in items.columns:
        texts = [""] * n_items
        for i, text in zip(idx, items["text"]):
            texts[i] = "" if text is None else str(text)
    if "categories" in items.columns:
        categories = [[] for _ in range(n_items)]
        for i, cats in zip(idx, items["categories"]):
            categories[i] = [] if cats is None else [str(c) for c in cats]
    return ItemSide(texts=texts, categories=categories)


def _user_side(dataset: Dataset, n_users: int, types: dict[str, str]) -> UserSide:
    """Typed user attributes per contiguous user id (categorical codes, numbers, profiles)."""
    frame = dataset.users()
    side = UserSide()
    if frame is None:
        return side
    index = frame["user_idx"].to_numpy(np.int64)
    for name, kind in types.items():
        if name not in frame.columns:
            continue
        if kind == "numeric":
            values = np.full(n_users, np.nan, dtype=np.float32)
            values[index] = frame[name].to_numpy(np.float64, na_value=np.nan)
            side.numeric[name] = values
        elif kind == "categorical":
            column = frame[name].astype("string")
            vocabulary = sorted(column.dropna().unique().tolist())
            codes = np.full(n_users, -1, dtype=np.int32)
            lookup = {v: i for i, v in enumerate(vocabulary)}
            codes[index] = [lookup.get(v, -1) if isinstance(v, str) else -1 for v in column.tolist()]
            side.categorical[name], side.vocabularies[name] = codes, vocabulary
    if "profile" in frame.columns:
        profiles = [""] * n_users
        for i, text in zip(index, frame["profile"].tolist()):
            profiles[i] = "" if text is None else str(text)
        side.profiles = profiles
    return side


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and, if a model already imported it, torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")  # never import torch just to seed it
    if torch is not None:
        torch.manual_seed(seed)


class FitRecord:
    """What a fit reports through `FitContext.progress`: the per-epoch metrics (train_report's `history`),
    and the share done, passed on to `advance` (a progress bar) when given."""

    def __init__(self, advance: Callable[[float], None] | None = None):
        self.history: list[dict[str, str | float | None]] = []
        self.advance = advance
        self.done = 0.0

    def on_progress(self, phase: str, fraction: float, metrics: dict[str, float]) -> None:
        step = max(0.0, min(100.0, 100.0 * float(fraction)) - self.done)
        if step:
            self.done += step
            if self.advance is not None:
                self.advance(step)
        if metrics:
            self.history.append({"phase": phase, **{k: _finite(v) for k, v in metrics.items()}})

    def finish(self) -> None:
        if self.done < 100.0 and self.advance is not None:
            self.advance(100.0 - self.done)
        self.done = 100.0


def fit_model(
    model_cfg: ModelConfig, data: TrainingData, context: FitContext, record: FitRecord
) -> tuple[Recommender, float]:
    """Seed every generator and fit one model on train (early-stopped on valid); returns it and its seconds."""
    from recloop.models import registry

    model: Recommender = registry.get(model_cfg.type)(model_cfg)
    context.progress = record.on_progress
    seed_everything(model_cfg.seed)
    start = time.perf_counter()
    model.fit(data.train, data.valid, context)
    seconds = time.perf_counter() - start
    record.finish()
    model.id_map_ref = data.uri
    return model, seconds


def candidate_result(
    model_cfg: ModelConfig, model: Recommender, data: TrainingData, seconds: float, history: list[dict[str, Any]]
) -> CandidateResult:
    """The train report's facts about a fitted model, its validation NDCG@10 measured like every candidate's."""
    from recloop.models.early_stopping import validation_ndcg

    metric = None if data.valid is None else _finite(validation_ndcg(model, data.valid))
    return CandidateResult(
        name=model_cfg.candidate_name,
        model_type=model_cfg.type,
        config=model_cfg.model_dump(mode="json", by_alias=True),
        train_seconds=round(seconds, 3),
        epochs=_epochs(model, history),
        best_valid_metric=metric,
        history=history,
        stopped_by=getattr(model, "stopped_by", None),
    )


def train_candidate(
    model_cfg: ModelConfig,
    data: TrainingData,
    ctx: StepContext,
    embedder: Callable[[Any, Sequence[str]], np.ndarray] | None,
    bundle_dir: Path,
) -> CandidateResult:
    """Fit one candidate, save its bundle to `bundle_dir` and measure it on the validation split."""
    name = model_cfg.candidate_name
    record = FitRecord(ctx.progress(f"train {name}", total=100.0))
    context = FitContext(
        items=data.items, users=data.users, log=lambda msg: ctx.log(f"{name}: {msg}"), text_embedder=embedder
    )
    ctx.log(f"train: fitting {name} ({model_cfg.type})")
    model, seconds = fit_model(model_cfg, data, context, record)
    model.save(bundle_dir)
    return candidate_result(model_cfg, model, data, seconds, record.history)


def _epochs(model: Recommender, history: list[dict[str, Any]]) -> int | None:
    trained = getattr(model, "epochs_trained", None)
    if isinstance(trained, int) and not isinstance(trained, bool):
        return trained
    reported = [h["epoch"] for h in history if isinstance(h.get("epoch"), (int, float))]
    if reported:
        return int(max(reported))
    return len(history) or None


def _finite(value: Any) -> float | None:
    """JSON-safe metric: NaN and infinities become null."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class StoreTextEmbedder:
    """`FitContext.text_embedder`: encodes item texts through the store's embedding cache, so a retrain
    embeds only new or changed texts. One encoder per distinct encoder config, created on first use."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self._encoders: dict[str, Any] = {}

    def __call__(self, encoder_cfg: Any, texts: Sequence[str]) -> np.ndarray:
        from recloop.models.text_encoder import EmbeddingCache, TextEncoder

        key = encoder_cfg.model_dump_json()
        if key not in self._encoders:
            self._encoders[key] = TextEncoder(encoder_cfg)
        encoder = self._encoders[key]
        advance = self.ctx.progress("embed item texts", total=float(len(texts)))
        vectors, n_new = EmbeddingCache(self.ctx.store, encoder.model_id).embed(list(texts), encoder, progress=advance)
        self.ctx.log(
            f"train: embedded {len(texts)} item texts with {encoder.model_id} "
            f"({n_new} encoded, {len(texts) - n_new} from the cache)"
        )
        return vectors
