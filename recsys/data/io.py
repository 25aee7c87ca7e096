"""File helpers shared by every reader: existence and emptiness checks, plain or gzip text,
and one error shape for bad files ("<file>: <problem>. Fix: <fix>.")."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import pandas as pd

from recsys.errors import DataError

__all__ = ["PathLike", "GZIP_ERRORS", "RECOPY", "data_error", "require_file", "is_gzip", "open_text",
           "corrupt_gzip_error", "call_reader", "first_true"]

PathLike = str | os.PathLike
T = TypeVar("T")
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # what a truncated/corrupt .gz raises
RECOPY = "re-download or re-copy the file"


def data_error(source: object, problem: str, fix: str) -> DataError:
    """The project's message shape: '<file or value>: <problem>. Fix: <fix>.'"""
    return DataError(f"{source}: {problem}. Fix: {fix}.")


def require_file(path: PathLike) -> Path:
    """Return ``path`` as a ``Path`` if it is a non-empty regular file, else raise DataError."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise data_error(p, f"{what}; a readable data file is required",
                   "check the path, or set RECSYS_DATA to the folder that holds the datasets "
                   "(recsys.data.download.files_hint says which files go where)")
    if p.stat().st_size == 0:
        raise data_error(p, "the file is empty (0 bytes); a file with data rows is required", RECOPY)
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
    return data_error(p, f"the gzip data is truncated or corrupt ({type(exc).__name__}: {exc}); a "
                "complete gzip file is required", f"{RECOPY} (`gzip -t {p.name}` checks it)")


def call_reader(p: Path, what: str, reader: Callable[[], T]) -> T:
    """Run a reader, turning its decode / parse errors into DataErrors that name the file."""
    try:
        return reader()
    except GZIP_ERRORS as e:
        raise corrupt_gzip_error(p, e) from e
    except UnicodeDecodeError as e:
        raise data_error(p, f"is not a text {what} file (undecodable byte at offset {e.start})",
                   "check that it is the file you meant (and pass the right format=), or "
                   f"{RECOPY} if it is damaged") from e
    except pd.errors.EmptyDataError as e:
        raise data_error(p, f"has no data ({e}); a {what} file with rows is required", RECOPY) from e
    except pd.errors.ParserError as e:
        raise data_error(p, f"could not be parsed as {what} ({str(e).strip()})", "check the "
                   "separator and that every line has the same number of fields") from e
    except pd.errors.ParserWarning as e:  # raised by _read_csv_strict
        raise data_error(p, f"its lines have more fields than its header ({str(e).strip()})", "check the "
                   "separator and that every line has as many fields as the header") from e


def first_true(mask: pd.Series | np.ndarray) -> tuple[int, int]:
    """(how many True, position of the first True) of a boolean mask."""
    arr = np.asarray(mask, dtype=bool)
    return int(arr.sum()), int(arr.argmax()) if arr.size else 0
