"""Data parallelism: the global in-batch candidate set, and a train sampler that shards,
reshuffles from ``(seed, epoch)`` and resumes mid-epoch.

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

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["world", "all_gather_rows", "gather_candidates", "EpochSampler", "ResumableLoader"]


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group; ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


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


class EpochSampler(DistributedSampler):
    """Indices of one epoch: a permutation drawn from ``seed + epoch`` (torch.randperm), this
    process's share of it under DDP (``rank::world_size``, padded to equal shares, as
    ``DistributedSampler``), starting at ``start``.

    Lightning calls ``set_epoch`` before every epoch and keeps a ``DistributedSampler`` as it
    is under DDP instead of wrapping it. Unlike ``RandomSampler(generator=g)``, whose order
    in epoch e depends on how often ``g`` was drawn from before, the order here depends
    only on ``(seed, epoch)``, so a resumed run can rebuild it.

    ``weights`` (len(dataset),): draw the epoch's indices with replacement in proportion to
    them instead of permuting (as ``WeightedRandomSampler``, still from ``(seed, epoch)``).
    """

    def __init__(self, dataset, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                 weights: torch.Tensor | None = None):
        W, rank = world()
        super().__init__(dataset, num_replicas=W, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.epoch = epoch
        self.start = 0  # indices of this epoch to skip on the next iteration (resume)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[int]:
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
            idx = drawn[self.rank:self.total_size:self.num_replicas].tolist()
        else:
            idx = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(idx[start:])


class ResumableLoader(DataLoader):
    """A DataLoader over an ``EpochSampler`` whose ``state_dict`` is the position in the epoch.

    Lightning saves ``state_dict()`` of a train loader that has one in every checkpoint and
    hands it back to ``load_state_dict`` before iterating on resume. The state is the epoch
    and the number of batches already handed to the training loop in it; on resume the
    sampler skips those ``batches * batch_size`` indices (all batches but the last are full),
    so batch b of the resumed epoch is batch b of the uninterrupted one. Counting happens
    where batches leave the loader, so worker prefetching does not skew it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs sampler=EpochSampler(...), got {type(self.sampler).__name__}")
        self._served = 0  # batches of the current epoch handed out

    def __iter__(self):
        self._served = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._served)}

    def load_state_dict(self, state: dict) -> None:
        """Resume inside ``state['epoch']``; a state from another epoch (a checkpoint written
        after its epoch ended) leaves the next epoch to start at its first batch."""
        if int(state.get("epoch", -1)) == self.sampler.epoch:
            self.sampler.start = int(state.get("batches", 0)) * self.batch_size
            self._served = int(state.get("batches", 0))
