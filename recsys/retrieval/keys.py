"""Membership of (row, id) pairs in a sparse matrix by flat keys ``row * N + id`` and one
binary search: the one implementation behind the retrievers' exclusion filter and the
metrics' hit matrix (plain numpy, no torch)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["flat_keys", "member", "csr_rows"]


def flat_keys(M: sp.csr_matrix) -> np.ndarray:
    """(nnz',) sorted int64 keys ``row * N + id`` of the stored nonzeros of ``M`` (explicit
    zeros are not members)."""
    M = sp.csr_matrix(M)
    N = M.shape[1]
    rows = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr))
    return np.sort((rows * N + M.indices.astype(np.int64))[M.data != 0])


def member(I: np.ndarray, M: sp.csr_matrix) -> np.ndarray:
    """(q, m) bool: ``I[r, j]`` is a stored nonzero of row r of ``M`` (q, N); -1 pads never are.

    >>> import scipy.sparse as sp
    >>> member(np.array([[2, 0, -1]]), sp.csr_matrix(np.array([[1, 0, 1]])))
    array([[ True,  True, False]])
    """
    I = np.asarray(I, dtype=np.int64)
    N = M.shape[1]
    keys = flat_keys(M)  # (nnz,) flat keys row * N + id
    if keys.size == 0:
        return np.zeros(I.shape, dtype=bool)
    qk = np.arange(I.shape[0], dtype=np.int64)[:, None] * N + I  # (q, m)
    pos = np.minimum(np.searchsorted(keys, qk), keys.size - 1)
    return (keys[pos] == qk) & (I >= 0)


def csr_rows(exclude: sp.csr_matrix, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows local to the chunk, item ids) of the excluded entries of queries q0..q1-1."""
    lo, hi = exclude.indptr[q0], exclude.indptr[q1]
    rows = np.repeat(np.arange(q1 - q0), np.diff(exclude.indptr[q0 : q1 + 1]))
    cols = exclude.indices[lo:hi].astype(np.int64)
    keep = exclude.data[lo:hi] != 0
    return rows[keep], cols[keep]
