"""Exact top-k by inner product: BLAS scores in cache-sized pieces, pruned selection.

    retriever = ExactRetriever().build(xb)
    D, I = retriever.search(xq, k=20, exclude=seen)
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from recsys.errors import ConfigError
from recsys.retrieval.base import Retriever, _pad, _sort_rows
from recsys.retrieval.keys import csr_rows

__all__ = ["ExactRetriever", "topk_block"]

logger = logging.getLogger(__name__)

_BLAS: list[ThreadpoolController] = []  # one controller per process: building one inspects every loaded library


def _blas() -> ThreadpoolController:
    """The process's threadpoolctl controller (created once; ~1 ms each time otherwise)."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def _first_k(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, q: int, k: int):
    """The final selection of both kernels: candidates (rows, cols, vals) -> D, I (q, k) with
    each row's k best by score desc, ties by smaller id; None when a row has fewer than k."""
    order = np.lexsort((cols, -vals, rows))  # by row, then score desc, then id asc
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(rows, np.arange(q))  # (q,) first candidate of each row
    keep = np.arange(rows.size) - start[rows] < k  # the first k of each row
    if keep.sum() != q * k:
        return None
    return vals[keep].reshape(q, k), cols[keep].reshape(q, k)


def topk_block(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
    out = None if rows is None or rows.size > 16 * q * k else _first_k(rows, cols, vals, q, k)
    if out is None:  # ties: argpartition, few rows at a time
        D, I = np.empty((q, k), S.dtype), np.empty((q, k), np.int64)
        g = max(1, 2**24 // n)  # rows per step: argpartition's index array is (g, n) int64
        for r in range(0, q, g):
            part = np.argpartition(S[r : r + g], n - k, axis=1)[:, n - k :]  # (g, k)
            Sr = np.take_along_axis(S[r : r + g], part, axis=1)
            D[r : r + g], I[r : r + g] = _sort_rows(Sr, part, k)
        return D, I
    return out


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
    items fall back to ``topk_block`` on whole rows).
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

    def _pool(self, workers: int) -> ThreadPoolExecutor:
        """The retriever's worker threads, started on the first parallel search and reused
        (starting a pool costs ~3-5 ms, a hard-negative miner searches every step)."""
        n, pool = getattr(self, "_executor", (0, None))
        if n != workers:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="recsys-exact")
            self._executor = (workers, pool)
        return pool

    def _search(self, xq, k, exclude):
        Q, N = xq.shape[0], self.N
        ctl = _blas()
        blas = [i["num_threads"] for i in ctl.info() if i.get("user_api") == "blas"]
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
            ex = csr_rows(exclude, q0, q1) if exclude is not None else None
            if getattr(local, "buf", None) is None:
                local.buf = np.empty(qc * width, dtype=np.float32)
            D[q0:q1], I[q0:q1] = _pad(*_select(xq[q0:q1], self.xb, k, ic, w, ex, local.buf))

        starts = range(0, Q, qc)
        with ctl.limit(limits=1, user_api="blas"):
            if workers == 1 or len(starts) == 1:
                for q0 in starts:
                    work(q0)
            else:
                list(self._pool(workers).map(work, starts))  # list(): re-raise a worker's exception
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
    finite scores: t = -inf) -> ``topk_block`` on the whole rows, recomputed (rare).
    """
    q, N = xq.shape[0], xb.shape[0]
    bpc, C = ic // w, -(-N // ic)  # blocks per chunk, chunks
    B = C * bpc
    G = -(-k // bpc)  # chunks of the first group: >= k blocks

    def full_rows():  # (q, N) scores with the exclusions, for small or degenerate cases
        S = xq @ xb.T
        if ex is not None:
            S[ex[0], ex[1]] = -np.inf
        return topk_block(S, k)

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
    out = _first_k(rows, cols, vals, q, k)
    return full_rows() if out is None else out  # None: a row with fewer than k candidates (be safe)
