"""Explicit-rating factors: a biased matrix factorisation of the train ratings, fitted by
alternating least squares, for the rating correction of the preference stage.

The retrieval towers are trained on what a user watched (the positives), so nothing in them
tells a watched-and-loved film from a watched-and-hated one. A rating model does: r(u, i) ~
mu + b_u + b_i + p_u . q_i (Koren, Bell and Volinsky, IEEE Computer 2009, "Matrix
Factorization Techniques for Recommender Systems"), fitted on the user's train ratings, low
ones included. Its ranking part, p_u . q_i + b_i (mu and b_u are the same for every item of a
user), is one more inner product, so it rides beside the retrieval embeddings as extra
coordinates (``QueryTower`` / ``ItemTower`` ``rating_dim``): FAISS, export and ``recommend``
serve it unchanged, with the weight ``TwoTowerModule`` chooses on validation.

Plain arrays in, plain arrays out (no torch): each sweep solves every user's and every item's
regularised least-squares problem in closed form, the regulariser scaled by the row's number
of ratings (ALS-WR: Zhou et al., AAIM 2008, "Large-scale Parallel Collaborative Filtering for
the Netflix Prize").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.errors import ConfigError, DataError

__all__ = ["RatingFactors", "fit_rating_mf"]


@dataclass
class RatingFactors:
    """A fitted biased MF: r(u, i) ~ mean + user_bias[u] + item_bias[i] + user[u] . item[i]."""

    user: np.ndarray  # (U, k) float32
    item: np.ndarray  # (N, k) float32
    user_bias: np.ndarray  # (U,) float32
    item_bias: np.ndarray  # (N,) float32
    mean: float

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(P,) predicted ratings of the pairs (users[p], items[p])."""
        return (self.mean + self.user_bias[users] + self.item_bias[items]
                + np.einsum("pk,pk->p", self.user[users], self.item[items]))


def _solve_rows(M: sp.csr_matrix, X: np.ndarray, y: sp.csr_matrix, reg: float, block: int = 16384) -> np.ndarray:
    """(R, k') argmin_w ||y_r - X_{I(r)} w||^2 + reg * n_r * ||w||^2 for every row r of the
    (R, C) pattern ``M``, X (C, k') the other side's features, ``y`` (R, C) the targets on M's
    pattern. Gram matrices G_r = sum_{c in I(r)} x_c x_c^T as M @ (x_c outer x_c), in row blocks."""
    k = X.shape[1]
    # (C, k'^2) in float32: the sparse product is the sweep's cost, twice as fast as in float64; each
    # Gram matrix sums ~100 outer products, far from float32's precision; the solves are float64
    outer = np.einsum("ci,cj->cij", X, X).reshape(len(X), k * k).astype(np.float32)
    n = np.diff(M.indptr).astype(np.float64)  # (R,) ratings per row
    out = np.zeros((M.shape[0], k), np.float64)
    eye = np.eye(k)
    for s in range(0, M.shape[0], block):
        e = min(s + block, M.shape[0])
        G = (M[s:e] @ outer).astype(np.float64).reshape(e - s, k, k)  # (b, k', k')
        G += reg * np.maximum(n[s:e], 1)[:, None, None] * eye
        rhs = y[s:e] @ X  # (b, k')
        out[s:e] = np.linalg.solve(G, rhs[..., None])[..., 0]
    return out


def fit_rating_mf(ratings: sp.spmatrix, dim: int = 32, reg: float = 0.05, sweeps: int = 10,
                  seed: int = 0) -> RatingFactors:
    """Biased MF of the explicit ratings ``ratings`` (U, N), its stored entries the observed
    pairs (train pairs only: a held-out rating here would leak), by ``sweeps`` ALS-WR sweeps.

    Args:
        ratings: (U, N) sparse, one stored entry per rated pair (its rating).
        dim: k, the factors per user and item.
        reg: ridge weight per rating (ALS-WR); biases are regularised the same way.
        sweeps: alternating sweeps (users, then items).
        seed: init of the item factors (normal, std 0.1).
    """
    if dim < 1 or sweeps < 1 or reg <= 0:
        raise ConfigError(f"rating factors dim={dim}, sweeps={sweeps}, reg={reg}: need dim >= 1, sweeps >= 1 and "
                          "reg > 0. Fix: e.g. dim 32, sweeps 10, reg 0.05.")
    R = sp.csr_matrix(ratings, dtype=np.float64)
    R.sum_duplicates()
    R.sort_indices()
    if R.nnz == 0 or not np.isfinite(R.data).all():
        raise DataError(f"rating factors: {R.nnz} ratings, all finite: {bool(np.isfinite(R.data).all())}; need at "
                        "least one finite rating. Fix: load the data with its ratings (data.dislike_threshold).")
    coo = R.tocoo()
    rows, cols, vals = coo.row, coo.col, coo.data  # (P,) each, one per rated pair
    mean = float(vals.mean())
    U, N = R.shape
    M = R.astype(np.float32)
    M.data[:] = 1.0
    Mt = M.T.tocsr()
    rng = np.random.default_rng(seed)
    Q, bi = rng.normal(0.0, 0.1, (N, dim)), np.zeros(N)
    P, bu = np.zeros((U, dim)), np.zeros(U)
    ones_u, ones_n = np.ones((U, 1)), np.ones((N, 1))
    for _ in range(sweeps):
        y = sp.csr_matrix((vals - mean - bi[cols], (rows, cols)), shape=R.shape)  # (U, N) target of the users
        w = _solve_rows(M, np.hstack([Q, ones_n]), y, reg)  # (U, k + 1): [p_u, b_u]
        P, bu = w[:, :dim], w[:, dim]
        yt = sp.csr_matrix((vals - mean - bu[rows], (cols, rows)), shape=(N, U))  # (N, U) target of the items
        w = _solve_rows(Mt, np.hstack([P, ones_u]), yt, reg)  # (N, k + 1): [q_i, b_i]
        Q, bi = w[:, :dim], w[:, dim]
    f32 = np.float32
    return RatingFactors(P.astype(f32), Q.astype(f32), bu.astype(f32), bi.astype(f32), mean)
