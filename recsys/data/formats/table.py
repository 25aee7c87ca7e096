"""CSV / TSV / Parquet interaction files with a header, into the canonical frame
(``recsys.data.validation``).

Example::

    df = read_interactions("ratings.csv", columns={"user": "userId", "item": "movieId",
                                                   "rating": "rating", "time": "timestamp"})
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from recsys.data.io import PathLike, call_reader, data_error, require_file
from recsys.data.validation import CANONICAL, ID_COLUMNS, validate_interactions
from recsys.errors import ConfigError, DataError, missing_dependency

__all__ = ["ALIASES", "SUFFIX_FORMATS", "guess_columns", "read_interactions", "read_table"]

SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_BINARY_MAGIC = {b"PAR1": "a Parquet file", b"PK\x03\x04": "a zip archive"}


def _infer_format(p: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("csv", "tsv", "parquet"):
            raise ConfigError(f"format={fmt!r} for {p}: must be 'csv', 'tsv' or 'parquet'. "
                              "Fix: pass one of those, or None to infer it from the suffix.")
        return fmt
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffixes[-1]]
    raise data_error(p, "cannot infer the format from the suffix; .csv, .tsv, .parquet (text ones "
               "optionally .gz) are recognised", "pass format='csv' / 'tsv' / 'parquet' (and "
               "sep=), or use read_movielens for MovieLens .dat / u.data files")


# the usual names of each canonical column, tried in this order by columns="auto"
ALIASES = {
    "user": ("user", "user_id", "userId", "userid", "UserID", "customer_id", "uid"),
    "item": ("item", "item_id", "itemId", "itemid", "movieId", "movie_id", "MovieID", "product_id", "sku", "iid"),
    "rating": ("rating", "weight", "score", "quantity"),
    "time": ("time", "timestamp", "ts", "datetime"),
}


def guess_columns(p: Path, available: list[str]) -> dict[str, str | None]:
    """``columns="auto"``: canonical name -> the first of its ``ALIASES`` present in the file
    (None for an optional column that is absent); ``DataError`` without a user or item column."""
    out = {k: next((a for a in ALIASES[k] if a in available), None) for k in CANONICAL}
    missing = [k for k in ID_COLUMNS if out[k] is None]
    if missing and len(available) > 1:
        k = missing[0]
        raise data_error(p, f"has no {k} column under a usual name ({', '.join(ALIASES[k])}); columns present: "
                         f"{available}", f"rename the column, or name it: columns={{'{k}': '<column>', ...}}")
    return out


def _resolve_columns(
    p: Path, available: list[str], columns: dict[str, str | None] | str | None, sep: str | None
) -> dict[str, str]:
    """canonical name -> file column, for the columns to load."""
    if columns == "auto":
        columns = guess_columns(p, available)
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
        raise data_error(p, f"has a single column {available[0]!r} when split on {sep!r}; user and "
                   "item columns are required", f"{hint} (or format=) to match the file")
    if needed:
        raise data_error(p, f"mapped column(s) {needed} not found; columns present: {available}",
                   "pass columns={canonical name: column in the file} naming existing columns")
    wanted = {k: v for k, v in wanted.items() if k not in absent}  # optional, not in the file
    if len(set(wanted.values())) != len(wanted):
        raise ConfigError(f"columns={columns!r} for {p}: two canonical names map to the same "
                          "file column. Fix: map user, item, rating, time to different columns.")
    return wanted


def read_table(
    path: PathLike,
    sep: str | None = None,
    format: str | None = None,
    pick=None,
) -> tuple[Path, pd.DataFrame]:
    """Read a CSV / TSV / Parquet table with a header: (its path, the frame).

    ``path``: a file (``.csv`` / ``.tsv``, optionally gzip; ``.parquet``) or a folder of
    Parquet parts. ``pick(columns present) -> columns to keep`` chooses the columns (Parquet
    reads only those); None keeps every column. Raises ``DataError`` naming the file for a
    missing / empty / truncated file, a wrong format or a parse error.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return p, _read_parquet_dir(p, pick)
    p = require_file(p)
    fmt = _infer_format(p, format)
    with open(p, "rb") as f:
        head = f.read(4)
    if fmt == "parquet":
        if head != b"PAR1":
            raise data_error(p, f"is not a Parquet file (it starts with {head!r}, not b'PAR1')",
                       "if it is CSV/TSV, rename it or pass format='csv' (or 'tsv')")
        pq = _pyarrow_parquet(p)
        try:
            names = list(pq.read_schema(p).names)
            return p, pd.read_parquet(p, columns=pick(names) if pick else None)
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            if isinstance(e, DataError):
                raise
            raise data_error(p, f"is not a valid Parquet file ({e}); it may be truncated",
                       "re-copy or re-export the file") from e
    if head in _BINARY_MAGIC:
        fix = ("pass format='parquet' or rename it to .parquet" if head == b"PAR1"
               else "extract it first and read the file inside")
        raise data_error(p, f"is {_BINARY_MAGIC[head]}, not a {fmt.upper()} text file", fix)
    sep = sep or ("\t" if fmt == "tsv" else ",")
    opts = dict(sep=sep, compression="gzip" if head[:2] == b"\x1f\x8b" else None,
                engine="c" if len(sep) == 1 else "python")
    what = fmt.upper()
    header = call_reader(p, what, lambda: pd.read_csv(p, nrows=0, **opts))
    keep = pick([str(c) for c in header.columns], sep) if pick else None
    # Every column, not usecols: with usecols pandas silently drops the extra fields of a
    # line longer than the header (shifted columns); see _read_csv_strict.
    df = call_reader(p, what, lambda: _read_csv_strict(p, opts))
    df.columns = [str(c) for c in df.columns]
    return p, (df[keep] if keep is not None else df)


