"""Non-neural baselines, evaluated by the same retrieval and metric code as the two towers.

Each baseline scores a (user, item) pair by an inner product ``xq[u] . xb[i]``, so top-k
goes through ``recsys.retrieval.exact.ExactRetriever`` (chunked numpy matmul + top-k, seen items
excluded) and the metrics through ``recsys.eval.metrics.ranking_metrics``, exactly as the heads:

    Popularity  xq[u] = 1                  xb[i] = train count of i       (D = 1)
    EASE        xq[u] = X[u] (train row)   xb = B^T, so scores = X B      (D = N)
    ALS         xq = user factors          xb = item factors              (D = factors)
    OneVsRest   xq[u] = [words of u, 1]    xb[l] = [w_l, b_l] per label   (D = F + 1)

All are fitted on ``data.train`` only and query with the user's train row (OneVsRest: the
document's words), like the towers (docs/protocol.md: validation / test items are never inputs).

    model = EASE(lambda_=1000.0).fit(data)
    res = recsys.eval.evaluate.evaluate(model, data, "test", ks=(10, 20))
    res.metrics["ndcg@10"]
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from recsys.data.recdata import RecData, binary_csr
from recsys.errors import ConfigError, DataError, missing_dependency
from recsys.retrieval import ExactRetriever
from recsys.retrieval.base import _pad
from recsys.retrieval.exact import topk_block

__all__ = ["Baseline", "Popularity", "EASE", "ALS", "OneVsRest", "BASELINES", "make_baseline"]

logger = logging.getLogger(__name__)


class Baseline(ABC):
    """Fit on a (U, N) train matrix; score users by ``query_vectors(users) @ xb.T``.

    Subclasses set ``xb`` (N, D) float32 in ``_fit`` and implement ``query_vectors``.
    ``fit_seconds`` is the wall time of the last ``fit``.
    """

    name = "baseline"
    sparse_scores = False  # True: topk ranks ``scores(users)`` (e.g. a sparse row times a dense matrix)

    def __init__(self) -> None:
        self.xb: np.ndarray | None = None  # (N, D) float32 item side of the score
        self.train: sp.csr_matrix | None = None  # (U, N) the fitted train matrix
        self.fit_seconds = float("nan")

    def fit(self, data: RecData | sp.spmatrix) -> Baseline:
        """Fit on ``data.train`` (or a (U, N) sparse matrix); returns ``self``."""
        X = data.train if isinstance(data, RecData) else data
        if not sp.issparse(X) or X.ndim != 2 or X.shape[1] == 0:
            raise DataError(
                f"train is {type(X).__name__} with shape {getattr(X, 'shape', None)}: baselines "
                "need a (U, N) scipy.sparse matrix with N >= 1. Fix: pass a RecData or its train CSR."
            )
        X = binary_csr(X)  # binary implicit feedback
        self.train = X
        t = time.perf_counter()
        self._fit(X)
        self.fit_seconds = time.perf_counter() - t
        # an item-item model keeps xb a view of its (N, N) matrix: no second N x N copy
        self.xb = (np.asarray if self.sparse_scores else np.ascontiguousarray)(self.xb, dtype=np.float32)
        logger.info("%s fit on U=%d N=%d nnz=%d: %.2f s", self, *X.shape, X.nnz, self.fit_seconds)
        return self

    @abstractmethod
    def _fit(self, X: sp.csr_matrix) -> None: ...

    @abstractmethod
    def query_vectors(self, users: np.ndarray) -> np.ndarray:
        """Query side of the score for ``users`` (Q,): (Q, D) float32."""

    def topk(self, users: np.ndarray, k: int, exclude: sp.spmatrix | None = None,
             chunk: int = 2048) -> np.ndarray:
        """I (Q, k) int64 top-k item ids of ``users`` (Q,), best first, ties by smaller id.

        ``exclude`` (Q, N): row q lists items never returned for ``users[q]`` (its seen
        items); -1 pads rows with fewer than k admissible items. Users are scored ``chunk``
        at a time, so at most (chunk, D) queries and (chunk, N) scores are held.
        """
        if self.xb is None:
            raise ConfigError(f"{self}.topk called before fit: there is no model. Fix: call fit(data) first.")
        users = np.asarray(users, dtype=np.int64)
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (len(users), self.xb.shape[0]):
                raise DataError(
                    f"exclude has shape {exclude.shape}: it needs one row per user, "
                    f"(Q={len(users)}, N={self.xb.shape[0]}). Fix: pass data.seen(split)[users]."
                )
        I = np.empty((len(users), k), dtype=np.int64)
        if self.sparse_scores:  # (chunk, N) score blocks, seen items set to -inf, top-k per row
            for q0 in range(0, len(users), chunk):
                q1 = min(q0 + chunk, len(users))
                S = self.scores(users[q0:q1])  # (q, N)
                if exclude is not None:
                    ex = exclude[q0:q1].tocoo()
                    S[ex.row, ex.col] = -np.inf
                kk = min(k, S.shape[1])
                _, I[q0:q1, :kk] = _pad(*topk_block(S, kk))  # excluded (-inf) -> id -1
                I[q0:q1, kk:] = -1
            return I
        retriever = ExactRetriever().build(self.xb)  # its own query blocks, in parallel
        for q0 in range(0, len(users), chunk):
            q1 = min(q0 + chunk, len(users))
            ex = None if exclude is None else exclude[q0:q1]
            _, I[q0:q1] = retriever.search(self.query_vectors(users[q0:q1]), k, exclude=ex)
        return I

    def scores(self, users: np.ndarray) -> np.ndarray:
        """(Q, N) float32 scores of ``users``: ``query_vectors(users) @ xb.T``."""
        return self.query_vectors(users) @ self.xb.T

    def probabilities(self, users: np.ndarray) -> np.ndarray | None:
        """(Q, N) label probabilities, for a baseline whose scores define them; None (the
        default: popularity, EASE and ALS scores are rankings, not probabilities)."""
        return None

    def __repr__(self) -> str:
        return self.name


class Popularity(Baseline):
    """Most-popular items first: score(u, i) = train count of i, the same for every user."""

    name = "pop"

    def _fit(self, X):
        self.counts = np.asarray(X.sum(axis=0)).ravel()  # (N,)
        self.xb = self.counts[:, None]  # (N, 1)

    def query_vectors(self, users):
        return np.ones((len(users), 1), dtype=np.float32)  # (Q, 1)


class EASE(Baseline):
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

    An item-item linear model B (N, N) with zero diagonal, min ||X - X B||^2 + lambda ||B||^2
    subject to diag(B) = 0, in closed form:

        G = X^T X + lambda I,   P = G^-1,   B_ij = -P_ij / P_jj  (i != j),   B_jj = 0

    Column j is the ridge regression of item j on all other items. Scores are X[u] B, computed
    as a sparse row times B (nnz(X[u]) rows of B summed), never as a dense (Q, N) @ (N, N).

    Precision and memory: up to ``float64_items`` items G is inverted in float64 with numpy
    (three N x N float64 matrices: 10 GB at N = 20k). Above it, in float32 with at most two
    N x N buffers alive (G then its Cholesky factor, the factor then the inverse, which becomes
    B in place; ``_ease_float32_inplace``): ~8 N^2 bytes at the peak (13.4 GB at Gowalla's
    N = 41k) plus the sparse co-occurrence; the cost is ~N^3 flops (~7 x 10^13 at N = 41k: 10-20
    minutes on 2 cores). ``max_items`` guards against catalogues where that does not fit.

    Args:
        lambda_: L2 weight (Steck's choice for ML-20M: 500; best on ML-1M validation
            NDCG@10 under our protocol: 1000, within 0.001 of 500).
        max_items: refuse N above this (50k: 20 GB in float32).
        float64_items: largest N inverted in float64; above it float32 in place.
    """

    name = "ease"
    sparse_scores = True  # scores = X[u] B from the sparse rows

    def __init__(self, lambda_: float = 500.0, max_items: int = 50_000, float64_items: int = 20_000):
        super().__init__()
        if lambda_ <= 0:
            raise ConfigError(f"EASE lambda_={lambda_}: need lambda_ > 0 (G must be invertible). Fix: e.g. 500.")
        self.lambda_, self.max_items, self.float64_items = float(lambda_), max_items, float64_items

    def _fit(self, X):
        N = X.shape[1]
        if N > self.max_items:
            raise ConfigError(
                f"EASE on N={N} items needs a dense {N}x{N} matrix "
                f"(~{self.memory_bytes(N) / 2**30:.1f} GiB): above max_items={self.max_items}. "
                "Fix: use ALS or a two-tower head, or raise max_items if memory allows."
            )
        if N <= self.float64_items:
            G = (X.T @ X).toarray().astype(np.float64)  # (N, N) item co-occurrence
            G[np.diag_indices(N)] += self.lambda_
            P = np.linalg.inv(G)  # (N, N)
            B = -P / np.diag(P)[None, :]  # (N, N) column j divided by P_jj
            B[np.diag_indices(N)] = 0.0
            self.B = B.astype(np.float32)
        else:
            self.B = _ease_float32_inplace(X, self.lambda_)
        self.xb = self.B.T  # (N, N) view: item j's vector is column j of B

    @staticmethod
    def memory_bytes(n_items: int) -> int:
        """Bytes of the dense matrices of a fit at ``n_items`` (float64 path: three N x N)."""
        return 8 * n_items**2 if n_items > 20_000 else 3 * 8 * n_items**2

    def query_vectors(self, users):
        return self.train[users].toarray()  # (Q, N) binary train rows

    def scores(self, users: np.ndarray) -> np.ndarray:
        """(Q, N) float32 scores X[users] B: the sparse rows times B (nnz(X[u]) x N per user)."""
        return np.asarray(self.train[users] @ self.B, dtype=np.float32)

    def __repr__(self) -> str:
        return f"ease(lambda={self.lambda_:g})"


