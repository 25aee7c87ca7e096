"""Baselines: EASE equals the brute-force ridge regressions, seen items are never returned,
popularity orders by count, ALS runs, and evaluation matches recsys.eval.evaluate.score."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data.recdata import binary_csr
from recsys.errors import ConfigError, MissingDependency
from recsys.eval.baselines import ALS, EASE, Popularity, _ease_float32_inplace, make_baseline
from recsys.eval.evaluate import evaluate, evaluate_embeddings
from tests.conftest import TINY


def _random_binary(U=30, N=9, p=0.35, seed=0) -> sp.csr_matrix:
    X = (np.random.default_rng(seed).random((U, N)) < p).astype(np.float32)
    X[0, :] = 0.0  # a user without history
    return sp.csr_matrix(X)


def test_ease_equals_per_item_ridge_with_zero_diagonal():
    X, lam = _random_binary(), 3.0
    B = EASE(lambda_=lam).fit(X).B.astype(np.float64)  # (N, N)
    Xd = X.toarray().astype(np.float64)
    N = Xd.shape[1]
    assert np.all(np.diag(B) == 0.0), np.diag(B)
    for j in range(N):
        # column j: argmin_b ||X_j - X_{-j} b||^2 + lam ||b||^2 (item j may not predict itself)
        o = [i for i in range(N) if i != j]
        A = Xd[:, o]
        b = np.linalg.solve(A.T @ A + lam * np.eye(N - 1), A.T @ Xd[:, j])
        np.testing.assert_allclose(B[o, j], b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("float64_items", [1000, 4])  # numpy float64, float32 in place (LAPACK)
def test_ease_both_precisions_are_the_ridge_solution(float64_items):
    X, lam = _random_binary(U=60, N=23, seed=3), 3.0
    m = EASE(lambda_=lam, float64_items=float64_items).fit(X)
    assert m.B.dtype == np.float32 and np.shares_memory(m.xb, m.B)  # xb is a view, no second copy
    G = (X.T @ X).toarray().astype(np.float64) + lam * np.eye(23)
    P = np.linalg.inv(G)
    ref = -P / np.diag(P)[None, :]
    ref[np.diag_indices(23)] = 0.0
    np.testing.assert_allclose(m.B, ref, rtol=1e-4, atol=1e-5)  # both triangles filled
    # the float32 path mirrors the triangle in row blocks: several blocks give the same B
    np.testing.assert_array_equal(_ease_float32_inplace(binary_csr(X), lam, step=5),
                                  _ease_float32_inplace(binary_csr(X), lam))


def test_ease_topk_is_brute_force_with_seen_items_excluded():
    X = _random_binary(U=40, N=12, seed=1)
    m = EASE(lambda_=2.0).fit(X)
    users = np.arange(40)
    I = m.topk(users, 5, exclude=X)  # exclude each user's own history
    S = X.toarray() @ m.B  # (U, N) scores X B
    S[X.toarray() > 0] = -np.inf
    for u in users:
        row = [i for i in I[u] if i >= 0]
        assert not set(row) & set(X[u].indices), (u, row, X[u].indices)
        np.testing.assert_allclose(S[u, row], np.sort(S[u])[::-1][: len(row)], rtol=1e-5, atol=1e-6)


def test_popularity_orders_by_count_ties_by_id_and_excludes_seen():
    # item counts: [2, 1, 3, 1, 0]
    X = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=np.float32))
    m = Popularity().fit(X)
    np.testing.assert_array_equal(m.counts, [2, 1, 3, 1, 0])
    I = m.topk(np.array([2, 0]), 4)
    np.testing.assert_array_equal(I, [[2, 0, 1, 3], [2, 0, 1, 3]])  # 1 and 3 tie: smaller id first
    I = m.topk(np.array([2, 0]), 3, exclude=X[[2, 0]])
    np.testing.assert_array_equal(I, [[0, 1, 3], [3, 4, -1]])  # user 0 has only 2 unseen items: pad


def test_als_runs_on_a_tiny_matrix():
    pytest.importorskip("implicit", reason="ALS needs the `implicit` package (pip install 'recsys[bench]')")
    X = _random_binary(U=25, N=10, seed=2)
    m = ALS(factors=4, iterations=3, regularization=0.1, seed=0, num_threads=1).fit(X)
    assert m.user_factors.shape == (25, 4) and m.xb.shape == (10, 4)
    I = m.topk(np.arange(25), 3, exclude=X)
    for u in range(25):
        assert not set(I[u][I[u] >= 0]) & set(X[u].indices)
    again = ALS(factors=4, iterations=3, regularization=0.1, seed=0, num_threads=1).fit(X)
    np.testing.assert_allclose(again.xb, m.xb, rtol=1e-5)  # seeded


def test_als_without_implicit_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)  # import raises ImportError
    with pytest.raises(MissingDependency, match="bench") as e:
        ALS(factors=2, iterations=1).fit(_random_binary())
    assert isinstance(e.value, ImportError) and "Fix:" in str(e.value)


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="lambda_"):
        EASE(lambda_=0.0)
    with pytest.raises(ConfigError, match="max_items"):
        EASE(max_items=5).fit(_random_binary(N=9))
    with pytest.raises(ConfigError, match="unknown"):
        make_baseline("bpr")
    with pytest.raises(ConfigError, match="before fit"):
        Popularity().topk(np.arange(2), 1)


@pytest.fixture(scope="module")
def tiny_data():
    from recsys.data import load_dataset

    return load_dataset("synthetic", synthetic=dict(TINY))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_baseline_matches_score_on_the_same_embeddings(tiny_data, split):
    d = tiny_data
    ks = (5, 10)
    for m in (Popularity().fit(d), EASE(50.0).fit(d)):
        res = evaluate(m, d, split, ks)
        users = np.flatnonzero(np.diff(d.truth(split).indptr) > 0)
        ref = evaluate_embeddings(m.query_vectors(users), users, m.xb, d, split, ks)
        np.testing.assert_array_equal(res.I, ref.I)
        for k in ref.metrics:
            if k != "search_seconds":
                assert res.metrics[k] == pytest.approx(ref.metrics[k], nan_ok=True), k
    models = (EASE(50.0).fit(d), Popularity().fit(d))
    ease, pop = (evaluate(m, d, split, ks).metrics["ndcg@10"] for m in models)
    assert ease > pop  # the planted clusters are learnable


def _documents(n_docs=300, n_words=40, n_labels=6, seed=0):
    """Documents whose label j is present exactly when word j is: a linear classifier's task."""
    from recsys.data.recdata import RecData
    from recsys.data.vocab import Vocab

    rng = np.random.default_rng(seed)
    words = (rng.random((n_docs, n_words)) < 0.2).astype(np.float32)
    labels = words[:, :n_labels].copy()
    labels[labels.sum(1) == 0, 0] = 1.0
    words[:, 0] = np.maximum(words[:, 0], labels[:, 0])
    test = np.arange(n_docs) >= int(0.8 * n_docs)
    tr = sp.csr_matrix(labels * ~test[:, None])
    te = sp.csr_matrix(labels * test[:, None])
    empty = sp.csr_matrix((n_docs, n_labels), dtype=np.float32)
    return RecData("docs", tr, empty, te, Vocab(np.arange(n_docs), name="document"),
                   Vocab(np.arange(n_labels), name="label"), query_bags=sp.csr_matrix(words))


