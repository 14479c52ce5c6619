"""The behaviour every recloop model promises, as a pytest mixin.

Usage, in a test module for a model:

    from support.model_contract import ModelContract

    class TestEaseContract(ModelContract):
        model_type = "ease"
        params = {"lambda": 1.0}

`test_models.py::test_every_registered_model_has_a_contract` fails if a registered model type has no
such class anywhere under tests/, so a new model cannot skip these checks.

The fixture data are two disjoint co-occurrence blocks of items (block A is used by more users than
block B). A history holding all of one block but one item makes that item the obvious next one. For text
models each block has its own text (`ITEM_TEXTS`, `text_context`), and `cold_split` leaves one item out of
training entirely.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from recloop.data.interactions import Histories, Interactions
from recloop.models import registry
from recloop.models.base import FitContext, ItemSide, Recommender

N_ITEMS = 16
BLOCK_A = np.arange(0, 8)
BLOCK_B = np.arange(8, 16)
N_USERS_A, N_USERS_B = 24, 12


def two_block_interactions(seed: int = 0) -> Interactions:
    """Users of block A each take 6 of its 8 items, users of block B 6 of theirs, in random order."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(N_USERS_A + N_USERS_B):
        block = BLOCK_A if user < N_USERS_A else BLOCK_B
        chosen = rng.permutation(block)[:6]
        users += [user] * len(chosen)
        items += chosen.tolist()
    timestamps = np.arange(len(users), dtype=np.int64) * 60 + 1_700_000_000
    return Interactions.from_arrays(users, items, timestamps, None, N_USERS_A + N_USERS_B, N_ITEMS)


def held_out_interactions(train: Interactions) -> Interactions:
    """One unseen in-block item per user, as a validation split (for models that early-stop)."""
    hist = train.histories()
    users, items = [], []
    for user in range(train.n_users):
        block = BLOCK_A if user < N_USERS_A else BLOCK_B
        unseen = np.setdiff1d(block, hist.row(user))
        users.append(user)
        items.append(int(unseen[0]))
    return Interactions.from_arrays(
        users, items, np.full(len(users), 1_800_000_000), None, train.n_users, train.n_items
    )


# Block A items read like space adventures, block B like cooking: text predicts the blocks.
BLOCK_TEXT = {
    0: "A space opera: starships, galaxy wars and alien empires.",
    1: "Baking and cooking: bread recipes, kitchen tips and desserts.",
}
ITEM_TEXTS = [f"Title {i}. {BLOCK_TEXT[0 if i in BLOCK_A else 1]} Episode {i}." for i in range(N_ITEMS)]


def text_context() -> FitContext:
    """The fit context of text models: every item's text."""
    return FitContext(items=ItemSide(texts=ITEM_TEXTS), log=lambda _msg: None)


def cold_split() -> tuple[Interactions, int]:
    """Training data in which the last item of block B never occurs: it exists only as text."""
    full = two_block_interactions()
    cold_item = int(BLOCK_B[-1])
    keep = full.item != cold_item
    train = full.subset(keep)
    return train, cold_item


