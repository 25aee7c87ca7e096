"""Pure logit transforms, applied in one documented order by ``corrected_logits``:

    1. scale by 1 / temperature
    2. subtract log q (sampling-bias correction, "logQ")
    3. mask accidental hits / known positives (set to -inf)
    4. keep the hardest k negatives (optional)

Each is a tiny function from logits to logits (the shape TensorFlow Recommenders uses) so
each can be tested on a hand-worked example. Column 0 of the result is the positive.

Every head goes through this path: the sampled, in-batch and hard-negative heads call
``corrected_logits``; the full-catalogue heads (``FullSoftmax``, ``MultiLabelSigmoid``), whose
(B, N) logits are never held whole, apply step 1 to the query (q / T, the same logits) and
step 3 with ``mask_entries_`` chunk by chunk (``recsys.model.chunked``); they sample nothing, so step
2 does not arise, and they keep every negative. The sampled sigmoid masks with ``mask`` too.
"""

from __future__ import annotations

import numpy as np
import torch

NEG_INF = float("-inf")


def log_frequency(counts: np.ndarray) -> np.ndarray:
    """(N,) float64 log p_j of add-one smoothed item counts (N,): log((c_j + 1) / sum(c + 1)).

    The in-batch head's static log Q and the retrieval-time popularity prior
    (``TwoTowerModule(prior_grid=...)``); the +1 keeps unseen items finite.
    """
    c = np.asarray(counts, dtype=np.float64) + 1.0
    return np.log(c / c.sum())


def scale(logits: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """logits / temperature."""
    return logits / temperature


def subtract_log_q(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """logits - log q: the sampled-softmax correction (Bengio & Senecal 2008; Yi et al. 2019).

    A candidate that the sampler (or the batch) brings in often gets its logit lowered by
    the log of its expected count, so the sampled softmax estimates the full one.
    """
    return logits - log_q


def mask(logits: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """Set masked entries to -inf so they carry no probability mass and no gradient."""
    return logits.masked_fill(hits, NEG_INF)


def mask_entries_(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``mask`` for entries given as (rows, cols) index pairs, in place: logits[rows, cols] =
    -inf. The form the chunked full-catalogue heads use, whose masks are a few entries per row
    of a (B, chunk) block (a dense bool mask would cost a (B, chunk) allocation and copy)."""
    logits[rows, cols] = NEG_INF
    return logits


def keep_hardest(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest negatives per row (B, C) -> (B, k)."""
    return logits.topk(min(k, logits.shape[1]), dim=1).values


def corrected_logits(
    pos: torch.Tensor,  # (B,) positive scores q . v+
    neg: torch.Tensor,  # (B, C) negative scores
    temperature: torch.Tensor | float = 1.0,
    log_q_pos: torch.Tensor | None = None,  # (B,)
    log_q_neg: torch.Tensor | None = None,  # (C,) or (B, C)
    hits: torch.Tensor | None = None,  # (B, C) bool, True = remove
    hardest: int | None = None,
) -> torch.Tensor:
    """(B, 1 + C') logits with the positive in column 0, corrections in the fixed order."""
    pos, neg = scale(pos, temperature), scale(neg, temperature)
    if log_q_neg is not None:
        neg = subtract_log_q(neg, log_q_neg)
    if log_q_pos is not None:
        pos = subtract_log_q(pos, log_q_pos)
    if hits is not None:
        neg = mask(neg, hits)
    if hardest is not None:
        neg = keep_hardest(neg, hardest)
    return torch.cat([pos[:, None], neg], dim=1)
