"""Tests for recsys.retrieval: every retriever is checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import ConfigError, DataError
from recsys.retrieval import (
    ExactRetriever,
    FaissFlatRetriever,
    FaissHNSWRetriever,
    FaissIVFRetriever,
    make_retriever,
    recall_vs_exact,
)


def brute_force(xq, xb, k, exclude=None):
    """The whole (Q, N) score matrix in float64, excluded items -inf, full argsort."""
    S = xq.astype(np.float64) @ xb.astype(np.float64).T  # (Q, N)
    if exclude is not None:
        S[exclude.toarray() != 0] = -np.inf
    I = np.argsort(-S, axis=1, kind="stable")[:, :k]  # (Q, k)
    D = np.take_along_axis(S, I, axis=1)
    I[np.isneginf(D)] = -1
    return D, I


def random_exclude(rng, Q, N, frac=0.1):
    """Each query excludes ~frac of the items; query 0 all but 3, query 1 everything."""
    dense = rng.random((Q, N)) < frac
    dense[0] = True
    dense[0, rng.choice(N, 3, replace=False)] = False
    dense[1] = True
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    Q, N, dim = 40, 3000, 16
    xq = rng.standard_normal((Q, dim)).astype(np.float32)  # continuous: no ties
    xb = rng.standard_normal((N, dim)).astype(np.float32)
    return xq, xb, random_exclude(rng, Q, N)


@pytest.mark.parametrize(
    "query_chunk,item_chunk",
    [(2048, None), (7, None), (7, 13), (16, 1100), (1000, 2999)],
)
@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("use_exclude", [False, True])
def test_exact_equals_brute_force(data, query_chunk, item_chunk, k, use_exclude):
    # N = 3000 covers both top-k paths: blocks > max(4k, 1024) columns are pruned with
    # the block-max threshold, smaller ones (item_chunk 13) are sorted whole; item chunks
    # 13 / 1100 / 2999 leave a shorter last chunk and exercise the running-top-k merge.
    xq, xb, ex = data
    exclude = ex if use_exclude else None
    D_ref, I_ref = brute_force(xq, xb, k, exclude)
    r = ExactRetriever(query_chunk=query_chunk, item_chunk=item_chunk).build(xb)
    D, I = r.search(xq, k, exclude=exclude)
    assert D.shape == I.shape == (xq.shape[0], k)
    assert D.dtype == np.float32 and I.dtype == np.int64
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref.astype(np.float32), rtol=1e-5, atol=1e-5)
    if use_exclude:
        assert not ex[np.arange(len(I))[:, None], np.maximum(I, 0)].toarray()[I >= 0].any()


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_chunked_pruning_equals_brute_force(threads):
    # N = 20,000 in chunks of 1,000 items (blocks of 62, the last chunk padded): the
    # block-max pruning path with several chunks, exclusions in every chunk and query
    # blocks of 8 handed to `threads` workers. Query 0 keeps 5 items (t = -inf: its
    # block falls back to topk_block); the other blocks stay on the pruned path.
    rng = np.random.default_rng(7)
    Q, N, dim, k = 40, 20_000, 16, 20
    centres = rng.standard_normal((50, dim))
    xb = (centres[rng.integers(50, size=N)] + 0.5 * rng.standard_normal((N, dim))).astype(np.float32)
    xq = (centres[rng.integers(50, size=Q)] + 0.5 * rng.standard_normal((Q, dim))).astype(np.float32)
    dense = rng.random((Q, N)) < 0.05
    dense[0] = True
    dense[0, :5] = False
    ex = sp.csr_matrix(dense.astype(np.float32))
    for exclude in (None, ex):
        D_ref, I_ref = brute_force(xq, xb, k, exclude)
        r = ExactRetriever(query_chunk=8, item_chunk=1000, threads=threads).build(xb)
        D, I = r.search(xq, k, exclude=exclude)
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_allclose(D, D_ref.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_exact_chunked_ties_fall_back():
    # constant scores on the pruned path: every block maximum equals t, so the block falls
    # back to topk_block, which keeps the smallest ids among ties
    xb = np.zeros((20_000, 8), dtype=np.float32)
    xb[12_345] = 1.0  # one item above the rest
    D, I = ExactRetriever(item_chunk=1024).build(xb).search(np.ones((3, 8), np.float32), 20)
    assert (I[:, 0] == 12_345).all() and (D[:, 0] == 8).all() and (D[:, 1:] == 0).all()
    assert all(len(set(row)) == 20 for row in I.tolist())


def test_block_bytes_caps_the_query_chunk(data):
    xq, xb, ex = data
    _, I_ref = brute_force(xq, xb, 10, ex)
    r = ExactRetriever(query_chunk=2048, block_bytes=5 * 4 * xb.shape[0]).build(xb)
    _, I = r.search(xq, 10, exclude=ex)  # 5 queries per block, 8 blocks
    np.testing.assert_array_equal(I, I_ref)


def test_padding_when_almost_everything_is_excluded(data):
    xq, xb, ex = data
    D, I = ExactRetriever().build(xb).search(xq, 10, exclude=ex)
    # query 0 keeps 3 items: 3 results then 7 pads; query 1 keeps none: all pads
    assert (I[0, :3] >= 0).all() and (I[0, 3:] == -1).all()
    assert np.isfinite(D[0, :3]).all() and np.isneginf(D[0, 3:]).all()
    assert set(I[0, :3]) == set(np.flatnonzero(ex[0].toarray()[0] == 0))
    assert (I[1] == -1).all() and np.isneginf(D[1]).all()


def test_explicit_zero_in_exclude_is_not_excluded(data):
    xq, xb, _ = data
    _, I = ExactRetriever().build(xb).search(xq[:1], 1)
    best = int(I[0, 0])
    exclude = sp.csr_matrix((np.array([0.0]), ([0], [best])), shape=(1, xb.shape[0]))
    assert exclude.nnz == 1
    _, I2 = ExactRetriever().build(xb).search(xq[:1], 1, exclude=exclude)
    assert I2[0, 0] == best


def test_constant_scores_fall_back_and_stay_valid():
    # All-zero embeddings tie every item (e.g. a zero-initialised model): the pruning
    # threshold keeps everyone, so the block falls back to np.argpartition.
    xb = np.zeros((5000, 8), dtype=np.float32)
    xq = np.ones((3, 8), dtype=np.float32)
    D, I = ExactRetriever().build(xb).search(xq, 20)
    assert (D == 0).all()
    assert all(len(set(row)) == 20 for row in I.tolist()) and (I >= 0).all()


def test_tie_fallback_in_row_steps():
    # 20 rows of 2**20 zeros with k = 5 positive entries each: the threshold is 0, every
    # entry is a candidate, and the fallback runs argpartition 16 rows at a time (2 steps).
    from recsys.retrieval.exact import topk_block

    rng = np.random.default_rng(3)
    q, n, k = 20, 2**20, 5
    S = np.zeros((q, n), dtype=np.float32)
    # all positives in the first pruning block, so the k-th block maximum is 0
    cols = np.stack([rng.choice(1000, k, replace=False) for _ in range(q)])  # (q, k)
    vals = rng.random((q, k)).astype(np.float32) + 1
    np.put_along_axis(S, cols, vals, axis=1)
    D, I = topk_block(S, k)
    order = np.argsort(-vals, axis=1)
    np.testing.assert_array_equal(I, np.take_along_axis(cols, order, axis=1))
    np.testing.assert_array_equal(D, np.take_along_axis(vals, order, axis=1))


@pytest.mark.parametrize("use_exclude", [False, True])
def test_faiss_flat_equals_exact(data, use_exclude):
    xq, xb, ex = data
    exclude = ex if use_exclude else None
    D_ref, I_ref = ExactRetriever().build(xb).search(xq, 25, exclude=exclude)
    D, I = FaissFlatRetriever(query_chunk=16).build(xb).search(xq, 25, exclude=exclude)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def clustered():
    """8,000 items around 64 centres in 32-d; 200 queries near random items."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((64, 32)) * 3
    xb = (centres[rng.integers(0, 64, 8000)] + rng.standard_normal((8000, 32))).astype(
        np.float32
    )
    xq = (xb[rng.integers(0, 8000, 200)] + 0.5 * rng.standard_normal((200, 32))).astype(
        np.float32
    )
    exclude = sp.csr_matrix((rng.random((200, 8000)) < 0.02).astype(np.float32))
    return xq, xb, exclude


