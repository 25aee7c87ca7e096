"""Retrievers: top-k items by inner product (the training score).

Conventions of faiss contrib: ``xb`` (N, D) float32 item embeddings, ``xq`` (Q, D) query
embeddings, ``k`` results, ``D`` (Q, k) float32 scores and ``I`` (Q, k) int64 ids, best
first. ``exclude`` (Q, N) CSR lists the items each query must never get (its train items,
docs/protocol.md); stored nonzeros are excluded, explicit zeros are not. A row with fewer
than k admissible items is padded with ``I = -1``, ``D = -inf``.

This module holds the interface (shape and value checks, once) and the small helpers the
exact and FAISS retrievers share; ``recsys.retrieval.make_retriever`` builds one by name.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError, DataError

__all__ = ["Retriever", "recall_vs_exact"]

logger = logging.getLogger(__name__)


def _sort_rows(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the best k of each row of small (q, m) candidates; ties -> smaller id first."""
    order = np.lexsort((I, -D), axis=-1)[:, :k]  # (q, k): by score desc, then id asc
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def _pad(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mark results that are excluded / missing (score -inf or id -1) as (-inf, -1)."""
    missing = (I < 0) | np.isneginf(D)
    D[missing], I[missing] = -np.inf, -1
    return D, I


def _check_finite(x: np.ndarray, name: str, tower: str) -> None:
    if not np.isfinite(x).all():
        raise DataError(
            f"{name} holds {np.count_nonzero(~np.isfinite(x))} NaN/inf values: scores must "
            f"be finite. Fix: check the {tower} tower for diverged weights."
        )


class Retriever(ABC):
    """Top-k by inner product over item embeddings; ``build`` once, ``search`` many times.

    Subclasses implement ``_build`` and ``_search``; the public methods check shapes and
    values once, here.
    """

    is_exact: bool = False  # True when results equal brute force (up to float rounding)

    def __init__(self) -> None:
        self.N = self.dim = None  # set by build

    def build(self, xb: np.ndarray) -> Retriever:
        """Index the item embeddings ``xb`` (N, D) float32; returns ``self``."""
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.ndim != 2 or xb.shape[0] == 0:
            raise DataError(
                f"xb has shape {xb.shape}: item embeddings must be (N, D) with N >= 1. "
                "Fix: embed the whole catalogue with the item tower."
            )
        _check_finite(xb, "xb", "item")
        self.N, self.dim = xb.shape
        t = time.perf_counter()
        self._build(xb)
        logger.info("%s build N=%d D=%d: %.3f s", type(self).__name__, *xb.shape,
                    time.perf_counter() - t)
        return self

    def search(
        self, xq: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """D (Q, k) float32 scores, I (Q, k) int64 ids, best first; items in row q of
        `exclude` (Q, N) never returned; -1 / -inf padding if fewer than k remain."""
        if self.N is None:
            raise ConfigError(
                f"{type(self).__name__}.search called before build: there is no index. "
                "Fix: call build(xb) first."
            )
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise DataError(
                f"xq has shape {xq.shape}: queries must be (Q, D={self.dim}) like the index. "
                "Fix: embed queries with the query tower of the same model."
            )
        _check_finite(xq, "xq", "query")
        if k < 1 or k > self.N:
            raise ConfigError(
                f"k={k} exceeds the catalogue size N={self.N}; Fix: choose k <= N."
                if k > self.N else f"k={k} < 1: need at least one result. Fix: choose k >= 1."
            )
        if exclude is not None:
            if not sp.issparse(exclude) or exclude.shape != (xq.shape[0], self.N):
                raise DataError(
                    f"exclude has shape {getattr(exclude, 'shape', None)}: it must be a "
                    f"sparse (Q={xq.shape[0]}, N={self.N}) matrix. Fix: pass the seen-item "
                    "CSR rows of the queried users."
                )
            exclude = sp.csr_matrix(exclude)
        t = time.perf_counter()
        D, I = self._search(xq, k, exclude)
        logger.info("%s search Q=%d k=%d: %.3f s", type(self).__name__, xq.shape[0], k,
                    time.perf_counter() - t)
        return D, I

    @abstractmethod
    def _build(self, xb: np.ndarray) -> None: ...

    @abstractmethod
    def _search(
        self, xq: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]: ...


def recall_vs_exact(I_approx: np.ndarray, I_exact: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| per row, ignoring -1 pads.

    With no pads |exact| = k, i.e. the usual k-recall@k (faiss contrib's
    ``knn_intersection_measure``). Queries whose exact row is all pads are skipped.
    """
    I_approx, I_exact = np.asarray(I_approx), np.asarray(I_exact)
    if I_approx.shape[0] != I_exact.shape[0]:
        raise DataError(
            f"I_approx has {I_approx.shape[0]} rows, I_exact {I_exact.shape[0]}: they must "
            "answer the same queries. Fix: search both with the same xq."
        )
    width = int(max(I_approx.max(initial=-1), I_exact.max(initial=-1))) + 1
    rows = np.arange(I_exact.shape[0], dtype=np.int64)[:, None]
    ka = np.where(I_approx >= 0, rows * width + I_approx, -1)  # flat keys, pads -> -1
    ke = np.where(I_exact >= 0, rows * width + I_exact, -1)
    inter = (np.isin(ke, ka[ka >= 0]) & (ke >= 0)).sum(axis=1)  # (Q,)
    n = (I_exact >= 0).sum(axis=1)  # (Q,)
    return float(np.mean(inter[n > 0] / n[n > 0])) if (n > 0).any() else 1.0
