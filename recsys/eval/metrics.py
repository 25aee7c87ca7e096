"""Top-k ranking metrics over numpy / CSR arrays (no torch, no Lightning).

Inputs, named as in faiss contrib:

- ``I`` (Q, K) int64: the top-K item ids of each query, best first; ``-1`` pads rows that
  have fewer than K results (a pad is never a hit). Ids within a row must be distinct.
- ``truth`` scipy.sparse CSR (Q, N): the held-out items of each query (stored nonzero =
  relevant; explicit zeros are not relevant).

Protocol (RecBole "general recommendation", docs/protocol.md), for a user with
``n = |held-out|`` and ``hit_i = 1`` when the item at rank ``i`` (0-based) is held out:

    Recall@k    = sum_{i<k} hit_i / n
    Precision@k = sum_{i<k} hit_i / k
    HitRate@k   = 1 if any hit_i else 0
    MRR@k       = 1 / (1 + first i with hit_i) or 0 if no hit in the top k
    NDCG@k      = DCG@k / IDCG@k,  DCG@k = sum_{i<k} hit_i / log2(i + 2),
                  IDCG@k = sum_{i < min(k, n)} 1 / log2(i + 2)   (binary gains)

Means are over users with at least one held-out item; users without one are excluded,
not counted as zero. Catalogue metrics (coverage, popularity, Gini) are over all queries.

Extreme-classification metrics (``propensity_metrics``; Jain, Prabhu & Varma, "Extreme
Multi-label Loss Functions for Recommendation, Tagging, Ranking & Other Missing Label
Applications", KDD 2016), as the Extreme Classification Repository computes them (pyxclib):
with w_l = 1 / p_l the inverse propensity of label l (``inverse_propensity``),

    PSP@k    = sum_q sum_{i<k} hit_qi w_{I_qi} / sum_q sum_{i<k} w*_qi
    PSnDCG@k = sum_q PSDCG_q@k / IDCG_q@k  /  sum_q PSDCG*_q@k / IDCG_q@k

where w*_q are the weights of q's relevant labels sorted descending (the best achievable
top-k), PSDCG@k = sum_{i<k} hit_i w_i / log2(i + 2), and IDCG the binary one above: ratios of
sums over the queries, so both are 1 for a perfect propensity-ordered ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from recsys.errors import ConfigError, DataError
from recsys.numeric import gini, inverse_propensity
from recsys.retrieval.keys import member

__all__ = ["distinct_groups", "hits_matrix", "per_user_metrics", "ranking_metrics", "RANK_METRICS",
           "inverse_propensity", "propensity_metrics", "calibration_metrics", "disliked_metrics", "repetition",
           "topk_kl"]

# The per-user ranking metrics, in the order they appear in tables.
RANK_METRICS = ("recall", "ndcg", "mrr", "hit", "precision")


def _check_inputs(I: np.ndarray, truth: sp.spmatrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """Validate shapes and id ranges; return ``I`` as int64 and ``truth`` as CSR."""
    I = np.asarray(I)
    if I.ndim != 2 or not np.issubdtype(I.dtype, np.integer):
        raise DataError(
            f"I has shape {I.shape} and dtype {I.dtype}: top-k ids must be a 2-D integer "
            "array (Q, k). Fix: pass the I returned by Retriever.search."
        )
    if not sp.issparse(truth):
        raise DataError(
            f"truth is a {type(truth).__name__}: it must be a scipy.sparse matrix (Q, N). "
            "Fix: build it with scipy.sparse.csr_matrix."
        )
    truth = sp.csr_matrix(truth)
    if not truth.has_canonical_format:  # duplicates would count an item twice
        truth = truth.copy()
        truth.sum_duplicates()
    if truth.shape[0] != I.shape[0]:
        raise DataError(
            f"I has {I.shape[0]} rows but truth has {truth.shape[0]}: each query needs one "
            "row of held-out items. Fix: slice truth to the evaluated users."
        )
    N = truth.shape[1]
    if I.size and (I.min() < -1 or I.max() >= N):
        raise DataError(
            f"I has ids in [{I.min()}, {I.max()}]: ids must lie in [0, N={N}) or be the -1 "
            "pad. Fix: map ids with the same vocabulary as truth."
        )
    return I.astype(np.int64, copy=False), truth


def _check_k(k: int, I: np.ndarray) -> None:
    if not 1 <= k <= I.shape[1]:
        raise ConfigError(
            f"k={k} but I holds {I.shape[1]} results per query: need 1 <= k <= I.shape[1]. "
            f"Fix: search with k >= {k} or drop k={k} from ks."
        )


def _n_relevant(truth: sp.csr_matrix) -> np.ndarray:
    """(Q,) number of relevant items per row (stored zeros do not count)."""
    rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
    return np.bincount(rows[truth.data != 0], minlength=truth.shape[0])


def hits_matrix(I: np.ndarray, truth: sp.spmatrix) -> np.ndarray:
    """hits[q, j] = True when ``I[q, j]`` is a relevant item of row ``q`` of ``truth``.

    Vectorised as one binary search (``recsys.retrieval.keys.member``: flat keys
    ``q * N + I[q, j]`` looked up in the sorted keys of the CSR nonzeros, O(Q k log nnz));
    ``-1`` pads are never hits.

    >>> import scipy.sparse as sp
    >>> hits_matrix(np.array([[2, 0, -1]]), sp.csr_matrix(np.array([[1, 0, 1]])))
    array([[ True,  True, False]])
    """
    I, truth = _check_inputs(I, truth)
    return member(I, truth)


def _check_distinct(I: np.ndarray) -> None:
    s = np.sort(I, axis=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    if dup.any():
        q = int(np.flatnonzero(dup.any(axis=1))[0])
        raise DataError(
            f"row {q} of I repeats an item id ({I[q].tolist()[:20]}...): a ranking lists each "
            "item once, otherwise a hit is counted twice. Fix: de-duplicate the top-k ids."
        )


def per_user_metrics(
    I: np.ndarray, truth: sp.spmatrix, ks: Sequence[int] = (10, 20)
) -> dict[str, np.ndarray]:
    """Per-user Recall / NDCG / MRR / HitRate / Precision at each k, for significance tests.

    Returns arrays keyed ``"recall@10"``, ``"ndcg@10"``, ``"mrr@10"``, ``"hit@10"``,
    ``"precision@10"`` (one per k in ``ks``), each (U,) float64 for the U users that have
    at least one held-out item, plus ``"users"`` (U,) int64: their row indices in ``I``.
    Formulas in the module docstring.
    """
    I, truth = _check_inputs(I, truth)
    for k in ks:
        _check_k(k, I)
    _check_distinct(I)
    n_rel = _n_relevant(truth)  # (Q,)
    users = np.flatnonzero(n_rel > 0)
    hits = hits_matrix(I[users], truth[users])  # (U, K)
    n = n_rel[users].astype(np.float64)  # (U,)
    discount = 1.0 / np.log2(np.arange(I.shape[1]) + 2.0)  # (K,)
    # ideal_cum[m] = IDCG with m relevant items in the list (ideal_cum[0] = 0)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discount)])  # (K + 1,)
    out: dict[str, np.ndarray] = {"users": users.astype(np.int64)}
    for k in ks:
        h = hits[:, :k]  # (U, k)
        n_hits = h.sum(axis=1).astype(np.float64)  # (U,)
        first = h.argmax(axis=1)  # (U,) rank of the first hit (0 when none; masked below)
        dcg = h @ discount[:k]  # (U,)
        idcg = ideal_cum[np.minimum(n_rel[users], k)]  # (U,) > 0 since n >= 1
        out[f"recall@{k}"] = n_hits / n
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"mrr@{k}"] = np.where(n_hits > 0, 1.0 / (first + 1.0), 0.0)
        out[f"hit@{k}"] = (n_hits > 0).astype(np.float64)
        out[f"precision@{k}"] = n_hits / k
    return out


def ranking_metrics(
    I: np.ndarray,
    truth: sp.spmatrix,
    ks: Sequence[int] = (10, 20),
    item_counts: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean ranking metrics plus catalogue-level metrics at each k in ``ks``.

    Ranking metrics (``recall@k``, ``ndcg@k``, ``mrr@k``, ``hit@k``, ``precision@k``) are
    means of :func:`per_user_metrics` over users with held-out items. Over all Q queries:

    - ``coverage@k``: distinct items in the top-k lists / N.
    - ``gini@k``: Gini coefficient of the exposure counts of all N items in the top-k
      lists (items never recommended count as 0 exposure).
    - ``popularity@k`` (only with ``item_counts`` (N,), the train frequency of each item):
      mean train frequency of the recommended items, pads ignored;
      ``popularity_pct@k``: mean popularity percentile of the recommended items, where the
      percentile of an item is (rank of its count among the N items, ties averaged, minus 1)
      / (N - 1): 0 = least popular, 1 = most popular, 0.5 for all-equal counts.
    """
    I, truth = _check_inputs(I, truth)
    N = truth.shape[1]
    per_user = per_user_metrics(I, truth, ks)
    if per_user["users"].size == 0:
        raise DataError(
            f"none of the {I.shape[0]} queries has a held-out item: the means are undefined. "
            "Fix: evaluate users that have validation / test interactions."
        )
    if item_counts is not None:
        item_counts = np.asarray(item_counts, dtype=np.float64)
        if item_counts.shape != (N,):
            raise DataError(
                f"item_counts has shape {item_counts.shape}: it needs one train count per "
                f"item, shape ({N},). Fix: pass the DataModule's item counts."
            )
        pct = (rankdata(item_counts, method="average") - 1.0) / max(N - 1, 1)
        if N == 1:
            pct[:] = 0.5
    out: dict[str, float] = {}
    for k in ks:
        for name in RANK_METRICS:
            out[f"{name}@{k}"] = float(per_user[f"{name}@{k}"].mean())
        top = I[:, :k]
        rec = top[top >= 0]  # recommended ids, all queries, pads dropped
        exposure = np.bincount(rec, minlength=N)  # (N,)
        out[f"coverage@{k}"] = float(np.count_nonzero(exposure) / N)
        out[f"gini@{k}"] = gini(exposure)
        if item_counts is not None:
            empty = rec.size == 0
            out[f"popularity@{k}"] = float("nan") if empty else float(item_counts[rec].mean())
            out[f"popularity_pct@{k}"] = float("nan") if empty else float(pct[rec].mean())
    return out


