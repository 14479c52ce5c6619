"""Torch network shared by `sasrec` and `text_sasrec`: causal self-attention over item sequences.

Imported only inside fit/score (torch is a heavy import). Item id 0 is padding; real items are 1..n.
An item's input and output representation is the same vector (tied weights):
    sasrec:      E_id[i]
    text_sasrec: P(text_emb[i]) + E_id[i] * known[i]     (E_id optional; zero for items unseen in training)
so an item with text but no interactions still has a representation that the model can score.
"""

from __future__ import annotations

import torch
from torch import nn


class ItemRepresentation(nn.Module):
    def __init__(self, n_items: int, dim: int, text_embeddings: torch.Tensor | None, use_id: bool,
                 id_dropout: float):
        super().__init__()
        self.n_items = n_items
        self.use_text = text_embeddings is not None
        self.use_id = use_id or not self.use_text
        self.id_dropout = id_dropout
        if self.use_text:
            padded = torch.cat([torch.zeros(1, text_embeddings.shape[1]), text_embeddings.float()])
            self.register_buffer("text", padded, persistent=True)
            self.project = nn.Sequential(nn.Linear(padded.shape[1], dim), nn.GELU(), nn.Linear(dim, dim))
        if self.use_id:
            self.ids = nn.Embedding(n_items + 1, dim, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=0.02 if self.use_text else 0.1)
            with torch.no_grad():
                self.ids.weight[0].zero_()
        # 1 for items that had training interactions (their ID vector is learned), else 0.
        self.register_buffer("known", torch.ones(n_items + 1), persistent=True)

    def all_items(self) -> torch.Tensor:
        """(n_items + 1, dim) representations; row 0 (padding) is zero."""
        rep = 0
        if self.use_text:
            rep = self.project(self.text)
            rep = rep * (torch.arange(rep.shape[0], device=rep.device) > 0).unsqueeze(1).to(rep.dtype)
        if self.use_id:
            id_vecs = self.ids.weight * self.known.unsqueeze(1)
            if self.use_text and self.training and self.id_dropout > 0:
                # Dropping whole ID vectors teaches the model to rank from text alone (cold start).
                # Inverted dropout: kept vectors are scaled up so train and inference magnitudes agree.
                keep = (torch.rand(id_vecs.shape[0], 1, device=id_vecs.device) >= self.id_dropout).to(id_vecs.dtype)
                id_vecs = id_vecs * keep / (1.0 - self.id_dropout)
            rep = rep + id_vecs
        return rep


class SequentialRecommenderNet(nn.Module):
    def __init__(self, n_items: int, dim: int, layers: int, heads: int, dropout: float, max_len: int,
                 text_embeddings: torch.Tensor | None = None, use_id: bool = True, id_dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.items = ItemRepresentation(n_items, dim, text_embeddings, use_id, id_dropout)
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 4, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1),
                             persistent=False)

    def forward(self, seqs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, L) left-padded item ids -> (batch, L, dim) hidden states."""
        table = self.items.all_items() if table is None else table
        length = seqs.shape[1]
        x = table[seqs] * (table.shape[1] ** 0.5) + self.positions.weight[-length:].unsqueeze(0)
        # As in SASRec, padding slots are zeroed rather than masked: a key-padding mask would leave the
        # leading pad rows with nothing to attend to (NaN), and causal attention alone never does.
        x = self.dropout(x) * (seqs != 0).unsqueeze(-1).to(x.dtype)
        h = self.encoder(x, mask=self.causal[-length:, -length:])
        return self.norm(h)

    def last_hidden(self, seqs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(seqs, table)[:, -1]
