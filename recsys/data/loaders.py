"""Readers for interaction files (CSV / TSV / Parquet / MovieLens) and MovieLens side files.

Every interaction reader returns the canonical interaction frame::

    user    int64 (numeric ids) or str (raw string ids, kept as read)
    item    same rule as user
    rating  float32, optional (present when the file has one)
    time    int64 unix seconds, optional

in that order and nothing else, checked by ``validate_interactions``. Every bad input
raises ``recsys.errors.DataError`` whose message names the file, the problem and the fix
("<file>: <problem>. Fix: <fix>"). The Extreme Classification text format is read by
``read_xc`` (defined in ``recsys.data.formats_xc``, re-exported here).

Example::

    df = read_interactions("ratings.csv", columns={"user": "userId", "item": "movieId",
                                                   "rating": "rating", "time": "timestamp"})
    df = read_movielens("ml-1m/ratings.dat")      # or ml-100k/u.data, plain or .gz
"""

from __future__ import annotations

import csv
import gzip
import os
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import pandas as pd

from recsys.data.formats_xc import read_xc
from recsys.errors import ConfigError, DataError

__all__ = [
    "CANONICAL", "ML100K_GENRES", "read_interactions", "validate_interactions",
    "read_movielens", "read_ml100k_items", "read_ml100k_users", "read_ml1m_movies",
    "read_ml1m_users", "read_xc",
]  # fmt: skip

PathLike = str | os.PathLike
T = TypeVar("T")

CANONICAL = ("user", "item", "rating", "time")  # column order of the interaction frame
ID_COLUMNS = ("user", "item")
DEDUPE_CHOICES = (None, "first", "last")
# Genre flag columns of ml-100k/u.item, in the order of u.genre.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # what a truncated/corrupt .gz raises
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_BINARY_MAGIC = {b"PAR1": "a Parquet file", b"PK\x03\x04": "a zip archive"}
_RECOPY = "re-download or re-copy the file"


def _err(source: object, problem: str, fix: str) -> DataError:
    """The project's message shape: '<file or value>: <problem>. Fix: <fix>.'"""
    return DataError(f"{source}: {problem}. Fix: {fix}.")


