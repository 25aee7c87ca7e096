"""Candidate sources: which items a head scores besides the positive, and which of them
are accidental hits.

Samplers: ``sample(M)`` returns ``(ids (M,), log_q (M,))`` where ``log_q[j] = log E[#times
ids[j] is drawn in one call]`` (= log(M p_j) for M draws with replacement from p).
Subtracting it from the logits is the logQ correction (``recsys.model.corrections``). The
popularity and log-uniform samplers draw from an inverse CDF with ``torch.searchsorted``
(O(M log N) per call); the uniform one with ``torch.randint`` (O(M)). Every head that draws
negatives uses one: ``SampledSoftmax`` its injected sampler, ``MultiLabelSigmoid`` (sampled
mode) and the mixed in-batch heads a ``UniformSampler``. The in-batch candidates themselves
are the batch's positives (``InBatchSoftmax.candidates``).

``accidental_hits`` is the one place where the (B, C) mask of candidates that are not
negatives of a row is built (the row's positive drawn again, the user's train items).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from recsys.errors import ConfigError


class Sampler(nn.Module):
    """Base: holds the (N,) proposal ``probs`` as a buffer once ``bind`` has run."""

    def __init__(self):
        super().__init__()
        self.register_buffer("probs", torch.empty(0), persistent=False)
        self.register_buffer("cdf", torch.empty(0, dtype=torch.float64), persistent=False)

    @property
    def n_items(self) -> int:
        return len(self.probs)

    def bind(self, counts: np.ndarray) -> None:
        """Set the proposal from train item counts (N,)."""
        p = torch.as_tensor(self.proposal(np.asarray(counts, dtype=np.float64)), dtype=torch.float64)
        p = p / p.sum()
        self.probs = p.float().to(self.probs.device)
        self.cdf = torch.cumsum(p, 0).to(self.probs.device)

    def proposal(self, counts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_bound(self) -> None:
        if self.n_items == 0:
            raise ConfigError(
                f"{type(self).__name__} used before bind(counts): it has no proposal yet. "
                "Fix: call head.bind(schema, known) (TwoTowerModule.setup does) first."
            )

    def sample(self, M: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """M draws with replacement: ids (M,) int64 and log expected counts (M,)."""
        self._check_bound()
        u = torch.rand(M, generator=generator, dtype=torch.float64).to(self.cdf.device) * self.cdf[-1]
        ids = torch.searchsorted(self.cdf, u).clamp_(max=self.n_items - 1)
        return ids, torch.log(M * self.probs[ids])

    def log_q(self, ids: torch.Tensor, M: int) -> torch.Tensor:
        """log expected count of ``ids`` in M draws (used for mixtures)."""
        self._check_bound()
        return torch.log(M * self.probs[ids])


class UniformSampler(Sampler):
    """p_j = 1 / N. ``replacement=False`` draws M distinct items (inclusion prob. M / N)."""

    def __init__(self, replacement: bool = True):
        super().__init__()
        self.replacement = replacement

    def sample(self, M: int, generator: torch.Generator | None = None):
        self._check_bound()
        if self.replacement:  # M independent uniform draws: expected count M / N each
            ids = torch.randint(self.n_items, (M,), generator=generator, device=self.probs.device)
            return ids, torch.full((M,), math.log(M / self.n_items), device=self.probs.device)
        if M > self.n_items:
            raise ConfigError(
                f"num_negatives={M} without replacement exceeds the catalogue N={self.n_items}. "
                "Fix: num_negatives <= N or replacement=True."
            )
        ids = torch.randperm(self.n_items, generator=generator)[:M].to(self.probs.device)
        return ids, torch.full((M,), math.log(M / self.n_items), device=self.probs.device)

    def log_q(self, ids: torch.Tensor, M: int) -> torch.Tensor:
        """log(M / N) for every id: the expected count of any item in M uniform draws."""
        self._check_bound()
        return torch.full(ids.shape, math.log(M / self.n_items), device=ids.device)

    def proposal(self, counts: np.ndarray) -> np.ndarray:
        return np.ones_like(counts)


class PopularitySampler(Sampler):
    """p_j proportional to (count_j + 1) ** alpha (alpha = 0.75 as in word2vec; 1 = unigram)."""

    def __init__(self, alpha: float = 0.75):
        super().__init__()
        self.alpha = alpha

    def proposal(self, counts: np.ndarray) -> np.ndarray:
        return (counts + 1.0) ** self.alpha


class LogUniformSampler(Sampler):
    """Zipfian over popularity ranks: p(rank r) = log((r + 2) / (r + 1)) / log(N + 1).

    The sampler of TensorFlow's ``log_uniform_candidate_sampler`` (Jean et al. 2015), with
    items ranked by train frequency (rank 0 = most popular).
    """

    def proposal(self, counts: np.ndarray) -> np.ndarray:
        N = len(counts)
        rank = np.empty(N, dtype=np.int64)
        rank[np.argsort(-counts, kind="stable")] = np.arange(N)
        return np.log((rank + 2.0) / (rank + 1.0)) / math.log(N + 1.0)


SAMPLERS = {"uniform": UniformSampler, "popularity": PopularitySampler, "log_uniform": LogUniformSampler}


def accidental_hits(users: torch.Tensor, items: torch.Tensor, cand: torch.Tensor, known=None,
                    duplicates: bool = True, exempt: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) bool: candidate c of row b is not a negative of that row and must be masked.

    users (B,), items (B,) the rows' positives, cand (C,) shared or (B, C) per-row candidate
    ids. ``duplicates``: a candidate equal to the row's positive (drawn again, or the same item
    twice in a batch); ``known`` (``KnownPositives``): a train item of the row's user;
    ``exempt`` (B, C): entries never marked (e.g. the row's own positive among in-batch
    candidates, which is column 0 of the logits already).
    """
    if known is not None and duplicates and known.holds(users, items):
        duplicates = False  # each positive is a known pair of its user: its duplicates are known positives
    cand2 = cand if cand.dim() == 2 else cand[None, :].expand(len(items), -1)  # (B, C)
    hits = cand2 == items[:, None] if duplicates else None
    if known is not None:
        found = known.contains(users, cand)
        hits = found if hits is None else hits | found
    if hits is None:
        hits = torch.zeros(cand2.shape, dtype=torch.bool, device=cand.device)
    if exempt is not None:
        hits = hits & ~exempt
    return hits
