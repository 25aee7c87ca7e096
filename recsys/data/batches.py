"""Training and evaluation batches, built whole with vectorised numpy (no per-example Python).

A training example is one nonzero (u, i) of the train matrix. Its query is described by
the user id, categorical user features and a bag of ids: the user's other train items
(the target is left out, so the model never sees the answer in its input), or a
document's words. Bags are padded to ``max_history`` with the pad index ``bag_size``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from recsys.data.recdata import RecData

__all__ = ["pad_rows", "query_inputs", "PairDataset", "QueryDataset", "batch_identity"]


def pad_rows(indptr, indices, rows, H, pad, exclude_pos=None, rng=None, values=None):
    """(B, H) int64 ids of CSR ``rows``, padded with ``pad``.

    Rows longer than H: ``rng`` given -> H positions drawn uniformly (with replacement; one
    (L, H) draw for the L long rows, in row order), else H evenly spaced positions
    (deterministic). ``exclude_pos`` (B,) leaves out that position of each row (the training
    target). ``values`` (the CSR's data): also return the (B, H) float32 values at the same
    positions (0 at padding), as ``(ids, values)``.

    Rows that fit are copied into a padded array by one scatter of their entries (work in
    their entries, not in B x H: an evaluation batch is padded to its longest history, 2,314
    on ML-1M, most rows far shorter); the long rows take one pass over their (L, H) grid.
    """
    rows = np.asarray(rows)
    B = len(rows)
    start = indptr[rows].astype(np.int64)  # (B,)
    avail = (indptr[rows + 1] - start - (0 if exclude_pos is None else 1)).astype(np.int64)  # (B,)
    out = np.full((B, H), pad, dtype=np.int64)
    vals = None if values is None else np.zeros((B, H), dtype=np.float32)
    fits = avail <= H
    r = np.flatnonzero(fits)  # (S,) rows copied whole
    n = np.maximum(avail[r], 0)  # (S,)
    if n.sum():
        row = np.repeat(r, n)  # (E,) the output row of each copied entry
        first = np.cumsum(n) - n  # (S,) offset of each row's entries in the flat order
        col = np.arange(len(row)) - np.repeat(first, n)  # (E,) position within the row
        src = start[row] + col
        if exclude_pos is not None:
            src += col >= exclude_pos[row]
        out[row, col] = indices[src]
        if vals is not None:
            vals[row, col] = values[src]
    long = np.flatnonzero(~fits)  # (L,) rows thinned to H positions
    if len(long):
        av = avail[long][:, None]  # (L, 1)
        grid = np.arange(H)
        if rng is None:
            pos = (grid * av) // H
        else:
            pos = (rng.random((len(long), H)) * av).astype(np.int64)
        if exclude_pos is not None:
            pos += pos >= exclude_pos[long][:, None]
        pos += start[long][:, None]  # (L, H) CSR positions
        out[long] = indices.take(pos)
        if vals is not None:
            vals[long] = values.take(pos)
    return out if values is None else (out, vals)


class PairDataset(Dataset):
    """Training pairs; ``__getitems__`` builds a whole batch dict at once.

    ``min_rating``: only the train pairs rated >= this are examples (the chosen pairs of a
    preference stage, ``RecData.chosen``); None: every train pair. Bags are drawn from the
    whole train history either way. Data that keeps its ratings (``RecData.ratings``) adds
    each example's ``rating`` (B,) to the batch.
    """

    def __init__(self, data: RecData, max_history: int, seed: int = 0, min_rating: float | None = None):
        self.data, self.H, self.seed = data, max_history, seed
        tr = data.train
        self.indptr, self.items = tr.indptr.astype(np.int64), tr.indices.astype(np.int64)
        self.users = np.repeat(np.arange(tr.shape[0]), np.diff(tr.indptr))  # (nnz,)
        # (nnz,) float32 rating of every train pair, when the data keeps ratings
        self.rating = None if data.ratings is None and min_rating is None else data.train_ratings()
        self.positions = None if min_rating is None else np.flatnonzero(self.rating >= min_rating)
        if self.positions is not None:  # the examples' users, in example order (user weights, sampler)
            self.users = self.users[self.positions]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, j):
        return self.__getitems__([j])

    def __getitems__(self, idx) -> dict:
        idx = np.asarray(idx, dtype=np.int64)  # (B,) example numbers
        u = self.users[idx]
        if self.positions is not None:
            idx = self.positions[idx]  # (B,) positions in the train CSR
        i = self.items[idx]
        extra = {} if self.rating is None else {"rating": self.rating[idx]}  # (B,) explicit ratings
        rng = np.random.default_rng([self.seed, int(idx[0]), int(idx[-1]), len(idx)])
        batch = {"user": u, "item": i, **extra}
        batch.update(query_inputs(self.data, u, self.H, rng=rng, target_pos=idx - self.indptr[u]))
        return {k: torch.from_numpy(v) for k, v in batch.items()}


def query_inputs(data: RecData, users: np.ndarray, H: int, rng=None, target_pos=None) -> dict:
    """Bag (B, H) and user features (B, K) of ``users``; history bags leave ``target_pos`` out."""
    out = {}
    if H > 0:
        if data.query_bags is not None:
            m = data.query_bags
            if data.weighted_bags:  # e.g. TF-IDF word weights: "bag_w" (B, H) beside the ids
                out["bag"], out["bag_w"] = pad_rows(m.indptr, m.indices, users, H, m.shape[1],
                                                    rng=rng, values=m.data)
            else:
                out["bag"] = pad_rows(m.indptr, m.indices, users, H, m.shape[1], rng=rng)
        else:  # training: the train history without the target; evaluation: the whole history
            m = data.train if target_pos is not None else data.history
            out["bag"] = pad_rows(m.indptr, m.indices, users, H, m.shape[1],
                                  exclude_pos=target_pos, rng=rng)
    if data.user_features is not None:
        out["user_feats"] = data.user_features[users]
    if data.user_numeric is not None:
        out["user_num"] = data.user_numeric[users]
    return out


class QueryDataset(Dataset):
    """Evaluation queries (users with held-out items); deterministic bags."""

    def __init__(self, data: RecData, users: np.ndarray, max_history: int):
        self.data, self.users, self.H = data, users, max_history

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, j):
        return self.__getitems__([j])

    def __getitems__(self, idx) -> dict:
        u = self.users[np.asarray(idx, dtype=np.int64)]
        batch = {"user": u, **query_inputs(self.data, u, self.H)}
        return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def batch_identity(batch):
    """collate_fn: ``__getitems__`` already returns a collated batch."""
    return batch
