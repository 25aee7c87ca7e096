"""FAISS retrievers (Flat, IVF, HNSW) by inner product, with per-query exclusion.

FAISS cannot exclude items per query, so a search over-fetches k + (excluded items a query
may meet), drops the excluded ids and keeps the first k.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from contextlib import contextmanager

import faiss
import numpy as np

from recsys.errors import ConfigError, DataError, require
from recsys.retrieval.base import Retriever, _pad
from recsys.retrieval.keys import csr_rows, member

__all__ = ["FaissFlatRetriever", "FaissIVFRetriever", "FaissHNSWRetriever"]

logger = logging.getLogger(__name__)


@contextmanager
def _faiss_threads(threads: int | None):
    """Set FAISS's OpenMP thread count for the block and restore it afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or before)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _FaissRetriever(Retriever):
    """FAISS search with exclusion: ask for k + (most excluded items of a query in the
    chunk), drop the excluded ids, keep the first k. Queries are chunked in order of their
    excluded count, so one heavy user only enlarges the k' of the queries beside it.

    ``threads``: if given, FAISS (OpenMP) uses that many threads during build and search
    and the previous setting is restored after; None leaves FAISS's default (all cores).
    """

    is_exact = False

    def __init__(self, query_chunk: int = 1024, threads: int | None = None) -> None:
        super().__init__()
        self.query_chunk, self.threads = query_chunk, threads
        self.index = None

    def _build(self, xb):
        with _faiss_threads(self.threads):
            self.index = self._make_index(xb)

    @abstractmethod
    def _make_index(self, xb: np.ndarray):  # returns a faiss.Index holding xb
        ...

    def _params(self, kk: int):  # per-search parameters (None = index defaults)
        return None

    def _search(self, xq, k, exclude):
        # stored entries per query: an upper bound on what has to be dropped
        n_ex = np.zeros(xq.shape[0], np.int64) if exclude is None else np.diff(exclude.indptr)
        with _faiss_threads(self.threads):
            return self._overfetch(xq, k, exclude, n_ex,
                                   lambda qs, kk: self.index.search(xq[qs], kk, params=self._params(kk)))

    def _overfetch(self, xq, k, exclude, n_ex, search):
        """The one over-fetch loop: queries in chunks of ``query_chunk``, ordered by ``n_ex``
        (how many excluded items each may meet, so one heavy user only enlarges the k' of the
        queries beside it); ``search(qs, k')`` -> (d, i) (c, k') for query ids ``qs``; the
        excluded ids are dropped and the first k kept."""
        Q = xq.shape[0]
        D = np.empty((Q, k), dtype=np.float32)
        I = np.empty((Q, k), dtype=np.int64)
        order = np.argsort(n_ex, kind="stable")  # light users first, heavy users together
        for c0 in range(0, Q, self.query_chunk):
            qs = order[c0 : c0 + self.query_chunk]  # (c,) query ids of this chunk
            kk = min(k + int(n_ex[qs].max()), self.N)
            d, i = search(qs, kk)  # (c, kk)
            if exclude is not None:
                i[member(i, exclude[qs])] = -1  # excluded -> pad, then pads go last
                first = np.argsort(i < 0, axis=1, kind="stable")[:, :k]  # (c, k)
                d = np.take_along_axis(d, first, axis=1)
                i = np.take_along_axis(i, first, axis=1)
            D[qs], I[qs] = _pad(d, i)
        return D, I


class FaissFlatRetriever(_FaissRetriever):
    """faiss.IndexFlatIP: exact inner product inside FAISS (BLAS for batches >= 20)."""

    is_exact = True

    def _make_index(self, xb):
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb)
        return index


