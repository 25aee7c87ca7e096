"""Tests for recsys.model.corrections: each logit transform on a hand-worked example."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys.model.corrections import corrected_logits, keep_hardest, mask, scale, subtract_log_q


def test_scale_divides_by_temperature():
    # [2, -1] / 0.5 = [4, -2]
    out = scale(torch.tensor([2.0, -1.0]), 0.5)
    torch.testing.assert_close(out, torch.tensor([4.0, -2.0]))


def test_subtract_log_q_lowers_the_popular_candidate_by_log_M_p():
    # Two candidates with the same raw logit 1.0; M = 4 draws from p = (0.75, 0.25).
    # Expected counts M p = (3, 1), so log q = (log 3, 0):
    #   popular  a: 1 - log 3 = -0.0986   (lowered by log 3)
    #   rare     b: 1 - log 1 =  1.0      (unchanged)
    M, p = 4, torch.tensor([0.75, 0.25])
    logits = torch.tensor([[1.0, 1.0]])
    out = subtract_log_q(logits, torch.log(M * p))
    torch.testing.assert_close(out, torch.tensor([[1.0 - math.log(3.0), 1.0]]))
    assert out[0, 0] < logits[0, 0]  # the sign: popular items are pushed *down*
    assert out[0, 0] < out[0, 1]  # ... below the rare one with the same raw score


def test_mask_sets_minus_inf_and_removes_mass():
    # Row [pos 0, neg 0, neg 0]: CE = log 3. Masking one negative -> CE = log 2.
    logits = torch.zeros(1, 3)
    hits = torch.tensor([[False, False, True]])
    out = mask(logits, hits)
    assert torch.isneginf(out[0, 2]) and torch.isfinite(out[0, :2]).all()
    target = torch.zeros(1, dtype=torch.long)
    assert math.isclose(F.cross_entropy(logits, target).item(), math.log(3), rel_tol=1e-6)
    assert math.isclose(F.cross_entropy(out, target).item(), math.log(2), rel_tol=1e-6)


def test_masked_entry_gets_no_gradient():
    logits = torch.randn(2, 4, requires_grad=True)
    hits = torch.tensor([[False, True, False, False], [False, False, False, True]])
    F.cross_entropy(mask(logits, hits), torch.zeros(2, dtype=torch.long)).backward()
    assert (logits.grad[hits] == 0).all()
    assert (logits.grad[~hits] != 0).all()


def test_keep_hardest_keeps_the_k_largest():
    out = keep_hardest(torch.tensor([[0.1, 3.0, -1.0, 2.0]]), 2)
    torch.testing.assert_close(out, torch.tensor([[3.0, 2.0]]))
    assert keep_hardest(torch.zeros(1, 2), 5).shape == (1, 2)  # k > C keeps all


def test_corrected_logits_order_on_a_hand_worked_example():
    # pos score 2, neg scores [1, 1, 3], T = 0.5, log q_pos = log 2, log q_neg = [log 2, 0, 0],
    # the third negative is an accidental hit.
    #   1. scale:   pos 4,          neg [2, 2, 6]
    #   2. log q:   pos 4 - log 2,  neg [2 - log 2, 2, 6]     (log q is NOT divided by T)
    #   3. mask:                    neg [2 - log 2, 2, -inf]
    #   4. hardest 2:               neg [2, 2 - log 2]
    pos, neg = torch.tensor([2.0]), torch.tensor([[1.0, 1.0, 3.0]])
    lq_pos = torch.tensor([math.log(2)])
    lq_neg = torch.tensor([math.log(2), 0.0, 0.0])
    hits = torch.tensor([[False, False, True]])
    out = corrected_logits(pos, neg, 0.5, lq_pos, lq_neg, hits, hardest=2)
    torch.testing.assert_close(out, torch.tensor([[4 - math.log(2), 2.0, 2 - math.log(2)]]))
    # without the hardest step the masked column stays, at -inf
    out = corrected_logits(pos, neg, 0.5, lq_pos, lq_neg, hits)
    assert out.shape == (1, 4) and torch.isneginf(out[0, 3])


def test_corrected_logits_per_row_log_q():
    # log_q_neg may be (B, C): row-specific corrections (e.g. hard negatives get 0).
    pos, neg = torch.zeros(2), torch.zeros(2, 2)
    lq = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = corrected_logits(pos, neg, log_q_neg=lq)
    torch.testing.assert_close(out, torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -2.0]]))


def test_identity_without_corrections():
    pos, neg = torch.randn(3), torch.randn(3, 5)
    out = corrected_logits(pos, neg)
    torch.testing.assert_close(out, torch.cat([pos[:, None], neg], 1))


def test_log_frequency_is_add_one_smoothed():
    import numpy as np

    from recsys.model.corrections import log_frequency

    got = log_frequency(np.array([3, 0, 1]))
    np.testing.assert_allclose(got, np.log(np.array([4.0, 1.0, 2.0]) / 7.0))
    assert np.isfinite(got).all()  # an unseen item keeps a finite log p


def test_mask_entries_equals_mask_of_the_same_pairs_and_changes_the_logsumexp():
    from recsys.model.corrections import mask_entries_

    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    rows, cols = torch.tensor([0, 1]), torch.tensor([2, 0])
    dense = torch.zeros(2, 3, dtype=torch.bool)
    dense[rows, cols] = True
    out = mask_entries_(logits.clone(), rows, cols)
    assert torch.equal(out, mask(logits, dense))
    assert (torch.logsumexp(out, 1) < torch.logsumexp(logits, 1)).all()  # the masked mass is gone