class ModelContract:
    """Subclass with `model_type` (a registered type), `params` (its config, small and fast) and the
    `capabilities` the model offers (see `recloop.models.base`)."""

    model_type: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    # False for models that ignore the history (popularity): the block test then checks global order.
    personalized: ClassVar[bool] = True
    # Which of "item_vectors", "vector_space", "item_weights" the model offers (returns not None). Declared,
    # not detected: a model that silently loses one (serving would drop its ANN index or explanations) fails.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    # ------------------------------------------------------------------ helpers
    def fit_context(self) -> FitContext | None:
        """What fit() gets besides the splits; text models override this to provide item texts."""
        return None

    def make(self, **overrides: Any) -> Recommender:
        cls = registry.get(self.model_type)
        return cls(cls.config_cls.model_validate({"type": self.model_type, **self.params, **overrides}))

    @pytest.fixture(scope="class")
    def train(self) -> Interactions:
        return two_block_interactions()

    @pytest.fixture(scope="class")
    def model(self, train: Interactions) -> Recommender:
        return self.make().fit(train, held_out_interactions(train), self.fit_context())

    # ------------------------------------------------------------------ the contract
    def test_registered_type(self, model: Recommender) -> None:
        assert model.type_name == self.model_type
        assert model.n_users == N_USERS_A + N_USERS_B and model.n_items == N_ITEMS

    def test_scores_are_dense_float32(self, model: Recommender, train: Interactions) -> None:
        hist = train.histories().select([0, 1, N_USERS_A])
        scores = np.asarray(model.score_histories(hist, np.array([0, 1, N_USERS_A])))
        assert scores.shape == (3, N_ITEMS)
        assert scores.dtype == np.float32
        assert np.isfinite(scores).all()
        scores[:, 0] = -np.inf  # callers (ranking, serving) mask seen items in place

    def test_obvious_next_item_comes_first(self, model: Recommender) -> None:
        # Unknown users: ad-hoc histories, each all of one block but its last item.
        histories = Histories.from_lists([BLOCK_A[:-1], BLOCK_B[:-1]], N_ITEMS)
        recs = model.recommend(histories=histories, k=3)
        assert recs.ids.shape == (2, 3)
        assert recs.ids[0, 0] == BLOCK_A[-1]
        if self.personalized:
            assert recs.ids[1, 0] == BLOCK_B[-1]
        else:
            # Same global order for everyone: block A's items are the popular ones.
            assert recs.ids[1, 0] in BLOCK_A

    def test_seen_items_are_excluded_by_default(self, model: Recommender, train: Interactions) -> None:
        users = np.arange(train.n_users)
        recs = model.recommend(users=users, k=N_ITEMS)
        seen = train.to_csr(binary=True).toarray() > 0
        for user in users:
            got = recs.ids[user][recs.ids[user] >= 0]
            assert not seen[user, got].any(), f"user {user} was recommended an item they have seen"
            # Every unseen item is still ranked (nothing else was dropped).
            assert sorted(got.tolist()) == np.flatnonzero(~seen[user]).tolist()
            assert (recs.ids[user][len(got) :] == -1).all()
            assert np.isneginf(recs.scores[user][len(got) :]).all()

    def test_seen_items_are_included_on_request(self, model: Recommender, train: Interactions) -> None:
        recs = model.recommend(users=[0], k=N_ITEMS, exclude_seen=False)
        assert sorted(recs.ids[0].tolist()) == list(range(N_ITEMS))
        seen_items = set(train.histories().row(0).tolist())
        assert seen_items <= set(recs.ids[0].tolist())

    def test_candidates_restrict_the_output(self, model: Recommender) -> None:
        candidates = np.array([1, 3, 9, 12, 15])
        histories = Histories.from_lists([[0, 2], [8, 10]], N_ITEMS)
        recs = model.recommend(histories=histories, k=4, candidates=candidates)
        assert recs.ids.shape == (2, 4)
        assert set(recs.ids.ravel().tolist()) <= set(candidates.tolist())
        # Candidate restriction must not change the relative order of the candidates.
        full = model.recommend(histories=histories, k=N_ITEMS)
        for row in range(2):
            in_full = [i for i in full.ids[row] if i in set(candidates.tolist())][:4]
            assert recs.ids[row].tolist() == in_full

    def test_rows_are_sorted_best_first(self, model: Recommender) -> None:
        recs = model.recommend(users=np.arange(6), k=5)
        finite = np.where(np.isfinite(recs.scores), recs.scores, -np.finfo(np.float32).max)
        assert (np.diff(finite, axis=1) <= 0).all()

    def test_save_load_round_trip(self, model: Recommender, tmp_path: Path) -> None:
        model.id_map_ref = "file:///store/runs/r1/preprocess"
        model.save(tmp_path / "bundle")
        loaded = Recommender.load(tmp_path / "bundle")
        assert type(loaded) is type(model)
        assert loaded.config == model.config
        assert loaded.id_map_ref == "file:///store/runs/r1/preprocess"
        users = np.arange(model.n_users)
        before, after = model.recommend(users=users, k=6), loaded.recommend(users=users, k=6)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.scores, before.scores)
        histories = Histories.from_lists([[0, 1, 2], [9]], N_ITEMS)
        np.testing.assert_array_equal(loaded.score_histories(histories), model.score_histories(histories))

    def test_bundle_holds_no_pickle(self, model: Recommender, tmp_path: Path) -> None:
        model.save(tmp_path / "bundle")
        files = sorted(p.name for p in (tmp_path / "bundle").iterdir())
        assert files == ["arrays.safetensors", "model.json"]
        manifest = json.loads((tmp_path / "bundle" / "model.json").read_text())
        assert manifest["type"] == self.model_type
        # safetensors: an 8-byte little-endian header length, then a JSON header (never a pickle stream).
        raw = (tmp_path / "bundle" / "arrays.safetensors").read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        assert all(entry["dtype"] != "O" for key, entry in header.items() if key != "__metadata__")

    def test_same_seed_same_model(self, train: Interactions) -> None:
        valid = held_out_interactions(train)
        first = self.make(seed=7).fit(train, valid, self.fit_context())
        second = self.make(seed=7).fit(train, valid, self.fit_context())
        users = np.arange(train.n_users)
        a, b = first.recommend(users=users, k=8), second.recommend(users=users, k=8)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)

    def test_unknown_user_history_without_training_user(self, model: Recommender) -> None:
        # A brand-new user (no id) with a one-item history and an empty history both get full rows.
        histories = Histories.from_lists([[4], []], N_ITEMS)
        recs = model.recommend(histories=histories, k=5)
        assert recs.ids.shape == (2, 5)
        assert (recs.ids >= 0).all()
        assert 4 not in recs.ids[0].tolist()
        with pytest.raises(IndexError):
            model.recommend(users=[N_USERS_A + N_USERS_B], k=3)

    # ------------------------------------------------------------------ capabilities
    def test_declared_capabilities_are_offered(self, model: Recommender) -> None:
        offered = {
            "item_vectors": model.item_vectors() is not None,
            "vector_space": model.vector_space() is not None,
            "item_weights": model.item_weights() is not None,
        }
        assert {name for name, present in offered.items() if present} == set(self.capabilities)

    def test_item_vectors_are_one_finite_row_per_item(self, model: Recommender) -> None:
        vectors = model.item_vectors()
        if "item_vectors" not in self.capabilities:
            assert vectors is None
            with pytest.raises(NotImplementedError):
                Recommender.similar_items(model, [0], k=3)
            return
        vectors = np.asarray(vectors)
        assert vectors.ndim == 2 and vectors.shape[0] == N_ITEMS and np.isfinite(vectors).all()
        similar = model.similar_items([0, 9], k=3)
        assert similar.ids.shape == (2, 3)
        assert 0 not in similar.ids[0].tolist() and 9 not in similar.ids[1].tolist()

    def test_vector_space_reproduces_the_scores(self, model: Recommender, train: Interactions) -> None:
        space = model.vector_space()
        if "vector_space" not in self.capabilities:
            assert space is None
            return
        assert space.item_vectors.dtype == np.float32 and space.item_vectors.flags.c_contiguous
        assert space.item_vectors.shape[0] == N_ITEMS
        # Known users with their training histories (learned user vectors may be used) ...
        users = np.array([0, 1, N_USERS_A])
        known = train.histories().select(users)
        queries = space.encode(known, users)
        assert queries.shape == (3, space.item_vectors.shape[1])
        np.testing.assert_allclose(
            queries @ space.item_vectors.T, model.score_histories(known, users), rtol=1e-4, atol=1e-4
        )
        # ... and ad-hoc histories, an empty one included.
        adhoc = Histories.from_lists([BLOCK_A[:-1], [9], []], N_ITEMS)
        np.testing.assert_allclose(
            space.encode(adhoc, None) @ space.item_vectors.T, model.score_histories(adhoc), rtol=1e-4, atol=1e-4
        )

    def test_item_weights_sum_to_the_scores(self, model: Recommender) -> None:
        weights = model.item_weights()
        if "item_weights" not in self.capabilities:
            assert weights is None
            return
        assert weights.shape == (N_ITEMS, N_ITEMS)
        # The fixture's events all weigh 1, so binary and weighted readings of a history agree.
        histories = Histories.from_lists([BLOCK_A[:-1], [9, 12], [3]], N_ITEMS)
        summed = histories.to_csr() @ weights
        summed = summed.toarray() if hasattr(summed, "toarray") else summed
        np.testing.assert_allclose(summed, model.score_histories(histories), rtol=1e-5, atol=1e-6)
