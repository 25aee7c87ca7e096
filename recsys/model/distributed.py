"""Data parallelism in the model: the global in-batch candidate set (the train sampler that
shards, reshuffles from ``(seed, epoch)`` and resumes mid-epoch is ``recsys.data.sampler``).

Under DDP (``--trainer.strategy=ddp``, any accelerator, any number of nodes) every process
holds a local batch of B pairs. In-batch heads score each query against the *global*
batch, W x B positives, so the number of negatives grows with the number of processes as it
would with one process and a W x B batch:

    cand, v, off = gather_candidates(cand, v, n_local=B)  # (W*B + M,), (W*B + M, D), rank * B

The gather keeps the autograd graph: process r's loss depends on the item embeddings of
every process, and the backward pass returns to each process the sum over all processes of
the gradient of their losses with respect to its rows (``_AllGatherRows.backward``). DDP
then averages parameter gradients over the W processes, which gives exactly the gradient of
the mean of the W local losses, i.e. of the loss of one process on the concatenated batch
(``tests/test_ddp.py`` checks loss and gradients against that). Outside of a process group
(one CPU / GPU) every function here is a no-op.

``EpochSampler`` + ``ResumableLoader`` make the order of training pairs a pure function of
``(seed, epoch)`` (this process's share of it under DDP) and let Lightning save and restore
the position inside an epoch, so a run killed mid-epoch and resumed from its last checkpoint
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from recsys.data.sampler import world

__all__ = ["all_gather_rows", "gather_candidates"]


class _AllGatherRows(torch.autograd.Function):
    """Concatenate every process's rows (sizes may differ), with the gradient routed back.

    forward: x (n_r, ...) on rank r -> (sum_r n_r, ...), rank order.
    backward: the gradient of the concatenation is summed over all processes (each one's
    loss depends on every row) and rank r keeps its own slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        n_max = max(sizes)
        pad = torch.zeros((n_max - len(x), *x.shape[1:]), dtype=x.dtype, device=x.device)
        xp = torch.cat([x, pad]).contiguous()  # (n_max, ...): all_gather needs equal shapes
        parts = [torch.empty_like(xp) for _ in sizes]
        dist.all_gather(parts, xp)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # d(sum_r loss_r) / d(all rows)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None, None


def all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(rows of every process concatenated in rank order, offset of this process's rows)``.

    Differentiable for floating tensors (see ``_AllGatherRows``); integer tensors (ids) are
    gathered the same way without a graph. Returns ``(x, 0)`` outside a process group.
    """
    W, rank = world()
    if W == 1:
        return x, 0
    n = torch.tensor([len(x)], device=x.device)
    ns = [torch.empty_like(n) for _ in range(W)]
    dist.all_gather(ns, n)
    sizes = [int(s.item()) for s in ns]
    return _AllGatherRows.apply(x, sizes, rank), sum(sizes[:rank])


def gather_candidates(cand: torch.Tensor, v: torch.Tensor, n_local: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """In-batch candidates of the global batch.

    Args:
        cand: (C,) candidate ids of this process; the first ``n_local`` are its batch
            positives, the rest (e.g. the M uniform negatives of mixed sampling) stay local.
        v: (C, D) their item-tower embeddings (with their graph).
        n_local: B, the local batch positives (default: all of ``cand``).

    Returns:
        ``(cand_g (W*B + M,), v_g (W*B + M, D), offset)``: the batch positives of every
        process in rank order, then this process's other candidates; this process's own
        positives are rows ``offset .. offset + B`` of the result. Outside a process group:
        ``(cand, v, 0)`` unchanged.
    """
    if world()[0] == 1:
        return cand, v, 0
    B = len(cand) if n_local is None else n_local
    ids, offset = all_gather_rows(cand[:B])  # (W*B,)
    vg, _ = all_gather_rows(v[:B])  # (W*B, D)
    return torch.cat([ids, cand[B:]]), torch.cat([vg, v[B:]]), offset
