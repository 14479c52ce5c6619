"""The gate: threshold logic, config validation, and the gate step between evaluate and publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from recloop.artifacts import Artifact
from recloop.config import GateConfig, PipelineConfig, StoreConfig, from_dict
from recloop.errors import ArtifactError, ConfigError, NotBlessedError
from recloop.evaluation.gate import judge
from recloop.steps.base import run_step
from support.eval_helpers import register_champion, write_small_world
from support.helpers import make_config, make_context

pytestmark = pytest.mark.usefixtures("eval_test_models")


def entry(value: float | None) -> dict:
    return {"value": value, "ci_low": value, "ci_high": value}


def doc(
    candidates: dict[str, dict[str, float]], champion: dict | None = None, vs: dict[str, dict] | None = None
) -> dict:
    """A metrics.json document: candidate -> {metric: value}; vs: candidate -> {metric: paired result}."""
    return {
        "k": [10],
        "split_fingerprint": "f" * 64,
        "candidates": {
            name: {
                "type": "ease",
                "metrics": {m: entry(v) for m, v in values.items()},
                "vs_champion": (vs or {}).get(name),
            }
            for name, values in candidates.items()
        },
        "champion": champion,
    }


def champion_block(values: dict[str, float], version: int = 3) -> dict:
    return {"version": version, "type": "ease", "metrics": {m: entry(v) for m, v in values.items()}}


def test_first_model_is_judged_on_absolute_thresholds_only() -> None:
    gate = GateConfig(absolute={"ndcg@10": 0.05}, relative_to_champion={"ndcg@10": 1.0}, require_significant=True)
    d = judge(doc({"a": {"ndcg@10": 0.08}, "b": {"ndcg@10": 0.04}}), gate, "ndcg@10")
    assert (d.decision, d.candidate, d.champion_version) == ("blessed", "a", None)
    assert [t.to_json() for t in d.chosen.thresholds] == [
        {
            "metric": "ndcg@10",
            "kind": "absolute",
            "required": 0.05,
            "value": 0.08,
            "passed": True,
            "detail": "ndcg@10 = 0.08 ≥ required 0.05 (absolute threshold)",
        }
    ]
    assert d.reasons[0] == "a blessed with ndcg@10 = 0.08: ndcg@10 = 0.08 ≥ required 0.05 (absolute threshold)"
    assert "no production champion yet: judged on absolute thresholds only" in d.reasons
    assert "b rejected: ndcg@10 = 0.04 < required 0.05 (absolute threshold)" in d.reasons


def test_the_best_candidate_that_passes_is_chosen_not_the_best_overall() -> None:
    gate = GateConfig(absolute={"ndcg@10": 0.05, "coverage@10": 0.1})
    d = judge(
        doc(
            {
                "greedy": {"ndcg@10": 0.09, "coverage@10": 0.02},
                "broad": {"ndcg@10": 0.07, "coverage@10": 0.3},
                "also": {"ndcg@10": 0.06, "coverage@10": 0.2},
            }
        ),
        gate,
        "ndcg@10",
    )
    assert d.candidate == "broad"
    assert "greedy rejected: coverage@10 = 0.02 < required 0.1 (absolute threshold)" in d.reasons
    assert "also passed, with a lower ndcg@10: also (0.06)" in d.reasons


def test_relative_to_champion() -> None:
    gate = GateConfig(absolute={"ndcg@10": 0.01}, relative_to_champion={"ndcg@10": 0.99, "recall@10": 1.0})
    champ = champion_block({"ndcg@10": 0.10, "recall@10": 0.20})
    ok = judge(doc({"a": {"ndcg@10": 0.0995, "recall@10": 0.21}}, champ), gate, "ndcg@10")
    assert ok.decision == "blessed" and ok.champion_version == 3 and ok.champion_evaluated
    rel = [t for t in ok.chosen.thresholds if t.kind == "relative"]
    # required = 0.99 × 0.10 = 0.099 and 1.0 × 0.20 = 0.20
    assert [(t.metric, t.required, t.passed) for t in rel] == [
        ("ndcg@10", pytest.approx(0.099), True),
        ("recall@10", pytest.approx(0.2), True),
    ]
    bad = judge(doc({"a": {"ndcg@10": 0.098, "recall@10": 0.21}}, champ), gate, "ndcg@10")
    assert bad.decision == "rejected" and bad.candidate == "a"
    assert bad.reasons == [
        "no candidate passed the gate; the best by ndcg@10, a (0.098), failed: ndcg@10 = "
        "0.098 < 0.99 × champion v3's 0.1 = 0.099 (relative threshold)"
    ]


def test_significance_against_the_champion() -> None:
    gate = GateConfig(require_significant=True, alpha=0.05)
    champ = champion_block({"ndcg@10": 0.10})
    vs_sig = {"a": {"ndcg@10": {"diff": 0.02, "p_value": 0.01}}}
    d = judge(doc({"a": {"ndcg@10": 0.12}}, champ, vs_sig), gate, "ndcg@10")
    assert d.decision == "blessed"
    assert d.chosen.thresholds[0].to_json() == {
        "metric": "ndcg@10",
        "kind": "significance",
        "required": 0.05,
        "value": 0.01,
        "passed": True,
        "detail": "ndcg@10 improves on champion v3 by 0.02, significant (paired bootstrap p = 0.01 < alpha 0.05)",
    }
    vs_weak = {"a": {"ndcg@10": {"diff": 0.005, "p_value": 0.2}}}
    d = judge(doc({"a": {"ndcg@10": 0.105}}, champ, vs_weak), gate, "ndcg@10")
    assert d.decision == "rejected"
    assert "not a significant improvement (paired bootstrap p = 0.2, needs < alpha 0.05)" in d.reasons[0]
    d = judge(doc({"a": {"ndcg@10": 0.105}}, champ, {"a": {}}), gate, "ndcg@10")
    assert "set evaluation.bootstrap > 0" in d.reasons[0]


def test_a_champion_that_could_not_be_evaluated_blocks_relative_checks() -> None:
    gate = GateConfig(absolute={"ndcg@10": 0.01}, relative_to_champion={"ndcg@10": 0.99})
    broken = {"version": 4, "error": "arrays.safetensors does not match its manifest"}
    d = judge(doc({"a": {"ndcg@10": 0.5}}, broken), gate, "ndcg@10")
    assert d.decision == "rejected" and d.champion_version == 4 and not d.champion_evaluated
    assert (
        "cannot be compared with champion v4: it could not be evaluated (arrays.safetensors does not "
        "match its manifest); fix or roll back the production version" in d.reasons[0]
    )
    # Without relative thresholds the broken champion does not matter.
    assert (
        judge(doc({"a": {"ndcg@10": 0.5}}, broken), GateConfig(absolute={"ndcg@10": 0.01}), "ndcg@10").decision
        == "blessed"
    )


def test_missing_metrics_and_no_thresholds() -> None:
    d = judge(doc({"a": {"ndcg@10": 0.5}}), GateConfig(absolute={"recall@20": 0.1}), "ndcg@10")
    assert d.decision == "rejected"
    assert "recall@20 was not evaluated (metrics.json has k=[10]); add its cut-off to evaluation.k" in d.reasons[0]
    d = judge(doc({"a": {"ndcg@10": None}}), GateConfig(), "ndcg@10")
    assert d.decision == "rejected" and "its primary metric was not evaluated" in d.reasons[0]
    d = judge(doc({"a": {"ndcg@10": 0.01}, "b": {"ndcg@10": 0.02}}), GateConfig(), "ndcg@10")
    assert d.decision == "blessed" and d.candidate == "b"
    assert any("no gate threshold applies" in r for r in d.reasons)
    d = judge(doc({}), GateConfig(absolute={"ndcg@10": 0.1}), "ndcg@10")
    assert d.decision == "rejected" and d.candidate is None


# ---------------------------------------------------------------------------------------------- config


def config(**sections) -> dict:
    return {"name": "t", "data": {"interactions": {"path": "/x.csv"}}, **sections}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"gate": {"absolute": {"ndgc@10": 0.1}}}, "unknown metric 'ndgc' in 'ndgc@10'; use one of: hr, recall"),
        ({"gate": {"relative_to_champion": {"ndcg": 1.0}}}, "metric must look like 'ndcg@10'"),
        ({"gate": {"absolute": {"arp@10": 5}}}, "unknown metric 'arp'"),  # lower is better: not gateable
        ({"gate": {"relative_to_champion": {"ndcg@10": 0}}}, "ratio to the champion must be positive"),
        (
            {"gate": {"absolute": {"ndcg@5": 0.1}}},
            "gate.absolute.ndcg@5: cut-off 5 is not evaluated; add 5 to evaluation.k (now [10, 20])",
        ),
        ({"evaluation": {"primary": "auc@10"}}, "evaluation.primary: unknown metric 'auc'"),
        ({"evaluation": {"primary": "ndcg@50"}}, "evaluation.primary: cut-off 50 is not evaluated"),
        (
            {"gate": {"require_significant": True}, "evaluation": {"bootstrap": 0}},
            "gate.require_significant needs bootstrap resamples",
        ),
    ],
)
def test_config_rejects_bad_gate_metrics(sections: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(config(**sections))
    assert message in str(err.value)


def test_config_accepts_valid_gate() -> None:
    cfg = PipelineConfig.model_validate(
        config(
            evaluation={"k": [5, 10], "primary": "recall@5"},
            gate={
                "absolute": {"ndcg@10": 0.02, "coverage@5": 0.1},
                "relative_to_champion": {"recall@5": 0.98},
                "require_significant": True,
            },
        )
    )
    assert cfg.gate.absolute == {"ndcg@10": 0.02, "coverage@5": 0.1}


# ---------------------------------------------------------------------------------------------- step


def run_pipeline_tail(
    tmp_path: Path, candidates: dict[str, str], gate: dict, champion: bool = False, store: StoreConfig | None = None
):
    cfg = make_config(
        store or tmp_path / "store",
        {
            "evaluation.k": [1, 5],
            "evaluation.primary": "ndcg@5",
            "evaluation.bootstrap": 200,
            **{f"gate.{k}": v for k, v in gate.items()},
        },
    )
    log: list[str] = []
    ctx = make_context(cfg, "r1", log=log)
    write_small_world(ctx.store, "r1", tmp_path / "bundles", candidates, cfg.config_hash())
    version = register_champion(ctx.store, tmp_path) if champion else None
    run_step("evaluate", ctx)
    manifest = run_step("gate", ctx)
    blessing = Artifact.open(ctx.store, "runs/r1/gate").read_json("blessing.json")
    return ctx, manifest, blessing, log, version


def test_degraded_random_candidate_is_rejected_naming_the_threshold(tmp_path: Path) -> None:
    ctx, manifest, blessing, log, _ = run_pipeline_tail(tmp_path, {"random": "random"}, {"absolute": {"ndcg@5": 0.9}})
    assert blessing["decision"] == "rejected" and blessing["candidate"] == "random"
    [threshold] = blessing["thresholds"]
    assert threshold["metric"] == "ndcg@5" and threshold["kind"] == "absolute" and threshold["required"] == 0.9
    assert threshold["passed"] is False and threshold["value"] < 0.9
    assert f"ndcg@5 = {threshold['value']:.4g} < required 0.9 (absolute threshold)" in blessing["reasons"][0]
    assert manifest.summary["decision"] == "rejected"
    assert any(line.startswith("gate: REJECTED random") for line in log)
    # Publish refuses, quoting the gate's reason.
    with pytest.raises(NotBlessedError, match="ndcg@5 = .* < required 0.9"):
        run_step("publish", ctx)


def test_blessing_contract_and_publish_accepts_it(tmp_path: Path) -> None:
    ctx, manifest, blessing, _, _ = run_pipeline_tail(
        tmp_path, {"random": "random", "oracle": "oracle"}, {"absolute": {"ndcg@5": 0.9, "hr@1": 0.5}}
    )
    metrics = Artifact.open(ctx.store, "runs/r1/evaluate").read_json("metrics.json")
    assert blessing["decision"] == "blessed" and blessing["candidate"] == "oracle"
    assert blessing["model_type"] == "evaltest_table" and blessing["model_name"] == "test"
    assert blessing["run_id"] == "r1" and blessing["evaluate_uri"] == ctx.store.uri("runs/r1/evaluate")
    assert blessing["split_fingerprint"] == metrics["split_fingerprint"]
    assert blessing["primary_metric"] == "ndcg@5" and blessing["primary_value"] == 1.0
    assert blessing["champion_version"] is None and blessing["bundle_uri"].endswith("/runs/r1/train/oracle")
    assert [(t["metric"], t["passed"]) for t in blessing["thresholds"]] == [("ndcg@5", True), ("hr@1", True)]
    assert blessing["candidates"]["random"]["blessed"] is False
    assert manifest.parents == [ctx.store.uri("runs/r1/evaluate")]
    published = run_step("publish", ctx)
    assert published.summary["version"] == 1 and published.summary["candidate"] == "oracle"


def test_candidate_worse_than_champion_is_rejected_and_better_one_is_significant(tmp_path: Path) -> None:
    # The champion (registered with other id maps) gets hr@1 = 0.75; `second` never ranks its target first.
    ctx, _, blessing, _, version = run_pipeline_tail(
        tmp_path, {"second": "second"}, {"relative_to_champion": {"hr@1": 1.0}}, champion=True
    )
    assert blessing["decision"] == "rejected" and blessing["champion_version"] == version
    assert blessing["reasons"][0].endswith(f"hr@1 = 0 < 1 × champion v{version}'s 0.75 = 0.75 (relative threshold)")

    other = tmp_path / "again"
    ctx, _, blessing, _, version = run_pipeline_tail(
        other,
        {"oracle": "oracle"},
        {"relative_to_champion": {"hr@1": 1.0}, "require_significant": True, "alpha": 0.1},
        champion=True,
    )
    assert blessing["decision"] == "blessed" and blessing["champion_evaluated"] is True
    sig = blessing["thresholds"][-1]
    # On ndcg@5 the oracle (1.0 for all) beats the champion on 3 users (u1, u11: target unknown to it, 0;
    # u5: unknown user, target 4th, 1/log2 5) and ties on 9. A resample shows no gain only if it draws the
    # tied users alone: probability 0.75^12 ≈ 0.032, so p ≈ 0.03.
    assert sig["kind"] == "significance" and sig["passed"] is True and 0.005 < sig["value"] < 0.1


def test_gate_refuses_an_input_that_is_not_an_evaluate_artifact(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "store")
    ctx = make_context(cfg, "r1")
    from recloop.artifacts import ArtifactWriter

    with ArtifactWriter(ctx.store, "runs/r1/evaluate", "evaluate", "r1") as w:
        w.put_json("metrics.json", {"hello": 1})
    with pytest.raises(ArtifactError, match="is not an evaluate report"):
        run_step("gate", ctx)
    with ArtifactWriter(ctx.store, "runs/r1/evaluate", "evaluate", "r1") as w:
        w.put_bytes("metrics.json", b"{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        run_step("gate", ctx)


@pytest.mark.s3
def test_evaluate_gate_and_publish_on_s3(tmp_path: Path, s3_store_config: StoreConfig) -> None:
    # The whole tail on SeaweedFS: verified bundle downloads, the champion from the S3 registry, blessing.
    ctx, manifest, blessing, _, version = run_pipeline_tail(
        tmp_path,
        {"oracle": "oracle", "random": "random"},
        {"absolute": {"ndcg@5": 0.9}, "relative_to_champion": {"hr@1": 1.0}},
        champion=True,
        store=s3_store_config,
    )
    assert ctx.store.root.startswith("s3://")
    assert blessing["decision"] == "blessed" and blessing["candidate"] == "oracle"
    assert blessing["champion_version"] == version and blessing["champion_evaluated"] is True
    metrics = Artifact.open(ctx.store, "runs/r1/evaluate").read_json("metrics.json")
    assert metrics["champion"]["metrics"]["hr@1"]["value"] == 0.75
    assert run_step("publish", ctx).summary["version"] == version + 1
