"""Off-policy evaluation: what a candidate policy would have earned, estimated from a logging policy's logs.

A log is a list of decisions i (one per shown slot): the reward r_i observed for the logged action a_i,
the logging policy's probability p_i = mu(a_i | x_i) of that action (its logged propensity), and the
candidate policy's probability pi_i = pi(a_i | x_i) of the same action in the same context. With the
importance weight w_i = pi_i / p_i (optionally clipped at `max_weight`):

- IPS   (inverse propensity scoring):  V = (1/n) sum_i w_i r_i               unbiased, high variance
- SNIPS (self-normalized IPS):         V = sum_i w_i r_i / sum_i w_i         small bias, lower variance
- DR    (doubly robust):               V = (1/n) sum_i [qpi_i + w_i (r_i - qa_i)]
  where qa_i = q(x_i, a_i) is a reward model's prediction for the logged action and
  qpi_i = sum_a pi(a | x_i) q(x_i, a) its expectation under the candidate; unbiased if either the
  propensities or the reward model are right.

The logging policy's own value is the plain mean reward (on-policy). Intervals come from a bootstrap that
resamples whole groups (the slots of one slate are not independent), and every estimator is computed on
the same resamples, so the candidate-minus-logging difference gets a paired interval too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")
ON_POLICY = "on_policy"


@dataclass(frozen=True)
class LoggedDecisions:
    """One row per logged decision (a shown slot). Arrays share one length."""

    reward: np.ndarray
    logging_propensity: np.ndarray
    target_propensity: np.ndarray
    reward_hat_logged: np.ndarray | None = None  # q(x_i, a_i), for DR
    reward_hat_target: np.ndarray | None = None  # sum_a pi(a | x_i) q(x_i, a), for DR
    group: np.ndarray | None = None  # slate id per row; the bootstrap resamples whole groups

    def __post_init__(self) -> None:
        n = len(self.reward)
        arrays = {
            "logging_propensity": self.logging_propensity,
            "target_propensity": self.target_propensity,
            "reward_hat_logged": self.reward_hat_logged,
            "reward_hat_target": self.reward_hat_target,
            "group": self.group,
        }
        for name, arr in arrays.items():
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows but reward has {n}; pass one value per decision")
        p = np.asarray(self.logging_propensity, np.float64)
        if n and (not np.all(np.isfinite(p)) or p.min() <= 0 or p.max() > 1 + 1e-9):
            raise ValueError(
                "logging propensities must lie in (0, 1]: a logged action had zero probability, "
                "so no estimator can reweight it; check the impression log's propensities"
            )
        t = np.asarray(self.target_propensity, np.float64)
        if n and (not np.all(np.isfinite(t)) or t.min() < 0 or t.max() > 1 + 1e-9):
            raise ValueError("target propensities must lie in [0, 1]")
        if (self.reward_hat_logged is None) != (self.reward_hat_target is None):
            raise ValueError("pass both reward_hat_logged and reward_hat_target (doubly robust) or neither")

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def has_reward_model(self) -> bool:
        return self.reward_hat_logged is not None


def importance_weights(log: LoggedDecisions, max_weight: float | None = None) -> np.ndarray:
    w = np.asarray(log.target_propensity, np.float64) / np.asarray(log.logging_propensity, np.float64)
    return np.minimum(w, max_weight) if max_weight is not None else w


def ips(log: LoggedDecisions, max_weight: float | None = None) -> float:
    if not len(log):
        return float("nan")
    return float(np.mean(importance_weights(log, max_weight) * np.asarray(log.reward, np.float64)))


def snips(log: LoggedDecisions, max_weight: float | None = None) -> float:
    w = importance_weights(log, max_weight)
    total = float(w.sum())
    if total <= 0:
        return float("nan")  # the candidate never takes a logged action: nothing to normalize by
    return float(np.sum(w * np.asarray(log.reward, np.float64)) / total)


def _dr_terms(log: LoggedDecisions, max_weight: float | None) -> np.ndarray:
    if not log.has_reward_model:
        raise ValueError("doubly robust needs reward_hat_logged and reward_hat_target (a reward model)")
    w = importance_weights(log, max_weight)
    q_a = np.asarray(log.reward_hat_logged, np.float64)
    q_pi = np.asarray(log.reward_hat_target, np.float64)
    return q_pi + w * (np.asarray(log.reward, np.float64) - q_a)


def doubly_robust(log: LoggedDecisions, max_weight: float | None = None) -> float:
    if not len(log):
        return float("nan")
    return float(np.mean(_dr_terms(log, max_weight)))


def on_policy_value(log: LoggedDecisions) -> float:
    return float(np.mean(np.asarray(log.reward, np.float64))) if len(log) else float("nan")


def effective_sample_size(log: LoggedDecisions, max_weight: float | None = None) -> float:
    """(sum w)^2 / sum w^2: how many on-policy samples the reweighted log is worth."""
    w = importance_weights(log, max_weight)
    denom = float(np.sum(w * w))
    return float(w.sum() ** 2 / denom) if denom > 0 else 0.0


@dataclass
class Estimate:
    estimator: str
    value: float
    low: float | None  # bootstrap interval (None without resamples)
    high: float | None
    n: int
    # Paired bootstrap interval of (this estimate - (1 + min_lift) * the logging policy's value).
    diff_low: float | None = None
    diff_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class OffPolicyReport:
    """Every estimate for one candidate on one log, plus diagnostics."""

    estimates: dict[str, Estimate]
    n_decisions: int
    n_groups: int
    effective_sample_size: float
    max_weight: float | None
    clipped_share: float
    confidence: float
    bootstrap: int
    min_lift: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def logging(self) -> Estimate:
        return self.estimates[ON_POLICY]

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "n_decisions": self.n_decisions,
            "n_groups": self.n_groups,
            "effective_sample_size": self.effective_sample_size,
            "max_weight": self.max_weight,
            "clipped_share": self.clipped_share,
            "confidence": self.confidence,
            "bootstrap": self.bootstrap,
            "min_lift": self.min_lift,
            "notes": list(self.notes),
        }


def _group_sums(log: LoggedDecisions, max_weight: float | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-group sums of every quantity the estimators are ratios of (so resamples are matrix products)."""
    n = len(log)
    if log.group is None:
        inverse = np.arange(n)
        n_groups = n
    else:
        _, inverse = np.unique(np.asarray(log.group), return_inverse=True)
        n_groups = int(inverse.max()) + 1 if n else 0
    w = importance_weights(log, max_weight)
    r = np.asarray(log.reward, np.float64)

    def per_group(values: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=values, minlength=n_groups)

    sums = {"count": per_group(np.ones(n)), "wr": per_group(w * r), "w": per_group(w), "r": per_group(r)}
    if log.has_reward_model:
        sums["dr"] = per_group(_dr_terms(log, max_weight))
    return inverse, sums


