"""Sequential transformers: `sasrec` (Kang & McAuley, 2018) and the text hybrid `text_sasrec`.

Both predict the next item from the user's recent sequence with causal self-attention, trained on every
position of every training sequence (full softmax cross-entropy, or sampled softmax for big catalogs),
early-stopped on validation NDCG@10. `text_sasrec` represents each item by a learned projection of its
frozen text embedding (UniSRec/RecFormer family) plus an optional ID embedding with dropout, so items with
text but no interactions can be scored — the cold-start case ID-only models cannot handle.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from recloop.config.models import SASRecConfig, TextSASRecConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender, VectorSpace
from recloop.models.device import select_device
from recloop.models.early_stopping import EarlyStopping, ndcg_at_k
from recloop.models.registry import register
from recloop.models.text_knn import embed_item_texts

if TYPE_CHECKING:
    from recloop.models.lm_tuning import EncoderTuner
    from recloop.models.sequential_net import SequentialRecommenderNet

TuningMode = Literal["off", "top_layers", "lora"]


def _lr_schedule(cfg: SASRecConfig, steps_per_epoch: int):
    """Step -> learning-rate multiplier: linear warm-up, then constant or cosine decay to 0 at `epochs`."""
    import math

    warmup = max(int(round(cfg.warmup_epochs * steps_per_epoch)), 0)
    total = max(cfg.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "cosine":
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


# Logit cells (positions x items) computed at once by the full softmax: bounds its memory (~32 MB).
_LOGIT_CELLS = 1 << 23


def _full_softmax_backward(hidden, table, targets, known_mask, dtype=None) -> float:
    """Mean cross-entropy of `hidden` (n, d) against every known item, back-propagated; returns the loss.

    Exact, but the (n, n_items) logits are made and freed in chunks of positions: the gradients with
    respect to the hidden states and the item table are accumulated on detached copies, then pushed
    through the network in one backward call, so memory stays bounded for any batch or catalog size.
    `dtype` (e.g. bfloat16) is the precision of the logit products; the softmax itself is float32.
    """
    import torch

    items = table[1:]
    h = hidden.detach().requires_grad_()
    w = items.detach().requires_grad_()
    n = len(targets)
    chunk = max(_LOGIT_CELLS // max(w.shape[0], 1), 16)
    total = 0.0
    w_low = w if dtype is None else w.to(dtype)
    for start in range(0, n, chunk):
        h_low = h[start : start + chunk] if dtype is None else h[start : start + chunk].to(dtype)
        logits = (h_low @ w_low.T).float().masked_fill(~known_mask, float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits, targets[start : start + chunk] - 1, reduction="sum") / n
        loss.backward()
        total += float(loss.detach())
    torch.autograd.backward([hidden, items], [h.grad, w.grad])
    return total


def _standardized(embeddings: np.ndarray) -> np.ndarray:
    """Each text-embedding dimension centred and scaled to unit variance over the catalog.

    Sentence embeddings of one domain's items share a large common direction and have tiny per-dimension
    spread (~1/sqrt(dim)); a projection learns from them far faster once that is removed.
    """
    mean, std = _catalog_statistics(embeddings)
    return ((embeddings - mean) / std).astype(np.float32)


def _catalog_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of each dimension over the catalog (std floored at 1e-6), float32."""
    mean = embeddings.mean(axis=0)
    return mean.astype(np.float32), np.maximum((embeddings - mean).std(axis=0), 1e-6).astype(np.float32)


def _tuning_mode(cfg: TextSASRecConfig, device: str) -> TuningMode:
    """The encoder fine-tuning this fit does: 'off', 'top_layers' or 'lora' ('auto' decided by device)."""
    if cfg.lm_finetune == "auto":
        return "top_layers" if device.startswith("cuda") else "off"
    return cfg.lm_finetune


