"""Retrievers: top-k items by inner product (the training score), exact or with FAISS.

Conventions of faiss contrib: ``xb`` (N, D) float32 item embeddings, ``xq`` (Q, D) query
embeddings, ``k`` results, ``D`` (Q, k) float32 scores and ``I`` (Q, k) int64 ids, best
first. ``exclude`` (Q, N) CSR lists the items each query must never get (its train items,
DESIGN.md section 3); stored nonzeros are excluded, explicit zeros are not. A row with fewer
than k admissible items is padded with ``I = -1``, ``D = -inf``.

    retriever = make_retriever("exact").build(xb)
    D, I = retriever.search(xq, k=20, exclude=seen)
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError, DataError

__all__ = [
    "Retriever", "ExactRetriever", "FaissFlatRetriever", "FaissIVFRetriever",
    "FaissHNSWRetriever", "make_retriever", "recall_vs_exact", "RETRIEVERS",
]

logger = logging.getLogger(__name__)


def _csr_rows(exclude: sp.csr_matrix, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows local to the chunk, item ids) of the excluded entries of queries q0..q1-1."""
    lo, hi = exclude.indptr[q0], exclude.indptr[q1]
    rows = np.repeat(np.arange(q1 - q0), np.diff(exclude.indptr[q0 : q1 + 1]))
    cols = exclude.indices[lo:hi].astype(np.int64)
    keep = exclude.data[lo:hi] != 0
    return rows[keep], cols[keep]


def _member(I: np.ndarray, M: sp.csr_matrix) -> np.ndarray:
    """(q, m) bool: I[r, j] is a stored nonzero of row r of M (one binary search)."""
    N = M.shape[1]
    rows = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr))
    keys = np.sort((rows * N + M.indices)[M.data != 0])  # (nnz,) flat keys row * N + id
    if keys.size == 0:
        return np.zeros(I.shape, dtype=bool)
    qk = np.arange(I.shape[0], dtype=np.int64)[:, None] * N + I  # (q, m)
    pos = np.minimum(np.searchsorted(keys, qk), keys.size - 1)
    return (keys[pos] == qk) & (I >= 0)