def _values(sums: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Estimator values for group multiplicities `weights` ((B, G) or (G,))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        count = weights @ sums["count"]
        out = {
            "ips": (weights @ sums["wr"]) / count,
            "snips": (weights @ sums["wr"]) / (weights @ sums["w"]),
            ON_POLICY: (weights @ sums["r"]) / count,
        }
        if "dr" in sums:
            out["dr"] = (weights @ sums["dr"]) / count
    return out


def estimate(
    log: LoggedDecisions,
    estimators: Sequence[str] = ESTIMATORS,
    *,
    bootstrap: int = 200,
    confidence: float = 0.9,
    max_weight: float | None = None,
    min_lift: float = 0.0,
    seed: int = 0,
) -> OffPolicyReport:
    """Point estimates and bootstrap intervals of the candidate's value, and the logging policy's value.

    Each candidate estimate also gets a paired interval of (estimate - (1 + min_lift) * logging value).
    """
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(ESTIMATORS)}")
    notes: list[str] = []
    wanted = list(estimators)
    if "dr" in wanted and not log.has_reward_model:
        wanted.remove("dr")
        notes.append("doubly robust skipped: no reward model predictions were given")
    _, sums = _group_sums(log, max_weight)
    n_groups = len(sums["count"])
    point = _values(sums, np.ones(n_groups))
    draws: dict[str, np.ndarray] = {}
    if bootstrap > 0 and n_groups > 1:
        rng = np.random.default_rng(seed)
        multiplicities = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=bootstrap).astype(np.float64)
        draws = _values(sums, multiplicities)
    tail = (1.0 - confidence) / 2.0

    def interval(values: np.ndarray | None) -> tuple[float | None, float | None]:
        if values is None:
            return None, None
        finite = values[np.isfinite(values)]
        if not len(finite):
            return None, None
        return float(np.quantile(finite, tail)), float(np.quantile(finite, 1.0 - tail))

    results: dict[str, Estimate] = {}
    for name in [*wanted, ON_POLICY]:
        low, high = interval(draws.get(name))
        d_low = d_high = None
        if name != ON_POLICY and draws:
            d_low, d_high = interval(draws[name] - (1.0 + min_lift) * draws[ON_POLICY])
        results[name] = Estimate(name, float(point[name]), low, high, len(log), d_low, d_high)
    raw = importance_weights(log)
    clipped = float(np.mean(raw > max_weight)) if max_weight is not None and len(log) else 0.0
    ess = effective_sample_size(log, max_weight)
    if len(log) and ess < 0.01 * len(log):
        notes.append(
            f"effective sample size {ess:.1f} of {len(log)}: the candidate rarely takes the logged "
            "actions, so these estimates are unreliable; log with more exploration"
        )
    return OffPolicyReport(
        results, len(log), n_groups, ess, max_weight, clipped, confidence, bootstrap, min_lift, notes
    )


