"""sasrec / text_sasrec training mechanics: windows, padding, the chunked softmax, schedules, text match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recloop.data.interactions import Histories
from recloop.models import registry
from recloop.models.sasrec import _full_softmax_backward, _left_padded, _lr_schedule
from recloop.models.sequential_net import SequentialRecommenderNet
from support.model_contract import (
    BLOCK_A,
    BLOCK_B,
    N_ITEMS,
    ModelContract,
    cold_split,
    text_context,
    two_block_interactions,
)


def _model(model_type: str, **params):
    cls = registry.get(model_type)
    return cls(cls.config_cls.model_validate({"type": model_type, **params}))


# ------------------------------------------------------------------ training windows


def test_windows_cover_every_event_after_the_first_once_as_a_target():
    model = _model("sasrec", max_len=3)
    # Lengths 1 (no target), 2, 4 (one window of max_len + 1) and 7 (two windows overlapping by one).
    histories = Histories.from_lists([[5], [1, 2], [3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]], n_items=8)
    windows = model._training_windows(histories)
    expected = np.array(
        [
            [0, 0, 2, 3],  # user 1: items 1, 2 (+1), left-padded
            [4, 5, 6, 7],  # user 2: items 3..6
            [4, 5, 6, 7],  # user 3, last window: items 3..6
            [1, 2, 3, 4],  # user 3, first window: items 0..3 (3 is also the next window's first input)
        ]
    )
    np.testing.assert_array_equal(windows, expected)
    targets = [(row[j], row[j + 1]) for row in windows for j in range(3) if row[j] > 0 and row[j + 1] > 0]
    # Every event except each user's first is predicted exactly once, from the event before it.
    assert sorted(targets) == sorted([(2, 3), (4, 5), (5, 6), (6, 7), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)])


def test_batches_are_trimmed_to_their_longest_row_and_cover_all_windows():
    model = _model("sasrec", max_len=6, batch_size=2)
    histories = Histories.from_lists([[1, 2], [1, 2, 3], [1, 2, 3, 4, 5, 6, 7], [4, 5]], n_items=8)
    windows = model._training_windows(histories)
    seen = []
    for inputs, targets in model._training_batches(windows, np.random.default_rng(0)):
        assert inputs.shape == targets.shape
        width = inputs.shape[1] + 1
        full = np.concatenate([inputs, targets[:, -1:]], axis=1)
        assert (full[:, 0] > 0).any()  # no all-padding leading column survives
        seen += [tuple(r[r > 0]) for r in full]
        assert width <= 7
    assert sorted(seen) == sorted(tuple(r[r > 0]) for r in windows)


# ------------------------------------------------------------------ network


@pytest.mark.parametrize("match_dims", [0, 4])
def test_left_padding_does_not_change_the_output(match_dims):
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS, 12), dim=1)
    match = torch.nn.functional.normalize(torch.randn(N_ITEMS, match_dims), dim=1) if match_dims else None
    net = SequentialRecommenderNet(
        N_ITEMS, 16, 2, 2, 0.0, 10, text_embeddings=text, text_match=match, item_init_std=0.1
    ).eval()
    short = torch.tensor([[3, 7, 2]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 3, 7, 2]])
    with torch.no_grad():
        a, b = net.last_hidden(short), net.last_hidden(padded)
    assert a.shape == (1, 16 + match_dims)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_full_softmax_has_the_exact_loss_and_gradients(monkeypatch):
    import recloop.models.sasrec as sasrec

    torch.manual_seed(0)
    hidden_param = torch.randn(37, 8, requires_grad=True)
    table_param = torch.randn(21, 8, requires_grad=True)
    targets = torch.randint(1, 21, (37,))
    known = torch.ones(20, dtype=torch.bool)
    known[[4, 9]] = False
    targets[targets == 5] = 1  # targets are known items
    targets[targets == 10] = 2

    logits = (hidden_param @ table_param[1:].T).masked_fill(~known, float("-inf"))
    reference = torch.nn.functional.cross_entropy(logits, targets - 1)
    reference.backward()
    grads = hidden_param.grad.clone(), table_param.grad.clone()
    hidden_param.grad = table_param.grad = None

    monkeypatch.setattr(sasrec, "_LOGIT_CELLS", 21 * 5)  # chunks of 5 positions
    loss = _full_softmax_backward(hidden_param * 1.0, table_param * 1.0, targets, known)
    assert loss == pytest.approx(float(reference.detach()), rel=1e-5)
    torch.testing.assert_close(hidden_param.grad, grads[0])
    torch.testing.assert_close(table_param.grad, grads[1])


def test_learning_rate_schedule():
    cfg = _model("sasrec", epochs=4, warmup_epochs=1, lr_schedule="cosine").config
    factor = _lr_schedule(cfg, steps_per_epoch=2)  # 8 steps, 2 of warm-up
    assert [round(factor(s), 4) for s in range(8)] == [0.5, 1.0, 1.0, 0.9330, 0.75, 0.5, 0.25, 0.0670]
    constant = _lr_schedule(_model("sasrec", epochs=4).config, steps_per_epoch=2)
    assert [constant(s) for s in range(8)] == [1.0] * 8


def test_cuda_without_a_cuda_device_is_a_config_error_naming_the_model(monkeypatch):
    from recloop.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _model("sasrec", name="seq", device="cuda", epochs=1)
    with pytest.raises(ConfigError) as err:
        model.fit(two_block_interactions())
    assert err.value.source == "model 'seq' (type sasrec)"
    assert err.value.errors == ["device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'"]
    assert _model("sasrec", device="auto")._device() == "cpu"


def test_left_padded_keeps_the_most_recent_items():
    h = Histories.from_lists([[1, 2, 3, 4, 5], [6], []], n_items=8)
    np.testing.assert_array_equal(_left_padded(h, 3), [[4, 5, 6], [0, 0, 7], [0, 0, 0]])


# ------------------------------------------------------------------ text match and mixed precision


class TestTextSASRecTextMatchContract(ModelContract):
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
        "text_match_dims": 4,
        "mixed_precision": True,
    }

    def fit_context(self):
        return text_context()


def test_text_match_scores_are_the_inner_product_the_serving_index_uses():
    train, cold_item = cold_split()
    model = _model("text_sasrec", dim=16, heads=2, layers=1, max_len=8, epochs=3, text_match_dims=4)
    model.fit(train, None, text_context())
    histories = Histories.from_lists([BLOCK_A[:5], BLOCK_B[:2], [3]], N_ITEMS)
    space = model.vector_space()
    assert space.item_vectors.shape == (N_ITEMS, 16 + 4)
    # Only the item without an ID vector carries text-match columns.
    match_columns = np.abs(space.item_vectors[:, 16:]).sum(axis=1)
    assert match_columns[cold_item] > 0 and np.count_nonzero(match_columns) == 1
    served = space.encode(histories, None) @ space.item_vectors.T
    np.testing.assert_allclose(served, model.score_histories(histories), rtol=1e-4, atol=1e-4)


def test_text_match_survives_save_and_load(tmp_path):
    from recloop.models.base import Recommender

    model = _model("text_sasrec", dim=16, heads=2, layers=1, max_len=8, epochs=3, text_match_dims=4)
    model.fit(two_block_interactions(), None, text_context())
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    histories = Histories.from_lists([BLOCK_B[:3]], N_ITEMS)
    np.testing.assert_allclose(loaded.score_histories(histories), model.score_histories(histories), rtol=1e-5)
    assert loaded.text_match.shape == (N_ITEMS, 4) and loaded.epochs_trained == 3


def test_chunked_bfloat16_softmax_matches_one_chunk(monkeypatch):
    import recloop.models.sasrec as sasrec

    torch.manual_seed(1)
    hidden_param = torch.randn(23, 8, requires_grad=True)
    table_param = torch.randn(13, 8, requires_grad=True)
    targets = torch.randint(1, 13, (23,))
    known = torch.ones(12, dtype=torch.bool)
    results = []
    for cells in (1 << 23, 12 * 4):  # one chunk; chunks of 4 positions (the cast table is reused)
        monkeypatch.setattr(sasrec, "_LOGIT_CELLS", cells)
        loss = _full_softmax_backward(hidden_param * 1.0, table_param * 1.0, targets, known, torch.bfloat16)
        results.append((loss, hidden_param.grad.clone(), table_param.grad.clone()))
        hidden_param.grad = table_param.grad = None
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1])
    # The table's gradient is summed in bfloat16 per chunk: equal up to bfloat16 rounding.
    torch.testing.assert_close(results[1][2], results[0][2], atol=2e-3, rtol=1e-2)