# ----------------------------------------------------------------------------- file helpers
def require_file(path: PathLike) -> Path:
    """Return ``path`` as a ``Path`` if it is a non-empty regular file, else raise DataError."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise _err(p, f"{what}; a readable data file is required",
                   "check the path, or set RECSYS_DATA to the folder that holds the datasets "
                   "(recsys.data.download.files_hint says which files go where)")
    if p.stat().st_size == 0:
        raise _err(p, "the file is empty (0 bytes); a file with data rows is required", _RECOPY)
    return p


def is_gzip(p: Path) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its suffix)."""
    with open(p, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_text(p: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a plain or gzip-compressed text file for reading."""
    if is_gzip(p):
        return gzip.open(p, "rt", encoding=encoding)
    return open(p, encoding=encoding)


def corrupt_gzip_error(p: Path, exc: BaseException) -> DataError:
    """The DataError for a truncated or corrupt gzip file."""
    return _err(p, f"the gzip data is truncated or corrupt ({type(exc).__name__}: {exc}); a "
                "complete gzip file is required", f"{_RECOPY} (`gzip -t {p.name}` checks it)")


def _call_reader(p: Path, what: str, reader: Callable[[], T]) -> T:
    """Run a reader, turning its decode / parse errors into DataErrors that name the file."""
    try:
        return reader()
    except GZIP_ERRORS as e:
        raise corrupt_gzip_error(p, e) from e
    except UnicodeDecodeError as e:
        raise _err(p, f"is not a text {what} file (undecodable byte at offset {e.start})",
                   "check that it is the file you meant (and pass the right format=), or "
                   f"{_RECOPY} if it is damaged") from e
    except pd.errors.EmptyDataError as e:
        raise _err(p, f"has no data ({e}); a {what} file with rows is required", _RECOPY) from e
    except pd.errors.ParserError as e:
        raise _err(p, f"could not be parsed as {what} ({str(e).strip()})", "check the "
                   "separator and that every line has the same number of fields") from e
    except pd.errors.ParserWarning as e:  # raised by _read_csv_strict
        raise _err(p, f"its lines have more fields than its header ({str(e).strip()})", "check the "
                   "separator and that every line has as many fields as the header") from e


def _first_pos(mask: pd.Series | np.ndarray) -> tuple[int, int]:
    """(how many True, position of the first True) of a boolean mask."""
    arr = np.asarray(mask, dtype=bool)
    return int(arr.sum()), int(arr.argmax()) if arr.size else 0


# ------------------------------------------------------------------------- validation
def _scalar(v: object) -> object:
    """A numpy scalar as the python value (for readable messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _clean_ids(s: pd.Series, source: str, name: str) -> pd.Series:
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    missing = s.isna() if numeric else s.isna() | (s.astype(str).str.strip() == "")
    n, i = _first_pos(missing)
    if n:
        raise _err(source, f"column '{name}' has {n} missing or empty ids (first at row {i}, "
                   f"counting data rows from 0); every interaction needs a {name} id",
                   f"drop those rows (df.dropna(subset=['{name}'])) or fill them before loading")
    if pd.api.types.is_float_dtype(s):
        n, i = _first_pos(s != np.floor(s))
        if n:
            raise _err(source, f"column '{name}' has {n} non-integer numeric ids (first at row "
                       f"{i}: {s.iloc[i]!r}); ids must be integers or strings",
                       "convert the ids to integers or read them as strings")
    if numeric:
        return s.astype("int64")
    return s.astype(str)  # raw string ids (mixed python objects become their str())


def _to_number(s: pd.Series, source: str, name: str, need: str) -> pd.Series:
    """Numeric view of ``s``; raise on non-numeric, missing or infinite values."""
    num = s if pd.api.types.is_numeric_dtype(s) else pd.to_numeric(s, errors="coerce")
    n, i = _first_pos(num.isna() & s.notna())
    if n:
        raise _err(source, f"column '{name}' has {n} non-numeric values (first at row {i}: "
                   f"{s.iloc[i]!r}); {need}", "clean or convert that column before loading")
    n, i = _first_pos(num.isna() | np.isinf(num.astype("float64")))
    if n:
        raise _err(source, f"column '{name}' has {n} NaN or infinite values (first at row {i}); "
                   f"{need}", "drop or fill those rows before loading")
    return num


def _clean_time(s: pd.Series, source: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s):
        n, i = _first_pos(s.isna())
        if n:
            raise _err(source, f"column 'time' has {n} missing timestamps (first at row {i}); "
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
        raise _err(source, f"expected a pandas DataFrame, got {type(df).__name__}",
                   "pass a DataFrame with user and item columns")
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:
        raise _err(source, f"missing column(s) {missing}; columns present: {list(df.columns)}; "
                   "user and item columns are required", "rename your columns to user/item or "
                   "pass columns={'user': ..., 'item': ...}")
    out = df[[c for c in CANONICAL if c in df.columns]].reset_index(drop=True)
    if len(out) == 0:
        raise _err(source, "has zero interaction rows; at least one is required", "check that "
                   "the file holds data rows below its header and that nothing upstream "
                   "removed them")
    for name in ID_COLUMNS:
        out[name] = _clean_ids(out[name], source, name)
    if "rating" in out:
        need = "the rating column must be numeric and non-missing"
        rating = _to_number(out["rating"], source, "rating", need)
        n, i = _first_pos(rating < 0)
        if n:
            raise _err(source, f"column 'rating' has {n} negative values (first at row {i}: "
                       f"{rating.iloc[i]}); ratings must be >= 0", "drop those rows or shift "
                       "the scale to start at 0 before loading")
        out["rating"] = rating.astype("float32")
    if "time" in out:
        out["time"] = _clean_time(out["time"], source)
    key = [c for c in ("user", "item", "time") if c in out]
    n, i = _first_pos(out.duplicated(key, keep="first"))
    if n and dedupe is None:
        row = ", ".join(f"{c}={_scalar(out[c].iloc[i])!r}" for c in key)
        raise _err(source, f"{n} duplicate ({', '.join(key)}) rows (first repeat at row {i}: "
                   f"{row}); each interaction must appear once", "pass dedupe='last' (or "
                   f"'first') to keep one of each, or run df.drop_duplicates(subset={key}) "
                   "before loading")
    if n:
        out = out.drop_duplicates(key, keep=dedupe).reset_index(drop=True)
    return out


# ---------------------------------------------------------------- CSV / TSV / Parquet
def _infer_format(p: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("csv", "tsv", "parquet"):
            raise ConfigError(f"format={fmt!r} for {p}: must be 'csv', 'tsv' or 'parquet'. "
                              "Fix: pass one of those, or None to infer it from the suffix.")
        return fmt
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise _err(p, "cannot infer the format from the suffix; .csv, .tsv, .parquet (text ones "
               "optionally .gz) are recognised", "pass format='csv' / 'tsv' / 'parquet' (and "
               "sep=), or use read_movielens for MovieLens .dat / u.data files")


def _resolve_columns(
    p: Path, available: list[str], columns: dict[str, str | None] | None, sep: str | None
) -> dict[str, str]:
    """canonical name -> file column, for the columns to load."""
    mapping: dict[str, str | None] = {c: c for c in CANONICAL}
    unknown = sorted(set(columns or {}) - set(CANONICAL))
    if unknown:
        raise ConfigError(f"columns={columns!r}: unknown canonical name(s) {unknown}; keys must "
                          f"be among {list(CANONICAL)}. Fix: map canonical name -> column in "
                          "the file, e.g. {'user': 'userId', 'item': 'movieId'}.")
    mapping.update(columns or {})
    wanted = {k: v for k, v in mapping.items() if v is not None}
    absent = {k for k, v in wanted.items() if v not in available}
    needed = [f"{k} -> {wanted[k]!r}" for k in CANONICAL
              if k in absent and (k in ID_COLUMNS or k in (columns or {}))]
    if needed and len(available) == 1:  # most likely the wrong separator
        guesses = [s for s in (",", "\t", ";", "|", "::", " ") if s in available[0]]
        hint = f"pass sep={guesses[0]!r}" if guesses else "pass the file's separator as sep="
        raise _err(p, f"has a single column {available[0]!r} when split on {sep!r}; user and "
                   "item columns are required", f"{hint} (or format=) to match the file")
    if needed:
        raise _err(p, f"mapped column(s) {needed} not found; columns present: {available}",
                   "pass columns={canonical name: column in the file} naming existing columns")
    wanted = {k: v for k, v in wanted.items() if k not in absent}  # optional, not in the file
    if len(set(wanted.values())) != len(wanted):
        raise ConfigError(f"columns={columns!r} for {p}: two canonical names map to the same "
                          "file column. Fix: map user, item, rating, time to different columns.")
    return wanted


def read_interactions(
    path: PathLike,
    columns: dict[str, str | None] | None = None,
    sep: str | None = None,
    format: str | None = None,
    dedupe: str | None = None,
) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet interaction file with a header into the canonical frame.

    Args:
        path: ``.csv``, ``.tsv`` (each optionally ``.gz``; gzip is also detected from the
            content) or ``.parquet`` file.
        columns: canonical name -> column in the file, e.g. ``{"user": "userId", "item":
            "movieId", "rating": "rating", "time": "timestamp"}``. Unmapped canonical names
            default to themselves; rating and time are loaded only if such a column exists
            (map one to None to skip it). Other columns in the file are ignored.
        sep: field separator for text files (default "," for csv, tab for tsv).
        format: "csv", "tsv" or "parquet"; None infers it from the suffix.
        dedupe: None raises on duplicate (user, item[, time]) rows; "first"/"last" keeps one.

    Returns:
        The canonical interaction frame (see ``validate_interactions``).

    Raises:
        DataError: missing/empty/truncated file, wrong format, missing columns, bad values.
    """
    p = require_file(path)
    fmt = _infer_format(p, format)
    with open(p, "rb") as f:
        head = f.read(4)
    if fmt == "parquet":
        if head != b"PAR1":
            raise _err(p, f"is not a Parquet file (it starts with {head!r}, not b'PAR1')",
                       "if it is CSV/TSV, rename it or pass format='csv' (or 'tsv')")
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pyarrow is in the dev extra
            msg = f"{p}: reading Parquet needs pyarrow. Fix: pip install pyarrow."
            raise ImportError(msg) from e
        try:
            wanted = _resolve_columns(p, list(pq.read_schema(p).names), columns, None)
            df = pd.read_parquet(p, columns=list(wanted.values()))
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            if isinstance(e, DataError):
                raise
            raise _err(p, f"is not a valid Parquet file ({e}); it may be truncated",
                       "re-copy or re-export the file") from e
    else:
        if head in _BINARY_MAGIC:
            fix = ("pass format='parquet' or rename it to .parquet" if head == b"PAR1"
                   else "extract it first and read the file inside")
            raise _err(p, f"is {_BINARY_MAGIC[head]}, not a {fmt.upper()} text file", fix)
        sep = sep or ("\t" if fmt == "tsv" else ",")
        opts = dict(sep=sep, compression="gzip" if head[:2] == b"\x1f\x8b" else None,
                    engine="c" if len(sep) == 1 else "python")
        what = fmt.upper()
        header = _call_reader(p, what, lambda: pd.read_csv(p, nrows=0, **opts))
        wanted = _resolve_columns(p, [str(c) for c in header.columns], columns, sep)
        # Every column, not usecols: with usecols pandas silently drops the extra fields of a
        # line longer than the header (shifted columns); see _read_csv_strict.
        df = _call_reader(p, what, lambda: _read_csv_strict(p, opts))[list(wanted.values())]
    df = df.rename(columns={v: k for k, v in wanted.items()})
    return validate_interactions(df, str(p), dedupe=dedupe)


def _read_csv_strict(p: Path, opts: dict) -> pd.DataFrame:
    """``pd.read_csv`` where a line with more fields than the header is an error: pandas
    raises ParserError when some lines are longer, and with ``index_col=False`` warns
    (here: raises ParserWarning) when all are, instead of taking the first field as the index."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(p, index_col=False, **opts)


# -------------------------------------------------------------------------- MovieLens
def read_movielens(path: PathLike, dedupe: str | None = None) -> pd.DataFrame:
    """Read MovieLens ratings: ``UserID::MovieID::Rating[::Timestamp]`` or ML-100k ``u.data``.

    The layout is detected from the first line: ``::``-separated (ML-1M / ML-10M
    ``ratings.dat``, with 3 or 4 fields) or tab-separated (ML-100k ``u.data``, ``u1.base``, ...
    ``user\\titem\\trating\\ttime``). Plain or gzip. Ids are int64, rating float32, time int64
    (only when the file has a timestamp field). ML-1M (1,000,209 rows) loads in well under a
    second: ``::`` files are split on ``:`` by pandas' C engine, keeping fields 0, 2, 4, 6.
    """
    p = require_file(path)
    first = _call_reader(p, "MovieLens ratings", lambda: _read_first_line(p))
    sep = ":" if "::" in first else "\t"
    n = first.count("::") + 1 if sep == ":" else first.count("\t") + 1
    if n not in (3, 4):
        raise _err(p, f"first line {first[:80]!r} is not a MovieLens ratings line; expected "
                   "UserID::MovieID::Rating[::Timestamp] or user<TAB>item<TAB>rating[<TAB>time]",
                   "point at ratings.dat / u.data, or use read_interactions for CSV/TSV files "
                   "with a header")
    # No usecols: with it, pandas silently drops extra fields instead of raising.
    df = _call_reader(p, "MovieLens ratings", lambda: pd.read_csv(
        p, sep=sep, header=None, engine="c", compression="gzip" if is_gzip(p) else None))
    keep = list(range(0, 2 * n - 1, 2)) if sep == ":" else list(range(n))
    gaps = [c for c in df.columns if c not in keep]  # the empty field between the ':' of '::'
    n_bad, i = _first_pos(df[gaps].notna().any(axis=1)) if gaps else (0, 0)
    if df.shape[1] != keep[-1] + 1 or n_bad:
        raise _err(p, f"{n_bad or 'some'} lines do not have the {n} fields of line 1 (first "
                   f"at row {i})", "make every line UserID::MovieID::Rating[::Timestamp] (or "
                   "tab-separated) with the same number of fields")
    df = df[keep].set_axis(list(CANONICAL[:n]), axis=1)
    out = validate_interactions(df, str(p), dedupe=dedupe)
    for c in ID_COLUMNS:  # a non-numeric id makes the column str: MovieLens ids are integers
        if out[c].dtype != np.int64:
            n_bad, i = _first_pos(pd.to_numeric(out[c], errors="coerce").isna())
            raise _err(p, f"column '{c}' has {n_bad} non-integer ids (first at row {i}: {out[c].iloc[i]!r}); "
                       "MovieLens ids are integers", f"check that this is a MovieLens ratings file, or {_RECOPY}")
    return out


def _read_first_line(p: Path) -> str:
    with open_text(p) as f:
        return f.readline().rstrip("\r\n")


def _read_side(p: Path, what: str, sep: str, names: list[str], int_cols: list[str]) -> pd.DataFrame:
    """Read a header-less latin-1 side file with exactly ``len(names)`` fields per line.

    Every field is read as str; ``int_cols`` are then converted to int64, and the first
    column (the id) must be unique.
    """
    df = _call_reader(p, what, lambda: pd.read_csv(
        p, sep=sep, header=None, encoding="latin-1", quoting=csv.QUOTE_NONE, dtype=str,
        engine="c" if len(sep) == 1 else "python", keep_default_na=False,
        compression="gzip" if is_gzip(p) else None))
    if df.shape[1] != len(names):
        raise _err(p, f"has {df.shape[1]} fields per line (separator {sep!r}); {what} has "
                   f"{len(names)}", f"check that this is the {what} file")
    n, i = _first_pos(df.isna().any(axis=1))  # missing fields (empty ones read as "")
    if n:
        raise _err(p, f"{n} lines have fewer than the {len(names)} fields of {what} (first at row {i})",
                   f"check that this is the {what} file, or {_RECOPY}")
    df.columns = names
    for c in int_cols:
        num = pd.to_numeric(df[c], errors="coerce")
        n, i = _first_pos(num.isna() | (num != np.floor(num)))
        if n:
            raise _err(p, f"field '{c}' must be an integer but {n} rows are not (first at row "
                       f"{i}: {df[c].iloc[i]!r})", f"check that this is the {what} file, or "
                       f"{_RECOPY}")
        df[c] = num.astype("int64")
    n, i = _first_pos(df[names[0]].duplicated())
    if n:
        raise _err(p, f"{n} duplicate {names[0]} ids (first at row {i}: {df[names[0]].iloc[i]}); "
                   f"each {names[0]} must appear once", _RECOPY)
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
    n, i = _first_pos(~flags.isin([0, 1]).all(axis=1))
    if n:
        raise _err(p, f"{n} rows have genre flags other than 0/1 (first at row {i})",
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
