"""Train / validation / test splits over an encoded interaction frame.

Each split function takes a frame with integer ``user`` and ``item`` (and ``time`` where
needed) and returns three frames. All are deterministic given their arguments.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.errors import ConfigError, DataError


def split_random(
    df: pd.DataFrame, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-user random split (RecBole's ``RS`` ordering with ``group_by=user``).

    Each user's rows are shuffled with ``seed``; validation and test get
    ``floor(ratio * n)`` rows each (at least one when the user has >= 3 rows, as RecBole
    rounds fractional counts below one up), train keeps the rest, so every user with
    held-out rows also has train rows.
    """
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6 or min(ratios) < 0:
        raise ConfigError(
            f"split ratios={ratios}: need three non-negative numbers summing to 1. "
            "Fix: e.g. ratios=(0.8, 0.1, 0.1)."
        )
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(df)), df["user"].to_numpy()))
    d = df.iloc[order].reset_index(drop=True)
    n = d.groupby("user", sort=False)["user"].transform("size").to_numpy()
    pos = d.groupby("user", sort=False).cumcount().to_numpy()
    n_valid = np.floor(ratios[1] * n).astype(np.int64)
    n_test = np.floor(ratios[2] * n).astype(np.int64)
    # RecBole: a fractional count in (0, 1) becomes 1 while train keeps > 1 row.
    n_test = np.where((n_test == 0) & (ratios[2] * n > 0) & (n - n_valid - 1 > 1), 1, n_test)
    n_valid = np.where((n_valid == 0) & (ratios[1] * n > 0) & (n - n_test - 1 > 1), 1, n_valid)
    n_train = n - n_valid - n_test
    part = np.where(pos < n_train, 0, np.where(pos < n_train + n_valid, 1, 2))
    return tuple(d[part == p].reset_index(drop=True) for p in range(3))  # type: ignore[return-value]


def split_leave_last_out(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per user, by ``time``: last row -> test, second last -> validation, rest -> train.

    Users with fewer than 3 rows keep everything in train.
    """
    _need_time(df, "leave_last_out")
    d = df.sort_values(["user", "time", "item"], kind="stable").reset_index(drop=True)
    n = d.groupby("user")["user"].transform("size").to_numpy()
    rank_from_end = n - 1 - d.groupby("user").cumcount().to_numpy()
    part = np.where(n < 3, 0, np.where(rank_from_end == 0, 2, np.where(rank_from_end == 1, 1, 0)))
    return tuple(d[part == p].reset_index(drop=True) for p in range(3))  # type: ignore[return-value]


def split_global_time(
    df: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Global time cut: the last ``test_frac`` of rows by time -> test, the
    ``valid_frac`` before it -> validation. Held-out users without train rows are dropped
    from the held-out parts (they cannot be queried by a user-history model).
    """
    _need_time(df, "global_time")
    t = df["time"].to_numpy()
    t_valid, t_test = np.quantile(t, [1 - valid_frac - test_frac, 1 - test_frac])
    train = df[t < t_valid]
    valid = df[(t >= t_valid) & (t < t_test)]
    test = df[t >= t_test]
    known = set(train["user"].unique())
    valid = valid[valid["user"].isin(known)]
    test = test[test["user"].isin(known)]
    return train.reset_index(drop=True), valid.reset_index(drop=True), test.reset_index(drop=True)


def _need_time(df: pd.DataFrame, name: str) -> None:
    if "time" not in df.columns:
        raise DataError(
            f"split '{name}' needs a 'time' column, found {list(df.columns)}. Fix: load data "
            "with timestamps (e.g. ML-100k u.data) or use split='random'."
        )


SPLITS = {"random": split_random, "leave_last_out": split_leave_last_out, "global_time": split_global_time}


def make_split(df: pd.DataFrame, how: str = "random", seed: int = 0):
    """Dispatch by name: ``random`` (seeded), ``leave_last_out``, ``global_time``."""
    if how not in SPLITS:
        raise ConfigError(f"split='{how}' is unknown; valid: {sorted(SPLITS)}. Fix: pick one of them.")
    return split_random(df, seed=seed) if how == "random" else SPLITS[how](df)
