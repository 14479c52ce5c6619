"""Matrix factorisation for implicit feedback: iALS (Hu, Koren & Volinsky, 2008).

Every (user, item) pair is a target: preference 1 where the user interacted (confidence 1 + alpha * w),
0 elsewhere (confidence 1). Alternating least squares solves all users, then all items, exactly
(batched Cholesky) or approximately with a few warm-started conjugate-gradient steps (Takács et al.,
2011), fully vectorised in numpy: no per-user Python loops. Validation NDCG@10 is checked every
`eval_every` epochs; the best factors are kept and training stops after `patience` checks without
improvement.

Known users are scored with their learned factors while their history is the training one. Any other
history (a user unseen in training, or a known user with newer events, as in evaluation on train + valid
or at serving time) is folded in: its factor is the exact least-squares solution against the item
factors, i.e. one ALS step, so the newest events count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recloop.config.models import MFConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender, VectorSpace
from recloop.models.early_stopping import EarlyStopping, validation_ndcg
from recloop.models.registry import register

# Floats (float64) the exact solver materialises per chunk; bounds its memory to ~128 MB.
_EXACT_BUDGET = 1 << 24


@register(MFConfig)
class MatrixFactorization(Recommender):
    config: MFConfig

    def __init__(self, config: MFConfig):
        super().__init__(config)
        self.user_factors = np.zeros((0, config.factors), np.float32)
        self.item_factors = np.zeros((0, config.factors), np.float32)
        self.epochs_trained = 0
        self.best_epoch = 0
        self.best_valid_ndcg: float | None = None

    # ------------------------------------------------------------------ training
    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> MatrixFactorization:
        self._remember(train)
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        users = (rng.standard_normal((train.n_users, cfg.factors)) * cfg.init_std).astype(np.float32)
        items = (rng.standard_normal((train.n_items, cfg.factors)) * cfg.init_std).astype(np.float32)
        by_user = self._confidence(train.to_csr(binary=not cfg.use_weights))
        by_item = by_user.T.tocsr()
        log = context.log if context is not None else (lambda _msg: None)
        progress = context.progress if context is not None else None
        use_valid = valid is not None and len(valid) > 0
        stopper = EarlyStopping(patience=cfg.patience or cfg.epochs + 1)
        best: tuple[np.ndarray, np.ndarray] | None = None
        self.best_valid_ndcg = None
        for epoch in range(1, cfg.epochs + 1):
            users = _solve(by_user, items, users, cfg)
            items = _solve(by_item, users, items, cfg)
            self.user_factors, self.item_factors = users, items
            self.epochs_trained = epoch
            metrics: dict[str, float] = {"epoch": float(epoch), "loss": _loss(by_user, users, items, cfg)}
            if valid is not None and use_valid and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                ndcg = validation_ndcg(self, valid)
                metrics["valid_ndcg@10"] = ndcg
                if stopper.update(ndcg, epoch):
                    best = (users.copy(), items.copy())
            log(f"epoch {epoch}/{cfg.epochs}: " + ", ".join(f"{k}={v:.5g}" for k, v in metrics.items() if k != "epoch"))
            if progress is not None:
                progress("epoch", epoch / cfg.epochs, metrics)
            if context is not None and "valid_ndcg@10" in metrics:
                context.report_validation(epoch, metrics["valid_ndcg@10"])
            if use_valid and stopper.should_stop:
                log(
                    f"early stop after epoch {epoch}; best valid ndcg@10={stopper.best:.5g} "
                    f"at epoch {stopper.best_epoch}"
                )
                break
        if best is not None:
            self.user_factors, self.item_factors = best
            self.best_epoch, self.best_valid_ndcg = stopper.best_epoch, float(stopper.best)
        else:
            self.best_epoch = self.epochs_trained
        return self

    def _confidence(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The extra confidence alpha * w of observed pairs (the 1 of every pair is implicit)."""
        conf = matrix.tocsr(copy=True).astype(np.float32)
        conf.data *= np.float32(self.config.alpha)
        return conf

    # ------------------------------------------------------------------ inference
    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        if users is None:
            return self.fold_in(histories) @ self.item_factors.T
        users = np.asarray(users, dtype=np.int64)
        factors = self.user_factors[users]
        # A known user whose history grew since training (evaluation on train + valid, serving with
        # fresh events) is folded in, so the newest events count; an unchanged history keeps its factors.
        changed = ~self._same_as_training(histories, users)
        if changed.any():
            factors = factors.copy()
            factors[changed] = self.fold_in(histories.select(np.flatnonzero(changed)))
        return factors @ self.item_factors.T

    def _same_as_training(self, histories: Histories, users: np.ndarray) -> np.ndarray:
        """Per row: is this history exactly the user's training history (same items, same order)?"""
        trained = self.fitted_histories().select(users)
        same = histories.lengths() == trained.lengths()
        rows = np.flatnonzero(same)
        if len(rows):
            mine, theirs = histories.select(rows), trained.select(rows)
            mismatch = (mine.items != theirs.items).astype(np.int64)
            row_of = np.repeat(np.arange(len(rows)), mine.lengths())
            same[rows] = np.bincount(row_of, weights=mismatch, minlength=len(rows)) == 0
        return same

    def fold_in(self, histories: Histories) -> np.ndarray:
        """User factors for ad-hoc histories: the exact ALS solution against the learned item factors."""
        if len(histories) == 0:
            return np.zeros((0, self.config.factors), np.float32)
        conf = self._confidence(histories.to_csr(binary=not self.config.use_weights))
        return _solve_exact(conf, self.item_factors, self.config.regularization)

    def item_vectors(self) -> np.ndarray:
        return self.item_factors

    def vector_space(self) -> VectorSpace:
        """Learned user factors for training histories, folded-in factors for any other . item factors."""

        def encode(histories: Histories, users: np.ndarray | None) -> np.ndarray:
            if users is not None:
                return np.asarray(self.user_factors[np.asarray(users, dtype=np.int64)], dtype=np.float32)
            return np.asarray(self.fold_in(histories), dtype=np.float32)

        return VectorSpace(self.item_factors, encode)

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors = arrays["user_factors"].astype(np.float32, copy=False)
        self.item_factors = arrays["item_factors"].astype(np.float32, copy=False)

    def _extra_manifest(self) -> dict[str, Any]:
        return {
            "epochs_trained": self.epochs_trained,
            "best_epoch": self.best_epoch,
            "best_valid_ndcg@10": self.best_valid_ndcg,
        }

    def _load_extra(self, extra: dict[str, Any]) -> None:
        self.epochs_trained = int(extra.get("epochs_trained", 0))
        self.best_epoch = int(extra.get("best_epoch", 0))
        self.best_valid_ndcg = extra.get("best_valid_ndcg@10")


