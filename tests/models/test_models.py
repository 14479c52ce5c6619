"""Baseline models: the shared contract for each, plus each model's own maths checked against references."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from recloop.data.interactions import Histories, Interactions
from recloop.errors import ConfigError
from recloop.models import registry
from recloop.models.base import FitContext
from recloop.models.early_stopping import EarlyStopping, ndcg_at_k, validation_ndcg
from support.model_contract import ModelContract, held_out_interactions, two_block_interactions
from support.paths import TESTS

DAY = 86_400


# ---------------------------------------------------------------------------------------------- contracts


class TestPopularityContract(ModelContract):
    model_type = "popularity"
    params = {}
    personalized = False


class TestPopularityWindowContract(ModelContract):
    model_type = "popularity"
    params = {"window": "365d", "half_life": "30d"}
    personalized = False


class TestItemKNNContract(ModelContract):
    model_type = "itemknn"
    capabilities = frozenset({"item_weights"})
    params = {"neighbours": 5, "shrinkage": 1.0}


class TestItemKNNBm25Contract(ModelContract):
    model_type = "itemknn"
    capabilities = frozenset({"item_weights"})
    params = {"neighbours": 5, "weighting": "bm25", "block_size": 16}


class TestEaseContract(ModelContract):
    model_type = "ease"
    capabilities = frozenset({"item_vectors", "item_weights"})
    params = {"lambda": 1.0}


class TestMFContract(ModelContract):
    model_type = "mf"
    capabilities = frozenset({"item_vectors", "vector_space"})
    params = {"factors": 4, "epochs": 12, "regularization": 1.0, "alpha": 5.0}


class TestMFCholeskyContract(ModelContract):
    model_type = "mf"
    capabilities = frozenset({"item_vectors", "vector_space"})
    params = {"factors": 4, "epochs": 6, "solver": "cholesky", "regularization": 1.0, "alpha": 5.0}


def _contract_types() -> set[str]:
    """model_type of every ModelContract subclass defined in a test module anywhere under tests/."""
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.stem not in sys.modules and "ModelContract" in path.read_text(encoding="utf-8"):
            _import_test_module(path)
    found: set[str] = set()
    pending = list(ModelContract.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.model_type and cls.__name__.startswith("Test"):
            found.add(cls.model_type)
    return found


def _import_test_module(path: Path) -> None:
    # Under the name pytest's default import mode gives it (the file's stem), so collection reuses it.
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)


def test_every_registered_model_has_a_contract() -> None:
    # Built-in models only: test modules may register throw-away model types of their own.
    builtin = {t for t in registry.available() if registry.get(t).__module__.startswith("recloop.")}
    missing = builtin - _contract_types()
    assert not missing, (
        f"model types without a ModelContract test class: {sorted(missing)}; add "
        "`class TestXContract(ModelContract): model_type = ...` to their test module"
    )


def test_builtin_baselines_are_registered() -> None:
    assert {"popularity", "itemknn", "ease", "mf"} <= set(registry.available())


# ---------------------------------------------------------------------------------------------- validation metric


def _fixed_scores(matrix: np.ndarray):
    return lambda histories, users: matrix[users]


def test_ndcg_matches_hand_computed_values() -> None:
    scores = np.array([[9, 5, 4, 3, 1], [5, 4, 3, 2, 1]], dtype=np.float32)
    histories = Histories.from_lists([[0], []], 5)
    targets = Interactions.from_arrays([0, 1, 1], [2, 3, 4], n_users=2, n_items=5)
    # user 0: item 0 is seen, so item 2 ranks 2nd; user 1: items 3 and 4 rank 4th and 5th.
    user0 = 1 / math.log2(3)
    user1 = (1 / math.log2(5) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(_fixed_scores(scores), histories, targets, k=10) == pytest.approx((user0 + user1) / 2)
    # At k=1 neither user has a hit.
    assert ndcg_at_k(_fixed_scores(scores), histories, targets, k=1) == 0.0
    # Batching does not change the result.
    assert ndcg_at_k(_fixed_scores(scores), histories, targets, k=10, batch_size=1) == pytest.approx(
        (user0 + user1) / 2
    )


def test_ndcg_ignores_targets_already_in_the_history() -> None:
    scores = np.array([[1, 9, 8]], dtype=np.float32)
    histories = Histories.from_lists([[0]], 3)
    # Item 0 is a target but was seen: it cannot be recommended, so only item 2 counts (rank 2).
    targets = Interactions.from_arrays([0, 0], [0, 2], n_users=1, n_items=3)
    assert ndcg_at_k(_fixed_scores(scores), histories, targets) == pytest.approx(1 / math.log2(3))
    only_seen = Interactions.from_arrays([0], [0], n_users=1, n_items=3)
    assert ndcg_at_k(_fixed_scores(scores), histories, only_seen) == 0.0


def test_early_stopping_patience() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.1, 1) and stopper.update(0.2, 2)
    assert not stopper.update(0.2, 3) and not stopper.should_stop
    assert not stopper.update(0.15, 4) and stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.2, 2)


def test_early_stopping_patience_grows_with_the_checks_to_the_best() -> None:
    # Best at the 6th check: growth 1.0 waits 6 checks without a gain (not the fixed 2).
    stopper = EarlyStopping(patience=2, growth=1.0)
    for epoch in range(1, 7):
        assert stopper.update(0.1 * epoch, epoch)
    for epoch in range(7, 12):
        assert not stopper.update(0.3, epoch) and not stopper.should_stop, epoch
    assert not stopper.update(0.3, 12) and stopper.should_stop
    assert (stopper.best_epoch, stopper.current_patience) == (6, 6)
    # Early in training the fixed patience still applies (max of the two).
    early = EarlyStopping(patience=2, growth=1.0)
    assert early.update(0.1, 1) and not early.update(0.0, 2) and not early.should_stop
    assert not early.update(0.0, 3) and early.should_stop and early.current_patience == 2


# ---------------------------------------------------------------------------------------------- popularity


def _build(model_type: str, **params):
    cls = registry.get(model_type)
    return cls(cls.config_cls.model_validate({"type": model_type, **params}))


def test_popularity_counts_all_time() -> None:
    train = Interactions.from_arrays([0, 1, 0, 1, 2, 3], [0, 0, 1, 2, 2, 2], n_items=4)
    model = _build("popularity").fit(train)
    np.testing.assert_array_equal(model.item_scores, [2, 1, 3, 0])
    recs = model.recommend(users=[0], k=3)
    assert recs.ids[0].tolist() == [2, 3, -1]  # 0 and 1 were seen; item 3 (score 0) is still ranked


def test_popularity_window_and_decay_are_relative_to_the_latest_event() -> None:
    ts = np.array([0, 10, 25, 29, 30]) * DAY
    train = Interactions.from_arrays([0, 1, 2, 3, 4], [0, 0, 1, 1, 2], ts, n_items=3)
    windowed = _build("popularity", window="7d").fit(train)
    np.testing.assert_array_equal(windowed.item_scores, [0, 2, 1])  # day 0 and 10 fall outside
    decayed = _build("popularity", half_life="10d").fit(train)
    expected = [2**-3 + 2**-2, 2**-0.5 + 2**-0.1, 1.0]
    np.testing.assert_allclose(decayed.item_scores, expected, rtol=1e-6)


def test_popularity_sums_weights_on_request() -> None:
    train = Interactions.from_arrays([0, 1, 2], [0, 1, 1], weight=[5.0, 1.0, 1.0], n_items=2)
    assert _build("popularity").fit(train).item_scores.tolist() == [1, 2]
    assert _build("popularity", use_weights=True).fit(train).item_scores.tolist() == [5, 2]


@pytest.mark.parametrize("params", [{"window": "0d"}, {"window": "soon"}, {"half_life": -5}])
def test_popularity_rejects_bad_durations(params) -> None:
    with pytest.raises(ValidationError):
        _build("popularity", **params)


# ---------------------------------------------------------------------------------------------- item-kNN


def _three_item_train() -> Interactions:
    # Items as user columns: i0 = [1,1,0], i1 = [1,1,1], i2 = [0,1,1].
    return Interactions.from_arrays([0, 0, 1, 1, 1, 2, 2], [0, 1, 0, 1, 2, 1, 2], n_users=3, n_items=3)


def test_itemknn_shrunk_cosine_and_top_k() -> None:
    model = _build("itemknn", neighbours=2, shrinkage=1.0).fit(_three_item_train())
    s01 = 2 / (math.sqrt(6) + 1)
    s02 = 1 / (2 + 1)
    expected = np.array([[0, s01, s02], [s01, 0, s01], [s02, s01, 0]])
    np.testing.assert_allclose(model.similarity.toarray(), expected, rtol=1e-6)
    # One neighbour each: item 1's tie between 0 and 2 goes to the lower id.
    single = _build("itemknn", neighbours=1, shrinkage=1.0).fit(_three_item_train())
    np.testing.assert_allclose(single.similarity.toarray(), [[0, s01, 0], [s01, 0, 0], [0, s01, 0]], rtol=1e-6)
    scores = single.score_histories(Histories.from_lists([[0, 2]], 3))
    np.testing.assert_allclose(scores, [[0, 2 * s01, 0]], rtol=1e-6)
    assert single.similar_items([0], k=2).ids.tolist() == [[1, -1]]


def test_itemknn_idf_silences_users_who_touch_everything() -> None:
    # User 0 touched every item; users 1 and 2 link items 0-1 only.
    train = Interactions.from_arrays([0, 0, 0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 0, 1, 0, 1], n_users=3, n_items=4)
    plain = _build("itemknn", shrinkage=0.0).fit(train).similarity.toarray()
    idf = _build("itemknn", shrinkage=0.0, weighting="idf").fit(train).similarity.toarray()
    assert plain[2, 3] == pytest.approx(1.0)
    assert idf[2, 3] == 0.0 and idf[0, 2] == 0.0
    assert idf[0, 1] == pytest.approx(1.0)


def test_itemknn_block_size_does_not_change_the_model() -> None:
    rng = np.random.default_rng(3)
    train = Interactions.from_arrays(rng.integers(0, 30, 400), rng.integers(0, 50, 400), n_users=30, n_items=50)
    small = _build("itemknn", neighbours=7, block_size=16).fit(train).similarity
    large = _build("itemknn", neighbours=7, block_size=4096).fit(train).similarity
    np.testing.assert_allclose(small.toarray(), large.toarray(), rtol=1e-6)
    assert (np.diff(small.indptr) <= 7).all()


# ---------------------------------------------------------------------------------------------- EASE


def test_ease_matches_the_closed_form() -> None:
    rng = np.random.default_rng(5)
    train = Interactions.from_arrays(rng.integers(0, 60, 500), rng.integers(0, 45, 500), n_users=60, n_items=45)
    model = _build("ease", **{"lambda": 7.5}).fit(train)
    x = train.to_csr(binary=True).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 7.5 * np.eye(45))
    b = np.eye(45) - p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    assert model.weights.dtype == np.float32
    np.testing.assert_allclose(model.weights, b, atol=1e-6)
    hist = Histories.from_lists([[1, 2, 3]], 45)
    np.testing.assert_allclose(model.score_histories(hist), b[[1, 2, 3]].sum(axis=0, keepdims=True), atol=1e-5)


def test_ease_lambda_alias_and_range() -> None:
    cls = registry.get("ease").config_cls
    assert cls.model_validate({"type": "ease", "lambda": 50}).l2 == 50
    assert cls.model_validate({"type": "ease"}).l2 == 200
    with pytest.raises(ValidationError, match="greater than 0"):
        cls.model_validate({"type": "ease", "lambda": 0})


def test_ease_refuses_a_catalog_too_large_for_dense_matrices() -> None:
    train = Interactions.from_arrays([0, 1], [0, 1], n_users=2, n_items=30_000)
    with pytest.raises(ConfigError, match=r"30000 items.*max_items=20000.*GB.*itemknn / mf"):
        _build("ease").fit(train)


# ---------------------------------------------------------------------------------------------- MF (iALS)


def test_mf_cg_converges_to_the_exact_least_squares_solution() -> None:
    from recloop.models.mf import _solve_cg, _solve_exact

    rng = np.random.default_rng(0)
    conf = sp.random(40, 30, density=0.2, random_state=1, format="csr", dtype=np.float32) * 5
    fixed = rng.standard_normal((30, 6)).astype(np.float32)
    exact = _solve_exact(conf, fixed, 0.1)
    # Reference: one dense solve per row of (Y^T C_u Y + reg I) x = Y^T C_u p_u.
    dense_conf = conf.toarray().astype(np.float64)
    y = fixed.astype(np.float64)
    for u in range(40):
        c = 1.0 + dense_conf[u]
        a = (y.T * c) @ y + 0.1 * np.eye(6)
        b = y.T @ (c * (dense_conf[u] > 0))
        np.testing.assert_allclose(exact[u], np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
    cg = _solve_cg(conf, fixed, np.zeros((40, 6), np.float32), 0.1, steps=12)
    np.testing.assert_allclose(cg, exact, atol=1e-3)


def test_mf_exact_als_never_increases_the_loss() -> None:
    train = two_block_interactions()
    losses: list[float] = []
    context = FitContext(progress=lambda phase, frac, metrics: losses.append(metrics["loss"]), log=lambda m: None)
    _build("mf", factors=6, epochs=6, solver="cholesky").fit(train, None, context)
    assert len(losses) == 6
    assert all(later <= earlier + 1e-9 for earlier, later in zip(losses, losses[1:]))


def test_mf_early_stopping_keeps_the_best_epoch() -> None:
    train = two_block_interactions()
    valid = held_out_interactions(train)
    reported: list[dict[str, float]] = []
    context = FitContext(progress=lambda phase, frac, metrics: reported.append(metrics), log=lambda m: None)
    model = _build("mf", factors=8, epochs=60, patience=2, regularization=0.1).fit(train, valid, context)
    assert model.epochs_trained < 60  # stopped early
    assert [m["epoch"] for m in reported] == list(range(1, model.epochs_trained + 1))
    best = max(m["valid_ndcg@10"] for m in reported)
    assert model.best_valid_ndcg == pytest.approx(best)
    assert reported[model.best_epoch - 1]["valid_ndcg@10"] == pytest.approx(best)
    # The restored weights are the best epoch's, not the last one's.
    assert validation_ndcg(model, valid) == pytest.approx(best)


def test_mf_fold_in_solves_against_the_item_factors() -> None:
    from recloop.models.mf import _solve_exact

    train = two_block_interactions()
    model = _build("mf", factors=8, epochs=5).fit(train)
    hist = Histories.from_lists([[0, 1, 2]], train.n_items)
    conf = sp.csr_matrix(([10.0, 10.0, 10.0], [0, 1, 2], [0, 3]), shape=(1, train.n_items), dtype=np.float32)
    np.testing.assert_allclose(model.fold_in(hist), _solve_exact(conf, model.item_factors, 0.05), rtol=1e-6)
    assert model.similar_items([0], k=3).ids.shape == (1, 3)


def test_mf_known_users_with_newer_events_are_folded_in() -> None:
    train = two_block_interactions()
    model = _build("mf", factors=8, epochs=5).fit(train)
    users = np.array([0, 1, 30])
    unchanged = train.histories().select(users)
    np.testing.assert_allclose(
        model.score_histories(unchanged, users), model.user_factors[users] @ model.item_factors.T, rtol=1e-6
    )
    # User 1 gained one newer event (as in evaluation on train + valid): only that row is folded in.
    grown = Histories.from_lists([unchanged.row(0), np.append(unchanged.row(1), 7), unchanged.row(2)], train.n_items)
    scores = model.score_histories(grown, users)
    np.testing.assert_allclose(scores[[0, 2]], model.user_factors[[0, 30]] @ model.item_factors.T, rtol=1e-6)
    expected = model.fold_in(grown.select([1])) @ model.item_factors.T
    np.testing.assert_allclose(scores[1], expected[0], atol=1e-6)
    assert not np.allclose(scores[1], model.user_factors[1] @ model.item_factors.T, rtol=1e-3)


@pytest.mark.parametrize("params", [{"factors": 0}, {"solver": "sgd"}, {"regularization": 0}, {"epochs": 0}])
def test_mf_rejects_bad_parameters(params) -> None:
    with pytest.raises(ValidationError):
        _build("mf", **params)
