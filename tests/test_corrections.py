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


def test_neg_inf_bias_and_mask_equal_masked_fill_in_every_dtype():
    # float32 on CPU takes the bit-pattern path, float64 the masked_fill_ one: both must give
    # -inf exactly at the hits and +0 elsewhere, and mask() the values of masked_fill
    from recsys.model.corrections import neg_inf_bias

    g = torch.Generator().manual_seed(0)
    hits = torch.rand(5, 7, generator=g) < 0.3
    for dtype in (torch.float32, torch.float64):
        b = neg_inf_bias(hits, dtype)
        assert b.dtype == dtype and torch.isneginf(b[hits]).all() and (b[~hits] == 0).all()
        x = torch.randn(5, 7, generator=g, dtype=dtype)
        assert torch.equal(mask(x, hits), x.masked_fill(hits, float("-inf")))
    # a non-contiguous mask (a transposed view) reads the same entries
    assert torch.equal(neg_inf_bias(hits.T.contiguous().T), neg_inf_bias(hits))


def test_mask_spares_the_given_column_of_each_row():
    hits = torch.tensor([[True, True, False], [True, False, True]])
    out = mask(torch.zeros(2, 3), hits, spare=torch.tensor([0, 2]))
    assert out[0].tolist() == [0.0, float("-inf"), 0.0]  # column 0 of row 0 spared
    assert out[1].tolist() == [float("-inf"), 0.0, 0.0]  # column 2 of row 1 spared
    assert torch.isneginf(mask(torch.zeros(2, 3), hits)).sum() == 4  # without spare: every hit


def test_corrected_logits_at_gives_the_loss_and_gradients_of_the_positive_first_layout():
    # in-batch layout: row b's positive at column b of a (B, B) score block, with log q per
    # column and accidental hits (including some on the diagonal, which must stay unmasked)
    from recsys.model.corrections import corrected_logits_at

    g = torch.Generator().manual_seed(1)
    B = 6
    scores = torch.randn(B, B, generator=g, dtype=torch.float64, requires_grad=True)
    lq = torch.randn(B, generator=g, dtype=torch.float64)
    hits = torch.rand(B, B, generator=g) < 0.3
    hits[0, 0] = hits[3, 3] = True
    target = torch.arange(B)
    T = 0.3
    a = F.cross_entropy(corrected_logits_at(scores, target, T, lq, hits), target)
    ga, = torch.autograd.grad(a, scores)
    own = torch.eye(B, dtype=torch.bool)
    b = F.cross_entropy(corrected_logits(scores.diagonal(), scores, T, lq, lq, (hits & ~own) | own),
                        torch.zeros(B, dtype=torch.long))
    gb, = torch.autograd.grad(b, scores)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
    # the masks matter: without them the loss differs, and the spared diagonal carries the positive
    assert not torch.isclose(a, F.cross_entropy(corrected_logits_at(scores, target, T, lq), target))
    assert torch.isfinite(corrected_logits_at(scores, target, T, lq, hits).diagonal()).all()
