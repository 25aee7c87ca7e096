"""Row reductions over the (B, N) logit matrix computed chunk by chunk, exact gradients.

``chunked_logsumexp(q, v)`` = logsumexp(q @ v.T, dim=1) and ``chunked_softplus_sum(q, v, b)``
= softplus(q @ v.T + b).sum(1), without ever holding more than (B, chunk) logits: the
forward pass keeps only the (B,) result; the backward pass recomputes each chunk's logits
and accumulates dq = P @ v_c and dv_c = P.T @ q with P = softmax (resp. sigmoid) weights.
Memory is O(B * chunk + N * D) instead of O(B * N).

``mask`` = (rows, cols), two (P,) int64 tensors, removes the entries (rows[p], cols[p]) from
the reduction (their logit is -inf: weight 0 in the sum and in the gradient), e.g. a user's
other known positives in a full softmax.
"""

from __future__ import annotations

import torch

from recsys.errors import ConfigError
from recsys.model.corrections import mask_entries_


class _ChunkedReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, v, bias, chunk: int, kind: str, mask_rows, mask_cols):
        if not (isinstance(chunk, int) and chunk >= 1):
            raise ConfigError(f"chunk={chunk!r}: items per block must be an int >= 1. Fix: e.g. chunk=8192.")
        B, N = q.shape[0], v.shape[0]
        out = torch.full((B,), float("-inf") if kind == "lse" else 0.0, dtype=q.dtype, device=q.device)
        masked = mask_rows.numel() > 0
        if masked:  # entries sorted by column, so each chunk's entries are one slice
            order = torch.argsort(mask_cols)
            mask_rows, mask_cols = mask_rows[order], mask_cols[order]
        for s in range(0, N, chunk):
            logits = q @ v[s:s + chunk].T  # (B, c)
            if masked:
                logits = _mask_chunk(logits, mask_rows, mask_cols, s)
            if kind == "lse":
                out = torch.logaddexp(out, torch.logsumexp(logits, dim=1))
            else:
                out = out + torch.nn.functional.softplus(logits + bias).sum(1)
        ctx.save_for_backward(q, v, bias, out, mask_rows, mask_cols)
        ctx.chunk, ctx.kind, ctx.masked = chunk, kind, masked
        return out

    @staticmethod
    def backward(ctx, g):  # g (B,)
        q, v, bias, out, mask_rows, mask_cols = ctx.saved_tensors
        gq, gv = torch.zeros_like(q), torch.zeros_like(v)
        gb = torch.zeros_like(bias)
        for s in range(0, v.shape[0], ctx.chunk):
            vc = v[s:s + ctx.chunk]
            logits = q @ vc.T  # (B, c)
            if ctx.masked:
                logits = _mask_chunk(logits, mask_rows, mask_cols, s)
            if ctx.kind == "lse":
                w = torch.exp(logits - out[:, None]) * g[:, None]  # softmax weights
            else:
                w = torch.sigmoid(logits + bias) * g[:, None]
                gb = gb + w.sum()
            gq += w @ vc
            gv[s:s + ctx.chunk] = w.T @ q
        return gq, gv, gb.to(bias.dtype), None, None, None, None


def _mask_chunk(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, s: int) -> torch.Tensor:
    """``logits`` (B, c) of chunk [s, s + c) with the entries (rows, cols) inside it masked in
    place by ``recsys.model.corrections.mask_entries_`` (-inf); ``cols`` sorted."""
    lo, hi = torch.searchsorted(cols, torch.tensor([s, s + logits.shape[1]], device=cols.device)).tolist()
    if hi <= lo:
        return logits
    return mask_entries_(logits, rows[lo:hi], cols[lo:hi] - s)


def _no_mask(q: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=q.device)


def chunked_logsumexp(q: torch.Tensor, v: torch.Tensor, chunk: int = 8192,
                      mask: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """logsumexp(q @ v.T, 1): q (B, D), v (N, D) -> (B,), in (B, chunk) blocks; ``mask``
    (rows, cols) entries left out of the sum."""
    rows, cols = mask if mask is not None else (_no_mask(q), _no_mask(q))
    return _ChunkedReduce.apply(q, v, torch.zeros((), dtype=q.dtype, device=q.device), chunk, "lse",
                                rows, cols)


def chunked_softplus_sum(q: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """softplus(q @ v.T + bias).sum(1): q (B, D), v (N, D), scalar bias -> (B,)."""
    return _ChunkedReduce.apply(q, v, bias, chunk, "softplus", _no_mask(q), _no_mask(q))
