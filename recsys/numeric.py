"""Plain-array numeric helpers shared by the data statistics and the metrics (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["gini"]


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