def propensity_metrics(I: np.ndarray, truth: sp.spmatrix, inv_propensity: np.ndarray,
                       ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """``psp@k`` and ``psndcg@k`` (module docstring) of top-k lists ``I`` (Q, K) against
    ``truth`` (Q, N), queries with at least one relevant label; ``inv_propensity`` (N,)."""
    I, truth = _check_inputs(I, truth)
    w = np.asarray(inv_propensity, dtype=np.float64)
    if w.shape != (truth.shape[1],):
        raise DataError(f"inv_propensity has shape {w.shape}: it needs one weight per label, ({truth.shape[1]},). "
                        "Fix: inverse_propensity(train label counts, train documents).")
    for k in ks:
        _check_k(k, I)
    n_rel = _n_relevant(truth)
    users = np.flatnonzero(n_rel > 0)
    t = truth[users]
    K = I.shape[1]
    got = np.where(hits_matrix(I[users], t), w[I[users].clip(0)], 0.0)  # (U, K) weight of each hit
    # the ideal: each query's relevant labels by weight, descending, first K
    rows = np.repeat(np.arange(len(users)), np.diff(t.indptr))
    keep = t.data != 0
    rows, wt = rows[keep], w[t.indices[keep]]
    order = np.lexsort((-wt, rows))
    rows, wt = rows[order], wt[order]
    pos = np.arange(rows.size) - np.searchsorted(rows, rows)  # rank within the row
    ideal = np.zeros((len(users), K))
    m = pos < K
    ideal[rows[m], pos[m]] = wt[m]
    disc = 1.0 / np.log2(np.arange(K) + 2.0)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    out = {}
    for k in ks:
        out[f"psp@{k}"] = float(got[:, :k].sum() / ideal[:, :k].sum())
        idcg = ideal_cum[np.minimum(n_rel[users], k)]
        out[f"psndcg@{k}"] = float(((got[:, :k] @ disc[:k]) / idcg).sum() / ((ideal[:, :k] @ disc[:k]) / idcg).sum())
    return out


def calibration_metrics(prob: np.ndarray, truth: sp.spmatrix, n_bins: int = 12,
                        min_prob: float = 1e-4) -> dict[str, float]:
    """Calibration of predicted label probabilities ``prob`` (Q, N) against ``truth`` (Q, N)
    over every (query, label) pair.

    - ``ece``: expected calibration error, sum_b (n_b / n) |mean(y in b) - mean(p in b)|
      over ``n_bins`` log-spaced probability bins (edges ``min_prob`` ... 1, the first bin
      also holding everything below ``min_prob``): most pairs have tiny probabilities, so
      equal-width bins would put nearly all of them in the first one (Guo et al., ICML 2017,
      "On Calibration of Modern Neural Networks", with log bins);
    - ``brier``: mean squared error (p - y)^2;
    - ``expected_labels``: mean over queries of sum_j p_j, against ``true_labels``, the mean
      number of relevant labels (a softmax always expects one).

    Plain arrays: ``prob`` float (Q, N) in [0, 1], ``truth`` binary sparse (Q, N).
    """
    p = np.asarray(prob, dtype=np.float64)
    t = sp.csr_matrix(truth)
    if p.shape != t.shape:
        raise DataError(f"prob has shape {p.shape} and truth {t.shape}: they need one probability per (query, "
                        "label) pair. Fix: score every label of every truth row.")
    if p.size and not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise DataError("prob holds values outside [0, 1] (or NaN): calibration needs probabilities. Fix: pass "
                        "the head's probabilities (Head.probabilities), not raw scores.")
    y = (t != 0).toarray().astype(np.float64)
    edges = np.r_[0.0, np.logspace(np.log10(min_prob), 0, n_bins)[:-1], np.inf]
    b = np.clip(np.searchsorted(edges, p.ravel(), side="right") - 1, 0, n_bins - 1)
    n, hit, conf = (np.bincount(b, weights=w, minlength=n_bins) for w in (None, y.ravel(), p.ravel()))
    return {"ece": float(np.abs(hit - conf).sum() / max(p.size, 1)), "brier": float(((p - y) ** 2).mean()),
            "expected_labels": float(p.sum(1).mean()), "true_labels": float(y.sum(1).mean())}


def disliked_metrics(I: np.ndarray, dislikes: sp.spmatrix, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """``disliked@k``: the mean over all Q queries of the share of the top-k that are the
    query's held-out dislikes (rows of ``dislikes`` (Q, N), e.g. the test pairs rated <= 2,
    ``RecData.dislikes``): |top-k ∩ D_u| / k. Queries without a held-out dislike count 0, so
    the mean is over the same users as the ranking metrics; lower is better."""
    I, dislikes = _check_inputs(I, dislikes)
    hits = hits_matrix(I, dislikes)  # (Q, K)
    out = {}
    for k in ks:
        _check_k(k, I)
        out[f"disliked@{k}"] = float(hits[:, :k].sum(1).mean() / k) if len(I) else float("nan")
    return out


def repetition(I: np.ndarray, k: int = 10) -> float:
    """The share of queries whose top-k list (in order) equals the most common top-k list of
    ``I`` (Q, K): 1 / Q when every list differs, 1 when every query gets the same list (the
    collapse of a model that recommends one list to everybody)."""
    _check_k(k, I)
    if len(I) == 0:
        return float("nan")
    _, counts = np.unique(np.ascontiguousarray(I[:, :k]), axis=0, return_counts=True)
    return float(counts.max() / len(I))


def distinct_groups(I: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Intra-list diversity by category: the mean number of distinct ``groups`` values (one
    int per item, e.g. an item's top-level tree code or its genre) among the first ``k``
    items of each row of ``I`` (Q, K) (-1 pads left out). Between 1 (one category per list)
    and k; NaN without queries."""
    _check_k(k, I)
    groups = np.asarray(groups)
    top = np.asarray(I)[:, :k]
    if top.size and (top.max() >= len(groups)):
        raise DataError(f"distinct_groups: item id {int(top.max())} but {len(groups)} group labels: need one label "
                        "per catalogue item. Fix: pass groups of length N.")
    if len(top) == 0:
        return float("nan")
    g = np.where(top >= 0, groups[np.clip(top, 0, None)], -1)  # (Q, k)
    g = np.sort(g, axis=1)
    new = np.ones_like(g, dtype=bool)
    new[:, 1:] = g[:, 1:] != g[:, :-1]  # first of each run of one group
    return float(((g >= 0) & new).sum(1).mean())


def topk_kl(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    """Mean KL(p || p_ref) over queries of two distributions renormalised on the same k items
    per query: ``logits`` and ``ref_logits`` (Q, k) are the model's and the reference's
    scores / T at the model's top-k items. 0 when the two agree up to a per-query constant
    (the renormalisation removes each one's log-partition)."""
    a = np.asarray(logits, dtype=np.float64)
    b = np.asarray(ref_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"logits {a.shape} and ref_logits {b.shape}: the two models' scores must be taken at the "
                        "same items. Fix: gather both at the model's top-k ids.")
    la = a - np.logaddexp.reduce(a, axis=1, keepdims=True)
    lb = b - np.logaddexp.reduce(b, axis=1, keepdims=True)
    return float((np.exp(la) * (la - lb)).sum(1).mean()) if len(a) else float("nan")
