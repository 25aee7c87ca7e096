"""In-batch negatives: the batch's other positives are the negatives."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.model.candidates import UniformSampler, accidental_hits
from recsys.model.corrections import log_frequency
from recsys.model.distributed import gather_candidates
from recsys.model.heads.base import Head, HeadOutput


class StreamingFrequency(nn.Module):
    """Streaming estimate of each item's expected count per batch (Yi et al., RecSys 2019,
    "Sampling-bias-corrected neural modeling for large corpus item recommendations").

    For every item seen at step t: gap <- (1 - alpha) gap + alpha (t - last); last <- t.
    The expected count per batch is 1 / gap. State is kept per item (the paper hashes ids
    into fewer buckets; with N rows of two floats this is exact and still small).
    """

    def __init__(self, n_items: int, batch_size_hint: int = 1024, alpha: float = 0.01):
        super().__init__()
        self.alpha = alpha
        self.register_buffer("last", torch.zeros(n_items))
        self.register_buffer("gap", torch.full((n_items,), max(1.0, n_items / batch_size_hint)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def log_count(self, ids: torch.Tensor) -> torch.Tensor:
        """log expected count per batch of ``ids`` (before this step's update)."""
        return -torch.log(self.gap[ids])

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Record one batch of positives."""
        self.step += 1
        u = torch.unique(ids)
        t = self.step.float()
        seen = self.last[u] > 0
        new_gap = (1 - self.alpha) * self.gap[u] + self.alpha * (t - self.last[u])
        self.gap[u] = torch.where(seen, new_gap, self.gap[u])
        self.last[u] = t


class InBatchSoftmax(Head):
    """Softmax over the batch's positives, with the corrections that make it work.

    The in-batch candidate distribution is the training unigram, so popular items are
    over-used as negatives; subtracting log Q = log(B p_j) (Yi et al. 2019) from every logit
    removes that bias. Items occurring twice in a batch would be both the positive and a
    negative: ``mask_duplicates`` masks those columns (accidental hits). Mixed negative
    sampling (Yang et al., WWW 2020, "Mixed Negative Sampling for Learning Two-tower Neural
    Networks in Recommendations") adds ``num_uniform`` uniform items; every candidate's
    expected count is then that of the mixture, B p_j + M / N.

    Args:
        logq: ``static`` (train counts), ``streaming`` (``StreamingFrequency``) or ``none``.
        logq_weight: w in logit - w log Q. 1 is the consistent estimate of full softmax;
            0 is no correction (popularity-biased, below popularity itself on ML-1M);
            values in between keep part of the popularity bias, which top-heavy metrics
            such as NDCG@10 reward (a knob, not a correction: tune it on validation).
        mask_duplicates: mask in-batch negatives equal to the row's positive.
        mask_known_positives: also mask negatives that are train items of the user.
        num_uniform: M uniform negatives added to the batch's (mixed negatives), 0 = off.
        streaming_alpha: learning rate of the streaming estimator.
        hardest: keep only the k largest corrected negative logits of each row (the hard-negative
            mining transform of TensorFlow Recommenders' retrieval task, step 4 of
            ``recsys.model.corrections``); None keeps every negative.
        temperature / learn_temperature: T.
    """

    def __init__(self, logq: str = "static", mask_duplicates: bool = True,
                 mask_known_positives: bool = False, num_uniform: int = 0,
                 streaming_alpha: float = 0.01, temperature: float = 1.0,
                 learn_temperature: bool = False, logq_weight: float = 1.0, hardest: int | None = None):
        super().__init__(temperature, learn_temperature)
        if hardest is not None and not (isinstance(hardest, int) and hardest >= 1):
            raise ConfigError(f"hardest={hardest!r}: need an integer >= 1 (negatives kept per row) or null. "
                              "Fix: e.g. hardest=64, or hardest=null to keep every negative.")
        self.hardest = hardest
        if logq not in ("static", "streaming", "none"):
            raise ConfigError(f"logq='{logq}': need 'static', 'streaming' or 'none'. Fix: pick one.")
        if not 0.0 <= logq_weight <= 1.0:
            raise ConfigError(f"logq_weight={logq_weight}: need 0 <= logq_weight <= 1 (the share of log Q "
                              "subtracted). Fix: 1.0 for the full correction, or logq='none'.")
        self.logq_weight = logq_weight
        self.logq, self.mask_duplicates = logq, mask_duplicates
        self.mask_known_positives, self.num_uniform = mask_known_positives, num_uniform
        self.streaming_alpha = streaming_alpha
        self.register_buffer("log_p", torch.empty(0), persistent=False)
        self.streaming: StreamingFrequency | None = None
        self.uniform = UniformSampler() if num_uniform else None  # mixed negatives (Yang et al. 2020)

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        if not self.num_uniform:
            return []
        return [("num_uniform", self.num_uniform, n_items, "use fewer uniform negatives or num_uniform=0")]

    def bind(self, schema, known) -> None:
        super().bind(schema, known)
        counts = np.zeros(schema.n_items) if schema.item_counts is None else schema.item_counts  # none: uniform
        self.log_p = torch.from_numpy(log_frequency(counts)).float()
        if self.uniform is not None:
            self.uniform.bind(np.zeros(schema.n_items))
        if self.logq == "streaming" and self.streaming is None:
            self.streaming = StreamingFrequency(schema.n_items, alpha=self.streaming_alpha)

    def candidate_log_q(self, ids: torch.Tensor, B: int) -> torch.Tensor | None:
        """log expected count of ``ids`` among the candidates of a batch of B (+ M uniform)."""
        if self.logq == "none":
            return None
        if self.logq == "streaming":
            log_b = self.streaming.log_count(ids)
        else:
            log_b = math.log(B) + self.log_p.to(ids.device)[ids]  # log(B p_j)
        if self.num_uniform:
            log_b = torch.logaddexp(log_b, self.uniform.log_q(ids, self.num_uniform).to(log_b))  # B p_j + M / N
        return self.logq_weight * log_b  # w = 1: exactly log_b

    def batch_scores(self, q, users, items, item_tower):
        """(scores (B, C), target (B,), log_q (C,) or None, hits (B, C)): the raw scores of the
        in-batch (+ uniform) candidates, C = B + M (W*B + M under DDP with W processes: the
        global batch). Row b's positive is column ``target[b]`` (b, or off + b under DDP).

        ``hits`` marks the columns that are not negatives of a row: other columns holding
        the same item (``mask_duplicates``) or a train item of the user
        (``mask_known_positives``); it may mark the target itself, which the loss never masks.
        """
        B = len(items)
        cand = items
        if self.num_uniform:
            cand = torch.cat([items, self.uniform.sample(self.num_uniform)[0].to(items.device)])
        v = item_tower(cand)  # (C, D), C = B + M
        # DDP: the batch positives of every process (autograd-aware gather), uniform ones
        # stay local; this process's positives are rows off .. off + B. No-op on one process.
        cand, v, off = gather_candidates(cand, v, n_local=B)  # C = W*B + M
        Bg = len(cand) - self.num_uniform  # W*B, the global batch (logQ: log(W*B p_j))
        scores = q @ v.T  # (B, C)
        target = off + torch.arange(B, device=q.device)  # (B,)
        hits = None
        if self.mask_duplicates or self.mask_known_positives:
            hits = accidental_hits(users, items, cand, self.known if self.mask_known_positives else None,
                                   duplicates=self.mask_duplicates)  # (B, C)
        return scores, target, self.candidate_log_q(cand, Bg), hits

    def candidates(self, q, users, items, item_tower):
        """``batch_scores`` in the layout of ``softmax_loss``: (pos (B,), neg (B, C),
        log_q_pos, log_q_neg, hits (B, C), own (B, C)). ``own`` marks each row's positive among
        the candidates (always masked: it is column 0 already) and is left out of ``hits``."""
        scores, target, lq, hits = self.batch_scores(q, users, items, item_tower)
        rows = torch.arange(len(items), device=q.device)
        own = torch.zeros_like(scores, dtype=torch.bool)
        own[rows, target] = True  # the positive itself
        hits = torch.zeros_like(own) if hits is None else hits & ~own
        return scores[rows, target], scores, (None if lq is None else lq[target]), lq, hits, own

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        if self.hardest is None:  # the positives stay in their columns (no (B, 1 + C) copy)
            scores, target, lq, hits = self.batch_scores(q, batch["user"], batch["item"], item_tower)
            out = self.softmax_loss_at(scores, target, lq, hits)
        else:  # keep_hardest needs the positive apart from the negatives
            pos, neg, lq_pos, lq_neg, hits, own = self.candidates(q, batch["user"], batch["item"], item_tower)
            out = self.softmax_loss(pos, neg, lq_pos, lq_neg, hits, hardest=self.hardest, drop=own)
        if self.streaming is not None and self.training:
            self.streaming.update(batch["item"])
        return out
