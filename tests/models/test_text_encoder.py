"""TextEncoder loads the packaged MiniLM offline, matches sentence-transformers, and caches by text hash."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.config.models import EncoderConfig
from recloop.errors import ConfigError
from recloop.models.text_encoder import EmbeddingCache, TextEncoder, text_hashes
from recloop.store import FileStore


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(EncoderConfig(batch_size=8))


def test_embeddings_are_normalized_and_deterministic(encoder):
    texts = ["A space opera about star pirates.", "Slow jazz for a rainy evening.", ""]
    a = encoder.encode(texts)
    b = encoder.encode(list(reversed(texts)))[::-1]
    assert a.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # Batch order (length sorting) must not change any text's embedding.
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_similar_texts_are_closer_than_unrelated(encoder):
    v = encoder.encode(["galaxy spaceship battle", "starship war in outer space", "baking sourdough bread"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


@pytest.mark.slow
def test_matches_sentence_transformers_reference(encoder):
    from sentence_transformers import SentenceTransformer

    from recloop.models.text_encoder import resolve_model_dir

    texts = ["The Matrix (1999). Genres: Action, Sci-Fi", "Toy Story (1995)", "x " * 400]
    reference = SentenceTransformer(str(resolve_model_dir(encoder.cfg)), device="cpu")
    np.testing.assert_allclose(encoder.encode(texts), reference.encode(texts), atol=1e-5)


def test_cache_embeds_only_new_texts(tmp_path, encoder):
    store = FileStore(f"file://{tmp_path}")
    texts = ["alpha", "beta", "gamma", "beta"]
    first, n_new = EmbeddingCache(store, encoder.model_id).embed(texts, encoder)
    assert n_new == 3  # "beta" twice is encoded once
    # A new cache object (a later run) finds the stored parts and encodes only the changed text.
    second, n_new = EmbeddingCache(store, encoder.model_id).embed(["alpha", "beta", "delta"], encoder)
    assert n_new == 1
    np.testing.assert_array_equal(second[:2], first[:2])
    assert len(store.list("cache/embeddings")) == 2


def test_a_corrupt_cache_part_is_re_embedded_but_store_errors_surface(tmp_path, encoder):
    from recloop.errors import StoreError

    store = FileStore(f"file://{tmp_path}")
    EmbeddingCache(store, encoder.model_id).embed(["alpha", "beta"], encoder)
    (part,) = store.list("cache/embeddings")
    store.put_bytes(part, b"not safetensors")
    _, n_new = EmbeddingCache(store, encoder.model_id).embed(["alpha", "beta"], encoder)
    assert n_new == 2  # the undecodable part is ignored, its texts embedded again

    class UnreachableStore(FileStore):
        def get_bytes(self, key: str) -> bytes:
            raise StoreError(f"get {self.uri(key)} failed after 5 attempt(s) in 61 s (not answering)")

    with pytest.raises(StoreError, match="not answering"):
        EmbeddingCache(UnreachableStore(f"file://{tmp_path}"), encoder.model_id).embed(["alpha"], encoder)


def test_text_hashes_are_sha256():
    h = text_hashes(["abc"])
    assert h.shape == (1, 32)
    assert h[0].tobytes().hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_bad_model_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        TextEncoder(EncoderConfig(path=str(tmp_path)))
    assert "encoder.path" in str(err.value) and "config.json" in str(err.value)


def test_missing_package_says_how_to_install():
    with pytest.raises(ConfigError) as err:
        TextEncoder(EncoderConfig(package="no-such-model-pkg"))
    assert "pip install no-such-model-pkg" in str(err.value)


def test_cuda_without_a_cuda_device_names_the_encoder_key(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        TextEncoder(EncoderConfig(device="cuda"))
    assert err.value.errors == ["encoder.device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'"]


def test_batches_follow_token_lengths_with_bounded_padding():
    from recloop.models.text_encoder import _length_batches

    # 20 texts of mixed length (an incremental re-embed): padding all to 30 tokens would cost 600 token
    # slots for 380 real tokens; cut where the waste passes 1.25x, it is two batches of 180 + 266 slots.
    lengths = np.array([30, 25, 24, 23, 22, 20, 19, 19, 18, 17, 17, 17, 16, 16, 16, 15, 15, 15, 14, 14])
    order = np.arange(len(lengths))
    batches = _length_batches(order, lengths, batch_size=64)
    assert [b.tolist() for b in batches] == [list(range(6)), list(range(6, 20))]
    # Equal lengths: full batches of batch_size; every row exactly once, in order.
    same = _length_batches(np.arange(130), np.full(130, 12), batch_size=64)
    assert [len(b) for b in same] == [64, 64, 2]
    assert np.concatenate(same).tolist() == list(range(130))


def test_encoding_does_not_depend_on_batching(encoder):
    texts = [
        "A short one.",
        "A much longer text about space operas, starships and galaxy-spanning wars.",
        "Baking bread",
        "x",
    ] * 5
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts[:4]])
    np.testing.assert_allclose(together[:4], alone, atol=1e-5)


# ---------------------------------------------------------------------------------------------- pooling

POOLING_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
POOLING_TEXTS = ["A space opera about star pirates and their long war.", "Slow jazz", "x"]


def _with_pooling(tiny_encoder: str, folder, flags: dict) -> str:
    """A copy of the tiny encoder whose 1_Pooling/config.json holds `flags` (plus the embedding size)."""
    import json
    import shutil

    shutil.copytree(tiny_encoder, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
    return str(folder)


def _hand_pooled(hidden: np.ndarray, mode: str) -> np.ndarray:
    """One unpadded text's (tokens, dim) hidden states pooled as sentence-transformers defines each mode."""
    positions = np.arange(1, len(hidden) + 1, dtype=np.float64)[:, None]
    return {
        "mean": hidden.mean(axis=0),
        "cls": hidden[0],
        "max": hidden.max(axis=0),
        "mean_sqrt_len": hidden.sum(axis=0) / np.sqrt(len(hidden)),
        "weightedmean": (hidden * positions).sum(axis=0) / positions.sum(),
        "lasttoken": hidden[-1],
    }[mode]


