"""MovieLens files: ratings (``ratings.dat`` of ML-1M / ML-10M, ``u.data`` of ML-100k) and
the side files (``movies.dat``, ``users.dat``, ``u.item``, ``u.user``).

    df = read_movielens("ml-1m/ratings.dat")      # or ml-100k/u.data, plain or .gz
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.io import RECOPY, PathLike, call_reader, data_error, first_true, is_gzip, open_text, require_file
from recsys.data.validation import CANONICAL, ID_COLUMNS, validate_interactions

__all__ = ["ML100K_GENRES", "read_movielens", "read_ml100k_items", "read_ml100k_users", "read_ml1m_movies",
           "read_ml1m_users"]

# Genre flag columns of ml-100k/u.item, in the order of u.genre.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def read_movielens(path: PathLike, dedupe: str | None = None) -> pd.DataFrame:
    """Read MovieLens ratings: ``UserID::MovieID::Rating[::Timestamp]`` or ML-100k ``u.data``.

    The layout is detected from the first line: ``::``-separated (ML-1M / ML-10M
    ``ratings.dat``, with 3 or 4 fields) or tab-separated (ML-100k ``u.data``, ``u1.base``, ...
    ``user\\titem\\trating\\ttime``). Plain or gzip. Ids are int64, rating float32, time int64
    (only when the file has a timestamp field). ML-1M (1,000,209 rows) loads in well under a
    second: ``::`` files are split on ``:`` by pandas' C engine, keeping fields 0, 2, 4, 6.
    """
    p = require_file(path)
    first = call_reader(p, "MovieLens ratings", lambda: _read_first_line(p))
    sep = ":" if "::" in first else "\t"
    n = first.count("::") + 1 if sep == ":" else first.count("\t") + 1
    if n not in (3, 4):
        raise data_error(p, f"first line {first[:80]!r} is not a MovieLens ratings line; expected "
                   "UserID::MovieID::Rating[::Timestamp] or user<TAB>item<TAB>rating[<TAB>time]",
                   "point at ratings.dat / u.data, or use read_interactions for CSV/TSV files "
                   "with a header")
    # No usecols: with it, pandas silently drops extra fields instead of raising.
    df = call_reader(p, "MovieLens ratings", lambda: pd.read_csv(
        p, sep=sep, header=None, engine="c", compression="gzip" if is_gzip(p) else None))
    keep = list(range(0, 2 * n - 1, 2)) if sep == ":" else list(range(n))
    gaps = [c for c in df.columns if c not in keep]  # the empty field between the ':' of '::'
    n_bad, i = first_true(df[gaps].notna().any(axis=1)) if gaps else (0, 0)
    if df.shape[1] != keep[-1] + 1 or n_bad:
        raise data_error(p, f"{n_bad or 'some'} lines do not have the {n} fields of line 1 (first "
                   f"at row {i})", "make every line UserID::MovieID::Rating[::Timestamp] (or "
                   "tab-separated) with the same number of fields")
    df = df[keep].set_axis(list(CANONICAL[:n]), axis=1)
    out = validate_interactions(df, str(p), dedupe=dedupe)
    for c in ID_COLUMNS:  # a non-numeric id makes the column str: MovieLens ids are integers
        if out[c].dtype != np.int64:
            n_bad, i = first_true(pd.to_numeric(out[c], errors="coerce").isna())
            raise data_error(p, f"column '{c}' has {n_bad} non-integer ids (first at row {i}: {out[c].iloc[i]!r}); "
                       "MovieLens ids are integers", f"check that this is a MovieLens ratings file, or {RECOPY}")
    return out


def _read_first_line(p: Path) -> str:
    with open_text(p) as f:
        return f.readline().rstrip("\r\n")


def _read_side(p: Path, what: str, sep: str, names: list[str], int_cols: list[str]) -> pd.DataFrame:
    """Read a header-less latin-1 side file with exactly ``len(names)`` fields per line.

    Every field is read as str; ``int_cols`` are then converted to int64, and the first
    column (the id) must be unique.
    """
    df = call_reader(p, what, lambda: pd.read_csv(
        p, sep=sep, header=None, encoding="latin-1", quoting=csv.QUOTE_NONE, dtype=str,
        engine="c" if len(sep) == 1 else "python", keep_default_na=False,
        compression="gzip" if is_gzip(p) else None))
    if df.shape[1] != len(names):
        raise data_error(p, f"has {df.shape[1]} fields per line (separator {sep!r}); {what} has "
                   f"{len(names)}", f"check that this is the {what} file")
    n, i = first_true(df.isna().any(axis=1))  # missing fields (empty ones read as "")
    if n:
        raise data_error(p, f"{n} lines have fewer than the {len(names)} fields of {what} (first at row {i})",
                   f"check that this is the {what} file, or {RECOPY}")
    df.columns = names
    for c in int_cols:
        num = pd.to_numeric(df[c], errors="coerce")
        n, i = first_true(num.isna() | (num != np.floor(num)))
        if n:
            raise data_error(p, f"field '{c}' must be an integer but {n} rows are not (first at row "
                       f"{i}: {df[c].iloc[i]!r})", f"check that this is the {what} file, or "
                       f"{RECOPY}")
        df[c] = num.astype("int64")
    n, i = first_true(df[names[0]].duplicated())
    if n:
        raise data_error(p, f"{n} duplicate {names[0]} ids (first at row {i}: {df[names[0]].iloc[i]}); "
                   f"each {names[0]} must appear once", RECOPY)
    return df


def read_ml100k_items(path: PathLike) -> pd.DataFrame:
    """Read ML-100k ``u.item`` (latin-1, ``|``-separated).

    Returns columns ``item`` (int64), ``title`` (str), ``genres`` (str: the genre names whose
    flag is 1, ``|``-joined in u.genre order, e.g. "Animation|Children's|Comedy"; the same
    form as ML-1M movies.dat), then the 19 genre flags as int8 columns named by genre
    (``ML100K_GENRES``). Release dates and IMDb URLs are dropped.
    """
    p = require_file(path)
    names = ["item", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
    df = _read_side(p, "ML-100k u.item", "|", names, ["item", *ML100K_GENRES])
    flags = df[list(ML100K_GENRES)]
    n, i = first_true(~flags.isin([0, 1]).all(axis=1))
    if n:
        raise data_error(p, f"{n} rows have genre flags other than 0/1 (first at row {i})",
                   "re-copy the original u.item (latin-1, 24 '|'-separated fields)")
    genre_names = np.array(ML100K_GENRES, dtype=object)
    out = df[["item", "title"]].copy()
    out["genres"] = ["|".join(genre_names[row]) for row in flags.to_numpy(dtype=bool)]
    out[list(ML100K_GENRES)] = flags.astype("int8")
    return out


def read_ml100k_users(path: PathLike) -> pd.DataFrame:
    """Read ML-100k ``u.user``: user (int64), age (int64), gender, occupation, zip (str)."""
    names = ["user", "age", "gender", "occupation", "zip"]
    return _read_side(require_file(path), "ML-100k u.user", "|", names, ["user", "age"])


def read_ml1m_movies(path: PathLike) -> pd.DataFrame:
    """Read ML-1M ``movies.dat`` (latin-1, split on ``::`` only; titles contain ':' and ',').

    Returns columns item (int64), title (str), genres (str, ``|``-joined as in the file).
    """
    names = ["item", "title", "genres"]
    return _read_side(require_file(path), "ML-1M movies.dat", "::", names, ["item"])


def read_ml1m_users(path: PathLike) -> pd.DataFrame:
    """Read ML-1M ``users.dat``: user (int64), gender (str), age (int64 code), occupation
    (int64 code), zip (str)."""
    names = ["user", "gender", "age", "occupation", "zip"]
    return _read_side(require_file(path), "ML-1M users.dat", "::", names,
                      ["user", "age", "occupation"])
