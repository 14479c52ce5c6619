"""Contract tests for the text and sequential models, and their cold-start ability."""

from __future__ import annotations

import pytest

from recloop.data.interactions import Histories, Interactions
from recloop.models import registry
from recloop.models.base import FitContext, ItemSide
from support.model_contract import BLOCK_A, BLOCK_B, N_ITEMS, ModelContract, two_block_interactions

# Block A items read like space adventures, block B like cooking: text predicts the blocks.
BLOCK_TEXT = {
    0: "A space opera: starships, galaxy wars and alien empires.",
    1: "Baking and cooking: bread recipes, kitchen tips and desserts.",
}
ITEM_TEXTS = [f"Title {i}. {BLOCK_TEXT[0 if i in BLOCK_A else 1]} Episode {i}." for i in range(N_ITEMS)]


def text_context() -> FitContext:
    return FitContext(items=ItemSide(texts=ITEM_TEXTS), log=lambda _msg: None)


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


def _cold_split() -> tuple[Interactions, int]:
    """Training data in which the last item of block B never occurs: it exists only as text."""
    full = two_block_interactions()
    cold_item = int(BLOCK_B[-1])
    keep = full.item != cold_item
    train = full.subset(keep)
    return train, cold_item


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
    train, cold_item = _cold_split()
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
    train, cold_item = _cold_split()
    cls = registry.get(model_type)
    model = cls(cls.config_cls.model_validate({"type": model_type, **params})).fit(train, None, None)
    recs = model.recommend(histories=Histories.from_lists([BLOCK_B[:-1]], N_ITEMS), k=N_ITEMS)
    ranked = recs.ids[0][recs.ids[0] >= 0].tolist()
    assert ranked[-1] == cold_item and len(ranked) == N_ITEMS - len(BLOCK_B) + 1
