"""`recloop simulate`: the replay of serve -> log -> feedback -> retrain -> gate -> publish."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from recloop.cli import main
from recloop.errors import ConfigError, DataError
from recloop.simulate import RoundResult, SimulationSettings, judge, split_rounds


def _events(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i}" for i in range(n)],
            "timestamp": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
        }
    )


def test_future_events_are_split_into_equal_rounds_after_the_past() -> None:
    past, rounds = split_rounds(_events(100), rounds=3, future_share=0.3)
    assert len(past) == 70 and [len(r) for r in rounds] == [10, 10, 10]
    assert past["timestamp"].max() < rounds[0]["timestamp"].min()
    assert rounds[0]["timestamp"].max() < rounds[1]["timestamp"].min()
    with pytest.raises(DataError, match="lower --rounds"):
        split_rounds(_events(10), rounds=5, future_share=0.3)


def _round(r: int, shown: int, clicks: int, control: float, gate: str = "blessed", new: int = 50) -> RoundResult:
    return RoundResult(
        round=r,
        window_start="",
        window_end="",
        model_version=r,
        policy="greedy",
        users=10,
        shown=shown,
        clicks=clicks,
        ctr=clicks / shown,
        control_ctr=control,
        new_interactions=new,
        gate=gate,
    )


def test_the_verdict_says_whether_the_loop_improved_and_why_not() -> None:
    improved, verdict = judge([_round(1, 1000, 50, 0.05), _round(2, 1000, 90, 0.05)], past_events=1000)
    assert improved and "CTR went from 5.00% in round 1 to 9.00% in round 2" in verdict
    improved, verdict = judge(
        [_round(1, 1000, 50, 0.06, new=3), _round(2, 1000, 49, 0.06, gate="rejected", new=2)], past_events=10000
    )
    assert not improved
    assert "the gate rejected the retrained model in round(s) 2" in verdict
    assert "feedback added only 5 interactions next to 10000 past events (0.1%)" in verdict
    assert "within noise" in verdict and "did not beat the frozen initial model" in verdict


def test_simulation_options_and_config_are_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--rounds must be at least 1"):
        SimulationSettings(rounds=0).check()
    with pytest.raises(ConfigError, match="--sim-id"):
        SimulationSettings(rounds=1, sim_id="Bad Id").check()
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "store": {"root": f"file://{tmp_path / 'store'}"},
                "data": {"interactions": {"path": str(tmp_path / "none.csv")}},
            }
        )
    )
    assert main(["simulate", "--config", str(cfg_path), "--rounds", "2"]) == 2  # no models configured
    assert "none are configured" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "store" / "simulations" / "taken").mkdir(parents=True)
    (tmp_path / "store" / "simulations" / "taken" / "report.json").write_text("{}")
    args = ["simulate", "--config", str(cfg_path), "--sim-id", "taken", "--set", "models=[{type: popularity}]"]
    assert main(args) == 2
    assert "already holds a simulation" in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow
def test_two_rounds_on_synthetic_data_close_the_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recloop.artifacts import Artifact, run_prefix
    from recloop.data import synth
    from recloop.registry import ModelRegistry
    from recloop.store import FileStore

    data = tmp_path / "data"
    synth.generate(n_users=120, n_items=80, seed=3, events_per_user=25).write(data)
    store_root = tmp_path / "store"
    cfg_path = tmp_path / "sim.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "store": {"root": f"file://{store_root}"},
                "data": {
                    "interactions": {
                        "path": str(data / "interactions.csv"),
                        "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"},
                    },
                    "items": {
                        "path": str(data / "items.csv"),
                        "id": "item_id",
                        "category": "category",
                        "text": "{title}. {category}",
                    },
                },
                "validation": {"data_docs": False, "rating_range": [0.5, 5.0]},
                "models": [{"type": "ease", "lambda": 50}],
                "evaluation": {"bootstrap": 0},
                "policy": {"enabled": True, "min_slots": 50, "candidates": 30},
            }
        )
    )

    code = main(["simulate", "--config", str(cfg_path), "--rounds", "2", "--k", "5", "--sim-id", "t1"])

    out = capsys.readouterr().out
    assert code == 0, out
    store = FileStore(f"file://{store_root}")
    report = json.loads(store.get_bytes("simulations/t1/report.json"))
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    flat = " ".join(out.split())  # rich wraps long lines at the terminal width
    assert "simulation t1 (tiny-t1)" in flat and "report: file://" in flat

    source = Artifact.open(store, run_prefix("t1-source", "ingest")).read_parquet("interactions.parquet")
    past, future = split_rounds(source.sort_values(["timestamp", "source_row"], kind="stable"), 2, 0.3)
    assert report["data"]["past_events"] == len(past)
    for r, window in zip(rounds, future):
        assert r["users"] == window["user_id"].nunique()
        assert r["shown"] == 5 * r["users"]  # every user has at least 5 unseen items
        fb = Artifact.open(store, run_prefix(f"t1-r{r['round']}-feedback", "feedback"))
        slots = fb.read_parquet("bandit_log.parquet")
        # A shown item is clicked exactly when the user interacts with it in that round. (Users the model
        # does not know got fallback slates and stay pseudonyms: only known users map back to their ids.)
        upcoming = set(zip(window["user_id"].astype(str), window["item_id"].astype(str)))
        known = slots[slots["fallback_reason"].isna()]
        assert len(known) > 0.8 * len(slots)
        assert known["clicked"].tolist() == [(u, i) in upcoming for u, i in zip(known["user_id"], known["item_id"])]
        assert int(slots["clicked"].sum()) == r["clicks"] and r["ctr"] == pytest.approx(r["clicks"] / r["shown"])
        # Clicks plus the round's other (organic) interactions become the next training data.
        assert r["quarantined"] == 0 and r["new_interactions"] == r["clicks"] + r["organic_events"]
        assert r["new_interactions"] == len(window)
        ingest = Artifact.open(store, run_prefix(f"t1-r{r['round']}", "ingest")).manifest.summary
        added = sum(x["new_interactions"] for x in rounds[: r["round"]])
        assert ingest["rows"]["interactions"] == len(past) + added
        assert r["gate"] == "blessed" and r["published_version"] == r["round"] + 1
        assert r["model_version"] == r["round"]
        assert r["control_ctr"] is not None and r["offline_candidate"] is not None
    assert ModelRegistry(store, "tiny-t1").production().version == 3
    html = store.get_bytes("simulations/t1/report.html").decode()
    assert '<img alt="CTR and offline metric per round" src="data:image/png;base64,' in html
    assert report["verdict"] in html and store.exists("simulations/t1/ctr.png")
    # The real pipeline's registry and feedback state are untouched.
    assert not store.list("models/tiny/") and not store.exists("feedback/tiny/state.json")