@pytest.mark.parametrize(
    "retriever",
    [
        FaissIVFRetriever(nlist=64, nprobe=16),
        FaissIVFRetriever(),  # defaults: nlist = 4 sqrt(N) = 358, nprobe 16
        FaissHNSWRetriever(M=32, ef_search=128),
    ],
    ids=["ivf", "ivf-default", "hnsw"],
)
@pytest.mark.parametrize("use_exclude", [False, True])
def test_approximate_recall(clustered, retriever, use_exclude):
    xq, xb, ex = clustered
    exclude = ex if use_exclude else None
    _, I_exact = ExactRetriever().build(xb).search(xq, 20, exclude=exclude)
    _, I = retriever.build(xb).search(xq, 20, exclude=exclude)
    assert not retriever.is_exact
    assert recall_vs_exact(I, I_exact) >= 0.9
    if use_exclude:
        assert not ex[np.arange(len(I))[:, None], np.maximum(I, 0)].toarray()[I >= 0].any()


def test_faiss_exclusion_heavy_user_pads(data):
    xq, xb, ex = data
    # IVF scanning all of its cells is exact: its over-fetch counts only the excluded
    # items in the probed cells, so heavy users still get their pads
    for r in (FaissFlatRetriever(query_chunk=8), FaissHNSWRetriever(), FaissIVFRetriever(nlist=8, nprobe=8)):
        D, I = r.build(xb).search(xq, 10, exclude=ex)
        assert (I[0, 3:] == -1).all() and (I[1] == -1).all() and np.isneginf(D[1]).all()
        assert set(I[0, :3]) == set(np.flatnonzero(ex[0].toarray()[0] == 0))


