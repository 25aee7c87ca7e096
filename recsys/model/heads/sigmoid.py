"""Multi-label sigmoid: every (query, item) pair an independent binary label, BCE."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError
from recsys.model.candidates import UniformSampler, accidental_hits
from recsys.model.chunked import chunked_softplus_sum
from recsys.model.corrections import mask
from recsys.model.heads.base import Head, HeadOutput, head_logs


class MultiLabelSigmoid(Head):
    """Binary cross-entropy with logits l_j = q . v_j / T + b (one global bias b).

    Full mode (``num_negatives=None``): the labels are the query's train items (multi-hot),
    every other item is a 0. Per example
        loss = sum_j softplus(l_j) - sum_{j in P(u)} l_j
    over all N items (BCE with logits, since softplus(l) - y l = BCE(l, y)), computed in
    (B, chunk) blocks. This is the one-vs-rest view of extreme multi-label classification.

    Sampled mode (``num_negatives=k``): the example's positive plus k uniform negatives
    shared across the batch; negatives that are known positives of the query are dropped;
    each kept negative is weighted by ``negative_weight`` (default N / k):
        loss = softplus(-l_+) + w * sum_{j in S, j not in P(u)} softplus(l_j)
    Each of the k draws is uniform over all N items, so
        E[sum_{j in S, j not in P(u)} softplus(l_j)] = (k / N) sum_{j not in P(u)} softplus(l_j)
    and w = N / k makes the sampled negative term an unbiased estimate of the full one
    (the known positives a draw may hit are dropped, not redrawn, hence N and not N - 1).
    Set ``negative_weight=1`` for the classic unweighted form.

    ``pos_weight`` p multiplies each positive's term, BCE(l, 1) = softplus(-l) -> p softplus(-l)
    (torch's ``BCEWithLogitsLoss(pos_weight=...)``): with few positives among many labels, p > 1
    counters the negatives' majority (DEXML, Gupta et al., ICLR 2024, tune it for dual encoders).
    In full mode the loss becomes sum_j softplus(l_j) + sum_{j in P(u)} [(p - 1) softplus(l_j) - p l_j].

    Args:
        temperature / learn_temperature: logit scale 1 / T (sigmoid heads have one too).
        num_negatives: None for full mode, else k.
        negative_weight: weight of each sampled negative (sampled mode only).
        chunk: items per block in full mode.
        pos_weight: weight p of each positive's BCE term (1: plain BCE).
    """

    def __init__(self, temperature: float = 1.0, learn_temperature: bool = False,
                 num_negatives: int | None = None, negative_weight: float | None = None,
                 chunk: int = 8192, pos_weight: float = 1.0):
        super().__init__(temperature, learn_temperature)
        if pos_weight <= 0:
            raise ConfigError(f"MultiLabelSigmoid pos_weight={pos_weight}: need pos_weight > 0. Fix: e.g. 1.0 "
                              "(plain BCE) or 2-10 to weigh the few positives up.")
        self.num_negatives, self.negative_weight, self.chunk = num_negatives, negative_weight, chunk
        self.pos_weight = float(pos_weight)
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.sampler = UniformSampler()  # the k shared negatives of sampled mode

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        if self.num_negatives is None:
            return []
        return [("num_negatives", self.num_negatives, n_items, "set num_negatives=null for the full (all items) mode")]

    def bind(self, schema, known) -> None:
        super().bind(schema, known)
        self.sampler.bind(np.zeros(schema.n_items))
        if schema.item_counts is not None:  # start at the base rate: sigmoid(b) = mean density
            rate = float(np.asarray(schema.item_counts).sum()) / (schema.n_users * schema.n_items)
            with torch.no_grad():
                self.bias.fill_(math.log(max(rate, 1e-8) / (1 - min(rate, 0.5))))

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """(Q, N) scores -> sigmoid(scores / T + b): one independent probability per label.
        With ``pos_weight`` p != 1 the loss fits the odds of a label times p, so these
        over-state it (the calibration metrics show by how much)."""
        return torch.sigmoid(scores / self.temperature() + self.bias)

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        T = self.temperature()
        users, items = batch["user"], batch["item"]
        if self.num_negatives is None:
            return self._full(q / T, users, item_tower, T)
        return self._sampled(q / T, users, items, item_tower, T)

    def _full(self, qs, users, item_tower, T) -> HeadOutput:
        v_all = item_tower.forward_all()  # (N, D)
        r, j = self.known.pairs(users.cpu())  # (P,), (P,) multi-hot labels
        ones = torch.ones(len(j), dtype=v_all.dtype)
        Y = torch.sparse_coo_tensor(torch.stack([r, j]), ones, (len(users), v_all.shape[0]),
                                    is_coalesced=True, check_invariants=False).to(qs.device)  # (B, N) labels
        # sum over labels of q_u . v_j = sum_u q_u . (Y V)_u: one sparse matmul, whose backward
        # is another (a gather / scatter over the P ~ B x |P(u)| labels is ~5x slower on CPU)
        pos_sum = (qs * torch.sparse.mm(Y, v_all)).sum() + self.bias * len(j)
        neg_all = chunked_softplus_sum(qs, v_all, self.bias, self.chunk)  # (B,)
        loss = (neg_all.sum() - pos_sum) / len(users)
        if self.pos_weight != 1.0:  # + sum_pos (p - 1) softplus(l) - (p - 1) l = (p - 1) softplus(-l)
            l_pos = (qs[r.to(qs.device)] * v_all[j.to(qs.device)]).sum(-1) + self.bias  # (P,)
            loss = loss + (self.pos_weight - 1.0) * F.softplus(-l_pos).sum() / len(users)
        with torch.no_grad():
            logs = head_logs(T, pos_sum / max(1, len(j)), (qs @ v_all.mean(0)).mean() + self.bias, 0.0,
                             float(v_all.shape[0]) - len(j) / len(users))
        return HeadOutput(loss, logs)

    def _sampled(self, qs, users, items, item_tower, T) -> HeadOutput:
        k = self.num_negatives
        N = item_tower.n_items
        cand, _ = self.sampler.sample(k)  # (k,) shared uniform negatives
        pos = (qs * item_tower(items)).sum(-1) + self.bias  # (B,)
        hits = accidental_hits(users, items, cand, self.known)  # (B, k) the positive, known positives
        neg = mask(qs @ item_tower(cand).T + self.bias, hits)  # (B, k), hits at -inf: softplus 0
        w = self.negative_weight if self.negative_weight is not None else N / k  # unbiased
        loss = (self.pos_weight * F.softplus(-pos) + w * F.softplus(neg).sum(1)).mean()
        with torch.no_grad():
            live = ~hits  # (B, k) negatives that count
            neg_mean = neg.masked_select(live).mean() if live.any() else neg.new_tensor(float("nan"))  # = neg[live]
            logs = head_logs(T, pos.mean(), neg_mean, hits.float().mean(), live.sum(1).float().mean())
        return HeadOutput(loss, logs)