@dataclass
class GateDecision:
    passed: bool
    estimator: str
    candidate_value: float
    logging_value: float
    required: float
    compared: float  # the number checked against `required`
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_gate(report: OffPolicyReport, estimator: str, use_lower_bound: bool = True) -> GateDecision:
    """Does the candidate beat the logging policy by the report's `min_lift` (relative) on `estimator`?

    With `use_lower_bound` the lower end of the paired bootstrap interval of
    (candidate - (1 + min_lift) * logging) must be above zero; otherwise the point estimates are compared.
    """
    base = report.logging.value
    required = (1.0 + report.min_lift) * base
    lift = f" x (1 + {report.min_lift:g}) = {required:.4f}" if report.min_lift else ""
    if estimator not in report.estimates:
        return GateDecision(
            False,
            estimator,
            float("nan"),
            base,
            required,
            float("nan"),
            f"estimator {estimator} is not available ({'; '.join(report.notes) or 'not computed'})",
        )
    cand = report.estimates[estimator]
    if not np.isfinite(cand.value):
        return GateDecision(
            False,
            estimator,
            cand.value,
            base,
            required,
            cand.value,
            f"{estimator} is undefined on this log (the candidate never takes a logged action)",
        )
    if use_lower_bound and cand.diff_low is not None:
        compared = required + cand.diff_low  # the lower bound, expressed on the value scale
        passed = cand.diff_low > 0
        what = f"{estimator} {cand.value:.4f} with a lower {report.confidence:.0%} paired bound of {compared:.4f}"
    else:
        compared = cand.value
        passed = cand.value > required
        what = f"{estimator} estimate {cand.value:.4f}" + (" (no bootstrap interval)" if use_lower_bound else "")
    verdict = "beats" if passed else "does not beat"
    reason = f"candidate {what} {verdict} the logging policy's value {base:.4f}{lift}"
    return GateDecision(bool(passed), estimator, cand.value, base, required, compared, reason)