def _ease_float32_inplace(X: sp.csr_matrix, lam: float, step: int = 2048) -> np.ndarray:
    """EASE's B (N, N) float32 from X (U, N) with at most two N x N buffers alive: G = X^T X +
    lam I, its Cholesky factor L (torch.linalg.cholesky; G is freed), P = G^-1 from L
    (torch.cholesky_inverse; L is freed), then B = -P / diag(P) column-wise in place with a zero
    diagonal. torch's LAPACK is used because scipy's 32-bit-index OpenBLAS (spotrf / spotri)
    crashed at N = 40,981 (a segfault inside libscipy_openblas, N^2 > 2^31 bytes / 4)."""
    import torch

    N = X.shape[1]
    C = (X.T @ X).astype(np.float32).tocsr()  # (N, N) sparse co-occurrence
    G = C.toarray()  # (N, N) float32
    del C
    G[np.diag_indices(N)] += np.float32(lam)
    Gt = torch.from_numpy(G)  # shares G's memory
    L, info = torch.linalg.cholesky_ex(Gt)
    del Gt, G
    if int(info) != 0:
        raise ConfigError(f"EASE lambda={lam:g}: the float32 Cholesky of X^T X + lambda I failed (info={int(info)}). "
                          "Fix: raise lambda_ (e.g. x10).")
    P = torch.cholesky_inverse(L)  # (N, N) = G^-1, symmetric
    del L
    B = P.numpy()
    d = np.diag(B).copy()  # (N,) P_jj
    for r0 in range(0, N, step):  # B_ij = -P_ij / P_jj, ``step`` rows at a time (no N x N temporary)
        B[r0:r0 + step] /= -d[None, :]
    B[np.diag_indices(N)] = 0.0
    return B


