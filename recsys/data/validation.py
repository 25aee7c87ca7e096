"""Validation of an interaction frame into the canonical form every reader returns::

    user    int64 (numeric ids) or str (raw string ids, kept as read)
    item    same rule as user
    rating  float32, optional (present when the file has one)
    time    int64 unix seconds, optional

in that order and nothing else. Every bad input raises ``recsys.errors.DataError`` whose
message names the file, the problem and the fix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.data.io import data_error, first_true
from recsys.errors import ConfigError

__all__ = ["CANONICAL", "ID_COLUMNS", "validate_interactions"]

CANONICAL = ("user", "item", "rating", "time")  # column order of the interaction frame
ID_COLUMNS = ("user", "item")
DEDUPE_CHOICES = (None, "first", "last")


def _scalar(v: object) -> object:
    """A numpy scalar as the python value (for readable messages)."""
    return v.item() if isinstance(v, np.generic) else v


def clean_ids(s: pd.Series, source: str, name: str) -> pd.Series:
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    missing = s.isna() if numeric else s.isna() | (s.astype(str).str.strip() == "")
    n, i = first_true(missing)
    if n:
        raise data_error(source, f"column '{name}' has {n} missing or empty ids (first at row {i}, "
                   f"counting data rows from 0); every interaction needs a {name} id",
                   f"drop those rows (df.dropna(subset=['{name}'])) or fill them before loading")
    if pd.api.types.is_float_dtype(s):
        n, i = first_true(s != np.floor(s))
        if n:
            raise data_error(source, f"column '{name}' has {n} non-integer numeric ids (first at row "
                       f"{i}: {s.iloc[i]!r}); ids must be integers or strings",
                       "convert the ids to integers or read them as strings")
        # a float holds every integer exactly only up to 2**53 (and int64 stops at 2**63): larger
        # or infinite values (e.g. '1e101' in a text file) are not ids
        n, i = first_true(~np.isfinite(s) | (s.abs() > 2.0**53))
        if n:
            raise data_error(source, f"column '{name}' has {n} numeric ids beyond +-2**53 or infinite (first "
                       f"at row {i}: {s.iloc[i]!r}); numeric ids must be exact integers",
                       "write the ids as integers (not in exponent notation) or read them as strings")
    if numeric:
        return s.astype("int64")
    return s.astype(str)  # raw string ids (mixed python objects become their str())


def _to_number(s: pd.Series, source: str, name: str, need: str) -> pd.Series:
    """Numeric view of ``s``; raise on non-numeric, missing or infinite values."""
    num = s if pd.api.types.is_numeric_dtype(s) else pd.to_numeric(s, errors="coerce")
    n, i = first_true(num.isna() & s.notna())
    if n:
        raise data_error(source, f"column '{name}' has {n} non-numeric values (first at row {i}: "
                   f"{s.iloc[i]!r}); {need}", "clean or convert that column before loading")
    n, i = first_true(num.isna() | np.isinf(num.astype("float64")))
    if n:
        raise data_error(source, f"column '{name}' has {n} NaN or infinite values (first at row {i}); "
                   f"{need}", "drop or fill those rows before loading")
    return num


def _clean_time(s: pd.Series, source: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s):
        n, i = first_true(s.isna())
        if n:
            raise data_error(source, f"column 'time' has {n} missing timestamps (first at row {i}); "
                       "the time column must be non-missing", "drop or fill those rows")
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return ((s - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).astype("int64")
    need = "the time column must hold unix seconds (or datetimes)"
    return np.floor(_to_number(s, source, "time", need)).astype("int64")


def validate_interactions(
    df: pd.DataFrame, source: str, dedupe: str | None = None
) -> pd.DataFrame:
    """Check an interaction frame and return it in canonical form.

    Args:
        df: frame with at least ``user`` and ``item`` columns (canonical names); ``rating``
            and ``time`` are kept when present, every other column is dropped.
        source: the file (or description) named in error messages.
        dedupe: what to do with duplicate (user, item[, time]) rows: None raises, "first" /
            "last" keep one of each group.

    Returns:
        A new frame ``[user, item, (rating), (time)]`` with a fresh RangeIndex: integer ids as
        int64 (integral floats are converted), other ids as str; rating float32 (numeric,
        finite, >= 0); time int64 unix seconds (datetimes are converted).

    Raises:
        DataError: missing id columns, zero rows, missing/empty ids, non-integer numeric ids,
            non-numeric / NaN / negative ratings, bad timestamps, duplicates (dedupe=None).
    """
    if dedupe not in DEDUPE_CHOICES:
        raise ConfigError(f"dedupe={dedupe!r}: must be one of {DEDUPE_CHOICES}. Fix: pass None "
                          "(raise on duplicates), 'first' or 'last'.")
    if not isinstance(df, pd.DataFrame):
        raise data_error(source, f"expected a pandas DataFrame, got {type(df).__name__}",
                   "pass a DataFrame with user and item columns")
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:
        raise data_error(source, f"missing column(s) {missing}; columns present: {list(df.columns)}; "
                   "user and item columns are required", "rename your columns to user/item or "
                   "pass columns={'user': ..., 'item': ...}")
    out = df[[c for c in CANONICAL if c in df.columns]].reset_index(drop=True)
    if len(out) == 0:
        raise data_error(source, "has zero interaction rows; at least one is required", "check that "
                   "the file holds data rows below its header and that nothing upstream "
                   "removed them")
    for name in ID_COLUMNS:
        out[name] = clean_ids(out[name], source, name)
    if "rating" in out:
        need = "the rating column must be numeric and non-missing"
        rating = _to_number(out["rating"], source, "rating", need)
        n, i = first_true(rating < 0)
        if n:
            raise data_error(source, f"column 'rating' has {n} negative values (first at row {i}: "
                       f"{rating.iloc[i]}); ratings must be >= 0", "drop those rows or shift "
                       "the scale to start at 0 before loading")
        out["rating"] = rating.astype("float32")
    if "time" in out:
        out["time"] = _clean_time(out["time"], source)
    key = [c for c in ("user", "item", "time") if c in out]
    n, i = first_true(out.duplicated(key, keep="first"))
    if n and dedupe is None:
        row = ", ".join(f"{c}={_scalar(out[c].iloc[i])!r}" for c in key)
        raise data_error(source, f"{n} duplicate ({', '.join(key)}) rows (first repeat at row {i}: "
                   f"{row}); each interaction must appear once", "pass dedupe='last' (or "
                   f"'first') to keep one of each, or run df.drop_duplicates(subset={key}) "
                   "before loading")
    if n:
        out = out.drop_duplicates(key, keep=dedupe).reset_index(drop=True)
    return out
