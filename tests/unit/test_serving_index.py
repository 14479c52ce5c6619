"""Serving building blocks: inner-product views of models, the HNSW index and its recall, slot filling,
API keys and pseudonyms, the `serving` config section."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from recloop.config import ServingAnnConfig, ServingConfig
from recloop.data.interactions import Histories
from recloop.errors import ConfigError
from recloop.eventlog.pseudonym import Pseudonymizer
from recloop.models.base import FitContext, ItemSide
from recloop.serving.catalog import Catalog
from recloop.serving.index import AnnIndex, build_ann_index, exact_top, recall_at
from recloop.serving.rules import Policy, fill_slate
from recloop.serving.security import ApiKeys
from recloop.store import FileStore
from support.serving_helpers import clustered_mf, fit_mf, fit_popularity, make_dataset, publish, running, serving_config

# ---------------------------------------------------------------------------------------------- vector spaces


def test_mf_vector_space_reproduces_model_scores() -> None:
    data = make_dataset()
    model = fit_mf(data)
    space = model.vector_space()
    assert space is not None
    users = np.array([0, 5, 30])
    known = model.train_histories.select(users)
    np.testing.assert_allclose(
        space.encode(known, users) @ space.item_vectors.T, model.score_histories(known, users), rtol=1e-5, atol=1e-6
    )
    adhoc = Histories.from_lists([[1, 2, 3], [20]], model.n_items)
    np.testing.assert_allclose(
        space.encode(adhoc, None) @ space.item_vectors.T, model.score_histories(adhoc), rtol=1e-4, atol=1e-5
    )


def test_text_knn_vector_space_folds_the_popularity_blend_into_one_dimension() -> None:
    from recloop.config.models import TextKNNConfig
    from recloop.models.text_knn import TextKNN

    data = make_dataset()
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((len(data.item_ids), 12)).astype(np.float32)
    model = TextKNN(TextKNNConfig(popularity_blend=0.3)).fit(
        data.train, context=FitContext(items=ItemSide(embeddings=embeddings))
    )
    space = model.vector_space()
    assert space is not None and space.item_vectors.shape == (len(data.item_ids), 13)
    histories = Histories.from_lists([[1, 4, 2], [], [17]], model.n_items)
    np.testing.assert_allclose(
        space.encode(histories, None) @ space.item_vectors.T, model.score_histories(histories), rtol=1e-5, atol=1e-6
    )


def test_sasrec_vector_space_reproduces_model_scores() -> None:
    from recloop.config.models import SASRecConfig
    from recloop.models.sasrec import SASRec

    data = make_dataset(n_users=16, n_items=12, per_user=5)
    model = SASRec(SASRecConfig(dim=16, layers=1, heads=1, max_len=8, epochs=1, device="cpu")).fit(data.train)
    space = model.vector_space()
    assert space is not None
    histories = Histories.from_lists([[1, 2, 3], [7], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], model.n_items)
    np.testing.assert_allclose(
        space.encode(histories, None) @ space.item_vectors.T, model.score_histories(histories), rtol=1e-4, atol=1e-4
    )


def test_models_without_inner_product_scores_have_no_vector_space() -> None:
    assert fit_popularity(make_dataset()).vector_space() is None


# ---------------------------------------------------------------------------------------------- the index


def test_ann_index_reaches_target_recall_is_byte_identical_and_records_it(tmp_path: Path) -> None:
    model = clustered_mf(3000)
    settings = ServingAnnConfig(min_items=1000, ef_search=10, target_recall=0.95, recall_queries=200)
    info = build_ann_index(model, tmp_path / "a", settings)
    again = build_ann_index(model, tmp_path / "b", settings)
    assert info["built"] and info["recall@10"] >= 0.95 and info["target_met"]
    assert again["recall@10"] == info["recall@10"] and again["ef_search"] == info["ef_search"]
    assert info["n_items"] == 3000 and info["dim"] == 16 and info["recall_queries"] == 200
    stored = json.loads((tmp_path / "a/ann/ann.json").read_text())
    assert stored["recall@10"] == info["recall@10"] and stored["ef_search"] == info["ef_search"]
    assert "build_seconds" not in stored  # timings would make re-publishing non-idempotent
    for name in ("ann/index.hnsw", "ann/ann.json"):
        assert (
            hashlib.sha256((tmp_path / "a" / name).read_bytes()).digest()
            == hashlib.sha256((tmp_path / "b" / name).read_bytes()).digest()
        )
    # Re-measure recall independently of the build's own bookkeeping.
    index = AnnIndex.load(tmp_path / "a")
    assert index is not None
    space = model.vector_space()
    users = np.arange(100, 200)
    queries = space.encode(model.train_histories.select(users), users)
    approx = index.search(queries, 10)
    assert recall_at(approx, exact_top(queries, space.item_vectors, 10)) >= 0.9


def test_ann_index_is_skipped_when_not_useful(tmp_path: Path) -> None:
    small = build_ann_index(clustered_mf(500), tmp_path, ServingAnnConfig(min_items=1000))
    assert small == {"built": False, "reason": "500 items is below serving.ann.min_items (1000); exact search is used"}
    popular = build_ann_index(fit_popularity(make_dataset()), tmp_path, ServingAnnConfig(min_items=1))
    assert not popular["built"] and "not inner products" in popular["reason"]
    assert not build_ann_index(clustered_mf(500), tmp_path, ServingAnnConfig(enabled=False))["built"]
    assert not (tmp_path / "ann").exists()
    assert AnnIndex.load(tmp_path) is None


def test_server_uses_the_bundles_index_or_builds_one_at_load(tmp_path: Path) -> None:
    data = make_dataset(n_users=300, n_items=40)
    model = clustered_mf(3000, n_users=300)
    data.item_ids = [f"item-{i}" for i in range(3000)]
    data.user_ids = [f"user-{u}" for u in range(300)]
    data.items = pd.DataFrame(
        {
            "item_idx": range(3000),
            "item_id": data.item_ids,
            "text": data.item_ids,
            "categories": [[] for _ in range(3000)],
        }
    )
    store = FileStore(f"file://{tmp_path / 'store'}")
    ann = ServingAnnConfig(min_items=1000, recall_queries=100)
    publish(store, model, data, tmp_path, "with-index", bundle_hook=lambda m, b: build_ann_index(m, b, ann))
    settings = serving_config(ann={"min_items": 1000, "recall_queries": 100})
    exact = model.recommend(users=np.arange(20), k=10)
    with running(store, settings) as server:
        info = httpx.get(f"{server.url}/v1/model").json()
        assert info["search"] == "ann" and info["ann"]["source"] == "bundle" and info["ann"]["recall@10"] >= 0.95
        found = []
        for u in range(20):
            body = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": f"user-{u}", "k": 10}).json()
            assert body["search"] == "ann"
            scores = [i["score"] for i in body["items"]]
            assert scores == sorted(scores, reverse=True)
            found.append([int(i["item_id"].split("-")[1]) for i in body["items"]])
        assert recall_at(np.array(found), exact.ids) >= 0.9
        publish(store, model, data, tmp_path, "without-index")  # v2: no index in the bundle
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz").json()["version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = httpx.get(f"{server.url}/v1/model").json()
        assert info["search"] == "ann" and info["ann"]["source"] == "built_at_load"
        assert info["ann"]["recall@10"] >= 0.95


# ---------------------------------------------------------------------------------------------- slot filling


def _catalog(categories: list[list[str]]) -> Catalog:
    names: dict[str, int] = {}
    ids, indptr = [], [0]
    for cats in categories:
        ids += [names.setdefault(c, len(names)) for c in cats]
        indptr.append(len(ids))
    n = len(categories)
    return Catalog(
        [str(i) for i in range(n)],
        {str(i): i for i in range(n)},
        None,
        list(names),
        np.array(indptr),
        np.array(ids, np.int32),
        names,
    )


def test_fill_slate_category_cap_and_mmr() -> None:
    catalog = _catalog([["a"], ["a"], ["b"], ["a", "b"], ["c"]])
    pool = np.arange(5)
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    greedy = fill_slate(pool, scores, Policy(3, None, None, 0.0), catalog, None, None)
    assert greedy.positions.tolist() == [0, 1, 2] and greedy.propensities.tolist() == [1.0, 1.0, 1.0]
    capped = fill_slate(pool, scores, Policy(4, 1, None, 0.0), catalog, None, None)
    assert capped.positions.tolist() == [0, 2, 4]  # 1 and 3 would repeat "a" / "b"
    sims = np.array([[1, 0.9, 0, 0, 0], [0.9, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1.0]])
    mmr = fill_slate(pool, scores, Policy(3, None, 0.5, 0.0), catalog, lambda p: sims[np.ix_(p, p)], None)
    # Relevance scales to [1, .75, .5, .25, 0]. After item 0: item 1 scores .5*.75 - .5*.9 = -.075, item 2
    # .25, item 3 .125; after item 2 as well, item 3 (.125) still beats item 4 (0) and item 1.
    assert mmr.positions.tolist() == [0, 2, 3]


def test_fill_slate_epsilon_greedy_propensities() -> None:
    catalog = _catalog([[] for _ in range(10)])
    pool, scores = np.arange(10), np.linspace(1, 0, 10)
    rng = np.random.default_rng(3)
    filled = fill_slate(pool, scores, Policy(4, None, None, 0.2), catalog, None, rng)
    for slot, (pos, prop) in enumerate(zip(filled.positions, filled.propensities)):
        chosen_before = set(filled.positions[:slot].tolist())
        greedy = min(set(range(10)) - chosen_before)
        uniform = 0.2 / (10 - slot)
        assert prop == pytest.approx((0.8 + uniform) if pos == greedy else uniform)


# ---------------------------------------------------------------------------------------------- security & config


def test_api_keys_are_kept_hashed_and_checked() -> None:
    digest = hashlib.sha256(b"second-key-0123456789").hexdigest()
    keys = ApiKeys.parse(f" first-key-0123456789 , sha256:{digest.upper()} ,", "env")
    assert keys.digests == {hashlib.sha256(b"first-key-0123456789").hexdigest(), digest}
    assert keys.check("first-key-0123456789") and keys.check("second-key-0123456789")
    assert not keys.check("first-key-012345678") and not keys.check(None) and not keys.check("")
    assert not ApiKeys.parse(None, "env").configured
    with pytest.raises(ConfigError) as err:
        ApiKeys.parse("short,sha256:abc", "RECLOOP_API_KEYS")
    assert "entry 1: API keys must have at least 16 characters (this one has 5)" in str(err.value)
    assert "entry 2: a `sha256:` entry must hold 64 hex digits" in str(err.value)
    assert "short" not in str(err.value).replace("short,", "")


def test_pseudonyms_are_keyed_hmacs() -> None:
    import hmac

    p = Pseudonymizer("k" * 16, "test")
    expected = "u_" + hmac.new(b"k" * 16, b"user-1", hashlib.sha256).hexdigest()[:32]
    assert p("user-1") == expected and p(None) is None
    assert p("user-1", "session") != p("user-1") and p("user-1", "session").startswith("s_")
    assert Pseudonymizer("j" * 16, "test")("user-1") != expected
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Pseudonymizer("short", "RECLOOP_USER_HMAC_KEY")


def test_serving_config_validation() -> None:
    from pydantic import ValidationError

    cfg = ServingConfig()
    assert (cfg.limits.max_k, cfg.fallback.policy, cfg.ann.min_items, cfg.cors_origins) == (100, "popular", 50000, [])
    for bad in (
        {"limits": {"default_k": 50, "max_k": 10}},
        {"limits": {"id_pattern": "("}},
        {"rules": {"mmr_lambda": 1.5}},
        {"fallback": {"policy": "random"}},
        {"poll_interval": "1ms"},
        {"logs": {"prefix": "../x"}},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            ServingConfig.model_validate(bad)
