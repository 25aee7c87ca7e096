"""Mean pooling of padded id bags, ``bag_mean(table, ids)``: the values of
``nn.EmbeddingBag(mode="mean", padding_idx=pad)`` at a fraction of its CPU cost.

On CPU ``EmbeddingBag`` with a ``padding_idx`` leaves its vectorised kernel (which needs
``padding_idx < 0``), and its dense backward sorts the B x H ids and accumulates row by row:
on ML-1M's shipped config (B 1024, H 100) the history bag's forward and backward took about
a quarter of an in-batch step. Here the padding is dropped first (the bag becomes a 1-D id
list with offsets, the kernel's fast path), and the backward is itself an embedding bag over
the transposed bag: the L ids are sorted once (stable, int32), each distinct id's bag is the
batch rows that hold it, and grad_W[j] = sum over those rows of grad_out[b] / n_b. Same
values, gradients that differ from the built-in's only in float summation order
(deterministic: the stable sort fixes it), sparse (COO, coalesced) when the table is sparse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["bag_mean", "BagMean"]


class BagMean(torch.autograd.Function):
    """(B, D) = mean of ``weight`` rows over 1-D ``flat`` ids (L,) in B bags at ``offsets``
    (B,), with ``counts`` (B,) ids per bag (an empty bag pools to zero). The weight's gradient
    is dense, or a coalesced sparse COO tensor with ``sparse``."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, flat: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor,
                sparse: bool) -> torch.Tensor:
        out = F.embedding_bag(flat, weight, offsets, mode="mean")  # (B, D), zero for empty bags
        ctx.save_for_backward(flat, counts)
        ctx.shape, ctx.sparse = weight.shape, sparse
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, counts = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        scaled = grad / counts.clamp_min(1).unsqueeze(1).to(grad.dtype)  # (B, D) d out_b / d each id of bag b
        ids, order = torch.sort(flat.to(torch.int32), stable=True)  # (L,) stable: rows ascending per id
        rows = torch.repeat_interleave(torch.arange(len(counts), device=flat.device), counts)[order]  # (L,)
        uniq, n = torch.unique_consecutive(ids, return_counts=True)  # (U,), (U,)
        starts = torch.cumsum(n, 0) - n  # (U,) each distinct id's first position in ``rows``
        values = F.embedding_bag(rows, scaled, starts, mode="sum")  # (U, D) grad_W rows of the ids
        uniq = uniq.long()
        if ctx.sparse:
            g = torch.sparse_coo_tensor(uniq[None], values, ctx.shape, is_coalesced=True,
                                        check_invariants=False)
        else:
            g = values.new_zeros(ctx.shape).index_copy_(0, uniq, values)
        return g, None, None, None, None


def bag_mean(table: nn.EmbeddingBag, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) mean of ``table``'s rows over each row of ``ids`` (B, H), padded with
    ``table.padding_idx``; ``keep`` (B, H) bool: also leave out the False entries (e.g. bag
    dropout). Equals ``table(ids)`` for a mean-mode bag with a padding index (the padding
    excluded from the mean, an all-padding row zero)."""
    valid = ids != table.padding_idx  # (B, H)
    if keep is not None:
        valid &= keep
    counts = valid.sum(1)  # (B,)
    flat = ids[valid]  # (L,) row by row, in bag order
    offsets = torch.cumsum(counts, 0) - counts  # (B,)
    return BagMean.apply(table.weight, flat, offsets, counts, table.sparse)
