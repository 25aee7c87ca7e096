"""Plain-array numeric helpers shared by the data statistics and the metrics (numpy only)."""

from __future__ import annotations

import numpy as np

from recsys.errors import DataError

__all__ = ["gini", "inverse_propensity"]


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values ``x`` (0 = equal, (n-1)/n = one takes all).

    G = sum_i (2 i - n - 1) x_(i) / (n sum x) with x sorted ascending, i = 1..n.
    NaN when ``sum x == 0`` (no exposure at all).
    """
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def inverse_propensity(label_counts: np.ndarray, n_train: int, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """(N,) w_l = 1 / p_l = 1 + C (N_l + B)^-A with C = (log n_train - 1)(B + 1)^A (Jain et al.
    2016): ``label_counts`` (N,) train documents per label N_l, ``n_train`` train documents.
    A, B as the Extreme Classification Repository sets them per dataset: 0.55 / 1.5 by default
    (Bibtex, Delicious, EURLex, ...), 0.5 / 0.4 for Wikipedia, 0.6 / 2.6 for Amazon."""
    counts = np.asarray(label_counts, dtype=np.float64)
    if n_train < 1 or counts.ndim != 1 or (counts < 0).any():
        raise DataError(f"label_counts of shape {counts.shape} and n_train={n_train}: need (N,) non-negative "
                        "counts and n_train >= 1. Fix: pass the train label matrix's column sums and row count.")
    C = (np.log(n_train) - 1.0) * (B + 1.0) ** A
    return 1.0 + C * (counts + B) ** (-A)
