"""Saved bundles (`recloop.bundle`): the one folder format of models and policies, and the errors a broken
bundle gives (which file, and what to re-run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from recloop.bundle import BundleFormat
from recloop.config import PolicyConfig
from recloop.errors import ArtifactError
from recloop.models.base import Recommender
from recloop.models.popularity import Popularity, PopularityConfig
from recloop.policy.bandit import LinUCBPolicy
from recloop.policy.features import FeatureSpace
from support.model_contract import two_block_interactions

FORMAT = BundleFormat("widget", "widget.json", "arrays.safetensors", "re-run the widget step")


def test_a_bundle_is_a_sorted_json_manifest_and_safetensors_arrays(tmp_path: Path) -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3).T, "ids": np.array([3, 1], np.int64)}
    path = FORMAT.save(tmp_path / "b", {"z": 1, "a": [2]}, arrays)
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "widget.json"]
    assert (path / "widget.json").read_text() == json.dumps({"a": [2], "z": 1}, indent=2)
    assert FORMAT.read_manifest(path) == {"a": [2], "z": 1}
    loaded = FORMAT.read_arrays(path)
    assert sorted(loaded) == ["ids", "w"]
    np.testing.assert_array_equal(loaded["w"], arrays["w"])  # a non-contiguous view is saved as its values
    np.testing.assert_array_equal(loaded["ids"], arrays["ids"])


def test_broken_bundles_name_the_file_and_the_step_to_re_run(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=re.escape(f"{tmp_path} is not a widget bundle: widget.json is missing")):
        FORMAT.read_manifest(tmp_path)
    (tmp_path / "widget.json").write_text("{not json")
    with pytest.raises(
        ArtifactError,
        match=re.escape(f"{tmp_path / 'widget.json'} is corrupt (") + r".*\); "
        "re-run the widget step$",
    ):
        FORMAT.read_manifest(tmp_path)
    (tmp_path / "arrays.safetensors").write_bytes(b"truncated")
    with pytest.raises(
        ArtifactError,
        match=re.escape(f"{tmp_path / 'arrays.safetensors'} cannot be read (") + r".*\); re-run the widget step$",
    ):
        FORMAT.read_arrays(tmp_path)


def _saved_model(path: Path) -> Path:
    return Popularity(PopularityConfig()).fit(two_block_interactions()).save(path)


def _saved_policy(path: Path) -> Path:
    space = FeatureSpace.build(["a", "b"], np.array([2, 1]), [["x"], []], 1)
    return LinUCBPolicy(PolicyConfig(), space).save(path)


@pytest.mark.parametrize(
    ("save", "load", "manifest", "kind", "remedy"),
    [
        (_saved_model, Recommender.load, "model.json", "model", "re-run the train step"),
        (_saved_policy, LinUCBPolicy.load, "policy.json", "policy", "re-run the feedback step"),
    ],
)
def test_models_and_policies_share_the_bundle_errors(tmp_path: Path, save, load, manifest, kind, remedy) -> None:
    path = save(tmp_path / "bundle")
    (path / "arrays.safetensors").write_bytes(b"truncated")
    with pytest.raises(ArtifactError, match=re.escape("arrays.safetensors cannot be read (") + rf".*\); {remedy}$"):
        load(path)
    (path / manifest).write_text("{")
    with pytest.raises(ArtifactError, match=re.escape(f"{manifest} is corrupt (") + rf".*\); {remedy}$"):
        load(path)
    (path / manifest).unlink()
    with pytest.raises(ArtifactError, match=re.escape(f"{path} is not a {kind} bundle: {manifest} is missing")):
        load(path)


def test_policy_arrays_that_do_not_fit_the_feature_layout_are_unreadable(tmp_path: Path) -> None:
    path = _saved_policy(tmp_path / "policy")
    meta = json.loads((path / "policy.json").read_text())
    meta["features"]["categories"] = ["x", "y", "z"]  # the arrays hold one category's tables
    (path / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"arrays.safetensors cannot be read .*; re-run the feedback step"):
        LinUCBPolicy.load(path)
