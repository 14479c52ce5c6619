"""Model registry: race-free version numbers, compare-and-swap production alias, history, rollback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recloop.errors import ArtifactError, ConfigError, RecloopError, StoreError
from recloop.models.base import Recommender
from recloop.registry import AliasConflict, ModelRegistry, VersionSource, list_models
from recloop.store import FileStore
from support.helpers import fit_counts
from support.paths import REPO


def make_source(tmp: Path, seed: int, run_id: str | None = None) -> VersionSource:
    bundle = fit_counts(seed).save(tmp / f"bundle-{seed}")
    return VersionSource(
        bundle_dir=bundle,
        candidate="counts",
        model_type="test_counts",
        run_id=run_id or f"run-{seed}",
        metrics={
            "split_fingerprint": f"fp{seed}",
            "candidates": {
                "counts": {
                    "metrics": {
                        "ndcg@10": {"value": 0.1 * seed, "ci_low": 0.1 * seed - 0.05, "ci_high": 0.1 * seed + 0.05},
                        "recall@10": {"value": 0.25, "ci_low": None, "ci_high": None},
                    }
                }
            },
        },
        blessing={
            "decision": "blessed",
            "candidate": "counts",
            "champion_version": seed - 1 or None,
            "thresholds": [
                {"metric": "ndcg@10", "kind": "absolute", "required": 0.05, "value": 0.1 * seed, "passed": True}
            ],
            "reasons": ["counts passed every threshold"],
        },
        lineage={"train": f"file:///runs/run-{seed}/train"},
        split_fingerprint=f"fp{seed}",
        primary_metric="ndcg@10",
        primary_value=0.1 * seed,
    )


class FaultyStore:
    """A real store with a hook run before chosen operations (to inject races and outages)."""

    def __init__(self, inner: Any, before: Callable[[str, str], None]):
        self.inner = inner
        self.root = inner.root
        self.before = before

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        self.before("put_if_match", key)
        return self.inner.put_if_match(key, data, etag)

    def put_file(self, key: str, path: Any) -> None:
        self.before("put_file", key)
        self.inner.put_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.before("put_bytes", key)
        self.inner.put_bytes(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---------------------------------------------------------------------------------------------- versions


def test_register_numbers_versions_and_stores_everything(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies", actor="alice")
    assert reg.list_versions() == []
    assert reg.production() is None
    v1 = reg.register(make_source(tmp_path, 1))
    v2 = reg.register(make_source(tmp_path, 2))
    assert (v1.version, v2.version) == (1, 2)
    assert [v.version for v in reg.list_versions()] == [1, 2]
    listed = reg.list_versions()[1]
    assert (listed.candidate, listed.model_type, listed.run_id, listed.actor) == (
        "counts",
        "test_counts",
        "run-2",
        "alice",
    )
    assert listed.split_fingerprint == "fp2" and listed.primary_value == pytest.approx(0.2)
    assert listed.uri == any_store.uri("models/movies/v2")
    full = reg.get(2)
    assert full.metrics["candidates"]["counts"]["metrics"]["ndcg@10"]["value"] == pytest.approx(0.2)
    assert (full.blessing["decision"], full.blessing["champion_version"]) == ("blessed", 1)
    assert full.lineage == {"train": "file:///runs/run-2/train"}
    assert list_models(any_store) == ["movies"]
    # the stored bundle is the saved model, byte for byte loadable
    model = Recommender.load(reg.download(2, tmp_path / "dl"))
    np.testing.assert_array_equal(model.counts, fit_counts(2).counts)
    with pytest.raises(ArtifactError, match=r"has no version 7 .*versions: v1, v2"):
        reg.get(7)
    with pytest.raises(ConfigError, match="not a valid registry model name"):
        ModelRegistry(any_store, "../etc")


def test_version_numbers_are_never_reused_after_a_failed_publish(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies")
    reg.register(make_source(tmp_path, 1))

    def fail_on_bundle(op: str, key: str) -> None:
        if key.endswith("arrays.safetensors"):
            raise StoreError("simulated outage while uploading")

    with pytest.raises(StoreError, match="simulated outage"):
        ModelRegistry(FaultyStore(any_store, fail_on_bundle), "movies").register(make_source(tmp_path, 2))
    assert [v.version for v in reg.list_versions()] == [1]  # the half-written v2 is invisible
    assert reg.register(make_source(tmp_path, 3)).version == 3


def test_concurrent_registrations_get_distinct_numbers(any_store, tmp_path: Path) -> None:
    sources = [make_source(tmp_path, seed) for seed in range(1, 7)]
    barrier = threading.Barrier(len(sources))
    got: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(src: VersionSource) -> None:
        try:
            barrier.wait()
            got[src.run_id] = ModelRegistry(any_store, "movies").register(src).version
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got.values()) == [1, 2, 3, 4, 5, 6]
    reg = ModelRegistry(any_store, "movies")
    assert {v.version: v.run_id for v in reg.list_versions()} == {v: run for run, v in got.items()}


# ---------------------------------------------------------------------------------------------- alias


def test_promote_checks_the_expected_champion(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies", actor="bob")
    for seed in (1, 2, 3):
        reg.register(make_source(tmp_path, seed))
    first = reg.promote(1, expected=None, reason="first model", run_id="run-1")
    assert (first.from_version, first.to_version, first.changed) == (None, 1, True)
    alias = reg.production()
    assert alias is not None
    assert (alias.version, alias.previous_version, alias.run_id, alias.actor, alias.reason, alias.generation) == (
        1,
        None,
        "run-1",
        "bob",
        "first model",
        1,
    )
    assert alias.uri == any_store.uri("models/movies/v1")
    raw = json.loads(any_store.get_bytes("models/movies/production.json"))
    assert {"version", "uri", "previous_version", "updated_at", "run_id", "actor", "reason"} <= set(raw)

    with pytest.raises(AliasConflict, match=r"points at v1, but this promote was decided against nothing") as info:
        reg.promote(2, expected=None)
    assert (info.value.expected, info.value.found) == (None, 1)
    assert reg.production().version == 1
    change = reg.promote(3, expected=1)
    assert (change.from_version, change.to_version) == (1, 3)
    assert reg.production().previous_version == 1 and reg.production().generation == 2
    assert reg.promote(3, expected=1).changed is False  # already there: a re-run is a no-op
    with pytest.raises(ArtifactError, match="has no version 9"):
        reg.promote(9)

    events = [(e.action, e.outcome, e.version, e.previous_version, e.expected_version) for e in reg.history()]
    assert events == [
        ("register", "success", 1, None, None),
        ("register", "success", 2, None, None),
        ("register", "success", 3, None, None),
        ("promote", "success", 1, None, None),
        ("promote", "conflict", 2, 1, None),
        ("promote", "success", 3, 1, 1),
        ("promote", "noop", 3, 3, 1),
    ]
    assert [e.seq for e in reg.history()] == list(range(1, 8))


def test_lost_compare_and_swap_is_retried_or_reported(any_store, tmp_path: Path) -> None:
    """Another writer moves the alias between our read and our write: the CAS must notice."""
    reg = ModelRegistry(any_store, "movies")
    for seed in (1, 2, 3, 4):
        reg.register(make_source(tmp_path, seed))
    reg.promote(1, expected=None)
    rivals: list[int] = []

    def sneak_in(op: str, key: str) -> None:
        if key.endswith("production.json") and rivals:
            reg.promote(rivals.pop(0))  # the rival, through the plain store, wins the race

    racer = ModelRegistry(FaultyStore(any_store, sneak_in), "movies", actor="racer")
    # A publisher evaluated against v1 must not replace v2, which it never saw.
    rivals.append(2)
    with pytest.raises(AliasConflict, match="points at v2, but this promote was decided against v1"):
        racer.promote(3, expected=1)
    assert reg.production().version == 2
    # An operator promotion (no expectation) re-reads and lands on top of the rival's change.
    rivals.append(3)
    change = racer.promote(4)
    assert (change.from_version, change.to_version) == (3, 4)
    alias = reg.production()
    assert (alias.version, alias.previous_version, alias.generation, alias.actor) == (4, 3, 4, "racer")
    chain = [
        (e.version, e.previous_version, e.generation)
        for e in reg.history()
        if e.outcome == "success" and e.action == "promote"
    ]
    assert chain == [(1, None, 1), (2, 1, 2), (3, 2, 3), (4, 3, 4)]
    conflicts = [
        (e.version, e.previous_version, e.expected_version, e.actor) for e in reg.history() if e.outcome == "conflict"
    ]
    assert conflicts == [(3, 2, 1, "racer")]


def test_two_racing_publishers_one_wins_both_recorded(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies")
    reg.register(make_source(tmp_path, 1))
    reg.promote(1, expected=None)
    candidates = [reg.register(make_source(tmp_path, s)).version for s in (2, 3)]
    barrier = threading.Barrier(2)
    outcome: dict[int, str] = {}

    def publish(version: int) -> None:
        barrier.wait()
        try:
            ModelRegistry(any_store, "movies", actor=f"pub-{version}").promote(
                version, expected=1, action="publish", run_id=f"run-{version}"
            )
            outcome[version] = "success"
        except AliasConflict:
            outcome[version] = "conflict"

    threads = [threading.Thread(target=publish, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["conflict", "success"]
    winner = next(v for v, o in outcome.items() if o == "success")
    loser = next(v for v, o in outcome.items() if o == "conflict")
    alias = reg.production()
    assert (alias.version, alias.previous_version, alias.generation, alias.run_id) == (winner, 1, 2, f"run-{winner}")
    publishes = {(e.version, e.outcome, e.expected_version) for e in reg.history() if e.action == "publish"}
    assert publishes == {(winner, "success", 1), (loser, "conflict", 1)}


_RACER = textwrap.dedent("""
    import json, sys
    from recloop.config import StoreConfig
    from recloop.store import open_store
    from recloop.registry import ModelRegistry, AliasConflict
    cfg = StoreConfig.model_validate_json(sys.argv[1])
    version, mode = int(sys.argv[2]), sys.argv[3]
    reg = ModelRegistry(open_store(cfg), "movies", actor=f"proc-{version}")
    try:
        if mode == "expect1":
            reg.promote(version, expected=1, action="publish")
        else:
            reg.promote(version)
        print("success")
    except AliasConflict:
        print("conflict")
