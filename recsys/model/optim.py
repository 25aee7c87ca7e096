"""One optimizer object over a dense and a sparse optimizer.

Id tables with ``sparse=True`` produce sparse gradients, which only sparse-capable
optimizers accept (``SparseAdam`` here or torch's, ``RowWiseAdagrad``, ``torch.optim.SGD``);
MLPs and learnable temperatures get a dense one (``Adam``/``AdamW``). Lightning's automatic optimization
drives a single optimizer, so ``MultiOptimizer`` presents both as one: it steps each,
zeroes each, and saves / restores each state (for resume).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping

import torch

from recsys.errors import ConfigError


def _closure_loss(closure):
    """The loss of ``closure`` (re-evaluated with gradients), or None: ``step(closure)``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class _StateView(MutableMapping):
    """The inner optimizers' ``state`` dicts seen as one (writes go to the owner)."""

    def __init__(self, optimizers):
        self._opts = optimizers

    def _owner(self, p):
        for o in self._opts:
            if any(p is q for g in o.param_groups for q in g["params"]):
                return o.state
        raise KeyError(p)

    def __getitem__(self, p):
        return self._owner(p)[p]

    def __setitem__(self, p, v):
        self._owner(p)[p] = v

    def __delitem__(self, p):
        del self._owner(p)[p]

    def __iter__(self):
        for o in self._opts:
            yield from o.state

    def __len__(self):
        return sum(len(o.state) for o in self._opts)


