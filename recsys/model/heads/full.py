"""Full softmax (multi-class): one positive per example, softmax over all N items."""

from __future__ import annotations

import torch

from recsys.model.chunked import chunked_logsumexp
from recsys.model.heads.base import Head, HeadOutput, head_logs


class FullSoftmax(Head):
    """Cross-entropy over the whole catalogue: loss = logsumexp_j(s_j / T) - s_+ / T.

    The exact objective the sampled heads estimate (Covington et al. 2016 train YouTube's
    candidate generator with its sampled form). Costs O(B N D) per step, so it is the
    reference at small N and the slow path at large N. The (B, N) logits are reduced
    ``chunk`` columns at a time with exact gradients (``recsys.model.chunked``).

    With ``mask_known_positives`` the user's other train items leave the denominator:
    loss = logsumexp_{j not in I_u \\ {+}}(s_j / T) - s_+ / T, so the target competes only
    with items the user has not interacted with, as in the evaluation, where train items
    are excluded from the ranking (docs/protocol.md). Without it, every example also
    pushes down the user's other positives, which are the items most similar to the target.

    Args:
        temperature: T (logits divided by T); ``learn_temperature`` makes it trainable.
        chunk: items per block of the log-sum-exp.
        mask_known_positives: drop the user's other train items from the softmax.

    Example:
        >>> head = FullSoftmax(temperature=0.5)  # in YAML: class_path: recsys.model.heads.FullSoftmax
    """

    def __init__(self, temperature: float = 1.0, learn_temperature: bool = False, chunk: int = 8192,
                 mask_known_positives: bool = False):
        super().__init__(temperature, learn_temperature)
        self.chunk, self.mask_known_positives = chunk, mask_known_positives

    def known_mask(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the batch users' train items other than each row's positive."""
        rows, cols = self.known.pairs(users)  # (P,), (P,)
        keep = cols != items[rows]  # the positive itself stays in the softmax
        return rows[keep], cols[keep]

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        T = self.temperature()
        v_all = item_tower.forward_all()  # (N, D)
        v_pos = item_tower(batch["item"])  # (B, D)
        pos = (q * v_pos).sum(-1)  # (B,)
        mask = None
        if self.mask_known_positives and self.known is not None:
            mask = self.known_mask(batch["user"], batch["item"])  # (P,), (P,)
        lse = chunked_logsumexp(q / T, v_all, self.chunk, mask)  # (B,)
        loss = (lse - pos / T).mean()
        with torch.no_grad():
            n_masked = 0.0 if mask is None else len(mask[0]) / len(pos)  # masked per example
            logs = head_logs(T, pos.mean(), (q @ v_all.mean(0)).mean(), n_masked / max(v_all.shape[0] - 1, 1),
                             float(v_all.shape[0] - 1 - n_masked))
        return HeadOutput(loss, logs)
