"""Tests for recsys.eval.metrics: hand-worked examples, a loop reference, sklearn's NDCG."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import ConfigError, DataError
from recsys.eval.metrics import distinct_groups, hits_matrix, per_user_metrics, ranking_metrics
from recsys.numeric import gini
from recsys.reporting import metric_table

# --------------------------------------------------------------------------------------
# Worked example: N = 6 items, 4 queries, 4 results each.
#
#   q  I               held-out     notes
#   0  [0, 1, 2, 3]    {1, 3, 5}    n = 3; hits at ranks 1 and 3
#   1  [4, -1, -1, -1] {4}          n = 1 < k; one result then -1 pads
#   2  [5, 4, 2, 3]    {}           no held-out item: excluded from the means
#   3  [2, 0, 5, -1]   {0}          n = 1; hit at rank 1
#
# The pad of query 1 has flat key 1 * 6 + (-1) = 5 = 0 * 6 + 5, i.e. item 5 of query 0,
# which *is* held out for query 0: a key lookup without the I >= 0 mask would count it.
#
# With L2 = 1 / log2(3) = 0.6309298 (the discount of rank 1; rank 0 -> 1, rank 2 -> 0.5):
#   q0 @3: hits [F, T, F]   recall 1/3  precision 1/3  mrr 1/2  hit 1
#          DCG = L2, IDCG over min(3, 3) = 3 items = 1 + L2 + 0.5  -> NDCG = 0.2960819
#   q0 @2: hits [F, T]      recall 1/3  precision 1/2  mrr 1/2
#          DCG = L2, IDCG = 1 + L2                                  -> NDCG = 0.3868528
#   q1 @k: hit at rank 0    recall 1    precision 1/k  mrr 1; IDCG over min(k, 1) = 1 item
#          -> NDCG = 1 (not 1 / (1 + L2 + 0.5) as an IDCG over k items would give)
#   q3 @k: hit at rank 1    recall 1    precision 1/k  mrr 1/2; NDCG = L2 / 1 = L2
# Means @3 over q0, q1, q3: recall (1/3 + 1 + 1) / 3 = 7/9; NDCG (0.2960819 + 1 + L2) / 3;
#   MRR (1/2 + 1 + 1/2) / 3 = 2/3; hit 1; precision 1/3.
# Catalogue @3 over all four queries, top-3 lists [0 1 2] [4] [5 4 2] [2 0 5]:
#   exposure per item 0..5 = [2, 1, 3, 0, 2, 2] (total 10); coverage = 5 / 6
#   Gini: sorted [0 1 2 2 2 3], weights 2i - n - 1 = [-5 -3 -1 1 3 5]
#         -> (0 - 3 - 2 + 2 + 6 + 15) / (6 * 10) = 18 / 60 = 0.3
#   item_counts = [10, 5, 1, 0, 3, 2]: popularity = (10+5+1 + 3 + 2+3+1 + 1+10+2) / 10 = 3.8
#   percentiles (rank - 1) / 5 = [1.0, 0.8, 0.2, 0.0, 0.6, 0.4]
#         -> (1 + .8 + .2 + .6 + .4 + .6 + .2 + .2 + 1 + .4) / 10 = 0.54
# --------------------------------------------------------------------------------------
L2 = 1 / math.log2(3)
I_EX = np.array([[0, 1, 2, 3], [4, -1, -1, -1], [5, 4, 2, 3], [2, 0, 5, -1]])
TRUTH_EX = sp.csr_matrix(
    (np.ones(5), ([0, 0, 0, 1, 3], [1, 3, 5, 4, 0])), shape=(4, 6)
)
COUNTS_EX = np.array([10, 5, 1, 0, 3, 2])


def test_hits_matrix_worked_example():
    expected = np.array(
        [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool
    )
    np.testing.assert_array_equal(hits_matrix(I_EX, TRUTH_EX), expected)


def test_per_user_worked_example():
    m = per_user_metrics(I_EX, TRUTH_EX, ks=(2, 3))
    np.testing.assert_array_equal(m["users"], [0, 1, 3])  # q2 excluded
    np.testing.assert_allclose(m["recall@3"], [1 / 3, 1, 1])
    np.testing.assert_allclose(m["precision@3"], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(m["precision@2"], [1 / 2, 1 / 2, 1 / 2])
    np.testing.assert_allclose(m["mrr@3"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(m["hit@3"], [1, 1, 1])
    np.testing.assert_allclose(m["ndcg@3"], [L2 / (1 + L2 + 0.5), 1, L2])
    np.testing.assert_allclose(m["ndcg@2"], [L2 / (1 + L2), 1, L2])
    np.testing.assert_allclose(m["ndcg@3"][0], 0.2960819, atol=1e-7)


def test_evaluate_worked_example():
    r = ranking_metrics(I_EX, TRUTH_EX, ks=(3,), item_counts=COUNTS_EX)
    assert r["recall@3"] == pytest.approx(7 / 9)
    assert r["ndcg@3"] == pytest.approx((L2 / (1 + L2 + 0.5) + 1 + L2) / 3)
    assert r["mrr@3"] == pytest.approx(2 / 3)
    assert r["hit@3"] == pytest.approx(1.0)
    assert r["precision@3"] == pytest.approx(1 / 3)
    assert r["coverage@3"] == pytest.approx(5 / 6)
    assert r["gini@3"] == pytest.approx(0.3)
    assert r["popularity@3"] == pytest.approx(3.8)
    assert r["popularity_pct@3"] == pytest.approx(0.54)
    assert "popularity@3" not in ranking_metrics(I_EX, TRUTH_EX, ks=(3,))


def test_user_without_heldout_is_excluded_not_zero():
    # Adding users with no held-out item must not change any ranking mean.
    base = ranking_metrics(I_EX, TRUTH_EX, ks=(3,))
    I2 = np.vstack([I_EX, [[0, 1, 2, 3]] * 5])
    truth2 = sp.vstack([TRUTH_EX, sp.csr_matrix((5, 6))]).tocsr()
    more = ranking_metrics(I2, truth2, ks=(3,))
    for name in ("recall@3", "ndcg@3", "mrr@3", "hit@3", "precision@3"):
        assert more[name] == pytest.approx(base[name])


def test_explicit_zero_is_not_relevant():
    truth = sp.csr_matrix((np.array([0.0, 1.0]), ([0, 0], [0, 1])), shape=(1, 3))
    assert truth.nnz == 2  # the stored zero is kept
    np.testing.assert_array_equal(hits_matrix(np.array([[0, 1]]), truth), [[False, True]])
    assert per_user_metrics(np.array([[0, 1]]), truth, ks=(2,))["recall@2"][0] == 1.0


def _reference(I, truth, k):
    """Plain per-user loop over Python sets: the definitions read literally."""
    dense = truth.toarray() != 0
    out = {m: [] for m in ("recall", "ndcg", "mrr", "hit", "precision")}
    for q in range(I.shape[0]):
        rel = set(np.flatnonzero(dense[q]).tolist())
        if not rel:
            continue
        h = [int(i) in rel for i in I[q, :k]]
        dcg = sum(1 / math.log2(i + 2) for i, x in enumerate(h) if x)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        out["recall"].append(sum(h) / len(rel))
        out["ndcg"].append(dcg / idcg)
        out["mrr"].append(1 / (h.index(True) + 1) if any(h) else 0.0)
        out["hit"].append(float(any(h)))
        out["precision"].append(sum(h) / k)
    return {m: np.array(v) for m, v in out.items()}


def _random_case(seed, Q=60, N=40, K=12):
    rng = np.random.default_rng(seed)
    scores = rng.random((Q, N))  # continuous: no ties
    I = np.argsort(-scores, axis=1)[:, :K]
    I[rng.random((Q, K)) < 0.05] = -1  # sprinkle pads (ids stay distinct)
    n_rel = rng.integers(0, 20, size=Q)  # some rows empty, some with more than K items
    dense = np.zeros((Q, N))
    for q, n in enumerate(n_rel):
        dense[q, rng.choice(N, size=n, replace=False)] = 1
    return I, sp.csr_matrix(dense), scores, dense


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(seed):
    I, truth, _, _ = _random_case(seed)
    got = per_user_metrics(I, truth, ks=(5, 12))
    for k in (5, 12):
        ref = _reference(I, truth, k)
        for m, v in ref.items():
            np.testing.assert_allclose(got[f"{m}@{k}"], v, err_msg=f"{m}@{k}")


def test_ndcg_matches_sklearn():
    """sklearn.metrics.ndcg_score agrees with binary relevance, with two caveats.

    sklearn's ideal DCG@k sorts the true gains and keeps the top k, which for binary gains
    is sum over min(k, n) discounts: the same as ours, also when n > k (checked here:
    rows have up to 19 relevant items, k = 5 or 10). The differences are elsewhere:
    (1) sklearn scores a row without relevant items as 0 and keeps it in the mean, while
    we drop it; (2) sklearn averages gains over tied scores, so the scores here are
    continuous. With the same rows and no ties the two agree to float precision.
    """
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    _, _, scores, dense = _random_case(7)
    I = np.argsort(-scores, axis=1)[:, :10]  # no pads: sklearn ranks the whole row
    truth = sp.csr_matrix(dense)
    for k in (5, 10):
        ours = per_user_metrics(I, truth, ks=(k,))
        users = ours["users"]
        theirs = [
            sklearn_metrics.ndcg_score(dense[[u]], scores[[u]], k=k) for u in users
        ]
        np.testing.assert_allclose(ours[f"ndcg@{k}"], theirs, rtol=1e-12)
        # caveat (1): sklearn's mean over all rows counts the empty rows as 0
        empty = dense.sum(axis=1) == 0
        assert empty.any()
        all_rows = sklearn_metrics.ndcg_score(dense, scores, k=k)
        assert all_rows == pytest.approx(ours[f"ndcg@{k}"].sum() / dense.shape[0])


def test_gini_extremes():
    assert gini(np.full(100, 7)) == pytest.approx(0.0)
    one = np.zeros(1000)
    one[3] = 50
    assert gini(one) == pytest.approx(999 / 1000)  # (n - 1) / n, near 1
    assert math.isnan(gini(np.zeros(5)))
    # through evaluate: every query recommends item 0 only -> all exposure on one item
    N = 1000
    I = np.zeros((20, 1), dtype=np.int64)
    truth = sp.csr_matrix((np.ones(20), (np.arange(20), np.arange(20))), shape=(20, N))
    r = ranking_metrics(I, truth, ks=(1,))
    assert r["gini@1"] == pytest.approx((N - 1) / N)
    assert r["coverage@1"] == pytest.approx(1 / N)
    # round robin over all items: uniform exposure -> 0
    I = np.arange(N).reshape(-1, 1)
    truth = sp.csr_matrix((np.ones(N), (np.arange(N), np.arange(N))), shape=(N, N))
    r = ranking_metrics(I, truth, ks=(1,))
    assert r["gini@1"] == pytest.approx(0.0)
    assert r["coverage@1"] == pytest.approx(1.0)
    assert r["recall@1"] == pytest.approx(1.0)


def test_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"k=5 .*Fix:"):
        ranking_metrics(I_EX, TRUTH_EX, ks=(5,))
    with pytest.raises(DataError, match="Fix:"):  # repeated id would double-count a hit
        per_user_metrics(np.array([[1, 1, 2]]), TRUTH_EX[:1], ks=(3,))
    with pytest.raises(DataError, match="Fix:"):  # id >= N
        hits_matrix(np.array([[6]]), TRUTH_EX[:1])
    with pytest.raises(DataError, match="Fix:"):  # rows differ
        hits_matrix(I_EX[:2], TRUTH_EX)
    with pytest.raises(DataError, match="Fix:"):  # nobody has a held-out item
        ranking_metrics(I_EX[2:3], TRUTH_EX[2:3], ks=(3,))
    with pytest.raises(DataError, match="Fix:"):
        ranking_metrics(I_EX, TRUTH_EX, ks=(3,), item_counts=np.ones(5))


def test_metric_table():
    table = metric_table(
        {"pop": {"recall@10": 0.07, "ndcg@10": 0.1012}, "ease": {"recall@10": 0.21449}},
        ["recall@10", "ndcg@10"],
    )
    assert table.splitlines() == [
        "| model | recall@10 | ndcg@10 |",
        "|---|---|---|",
        "| pop | 0.0700 | 0.1012 |",
        "| ease | 0.2145 | - |",
    ]


def test_hits_matrix_scales():
    """10,000 x 100 ids against a 1e6-item catalogue: one binary search (timed in bench/, not here)."""
    rng = np.random.default_rng(0)
    Q, K, N = 10_000, 100, 1_000_000
    I = np.stack([rng.choice(N, K, replace=False) for _ in range(Q)])
    rows = np.repeat(np.arange(Q), 20)
    cols = np.where(rng.random(Q * 20) < 0.5, I[rows, rng.integers(0, K, Q * 20)],
                    rng.integers(0, N, Q * 20))
    truth = sp.csr_matrix((np.ones(Q * 20), (rows, cols)), shape=(Q, N))
    h = hits_matrix(I, truth)
    assert h.shape == (Q, K) and h.any()
    dense = np.asarray(truth[np.arange(200)].toarray() > 0)
    assert np.array_equal(h[:200], np.take_along_axis(dense, I[:200], axis=1))  # the same as a dense lookup
    r = ranking_metrics(I, truth, ks=(10, 100))
    assert 0 < r["recall@100"] <= 1


def _psp_reference(I, Y, w, k):
    """PSP@k and PSnDCG@k as pyxclib computes them, with dense loops (ratio of sums)."""
    num = den = nnum = nden = 0.0
    for q in range(Y.shape[0]):
        rel = np.flatnonzero(Y[q])
        if rel.size == 0:
            continue
        best = np.sort(w[rel])[::-1][:k]
        top = [i for i in I[q, :k]]
        gains = [w[i] if i >= 0 and Y[q, i] else 0.0 for i in top]
        idcg = sum(1 / np.log2(j + 2) for j in range(min(k, rel.size)))
        num += sum(gains)
        den += best.sum()
        nnum += sum(g / np.log2(j + 2) for j, g in enumerate(gains)) / idcg
        nden += sum(g / np.log2(j + 2) for j, g in enumerate(best)) / idcg
    return num / den, nnum / nden


def test_propensity_metrics_match_a_dense_reference_and_reward_rare_labels():
    from recsys.eval.metrics import inverse_propensity, propensity_metrics

    rng = np.random.default_rng(0)
    Q, N = 40, 12
    Y = (rng.random((Q, N)) < 0.25).astype(np.float32)
    Y[3] = 0  # a query without labels is left out
    counts = rng.integers(0, 50, N)
    w = inverse_propensity(counts, n_train=200)
    C = (np.log(200) - 1) * 2.5 ** 0.55
    np.testing.assert_allclose(w, 1 + C * (counts + 1.5) ** -0.55)
    assert np.all(np.diff(w[np.argsort(counts)]) <= 1e-12)  # rarer label, larger weight
    I = np.argsort(-rng.random((Q, N)), axis=1)[:, :5]
    I[0, 4] = -1  # a pad is never a hit
    got = propensity_metrics(I, sp.csr_matrix(Y), w, ks=(1, 3, 5))
    for k in (1, 3, 5):
        psp, psn = _psp_reference(I, Y, w, k)
        assert got[f"psp@{k}"] == pytest.approx(psp) and got[f"psndcg@{k}"] == pytest.approx(psn)
    # a perfect propensity-ordered ranking scores 1; the same hits in the common labels score less
    ideal = np.argsort(-(Y * w[None, :] + 1e-9 * np.arange(N)), axis=1)[:, :5]
    perfect = propensity_metrics(ideal, sp.csr_matrix(Y), w, ks=(1, 3))
    assert perfect["psp@1"] == pytest.approx(1.0) and perfect["psndcg@3"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="one weight per label"):
        propensity_metrics(I, sp.csr_matrix(Y), w[:-1])


def test_distinct_groups_counts_categories_per_list():
    groups = np.array([0, 0, 1, 1, 2])  # items 0-4 in three categories
    I = np.array([[0, 1, 2], [0, 2, 4], [3, -1, -1]])  # 2, 3 and 1 distinct; pads left out
    assert distinct_groups(I, groups, 3) == pytest.approx(2.0)
    assert distinct_groups(I, groups, 1) == pytest.approx(1.0)
    assert distinct_groups(I, np.arange(5), 3) == pytest.approx(7 / 3)  # every item its own group
    with pytest.raises(DataError, match="item id 4 but 3 group labels"):
        distinct_groups(I, groups[:3], 3)