""")


def _store_config_json(store: Any, request: pytest.FixtureRequest) -> str:
    """The store's config as JSON for a child process (secrets included: it is a throwaway test server)."""
    from recloop.config import StoreConfig

    if isinstance(store, FileStore):
        return StoreConfig(root=store.root).model_dump_json()
    cfg: StoreConfig = request.getfixturevalue("s3_store_config")  # the same bucket as `store`
    doc = cfg.model_dump(mode="json")
    doc["access_key_id"] = cfg.access_key_id.get_secret_value() if cfg.access_key_id else None
    doc["secret_access_key"] = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
    return json.dumps(doc)


@pytest.mark.parametrize("mode", ["expect1", "any"])
def test_racing_processes_keep_the_alias_consistent(
    any_store, tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    reg = ModelRegistry(any_store, "movies")
    for seed in (1, 2, 3, 4):
        reg.register(make_source(tmp_path, seed))
    reg.promote(1, expected=None)
    cfg = _store_config_json(any_store, request)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, cfg, str(v), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for v in (2, 3, 4)
    ]
    results = {}
    for v, p in zip((2, 3, 4), procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results[v] = out.strip()
    alias = reg.production()
    promotions = [e for e in reg.history() if e.action != "register" and e.version in (2, 3, 4)]
    assert len(promotions) == 3  # every attempt is in the history
    if mode == "expect1":
        assert sorted(results.values()) == ["conflict", "conflict", "success"]
        winner = next(v for v, r in results.items() if r == "success")
        assert (alias.version, alias.previous_version, alias.generation) == (winner, 1, 2)
    else:
        assert set(results.values()) == {"success"}
        # No lost update: the successful changes form one unbroken chain of generations.
        chain = sorted(
            (e.generation, e.previous_version, e.version)
            for e in reg.history()
            if e.outcome == "success" and e.action == "promote"
        )
        assert [g for g, _, _ in chain] == [1, 2, 3, 4]
        for (_, _, before), (_, prev, _) in zip(chain, chain[1:]):
            assert prev == before
        assert (alias.generation, alias.version) == (4, chain[-1][2])


# ---------------------------------------------------------------------------------------------- rollback


def test_rollback_restores_previous_recommendations_exactly(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies")
    for seed in (1, 2):
        reg.register(make_source(tmp_path, seed))
    users = np.arange(6)
    expected = {seed: fit_counts(seed).recommend(users=users, k=5) for seed in (1, 2)}
    assert not np.array_equal(expected[1].ids, expected[2].ids)  # the versions really differ

    def production_recs(where: str):
        bundle = reg.champion_bundle(tmp_path / where)
        assert bundle is not None
        return bundle.version, Recommender.load(bundle.path).recommend(users=users, k=5)

    assert reg.champion_bundle(tmp_path / "none") is None
    reg.promote(1, expected=None)
    reg.promote(2, expected=1)
    version, recs = production_recs("after-v2")
    assert version == 2
    np.testing.assert_array_equal(recs.ids, expected[2].ids)

    change = reg.rollback()
    assert (change.from_version, change.to_version) == (2, 1)
    version, recs = production_recs("after-rollback")
    assert version == 1
    np.testing.assert_array_equal(recs.ids, expected[1].ids)
    np.testing.assert_array_equal(recs.scores, expected[1].scores)
    assert reg.production().reason == "rollback from v2 to v1"

    assert reg.rollback().to_version == 2  # like `kubectl rollout undo`: twice returns to the start
    assert reg.rollback(to=1).to_version == 1
    with pytest.raises(ArtifactError, match="has no version 5"):
        reg.rollback(to=5)
    assert reg.production().version == 1
    rollbacks = [(e.outcome, e.version, e.previous_version) for e in reg.history() if e.action == "rollback"]
    assert rollbacks == [("success", 1, 2), ("success", 2, 1), ("success", 1, 2)]


def test_rollback_without_a_previous_version_says_what_to_do(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies")
    with pytest.raises(RecloopError, match="no production version to roll back"):
        reg.rollback()
    reg.register(make_source(tmp_path, 1))
    reg.promote(1, expected=None)
    with pytest.raises(RecloopError, match="nothing to roll back to; pass --to VERSION"):
        reg.rollback()


# ---------------------------------------------------------------------------------------------- failures


def test_store_outage_at_the_alias_leaves_it_untouched(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies")
    for seed in (1, 2):
        reg.register(make_source(tmp_path, seed))
    reg.promote(1, expected=None)
    before = any_store.get_bytes("models/movies/production.json")

    def outage(op: str, key: str) -> None:
        raise StoreError("connection refused")

    with pytest.raises(StoreError, match=r"could not move the production alias of 'movies' to v2 .*still points at v1"):
        ModelRegistry(FaultyStore(any_store, outage), "movies").promote(2, expected=1)
    assert any_store.get_bytes("models/movies/production.json") == before


def test_corrupt_alias_is_reported_and_repairable(any_store, tmp_path: Path) -> None:
    reg = ModelRegistry(any_store, "movies")
    reg.register(make_source(tmp_path, 1))
    any_store.put_bytes("models/movies/production.json", b"{not json")
    with pytest.raises(ArtifactError, match=r"production.json is corrupt .*recloop model rollback NAME --to VERSION"):
        reg.production()
    with pytest.raises(ArtifactError, match="corrupt"):
        reg.promote(1, expected=None)
    assert reg.rollback(to=1).to_version == 1  # the documented repair
    assert reg.production().version == 1


# ---------------------------------------------------------------------------------------------- CLI


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from recloop.cli import main

    code = main(["model", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_model_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables to the terminal width
    store = FileStore(f"file://{tmp_path / 'store'}")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        "name: movielens\npublish: {model_name: movies}\nstore: {root: file://store}\n"
        "data: {interactions: {path: ratings.csv}}\n"
    )
    code, out, err = _cli(capsys, "list", "--config", str(cfg))
    assert (code, err) == (0, "")
    assert "No models in" in out
    reg = ModelRegistry(store, "movies", actor="ci")
    for seed in (1, 2):
        reg.register(make_source(tmp_path, seed))
    reg.promote(1, expected=None, reason="first")
    reg.promote(2, expected=1, reason="better ndcg")

    code, out, _ = _cli(capsys, "list", "-c", str(cfg))
    assert code == 0
    row = next(line for line in out.splitlines() if "movies" in line and "Models in" not in line)
    assert [c.strip() for c in row.split("│")[1:5]] == ["movies", "2", "v2", "v2"]

    code, out, _ = _cli(capsys, "list", "movies", "-c", str(cfg))
    assert code == 0
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "production" in lines["v2"] and "production" not in lines["v1"]
    assert "ndcg@10=0.2000" in lines["v2"] and "run-1" in lines["v1"]

    code, out, _ = _cli(capsys, "show", "-c", str(cfg))  # NAME from the config's publish.model_name
    assert code == 0
    assert "movies v2 (production)" in out
    assert "production since" in out and "better ndcg" in out
    table_rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert table_rows[:3] == [
        ["ndcg@10", "0.2000", "[0.1500, 0.2500]"],
        ["recall@10", "0.2500", ""],  # metrics
        ["ndcg@10", "absolute", "0.0500", "0.2000", "yes"],
    ]  # gate thresholds
    assert "Blessing: blessed (champion at evaluation: v1)" in out
    assert "counts passed every threshold" in out
    assert "file:///runs/run-2/train" in out  # lineage
    code, out, _ = _cli(capsys, "show", "movies", "--version", "1", "-c", str(cfg))
    assert code == 0 and "movies v1 (not in production)" in out

    code, out, _ = _cli(capsys, "rollback", "movies", "-c", str(cfg), "--reason", "bad clicks")
    assert code == 0
    assert f"production of 'movies': v2 -> v1 ({store.uri('models/movies/v1')})" in out
    alias = reg.production()
    assert (alias.version, alias.previous_version, alias.reason) == (1, 2, "bad clicks")
    assert "@" in alias.actor  # user@host of whoever ran the command

    code, out, _ = _cli(capsys, "promote", "movies", "2", "--expect", "2", "-c", str(cfg))
    assert code == 1 and reg.production().version == 1
    code, out, _ = _cli(capsys, "rollback", "movies", "--to", "1", "-c", str(cfg))
    assert (code, out.strip()) == (0, "production of 'movies' already is v1; nothing changed")

    code, out, _ = _cli(capsys, "history", "movies", "-c", str(cfg))
    assert code == 0
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [
        ("register", "success", "v1", "—"),
        ("register", "success", "v2", "—"),
        ("promote", "success", "v1", "—"),
        ("promote", "success", "v2", "v1"),
        ("rollback", "success", "v1", "v2"),
        ("promote", "conflict", "v2", "v1"),
        ("rollback", "noop", "v1", "v1"),
    ]

    code, _, err = _cli(capsys, "show", "books", "-c", str(cfg))
    assert code == 1 and "no model named 'books'" in err and "(models: movies)" in err
    code, _, err = _cli(capsys, "show", "movies", "--version", "9", "-c", str(cfg))
    assert code == 1 and "has no version 9" in err
    code, _, err = _cli(capsys, "list", "-c", str(tmp_path / "missing.yaml"))
    assert code == 2 and "file not found" in err