def _sort_rows(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the best k of each row of small (q, m) candidates; ties -> smaller id first."""
    order = np.lexsort((I, -D), axis=-1)[:, :k]  # (q, k): by score desc, then id asc
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def _topk_block(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, column ids) of each row of the score block S (q, n), best first.

    Prunes with a per-row threshold before selecting: split the row into B >= 4k blocks
    (16k blocks where they stay >= 256 columns wide); the k-th largest block maximum t
    is a lower bound of the k-th largest score (k distinct blocks each hold an element
    >= t), so every top-k item lies in a block whose maximum is >= t. Only those blocks
    (~k of the B: 1/16 to 1/4 of the row on continuous scores) are gathered and compared
    with t, and the few candidates sorted: one max-reduction over S plus a fraction of
    it, ~15x less than np.argpartition. When ties select too many blocks or candidates
    (constant scores, e.g. an untrained model) it falls back to np.argpartition on the
    whole block.
    """
    q, n = S.shape
    if n <= max(4 * k, 1024):  # small block: sort everything
        ids = np.broadcast_to(np.arange(n, dtype=np.int64), (q, n))
        return _sort_rows(S, ids, k)
    # block width: 16k blocks, but no narrower than 256 columns while 4k blocks remain
    # (numpy's max over short rows is slow); B = n // w full blocks, plus a shorter tail
    w = max(n // (16 * k), min(256, n // (4 * k)))
    B = n // w
    body = S[:, : B * w].reshape(q, B, w)
    bmax = body.max(axis=2)  # (q, B)
    if B * w < n:
        bmax = np.concatenate([bmax, S[:, B * w :].max(axis=1, keepdims=True)], axis=1)
    t = np.partition(bmax, bmax.shape[1] - k, axis=1)[:, bmax.shape[1] - k]  # (q,)
    sel_r, sel_b = np.nonzero(bmax >= t[:, None])  # (m,) blocks that can hold a top-k item
    rows = cols = vals = None
    if sel_r.size * w <= q * n // 4:
        full = sel_b < B
        fr, fb = sel_r[full], sel_b[full]
        blk = body[fr, fb]  # (m', w) gathered blocks
        i, j = np.nonzero(blk >= t[fr][:, None])
        rows, cols, vals = fr[i], fb[i] * w + j, blk[i, j]
        tr = sel_r[~full]  # rows whose tail block qualifies
        if tr.size:
            tail = S[tr, B * w :]
            i, j = np.nonzero(tail >= t[tr][:, None])
            rows, cols, vals = (np.concatenate([rows, tr[i]]), np.concatenate([cols, B * w + j]),
                                np.concatenate([vals, tail[i, j]]))
    if rows is None or rows.size > 16 * q * k:  # ties: argpartition, few rows at a time
        D, I = np.empty((q, k), S.dtype), np.empty((q, k), np.int64)
        g = max(1, 2**24 // n)  # rows per step: argpartition's index array is (g, n) int64
        for r in range(0, q, g):
            part = np.argpartition(S[r : r + g], n - k, axis=1)[:, n - k :]  # (g, k)
            Sr = np.take_along_axis(S[r : r + g], part, axis=1)
            D[r : r + g], I[r : r + g] = _sort_rows(Sr, part, k)
        return D, I
    order = np.lexsort((cols, -vals, rows))  # by row, then score desc, then id asc
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(rows, np.arange(q))  # (q,) first candidate of each row
    keep = np.arange(rows.size) - start[rows] < k  # the first k of each row
    return vals[keep].reshape(q, k), cols[keep].reshape(q, k)


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


class ExactRetriever(Retriever):
    """Brute force: ``xq @ xb.T`` in float32 numpy (BLAS) and top-k, in cache-sized pieces.

    The queries are cut into blocks of ``query_chunk`` rows, handed to ``threads`` worker
    threads (default: as many as numpy's BLAS uses); each worker scores its block against
    ``item_chunk`` items at a time with a single-threaded matmul into a small buffer that
    stays in cache, and keeps only the entries that can still be in the top-k: those >= a
    running lower bound of the k-th score, the k-th largest of the block maxima (every
    ``item_chunk / 16`` columns) seen so far (``_select``). The (Q, N) scores never go to
    memory, and the matmul is most of the search (bench/eval_speed: ~0.5 of the machine's
    sgemm rate at N = 1e6, D = 64, k = 100 on a loaded 2-core machine, where the matmuls
    alone run at ~0.9). Workers release the GIL in numpy, and BLAS is limited to one
    thread during the search (threadpoolctl), so ``threads`` cores work in parallel.

    Memory: per worker a float32 buffer for ``query_chunk`` queries x the first ceil(k / 16)
    item chunks, scored together (7 for k = 100: 64 x 7 x 8192 x 4 = 15 MB), lowered so
    that all workers stay under ``block_bytes`` (None: no cap), plus the candidates (a few
    k per query). Exact: results equal brute force, ordered by score, ties by smaller id
    (ties among many items, e.g. an untrained model, or rows with fewer than k admissible
    items fall back to ``_topk_block`` on whole rows).
    """

    is_exact = True

    def __init__(self, query_chunk: int = 64, item_chunk: int | None = 8192,
                 block_bytes: int | None = 2**30, threads: int | None = None) -> None:
        super().__init__()
        item_chunk = item_chunk or 8192  # None: the default
        if min(query_chunk, item_chunk, block_bytes or 1, threads or 1) < 1:
            raise ConfigError(
                f"query_chunk={query_chunk}, item_chunk={item_chunk}, block_bytes="
                f"{block_bytes}, threads={threads}: sizes must be >= 1. Fix: use e.g. "
                "query_chunk=64, item_chunk=8192, block_bytes=2**30, threads=None."
            )
        self.query_chunk, self.item_chunk, self.block_bytes = query_chunk, item_chunk, block_bytes
        self.threads = threads

    def _build(self, xb: np.ndarray) -> None:
        self.xb = xb

    def _search(self, xq, k, exclude):
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_info, threadpool_limits

        Q, N = xq.shape[0], self.N
        blas = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
        workers = max(1, self.threads or (max(blas) if blas else 1))
        w = max(1, min(self.item_chunk, N) // 16)  # pruning block width
        ic = w * max(1, min(self.item_chunk, N) // w)  # items per chunk, a multiple of w
        width = -(-k // (ic // w)) * ic  # columns of the first chunk group (the largest buffer)
        cap = (self.block_bytes or 4 * width * Q * workers) // (4 * width * workers)
        qc = max(1, min(self.query_chunk, Q, cap))
        D = np.empty((Q, k), dtype=np.float32)
        I = np.empty((Q, k), dtype=np.int64)

        local = threading.local()  # one score buffer per worker, reused block after block

        def work(q0: int) -> None:
            q1 = min(q0 + qc, Q)
            ex = _csr_rows(exclude, q0, q1) if exclude is not None else None
            if getattr(local, "buf", None) is None:
                local.buf = np.empty(qc * width, dtype=np.float32)
            D[q0:q1], I[q0:q1] = _pad(*_select(xq[q0:q1], self.xb, k, ic, w, ex, local.buf))

        starts = range(0, Q, qc)
        with threadpool_limits(1, user_api="blas"):
            if workers == 1 or len(starts) == 1:
                for q0 in starts:
                    work(q0)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(work, starts))  # list(): re-raise a worker's exception
        logger.debug("exact: %d queries, %d per block, %d workers, chunks of %d items", Q, qc,
                     workers, ic)
        return D, I


def _select(xq: np.ndarray, xb: np.ndarray, k: int, ic: int, w: int,
            ex: tuple[np.ndarray, np.ndarray] | None,
            buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``xq @ xb.T`` (q, N) with the entries ``ex`` = (rows, cols) at -inf;
    ``buf``: float32 scratch of >= q * G * ic entries (None: allocated here).

    The scores are computed ``ic`` items at a time into a small buffer that stays in cache
    and never go to memory whole. Block maxima (every ``w`` columns) seen so far give a
    running lower bound t of the k-th largest score (the k-th largest maximum of any set of
    blocks: k distinct blocks each hold an entry >= it). Each chunk keeps only its entries
    >= t, read from the blocks whose maximum is >= t; at the end the candidates >= the final
    t are sorted by (score desc, id asc) and the first k of each row kept. The first G
    chunks (G * ic / w >= k blocks) are scored together so that t is finite from the start,
    and t is refreshed every 8 chunks. Too many candidates (ties, or rows with fewer than k
    finite scores: t = -inf) -> ``_topk_block`` on the whole rows, recomputed (rare).
    """
    q, N = xq.shape[0], xb.shape[0]
    bpc, C = ic // w, -(-N // ic)  # blocks per chunk, chunks
    B = C * bpc
    G = -(-k // bpc)  # chunks of the first group: >= k blocks

    def full_rows():  # (q, N) scores with the exclusions, for small or degenerate cases
        S = xq @ xb.T
        if ex is not None:
            S[ex[0], ex[1]] = -np.inf
        return _topk_block(S, k)

    if B < 4 * k or G >= C:  # too few blocks to prune: score whole rows and select
        return full_rows()
    buf = np.empty(q * G * ic, np.float32) if buf is None else buf
    bmax = np.full((q, B), -np.inf, dtype=np.float32)
    if ex is not None and ex[0].size:
        order = np.argsort(ex[1], kind="stable")
        ex_r, ex_c = ex[0][order], ex[1][order]
        bounds = np.searchsorted(ex_c, np.arange(C + 1) * ic)  # excluded entries of chunk c
    else:
        bounds = None
    t = np.full(q, -np.inf, dtype=np.float32)
    found = []  # (rows, cols, vals) of each chunk group
    c0 = 0
    while c0 < C:
        c1 = G if c0 == 0 else c0 + 1  # the first group, then one chunk at a time
        i0, i1 = c0 * ic, min(c1 * ic, N)
        n = i1 - i0
        width = (c1 - c0) * ic
        S = buf[: q * width].reshape(q, width)  # (q, width), in cache for one chunk
        if n == width:
            np.matmul(xq, xb[i0:i1].T, out=S)
        else:  # last, shorter chunk: pad with -inf (never >= a finite t)
            S[:, :n] = xq @ xb[i0:i1].T
            S[:, n:] = -np.inf
        if bounds is not None and bounds[c1 if c1 <= C else C] > bounds[c0]:
            e = slice(bounds[c0], bounds[min(c1, C)])
            S[ex_r[e], ex_c[e] - i0] = -np.inf
        nb = width // w
        bm = bmax[:, c0 * bpc : c0 * bpc + nb]
        np.max(S.reshape(q, nb, w), axis=2, out=bm)
        if c0 == 0 or c1 % 8 == 0:  # refresh the running bound
            t = np.partition(bmax[:, : c1 * bpc], c1 * bpc - k, axis=1)[:, c1 * bpc - k]
        sel_r, sel_b = np.nonzero(bm >= t[:, None])  # blocks of this chunk that can matter
        if sel_r.size:
            blk = S.reshape(q, nb, w)[sel_r, sel_b]  # (m, w)
            i, j = np.nonzero(blk >= t[sel_r][:, None])
            found.append((sel_r[i], i0 + sel_b[i] * w + j, blk[i, j]))
        if not np.isfinite(t).all() or sum(f[0].size for f in found) > 64 * q * k:
            return full_rows()  # ties or mostly excluded rows: no useful bound
        c0 = c1
    t = np.partition(bmax, B - k, axis=1)[:, B - k]  # final bound: k-th largest block max
    rows, cols, vals = (np.concatenate(x) for x in zip(*found))
    keep = vals >= t[rows]
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))  # by row, then score desc, then id asc
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(rows, np.arange(q))  # (q,) first candidate of each row
    keep = np.arange(rows.size) - start[rows] < k  # the first k of each row
    if keep.sum() != q * k:  # a row with fewer than k candidates: cannot happen, but be safe
        return full_rows()
    return vals[keep].reshape(q, k), cols[keep].reshape(q, k)


@contextmanager
def _faiss_threads(threads: int | None):
    """Set FAISS's OpenMP thread count for the block and restore it afterwards."""
    import faiss

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
        Q = xq.shape[0]
        D = np.empty((Q, k), dtype=np.float32)
        I = np.empty((Q, k), dtype=np.int64)
        # stored entries per query: an upper bound on what has to be dropped
        n_ex = np.zeros(Q, np.int64) if exclude is None else np.diff(exclude.indptr)
        order = np.argsort(n_ex, kind="stable")  # light users first, heavy users together
        with _faiss_threads(self.threads):
            for c0 in range(0, Q, self.query_chunk):
                qs = order[c0 : c0 + self.query_chunk]  # (c,) query ids of this chunk
                kk = min(k + int(n_ex[qs].max()), self.N)
                d, i = self.index.search(xq[qs], kk, params=self._params(kk))  # (c, kk)
                if exclude is not None:
                    i[_member(i, exclude[qs])] = -1  # excluded -> pad, then pads go last
                    first = np.argsort(i < 0, axis=1, kind="stable")[:, :k]  # (c, k)
                    d = np.take_along_axis(d, first, axis=1)
                    i = np.take_along_axis(i, first, axis=1)
                D[qs], I[qs] = _pad(d, i)
        return D, I


class FaissFlatRetriever(_FaissRetriever):
    """faiss.IndexFlatIP: exact inner product inside FAISS (BLAS for batches >= 20)."""

    is_exact = True

    def _make_index(self, xb):
        import faiss

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
        import faiss

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
            assert index.is_trained, (nlist, self.quantizer.ntotal)
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

    def _cells(self) -> np.ndarray:
        """(N,) int64 cell of every item, read from the inverted lists (cached per build)."""
        import faiss

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
        nprobe = self.index.nprobe
        D = np.empty((Q, k), dtype=np.float32)
        I = np.empty((Q, k), dtype=np.int64)
        with _faiss_threads(self.threads):
            Dq, Iq = self.index.quantizer.search(xq, nprobe)  # (Q, nprobe) probed cells
            rows = np.repeat(np.arange(Q), np.diff(exclude.indptr))  # excluded (row, item)
            keep = exclude.data != 0
            rows, cells = rows[keep], self._cells()[exclude.indices[keep]]
            probed = (Iq[rows] == cells[:, None]).any(axis=1)  # excluded item in a probed cell
            n_ex = np.bincount(rows[probed], minlength=Q)  # (Q,) what the search may return
            order = np.argsort(n_ex, kind="stable")
            for c0 in range(0, Q, self.query_chunk):
                qs = order[c0 : c0 + self.query_chunk]
                kk = min(k + int(n_ex[qs].max()), self.N)
                d, i = self.index.search_preassigned(xq[qs], kk, Iq[qs], Dq[qs])  # (c, kk)
                i[_member(i, exclude[qs])] = -1  # excluded -> pad, then pads go last
                first = np.argsort(i < 0, axis=1, kind="stable")[:, :k]  # (c, k)
                D[qs], I[qs] = _pad(np.take_along_axis(d, first, axis=1),
                                    np.take_along_axis(i, first, axis=1))
        return D, I


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
        import faiss

        index = faiss.IndexHNSWFlat(xb.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(xb)
        return index

    def _params(self, kk):
        import faiss

        return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, kk))


RETRIEVERS: dict[str, type[Retriever]] = {
    "exact": ExactRetriever,
    "flat": FaissFlatRetriever,
    "ivf": FaissIVFRetriever,
    "hnsw": FaissHNSWRetriever,
}


def make_retriever(name: str, **params) -> Retriever:
    """Retriever by name (``exact``, ``flat``, ``ivf``, ``hnsw``) with its parameters."""
    if name not in RETRIEVERS:
        raise ConfigError(
            f"retriever {name!r} is unknown: valid names are {sorted(RETRIEVERS)}. "
            "Fix: pick one of them."
        )
    cls = RETRIEVERS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"retriever {name!r} got unknown parameters {unknown}: it takes {valid}. "
            "Fix: drop or rename them."
        )
    return cls(**params)


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
