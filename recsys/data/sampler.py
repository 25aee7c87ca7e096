"""The train sampler: the order of training pairs is a pure function of ``(seed, epoch)``
(this process's share of it under DDP), and the loader resumes mid-epoch.

``EpochSampler`` + ``ResumableLoader`` let Lightning save and restore the position inside an
epoch, so a run killed mid-epoch and resumed from its last checkpoint sees exactly the
batches the uninterrupted run would have seen. Outside of a process group (one CPU / GPU)
``world()`` is ``(1, 0)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from recsys.errors import ConfigError

__all__ = ["world", "EpochSampler", "ResumableLoader"]


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group; ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


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
            raise ConfigError(f"ResumableLoader sampler={type(self.sampler).__name__}: it needs an EpochSampler (its "
                              "state is the position in the epoch). Fix: pass sampler=EpochSampler(dataset, seed).")
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