class ALS(Baseline):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit`` (CPU, CG solver).

    Confidence of an observed pair is ``alpha`` (implicit 0.7 multiplies the binary matrix
    by alpha), unobserved pairs are zeros with weight 1. OpenBLAS / MKL are limited to one
    thread during fit (implicit parallelises over users itself and warns otherwise).

    Defaults: tuned on ML-1M validation NDCG@10 (docs/protocol.md) at 64
    factors: regularization 50, alpha 3 (test R@10 0.207 / N@10 0.279), against 0.181 /
    0.238 with implicit's own defaults (regularization 0.01, alpha 1). ``regularization``
    is not scaled by the data size: retune it on other datasets.

    Args:
        factors: latent dimension D.
        regularization: L2 weight on the factors.
        alpha: confidence of observed pairs.
        iterations: ALS sweeps.
        seed: random state of the initial factors.
        num_threads: implicit's threads (0 = all cores).
    """

    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 50.0, alpha: float = 3.0,
                 iterations: int = 15, seed: int = 0, num_threads: int = 0):
        super().__init__()
        if factors < 1 or iterations < 1 or regularization < 0 or alpha <= 0:
            raise ConfigError(
                f"ALS factors={factors}, iterations={iterations}, regularization={regularization}, "
                f"alpha={alpha}: need factors, iterations >= 1, regularization >= 0, alpha > 0. "
                "Fix: e.g. factors=64, iterations=15, regularization=0.01, alpha=1.0."
            )
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed, self.num_threads = iterations, seed, num_threads

    def _fit(self, X):
        try:
            from implicit.cpu.als import AlternatingLeastSquares
        except ImportError as e:
            raise missing_dependency("implicit", "ALS") from e
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            m = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                iterations=self.iterations, random_state=self.seed, num_threads=self.num_threads,
            )
            m.fit(X, show_progress=False)
        self.user_factors = np.asarray(m.user_factors, dtype=np.float32)  # (U, D)
        self.xb = np.asarray(m.item_factors, dtype=np.float32)  # (N, D)

    def query_vectors(self, users):
        return self.user_factors[users]  # (Q, D)

    def __repr__(self) -> str:
        return (f"als(factors={self.factors}, reg={self.regularization:g}, alpha={self.alpha:g}, "
                f"iters={self.iterations})")


class OneVsRest(Baseline):
    """One-vs-rest linear classifiers over document features, the extreme-classification
    baseline ("1-vs-All" in the Extreme Classification Repository; e.g. DiSMEC, Babbar &
    Schoelkopf, WSDM 2017, is its sparse large-scale form).

    For multi-label data whose queries are documents (``RecData.query_bags``: (U, F) words):
    one L2-regularised logistic regression per label (scikit-learn ``LogisticRegression``,
    liblinear) on the train documents' features, optionally TF-IDF weighted and L2-normalised
    (``TfidfTransformer`` fitted on the train documents; features the data already TF-IDF
    weighted, ``bag_weighting: tfidf``, keep their weights and are only L2-normalised, so the
    IDF is never applied twice). Scores are inner products like every
    baseline: ``xq[u] = [features of u, 1]``, ``xb[l] = [w_l, b_l]`` (D = F + 1). A label
    without train positives gets w = 0 and a bias of -1e4 (never ranked above a trained one).

    Args:
        C: inverse regularisation strength of each classifier.
        tfidf: TF-IDF weight and L2-normalise the features (else the raw values).
        class_weight: ``None`` or ``"balanced"`` (reweights each label's positives).
    """

    name = "ovr"

    def __init__(self, C: float = 1.0, tfidf: bool = True, class_weight: str | None = None):
        super().__init__()
        if C <= 0:
            raise ConfigError(f"OneVsRest C={C}: need C > 0. Fix: e.g. C=1.0.")
        self.C, self.tfidf, self.class_weight = float(C), bool(tfidf), class_weight
        self.features: sp.csr_matrix | None = None  # (U, F) the (transformed) document features

    def fit(self, data: RecData | sp.spmatrix) -> Baseline:
        """Fit on ``data.train`` with ``data.query_bags`` as the documents' features."""
        if not isinstance(data, RecData) or data.query_bags is None:
            raise ConfigError("OneVsRest needs documents with features (a RecData with query_bags, e.g. "
                              "load_dataset('bibtex')): there is nothing to classify from. Fix: use it on "
                              "multi-label document data, or a collaborative baseline (pop, ease, als).")
        F = sp.csr_matrix(data.query_bags, dtype=np.float64)
        self._raw, self._weighted = F, data.bag_weighting == "tfidf"
        return super().fit(data)

    def _fit(self, X):
        from sklearn.feature_extraction.text import TfidfTransformer
        from sklearn.linear_model import LogisticRegression

        rows = np.flatnonzero(np.diff(X.indptr) > 0)  # the train documents
        F = self._raw
        if self.tfidf:
            F = TfidfTransformer(use_idf=not self._weighted).fit(F[rows]).transform(F).tocsr()
        self.features = F
        Ft, Y = F[rows], X[rows].tocsc()
        N = X.shape[1]
        W = np.zeros((N, F.shape[1] + 1), dtype=np.float32)  # (N, F + 1): weights, then the bias
        for j in range(N):
            y = np.zeros(len(rows), dtype=np.int8)
            y[Y.indices[Y.indptr[j]:Y.indptr[j + 1]]] = 1
            if y.min() == y.max():  # no positive (or no negative): a constant score
                W[j, -1] = 1e4 if y[0] == 1 else -1e4
                continue
            m = LogisticRegression(C=self.C, solver="liblinear", class_weight=self.class_weight).fit(Ft, y)
            W[j, :-1], W[j, -1] = m.coef_.ravel(), m.intercept_[0]
        self.xb = W

    def query_vectors(self, users):
        q = self.features[users].toarray().astype(np.float32)  # (Q, F)
        return np.hstack([q, np.ones((len(q), 1), dtype=np.float32)])  # (Q, F + 1)

    def probabilities(self, users: np.ndarray) -> np.ndarray:
        """(Q, N) sigmoid of each logistic regression's decision value."""
        return 1.0 / (1.0 + np.exp(-self.scores(users).astype(np.float64)))

    def __repr__(self) -> str:
        return f"ovr(C={self.C:g}, tfidf={self.tfidf})"


BASELINES = {"pop": Popularity, "ease": EASE, "als": ALS, "ovr": OneVsRest}


def make_baseline(name: str, **kwargs) -> Baseline:
    """A baseline by name (``pop``, ``ease``, ``als``) with its keyword arguments."""
    if name not in BASELINES:
        raise ConfigError(f"baseline '{name}' is unknown; valid: {list(BASELINES)}. Fix: pick one of them.")
    return BASELINES[name](**kwargs)
