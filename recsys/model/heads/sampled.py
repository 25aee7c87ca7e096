"""Sampled softmax: shared sampled negatives with logQ correction and hit removal."""

from __future__ import annotations

import numpy as np
import torch

from recsys.model.candidates import LogUniformSampler, Sampler, accidental_hits
from recsys.model.heads.base import Head, HeadOutput


class SampledSoftmax(Head):
    """Softmax over the positive and M negatives drawn once per batch from ``sampler``.

    Logits (positive and negatives) are corrected by subtracting log Q, the log of each
    candidate's expected count under the sampler (Bengio & Senecal 2008; Jean et al. 2015),
    so the loss is a consistent estimate of full softmax. A sampled negative equal to the
    example's positive is an *accidental hit* and is removed; with
    ``mask_known_positives`` any train positive of the user is removed too.

    With a uniform sampler that returns every item once (``UniformSampler(replacement=False)``,
    ``num_negatives=N``) this equals ``FullSoftmax`` exactly (tests check value and grad).

    Args:
        sampler: ``UniformSampler``, ``PopularitySampler(alpha)`` or ``LogUniformSampler``.
        num_negatives: M, shared across the batch.
        logq_correction: subtract log Q (turn off only to study its effect).
        remove_accidental_hits: mask negatives equal to the positive.
        mask_known_positives: also mask negatives that are train items of the user.
        temperature / learn_temperature: T.
    """

    def __init__(self, sampler: Sampler | None = None, num_negatives: int = 1024,
                 logq_correction: bool = True, remove_accidental_hits: bool = True,
                 mask_known_positives: bool = False, temperature: float = 1.0,
                 learn_temperature: bool = False):
        super().__init__(temperature, learn_temperature)
        self.sampler = sampler if sampler is not None else LogUniformSampler()
        self.num_negatives = num_negatives
        self.logq_correction, self.remove_accidental_hits = logq_correction, remove_accidental_hits
        self.mask_known_positives = mask_known_positives

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        # M >= N: score the whole catalogue with FullSoftmax instead; the one exception is
        # UniformSampler(replacement=False) with M = N, which *is* full softmax
        exact = getattr(self.sampler, "replacement", True) is False and self.num_negatives == n_items
        return [] if exact else [("num_negatives", self.num_negatives, n_items, "use FullSoftmax to score all N items")]

    def bind(self, schema, known) -> None:
        super().bind(schema, known)
        counts = schema.item_counts if schema.item_counts is not None else np.zeros(schema.n_items)
        self.sampler.bind(counts)  # no counts: every item equally popular

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        users, items = batch["user"], batch["item"]
        cand, log_q = self.sampler.sample(self.num_negatives)  # (M,), (M,)
        cand, log_q = cand.to(q.device), log_q.to(q.device)
        pos = (q * item_tower(items)).sum(-1)  # (B,)
        neg = q @ item_tower(cand).T  # (B, M)
        hits = None
        if self.remove_accidental_hits or self.mask_known_positives:
            # without remove_accidental_hits a draw of the positive stays a negative, even though
            # it is a train item of the user
            hits = accidental_hits(users, items, cand, self.known if self.mask_known_positives else None,
                                   exempt=None if self.remove_accidental_hits else cand[None, :] == items[:, None])
        lq_pos = self.sampler.log_q(items, self.num_negatives) if self.logq_correction else None
        return self.softmax_loss(pos, neg, lq_pos, log_q if self.logq_correction else None, hits)
