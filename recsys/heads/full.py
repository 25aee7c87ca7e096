"""Full softmax (multi-class): one positive per example, softmax over all N items."""

from __future__ import annotations

import torch

from recsys.heads.base import Head, HeadOutput
from recsys.heads.chunked import chunked_logsumexp


class FullSoftmax(Head):
    """Cross-entropy over the whole catalogue: loss = logsumexp_j(s_j / T) - s_+ / T.

    The exact objective the sampled heads estimate (Covington et al. 2016 train YouTube's
    candidate generator with its sampled form). Costs O(B N D) per step, so it is the
    reference at small N and the slow path at large N. The (B, N) logits are reduced
    ``chunk`` columns at a time with exact gradients (``recsys.heads.chunked``).

    Args:
        temperature: T (logits divided by T); ``learn_temperature`` makes it trainable.
        chunk: items per block of the log-sum-exp.

    Example:
        >>> head = FullSoftmax(temperature=0.5)  # in YAML: class_path: recsys.heads.FullSoftmax
    """

    def __init__(self, temperature: float = 1.0, learn_temperature: bool = False, chunk: int = 8192):
        super().__init__(temperature, learn_temperature)
        self.chunk = chunk

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        T = self.temperature()
        v_all = item_tower.all()  # (N, D)
        v_pos = item_tower(batch["item"])  # (B, D)
        pos = (q * v_pos).sum(-1)  # (B,)
        lse = chunked_logsumexp(q / T, v_all, self.chunk)  # (B,)
        loss = (lse - pos / T).mean()
        with torch.no_grad():
            logs = {"temperature": T.detach(), "pos_logit": pos.mean(),
                    "neg_logit": (q @ v_all.mean(0)).mean(),
                    "accidental_hit_rate": torch.tensor(0.0),
                    "effective_negatives": torch.tensor(float(v_all.shape[0] - 1))}
        return HeadOutput(loss, logs)
