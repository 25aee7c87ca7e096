"""The one-line-per-user adjacency format of the LightGCN / NGCF benchmarks (Gowalla,
Yelp2018, Amazon-Book): ``user item item ...`` with integer ids, plain or gzip. A user with no
items may be written as ``uid`` alone (with or without a trailing space).

    users, items = read_adjacency("gowalla/train.txt.gz")   # (nnz,), (nnz,) int64 pairs
"""

from __future__ import annotations

import numpy as np

from recsys.data.io import GZIP_ERRORS, PathLike, corrupt_gzip_error, data_error, open_text, require_file

__all__ = ["read_adjacency"]


def read_adjacency(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(users (nnz,), items (nnz,)) int64 of every (user, item) pair of an adjacency file, in
    file order; duplicate items of a user are kept once."""
    p = require_file(path)
    users, items = [], []
    try:
        with open_text(p) as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    ids = np.array(fields, dtype=np.int64)
                except ValueError as e:
                    raise data_error(p, f"line {lineno} is not 'user item item ...' with integer ids ({e})",
                                     "write one user per line: its integer id, then its item ids, space-separated"
                                     ) from e
                if (ids < 0).any():
                    raise data_error(p, f"line {lineno} has a negative id ({int(ids.min())}); ids are >= 0",
                                     "re-export the file with non-negative integer ids")
                its = np.unique(ids[1:]) if len(ids) > 2 else ids[1:]
                users.append(np.full(len(its), ids[0], dtype=np.int64))
                items.append(its)
    except GZIP_ERRORS as e:
        raise corrupt_gzip_error(p, e) from e
    except UnicodeDecodeError as e:
        raise data_error(p, f"is not a text file (undecodable byte at offset {e.start})",
                         "point at the adjacency text file (user item item ...)") from e
    if not users or sum(len(u) for u in users) == 0:
        raise data_error(p, "has no (user, item) pairs", "check that the file holds 'user item item ...' lines")
    return np.concatenate(users), np.concatenate(items)
