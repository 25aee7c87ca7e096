"""Implicit conversion and the iterative k-core filter (pandas)."""

from __future__ import annotations

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
    ``DataError`` when nothing is left.
    """
    while True:
        n = len(df)
        if k_item > 1:
            ic = df["item"].map(df["item"].value_counts())
            df = df[ic >= k_item]
        if k_user > 1:
            uc = df["user"].map(df["user"].value_counts())
            df = df[uc >= k_user]
        if len(df) == n:
            break
    if df.empty:
        raise DataError(
            f"{source}: empty after the {k_user}-core (users) / {k_item}-core (items) filter. "
            "Fix: lower k_user / k_item or use a larger dataset."
        )
    return df.reset_index(drop=True)
