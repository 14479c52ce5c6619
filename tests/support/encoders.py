"""A tiny text encoder that runs for real on a CPU in seconds: a random-weight BERT (hidden 32) with the
packaged MiniLM's tokenizer and pooling files."""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_ENCODER_LAYERS = 2


def write_tiny_encoder(folder: Path) -> None:
    """Write the tiny encoder's model folder (weights seeded, so every session gets the same model)."""
    import torch
    from transformers import BertConfig, BertModel

    from recloop.models.text_encoder import EncoderConfig, resolve_model_dir

    source = resolve_model_dir(EncoderConfig())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json"):
        shutil.copy(source / name, folder / name)
    shutil.copytree(source / "1_Pooling", folder / "1_Pooling")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=TINY_ENCODER_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