class MultiOptimizer(torch.optim.Optimizer):
    """Step several optimizers as one (param groups are shared, so LR schedulers work)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):  # noqa: D107 - no super().__init__
        self.optimizers = list(optimizers)
        self.defaults = {}
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    @property
    def state(self):
        return _StateView(self.optimizers)

    def step(self, closure=None):
        loss = _closure_loss(closure)
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)
        # torch's load_state_dict replaces each optimizer's group dicts: share the new ones, or an LR
        # scheduler (which writes into these) would change dicts no optimizer reads any more
        self.param_groups[:] = [g for o in self.optimizers for g in o.param_groups]

    def __repr__(self) -> str:
        return "MultiOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


class SparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with the same update and state, computed on the touched rows.

    torch's step goes through sparse-tensor kernels (``sparse_mask`` and dense += sparse,
    five passes per table) whose CPU cost per touched row is several times a row gather
    and grows with the table: at N = 1e6 rows and ~1e4 touched rows a step measured 2-3x
    slower than this one, and it was the largest catalogue-dependent cost of a training
    step. Here the gradient is coalesced once and the touched rows are updated with
    ``index_select`` / ``index_copy_`` / ``index_add_``, in the same floating-point order
    (results equal torch's bit for bit). State (``step``, ``exp_avg``, ``exp_avg_sq``) is
    torch's, so state dicts load in either. Gradients with more than one sparse dimension
    fall back to torch's implementation.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        fallback = []  # (group, param) pairs torch's kernel handles
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise ConfigError(f"SparseAdam got a dense gradient for a parameter of shape {tuple(p.shape)}: "
                                      "it updates sparse id tables only. Fix: set sparse: true on the tower's id "
                                      "tables, or use a dense optimizer (dense_optimizer) for this parameter.")
                if grad.sparse_dim() != 1:
                    fallback.append((group, p))
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = (-grad if group.get("maximize", False) else grad).coalesce()
                rows, g = grad._indices()[0], grad._values()  # (r,) unique rows, (r, ...) values
                if g.numel() == 0:
                    continue
                m, v = state["exp_avg"], state["exp_avg_sq"]
                old_m, old_v = m.index_select(0, rows), v.index_select(0, rows)
                numer = g.sub(old_m).mul_(1 - beta1).add_(old_m)  # old + (1 - b) (new - old)
                denom = g.pow(2).sub_(old_v).mul_(1 - beta2).add_(old_v)
                del old_m, old_v  # in place from here: a full-catalogue step touches all N rows
                m.index_copy_(0, rows, numer)
                v.index_copy_(0, rows, denom)
                denom.sqrt_().add_(eps)
                t = state["step"]
                step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.index_add_(0, rows, -step_size * numer.div_(denom))
        if fallback:
            groups = {id(g): g for g, _ in fallback}
            keep = {id(p) for _, p in fallback}
            saved = [(g, g["params"]) for g in groups.values()]
            try:
                for g, params in saved:
                    g["params"] = [p for p in params if id(p) in keep]
                super().step()
            finally:
                for g, params in saved:
                    g["params"] = params
        return loss


def _touched_rows(p: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (r,), their gradient (r, D)) of ``p``: a sparse gradient coalesced (duplicate ids
    summed), a dense one as every row. The row-wise optimizers update only these rows."""
    grad = p.grad
    if not grad.is_sparse:
        return torch.arange(p.shape[0], device=p.device), grad
    if grad.sparse_dim() != 1:
        raise ConfigError(f"{name} got a gradient with {grad.sparse_dim()} sparse dimensions: it updates whole rows "
                          "of an id table (1 sparse dimension). Fix: use it for nn.Embedding / nn.EmbeddingBag "
                          "weights only.")
    grad = grad.coalesce()
    return grad._indices()[0], grad._values()


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise AdaGrad for id tables: one accumulator float per row instead of per entry.

    AdaGrad (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization", JMLR 12) scales each coordinate by the root of its summed
    squared gradients. The row-wise form shares one sum per embedding row, fed with the
    row's *mean* squared gradient, as DLRM (Naumov et al. 2019) and TorchRec / FBGEMM
    (``EmbOptimType.EXACT_ROWWISE_ADAGRAD``) train their large tables. For a touched row i
    with gradient g_i (D,), duplicates in the batch summed first::

        s_i <- s_i + mean(g_i ** 2)                 # (N,) state
        w_i <- w_i - lr * g_i / (sqrt(s_i) + eps)

    Rows not in the batch are not read or written. State is ``sum`` (N,) float32 (4 bytes
    per row, against SparseAdam's 2 x D x 4), so a 10M x 64 table costs 2.4 GiB of
    weights + 40 MB of state instead of + 4.8 GiB. Accepts sparse (``sparse=True``
    tables) and dense gradients (then every row is touched).

    YAML (``recsys fit``), in place of the default SparseAdam::

        model:
          sparse_optimizer:
            class_path: recsys.model.optim.RowWiseAdagrad
            init_args: {lr: 0.05}

    Args:
        lr: step size (AdaGrad tolerates larger steps than Adam: 0.01-0.1 are usual).
        eps: added to sqrt(s_i) (FBGEMM's default 1e-8).
        initial_accumulator_value: starting s_i (0 as torch.optim.Adagrad).
    """

    def __init__(self, params, lr: float = 0.05, eps: float = 1e-8, initial_accumulator_value: float = 0.0):
        if not (lr > 0 and eps >= 0 and initial_accumulator_value >= 0):
            raise ConfigError(
                f"RowWiseAdagrad lr={lr}, eps={eps}, initial_accumulator_value={initial_accumulator_value}: need "
                "lr > 0 and eps, initial_accumulator_value >= 0. Fix: e.g. lr=0.05, eps=1e-8, "
                "initial_accumulator_value=0."
            )
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["sum"] = torch.full((p.shape[0],), float(group["initial_accumulator_value"]),
                                              dtype=p.dtype, device=p.device)
                state["step"] += 1
                rows, g = _touched_rows(p, "RowWiseAdagrad")
                if g.numel() == 0:
                    continue
                s = state["sum"]
                g2 = g.reshape(g.shape[0], -1).pow(2).mean(1)  # (r,) row mean of g^2
                s_rows = s.index_select(0, rows).add_(g2)  # (r,)
                s.index_copy_(0, rows, s_rows)
                std = s_rows.sqrt_().add_(eps).view(-1, *([1] * (g.dim() - 1)))
                p.index_add_(0, rows, g / std, alpha=-lr)
        return loss


class RowWiseAdam(torch.optim.Optimizer):
    """Partial row-wise Adam for id tables: a full first moment (or none) and ONE second moment
    per row, the update FBGEMM / TorchRec call ``PARTIAL_ROWWISE_ADAM`` (and, without the first
    moment, a row-wise RMSprop with Adam's bias correction). Adam (Kingma & Ba, ICLR 2015)
    keeps two N x D moments; here, for a touched row i with gradient g_i (D,) (duplicates
    summed), at step t::

        m_i <- b1 m_i + (1 - b1) g_i                  # (N, D), only with momentum=True
        v_i <- b2 v_i + (1 - b2) mean(g_i ** 2)      # (N,) one float per row
        w_i <- w_i - lr * (m_i / (1 - b1^t)) / (sqrt(v_i / (1 - b2^t)) + eps)

    (m_i replaced by g_i without momentum). Rows not in the batch are neither read nor
    written (lazy, as ``SparseAdam``). State per N x D table: D + 1 floats per row with
    momentum, 1 without (SparseAdam: 2 D), so a 10M x 64 table costs 2.4 GiB of weights +
    2.4 GiB (or 40 MB) of state instead of + 4.8 GiB.

    YAML, in place of the default SparseAdam::

        model:
          sparse_optimizer:
            class_path: recsys.model.optim.RowWiseAdam
            init_args: {lr: 0.01, momentum: false}

    Args:
        lr: step size (as SparseAdam's 1e-2 default).
        betas: (b1, b2).
        eps: added to the root of the corrected second moment.
        momentum: keep the full first moment m (N x D); False: use the gradient itself.
    """

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 momentum: bool = True):
        b1, b2 = betas
        if not (lr > 0 and 0 <= b1 < 1 and 0 <= b2 < 1 and eps >= 0):
            raise ConfigError(f"RowWiseAdam lr={lr}, betas={betas}, eps={eps}: need lr > 0, 0 <= betas < 1 and "
                              "eps >= 0. Fix: e.g. lr=0.01, betas=(0.9, 0.999), eps=1e-8.")
        super().__init__(params, {"lr": lr, "betas": (b1, b2), "eps": eps, "momentum": bool(momentum)})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, eps, (b1, b2) = float(group["lr"]), group["eps"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg_sq"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)  # (N,)
                    if group["momentum"]:
                        state["exp_avg"] = torch.zeros_like(p)  # (N, D)
                state["step"] += 1
                t = state["step"]
                rows, g = _touched_rows(p, "RowWiseAdam")
                if g.numel() == 0:
                    continue
                g2 = g.reshape(g.shape[0], -1).pow(2).mean(1)  # (r,) row mean of g^2
                v = state["exp_avg_sq"]
                v_rows = v.index_select(0, rows).mul_(b2).add_(g2, alpha=1 - b2)  # (r,)
                v.index_copy_(0, rows, v_rows)
                if group["momentum"]:
                    m = state["exp_avg"]
                    num = m.index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)  # (r, D)
                    m.index_copy_(0, rows, num)
                    num = num / (1 - b1**t)
                else:
                    num = g
                denom = (v_rows / (1 - b2**t)).sqrt_().add_(eps).view(-1, *([1] * (g.dim() - 1)))
                p.index_add_(0, rows, num / denom, alpha=-lr)
        return loss
