"""The grid search over additive item biases (recsys.eval.prior_grid) against one exact
search per weight, and evaluate_grid against evaluate_embeddings weight by weight."""

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import DataError
from recsys.eval.evaluate import evaluate_embeddings, evaluate_grid
from recsys.eval.prior_grid import topk_bias_grid
from recsys.retrieval.exact import ExactRetriever


def _case(Q=300, N=2000, D=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    xq = rng.standard_normal((Q, D)).astype(np.float32)
    xq[:, -1] = 1.0  # the constant coordinate that multiplies the item bias
    xb = rng.standard_normal((N, D)).astype(np.float32)
    bias = (spread * np.log(rng.pareto(1.0, N) + 1e-3)).astype(np.float32)  # popularity-like
    ex = sp.random(Q, N, density=0.05, format="csr", random_state=seed, dtype=np.float32)
    ex.data[:] = 1.0
    return xq, xb, bias, ex


def _reference(xq, xb, bias, w, k, ex):
    xw = xb.copy()
    xw[:, -1] += w * bias  # the served embeddings: the bias in the coordinate of the query's 1
    return ExactRetriever().build(xw).search(xq, k, exclude=ex)


def _assert_same(got, want):
    (D, I), (D0, I0) = got, want
    assert I.shape == I0.shape
    # float rounding (s + w c against x . (v + w c e)) may swap near-equal scores: compare the
    # ranked scores closely and the ids wherever the scores are not within rounding of a neighbour
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
    gap = np.abs(np.diff(D0, axis=1, prepend=np.inf))
    clear = (gap > 1e-4) & (np.abs(np.diff(D0, axis=1, append=-np.inf)) > 1e-4)
    np.testing.assert_array_equal(I[clear], I0[clear])
    assert (I == I0).mean() > 0.999


@pytest.mark.parametrize("spread", [0.1, 1.0, 10.0])  # the bias small, comparable, dominant
def test_grid_equals_one_exact_search_per_weight(spread):
    xq, xb, bias, ex = _case(spread=spread)
    weights = [0.0, 0.1, 0.3, 1.0, -0.5]
    got = topk_bias_grid(xq, xb, bias, weights, 20, ex)
    assert len(got) == len(weights)
    for w, g in zip(weights, got):
        _assert_same(g, _reference(xq, xb, bias, w, 20, ex))
        assert not np.isin(g[1], -1).any()


def test_grid_prunes_and_whole_rows_agree():
    """Small blocks over many columns prune; a block wider than the catalogue cannot:
    both give the same top-k."""
    xq, xb, bias, ex = _case()
    pruned = topk_bias_grid(xq, xb, bias, [0.0, 0.5], 10, ex, block=8)
    whole = topk_bias_grid(xq, xb, bias, [0.0, 0.5], 10, ex, block=4096)
    for a, b in zip(pruned, whole):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])


def test_grid_breaks_ties_by_the_smaller_id():
    """Constant scores and repeated biases: every order is a tie, resolved as the exact search."""
    Q, N = 40, 600
    xq = np.zeros((Q, 4), np.float32)
    xq[:, -1] = 1.0
    xb = np.zeros((N, 4), np.float32)
    bias = np.repeat(np.arange(6, dtype=np.float32), N // 6)[::-1].copy()  # 100 items per value
    ex = sp.csr_matrix((np.ones(Q), (np.arange(Q), np.arange(Q) * 7)), shape=(Q, N))
    for w, g in zip([0.0, 1.0], topk_bias_grid(xq, xb, bias, [0.0, 1.0], 15, ex)):
        D0, I0 = _reference(xq, xb, bias, w, 15, ex)
        np.testing.assert_array_equal(g[1], I0)
        np.testing.assert_array_equal(g[0], D0)


def test_grid_pads_rows_with_too_few_items():
    xq, xb, bias, _ = _case(Q=5, N=30)
    ex = sp.csr_matrix((np.ones(25), (np.zeros(25, int), np.arange(25))), shape=(5, 30))  # row 0: 5 left
    for w, (D, I) in zip([0.0, 2.0], topk_bias_grid(xq, xb, bias, [0.0, 2.0], 8, ex)):
        D0, I0 = _reference(xq, xb, bias, w, 8, ex)
        np.testing.assert_array_equal(I, I0)
        assert (I[0, 5:] == -1).all() and np.isneginf(D[0, 5:]).all()
    D, I = topk_bias_grid(xq, xb, bias, [0.0], 40)[0]  # k > N: padded beyond the catalogue
    assert I.shape == (5, 40) and (I[:, 30:] == -1).all() and (np.sort(I[:, :30], 1) == np.arange(30)).all()


def test_grid_rejects_bad_input():
    xq, xb, bias, _ = _case(Q=4, N=50)
    with pytest.raises(DataError, match="one bias per item"):
        topk_bias_grid(xq, xb, bias[:-1], [0.0], 5)
    with pytest.raises(DataError, match="at least one weight"):
        topk_bias_grid(xq, xb, bias, [], 5)
    with pytest.raises(DataError, match="finite"):
        topk_bias_grid(xq, xb, np.where(np.arange(50) == 3, np.nan, bias), [0.0], 5)


def test_evaluate_grid_chooses_the_weight_evaluate_embeddings_would(tiny_dm):
    tiny_dm.setup("fit")
    data = tiny_dm.data
    users = data.eval_users("valid")
    rng = np.random.default_rng(1)
    N = data.n_items
    xq = rng.standard_normal((len(users), 9)).astype(np.float32)
    xq[:, -1] = 1.0
    xb = rng.standard_normal((N, 9)).astype(np.float32)
    bias = np.log(data.item_counts() + 1.0).astype(np.float32)  # popular items lifted
    weights = [0.0, 0.5, 1.0, 3.0]
    best, res, scores = evaluate_grid(xq, users, xb, bias, weights, data, "valid", (5, 10))
    loop = []
    for w in weights:
        xw = xb.copy()
        xw[:, -1] += w * bias
        loop.append(evaluate_embeddings(xq, users, xw, data, "valid", (5, 10)))
    np.testing.assert_allclose(scores, [r.metrics["ndcg@5"] for r in loop], atol=1e-12)
    assert len(set(scores)) > 1  # the weight changes the ranking
    assert best == int(np.argmax([r.metrics["ndcg@5"] for r in loop]))
    for key in ("ndcg@10", "recall@5", "coverage@10", "popularity@10"):
        assert res.metrics[key] == pytest.approx(loop[best].metrics[key], abs=1e-12)
    np.testing.assert_array_equal(res.I, loop[best].I)
