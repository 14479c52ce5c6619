"""Off-policy estimators against values computed by hand, bootstrap intervals, and the policy gate."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.evaluation.ope import (
    LoggedDecisions,
    doubly_robust,
    effective_sample_size,
    estimate,
    ips,
    on_policy_value,
    policy_gate,
    snips,
)


def small_log() -> LoggedDecisions:
    # Four decisions; the first two are slots of one slate (group 0).
    return LoggedDecisions(
        reward=np.array([1.0, 0.0, 1.0, 0.0]),
        logging_propensity=np.array([0.5, 0.25, 0.8, 0.1]),
        target_propensity=np.array([1.0, 0.5, 0.4, 0.2]),
        reward_hat_logged=np.array([0.6, 0.2, 0.5, 0.1]),
        reward_hat_target=np.array([0.7, 0.3, 0.4, 0.2]),
        group=np.array([0, 0, 1, 2]),
    )


def test_estimators_match_hand_computed_values() -> None:
    log = small_log()
    # weights w = pi / p = [1.0/0.5, 0.5/0.25, 0.4/0.8, 0.2/0.1] = [2, 2, 0.5, 2]
    # IPS   = (2*1 + 2*0 + 0.5*1 + 2*0) / 4 = 2.5 / 4 = 0.625
    assert ips(log) == pytest.approx(0.625)
    # SNIPS = 2.5 / (2 + 2 + 0.5 + 2) = 2.5 / 6.5
    assert snips(log) == pytest.approx(2.5 / 6.5)
    # DR terms qpi + w (r - qa): 0.7 + 2(1 - 0.6) = 1.5;  0.3 + 2(0 - 0.2) = -0.1;
    #                            0.4 + 0.5(1 - 0.5) = 0.65; 0.2 + 2(0 - 0.1) = 0.0   -> mean 2.05 / 4
    assert doubly_robust(log) == pytest.approx(0.5125)
    # The logging policy's own value: the mean reward 2 / 4.
    assert on_policy_value(log) == pytest.approx(0.5)
    # ESS = (sum w)^2 / sum w^2 = 6.5^2 / (4 + 4 + 0.25 + 4) = 42.25 / 12.25
    assert effective_sample_size(log) == pytest.approx(42.25 / 12.25)


def test_clipping_caps_the_importance_weights() -> None:
    log = small_log()
    # w clipped at 1.5: [1.5, 1.5, 0.5, 1.5] -> IPS (1.5 + 0.5) / 4 = 0.5, SNIPS 2 / 5 = 0.4
    assert ips(log, max_weight=1.5) == pytest.approx(0.5)
    assert snips(log, max_weight=1.5) == pytest.approx(0.4)
    # DR with clipping: 0.7 + 1.5*0.4 = 1.3; 0.3 - 1.5*0.2 = 0.0; 0.65; 0.2 - 1.5*0.1 = 0.05 -> 2.0 / 4
    assert doubly_robust(log, max_weight=1.5) == pytest.approx(0.5)
    report = estimate(log, bootstrap=0, max_weight=1.5)
    assert report.clipped_share == pytest.approx(0.75)


def test_estimate_reports_points_and_group_bootstrap_intervals() -> None:
    report = estimate(small_log(), bootstrap=500, confidence=0.9, seed=3)
    e = report.estimates
    assert e["ips"].value == pytest.approx(0.625) and e["snips"].value == pytest.approx(2.5 / 6.5)
    assert e["dr"].value == pytest.approx(0.5125) and e["on_policy"].value == pytest.approx(0.5)
    assert report.n_decisions == 4 and report.n_groups == 3
    for est in e.values():
        assert est.low is not None and est.high is not None and est.low <= est.high
    # Group 0 (rewards 1, 0) is resampled whole: an IPS resample can only take the values of group mixes.
    # With groups {0: wr=2 over 2 rows, 1: 0.5 over 1, 2: 0 over 1} the largest possible IPS is 2/2 = 1.0.
    assert e["ips"].high <= 1.0 + 1e-12
    # Identical resamples give a zero-width interval at the point estimate.
    same = LoggedDecisions(np.ones(6), np.full(6, 0.5), np.full(6, 0.5), group=np.arange(6))
    flat = estimate(same, estimators=("ips", "snips"), bootstrap=50)
    assert (flat.estimates["ips"].low, flat.estimates["ips"].high) == (1.0, 1.0)
    assert "doubly robust" not in " ".join(flat.notes)
    assert "dr" not in flat.estimates


def test_dr_is_skipped_with_a_note_without_a_reward_model() -> None:
    log = LoggedDecisions(np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    report = estimate(log, bootstrap=0)
    assert "dr" not in report.estimates
    assert report.notes == ["doubly robust skipped: no reward model predictions were given"]
    assert report.estimates["ips"].low is None  # no resamples asked for


def test_ips_recovers_a_known_policy_value_and_the_interval_covers_it() -> None:
    # Three actions with click rates 0.2, 0.5, 0.8; the logging policy is uniform; the candidate always
    # takes action 2, so its true value is 0.8 while the logging policy earns 0.5.
    rng = np.random.default_rng(11)
    n = 20000
    actions = rng.integers(0, 3, n)
    rewards = (rng.random(n) < np.array([0.2, 0.5, 0.8])[actions]).astype(float)
    log = LoggedDecisions(rewards, np.full(n, 1 / 3), (actions == 2).astype(float))
    report = estimate(log, estimators=("ips", "snips"), bootstrap=300, confidence=0.95, seed=1)
    for name in ("ips", "snips"):
        est = report.estimates[name]
        assert est.value == pytest.approx(0.8, abs=0.03)
        assert est.low <= 0.8 <= est.high
    assert report.logging.value == pytest.approx(0.5, abs=0.02)
    decision = policy_gate(report, "snips")
    assert decision.passed and "beats" in decision.reason


def test_policy_gate_compares_against_the_logging_value_with_a_lift() -> None:
    log = small_log()  # SNIPS 0.3846 < on-policy 0.5; IPS 0.625 > 0.5
    point = estimate(log, bootstrap=0)
    assert not policy_gate(point, "snips", use_lower_bound=False).passed
    ips_gate = policy_gate(point, "ips", use_lower_bound=False)
    assert ips_gate.passed and ips_gate.required == pytest.approx(0.5)
    lifted = estimate(log, bootstrap=0, min_lift=0.3)  # required 0.5 * 1.3 = 0.65 > 0.625
    decision = policy_gate(lifted, "ips", use_lower_bound=False)
    assert not decision.passed and decision.required == pytest.approx(0.65)
    assert "x (1 + 0.3) = 0.6500" in decision.reason
    # With the lower bound required, four noisy decisions are not enough evidence for IPS either.
    assert not policy_gate(estimate(log, bootstrap=200, seed=0), "ips").passed


def test_invalid_logs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="logging propensities must lie in"):
        LoggedDecisions(np.array([1.0]), np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="reward has 2"):
        LoggedDecisions(np.array([1.0, 0.0]), np.array([0.5]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate(small_log(), estimators=("magic",))
