"""text_sasrec with its text encoder fine-tuned on the next-item loss: the top layers, or LoRA adapters (peft).

The encoder is conftest's `tiny_encoder`, a 2-layer random-weight BERT (MiniLM's tokenizer and pooling files), so
the tests exercise the real tokenization, forward and backward code on a CPU in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recloop.config.models import EncoderConfig
from recloop.data.interactions import Histories
from recloop.errors import ConfigError
from recloop.models import registry
from recloop.models.base import FitContext, ItemSide, Recommender
from recloop.models.text_encoder import TextEncoder
from support.encoders import TINY_ENCODER_LAYERS
from support.model_contract import (
    BLOCK_B,
    ITEM_TEXTS,
    N_ITEMS,
    ModelContract,
    cold_split,
    held_out_interactions,
    text_context,
    two_block_interactions,
)

SEQ = {
    "dim": 16,
    "heads": 2,
    "layers": 1,
    "max_len": 8,
    "epochs": 12,
    "patience": 12,
    "dropout": 0.0,
    "lr": 0.01,
    "lm_lr": 1e-3,
}


def _tuned(encoder: str, **params: Any) -> Recommender:
    cls = registry.get("text_sasrec")
    return cls(cls.config_cls.model_validate({"type": "text_sasrec", **SEQ, "encoder": {"path": encoder}, **params}))


class _TunedContract(ModelContract):
    """The shared contract, for text_sasrec with encoder tuning on (the encoder path comes from a fixture)."""

    model_type = "text_sasrec"
    capabilities = frozenset({"item_vectors", "vector_space"})
    encoder_path = ""

    @pytest.fixture(scope="class", autouse=True)
    def _encoder(self, request, tiny_encoder: str) -> None:
        request.cls.encoder_path = tiny_encoder

    def make(self, **overrides: Any) -> Recommender:
        return super().make(encoder={"path": self.encoder_path}, **overrides)

    def fit_context(self):
        return text_context()


class TestTopLayerTunedTextSASRecContract(_TunedContract):
    params = {**SEQ, "lm_finetune": "top_layers", "lm_layers": 1}


class TestLoRATunedTextSASRecContract(_TunedContract):
    params = {**SEQ, "lm_finetune": "lora", "lm_layers": 2, "lora_rank": 4}


def _original_weights(encoder: str) -> dict[str, np.ndarray]:
    model = TextEncoder(EncoderConfig(path=encoder)).model
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


def test_top_layers_tuning_changes_only_the_last_layer_and_saves_it(tiny_encoder: str, tmp_path: Path) -> None:
    train = two_block_interactions()
    model = _tuned(tiny_encoder, lm_finetune="top_layers", lm_layers=1)
    model.fit(train, held_out_interactions(train), text_context())
    original = _original_weights(tiny_encoder)
    tuned = model.encoder_tuning
    last = f"encoder.layer.{TINY_ENCODER_LAYERS - 1}."
    assert tuned and all(name.startswith(last) for name in tuned)
    # Exactly the last layer's weights were trainable, and training moved them.
    assert sorted(tuned) == sorted(n for n in original if n.startswith(last))
    assert any(not np.allclose(tuned[n], original[n]) for n in tuned)
    model.save(tmp_path / "bundle")
    loaded = Recommender.load(tmp_path / "bundle")
    assert loaded.lm_finetune == "top_layers"
    assert sorted(loaded.encoder_tuning) == sorted(tuned)
    for name in tuned:
        np.testing.assert_array_equal(loaded.encoder_tuning[name], tuned[name])


def test_tuned_catalog_table_is_the_tuned_encoders_output(tiny_encoder: str) -> None:
    import torch

    from recloop.models.sasrec import _standardized

    train = two_block_interactions()
    model = _tuned(tiny_encoder, lm_finetune="top_layers", lm_layers=1, epochs=3, patience=3)
    model.fit(train, None, text_context())
    encoder = TextEncoder(EncoderConfig(path=tiny_encoder))
    frozen = encoder.encode(ITEM_TEXTS)
    # Re-encode with the saved tuned weights loaded into a fresh encoder: the table must match.
    state = {n: torch.from_numpy(v) for n, v in model.encoder_tuning.items()}
    missing, unexpected = encoder.model.load_state_dict(state, strict=False)
    assert not unexpected
    tuned = encoder.encode(ITEM_TEXTS)
    assert not np.allclose(tuned, frozen, atol=1e-4)
    np.testing.assert_allclose(model.text_embeddings, _standardized(tuned), rtol=1e-3, atol=1e-3)
    assert not np.allclose(model.text_embeddings, _standardized(frozen), atol=1e-3)


def test_lora_trains_adapters_only(tiny_encoder: str) -> None:
    train = two_block_interactions()
    model = _tuned(tiny_encoder, lm_finetune="lora", lm_layers=1, lora_rank=4, epochs=3, patience=3)
    model.fit(train, None, text_context())
    names = sorted(model.encoder_tuning)
    assert names and all("lora_" in n for n in names)
    # Adapters only on the last layer's linear maps (attention q/k/v/output and feed-forward).
    assert all(f".layer.{TINY_ENCODER_LAYERS - 1}." in n for n in names)
    adapted = {n.split(".lora_")[0] for n in names}
    assert len(adapted) == 6
    assert model.encoder_tuning[next(n for n in names if "lora_A" in n)].shape[0] == 4


def test_tuned_model_recommends_an_item_nobody_has_interacted_with(tiny_encoder: str) -> None:
    train, cold_item = cold_split()
    model = _tuned(tiny_encoder, lm_finetune="top_layers", lm_layers=1, epochs=30, patience=30)
    model.fit(train, None, text_context())
    recs = model.recommend(histories=Histories.from_lists([BLOCK_B[:-1]], N_ITEMS), k=1)
    assert recs.ids[0, 0] == cold_item


def test_auto_leaves_the_encoder_frozen_on_cpu(tiny_encoder: str, tmp_path: Path) -> None:
    train = two_block_interactions()
    model = _tuned(tiny_encoder, epochs=2, patience=2, device="cpu")
    assert model.config.lm_finetune == "auto"
    model.fit(train, None, text_context())
    assert model.lm_finetune == "off" and model.encoder_tuning == {}
    model.save(tmp_path / "bundle")
    assert Recommender.load(tmp_path / "bundle").lm_finetune == "off"


def test_lora_without_peft_says_how_to_install(tiny_encoder: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    train = two_block_interactions()
    with pytest.raises(ConfigError, match=r"pip install 'recloop\[lm-tuning\]'"):
        _tuned(tiny_encoder, lm_finetune="lora", epochs=1).fit(train, None, text_context())


def test_tuning_without_item_texts_is_a_clear_error(tiny_encoder: str) -> None:
    # Precomputed embeddings are enough for a frozen encoder, but tuning must re-encode the texts.
    train = two_block_interactions()
    context = FitContext(items=ItemSide(embeddings=np.eye(N_ITEMS, 8, dtype=np.float32)), log=lambda _m: None)
    with pytest.raises(ValueError, match="lm_finetune needs the item texts"):
        _tuned(tiny_encoder, lm_finetune="top_layers", epochs=1).fit(train, None, context)


def test_a_training_step_scores_with_the_catalog_values_and_trains_the_encoder(tiny_encoder: str) -> None:
    """The rows re-encoded for a step must not differ in value from the other items' (that would tell the
    model which items are the targets), while their gradient reaches the tuned encoder weights."""
    import torch

    from recloop.models.lm_tuning import EncoderTuner

    train = two_block_interactions()
    model = _tuned(tiny_encoder, lm_finetune="top_layers", lm_layers=1, epochs=1, patience=1)
    model.fit(train, None, text_context())
    net = model.net
    tuner = EncoderTuner(EncoderConfig(path=tiny_encoder), ITEM_TEXTS, "top_layers", 1, "cpu")
    mean, std = torch.zeros(32), torch.full((32,), 0.5)
    targets = torch.tensor([3, 5, 5, 12])  # item ids + 1
    text = model._text_with_fresh_rows(net, tuner, targets, mean, std, np.random.default_rng(0))
    assert torch.equal(text.detach(), net.items.text)
    text[[3, 5, 12]].sum().backward()
    grads = [p.grad for p in tuner.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert net.items.text.grad is None


def test_first_epoch_trains_the_network_exactly_as_with_a_frozen_encoder(tiny_encoder: str) -> None:
    """Tuning must not change what the network sees before the first re-encoding: a step's values are the
    table's (fresh values for the targets only would tell the model which items are the targets)."""
    train = two_block_interactions()
    # No randomness in the network (the encoder's own dropout draws would shift its dropout masks).
    # Several steps: the text projection's output layer starts at zero, so the first step's encoder gradient is 0.
    same = {"epochs": 1, "patience": 1, "dropout": 0.0, "id_dropout": 0.0, "lm_lr": 1e-2, "batch_size": 4}
    frozen = _tuned(tiny_encoder, lm_finetune="off", **same).fit(train, None, text_context())
    tuned = _tuned(tiny_encoder, lm_finetune="top_layers", **same).fit(train, None, text_context())
    a, b = frozen.net.state_dict(), tuned.net.state_dict()
    for name in a:
        if name != "items.text":  # re-encoded after the epoch by the (changed) encoder
            np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(b["items.text"].numpy(), a["items.text"].numpy(), atol=1e-3)


@pytest.mark.parametrize("mode", ["top_layers", "lora"])
def test_untrained_tuner_encodes_exactly_like_the_frozen_encoder(tiny_encoder: str, mode: str) -> None:
    # The catalog table starts from the store's embedding cache (TextEncoder output): before any step the
    # tuner must agree with it, or the first re-encoding would move every item for no reason.
    from recloop.models.lm_tuning import EncoderTuner

    tuner = EncoderTuner(EncoderConfig(path=tiny_encoder), ITEM_TEXTS, mode, 1, "cpu")
    frozen = TextEncoder(EncoderConfig(path=tiny_encoder)).encode(ITEM_TEXTS)
    np.testing.assert_allclose(tuner.encode_all().numpy(), frozen, rtol=1e-5, atol=1e-6)
