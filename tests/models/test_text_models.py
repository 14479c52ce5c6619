"""Contract tests for the text and sequential models, and their cold-start ability."""

from __future__ import annotations

import pytest

from recloop.data.interactions import Histories
from recloop.models import registry
from recloop.models.base import FitContext
from support.model_contract import (
    BLOCK_B,
    N_ITEMS,
    ModelContract,
    cold_split,
    text_context,
)


class TestTextKNNContract(ModelContract):
    model_type = "text_knn"
    capabilities = frozenset({"item_vectors", "vector_space"})
    params = {"half_life": 3.0}

    def fit_context(self) -> FitContext:
        return text_context()


class TestSASRecContract(ModelContract):
    model_type = "sasrec"
    capabilities = frozenset({"item_vectors", "vector_space"})
    params = {
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "max_len": 8,
        "epochs": 40,
        "patience": 40,
        "dropout": 0.0,
        "lr": 0.01,
    }


class TestTextSASRecContract(ModelContract):
    model_type = "text_sasrec"
    capabilities = frozenset({"item_vectors", "vector_space"})
    params = {
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "max_len": 8,
        "epochs": 30,
        "patience": 30,
        "dropout": 0.0,
        "lr": 0.01,
    }

    def fit_context(self) -> FitContext:
        return text_context()


@pytest.mark.parametrize(
    "model_type,params",
    [
        ("text_knn", {}),
        (
            "text_sasrec",
            {
                "dim": 16,
                "heads": 2,
                "layers": 1,
                "max_len": 8,
                "epochs": 30,
                "patience": 30,
                "dropout": 0.0,
                "lr": 0.01,
            },
        ),
    ],
)
def test_text_models_recommend_an_item_nobody_has_interacted_with(model_type, params):
    train, cold_item = cold_split()
    cls = registry.get(model_type)
    model = cls(cls.config_cls.model_validate({"type": model_type, **params})).fit(train, None, text_context())
    # A cooking fan who has seen every other block-B item: the only unseen cooking item is the cold one.
    recs = model.recommend(histories=Histories.from_lists([BLOCK_B[:-1]], N_ITEMS), k=1)
    assert recs.ids[0, 0] == cold_item


@pytest.mark.parametrize(
    "model_type,params",
    [
        ("sasrec", {"dim": 16, "heads": 2, "layers": 1, "max_len": 8, "epochs": 5}),
        ("ease", {"lambda": 1.0}),
        ("popularity", {}),
    ],
)
def test_id_only_models_rank_a_cold_item_last(model_type, params):
    train, cold_item = cold_split()
    cls = registry.get(model_type)
    model = cls(cls.config_cls.model_validate({"type": model_type, **params})).fit(train, None, None)
    recs = model.recommend(histories=Histories.from_lists([BLOCK_B[:-1]], N_ITEMS), k=N_ITEMS)
    ranked = recs.ids[0][recs.ids[0] >= 0].tolist()
    assert ranked[-1] == cold_item and len(ranked) == N_ITEMS - len(BLOCK_B) + 1