class FaissIVFRetriever(_FaissRetriever):
    """faiss.IndexIVFFlat with METRIC_INNER_PRODUCT: k-means cells, scan nprobe of them.

    nlist: number of cells, default round(4 * sqrt(N)) (at most N).
    nprobe: cells scanned per query (recall / speed knob), capped at nlist.
    train_size: vectors sampled (seed) to train k-means, default min(N, 64 * nlist).
    niter: k-means iterations (FAISS's default 25).
    centroids: (nlist, D) float32 cell centres of an earlier build (``self.centroids`` after
        any build): the index skips k-means and only assigns and adds ``xb``, ~5x cheaper
        at N = 1e6 (the refresh of a hard-negative index whose embeddings moved a little).
    """

    def __init__(self, nlist: int | None = None, nprobe: int = 16,
                 train_size: int | None = None, seed: int = 0, niter: int = 25,
                 centroids: np.ndarray | None = None, query_chunk: int = 1024,
                 threads: int | None = None) -> None:
        super().__init__(query_chunk, threads)
        self.nlist, self.nprobe, self.train_size, self.seed = nlist, nprobe, train_size, seed
        self.niter = niter
        self.centroids = None if centroids is None else np.ascontiguousarray(centroids, dtype=np.float32)

    def _make_index(self, xb):
        N, dim = xb.shape
        self.quantizer = faiss.IndexFlatIP(dim)  # kept alive beside the index
        if self.centroids is not None:  # reuse the cells of an earlier build: no k-means
            if self.centroids.ndim != 2 or self.centroids.shape[1] != dim or len(self.centroids) > N:
                raise DataError(
                    f"centroids have shape {self.centroids.shape}: reused IVF cells must be "
                    f"(nlist <= N={N}, D={dim}). Fix: pass the centroids of an index over "
                    "embeddings of the same model, or None to train new ones."
                )
            nlist = len(self.centroids)
            self.quantizer.add(self.centroids)
            index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            require(index.is_trained, f"IVF index over {self.quantizer.ntotal} reused cells (nlist={nlist}) is not "
                    "trained: the cells must be (nlist, D) float32. Fix: pass the centroids of an earlier build.",
                    DataError)
            index.add(xb)
            index.nprobe = min(self.nprobe, nlist)
            logger.info("ivf: nlist=%d nprobe=%d, cells reused", nlist, index.nprobe)
            return index
        nlist = min(self.nlist or max(1, round(4 * math.sqrt(N))), N)
        n_train = min(self.train_size or 64 * nlist, N)
        if n_train < nlist:
            raise ConfigError(
                f"train_size={n_train} < nlist={nlist}: k-means needs at least one vector "
                f"per cell. Fix: raise train_size (>= {39 * nlist} recommended) or lower nlist."
            )
        sample = np.random.default_rng(self.seed).choice(N, n_train, replace=False)
        index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = self.niter
        index.train(xb[np.sort(sample)])
        self.centroids = self.quantizer.reconstruct_n(0, nlist)  # (nlist, D) for reuse
        index.add(xb)
        index.nprobe = min(self.nprobe, nlist)
        logger.info("ivf: nlist=%d nprobe=%d trained on %d vectors (%d iterations)", nlist,
                    index.nprobe, n_train, self.niter)
        return index

    def cells(self) -> np.ndarray:
        """(N,) int64 cell of every item, read from the inverted lists (cached per build)."""
        if getattr(self, "_cell_of", None) is None or self._cell_index is not self.index:
            inv = self.index.invlists
            cell = np.empty(self.N, dtype=np.int64)
            for c in range(self.index.nlist):
                n = inv.list_size(c)
                if n:
                    cell[faiss.rev_swig_ptr(inv.get_ids(c), n)] = c
            self._cell_of, self._cell_index = cell, self.index
        return self._cell_of

    def _search(self, xq, k, exclude):
        """As ``_FaissRetriever._search``, but a query over-fetches only the excluded items
        that lie in the cells it probes (the only ones the search can return): with
        nprobe = 1 of 1,000 cells that is ~0 of a user's ~10-100 train items, so k' ~ k.
        The coarse assignment is computed once and passed to ``search_preassigned``."""
        if exclude is None:
            return super()._search(xq, k, exclude)
        Q = xq.shape[0]
        with _faiss_threads(self.threads):
            Dq, Iq = self.index.quantizer.search(xq, self.index.nprobe)  # (Q, nprobe) probed cells
            rows, items = csr_rows(exclude, 0, Q)  # excluded (row, item) pairs
            cells = self.cells()[items]
            probed = (Iq[rows] == cells[:, None]).any(axis=1)  # excluded item in a probed cell
            n_ex = np.bincount(rows[probed], minlength=Q)  # (Q,) what the search may return
            return self._overfetch(xq, k, exclude, n_ex,
                                   lambda qs, kk: self.index.search_preassigned(xq[qs], kk, Iq[qs], Dq[qs]))


class FaissHNSWRetriever(_FaissRetriever):
    """faiss.IndexHNSWFlat with METRIC_INNER_PRODUCT: graph search, no training.

    M: graph degree (memory ~ N * M * 8 bytes on top of the vectors).
    ef_search: candidate list size at search (recall / speed knob); raised to k' when
    the search asks for more results. ef_construction: candidate list size at build.
    """

    def __init__(self, M: int = 32, ef_search: int = 128, ef_construction: int = 200,
                 query_chunk: int = 1024, threads: int | None = None) -> None:
        super().__init__(query_chunk, threads)
        self.M, self.ef_search, self.ef_construction = M, ef_search, ef_construction

    def _make_index(self, xb):
        index = faiss.IndexHNSWFlat(xb.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(xb)
        return index

    def _params(self, kk):
        return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, kk))
