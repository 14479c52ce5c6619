"""TextEncoder loads the packaged MiniLM offline, matches sentence-transformers, and caches by text hash."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.errors import ConfigError
from recloop.config.models import EncoderConfig
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
    texts = ["A short one.", "A much longer text about space operas, starships and galaxy-spanning wars.",
             "Baking bread", "x"] * 5
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts[:4]])
    np.testing.assert_allclose(together[:4], alone, atol=1e-5)
