"""Sequential transformers: `sasrec` (Kang & McAuley, 2018) and the text hybrid `text_sasrec`.

Both predict the next item from the user's recent sequence with causal self-attention, trained on every
position of every training sequence (full softmax cross-entropy, or sampled softmax for big catalogs),
early-stopped on validation NDCG@10. `text_sasrec` represents each item by a learned projection of its
frozen text embedding (UniSRec/RecFormer family) plus an optional ID embedding with dropout, so items with
text but no interactions can be scored — the cold-start case ID-only models cannot handle.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, ModelConfig, Recommender
from recloop.models.early_stopping import EarlyStopping, ndcg_at_k
from recloop.models.registry import register
from recloop.models.text_encoder import EncoderConfig
from recloop.models.text_knn import embed_item_texts


class SASRecConfig(ModelConfig):
    type: Literal["sasrec"] = "sasrec"
    dim: int = Field(64, ge=8, le=1024, description="Hidden size.")
    layers: int = Field(2, ge=1, le=12)
    heads: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, ge=2, le=1024, description="Most recent items the model reads.")
    epochs: int = Field(100, ge=1, description="Upper bound; early stopping usually ends sooner.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["full", "sampled"] = Field("full", description="Full softmax, or sampled softmax.")
    negatives: int = Field(256, ge=1, description="Sampled softmax: negatives per batch (shared).")
    patience: int = Field(5, ge=1, description="Epochs without validation NDCG@10 gain before stopping.")
    eval_every: int = Field(1, ge=1)
    max_seconds: float | None = Field(None, gt=0, description="Stop training after this wall time.")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class TextSASRecConfig(SASRecConfig):
    type: Literal["text_sasrec"] = "text_sasrec"  # type: ignore[assignment]
    encoder: EncoderConfig = EncoderConfig()
    use_id_embedding: bool = Field(True, description="Add a learned ID vector to items seen in training.")
    id_dropout: float = Field(0.5, ge=0, le=1, description="Share of item ID vectors dropped per step.")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use 'auto' or 'cpu'")
    return name


def _left_padded(histories: Histories, length: int) -> np.ndarray:
    """(rows, length) int64 matrix of the last `length` items + 1 (0 = padding), left-padded."""
    n = len(histories)
    out = np.zeros((n, length), dtype=np.int64)
    lengths = np.minimum(histories.lengths(), length)
    if n == 0:
        return out
    row = np.repeat(np.arange(n), lengths)
    # Column of each kept event, counted from the right edge.
    offset = np.concatenate([np.arange(lk) for lk in lengths]) if lengths.sum() else np.zeros(0, np.int64)
    col = length - np.repeat(lengths, lengths) + offset
    src = np.repeat(histories.indptr[1:] - lengths, lengths) + offset
    out[row, col] = histories.items[src].astype(np.int64) + 1
    return out


class SASRec(Recommender):
    config: SASRecConfig
    uses_text = False

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.net = None
        self.text_embeddings: np.ndarray | None = None
        self.known_items = np.zeros(0, np.float32)
        self.best_epoch = 0
        self.best_valid_ndcg = float("nan")

    # ------------------------------------------------------------------ network
    def _build(self):
        from recloop.models.sequential_net import SequentialRecommenderNet

        import torch

        cfg = self.config
        text = torch.from_numpy(self.text_embeddings) if self.uses_text else None
        use_id = getattr(cfg, "use_id_embedding", True)
        id_dropout = getattr(cfg, "id_dropout", 0.0)
        net = SequentialRecommenderNet(self.n_items, cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len,
                                       text_embeddings=text, use_id=use_id, id_dropout=id_dropout)
        return net

    def _training_batches(self, histories: Histories, rng: np.random.Generator):
        """Yield (inputs, targets) windows: each user's last max_len+1 items, shifted by one."""
        cfg = self.config
        lengths = histories.lengths()
        users = np.flatnonzero(lengths >= 2)
        seqs = _left_padded(histories.select(users), cfg.max_len + 1)
        order = rng.permutation(len(users))
        for start in range(0, len(order), cfg.batch_size):
            batch = seqs[order[start:start + cfg.batch_size]]
            yield batch[:, :-1], batch[:, 1:]

    def fit(self, train: Interactions, valid: Interactions | None = None,
            context: FitContext | None = None) -> SASRec:
        import torch

        cfg = self.config
        self._remember(train)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        device = _device(cfg.device)
        if self.uses_text:
            self.text_embeddings = embed_item_texts(cfg.encoder, context, train.n_items)
        counts = np.bincount(train.item, minlength=train.n_items)
        self.known_items = np.concatenate([[0.0], (counts > 0).astype(np.float32)]).astype(np.float32)
        net = self._build()
        net.items.known.copy_(torch.from_numpy(self.known_items))
        net.to(device)
        known_mask = torch.from_numpy(self.known_items[1:] > 0).to(device)
        known_ids = torch.nonzero(known_mask).squeeze(1) + 1
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        log = context.log if context else (lambda _msg: None)
        stopper = EarlyStopping(patience=cfg.patience)
        best_state = None
        started = time.perf_counter()
        histories = self.train_histories
        self.net = net
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            total, steps = 0.0, 0
            for inputs, targets in self._training_batches(histories, rng):
                x = torch.from_numpy(inputs).to(device)
                y = torch.from_numpy(targets).to(device)
                table = net.items.all_items()
                hidden = net(x, table)
                mask = y > 0
                h, t = hidden[mask], y[mask]
                if cfg.loss == "full" or cfg.negatives >= self.n_items:
                    # Items without training events are not in the training catalog: leaving them in the
                    # softmax would teach the model to push every never-seen item down (bad for cold start).
                    logits = (h @ table[1:].T).masked_fill(~known_mask, float("-inf"))
                    loss = torch.nn.functional.cross_entropy(logits, t - 1)
                else:
                    negs = known_ids[torch.randint(0, len(known_ids), (cfg.negatives,), device=device)]
                    cand = torch.cat([t.unsqueeze(1), negs.expand(len(t), -1)], dim=1)
                    logits = (h.unsqueeze(1) * table[cand]).sum(-1)
                    logits[:, 1:] = logits[:, 1:].masked_fill(cand[:, 1:] == t.unsqueeze(1), -1e9)
                    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long,
                                                                                  device=device))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                total += float(loss.detach())
                steps += 1
            msg = f"{cfg.candidate_name} epoch {epoch}: loss {total / max(steps, 1):.4f}"
            if valid is not None and len(valid) and epoch % cfg.eval_every == 0:
                ndcg = ndcg_at_k(self.score_histories, histories, valid, k=10)
                msg += f", valid ndcg@10 {ndcg:.4f}"
                if stopper.update(ndcg, epoch):
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                if context and context.progress:
                    context.progress("train", epoch / cfg.epochs, {"loss": total / max(steps, 1), "ndcg@10": ndcg})
            log(msg)
            if stopper.should_stop:
                log(f"{cfg.candidate_name}: early stop at epoch {epoch} (best {stopper.best:.4f} at {stopper.best_epoch})")
                break
            if cfg.max_seconds and time.perf_counter() - started > cfg.max_seconds:
                log(f"{cfg.candidate_name}: stopping at epoch {epoch}, max_seconds {cfg.max_seconds} reached")
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.best_epoch = stopper.best_epoch or epoch
        self.best_valid_ndcg = float(stopper.best) if best_state is not None else float("nan")
        net.eval()
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        import torch

        net = self.net
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        seqs = _left_padded(histories, self.config.max_len)
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        with torch.inference_mode():
            table = net.items.all_items()
            for start in range(0, len(seqs), 512):
                x = torch.from_numpy(seqs[start:start + 512]).to(device)
                h = net.last_hidden(x, table)
                out[start:start + 512] = (h @ table[1:].T).float().cpu().numpy()
        if was_training:
            net.train()
        return out

    def item_vectors(self) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net.items.all_items()[1:].float().cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        return {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        import torch

        if self.uses_text:
            self.text_embeddings = arrays["net.items.text"][1:].astype(np.float32)
        self.known_items = arrays["net.items.known"]
        net = self._build()
        net.load_state_dict({k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        net.to(_device(self.config.device)).eval()
        self.net = net

    def _extra_manifest(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_valid_ndcg": self.best_valid_ndcg}

    def _load_extra(self, extra: dict) -> None:
        self.best_epoch = int(extra.get("best_epoch", 0))
        self.best_valid_ndcg = float(extra.get("best_valid_ndcg", float("nan")))


register("sasrec", SASRecConfig)(SASRec)


@register("text_sasrec", TextSASRecConfig)
class TextSASRec(SASRec):
    config: TextSASRecConfig
    uses_text = True
    scores_cold_items = True