# ---------------------------------------------------------------------------------------------- solvers


def _solve(conf: sp.csr_matrix, fixed: np.ndarray, current: np.ndarray, cfg: MFConfig) -> np.ndarray:
    """New factors for every row of `conf` (extra confidences) given the other side's factors."""
    if cfg.solver == "cholesky":
        return _solve_exact(conf, fixed, cfg.regularization)
    return _solve_cg(conf, fixed, current, cfg.regularization, cfg.cg_steps)


def _gram(fixed: np.ndarray, reg: float) -> np.ndarray:
    gram = fixed.T.astype(np.float64) @ fixed.astype(np.float64)
    gram[np.diag_indices_from(gram)] += reg
    return gram


def _rhs(conf: sp.csr_matrix, fixed: np.ndarray) -> np.ndarray:
    """b_u = sum over observed i of (1 + c'_ui) y_i."""
    ones_plus = sp.csr_matrix((conf.data + 1.0, conf.indices, conf.indptr), shape=conf.shape)
    return np.asarray(ones_plus @ fixed, dtype=np.float64)


def _solve_exact(conf: sp.csr_matrix, fixed: np.ndarray, reg: float) -> np.ndarray:
    """Solve (Y^T Y + reg I + sum_i c'_ui y_i y_i^T) x_u = b_u for every row, batched.

    Rows are sorted by history length and cut into chunks of similar length (at most 2x apart) that fit
    the memory budget; each chunk gathers its rows' item factors into a zero-padded (rows, length, f)
    block, so the per-row sums of outer products are one batched matmul, then one batched Cholesky
    solve. torch does the batched linear algebra: numpy's stacked matmul/solve are ~10x slower on CPU."""
    import torch

    n_rows, f = conf.shape[0], fixed.shape[1]
    gram = torch.from_numpy(_gram(fixed, reg))
    rhs = torch.from_numpy(_rhs(conf, fixed))
    out = np.empty((n_rows, f), np.float32)
    # Index len(fixed) is a zero row: padding positions gather it and contribute nothing.
    fixed_ext = torch.from_numpy(np.vstack([fixed.astype(np.float64), np.zeros((1, f))]))
    lengths = np.diff(conf.indptr)
    order = np.argsort(lengths, kind="stable")
    sorted_len = lengths[order]
    start = 0
    while start < n_rows:
        cap = max(2 * int(sorted_len[start]), 8)
        stop = int(np.searchsorted(sorted_len, cap, side="right"))
        width = int(sorted_len[stop - 1])
        stop = min(stop, start + max(1, _EXACT_BUDGET // (f * max(width, f))))
        width = int(sorted_len[stop - 1])
        rows = order[start:stop]
        a = gram.expand(len(rows), f, f).clone()
        if width:
            offsets = np.arange(width)
            present = offsets[None, :] < lengths[rows][:, None]
            pos = np.minimum(conf.indptr[rows][:, None] + offsets[None, :], max(conf.nnz - 1, 0))
            idx = torch.from_numpy(np.where(present, conf.indices[pos], len(fixed)))
            weight = torch.from_numpy(np.where(present, conf.data[pos], 0.0).astype(np.float64))
            gathered = fixed_ext[idx]  # (rows, width, f)
            a += torch.bmm((gathered * weight[..., None]).transpose(1, 2), gathered)
        chol = torch.linalg.cholesky(a)
        rows_t = torch.from_numpy(rows)
        out[rows] = torch.cholesky_solve(rhs[rows_t].unsqueeze(-1), chol).squeeze(-1).numpy()
        start = stop
    return out


def _solve_cg(conf: sp.csr_matrix, fixed: np.ndarray, current: np.ndarray, reg: float, steps: int) -> np.ndarray:
    """A few conjugate-gradient steps from `current`, for all rows at once."""
    # float32 like the factors: the per-pair arrays dominate memory, and CG steps are approximate anyway.
    gram = _gram(fixed, reg).astype(np.float32)
    rows = np.repeat(np.arange(conf.shape[0]), np.diff(conf.indptr))
    y_obs = fixed[conf.indices]
    c_obs = conf.data.astype(np.float32)

    def apply_a(p: np.ndarray) -> np.ndarray:
        along = np.einsum("nf,nf->n", y_obs, p[rows]) * c_obs
        return p @ gram + sp.csr_matrix((along, conf.indices, conf.indptr), shape=conf.shape) @ fixed

    x = current.astype(np.float32, copy=True)
    r = _rhs(conf, fixed).astype(np.float32) - apply_a(x)
    p = r.copy()
    rs = np.einsum("nf,nf->n", r, r)
    for _ in range(steps):
        ap = apply_a(p)
        p_ap = np.einsum("nf,nf->n", p, ap)
        step = np.divide(rs, p_ap, out=np.zeros_like(rs), where=p_ap > 1e-30)
        x += step[:, None] * p
        r -= step[:, None] * ap
        rs_new = np.einsum("nf,nf->n", r, r)
        beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 1e-30)
        p = r + beta[:, None] * p
        rs = rs_new
    return x


def _loss(conf: sp.csr_matrix, users: np.ndarray, items: np.ndarray, cfg: MFConfig) -> float:
    """The iALS objective per observed pair, computed without the dense users x items matrix:
    sum_all s^2 + sum_obs [(1 + c')(1 - s)^2 - s^2] + reg (|X|^2 + |Y|^2), with s = x_u . y_i."""
    x64, y64 = users.astype(np.float64), items.astype(np.float64)
    all_pairs = float(np.sum((x64.T @ x64) * (y64.T @ y64)))
    rows = np.repeat(np.arange(conf.shape[0]), np.diff(conf.indptr))
    s = np.einsum("nf,nf->n", x64[rows], y64[conf.indices])
    observed = float(np.sum((1.0 + conf.data) * (1.0 - s) ** 2 - s**2))
    penalty = cfg.regularization * float(np.sum(x64**2) + np.sum(y64**2))
    return (all_pairs + observed + penalty) / max(conf.nnz, 1)