@pytest.mark.parametrize("mode", sorted(POOLING_FLAGS))
def test_every_pooling_mode_the_folder_asks_for_is_the_one_applied(tiny_encoder, tmp_path, mode):
    import torch

    folder = _with_pooling(tiny_encoder, tmp_path / mode, {POOLING_FLAGS[mode]: True})
    encoder = TextEncoder(EncoderConfig(path=folder, normalize=False))
    assert encoder.pooling.mode == mode
    # Batched (padded to the longest text) must equal each text pooled alone by hand.
    got = encoder.encode(POOLING_TEXTS)
    for row, text in enumerate(POOLING_TEXTS):
        with torch.inference_mode():
            hidden = encoder.model(**encoder.tokenizer([text], return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(got[row], _hand_pooled(hidden.double().numpy(), mode), rtol=1e-4, atol=1e-5)


def test_pooling_modes_give_different_embeddings(tiny_encoder, tmp_path):
    pooled = {
        mode: TextEncoder(
            EncoderConfig(path=_with_pooling(tiny_encoder, tmp_path / mode, {flag: True}), normalize=False)
        ).encode(POOLING_TEXTS[:1])[0]
        for mode, flag in POOLING_FLAGS.items()
    }
    modes = sorted(pooled)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert not np.allclose(pooled[a], pooled[b], atol=1e-4), f"{a} and {b} pool alike"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (
            {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
            "concatenates several pooling modes (pooling_mode_mean_tokens, pooling_mode_max_tokens)",
        ),
        ({"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": False}, "sets no pooling mode"),
        (
            {"pooling_mode_median_tokens": True},
            "sets pooling_mode_median_tokens, a pooling mode recloop does not implement",
        ),
    ],
)
def test_pooling_configs_the_encoder_cannot_follow_are_refused(tiny_encoder, tmp_path, flags, problem):
    folder = _with_pooling(tiny_encoder, tmp_path / "folder", flags)
    with pytest.raises(ConfigError) as err:
        TextEncoder(EncoderConfig(path=folder))
    message = str(err.value)
    assert f"encoder.path: {folder}/1_Pooling/config.json {problem}" in message
    assert "pooling_mode_lasttoken" in message  # the supported modes are listed


def test_missing_pooling_config_is_refused(tiny_encoder, tmp_path):
    import shutil

    shutil.copytree(tiny_encoder, tmp_path / "folder")
    (tmp_path / "folder" / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"encoder.path: .*1_Pooling/config.json is missing"):
        TextEncoder(EncoderConfig(path=str(tmp_path / "folder")))


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(POOLING_FLAGS))
def test_pooling_matches_sentence_transformers(tiny_encoder, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    folder = _with_pooling(tiny_encoder, tmp_path / mode, {POOLING_FLAGS[mode]: True})
    reference = SentenceTransformer(folder, device="cpu")
    np.testing.assert_allclose(
        TextEncoder(EncoderConfig(path=folder)).encode(POOLING_TEXTS), reference.encode(POOLING_TEXTS), atol=1e-5
    )