@pytest.mark.parametrize("tfidf", [True, False])
def test_one_vs_rest_learns_each_label_from_the_words(tfidf):
    from recsys.eval.baselines import OneVsRest
    from recsys.eval.evaluate import evaluate

    d = _documents()
    m = OneVsRest(C=10.0, tfidf=tfidf).fit(d)
    assert m.xb.shape == (6, 41)  # one weight per word, then the bias
    assert np.all(np.argmax(m.xb[:, :6], axis=1) == np.arange(6))  # label j leans on word j
    p1 = evaluate(m, d, "test", (1,)).metrics["precision@1"]
    pop = evaluate(Popularity().fit(d), d, "test", (1,)).metrics["precision@1"]
    assert p1 > 0.95 > pop
    import dataclasses

    assert "psp@1" not in evaluate(m, d, "test", (1,)).metrics  # only where the data names its propensity model
    xmc = evaluate(m, dataclasses.replace(d, propensity_ab=(0.55, 1.5)), "test", (1, 3)).metrics
    assert 0.9 < xmc["psp@1"] <= 1.0 and 0 < xmc["psndcg@3"] <= 1.0


def test_one_vs_rest_applies_the_idf_once_when_the_data_is_already_tfidf_weighted():
    from sklearn.feature_extraction.text import TfidfTransformer

    from recsys.eval.baselines import OneVsRest

    d = _documents()
    rows = np.flatnonzero(np.diff(d.train.indptr) > 0)
    weighted = sp.csr_matrix(TfidfTransformer(norm=None).fit(d.query_bags[rows]).transform(d.query_bags))
    import dataclasses

    dw = dataclasses.replace(d, query_bags=weighted, bag_weighting="tfidf")
    a, b = OneVsRest(C=10.0).fit(d), OneVsRest(C=10.0).fit(dw)
    np.testing.assert_allclose(a.features.toarray(), b.features.toarray(), rtol=1e-6, atol=1e-7)
    # without the data's flag the IDF would be applied a second time: other features
    twice = OneVsRest(C=10.0).fit(dataclasses.replace(dw, bag_weighting="binary"))
    assert not np.allclose(twice.features.toarray(), a.features.toarray(), atol=1e-4)


def test_one_vs_rest_needs_documents():
    from recsys.eval.baselines import OneVsRest

    with pytest.raises(ConfigError, match="needs documents with features"):
        OneVsRest().fit(_random_binary())
    with pytest.raises(ConfigError, match="C > 0"):
        OneVsRest(C=0)