def test_ivf_overfetch_in_probed_cells_equals_exact_within_cells(clustered):
    # nprobe = 1: the result of each query comes from its own cell; excluding items (most
    # of them outside that cell) must still return k admissible items, none excluded,
    # the same as a flat search restricted to the query's cell
    xq, xb, ex = clustered
    r = FaissIVFRetriever(nlist=32, nprobe=1).build(xb)
    _, I = r.search(xq, 10, exclude=ex)
    cell = r.cells()
    _, own = r.index.quantizer.search(xq, 1)
    for q in range(len(xq)):
        members = np.flatnonzero((cell == own[q, 0]) & (ex[q].toarray()[0] == 0))
        best = members[np.argsort(-(xb[members] @ xq[q]), kind="stable")][:10]
        assert set(I[q][I[q] >= 0]) == set(best), q


def test_threads_setting_is_restored(data):
    faiss = pytest.importorskip("faiss")
    xq, xb, _ = data
    before = faiss.omp_get_max_threads()
    FaissFlatRetriever(threads=1).build(xb).search(xq, 5)
    assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("name", ["exact", "flat", "ivf", "hnsw"])
def test_k_larger_than_catalogue(name):
    xb = np.eye(4, dtype=np.float32)
    r = make_retriever(name, **({"nlist": 2} if name == "ivf" else {})).build(xb)
    with pytest.raises(ConfigError, match=r"k=5 exceeds the catalogue size N=4.*Fix: choose"):
        r.search(xb, 5)
    D, I = r.search(xb, 4)  # k = N is fine
    assert I.shape == (4, 4)


def test_make_retriever_errors():
    assert isinstance(make_retriever("exact", query_chunk=8), ExactRetriever)
    with pytest.raises(ConfigError, match=r"'annoy'.*\['exact', 'flat', 'hnsw', 'ivf'\]"):
        make_retriever("annoy")
    with pytest.raises(ConfigError, match=r"\['efSearch'\].*Fix:"):
        make_retriever("hnsw", efSearch=10)


def test_input_errors(data):
    xq, xb, _ = data
    with pytest.raises(ConfigError, match="Fix:"):
        ExactRetriever().search(xq, 3)  # not built
    r = ExactRetriever().build(xb)
    with pytest.raises(DataError, match="Fix:"):
        r.search(xq[:, :5], 3)
    with pytest.raises(DataError, match="Fix:"):
        r.search(xq, 3, exclude=sp.csr_matrix((2, xb.shape[0])))
    bad = xb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        ExactRetriever().build(bad)


def test_recall_vs_exact_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    approx = np.array([[4, 3, 9, 8], [6, 5, -1, -1], [1, 2, 3, 4]])
    # row 0: {3, 4} of 4 -> 0.5; row 1: {5, 6} of 2 valid -> 1.0; row 2 has no exact
    # results and is skipped -> mean 0.75
    assert recall_vs_exact(approx, exact) == pytest.approx(0.75)
    assert recall_vs_exact(exact, exact) == pytest.approx(1.0)