def _pyarrow_parquet(p: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pyarrow is in the dev extra
        raise missing_dependency("pyarrow", f"{p}: reading Parquet", extra="dev") from e
    return pq


def _read_parquet_dir(p: Path, pick) -> pd.DataFrame:
    """A folder of Parquet parts (``part-*.parquet``, as Spark / pyarrow write them) as one frame."""
    _pyarrow_parquet(p)
    import pyarrow.dataset as pads

    parts = sorted(x for x in p.rglob("*") if x.is_file() and x.suffix.lower() in (".parquet", ".pq"))
    if not parts:
        raise data_error(p, "is a folder without .parquet files; a file or a folder of Parquet parts is required",
                         "point at the interaction file, or at the folder that holds its .parquet parts")
    try:
        ds = pads.dataset([str(x) for x in parts], format="parquet")
        cols = pick(list(ds.schema.names)) if pick else None
        return ds.to_table(columns=cols).to_pandas()
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise data_error(p, f"its Parquet parts could not be read together ({e})", "check that every part "
                         "is a complete Parquet file with the same columns") from e


def read_interactions(
    path: PathLike,
    columns: dict[str, str | None] | str | None = None,
    sep: str | None = None,
    format: str | None = None,
    dedupe: str | None = None,
) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet interaction file with a header into the canonical frame.

    Args:
        path: ``.csv``, ``.tsv`` (each optionally ``.gz``; gzip is also detected from the
            content) or ``.parquet`` file, or a folder of Parquet parts.
        columns: canonical name -> column in the file, e.g. ``{"user": "userId", "item":
            "movieId", "rating": "rating", "time": "timestamp"}`` (``weight`` is a synonym of
            ``rating``). Unmapped canonical names default to themselves; rating and time are
            loaded only if such a column exists (map one to None to skip it). Other columns in
            the file are ignored. ``"auto"`` takes the first usual name of each (``ALIASES``:
            user / user_id / userId ..., item / item_id / itemId / movieId ..., rating /
            weight, timestamp / time).
        sep: field separator for text files (default "," for csv, tab for tsv).
        format: "csv", "tsv" or "parquet"; None infers it from the suffix.
        dedupe: None raises on duplicate (user, item[, time]) rows; "first"/"last" keeps one.

    Returns:
        The canonical interaction frame (see ``validate_interactions``).

    Raises:
        DataError: missing/empty/truncated file, wrong format, missing columns, bad values.
    """
    if isinstance(columns, dict) and "weight" in columns:
        columns = {("rating" if k == "weight" else k): v for k, v in columns.items()}
    wanted: dict[str, str] = {}

    def pick(available: list[str], sep_used: str | None = None) -> list[str]:
        wanted.update(_resolve_columns(Path(path), available, columns, sep_used))
        return list(wanted.values())

    p, df = read_table(path, sep=sep, format=format, pick=pick)
    df = df.rename(columns={v: k for k, v in wanted.items()})
    return validate_interactions(df, str(p), dedupe=dedupe)


def _read_csv_strict(p: Path, opts: dict) -> pd.DataFrame:
    """``pd.read_csv`` where a line with more fields than the header is an error: pandas
    raises ParserError when some lines are longer, and with ``index_col=False`` warns
    (here: raises ParserWarning) when all are, instead of taking the first field as the index."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(p, index_col=False, **opts)
