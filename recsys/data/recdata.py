"""RecData: one dataset after vocab + split, as the arrays training and evaluation use."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.features import FeatureColumns, FeatureEncoder
from recsys.data.splits import make_split
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError
from recsys.numeric import gini, inverse_propensity


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
    item_numeric: np.ndarray | None = None  # (N, P) float32 standardised numeric item features
    user_numeric: np.ndarray | None = None  # (U, P') float32 standardised numeric user features
    item_encoder: FeatureEncoder | None = None  # encodes new items' features like the known ones
    user_encoder: FeatureEncoder | None = None
    fold_in: sp.csr_matrix | None = None  # (U, N) input histories of held-out users (split kind users)
    valid_candidates: np.ndarray | None = None  # (M,) cold validation items ranked for 'valid' (cold_valid)
    propensity_ab: tuple[float, float] | None = None  # (A, B) of the XMC propensity model: adds PSP@k, PSnDCG@k
    bag_weighting: str = "binary"  # how query_bags' values were made: binary / raw values, or "tfidf"
    ratings: sp.csr_matrix | None = None  # (U, N) explicit rating of every known pair (positives and dislikes)
    dislikes: dict[str, sp.csr_matrix] | None = None  # split -> (U, N) binary: pairs rated <= the dislike threshold

    @cached_property
    def weighted_bags(self) -> bool:
        """True when ``query_bags`` holds weights other than 1 (e.g. TF-IDF): batches then carry
        them as ``bag_w`` for a weighted pooling (``QueryTower(bag_values=True)``)."""
        return self.query_bags is not None and bool(np.any(self.query_bags.data != 1))

    @classmethod
    def from_frames(cls, interactions: pd.DataFrame, **kwargs) -> RecData:
        """A ``RecData`` from data frames (``recsys.data.recdata.from_frames``)::

            data = RecData.from_frames(events, items=item_frame,
                                       item_columns=FeatureColumns(categorical=["brand"]))
        """
        return from_frames(interactions, **kwargs)

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

    @cached_property
    def history(self) -> sp.csr_matrix:
        """(U, N) the items a query is built from at evaluation: train, plus the input rows of
        held-out users (split kind ``users``), which are never trained on."""
        return self.train if self.fold_in is None else (self.train + self.fold_in).tocsr()

    def inverse_propensity(self) -> np.ndarray | None:
        """(N,) inverse label propensities (``recsys.eval.metrics.inverse_propensity``) from the
        train + validation labels (the official train documents), when ``propensity_ab`` is set."""
        if self.propensity_ab is None:
            return None
        lab = (self.train + self.valid).tocsr()
        A, B = self.propensity_ab
        return inverse_propensity(np.asarray((lab > 0).sum(axis=0)).ravel(), int((np.diff(lab.indptr) > 0).sum()),
                                  A, B)

    def cold_items(self) -> np.ndarray:
        """Items with no train or validation interaction that occur in test (sorted ids)."""
        warm = np.asarray((self.train + self.valid).sum(axis=0)).ravel() > 0
        in_test = np.diff(self.test.tocsc().indptr) > 0
        return np.flatnonzero(in_test & ~warm)

    def candidates(self, split: str) -> np.ndarray | None:
        """The items ranked for ``split``: None for the whole catalogue, the cold items for
        ``cold_items`` (a new item competes with the other new items), and for ``valid`` the
        held-out validation items when the split has them (``cold_valid``)."""
        if split == "valid":
            return self.valid_candidates
        if split != "cold_items":
            return None
        cold = self.cold_items()
        if len(cold) == 0:
            raise DataError(f"{self.name}: split='cold_items' but no test item is absent from train and "
                            "validation. Fix: hold out whole items with split kind 'items' "
                            "(split: {kind: items, test: 0.1}).")
        return cold

    def item_feature_strings(self) -> list[str] | None:
        """(N,) the feature tokens of each item joined by spaces (for display), None without
        item features."""
        if self.item_features is None or self.item_encoder is None:
            return None
        names = np.asarray(self.item_encoder.tokens, dtype=object)
        m = self.item_features.tocsr()
        return [" ".join(names[m.indices[m.indptr[j]:m.indptr[j + 1]]]) for j in range(m.shape[0])]

    def item_counts(self) -> np.ndarray:
        """(N,) train interactions per item (for popularity, logQ and samplers)."""
        return np.asarray(self.train.sum(axis=0)).ravel().astype(np.int64)

    def seen(self, split: str) -> sp.csr_matrix:
        """Items excluded from the ranking for ``split``: train for valid, train+valid for test."""
        if split == "valid":
            return self.history
        if split in ("test", "cold_items"):
            return (self.history + self.valid).tocsr()
        raise DataError(f"split='{split}': need 'valid', 'test' or 'cold_items'. Fix: pass one of them.")

    def eval_users(self, split: str) -> np.ndarray:
        """The queries of ``split``: users with at least one held-out item there."""
        return np.flatnonzero(np.diff(self.truth(split).indptr) > 0)

    def truth(self, split: str) -> sp.csr_matrix:
        """Held-out items of ``split`` ('valid', 'test', or 'cold_items': the test items of
        ``cold_items()`` only)."""
        if split == "cold_items":
            keep = np.zeros(self.n_items, dtype=np.float32)
            keep[self.candidates(split)] = 1.0
            m = (self.test @ sp.diags(keep)).tocsr()
            m.eliminate_zeros()
            return m
        if split not in ("valid", "test"):
            self.seen(split)  # the error naming the choices
        return {"valid": self.valid, "test": self.test}[split]

    def train_ratings(self, need: str = "min_rating") -> np.ndarray:
        """(nnz,) float32: the explicit rating of every train pair, in the train CSR's order.
        Needs ``ratings`` (``with_ratings``); ``need`` names the setting that asked, in the error."""
        return self._ratings_at(self.train, need)

    def train_rating_matrix(self, need: str = "rating factors") -> sp.csr_matrix:
        """(U, N) float32 CSR: the explicit rating of every train pair, the positives' and the
        train dislikes' (``dislikes["train"]``), nothing held out. Needs ``ratings`` and
        ``dislikes`` (``with_ratings``); ``need`` names the setting that asked, in the error."""
        pattern = binary_csr(self.train + self.dislikes["train"]) if self.dislikes is not None else self.train
        m = pattern.copy()
        m.data = self._ratings_at(pattern, need)
        return m

    def _ratings_at(self, pattern: sp.csr_matrix, need: str) -> np.ndarray:
        """(nnz,) float32 ratings of the pairs stored in ``pattern`` (U, N), in its CSR order."""
        if self.ratings is None:
            raise ConfigError(f"{self.name}: {need} needs the explicit ratings, which this data does not keep. Fix: "
                              "load it with dislike_threshold (e.g. data.dislike_threshold: 2) from a file with a "
                              f"rating column, or drop {need}.")
        rows = np.repeat(np.arange(self.n_users), np.diff(pattern.indptr))
        return np.asarray(self.ratings[rows, pattern.indices.astype(np.int64)], dtype=np.float32).ravel()

    def chosen(self, min_rating: float) -> sp.csr_matrix:
        """(U, N) binary: the train positives rated >= ``min_rating`` (the chosen items of a
        preference stage). Needs ``ratings`` (``with_ratings``)."""
        m = self.train.copy()
        m.data = (self.train_ratings(f"min_rating={min_rating}") >= min_rating).astype(np.float32)
        return binary_csr(m)

    def with_valid_in_train(self) -> RecData:
        """The data of a refit: train = train + validation, an empty validation set, test as
        it is (its seen items, train + validation, unchanged). After the epochs and settings
        have been chosen on validation, a refit trains on every labelled row, as published
        protocols that have no validation set do. Derived values (document TF-IDF weights)
        stay those of the original train rows."""
        empty = sp.csr_matrix(self.valid.shape, dtype=np.float32)
        return replace(self, train=binary_csr(self.train + self.valid), valid=empty,
                       valid_candidates=None)

    def stats(self) -> dict:
        """Users, items, interactions, density and popularity skew of the whole data."""
        allm = (self.history + self.valid + self.test).tocsr()
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
            "cold_test_items": int(len(self.cold_items())),
            "item_feature_values": self.n_item_feature_values,
            "item_numeric_features": 0 if self.item_numeric is None else int(self.item_numeric.shape[1]),
            "user_feature_fields": len(self.user_feature_cards),
        }


def with_ratings(data: RecData, raw: pd.DataFrame, dislike_threshold: float, seed: int = 0) -> RecData:
    """``data`` with its explicit ratings and dislikes kept beside the positives.

    ``raw`` is the interaction frame before filtering (raw ids, a ``rating`` column). Only
    pairs of the data's users and items count (the positive protocol, its vocabulary and
    split stay exactly as they are). ``ratings`` (U, N) holds every such pair's rating (the
    last of repeated rows); ``dislikes`` holds the pairs rated <= ``dislike_threshold``,
    split per user at random 8:1:1 with ``seed``, the procedure of the positives
    (``splits.split_random``), so ``dislikes["test"]`` are held-out dislikes of the test
    users (``disliked@k``) and ``dislikes["train"]`` the explicit rejected items of training.
    """
    if "rating" not in raw.columns:
        raise DataError(f"{data.name}: dislike_threshold={dislike_threshold} needs a 'rating' column, found "
                        f"{list(raw.columns)}. Fix: load a file with ratings, or set dislike_threshold: null.")
    u = data.user_vocab.raw.get_indexer(raw["user"].to_numpy())
    i = data.item_vocab.raw.get_indexer(raw["item"].to_numpy())
    known = (u >= 0) & (i >= 0)
    frame = pd.DataFrame({"user": u[known], "item": i[known],
                          "rating": raw["rating"].to_numpy(dtype=np.float32)[known]})
    frame = frame.drop_duplicates(["user", "item"], keep="last")
    shape = (data.n_users, data.n_items)
    ratings = sp.csr_matrix((frame["rating"].to_numpy(), (frame["user"].to_numpy(), frame["item"].to_numpy())),
                            shape=shape, dtype=np.float32)
    ratings.sort_indices()
    low = frame[frame["rating"].to_numpy() <= dislike_threshold]
    parts = make_split(low[["user", "item"]].reset_index(drop=True), "random", seed=seed)
    dislikes = {name: to_csr(p["user"].to_numpy(), p["item"].to_numpy(), shape)
                for name, p in zip(("train", "valid", "test"), parts)}
    return replace(data, ratings=ratings, dislikes=dislikes)


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
    """The bundled datasets' path: ``from_frames`` with categorical user fields (every column
    of ``user_features``, indexed by raw user id) and a '|'-joined ``genres`` column of
    ``item_features`` (indexed by raw item id)."""
    uc = FeatureColumns(categorical=list(user_features.columns)) if user_features is not None else None
    ic = FeatureColumns(multi={"genres": "|"}) if item_features is not None else None
    return from_frames(df, name=name, split=split, seed=seed, items=item_features, item_columns=ic,
                       users=user_features, user_columns=uc, item_titles=item_titles)


def from_frames(
    interactions: pd.DataFrame,
    name: str = "data",
    split: str = "random",
    seed: int = 0,
    valid: float = 0.1,
    test: float = 0.1,
    items: pd.DataFrame | None = None,
    item_columns: FeatureColumns | None = None,
    users: pd.DataFrame | None = None,
    user_columns: FeatureColumns | None = None,
    item_titles: pd.Series | None = None,
    catalogue: str = "interactions",
    parts: tuple[pd.DataFrame, ...] | None = None,
    cold_valid: bool = False,
) -> RecData:
    """Encode ids with a ``Vocab``, split, build the CSR matrices and encode side features.

    Args:
        interactions: canonical frame [user, item, (time)] (``validate_interactions``), already
            filtered; ignored rows-wise when ``parts`` is given (then only its ids count).
        split / valid / test / seed: ``recsys.data.splits.make_split``.
        items / users: feature frames indexed by raw id (``features.feature_frame``), with
            their ``FeatureColumns``; ids without a row get no feature (missing values).
        item_titles: series indexed by raw item id.
        catalogue: ``interactions`` (items that occur in an interaction) or ``all_items``
            (also the items only the item file lists: cold items from the start).
        parts: a fixed (train, valid, test) in raw ids instead of ``split`` (pre-split files).
        cold_valid: with ``split="items"``, validation is a second set of held-out items, and
            validation ranks those items only (``RecData.valid_candidates``).
    """
    if catalogue not in ("interactions", "all_items"):
        raise ConfigError(f"catalogue={catalogue!r}: need 'interactions' or 'all_items'. Fix: 'all_items' to "
                          "rank the items only the item file lists too.")
    frames = list(parts) if parts is not None else [interactions]
    item_ids = np.concatenate([f["item"].to_numpy() for f in frames])
    if catalogue == "all_items" and items is not None:
        item_ids = np.concatenate([item_ids, items.index.to_numpy()])
    user_vocab, _ = Vocab.fit(np.concatenate([f["user"].to_numpy() for f in frames]), name="user")
    item_vocab, _ = Vocab.fit(item_ids, name="item")

    def encode(f: pd.DataFrame) -> pd.DataFrame:
        enc = pd.DataFrame({"user": user_vocab.encode(f["user"].to_numpy()),
                            "item": item_vocab.encode(f["item"].to_numpy())})
        if "time" in f.columns:
            enc["time"] = f["time"].to_numpy()
        return enc

    if parts is not None:
        split_parts = [encode(f) for f in parts]
    else:
        split_parts = list(make_split(encode(interactions), split, seed=seed, valid=valid, test=test,
                                      cold_valid=cold_valid))
    shape = (len(user_vocab), len(item_vocab))
    train, valid_m, test_m, *rest = (to_csr(p["user"].to_numpy(), p["item"].to_numpy(), shape) for p in split_parts)
    data = RecData(name, train, valid_m, test_m, user_vocab, item_vocab, fold_in=rest[0] if rest else None)
    if cold_valid:
        data.valid_candidates = np.flatnonzero(np.diff(valid_m.tocsc().indptr) > 0)
    if users is not None:
        enc = FeatureEncoder.fit(users.reindex(users.index.intersection(user_vocab.raw)), "user",
                                 user_columns or FeatureColumns(categorical=list(users.columns)))
        rows = users.reindex(user_vocab.raw)
        data.user_encoder, data.user_features, data.user_numeric = enc, enc.codes(rows), enc.numeric(rows)
    if items is not None:
        enc = FeatureEncoder.fit(items.reindex(items.index.intersection(item_vocab.raw)), "item",
                                 item_columns or FeatureColumns(categorical=list(items.columns)))
        rows = items.reindex(item_vocab.raw)
        data.item_encoder, data.item_numeric = enc, enc.numeric(rows)
        data.item_features = enc.bag(rows) if enc.tokens else None
    if item_titles is not None:
        data.item_titles = item_titles.reindex(item_vocab.raw).fillna("").astype(str).to_numpy()
    return data
