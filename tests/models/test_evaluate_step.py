"""The evaluate step end to end on committed artifacts, champion re-indexing included."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from recloop.artifacts import Artifact
from recloop.data.interactions import Histories, Interactions
from recloop.errors import ArtifactError, ConfigError
from recloop.evaluation.champion import RemappedScorer
from recloop.evaluation.protocols import build_queries, load_split, with_sampled_negatives
from recloop.steps.base import RunParams, run_step
from support.eval_helpers import (
    ITEM_IDS,
    N_ITEMS,
    N_USERS,
    USER_IDS,
    K,
    TableConfig,
    TableScores,
    decoy_of,
    register_champion,
    setup_run,
    small_world_frames,
    user_sequence,
)

pytestmark = pytest.mark.usefixtures("eval_test_models")


def metrics_doc(ctx) -> dict:
    return Artifact.open(ctx.store, f"runs/{ctx.run_id}/evaluate").read_json("metrics.json")


def test_candidates_are_measured_with_exact_values(tmp_path: Path) -> None:
    ctx, log = setup_run(tmp_path, {"second": "second", "oracle": "oracle"})
    manifest = run_step("evaluate", ctx)
    doc = metrics_doc(ctx)
    oracle, second = doc["candidates"]["oracle"], doc["candidates"]["second"]
    # The oracle ranks every user's test item first: perfect accuracy, a zero-width CI.
    assert oracle["metrics"]["ndcg@5"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert oracle["metrics"]["hr@1"]["value"] == 1.0
    assert oracle["metrics"]["precision@5"]["value"] == pytest.approx(0.2)  # 1 hit / 5
    # `second` puts a decoy first and the target second for every user.
    assert second["metrics"]["ndcg@5"]["value"] == pytest.approx(1 / math.log2(3), abs=1e-6)  # 0.630930
    assert second["metrics"]["mrr@5"]["value"] == 0.5
    assert second["metrics"]["hr@1"]["value"] == 0.0
    # Top-1 coverage: the 12 users' targets are 10 distinct items; the decoys are fewer.
    assert oracle["metrics"]["coverage@1"]["value"] == 1.0
    decoys = {decoy_of(u) for u in range(N_USERS)}
    assert second["metrics"]["coverage@1"]["value"] == pytest.approx(len(decoys) / N_ITEMS)
    # Diversity over categories g{i % 3}; every metric has a value.
    assert set(oracle["metrics"]) >= {
        f"{m}@{k}" for k in K for m in ("ndcg", "novelty", "diversity", "arp", "head_share", "coverage", "map", "f1")
    }
    assert doc["ranking"] == ["oracle", "second"] and doc["best_candidate"] == "oracle"
    assert doc["champion"] is None and oracle["vs_champion"] is None
    assert doc["k"] == K and doc["primary"] == "ndcg@5" and doc["split"] == "test"
    assert doc["protocol"]["ranking"] == "full" and doc["protocol"]["n_users"] == N_USERS
    assert doc["protocol"]["diversity_basis"] == "categories"
    assert oracle["type"] == "evaltest_table" and oracle["bundle_uri"].endswith("/runs/r1/train/oracle")
    # Segments: every user has 4 history events (≤5).
    assert oracle["segments"]["history ≤5"]["n_users"] == N_USERS
    assert oracle["segments"]["history >20"]["n_users"] == 0
    assert oracle["segments"]["history >20"]["metrics"]["ndcg@5"]["value"] is None

    # The fingerprint is the split's, recomputable from the preprocess artifact alone.
    data = load_split(Artifact.open(ctx.store, "runs/r1/preprocess"))
    assert doc["split_fingerprint"] == build_queries(data, "test").fingerprint()
    assert manifest.summary["split_fingerprint"] == doc["split_fingerprint"]
    assert manifest.summary["candidates"] == {"second": pytest.approx(0.63093, abs=1e-5), "oracle": 1.0}
    assert manifest.parents == [ctx.store.uri(f"runs/r1/{a}") for a in ("preprocess", "train/oracle", "train/second")]
    assert set(manifest.files) == {"metrics.json", "per_user.parquet", "report.html"}

    art = Artifact.open(ctx.store, "runs/r1/evaluate")
    per_user = art.read_parquet("per_user.parquet")
    assert len(per_user) == N_USERS
    assert per_user["user_id"].tolist() == USER_IDS
    assert per_user["candidate/second/mrr@5"].tolist() == [0.5] * N_USERS
    assert (per_user["history_length"] == 4).all()
    assert art.read_bytes("report.html").startswith(b"<!DOCTYPE html>")
    assert any("oracle: ndcg@5 = 1.0000" in line for line in log)


def test_random_candidate_is_far_below_the_oracle_and_reproducible(tmp_path: Path) -> None:
    ctx, _ = setup_run(tmp_path, {"oracle": "oracle", "random": "random"})
    run_step("evaluate", ctx)
    first = metrics_doc(ctx)
    assert first["candidates"]["random"]["metrics"]["ndcg@5"]["value"] < 0.7
    run_step("evaluate", dataclasses.replace(ctx, params=RunParams(force=True)))
    again = metrics_doc(ctx)
    for name in ("oracle", "random"):  # seeded bootstrap: identical values and CIs on a re-run
        assert again["candidates"][name]["metrics"] == first["candidates"][name]["metrics"]


def test_sampled_negatives_protocol(tmp_path: Path) -> None:
    ctx, _ = setup_run(tmp_path, {"second": "second"}, {"evaluation.sampled_negatives": 2})
    run_step("evaluate", ctx)
    doc = metrics_doc(ctx)
    assert doc["protocol"]["ranking"] == "sampled" and doc["protocol"]["sampled_negatives"] == 2
    # Ranking is among target + 2 sampled unseen items: `second` ranks its target 2nd where its decoy was
    # sampled and 1st elsewhere. The seeded sample is reproducible, so the expected value is exact.
    queries = with_sampled_negatives(
        build_queries(load_split(Artifact.open(ctx.store, "runs/r1/preprocess"))), 2, seed=0
    )
    decoy_sampled = [decoy_of(int(u)) in queries.candidates.row(r) for r, u in enumerate(queries.users)]
    assert queries.candidates.counts().tolist() == [3] * N_USERS
    expected = np.mean([0.5 if d else 1.0 for d in decoy_sampled])
    assert 0 < sum(decoy_sampled) < N_USERS  # both cases occur
    assert doc["candidates"]["second"]["metrics"]["mrr@5"]["value"] == pytest.approx(expected)


def test_valid_split_is_evaluated_on_train_history(tmp_path: Path) -> None:
    ctx, _ = setup_run(tmp_path, {"oracle": "oracle"}, {"evaluation.split": "valid"})
    run_step("evaluate", ctx)
    doc = metrics_doc(ctx)
    assert doc["split"] == "valid"
    # The oracle aims at the test item; on the valid split that item is still unseen and outranks the
    # valid item, which the baseline puts after it: hr@1 = 0 for everyone.
    assert doc["candidates"]["oracle"]["metrics"]["hr@1"]["value"] == 0.0


def test_champion_is_re_indexed_through_both_id_maps(tmp_path: Path) -> None:
    ctx, log = setup_run(tmp_path, {"second": "second"})
    version = register_champion(ctx.store, tmp_path)
    manifest = run_step("evaluate", ctx)
    doc = metrics_doc(ctx)
    champ = doc["champion"]
    assert champ["version"] == version and champ["type"] == "evaltest_table" and "error" not in champ
    assert (champ["known_users"], champ["known_items"]) == (N_USERS - 1, N_ITEMS - 1)
    # It ranks the target first for users it knows whose target it knows: not u5 (unknown user), not u1 and
    # u11 (their target i3 is unknown to it, so it gets no score): 9 of 12.
    assert champ["metrics"]["hr@1"]["value"] == pytest.approx(9 / 12)
    vs = doc["candidates"]["second"]["vs_champion"]["hr@1"]
    assert vs["candidate"] == 0.0 and vs["champion"] == pytest.approx(0.75) and vs["diff"] == pytest.approx(-0.75)
    assert vs["p_value"] == 1.0
    assert manifest.summary["champion_version"] == version
    assert manifest.summary["champion_primary"] == champ["metrics"]["ndcg@5"]["value"]
    per_user = Artifact.open(ctx.store, "runs/r1/evaluate").read_parquet("per_user.parquet")
    hits = dict(zip(per_user["user_id"], per_user["champion/hr@1"]))
    assert [u for u, h in hits.items() if h == 0.0] == ["u1", "u5", "u11"]


def test_remapped_scorer_translates_histories_users_and_items() -> None:
    # Champion space: items ['i2', 'i0'] (i1 unknown), users ['b'] ('a' unknown).
    class Echo(TableScores):  # records what the champion is asked
        calls: list = []

        def score_histories(self, histories, users=None):
            Echo.calls.append(
                ([histories.row(r).tolist() for r in range(len(histories))], None if users is None else users.tolist())
            )
            return np.array([[5.0, 7.0]] * len(histories), np.float32)

    model = Echo(TableConfig())
    model.fit(Interactions.from_arrays([], [], n_users=1, n_items=2))
    scorer = RemappedScorer.build(
        model,
        np.array(["b"], object),
        np.array(["i2", "i0"], object),
        np.array(["a", "b"], object),
        np.array(["i0", "i1", "i2"], object),
    )
    hist = Histories.from_lists([[0, 1], [2]], n_items=3)
    scores = scorer(hist, np.array([0, 1]))
    # Current item i0 <- champion 1 (7.0), i1 unknown (-inf), i2 <- champion 0 (5.0).
    assert scores.tolist() == [[7.0, -np.inf, 5.0], [7.0, -np.inf, 5.0]]
    # Known user b went by its champion index with history [i2 -> 0]; unknown user a by history only,
    # [i0 -> 1] (i1 dropped, the champion never saw it).
    assert sorted(Echo.calls, key=lambda c: c[1] is None) == [([[0]], [0]), ([[1]], None)]
    with pytest.raises(ArtifactError, match="inconsistent"):
        RemappedScorer.build(
            model, np.array(["b"], object), np.array(["i2"], object), np.array(["a"], object), np.array(["i0"], object)
        )


def test_a_corrupt_champion_is_recorded_not_fatal(tmp_path: Path) -> None:
    ctx, log = setup_run(tmp_path, {"oracle": "oracle"})
    version = register_champion(ctx.store, tmp_path)
    arrays = Path(ctx.store.base) / f"models/test/v{version}/model/arrays.safetensors"
    arrays.write_bytes(b"garbage")
    run_step("evaluate", ctx)
    doc = metrics_doc(ctx)
    assert doc["champion"]["version"] == version
    assert "does not match its manifest" in doc["champion"]["error"]
    assert doc["candidates"]["oracle"]["vs_champion"] is None
    assert any("WARNING champion" in line for line in log)


def test_a_candidate_from_another_preprocess_run_is_refused(tmp_path: Path) -> None:
    ctx, _ = setup_run(tmp_path, {"oracle": "oracle"})
    # Replace the preprocess artifact with one that has an extra item.
    from support.eval_helpers import write_preprocess

    train, valid, test = small_world_frames()
    write_preprocess(ctx.store, "r1", train, valid, test, USER_IDS, ITEM_IDS + ["i10"])
    with pytest.raises(ArtifactError, match="trained on another preprocess artifact"):
        run_step("evaluate", ctx)


def test_missing_inputs_and_empty_train_artifacts(tmp_path: Path) -> None:
    ctx, _ = setup_run(tmp_path, {"oracle": "oracle"})
    with pytest.raises(
        ArtifactError,
        match=r"evaluate cannot run: input 'train' \(trained model\): .*runs/elsewhere/train "
        r"holds no committed trained model",
    ):
        run_step("evaluate", ctx, inputs={"train": ctx.store.uri("runs/elsewhere/train")})
    ctx.store.delete("runs/r1/train/oracle/_MANIFEST.json")  # an interrupted train: nothing committed
    with pytest.raises(ArtifactError, match=r"runs/r1/train holds no committed trained model"):
        run_step("evaluate", ctx)
    with pytest.raises(ArtifactError, match="has no _MANIFEST.json"):
        run_step(
            "evaluate",
            ctx,
            inputs={"preprocess": ctx.store.uri("runs/nope/preprocess"), "train": ctx.store.uri("runs/r1/train")},
        )


def test_cold_start_needs_a_preprocess_with_held_out_items(tmp_path: Path) -> None:
    # The small world's preprocess artifact was written without a cold-start hold-out.
    ctx, _ = setup_run(tmp_path, {"oracle": "oracle"}, {"evaluation.cold_start.item_share": 0.2})
    with pytest.raises(ConfigError, match="cold_start.item_share: .* re-run preprocess"):
        run_step("evaluate", ctx)


def test_user_sequences_are_distinct_items() -> None:
    # The small world relies on each user's five items being distinct.
    assert all(len(set(user_sequence(u))) == 5 for u in range(N_USERS))
