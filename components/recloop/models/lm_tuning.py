"""Fine-tuning the pretrained text encoder inside `text_sasrec`: its top layers, or LoRA adapters (peft).

A frozen sentence encoder places items by general text similarity. Tuning it on the next-item loss moves
items that are consumed together closer in the encoder's own space, and, because an item without
interactions goes through the same tuned encoder, that carries over to cold items.

Re-encoding the whole catalog with gradients at every step is out of reach (a CPU manages a few hundred
texts per second through MiniLM), so a training step re-encodes with gradients only the step's target
items (at most `lm_items_per_step`), and every other item reads the catalog table, which is re-encoded
without gradients after each epoch. Imported only when tuning is on (torch, transformers, peft).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from recloop.config.models import EncoderConfig
from recloop.errors import ConfigError
from recloop.models.text_encoder import TextEncoder

TuningMode = Literal["top_layers", "lora"]


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, module list) of the model's stack of transformer layers.

    Found structurally (the ModuleList as long as `num_hidden_layers`), so BERT (`encoder.layer`),
    RoBERTa, MPNet, DistilBERT (`transformer.layer`) and decoder-style models (`layers`, `h`) all work.
    """
    count = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ConfigError(
        "encoder",
        [
            f"lm_finetune: cannot find the transformer layers of "
            f"{type(model).__name__}; use lm_finetune: off for this encoder"
        ],
    )


class EncoderTuner:
    """The text encoder with its top `layers` trainable (or LoRA adapters on them), over fixed item texts.

    Tokenization, padding and pooling are the TextEncoder's own, so an untrained tuner encodes exactly as
    the frozen encoder (whose output the embedding cache holds) does.
    """

    def __init__(
        self,
        encoder_cfg: EncoderConfig,
        texts: Sequence[str],
        mode: TuningMode,
        layers: int,
        device: str,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
    ):
        self.encoder = TextEncoder(encoder_cfg.model_copy(update={"device": device}))
        self.mode = mode
        model = self.encoder.model.float()
        layer_path, stack = transformer_layers(model)
        layers = min(layers, len(stack))
        top = list(range(len(stack) - layers, len(stack)))
        for p in model.parameters():
            p.requires_grad_(False)
        if mode == "top_layers":
            for index in top:
                for p in stack[index].parameters():
                    p.requires_grad_(True)
        else:
            model = _with_lora(model, layer_path, top, lora_rank, lora_alpha, lora_dropout)
        self.model = self.encoder.model = model.to(self.encoder.device)
        self.texts = list(texts)
        self.tokens, _ = self.encoder.tokenize(self.texts)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trained_state(self) -> dict[str, np.ndarray]:
        """The weights tuning changed (top-layer weights, or the LoRA adapters), by parameter name."""
        return {name: p.detach().float().cpu().numpy() for name, p in self.model.named_parameters() if p.requires_grad}

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """(len(items), dim) embeddings of these item indices (0-based), with gradients to the tuned weights."""
        self.model.train()
        return self.encoder.embed_tokens(self.tokens, items.cpu().numpy())

    def encode_all(self) -> torch.Tensor:
        """(n_items, dim) embeddings of every item with the current weights; no gradients."""
        self.model.eval()
        return torch.from_numpy(self.encoder.encode(self.texts))


def _with_lora(
    model: nn.Module, layer_path: str, layers: list[int], rank: int, alpha: float, dropout: float
) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(
            "model",
            [
                "lm_finetune: 'lora' needs the peft package: pip install 'recloop[lm-tuning]' "
                "(or peft), or use lm_finetune: top_layers"
            ],
        ) from None
    # Adapters on every linear layer inside the chosen transformer layers (attention and feed-forward).
    prefixes = tuple(f"{layer_path}.{i}." for i in layers)
    targets = [
        name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name.startswith(prefixes)
    ]
    # peft annotates lora_alpha as int, but only ever divides it by r: a float scale works.
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # peft asks transformers for a deprecated attribute (is_gradient_checkpointing); nothing for users to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
