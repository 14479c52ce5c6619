"""Torch network shared by `sasrec` and `text_sasrec`: causal self-attention over item sequences.

Imported only inside fit/score (torch is a heavy import). Item id 0 is padding; real items are 1..n.
An item's input and output representation is the same vector (tied weights):
    sasrec:      E_id[i]
    text_sasrec: P(text_emb[i]) + E_id[i] * known[i]     (E_id optional; zero for items unseen in training)
so an item with text but no interactions still has a representation that the model can score.

text_sasrec can also match text directly for items without an ID vector ("text match"): each item has a
fixed unit vector m[i] (the leading principal components of its text embedding) and each position a query
u_t, the recency-weighted mean of the m of the items read so far; an item without an ID vector (unseen in
training, or its ID dropped in this training step) gains beta * cos(u_t, m[i]), beta learned. That is
text_knn's signal inside the model, trained on the ID-dropped items: the `dim`-wide learned projection keeps
what helps the warm catalog and loses the fine title similarity (sequels, franchises) that can rank an item
nobody has interacted with. Items with an ID vector are scored exactly as without text match.

Either way a user's score for item i is the inner product of `last_hidden` with row i + 1 of
`items.all_items()` (with text match both carry extra columns: beta * u_t, and m[i] for items without an ID
vector, else 0; the input embedding uses only the first `dim`), which the serving ANN index relies on.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn


class ItemRepresentation(nn.Module):
    # Buffers (registered in __init__ when used): padded text embeddings, text-match vectors, known flags.
    text: torch.Tensor
    match: torch.Tensor
    known: torch.Tensor

    def __init__(
        self,
        n_items: int,
        dim: int,
        text_embeddings: torch.Tensor | None,
        use_id: bool,
        id_dropout: float,
        text_projection: Literal["linear", "mlp"] = "mlp",
        text_match: torch.Tensor | None = None,
        *,
        id_init_std: float,
    ):
        super().__init__()
        self.n_items = n_items
        self.dim = dim
        self.match_dims = 0 if text_match is None else int(text_match.shape[1])
        if text_match is not None:
            self.register_buffer(
                "match", torch.cat([torch.zeros(1, self.match_dims), text_match.float()]), persistent=True
            )
        self.use_text = text_embeddings is not None
        self.use_id = use_id or not self.use_text
        self.id_dropout = id_dropout
        if text_embeddings is not None:
            padded = torch.cat([torch.zeros(1, text_embeddings.shape[1]), text_embeddings.float()])
            self.register_buffer("text", padded, persistent=True)
            if text_projection == "linear":
                output = nn.Linear(padded.shape[1], dim)
                self.project = nn.Sequential(output)
            else:
                hidden = nn.Linear(padded.shape[1], dim)
                output = nn.Linear(dim, dim)
                self.project = nn.Sequential(hidden, nn.GELU(), output)
            # Text starts as a zero contribution the model learns to use: a large random text vector per
            # item would drown the ID vectors (text similarity alone is a weak next-item signal).
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        if self.use_id:
            self.ids = nn.Embedding(n_items + 1, dim, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=id_init_std)
            with torch.no_grad():
                self.ids.weight[0].zero_()
        # 1 for items that had training interactions (their ID vector is learned), else 0.
        self.register_buffer("known", torch.ones(n_items + 1), persistent=True)

    def all_items(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """(n_items + 1, dim [+ match dims]) representations; row 0 (padding) is zero.

        `text` replaces the stored (n_items + 1, text dim) text embeddings for this call: while the text
        encoder is being fine-tuned, some rows are fresh encodings that carry gradients to it.
        """
        rep: torch.Tensor | None = None
        has_id = torch.zeros(self.n_items + 1, 1, device=self.known.device)
        if self.use_text:
            rep = self.project(self.text if text is None else text)
            rep = rep * (torch.arange(rep.shape[0], device=rep.device) > 0).unsqueeze(1).to(rep.dtype)
        if self.use_id:
            has_id = self.known.unsqueeze(1)
            id_vecs = self.ids.weight * has_id
            if self.use_text and self.training and self.id_dropout > 0:
                # Dropping whole ID vectors teaches the model to rank from text alone (cold start).
                # Inverted dropout: kept vectors are scaled up so train and inference magnitudes agree.
                keep = (torch.rand(id_vecs.shape[0], 1, device=id_vecs.device) >= self.id_dropout).to(id_vecs.dtype)
                id_vecs = id_vecs * keep / (1.0 - self.id_dropout)
                has_id = has_id * keep
            rep = id_vecs if rep is None else rep + id_vecs
        if rep is None:
            raise ValueError("an item representation needs text embeddings or ID embeddings (or both)")
        if self.match_dims:
            rep = torch.cat([rep, (self.match * (1.0 - has_id)).to(rep.dtype)], dim=1)
        return rep


class SequentialRecommenderNet(nn.Module):
    # Buffers registered in __init__: the causal mask, and the text-match recency weights when used.
    causal: torch.Tensor
    match_decay: torch.Tensor

    def __init__(
        self,
        n_items: int,
        dim: int,
        layers: int,
        heads: int,
        dropout: float,
        max_len: int,
        text_embeddings: torch.Tensor | None = None,
        use_id: bool = True,
        id_dropout: float = 0.0,
        text_projection: Literal["linear", "mlp"] = "mlp",
        text_match: torch.Tensor | None = None,
        match_half_life: float = 1.0,
        *,
        item_init_std: float,
    ):
        super().__init__()
        self.max_len = max_len
        self.heads = heads
        self.dim = dim
        self.items = ItemRepresentation(
            n_items, dim, text_embeddings, use_id, id_dropout, text_projection, text_match, id_init_std=item_init_std
        )
        if self.items.match_dims:
            # beta = exp(match_log_scale); 5 puts a perfect text match on the scale of typical logits.
            self.match_log_scale = nn.Parameter(torch.tensor(math.log(5.0)))
            age = torch.arange(max_len).unsqueeze(1) - torch.arange(max_len).unsqueeze(0)
            decay = torch.where(age >= 0, 0.5 ** (age.clamp(min=0) / match_half_life), torch.zeros(()))
            self.register_buffer("match_decay", decay, persistent=False)
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim * 4, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1), persistent=False)

    def attention_mask(self, seqs: torch.Tensor) -> torch.Tensor:
        """(batch * heads, L, L) bool, True = blocked: causal, padding keys blocked, self always allowed.

        Blocking padding keys makes a row's output independent of how much left padding it carries (so
        training can trim batches to their longest row and inference pads to max_len with the same
        result); letting every position see itself keeps the leading padding rows from being all-blocked
        (which would give NaN).
        """
        length = seqs.shape[1]
        blocked = self.causal[-length:, -length:].unsqueeze(0) | (seqs == 0).unsqueeze(1)
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=seqs.device).unsqueeze(0)
        return blocked.repeat_interleave(self.heads, dim=0)

    def forward(self, seqs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, L) left-padded item ids (L <= max_len) -> (batch, L, dim) hidden states."""
        table = self.items.all_items() if table is None else table
        length = seqs.shape[1]
        rows = table[seqs]
        x = rows[..., : self.dim] * (self.dim**0.5) + self.positions.weight[-length:].unsqueeze(0)
        x = self.dropout(x) * (seqs != 0).unsqueeze(-1).to(x.dtype)
        h = self.norm(self.encoder(x, mask=self.attention_mask(seqs)))
        if not self.items.match_dims:
            return h
        # Text-match query: recency-weighted mean of the read items' m vectors (padding rows are zero).
        decay = self.match_decay[-length:, -length:]
        query = torch.nn.functional.normalize(torch.matmul(decay, self.items.match[seqs]), dim=-1, eps=1e-6)
        return torch.cat([h, (query * self.match_log_scale.exp()).to(h.dtype)], dim=-1)

    def last_hidden(self, seqs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(seqs, table)[:, -1]
