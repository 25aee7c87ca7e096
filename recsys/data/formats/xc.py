"""Reader for the Extreme Classification (XC) repository text format.

Layout (plain or gzip)::

    num_rows num_features num_labels          <- line 1
    l1,l2,... f1:v1 f2:v2 ...                 <- one line per row, 0-based indices

A row without labels has an empty label field, so its line starts with a space. Rows are
parsed with a small line loop; the matrices are built with scipy.sparse.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from recsys.data.io import GZIP_ERRORS, corrupt_gzip_error, open_text, require_file
from recsys.errors import DataError

_FIX_FORMAT = (
    "Fix: every line after the header must read 'l1,l2,... f1:v1 f2:v2 ...' with integer "
    "indices (start the line with a space when it has no labels); re-export or re-copy the file."
)


def _header(p, line: str) -> tuple[int, int, int]:
    parts = line.split()
    if len(parts) != 3 or not all(x.isdigit() for x in parts):
        raise DataError(
            f"{p}: line 1 {line.strip()[:80]!r} is not an XC header; it must be three "
            "non-negative integers 'num_rows num_features num_labels'. Fix: add or repair the "
            "header line."
        )
    r, f, lab = (int(x) for x in parts)
    return r, f, lab


def _first_bad(values: np.ndarray, limit: int, indptr: np.ndarray) -> tuple[int, int, int]:
    """(count, line number, value) of indices outside [0, limit)."""
    bad = (values < 0) | (values >= limit)
    k = int(bad.argmax())
    row = int(np.searchsorted(indptr, k, side="right")) - 1
    return int(bad.sum()), row + 2, int(values[k])


def read_xc(path: str | os.PathLike) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read an XC-format file into ``(features, labels)``.

    Returns:
        features: (R, F) float32 CSR with the given values (duplicate indices summed).
        labels: (R, L) float32 CSR with a 1 for every label of every row.

    Raises:
        DataError: missing/empty/truncated file, bad header, a header row count that does not
            match the number of rows, a malformed token or an index out of range (the message
            names the line number, counting the header as line 1).
    """
    p = require_file(path)
    f_ptr, f_idx, f_val = [0], [], []  # feature CSR parts
    l_ptr, l_idx = [0], []  # label CSR parts
    try:
        with open_text(p) as fh:
            n_rows, n_feat, n_lab = _header(p, fh.readline())
            lineno = 1
            for lineno, line in enumerate(fh, start=2):
                line = line.rstrip("\r\n")
                if not line.strip() and len(f_ptr) - 1 >= n_rows:
                    continue  # blank lines after the last row
                labels, _, feats = line.partition(" ")
                if ":" in labels:  # no label field and no leading space: features only
                    labels, feats = "", line
                tok = labels
                try:
                    if labels:
                        l_idx.extend(int(t) for t in labels.split(","))
                    for tok in feats.split():
                        i, v = tok.split(":")
                        f_idx.append(int(i))
                        f_val.append(float(v))
                except ValueError as e:
                    raise DataError(
                        f"{p}: line {lineno}: malformed token {tok[:40]!r} ({e}). {_FIX_FORMAT}"
                    ) from e
                f_ptr.append(len(f_idx))
                l_ptr.append(len(l_idx))
    except GZIP_ERRORS as e:
        raise corrupt_gzip_error(p, e) from e
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p}: is not a text file (undecodable byte at offset {e.start}). {_FIX_FORMAT}"
        ) from e

    rows = len(f_ptr) - 1
    if rows != n_rows:
        raise DataError(
            f"{p}: the header says {n_rows} rows but the file has {rows} (last line {lineno}); "
            "they must agree. Fix: re-copy the file if it was cut short, or correct the header."
        )
    f_ptr_a, l_ptr_a = np.asarray(f_ptr, np.int64), np.asarray(l_ptr, np.int64)
    f_idx_a, l_idx_a = np.asarray(f_idx, np.int64), np.asarray(l_idx, np.int64)
    f_val_a = np.asarray(f_val, np.float32)
    for name, idx, ptr, limit in (("feature", f_idx_a, f_ptr_a, n_feat),
                                  ("label", l_idx_a, l_ptr_a, n_lab)):
        n, line_no, value = _first_bad(idx, limit, ptr) if idx.size else (0, 0, 0)
        if n:
            raise DataError(
                f"{p}: line {line_no}: {name} index {value} is outside [0, {limit}) given by the "
                f"header ({n} such indices in the file). Fix: correct the header or the indices "
                "(they are 0-based)."
            )
    if not np.isfinite(f_val_a).all():
        k = int((~np.isfinite(f_val_a)).argmax())
        line_no = int(np.searchsorted(f_ptr_a, k, side="right")) + 1
        raise DataError(f"{p}: line {line_no}: feature value {f_val_a[k]} is not finite. "
                        f"{_FIX_FORMAT}")
    features = sp.csr_matrix((f_val_a, f_idx_a, f_ptr_a), shape=(n_rows, n_feat))
    features.sum_duplicates()
    labels_m = sp.csr_matrix(
        (np.ones(l_idx_a.size, np.float32), l_idx_a, l_ptr_a), shape=(n_rows, n_lab)
    )
    labels_m.sum_duplicates()
    labels_m.data[:] = 1.0  # a label listed twice is still one label
    return features, labels_m
