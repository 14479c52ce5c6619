"""The bandit policy: features, exact propensities, learning, persistence, and training from logs through the
feedback step (pool reconstruction from the registry, off-policy gate, policy alias)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recloop.config import PolicyConfig
from recloop.errors import ArtifactError
from recloop.policy.bandit import LinUCBPolicy
from recloop.policy.features import ACTIVITY_CAP, FeatureSpace
from recloop.steps.base import run_step
from support.feedback_helpers import event, slate, write_logs
from support.helpers import make_config, make_context
from support.policy_helpers import publish_popularity


def space(categories: int = 0) -> FeatureSpace:
    return FeatureSpace.build(["a", "b", "c", "d"], np.array([0, 3, 7, 1]), [["x"], ["y"], ["x", "z"], []], categories)


def policy_with_theta(theta: list[float], **cfg: Any) -> LinUCBPolicy:
    """A policy whose regression weights are exactly `theta` (A = I, b = theta) and no confidence bonus."""
    p = LinUCBPolicy(PolicyConfig(ridge=1.0, alpha=0.0, **cfg), space())
    p.b = np.asarray(theta, float)
    return p


def score_features(values: list[float]) -> np.ndarray:
    """Feature rows whose only non-zero column is `score` (so theta = e_score makes ucb == value)."""
    x = np.zeros((len(values), space().dim))
    x[:, 1] = values
    return x


E_SCORE = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_features_are_computed_relative_to_the_candidate_pool() -> None:
    fs = space(categories=2)
    # popularity = log1p(count) / log1p(7): a 0, b log 4 / log 8 = 2/3, c 1, d log 2 / log 8 = 1/3
    assert fs.popularity.tolist() == pytest.approx([0.0, 2 / 3, 1.0, 1 / 3])
    assert fs.categories == ["x", "y"]  # x twice; y and z once each, ties by name
    x = fs.features(
        ["c", "a", "zz"], np.array([3.0, 1.0, 2.0]), history_length=4, reference_scores=np.array([3.0, 2.0, 1.0])
    )
    activity = np.log1p(4) / np.log1p(ACTIVITY_CAP)
    expected = np.array(
        [
            # bias score rank          popularity activity  act*score  cat:x cat:y
            [1.0, 1.0, 1.0, 1.0, activity, activity, 1.0, 0.0],  # c: top of the pool
            [1.0, 0.0, 1 / np.log2(4), 0.0, activity, 0.0, 1.0, 0.0],  # a: two items score higher
            [1.0, 0.5, 1 / np.log2(3), 0.0, activity, activity / 2, 0.0, 0.0],  # unknown item
        ]
    )
    assert x == pytest.approx(expected)
    assert fs.names == ["bias", "score", "rank", "popularity", "activity", "activity_x_score", "cat:x", "cat:y"]


def test_softmax_propensities_are_the_exact_slot_probabilities_and_slates_sum_to_one() -> None:
    policy = policy_with_theta(E_SCORE, exploration="softmax", temperature=0.5)
    values = [1.0, 0.5, 0.25, 0.0]
    x = score_features(values)
    e = np.exp(np.array(values) / 0.5)
    first = e / e.sum()
    order, props = policy.rank(["a", "b", "c", "d"], x, np.random.default_rng(5), k=2)
    i, j = order
    rest = e.copy()
    rest[i] = 0.0
    assert props.tolist() == pytest.approx([first[i], e[j] / rest.sum()])

    # Over every ordered slate of two, the product of the per-slot propensities is a distribution.
    total = 0.0
    for a, b in itertools.permutations(range(4), 2):
        p1 = policy.slot_distribution(policy.scores(x), np.ones(4, bool))
        avail = np.ones(4, bool)
        avail[a] = False
        total += p1[a] * policy.slot_distribution(policy.scores(x), avail)[b]
    assert total == pytest.approx(1.0)

    # And the logged propensity is the frequency with which rank() really picks the item.
    rng = np.random.default_rng(0)
    picks = np.array([policy.rank(["a", "b", "c", "d"], x, rng, k=1)[0][0] for _ in range(20000)])
    assert np.bincount(picks, minlength=4) / len(picks) == pytest.approx(first, abs=0.01)


def test_epsilon_greedy_propensities() -> None:
    policy = policy_with_theta(E_SCORE, exploration="epsilon_greedy", epsilon=0.2)
    x = score_features([0.1, 0.9, 0.5, 0.3])
    order, props = policy.rank(["a", "b", "c", "d"], x, rng=None, k=3)
    # Without draws every slot takes its most probable (the greedy) item: b, then c, then d.
    assert order.tolist() == [1, 2, 3]
    # Slot 1: 0.8 + 0.2/4; slot 2: 0.8 + 0.2/3; slot 3: 0.8 + 0.2/2.
    assert props.tolist() == pytest.approx([0.85, 0.8 + 0.2 / 3, 0.9])
    dist = policy.slot_distribution(policy.scores(x), np.array([True, False, True, True]))
    assert dist.tolist() == pytest.approx([0.2 / 3, 0.0, 0.8 + 0.2 / 3, 0.2 / 3])
    assert dist.sum() == pytest.approx(1.0)


def test_linucb_is_ridge_regression_with_a_shrinking_confidence_bonus() -> None:
    rng = np.random.default_rng(1)
    fs = space()
    policy = LinUCBPolicy(PolicyConfig(ridge=2.0, alpha=1.0), fs)
    x = rng.random((50, fs.dim))
    r = (x[:, 1] > 0.5).astype(float)
    probe = x[:3]
    before = policy.scores(probe) - probe @ policy.theta
    policy.update(x, r)
    expected = np.linalg.solve(2.0 * np.eye(fs.dim) + x.T @ x, x.T @ r)
    assert policy.theta == pytest.approx(expected)
    after = policy.scores(probe) - probe @ policy.theta
    assert np.all(after < before)  # more data, narrower bonus
    assert policy.theta[1] > 0  # the score feature predicts the reward
    assert policy.n_updates == 50


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    fs = space(categories=2)
    policy = LinUCBPolicy(PolicyConfig(alpha=0.3, exploration="epsilon_greedy", epsilon=0.15), fs)
    rng = np.random.default_rng(2)
    policy.update(rng.random((20, fs.dim)), rng.random(20))
    path = policy.save(tmp_path / "policy")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "policy.json"]
    meta = json.loads((path / "policy.json").read_text())
    assert meta["type"] == "linucb" and meta["features"]["categories"] == ["x", "y"]
    loaded = LinUCBPolicy.load(path)
    x = fs.features(["a", "b", "c"], np.array([0.3, 0.2, 0.1]), 7)
    assert loaded.scores(x) == pytest.approx(policy.scores(x))
    assert loaded.name == "linucb+epsilon_greedy(0.15)" and loaded.n_updates == 20
    (path / "arrays.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError, match="re-run the feedback step"):
        LinUCBPolicy.load(path)


# ---------------------------------------------------------------------------------------------- from logs

N_USERS, N_ITEMS, K, EPS = 60, 30, 5, 0.3
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def logged_world(store: Any, model_name: str, click_rate: Any, work: Path, slates: int = 400, seed: int = 0) -> None:
    """Publish a popularity model, then log `slates` epsilon-greedy slates over its unseen items, with
    clicks drawn from `click_rate(item index)`: what serving with exploration would have logged."""
    from recloop.policy import training

    users = [f"u{u}" for u in range(N_USERS)]
    background = [f"b{b}" for b in range(N_ITEMS)]  # never served; they make item i's popularity N_ITEMS - i
    items = [f"i{i}" for i in range(N_ITEMS)]
    events = [(u, u % N_ITEMS) for u in range(N_USERS)]  # user u has seen item u % N_ITEMS
    events += [(N_USERS + b, i) for i in range(N_ITEMS) for b in range(N_ITEMS - i)]
    cats = [["good"] if i % 3 == 0 else ["plain"] for i in range(N_ITEMS)]
    publish_popularity(store, model_name, users + background, items, events, cats)
    base = training.load_base_version(store, model_name, 1, work)
    pools = training.candidate_pools(base, users, N_ITEMS)
    rng = np.random.default_rng(seed)
    imps, fb = [], []
    for n in range(slates):
        user = users[n % N_USERS]
        pool = list(pools[user].items)
        scores = dict(zip(pool, pools[user].scores))
        shown, props = [], []
        for _ in range(K):
            remaining = [i for i in pool if i not in shown]
            greedy = remaining[0]
            choice = remaining[rng.integers(len(remaining))] if rng.random() < EPS else greedy
            props.append((1 - EPS) * (choice == greedy) + EPS / len(remaining))
            shown.append(choice)
        when = T0 + timedelta(minutes=n)
        record = slate(f"q{n}", user, shown, when, propensities=props)
        record["scores"] = [float(scores[i]) for i in shown]
        record["history_length"] = 1  # each served user has seen one item
        imps.append(record)
        for i in shown:
            if rng.random() < click_rate(int(i[1:])):
                fb.append(event(f"c{n}-{i}", f"q{n}", user, i, when + timedelta(seconds=5)))
    write_logs(store, imps, fb)


def policy_config(tmp_path: Path) -> Any:
    # Clicks here are independent draws, so a user clicking an item again in a later slate is not abuse.
    return make_config(
        tmp_path / "store",
        {
            "feedback.abuse.max_repeat_events": 1000,
            "policy": {
                "enabled": True,
                "candidates": N_ITEMS,
                "min_slots": 100,
                "categories": 4,
                "exploration": "softmax",
                "temperature": 0.02,
                "alpha": 0.1,
                "gate": {"estimator": "snips", "bootstrap": 200},
            },
        },
    )


def test_feedback_trains_a_policy_that_beats_the_logging_policy_and_publishes_it(tmp_path: Path) -> None:
    from recloop.policy import training

    cfg = policy_config(tmp_path)
    ctx = make_context(cfg, run_id="fb1")
    # Clicks depend on the item's category, which popularity ignores: a reranker can do much better.
    logged_world(ctx.store, cfg.model_name, lambda i: 0.6 if i % 3 == 0 else 0.03, tmp_path / "work")

    manifest = run_step("feedback", ctx)

    summary = manifest.summary["policy"]
    assert summary["decision"] == "blessed", summary["reason"]
    assert summary["candidate_value"] > summary["logging_value"]
    art = ctx.open(manifest.uri)
    details = art.read_json("policy_report.json")
    assert details["fit_slots"] + details["holdout_slots"] == 400 * K
    assert details["skipped_requests"] == {}
    theta = dict(zip(details["features"], details["theta"]))
    assert theta["cat:good"] > theta["cat:plain"]
    alias, _ = training.read_policy_alias(ctx.store, cfg.model_name)
    assert alias is not None and alias["artifact"] == manifest.uri and alias["run_id"] == "fb1"
    published = training.load_production_policy(ctx.store, cfg.model_name, tmp_path / "load")
    assert published is not None and published.n_updates == 400 * K

    # Serving follows the alias: its slates for known users come from the policy, over the same pool the
    # feedback step reconstructs, with the policy's exact propensities.
    from recloop.policy.online import PolicyHolder
    from recloop.registry import ModelRegistry
    from recloop.serving.loader import load_version
    from recloop.serving.ranking import SlateEngine, SlateQuery

    served = load_version(ctx.store, ModelRegistry(ctx.store, cfg.model_name), 1, cfg.serving, tmp_path / "serve")
    holder = PolicyHolder(ctx.store, cfg.model_name, poll_interval_s=60)
    assert holder.check_once() and holder.current is not None
    user = served.users.get("u7")
    history = served.model.train_histories.row(user).astype(np.int64)
    slate = SlateEngine(cfg.serving, holder).recommend(
        served,
        SlateQuery(
            user=user,
            history=history,
            history_is_training=True,
            k=K,
            exclude_seen=True,
            category=None,
            request_id="req-1",
        ),
    )
    assert slate.policy == holder.current.name == "linucb+softmax(T=0.02)"
    pool = training.candidate_pools(
        training.load_base_version(ctx.store, cfg.model_name, 1, tmp_path / "b"), ["u7"], N_ITEMS
    )["u7"]
    x = holder.current.space.features(list(pool.items), pool.scores, len(history))
    scores = holder.current.scores(x)
    available = np.ones(len(pool.items), bool)
    where = {item: j for j, item in enumerate(pool.items)}
    for shown, propensity in zip(slate.items, slate.propensities):
        j = where[served.catalog.item_ids[int(shown)]]
        assert propensity == pytest.approx(holder.current.slot_distribution(scores, available)[j])
        available[j] = False
    holder.stop()


def test_a_policy_that_cannot_beat_the_logging_policy_is_not_published(tmp_path: Path) -> None:
    from recloop.policy import training

    cfg = policy_config(tmp_path)
    ctx = make_context(cfg, run_id="fb1")
    logged_world(
        ctx.store, cfg.model_name, lambda i: 0.1, tmp_path / "work"
    )  # clicks ignore everything the policy sees

    manifest = run_step("feedback", ctx)

    assert manifest.summary["policy"]["decision"] == "rejected"
    assert "does not beat" in manifest.summary["policy"]["reason"]
    assert training.read_policy_alias(ctx.store, cfg.model_name) == (None, None)
    assert "policy/policy.json" in ctx.open(manifest.uri).manifest.files  # kept for inspection


def test_logged_slots_become_decisions_with_the_candidates_exact_probabilities() -> None:
    import pandas as pd

    from recloop.policy.training import Pool, build_bandit_data, decisions_for

    policy = policy_with_theta(E_SCORE, exploration="softmax", temperature=0.5)
    t = pd.Timestamp("2024-01-01", tz="UTC")
    rows = [  # request, user, history length, position, item, score, propensity, reward, fallback
        ("q1", "u1", 2, 1, "b", 2.0, 0.5, 1.0, None),
        ("q1", "u1", 2, 2, "d", 2.5, 0.1, 0.0, None),  # explored beyond the reconstructed pool
        ("q2", "u2", 4, 1, "a", 3.0, 1.0, 0.0, None),  # history posted with the request: pool unknown
        ("q3", "u3", 0, 1, "a", 9.0, 1.0, 0.0, "unknown_user"),
    ]
    slots = pd.DataFrame(
        [
            {
                "request_id": r,
                "served_at": t,
                "user_id": u,
                "history_length": h,
                "position": p,
                "item_id": i,
                "score": s,
                "propensity": pr,
                "reward": rw,
                "fallback_reason": fb,
                "model_version": 1,
            }
            for r, u, h, p, i, s, pr, rw, fb in rows
        ]
    )
    pools = {
        (1, "u1"): Pool(np.array(["a", "b", "c"]), np.array([3.0, 2.0, 1.0]), 2),
        (1, "u2"): Pool(np.array(["a", "b", "c"]), np.array([3.0, 2.0, 1.0]), 5),
    }
    data = build_bandit_data(slots, pools, policy.space)
    assert data.skipped == {"posted_history": 1, "fallback_slate": 1}
    assert [i.request_id for i in data.impressions] == ["q1"] and data.n_slots == 2
    assert data.impressions[0].shown_in_pool.tolist() == [1, -1]

    d = decisions_for(policy, data.impressions)
    # Pool scores scale to a=1, b=0.5, c=0 and ucb == scaled score; softmax at T=0.5 over {a, b, c}:
    e = np.exp(np.array([1.0, 0.5, 0.0]) / 0.5)
    p1 = e / e.sum()
    assert d.target_propensity.tolist() == pytest.approx([p1[1], 0.0])  # d is never in the candidate's pool
    assert d.logging_propensity.tolist() == [0.5, 0.1] and d.reward.tolist() == [1.0, 0.0]
    # Reward model = clipped regression (here the scaled score): expected under slot 2's {a, c} distribution.
    p2 = np.array([e[0], 0.0, e[2]]) / (e[0] + e[2])
    assert d.reward_hat_target.tolist() == pytest.approx([p1 @ [1.0, 0.5, 0.0], p2 @ [1.0, 0.5, 0.0]])
    # d scored 2.5 against the pool's [1, 3]: scaled 0.75.
    assert d.reward_hat_logged.tolist() == pytest.approx([0.5, 0.75])
    assert d.group.tolist() == [0, 0]
