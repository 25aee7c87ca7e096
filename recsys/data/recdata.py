"""RecData: one dataset after vocab + split, as the arrays training and evaluation use."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.splits import make_split
from recsys.data.vocab import Vocab
from recsys.errors import DataError
from recsys.numeric import gini


@dataclass
class RecData:
    """A split dataset. U queries (users or documents), N items (or labels).

    ``train`` / ``valid`` / ``test`` are (U, N) binary CSR matrices. Queries are described
    by their user id, by a bag of ids (``query_bags``: the train history of a user, or the
    words of a document) and by categorical ``user_features``; items by their id and an
    optional bag of categorical ``item_features`` (e.g. genres).
    """

    name: str
    train: sp.csr_matrix  # (U, N)
    valid: sp.csr_matrix  # (U, N)
    test: sp.csr_matrix  # (U, N)
    user_vocab: Vocab
    item_vocab: Vocab
    query_bags: sp.csr_matrix | None = None  # (U, F) document features; None -> train history
    user_features: np.ndarray | None = None  # (U, K) int64 codes, one column per field
    item_features: sp.csr_matrix | None = None  # (N, G) multi-hot categorical
    item_titles: np.ndarray | None = None  # (N,) str
    planted: dict = field(default_factory=dict)  # synthetic ground truth

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    @property
    def bag_size(self) -> int:
        """Vocabulary of the query bag: F for document features, N for item history."""
        return self.query_bags.shape[1] if self.query_bags is not None else self.n_items

    @property
    def user_feature_cards(self) -> list[int]:
        if self.user_features is None:
            return []
        return [int(c) + 1 for c in self.user_features.max(axis=0)]

    @property
    def n_item_feature_values(self) -> int:
        return 0 if self.item_features is None else self.item_features.shape[1]

    def item_counts(self) -> np.ndarray:
        """(N,) train interactions per item (for popularity, logQ and samplers)."""
        return np.asarray(self.train.sum(axis=0)).ravel().astype(np.int64)

    def seen(self, split: str) -> sp.csr_matrix:
        """Items excluded from the ranking for ``split``: train for valid, train+valid for test."""
        if split == "valid":
            return self.train
        if split == "test":
            return (self.train + self.valid).tocsr()
        raise DataError(f"split='{split}': need 'valid' or 'test'. Fix: pass one of them.")

    def eval_users(self, split: str) -> np.ndarray:
        """The queries of ``split``: users with at least one held-out item there."""
        return np.flatnonzero(np.diff(self.truth(split).indptr) > 0)

    def truth(self, split: str) -> sp.csr_matrix:
        """Held-out items of ``split`` ('valid' or 'test')."""
        return {"valid": self.valid, "test": self.test}[split]

    def stats(self) -> dict:
        """Users, items, interactions, density and popularity skew of the whole data."""
        allm = (self.train + self.valid + self.test).tocsr()
        counts = np.sort(np.asarray(allm.sum(axis=0)).ravel())[::-1]
        nnz = int(allm.nnz)
        top = max(1, int(round(0.1 * len(counts))))
        users_with = int((np.diff(allm.indptr) > 0).sum())
        return {
            "dataset": self.name,
            "users": users_with,
            "items": int((counts > 0).sum()),
            "interactions": nnz,
            "density": nnz / max(1, users_with * int((counts > 0).sum())),
            "train": int(self.train.nnz), "valid": int(self.valid.nnz), "test": int(self.test.nnz),
            "top10pct_item_share": float(counts[:top].sum() / max(1, counts.sum())),
            "item_gini": gini(counts),
        }


def binary_csr(m) -> sp.csr_matrix:
    """``m`` (any scipy.sparse matrix or array) as a binary float32 CSR: duplicates summed,
    stored zeros dropped, indices sorted, every stored value 1. The one binariser of the
    project (train / valid / test matrices, document bags, baselines' inputs)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    m.data[:] = 1.0
    return m


def to_csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary (U, N) float32 CSR with sorted indices from index arrays."""
    return binary_csr(sp.csr_matrix((np.ones(len(users), dtype=np.float32), (np.asarray(users), np.asarray(items))),
                                    shape=shape))


def from_interactions(
    df: pd.DataFrame,
    name: str,
    split: str = "random",
    seed: int = 0,
    user_features: pd.DataFrame | None = None,
    item_features: pd.DataFrame | None = None,
    item_titles: pd.Series | None = None,
) -> RecData:
    """Encode ids with a ``Vocab``, split, and build the CSR matrices.

    ``user_features``: frame indexed by raw user id, categorical columns (codes made here).
    ``item_features``: frame indexed by raw item id with a ``genres`` column of
    '|'-joined strings (multi-hot). ``item_titles``: series indexed by raw item id.
    """
    user_vocab, u = Vocab.fit(df["user"].to_numpy(), name="user")
    item_vocab, i = Vocab.fit(df["item"].to_numpy(), name="item")
    enc = pd.DataFrame({"user": u, "item": i})
    if "time" in df.columns:
        enc["time"] = df["time"].to_numpy()
    parts = make_split(enc, split, seed=seed)
    shape = (len(user_vocab), len(item_vocab))
    train, valid, test = (to_csr(p["user"].to_numpy(), p["item"].to_numpy(), shape) for p in parts)
    uf = itf = titles = None
    if user_features is not None:
        rows = user_features.reindex(user_vocab.raw)
        uf = np.stack(
            [pd.factorize(rows[c].astype(str), sort=True)[0] for c in rows.columns], axis=1
        ).astype(np.int64)
    if item_features is not None:
        g = item_features.reindex(item_vocab.raw)["genres"].fillna("").str.get_dummies(sep="|")
        itf = sp.csr_matrix(g.to_numpy(dtype=np.float32))
    if item_titles is not None:
        titles = item_titles.reindex(item_vocab.raw).fillna("").astype(str).to_numpy()
    return RecData(name, train, valid, test, user_vocab, item_vocab,
                   user_features=uf, item_features=itf, item_titles=titles)
