"""The sasrec training switches measured in the SASRec ablation (docs/models.md): item-vector init, which
windows of a history are trained on, how batches are drawn, and Adam's beta2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recloop.data.interactions import Histories
from recloop.models import registry
from support.model_contract import two_block_interactions


def _model(model_type: str, **params):
    cls = registry.get(model_type)
    return cls(cls.config_cls.model_validate({"type": model_type, **params}))


# Lengths 1 (no target), 2, 4 (exactly max_len + 1 for max_len 3) and 7 (two windows with train_windows: all).
HISTORIES = Histories.from_lists([[5], [1, 2], [3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]], n_items=8)


def test_last_window_is_each_users_last_max_len_plus_one_events():
    windows = _model("sasrec", max_len=3, train_windows="last")._training_windows(HISTORIES)
    # One row per user with a target, item ids + 1, left-padded; user 3's events 0..2 are never targets.
    np.testing.assert_array_equal(windows, [[0, 0, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]])


def test_all_windows_also_train_on_the_early_part_of_a_long_history():
    windows = _model("sasrec", max_len=3, train_windows="all")._training_windows(HISTORIES)
    np.testing.assert_array_equal(windows, [[0, 0, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7], [1, 2, 3, 4]])


@pytest.mark.parametrize("batching", ["shuffle", "length_buckets"])
def test_batches_cover_every_window_once_trimmed_to_their_longest_row(batching):
    model = _model("sasrec", max_len=6, batch_size=3, batching=batching)
    lists = [[1, 2], [1, 2, 3], [1, 2, 3, 4, 5, 6, 7], [4, 5], [2, 6, 1, 3], [7, 1, 2], [3, 3, 4, 5, 6], [1, 7]]
    windows = model._training_windows(Histories.from_lists(lists, n_items=8))
    seen, sizes = [], []
    for inputs, targets in model._training_batches(windows, np.random.default_rng(0)):
        rows = np.concatenate([inputs, targets[:, -1:]], axis=1)
        assert (rows[:, 0] > 0).any()  # trimmed: the first column holds some row's first item
        seen += [tuple(r[r > 0]) for r in rows]
        sizes.append(len(rows))
    assert sorted(seen) == sorted(tuple(r[r > 0]) for r in windows)
    assert sorted(sizes) == [2, 3, 3]


def test_shuffled_batches_mix_lengths_that_buckets_keep_apart():
    # 64 windows of length 2 and 64 of length 7: buckets give single-length batches, shuffling mixes them.
    lists = [[1, 2]] * 64 + [[1, 2, 3, 4, 5, 6, 7]] * 64
    histories = Histories.from_lists(lists, n_items=8)

    def widths(batching: str) -> set[int]:
        model = _model("sasrec", max_len=6, batch_size=16, batching=batching)
        windows = model._training_windows(histories)
        return {inputs.shape[1] for inputs, _ in model._training_batches(windows, np.random.default_rng(0))}

    assert widths("length_buckets") == {1, 6}
    assert widths("shuffle") == {6}


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_item_vectors_start_with_the_configured_spread(std):
    model = _model("sasrec", dim=64, item_init_std=std)
    model.n_items = 20_000
    weight = model._build().items.ids.weight.detach()
    assert float(weight[0].abs().max()) == 0.0  # padding row
    assert float(weight[1:].std()) == pytest.approx(std, rel=0.02)


def test_adam_beta2_reaches_the_optimizer(monkeypatch):
    used = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used.append(self.defaults["betas"])

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    _model("sasrec", dim=16, epochs=1, adam_beta2=0.98, device="cpu").fit(two_block_interactions())
    assert used == [(0.9, 0.98)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"item_init_std": 0.0}, "item_init_std"),
        ({"train_windows": "first"}, "train_windows"),
        ({"batching": "sorted"}, "batching"),
    ],
)
def test_out_of_range_switches_are_rejected_naming_the_field(params, field):
    with pytest.raises(ValidationError) as err:
        _model("sasrec", **params)
    assert [e["loc"] for e in err.value.errors()] == [(field,)]
