"""The quality gate: judge every evaluated candidate against the thresholds of `gate:` and pick one.

Checks per candidate (each becomes a `Threshold` record in blessing.json):
  absolute      metric >= required value
  relative      metric >= ratio × the champion's value of that metric (champion re-evaluated on this split)
  significance  paired bootstrap of the primary metric vs the champion: p < alpha and a positive difference
Without a production champion (the first model) only absolute thresholds apply. A champion that exists but
could not be evaluated fails the relative and significance checks (the comparison cannot be made).
The best candidate by `evaluation.primary` among those passing every check is blessed; if none passes,
the decision is `rejected` and names the candidate that ranked best and every failed threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recloop.artifacts.kinds import Evaluation

if TYPE_CHECKING:
    from recloop.config import GateConfig


@dataclass
class Threshold:
    metric: str
    kind: str  # absolute | relative | significance
    required: float | None  # absolute/relative: the minimum value; significance: alpha (p must be below)
    value: float | None  # the candidate's value (significance: its p-value)
    passed: bool
    detail: str  # one human-readable sentence

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "required": _round(self.required),
            "value": _round(self.value),
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass
class Verdict:
    candidate: str
    model_type: str | None
    primary_value: float | None
    thresholds: list[Threshold] = field(default_factory=list)

    @property
    def blessed(self) -> bool:
        return self.primary_value is not None and all(t.passed for t in self.thresholds)

    @property
    def failures(self) -> list[str]:
        out = [t.detail for t in self.thresholds if not t.passed]
        if self.primary_value is None:
            out.insert(0, "its primary metric was not evaluated")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "blessed": self.blessed,
            "model_type": self.model_type,
            "primary_value": _round(self.primary_value),
            "thresholds": [t.to_json() for t in self.thresholds],
            "failed": self.failures,
        }


@dataclass
class Decision:
    decision: str  # blessed | rejected
    candidate: str | None
    verdicts: dict[str, Verdict]
    reasons: list[str]
    champion_version: int | None
    champion_evaluated: bool

    @property
    def chosen(self) -> Verdict | None:
        return self.verdicts.get(self.candidate) if self.candidate else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _metric_value(block: dict[str, Any] | None, metric: str) -> float | None:
    if not isinstance(block, dict):
        return None
    entry = (block.get("metrics") or {}).get(metric)
    value = entry.get("value") if isinstance(entry, dict) else None
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def judge(doc: dict[str, Any], gate: GateConfig, primary: str) -> Decision:
    """Apply the gate to an evaluate `metrics.json` document."""
    candidates: dict[str, Any] = doc.get("candidates") or {}
    champion = doc.get("champion")
    champ_version = champion.get("version") if isinstance(champion, dict) else None
    champ_ok = isinstance(champion, dict) and not champion.get("error") and bool(champion.get("metrics"))
    champ_error = champion.get("error") if isinstance(champion, dict) else None
    evaluated_k = doc.get("k") or []
    verdicts: dict[str, Verdict] = {}
    for name, block in candidates.items():
        verdict = Verdict(name, block.get("type"), _metric_value(block, primary))
        for metric, required in gate.absolute.items():
            value = _metric_value(block, metric)
            if value is None:
                detail = (
                    f"{metric} was not evaluated ({Evaluation.METRICS} has k={evaluated_k}); add its cut-off to "
                    "evaluation.k and re-run evaluate"
                )
                verdict.thresholds.append(Threshold(metric, "absolute", required, None, False, detail))
                continue
            ok = value >= required
            detail = f"{metric} = {_f(value)} {'≥' if ok else '<'} required {_f(required)} (absolute threshold)"
            verdict.thresholds.append(Threshold(metric, "absolute", required, value, ok, detail))
        if champion is not None:
            for metric, ratio in gate.relative_to_champion.items():
                verdict.thresholds.append(
                    _relative(block, champion, champ_ok, champ_error, champ_version, metric, ratio)
                )
            if gate.require_significant:
                verdict.thresholds.append(
                    _significance(block, champ_ok, champ_error, champ_version, primary, gate.alpha)
                )
        verdicts[name] = verdict

    def rank_key(v: Verdict) -> float:
        return -math.inf if v.primary_value is None else v.primary_value

    ordered = sorted(verdicts.values(), key=rank_key, reverse=True)  # stable: ties keep evaluate's order
    blessed = [v for v in ordered if v.blessed]
    reasons: list[str] = []
    if not candidates:
        reasons.append(f"{Evaluation.METRICS} holds no candidate; re-run train and evaluate")
        return Decision("rejected", None, verdicts, reasons, champ_version, champ_ok)
    if champion is None:
        reasons.append("no production champion yet: judged on absolute thresholds only")
    if not gate.absolute and not (champion is not None and (gate.relative_to_champion or gate.require_significant)):
        reasons.append(
            "no gate threshold applies (gate.absolute is empty); the best candidate by "
            f"{primary} is blessed as is; set gate thresholds to protect production"
        )
    if blessed:
        chosen = blessed[0]
        passed = "; ".join(t.detail for t in chosen.thresholds) or "no thresholds to check"
        reasons.insert(0, f"{chosen.candidate} blessed with {primary} = {_f(chosen.primary_value)}: {passed}")
        others = [v for v in blessed[1:]]
        if others:
            reasons.append(
                "also passed, with a lower "
                + primary
                + ": "
                + ", ".join(f"{v.candidate} ({_f(v.primary_value)})" for v in others)
            )
        for v in ordered:
            if not v.blessed:
                reasons.append(f"{v.candidate} rejected: " + "; ".join(v.failures))
        return Decision("blessed", chosen.candidate, verdicts, reasons, champ_version, champ_ok)
    best = ordered[0]
    reasons.insert(
        0,
        f"no candidate passed the gate; the best by {primary}, {best.candidate} "
        f"({_f(best.primary_value)}), failed: " + "; ".join(best.failures),
    )
    for v in ordered[1:]:
        reasons.append(f"{v.candidate} rejected: " + "; ".join(v.failures))
    return Decision("rejected", best.candidate, verdicts, reasons, champ_version, champ_ok)


def _relative(
    block: dict[str, Any],
    champion: dict[str, Any],
    champ_ok: bool,
    champ_error: str | None,
    champ_version: int | None,
    metric: str,
    ratio: float,
) -> Threshold:
    if not champ_ok:
        detail = (
            f"{metric} cannot be compared with champion v{champ_version}: it could not be evaluated "
            f"({champ_error}); fix or roll back the production version"
        )
        return Threshold(metric, "relative", None, _metric_value(block, metric), False, detail)
    value, base = _metric_value(block, metric), _metric_value(champion, metric)
    if value is None or base is None:
        detail = (
            f"{metric} was not evaluated for {'the candidate' if value is None else 'the champion'}; "
            "add its cut-off to evaluation.k and re-run evaluate"
        )
        return Threshold(metric, "relative", None, value, False, detail)
    required = base * ratio
    ok = value >= required
    detail = (
        f"{metric} = {_f(value)} {'≥' if ok else '<'} {ratio:g} × champion v{champ_version}'s "
        f"{_f(base)} = {_f(required)} (relative threshold)"
    )
    return Threshold(metric, "relative", required, value, ok, detail)


def _significance(
    block: dict[str, Any],
    champ_ok: bool,
    champ_error: str | None,
    champ_version: int | None,
    primary: str,
    alpha: float,
) -> Threshold:
    if not champ_ok:
        detail = (
            f"significance on {primary} cannot be tested: champion v{champ_version} could not be evaluated "
            f"({champ_error})"
        )
        return Threshold(primary, "significance", alpha, None, False, detail)
    vs = (block.get("vs_champion") or {}).get(primary) or {}
    p, diff = vs.get("p_value"), vs.get("diff")
    if p is None or diff is None:
        detail = (
            f"no paired bootstrap of {primary} against champion v{champ_version} in {Evaluation.METRICS}; set "
            "evaluation.bootstrap > 0 and re-run evaluate"
        )
        return Threshold(primary, "significance", alpha, None, False, detail)
    ok = p < alpha and diff > 0
    if ok:
        detail = (
            f"{primary} improves on champion v{champ_version} by {_f(diff)}, significant "
            f"(paired bootstrap p = {_f(p)} < alpha {alpha:g})"
        )
    else:
        detail = (
            f"{primary} difference to champion v{champ_version} is {_f(diff)}, not a significant improvement "
            f"(paired bootstrap p = {_f(p)}, needs < alpha {alpha:g})"
        )
    return Threshold(primary, "significance", alpha, p, ok, detail)
