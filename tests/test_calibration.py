"""Calibration metrics and the heads' probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.errors import DataError
from recsys.eval.metrics import calibration_metrics
from recsys.model.heads import FullSoftmax, InBatchSoftmax, MultiLabelSigmoid


def _draw(seed=0, shape=(400, 60)):
    rng = np.random.default_rng(seed)
    p = rng.random(shape) ** 6  # mostly tiny probabilities, like labels
    y = sp.csr_matrix((rng.random(shape) < p).astype(np.float32))
    return p, y


def test_calibrated_probabilities_have_a_small_ece_and_scaled_ones_a_large_one():
    p, y = _draw()
    good, bad = calibration_metrics(p, y), calibration_metrics(np.clip(3 * p, 0, 1), y)
    assert good["ece"] < 0.01 < bad["ece"]
    assert good["brier"] < bad["brier"]
    assert good["expected_labels"] == pytest.approx(p.sum(1).mean())
    assert good["true_labels"] == pytest.approx(y.sum(1).mean())


def test_ece_is_the_bin_weighted_gap_on_a_hand_example():
    # two pairs in the top bin: p 0.9 and 0.5, one hit -> |1 - 1.4| / 2 = 0.2
    m = calibration_metrics(np.array([[0.9, 0.5]]), sp.csr_matrix(np.array([[1.0, 0.0]])), n_bins=1)
    assert m["ece"] == pytest.approx(0.2) and m["brier"] == pytest.approx((0.01 + 0.25) / 2)


def test_calibration_refuses_scores_and_mismatched_shapes():
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        calibration_metrics(np.array([[2.0]]), sp.csr_matrix(np.ones((1, 1))))
    with pytest.raises(DataError, match="one probability per"):
        calibration_metrics(np.zeros((2, 3)), sp.csr_matrix(np.ones((2, 2))))


def test_softmax_heads_spread_one_unit_and_the_sigmoid_uses_its_bias_and_temperature():
    s = torch.randn(5, 7)
    for head in (FullSoftmax(temperature=0.5), InBatchSoftmax(temperature=0.5)):
        p = head.probabilities(s)
        torch.testing.assert_close(p.sum(1), torch.ones(5))
        torch.testing.assert_close(p, torch.softmax(s / 0.5, dim=1))
    sig = MultiLabelSigmoid(temperature=0.5)
    with torch.no_grad():
        sig.bias.fill_(-2.0)
    torch.testing.assert_close(sig.probabilities(s), torch.sigmoid(s / 0.5 - 2.0))
    assert not torch.allclose(sig.probabilities(s), MultiLabelSigmoid(temperature=0.5).probabilities(s))


def test_one_vs_rest_probabilities_are_calibrated_and_ease_defines_none(shared_root):
    from recsys.data import load_dataset
    from recsys.eval.baselines import EASE, OneVsRest
    from recsys.eval.evaluate import calibration
    from tests.conftest import need

    need("bibtex", "xc_train.txt.gz")
    d = load_dataset("bibtex", shared_root)
    ovr = OneVsRest(C=4.0).fit(d)
    c = calibration(ovr, d, "test")
    assert 0 < c["ece"] < 0.05 and c["true_labels"] == pytest.approx(
        d.test[d.eval_users("test")].sum(1).mean())
    assert calibration(EASE(lambda_=50.0).fit(d), d, "test") is None  # EASE scores are not probabilities
