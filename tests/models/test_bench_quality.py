"""bench/quality.py's cold-start machinery: the validation proxy never sees test data, ranks and checks."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from recloop.data.interactions import Histories, Interactions
from support.paths import REPO

BENCH = REPO / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _data(n_users: int = 40, n_items: int = 30, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 6)
    items = np.concatenate([rng.choice(n_items, 6, replace=False) for _ in range(n_users)])
    ts = np.arange(len(users), dtype=np.int64)
    last = np.r_[np.diff(users) != 0, True]  # each user's last event is the validation event
    train = Interactions.from_arrays(users[~last], items[~last], ts[~last], None, n_users, n_items)
    valid = Interactions.from_arrays(users[last], items[last], ts[last], None, n_users, n_items)
    return SimpleNamespace(train=train, valid=valid, n_items=n_items, n_users=n_users)


def test_cold_proxy_drops_its_items_from_train_and_targets_only_them(quality) -> None:
    data = _data()
    proxy = quality.cold_proxy(data, share=0.2, seed=1)
    warm = np.unique(data.train.item)
    in_train = np.unique(proxy.train.item)
    proxy_items = np.setdiff1d(warm, in_train)
    assert len(proxy_items) == round(0.2 * len(warm))
    # Every target is a proxy item; every validation event on a proxy item is a target, none elsewhere.
    assert np.isin(proxy.targets, proxy_items).all()
    on_proxy = np.isin(data.valid.item, proxy_items)
    assert sorted(proxy.users.tolist()) == sorted(data.valid.user[on_proxy].tolist())
    assert not np.isin(proxy.warm_valid.item, proxy_items).any()
    assert len(proxy.warm_valid) + len(proxy.targets) == len(data.valid)
    # Histories hold the proxy-train events only (what the model was fitted on).
    for row, user in enumerate(proxy.users):
        assert not np.isin(proxy.histories.row(row), proxy_items).any()
        assert len(proxy.histories.row(row)) == int((proxy.train.user == user).sum())
    # Same seed, same proxy.
    again = quality.cold_proxy(data, share=0.2, seed=1)
    np.testing.assert_array_equal(again.targets, proxy.targets)


def test_ranks_count_better_unseen_items_only(quality) -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.3, 0.1]], dtype=np.float32)
    histories = Histories.from_lists([[0], [1]], 4)  # the best item of each row was seen: it does not count
    ranks = quality._ranks(scores, histories, np.array([2, 0]))
    assert ranks.tolist() == [1, 1]  # row 0: only item 3 (0.7) beats 0.5; row 1: only item 2 (0.3) beats 0.2


def _cold(quality, label: str, ndcg10: list[float], ndcg100: list[float]):
    per_user = {"ndcg@10": np.array(ndcg10), f"ndcg@{quality.COLD_DEPTH}": np.array(ndcg100)}
    return quality.ColdResult(
        label,
        {},
        {"ndcg@10": 0.0},
        {k: float(v.mean()) for k, v in per_user.items()},
        len(ndcg10),
        0.0,
        0.0,
        float("nan"),
        per_user,
    )


def test_cold_check_needs_a_significant_deep_lead(quality) -> None:
    n = 60
    strong = _cold(quality, "text_sasrec", [0.0] * (n - 2) + [1.0, 0.5], [0.3] * n)
    weak = _cold(quality, "text_knn", [0.0] * n, [0.0] * n)
    targets = quality.check_language_models({}, {"text_sasrec": strong, "text_knn": weak})
    assert [t.met for t in targets] == [True, True, True]
    # Ahead by one lucky user at depth 100: not significant, and the line says so.
    lucky = _cold(quality, "text_sasrec", [0.0] * (n - 1) + [1.0], [0.0] * (n - 1) + [1.0])
    missed = [
        t.line() for t in quality.check_language_models({}, {"text_sasrec": lucky, "text_knn": weak}) if not t.met
    ]
    assert len(missed) == 1 and missed[0].startswith(
        f"target cold-start items: text_sasrec's ndcg@{quality.COLD_DEPTH} lead over text_knn significant: MISSED"
    )
    # Behind: each line names the metric and both values.
    lines = [t.line() for t in quality.check_language_models({}, {"text_sasrec": weak, "text_knn": strong})]
    assert "target cold-start items: text_sasrec ndcg@10 > text_knn's: MISSED (0.0000 vs 0.0250, -100.0%)" in lines
    assert (
        f"target cold-start items: text_sasrec ndcg@{quality.COLD_DEPTH} > text_knn's: MISSED (0.0000 vs 0.3000, -100.0%)"
        in lines
    )
