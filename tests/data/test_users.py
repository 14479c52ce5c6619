"""The users module: typed attributes checked at validate, written by preprocess, read by models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recloop import config
from recloop.artifacts.kinds import Dataset
from recloop.config.data import UserSource
from recloop.data.users import check_attributes, user_side_frame
from recloop.errors import ConfigError, ValidationFailed
from recloop.steps.base import StepContext, run_step
from recloop.steps.train import load_training_data
from recloop.store import FileStore
from support.helpers import synthetic_pipeline

RAW = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u3", "u4"],
        "age": ["34", "n/a", "", "250"],
        "band": ["young", "old", "young", "teen"],
        "likes": ["jazz|cooking", "jazz", None, "polka"],
        "bio": ["Plays sax.", "", None, "Bakes."],
    }
)
SOURCE = UserSource(
    path="users.csv",
    attributes={
        "age": {"type": "numeric", "range": [0, 120], "max_missing": 0.5},
        "band": {"type": "categorical", "allowed": ["young", "old"]},
        "likes": {"type": "multi", "allowed": ["jazz", "cooking"]},
        "bio": {"type": "text"},
    },
    profile="{band}, likes {likes}",
)


def test_checks_count_invalid_values_and_the_share_without_one() -> None:
    checks = {c.name: c for c in check_attributes(RAW, SOURCE)}
    # age: "n/a" does not parse, 250 is out of range, "" is missing: 3 of 4 users have no valid value.
    assert (checks["age"].invalid, checks["age"].missing_share, checks["age"].ok) == (2, 0.75, False)
    assert checks["age"].examples == ["n/a", "250"]
    assert checks["age"].describe() == (
        "data.users.attributes.age: 2 invalid value(s) (e.g. 'n/a', '250'); 75.0% of 4 users have no valid "
        "value (max_missing 50%)"
    )
    assert (checks["band"].invalid, checks["band"].missing_share, checks["band"].ok) == (1, 0.25, True)
    assert (checks["likes"].invalid, checks["likes"].missing_share) == (1, 0.5)
    assert (checks["bio"].invalid, checks["bio"].missing_share) == (0, 0.5)


def test_preprocess_frame_is_typed_per_contiguous_user_with_the_profile() -> None:
    frame = user_side_frame(RAW, ["u3", "u1", "u9"], SOURCE)  # u9 has no row in the table
    assert frame["user_idx"].tolist() == [0, 1, 2]
    assert frame["age"].tolist()[1] == 34.0 and all(math.isnan(v) for v in frame["age"].tolist()[::2])
    assert frame["band"].isna().tolist() == [False, False, True] and frame["band"][:2].tolist() == ["young"] * 2
    assert frame["likes"].tolist() == [None, ["jazz", "cooking"], None]
    assert frame["profile"].tolist() == ["young, likes", "young, likes jazz, cooking", ", likes"]


@pytest.mark.parametrize(
    ("users", "error"),
    [
        (
            {"attributes": {"band": {"type": "categorical", "range": [0, 1]}}},
            "range: only numeric attributes have one",
        ),
        (
            {"attributes": {"age": {"type": "numeric", "allowed": ["1"]}}},
            "allowed: only categorical and multi attributes list their values",
        ),
        ({"attributes": {}, "profile": "{band}"}, "profile: the template must reference configured attributes"),
    ],
)
def test_attribute_config_errors_say_what_to_fix(users: dict[str, Any], error: str) -> None:
    raw = {"name": "t", "data": {"interactions": {"path": "/x.csv"}, "users": {"path": "/u.csv", **users}}}
    with pytest.raises(ConfigError) as exc:
        config.from_dict(raw)
    assert any(error in line for line in exc.value.errors), exc.value.errors


def _pipeline(tmp_path: Path, attributes: dict[str, Any], on_failure: str = "fail") -> StepContext:
    cfg = synthetic_pipeline(
        tmp_path,
        "users",
        {"users": {"id": "user_id", "attributes": attributes}},
        {
            "validation": {"on_failure": on_failure, "rating_range": [0.5, 5.0], "data_docs": False},
            "preprocess": {"min_user_interactions": 3},
            "models": [{"type": "popularity"}],
        },
        n_users=200,
        n_items=60,
        seed=3,
        events_per_user=15,
        user_effect=1.0,
    )
    return StepContext(config=cfg, store=FileStore(cfg.store.root), run_id="r1")


def test_the_pipeline_carries_typed_attributes_to_the_models(tmp_path: Path) -> None:
    ctx = _pipeline(
        tmp_path,
        {"age_group": {"type": "categorical"}, "region": {"type": "categorical", "allowed": ["north", "south"]}},
        on_failure="warn",
    )
    for step in ("ingest", "validate", "preprocess"):
        run_step(step, ctx)
    preprocess = ctx.open(ctx.store.uri("runs/r1/preprocess"))
    summary = preprocess.manifest.summary
    assert summary["user_attribute_types"] == {"age_group": "categorical", "region": "categorical"}
    assert summary["user_attributes"]["age_group"] == 1.0 and 0.3 < summary["user_attributes"]["region"] < 0.7
    frame = Dataset(preprocess).users()
    assert frame is not None and frame["user_idx"].tolist() == list(range(len(frame)))
    users = load_training_data(preprocess).users
    assert users.vocabularies["age_group"] == ["18-24", "25-34", "35-44", "45-54", "55+"]
    assert users.vocabularies["region"] == ["north", "south"]
    codes = users.categorical["region"]
    assert codes.dtype == np.int32 and set(np.unique(codes)) == {-1, 0, 1}  # east and west are not allowed


def test_validation_fails_on_too_many_users_without_a_valid_value(tmp_path: Path) -> None:
    ctx = _pipeline(tmp_path, {"region": {"type": "categorical", "allowed": ["north"], "max_missing": 0.5}})
    run_step("ingest", ctx)
    with pytest.raises(ValidationFailed) as exc:
        run_step("validate", ctx)
    assert "data.users.attributes.region:" in str(exc.value) and "(max_missing 50%)" in str(exc.value)
