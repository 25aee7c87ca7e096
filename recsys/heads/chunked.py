"""Row reductions over the (B, N) logit matrix computed chunk by chunk, exact gradients.

``chunked_logsumexp(q, v)`` = logsumexp(q @ v.T, dim=1) and ``chunked_softplus_sum(q, v, b)``
= softplus(q @ v.T + b).sum(1), without ever holding more than (B, chunk) logits: the
forward pass keeps only the (B,) result; the backward pass recomputes each chunk's logits
and accumulates dq = P @ v_c and dv_c = P.T @ q with P = softmax (resp. sigmoid) weights.
Memory is O(B * chunk + N * D) instead of O(B * N).
"""

from __future__ import annotations

import torch

from recsys.errors import ConfigError


class _ChunkedReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, v, bias, chunk: int, kind: str):
        if not (isinstance(chunk, int) and chunk >= 1):
            raise ConfigError(f"chunk={chunk!r}: items per block must be an int >= 1. Fix: e.g. chunk=8192.")
        B, N = q.shape[0], v.shape[0]
        out = torch.full((B,), float("-inf") if kind == "lse" else 0.0, dtype=q.dtype, device=q.device)
        for s in range(0, N, chunk):
            logits = q @ v[s:s + chunk].T  # (B, c)
            if kind == "lse":
                out = torch.logaddexp(out, torch.logsumexp(logits, dim=1))
            else:
                out = out + torch.nn.functional.softplus(logits + bias).sum(1)
        ctx.save_for_backward(q, v, bias, out)
        ctx.chunk, ctx.kind = chunk, kind
        return out

    @staticmethod
    def backward(ctx, g):  # g (B,)
        q, v, bias, out = ctx.saved_tensors
        gq, gv = torch.zeros_like(q), torch.zeros_like(v)
        gb = torch.zeros_like(bias)
        for s in range(0, v.shape[0], ctx.chunk):
            vc = v[s:s + ctx.chunk]
            logits = q @ vc.T  # (B, c)
            if ctx.kind == "lse":
                w = torch.exp(logits - out[:, None]) * g[:, None]  # softmax weights
            else:
                w = torch.sigmoid(logits + bias) * g[:, None]
                gb = gb + w.sum()
            gq += w @ vc
            gv[s:s + ctx.chunk] = w.T @ q
        return gq, gv, gb.to(bias.dtype), None, None


def chunked_logsumexp(q: torch.Tensor, v: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """logsumexp(q @ v.T, 1): q (B, D), v (N, D) -> (B,), in (B, chunk) blocks."""
    return _ChunkedReduce.apply(q, v, torch.zeros((), dtype=q.dtype, device=q.device), chunk, "lse")


def chunked_softplus_sum(q: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """softplus(q @ v.T + bias).sum(1): q (B, D), v (N, D), scalar bias -> (B,)."""
    return _ChunkedReduce.apply(q, v, bias, chunk, "softplus")