def _principal_directions(embeddings: np.ndarray, dims: int) -> np.ndarray:
    """(n, dims) unit vectors: each embedding centred and projected on the catalog's leading principal axes.

    Keeps the fine similarity structure (titles of sequels, shared tags) in few columns, so matching it
    against every item costs about as much as one more `dim`-wide score; without the common direction
    the cosines spread out instead of all sitting near 1.
    """
    centred = embeddings.astype(np.float64) - embeddings.mean(axis=0, keepdims=True)
    dims = min(dims, *centred.shape)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes[:dims].T
    norms = np.linalg.norm(projected, axis=1, keepdims=True)
    return (projected / np.maximum(norms, 1e-12)).astype(np.float32)


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
        self.net: SequentialRecommenderNet | None = None
        self.text_embeddings: np.ndarray | None = None
        self.text_match: np.ndarray | None = None
        self.known_items = np.zeros(0, np.float32)
        self.best_epoch = 0
        self.epochs_trained = 0
        # What ended training: "epochs", "early_stopping", "max_seconds" or "stop_after_epoch".
        self.stopped_by = "epochs"
        self.best_valid_ndcg = float("nan")
        self.lm_finetune: str = "off"
        # Encoder weights changed by fine-tuning (by parameter name); saved with the model.
        self.encoder_tuning: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ network
    def _text_config(self) -> TextSASRecConfig:
        """The config's text settings (encoder, projection, fine-tuning); only text_sasrec's config has them."""
        if not isinstance(self.config, TextSASRecConfig):
            raise TypeError(f"{type(self).__name__} reads item texts, which needs a text_sasrec config")
        return self.config

    def _fitted_net(self) -> SequentialRecommenderNet:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load() first")
        return self.net

    def _device(self) -> str:
        return select_device(self.config.device, f"model {self.config.candidate_name!r} (type {self.type_name})")

    def _build(self) -> SequentialRecommenderNet:
        import torch

        from recloop.models.sequential_net import SequentialRecommenderNet

        cfg = self.config
        text_cfg = self._text_config() if self.uses_text else None
        text = None
        if text_cfg is not None:
            if self.text_embeddings is None:
                raise RuntimeError(f"{type(self).__name__} has no item text embeddings; fit() or load() sets them")
            text = torch.from_numpy(self.text_embeddings)
        use_id = text_cfg.use_id_embedding if text_cfg is not None else True
        id_dropout = text_cfg.id_dropout if text_cfg is not None else 0.0
        projection: Literal["linear", "mlp"] = text_cfg.text_projection if text_cfg is not None else "mlp"
        match = torch.from_numpy(self.text_match) if self.uses_text and self.text_match is not None else None
        net = SequentialRecommenderNet(
            self.n_items,
            cfg.dim,
            cfg.layers,
            cfg.heads,
            cfg.dropout,
            cfg.max_len,
            text_embeddings=text,
            use_id=use_id,
            id_dropout=id_dropout,
            text_projection=projection,
            text_match=match,
            match_half_life=text_cfg.text_match_half_life if text_cfg is not None else 1.0,
            item_init_std=cfg.item_init_std,
        )
        return net

    def _training_windows(self, histories: Histories) -> np.ndarray:
        """(windows, max_len + 1) left-padded item ids + 1 covering every training event once as a target.

        A history longer than max_len + 1 is cut, from its end, into windows of max_len + 1 items that
        overlap by one (the last input of a window is the first item of the next), so the early part of a
        long history is trained on too rather than dropped. With `train_windows: last` only each user's
        last window is kept (the earlier events are never targets).
        """
        length = self.config.max_len + 1
        lengths = histories.lengths()
        starts = histories.indptr[:-1]
        # Windows per user: ceil((n - 1) / max_len) targets-blocks; users with < 2 events have none.
        per_user = np.where(lengths >= 2, -(-(lengths - 1) // self.config.max_len), 0)
        if self.config.train_windows == "last":
            per_user = np.minimum(per_user, 1)
        user = np.repeat(np.arange(len(lengths)), per_user)
        k = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        end = starts[user] + lengths[user] - k * self.config.max_len  # exclusive end in `items`
        pos = end[:, None] - length + np.arange(length)[None, :]
        valid = pos >= starts[user][:, None]
        out = np.where(valid, histories.items[np.where(valid, pos, 0)].astype(np.int64) + 1, 0)
        return out

    def _training_batches(self, windows: np.ndarray, rng: np.random.Generator):
        """Yield (inputs, targets) for one epoch, every window once; each batch trimmed to its longest row.

        `batching: length_buckets` puts rows of similar length in a batch, which keeps padding (wasted
        attention and feed-forward work) small; `shuffle` draws batches uniformly. Batch order is random.
        Trimming leading all-padding columns changes no output (padding keys are masked).
        """
        bs = self.config.batch_size
        filled = (windows > 0).sum(axis=1)
        order = rng.permutation(len(windows))
        if self.config.batching == "length_buckets":
            # Sort by length within chunks of 50 batches of the shuffled order: random batches of similar length.
            chunk = bs * 50
            for s in range(0, len(order), chunk):
                part = order[s : s + chunk]
                order[s : s + chunk] = part[np.argsort(-filled[part], kind="stable")]
        batches = [order[s : s + bs] for s in range(0, len(order), bs)]
        for b in rng.permutation(len(batches)):
            batch = windows[batches[b]]
            width = int(filled[batches[b]].max())
            batch = batch[:, batch.shape[1] - width :]
            yield batch[:, :-1], batch[:, 1:]

    def fit(self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None) -> SASRec:
        import torch

        cfg = self.config
        self._remember(train)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        device = self._device()
        tuner = None
        self.lm_finetune = "off"
        if self.uses_text:
            text_cfg = self._text_config()
            mode = _tuning_mode(text_cfg, device)
            self.lm_finetune = mode
            embeddings = embed_item_texts(text_cfg.encoder, context, train.n_items)
            self.text_embeddings = _standardized(embeddings)
            dims = text_cfg.text_match_dims
            self.text_match = _principal_directions(embeddings, dims) if dims else None
            if mode != "off":
                tuner = self._encoder_tuner(context, train.n_items, device, mode)
                # The table is always the encoder's output standardized over the catalog; these are the
                # statistics of the table now in use (re-computed at each re-encoding).
                text_mean, text_std = (torch.from_numpy(a).to(device) for a in _catalog_statistics(embeddings))
        counts = np.bincount(train.item, minlength=train.n_items)
        self.known_items = np.concatenate([[0.0], (counts > 0).astype(np.float32)]).astype(np.float32)
        net = self._build()
        net.items.known.copy_(torch.from_numpy(self.known_items))
        net.to(device)
        # Items without training events are not in the training catalog: leaving them in the softmax
        # would teach the model to push every never-seen item down (bad for cold start).
        known_mask = torch.from_numpy(self.known_items[1:] > 0).to(device)
        known_ids = torch.nonzero(known_mask).squeeze(1) + 1
        # torch's optimizers take parameter groups as plain dicts.
        groups: list[dict[str, Any]] = [{"params": list(net.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
        if tuner is not None:
            lm_lr = self._text_config().lm_lr
            groups.append({"params": tuner.parameters(), "lr": lm_lr, "base_lr": lm_lr, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        log = context.log if context else (lambda _msg: None)
        stopper = EarlyStopping(patience=cfg.patience, growth=cfg.patience_growth)
        best_state = None
        started = time.perf_counter()
        histories = self.fitted_histories()
        windows = self._training_windows(histories)
        steps_per_epoch = -(-len(windows) // cfg.batch_size)
        schedule = _lr_schedule(cfg, steps_per_epoch)
        self.net = net
        step = 0
        epoch = 0
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            total, steps = 0.0, 0
            for inputs, targets in self._training_batches(windows, rng):
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * schedule(step)
                x = torch.from_numpy(inputs).to(device)
                y = torch.from_numpy(targets).to(device)
                # Every position with a real input predicts the item after it.
                mask = (x > 0) & (y > 0)
                opt.zero_grad()
                with torch.autocast(
                    device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.mixed_precision
                ):
                    text = None
                    if tuner is not None:
                        text = self._text_with_fresh_rows(net, tuner, y[mask], text_mean, text_std, rng)
                    table = net.items.all_items(text)
                    hidden = net(x, table)
                h, t = hidden[mask].float(), y[mask]
                table = table.float()
                low = torch.bfloat16 if cfg.mixed_precision else None
                if cfg.loss == "full" or cfg.negatives >= len(known_ids):
                    loss = _full_softmax_backward(h, table, t, known_mask, low)
                else:
                    # Negatives shared by the whole batch: one (positions x negatives) matrix product.
                    negs = known_ids[torch.randint(0, len(known_ids), (cfg.negatives,), device=device)]
                    positive = (h * table[t]).sum(-1, keepdim=True)
                    negative = (h.to(low) @ table[negs].to(low).T).float() if low else h @ table[negs].T
                    negative = negative.masked_fill(negs.unsqueeze(0) == t.unsqueeze(1), float("-inf"))
                    logits = torch.cat([positive, negative], dim=1)
                    loss_t = torch.nn.functional.cross_entropy(
                        logits, torch.zeros(len(t), dtype=torch.long, device=device)
                    )
                    loss_t.backward()
                    loss = float(loss_t.detach())
                # Clipped apart: the encoder's gradient norm (through the standardization) can be far larger
                # than the network's, and one shared norm would scale the network's updates down to nothing.
                for group in groups:
                    torch.nn.utils.clip_grad_norm_(group["params"], 5.0)
                opt.step()
                total += loss
                steps += 1
                step += 1
            msg = f"{cfg.candidate_name} epoch {epoch}: loss {total / max(steps, 1):.4f}"
            if tuner is not None:
                # The catalog table catches up with the encoder (validation and scoring read it). Standardizing
                # anew keeps a shift or rescaling common to every item (which a few Adam steps on the
                # encoder easily cause) from moving the whole table away from what the network has learned.
                with torch.no_grad():
                    encoded = tuner.encode_all().numpy()
                    text_mean, text_std = (torch.from_numpy(a).to(device) for a in _catalog_statistics(encoded))
                    fresh = torch.from_numpy(_standardized(encoded)).to(device, net.items.text.dtype)
                    drift = float(
                        torch.linalg.vector_norm(fresh - net.items.text[1:], dim=1).mean()
                        / torch.linalg.vector_norm(net.items.text[1:], dim=1).mean().clamp(min=1e-12)
                    )
                    net.items.text[1:] = fresh
                msg += f", text table moved {drift:.3f}"
            if valid is not None and len(valid) and epoch % cfg.eval_every == 0:
                ndcg = ndcg_at_k(self.score_histories, histories, valid, k=10)
                msg += f", valid ndcg@10 {ndcg:.4f}"
                if stopper.update(ndcg, epoch):
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                    if tuner is not None:
                        self.encoder_tuning = tuner.trained_state()
                if context and context.progress:
                    context.progress(
                        "train", epoch / cfg.epochs, {"epoch": epoch, "loss": total / max(steps, 1), "ndcg@10": ndcg}
                    )
                if context is not None:
                    context.report_validation(epoch, ndcg)
            log(msg)
            if stopper.should_stop:
                log(
                    f"{cfg.candidate_name}: early stop at epoch {epoch} (best {stopper.best:.4f} at {stopper.best_epoch})"
                )
                self.stopped_by = "early_stopping"
                break
            if cfg.stop_after_epoch and epoch >= cfg.stop_after_epoch and epoch < cfg.epochs:
                log(f"{cfg.candidate_name}: stopping at epoch {epoch} (stop_after_epoch)")
                self.stopped_by = "stop_after_epoch"
                break
            if cfg.max_seconds and time.perf_counter() - started > cfg.max_seconds and epoch < cfg.epochs:
                log(f"{cfg.candidate_name}: stopping at epoch {epoch}, max_seconds {cfg.max_seconds} reached")
                self.stopped_by = "max_seconds"
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        elif tuner is not None:
            self.encoder_tuning = tuner.trained_state()
        if tuner is not None:
            self.text_embeddings = net.items.text[1:].detach().float().cpu().numpy()
        self.epochs_trained = epoch
        self.best_epoch = stopper.best_epoch or epoch
        self.best_valid_ndcg = float(stopper.best) if best_state is not None else float("nan")
        net.eval()
        return self

    def _encoder_tuner(
        self, context: FitContext | None, n_items: int, device: str, mode: Literal["top_layers", "lora"]
    ) -> EncoderTuner:
        from recloop.models.lm_tuning import EncoderTuner

        cfg = self._text_config()
        texts = context.items.texts if context is not None else None
        if texts is None or len(texts) != n_items:
            raise ValueError("lm_finetune needs the item texts (configure data.items with a text template)")
        tuner = EncoderTuner(
            cfg.encoder, texts, mode, cfg.lm_layers, device, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout
        )
        if context is not None:
            context.log(
                f"{cfg.candidate_name}: fine-tuning the text encoder ({mode}, last "
                f"{cfg.lm_layers} layer(s), {sum(p.numel() for p in tuner.parameters()):,} weights)"
            )
        return tuner

    def _text_with_fresh_rows(self, net, tuner, targets, text_mean, text_std, rng: np.random.Generator):
        """The catalog text table, whose rows for the step's target items (at most lm_items_per_step) carry
        gradients to the tuned encoder.

        Their values stay the table's: only the gradient is the fresh encoding's (value + (fresh - fresh
        detached)). Fresh values would mark exactly the targets as different from every other item (newer
        weights, dropout noise, amplified by the standardization), and the model learns that mark instead of
        taste: on MovieLens validation NDCG@10 fell from ~0.07 to ~0.01.
        """
        import torch

        ids = torch.unique(targets)
        per_step = self._text_config().lm_items_per_step
        if len(ids) > per_step:
            pick = rng.choice(len(ids), per_step, replace=False)
            ids = ids[torch.from_numpy(np.sort(pick)).to(ids.device)]
        fresh = ((tuner.encode(ids - 1).to(text_mean.device) - text_mean) / text_std).to(net.items.text.dtype)
        rows = net.items.text[ids] + (fresh - fresh.detach())
        return net.items.text.index_copy(0, ids, rows)

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        import torch

        net = self._fitted_net()
        was_training = net.training
        net.eval()
        with torch.inference_mode():
            table = net.items.all_items()
            out = np.empty((len(histories), self.n_items), dtype=np.float32)
            for start, hidden in self._last_hidden(histories, table):
                out[start : start + len(hidden)] = (hidden @ table[1:].T).float().cpu().numpy()
        if was_training:
            net.train()
        return out

    def _last_hidden(self, histories: Histories, table):
        """Yield (first row, last hidden states) for the histories in batches of 512; `net` in eval mode,
        inside inference mode. A user's score for item i is the hidden state . table[i + 1]."""
        import torch

        net = self._fitted_net()
        seqs = _left_padded(histories, self.config.max_len)
        device = next(net.parameters()).device
        for start in range(0, len(seqs), 512):
            batch = seqs[start : start + 512]
            # Leading all-padding columns change nothing (padding keys are masked): skip their work.
            width = max(int((batch > 0).sum(axis=1).max()) if len(batch) else 1, 1)
            trimmed = torch.from_numpy(batch[:, batch.shape[1] - width :]).to(device)
            yield start, net.last_hidden(trimmed, table)

    def item_vectors(self) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._fitted_net().items.all_items()[1:].float().cpu().numpy()

    def vector_space(self) -> VectorSpace:
        """Last hidden state . item representation (with text match, both carry its extra columns)."""
        import torch

        net = self._fitted_net()
        net.eval()
        with torch.inference_mode():
            table = net.items.all_items()  # once: re-computing it per request would cost a catalog pass

        def encode(histories: Histories, users: np.ndarray | None) -> np.ndarray:
            out = np.empty((len(histories), table.shape[1]), dtype=np.float32)
            with torch.inference_mode():
                for start, hidden in self._last_hidden(histories, table):
                    out[start : start + len(hidden)] = hidden.float().cpu().numpy()
            return out

        return VectorSpace(table[1:].float().cpu().numpy(), encode)

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self._fitted_net().state_dict().items()}
        state.update({f"encoder.{k}": v for k, v in self.encoder_tuning.items()})
        return state

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        import torch

        self.encoder_tuning = {
            k[len("encoder.") :]: np.asarray(v) for k, v in arrays.items() if k.startswith("encoder.")
        }
        arrays = {k: v for k, v in arrays.items() if k.startswith("net.")}
        if self.uses_text:
            self.text_embeddings = arrays["net.items.text"][1:].astype(np.float32)
            match = arrays.get("net.items.match")
            self.text_match = None if match is None else np.asarray(match)[1:].astype(np.float32)
        self.known_items = arrays["net.items.known"]
        net = self._build()
        net.load_state_dict({k[len("net.") :]: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        net.to(self._device()).eval()
        self.net = net

    def _extra_manifest(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "epochs_trained": self.epochs_trained,
            "stopped_by": self.stopped_by,
            "best_valid_ndcg": self.best_valid_ndcg,
            "lm_finetune": self.lm_finetune,
        }

    def _load_extra(self, extra: dict) -> None:
        self.lm_finetune = str(extra.get("lm_finetune", "off"))
        self.best_epoch = int(extra.get("best_epoch", 0))
        self.epochs_trained = int(extra.get("epochs_trained", 0))
        self.stopped_by = str(extra.get("stopped_by", "epochs"))
        self.best_valid_ndcg = float(extra.get("best_valid_ndcg", float("nan")))


register(SASRecConfig)(SASRec)


@register(TextSASRecConfig)
class TextSASRec(SASRec):
    config: TextSASRecConfig
    uses_text = True
    scores_cold_items = True
