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
    users = df["user"].to_numpy()
    order = _lexsort_by_user(rng.random(len(df)), users)
    if users.dtype.kind in "iu":  # the rows of a user are one run of the sorted order
        n, pos = _run_sizes(users[order])
        d = None
    else:
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
    if d is None:
        return tuple(df.iloc[order[part == p]].reset_index(drop=True) for p in range(3))  # type: ignore[return-value]
    return tuple(d[part == p].reset_index(drop=True) for p in range(3))  # type: ignore[return-value]


def _lexsort_by_user(rand: np.ndarray, users: np.ndarray) -> np.ndarray:
    """``np.lexsort((rand, users))``: rows by user, then by ``rand``, ties by position.

    For integer users (a 10M-row log: ~2 s against ~4 s) the same permutation from two
    plain sorts: the stable rank of ``rand`` (any sort is stable when ``rand`` has no ties),
    then the unique keys ``user * n + rank``, for which any sort is the stable one.
    """
    n = len(users)
    if users.dtype.kind not in "iu" or n == 0:
        return np.lexsort((rand, users))
    lo = users.min()
    if (int(users.max()) - int(lo) + 1) * n >= 2**63:
        return np.lexsort((rand, users))
    by_rand = np.argsort(rand)
    s = rand[by_rand]
    if (s[1:] == s[:-1]).any():
        by_rand = np.argsort(rand, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_rand] = np.arange(n, dtype=np.int64)
    offset = (users - lo) if users.dtype.itemsize == 8 else users.astype(np.int64) - int(lo)  # in [0, max - min]
    return np.argsort(offset.astype(np.int64, copy=False) * n + rank)


def _run_sizes(sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(size of its run, position in its run) of every element of an array whose equal
    values are contiguous: ``groupby(sort=False)`` ``transform("size")`` and ``cumcount()``."""
    n = len(sorted_ids)
    start = np.flatnonzero(np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]]))
    size = np.diff(np.append(start, n))
    return np.repeat(size, size), np.arange(n, dtype=np.int64) - np.repeat(start, size)


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


def split_users(
    df: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0, fold_in: float = 0.8
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Hold out whole users (strong generalisation; Marlin 2004, Liang et al. WWW 2018).

    A seeded ``valid_frac`` / ``test_frac`` share of users is held out of training. Each
    held-out user's rows are split at random into ``fold_in`` input rows (the history the
    query is built from at evaluation; never trained on) and the rest (the targets, in valid
    or test); users with fewer than 2 rows are kept in train. Returns (train, valid, test,
    inputs).
    """
    _check_fracs("users", valid_frac, test_frac)
    rng = np.random.default_rng(seed)
    users = np.unique(df["user"].to_numpy())
    perm = rng.permutation(users)
    n_va, n_te = int(round(valid_frac * len(users))), int(round(test_frac * len(users)))
    role = pd.Series(0, index=users)
    role[perm[:n_va]] = 1
    role[perm[n_va:n_va + n_te]] = 2
    r = role.reindex(df["user"].to_numpy()).to_numpy()
    n = df.groupby("user")["user"].transform("size").to_numpy()
    r = np.where(n < 2, 0, r)
    held = df[r > 0].reset_index(drop=True)
    rh = r[r > 0]
    order = np.lexsort((rng.random(len(held)), held["user"].to_numpy()))
    held, rh = held.iloc[order].reset_index(drop=True), rh[order]
    pos = held.groupby("user", sort=False).cumcount().to_numpy()
    nh = held.groupby("user", sort=False)["user"].transform("size").to_numpy()
    n_in = np.clip(np.floor(fold_in * nh).astype(np.int64), 1, nh - 1)
    is_input = pos < n_in
    train = df[r == 0].reset_index(drop=True)
    inputs = held[is_input].reset_index(drop=True)
    valid = held[~is_input & (rh == 1)].reset_index(drop=True)
    test = held[~is_input & (rh == 2)].reset_index(drop=True)
    return train, valid, test, inputs


def split_items(
    df: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0, cold_valid: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Hold out whole items (item cold-start; Volkovs et al., NeurIPS 2017, "DropoutNet").

    A seeded ``test_frac`` share of the items is cold: every row of those items is test (and
    only the rows of users who keep train rows). Validation is a per-user random
    ``valid_frac`` of the warm rows (model selection on warm items), or with ``cold_valid`` a
    second seeded ``valid_frac`` share of the items, held out like the test items (model
    selection on cold items: warm validation does not track cold-start quality).
    ``evaluate --split cold_items`` ranks the cold test items only.
    """
    _check_fracs("items", valid_frac, test_frac)
    rng = np.random.default_rng(seed)
    items = np.unique(df["item"].to_numpy())
    perm = rng.permutation(items)
    n_te = int(round(test_frac * len(items)))
    is_cold = df["item"].isin(perm[:n_te]).to_numpy()
    if cold_valid:
        is_vcold = df["item"].isin(perm[n_te:n_te + int(round(valid_frac * len(items)))]).to_numpy()
        train = df[~is_cold & ~is_vcold].reset_index(drop=True)
        valid = df[is_vcold]
        valid = valid[valid["user"].isin(set(train["user"].unique()))].reset_index(drop=True)
    else:
        warm = df[~is_cold].reset_index(drop=True)
        train, valid, _ = split_random(warm, (1.0 - valid_frac, valid_frac, 0.0), seed=seed)
    test = df[is_cold]
    test = test[test["user"].isin(set(train["user"].unique()))]
    return train, valid, test.reset_index(drop=True)


def _check_fracs(kind: str, valid_frac: float, test_frac: float) -> None:
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise ConfigError(f"split kind={kind!r} valid={valid_frac}, test={test_frac}: need two shares in [0, 1) "
                          "with valid + test < 1. Fix: e.g. valid: 0.1, test: 0.1.")


SPLITS = {"random": split_random, "leave_last_out": split_leave_last_out, "global_time": split_global_time,
          "time": split_global_time, "users": split_users, "items": split_items}


def make_split(df: pd.DataFrame, how: str = "random", seed: int = 0, valid: float = 0.1, test: float = 0.1,
               cold_valid: bool = False):
    """Dispatch by name: ``random`` (seeded per-user shares), ``leave_last_out`` (by time),
    ``time`` / ``global_time`` (one global time cut), ``users`` (whole users held out; returns
    a 4th frame, their input rows), ``items`` (whole items held out). ``valid`` / ``test``
    are the shares (of each user's rows, of all rows by time, of users or of items);
    ``cold_valid`` (``items`` only): validation is held-out items too."""
    if how not in SPLITS:
        raise ConfigError(f"split='{how}' is unknown; valid: {sorted(SPLITS)}. Fix: pick one of them.")
    if cold_valid and how != "items":
        raise ConfigError(f"cold_valid=true with split {how!r}: only split kind 'items' holds out validation items. "
                          "Fix: use kind: items, or drop cold_valid.")
    if how == "random":
        return split_random(df, (1.0 - valid - test, valid, test), seed=seed)
    if how in ("time", "global_time"):
        return split_global_time(df, valid, test)
    if how == "items":
        return split_items(df, valid, test, seed=seed, cold_valid=cold_valid)
    if how == "users":
        return split_users(df, valid, test, seed=seed)
    return split_leave_last_out(df)
