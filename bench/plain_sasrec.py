"""A plain SASRec with a full cross-entropy loss, written independently of recloop: the reference that
issue 11 measures recloop's `sasrec` against (bench/sasrec_ablation.py, variant `reference`).

It follows the SASRec paper (Kang & McAuley 2018) as most re-implementations do (pmixer/SASRec.pytorch),
with the full softmax of "Turning Dross Into Gold Loss" (Klenitskiy & Vasilev 2023) instead of one sampled
negative:

* item embeddings (std 0.02, padding id 0) read scaled by sqrt(dim), learned positions, dropout;
* each block: LayerNorm'd queries attend causally over the sequence (residual from the normed queries),
  LayerNorm, then a point-wise feed-forward of width `dim` with ReLU and a residual; padded positions are
  zeroed after the embedding and after every block; a final LayerNorm;
* logits are the hidden state times the item embeddings (tied), cross-entropy over every item at every
  non-padded position;
* training data: each user's last `max_len + 1` training events (one window per user), Adam (0.9, 0.98)
  at a constant learning rate, uniformly shuffled batches, no gradient clipping;
* validation NDCG@10 every `eval_every` epochs, the best weights kept, stop after `patience_epochs` epochs
  without a gain.

Only the data preparation and the metric (recloop's evaluation code, hand-tested) are shared with recloop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class PlainSchedule:
    max_len: int = 200
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    max_epochs: int = 200
    eval_every: int = 2
    patience_epochs: int = 20


class PlainSASRecNet(nn.Module):
    def __init__(self, n_items: int, s: PlainSchedule):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, s.dim, padding_idx=0)
        self.positions = nn.Embedding(s.max_len, s.dim)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.dropout = nn.Dropout(s.dropout)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(s.dim, eps=1e-8) for _ in range(s.layers))
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(s.dim, s.heads, dropout=s.dropout, batch_first=True) for _ in range(s.layers)
        )
        self.forward_norms = nn.ModuleList(nn.LayerNorm(s.dim, eps=1e-8) for _ in range(s.layers))
        self.forwards = nn.ModuleList(
            nn.Sequential(
                nn.Linear(s.dim, s.dim),
                nn.Dropout(s.dropout),
                nn.ReLU(),
                nn.Linear(s.dim, s.dim),
                nn.Dropout(s.dropout),
            )
            for _ in range(s.layers)
        )
        self.last_norm = nn.LayerNorm(s.dim, eps=1e-8)
        self.scale = s.dim**0.5

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(batch, L) left-padded ids (0 = padding) -> (batch, L, dim)."""
        length = seqs.shape[1]
        keep = (seqs != 0).unsqueeze(-1).float()
        x = self.items(seqs) * self.scale + self.positions.weight[-length:].unsqueeze(0)
        x = self.dropout(x) * keep
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seqs.device), 1)
        for norm_q, attention, norm_f, feed in zip(
            self.attention_norms, self.attentions, self.forward_norms, self.forwards, strict=True
        ):
            q = norm_q(x)
            out, _ = attention(q, x, x, attn_mask=causal, need_weights=False)
            x = norm_f(q + out)
            x = (x + feed(x)) * keep
        return self.last_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = hidden @ self.items.weight.T
        out[..., 0] = float("-inf")
        return out


def last_windows(histories, max_len: int) -> np.ndarray:
    """(users with >= 2 events, max_len + 1) ids + 1 of each user's last max_len + 1 events, left-padded."""
    rows = []
    for r in range(len(histories)):
        seq = histories.row(r)[-(max_len + 1) :].astype(np.int64) + 1
        if len(seq) >= 2:
            rows.append(np.concatenate([np.zeros(max_len + 1 - len(seq), np.int64), seq]))
    return np.stack(rows)


@dataclass
class PlainResult:
    best_valid: float
    best_epoch: int
    epochs: int
    seconds: float
    score: Callable


def fit_plain(
    train_histories,
    valid,
    n_items: int,
    seed: int,
    validate: Callable[[Callable, object, object], float],
    schedule: PlainSchedule = PlainSchedule(),
    epochs_cap: int | None = None,
    log: Callable[[str], None] = print,
) -> PlainResult:
    """Train on `train_histories`, validate with `validate(score_fn, histories, valid)`; best weights kept."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    s = schedule
    net = PlainSASRecNet(n_items, s)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr, betas=s.betas)
    windows = torch.from_numpy(last_windows(train_histories, s.max_len))

    def score(histories, _users=None) -> np.ndarray:
        net.eval()
        seqs = np.zeros((len(histories), s.max_len), np.int64)
        for r in range(len(histories)):
            row = histories.row(r)[-s.max_len :].astype(np.int64) + 1
            if len(row):
                seqs[r, -len(row) :] = row
        with torch.no_grad():
            out = net.logits(net(torch.from_numpy(seqs))[:, -1])[:, 1:]
        return out.numpy()

    best, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    max_epochs = min(s.max_epochs, epochs_cap or s.max_epochs)
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        total = 0.0
        order = rng.permutation(len(windows))
        for start in range(0, len(order), s.batch_size):
            batch = windows[order[start : start + s.batch_size]]
            x, y = batch[:, :-1], batch[:, 1:]
            hidden = net(x)
            mask = (x > 0) & (y > 0)
            loss = nn.functional.cross_entropy(net.logits(hidden[mask]), y[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        msg = f"    reference epoch {epoch}: loss {total / -(-len(order) // s.batch_size):.4f}"
        if epoch % s.eval_every == 0:
            value = validate(score, train_histories, valid)
            msg += f", valid ndcg@10 {value:.4f}"
            if value > best:
                best, best_epoch = value, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        log(msg)
        if best_epoch and epoch - best_epoch >= s.patience_epochs:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return PlainResult(best, best_epoch, epoch, time.perf_counter() - started, score)
