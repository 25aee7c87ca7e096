"""A data source: the user's own files as a ``RecData``, in YAML or in Python.

In a config (``data.source``; every key but one of ``interactions`` / ``train`` optional)::

    data:
      source:
        interactions: events.parquet        # CSV / TSV / Parquet, or a folder of Parquet parts
        columns: {user: customer_id, item: sku, time: ts, weight: quantity}
        min_weight: 1                       # or rating_threshold for ratings
        k_core: {users: 5, items: 5}
        split: {kind: time, valid: 0.1, test: 0.1}
        item_features: items.csv
        item_columns: {item: sku, categorical: [brand, category], multi: {tags: "|"}, numeric: [price]}
        user_features: users.csv
        user_columns: {user: customer_id, categorical: [country]}

Pre-split data: ``train:`` / ``valid:`` / ``test:`` files instead of ``interactions:``, each a
table as above or an adjacency file (``.txt``: ``user item item ...``, the LightGCN / NGCF
format). Without a validation file a seeded per-user ``valid_frac`` of train (default 10%)
becomes validation (logged). Relative paths are relative to the working directory.

Split kinds (``split.kind``): ``random`` (per-user shares, default 8:1:1), ``leave_last_out``
(by time), ``time`` (one global time cut), ``users`` (whole users held out; their rows are
split into input history and targets), ``items`` (whole items held out: cold-start).

Python::

    data = load_source(DataSource(interactions="events.csv", k_core={"users": 5, "items": 5}))
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.features import FeatureColumns, read_features
from recsys.data.formats import read_adjacency, read_interactions
from recsys.data.preprocess import kcore, to_implicit
from recsys.data.recdata import RecData, from_frames
from recsys.data.splits import SPLITS, split_random
from recsys.errors import ConfigError

__all__ = ["SplitSpec", "DataSource", "load_source", "read_source_interactions"]

logger = logging.getLogger(__name__)


@dataclass
class SplitSpec:
    """``split:`` of a source. ``kind``: random | leave_last_out | time | users | items;
    ``valid`` / ``test``: the held-out shares (of each user's rows, of the rows by time, of
    the users or of the items)."""

    kind: str = "random"
    valid: float = 0.1
    test: float = 0.1
    cold_valid: bool = False  # kind items: validation is held-out items too (selection on cold items)


@dataclass
class DataSource:
    """The user's files and the protocol applied to them (module docstring for the YAML form).

    Args:
        interactions: one interaction file (or folder of Parquet parts), split by ``split``.
        columns: canonical name (user, item, time, weight / rating) -> column in the file;
            None takes the usual names (``user_id``, ``itemId``, ``timestamp`` ...).
        format / sep: of the text files (inferred from the suffix by default).
        min_weight / rating_threshold: keep rows whose weight (rating) is >= this; one of them.
        k_core: iterative k-core, an int for both sides or ``{users: k, items: k}`` (0: none).
        split: ``SplitSpec``.
        train / valid / test: pre-split files instead of ``interactions``.
        valid_frac: share of each user's train rows carved out as validation when there is
            no ``valid`` file.
        item_features / item_columns, user_features / user_columns: feature files keyed by
            id and their ``FeatureColumns``.
        catalogue: ``interactions`` or ``all_items`` (items only the item file lists are
            ranked too).
        dedupe: repeated (user, item[, time]) rows: ``last`` / ``first`` keeps one, None raises.
        name: the dataset name in reports (default: the file's name).
    """

    interactions: str | None = None
    columns: dict[str, str | None] | None = None
    format: str | None = None
    sep: str | None = None
    min_weight: float | None = None
    rating_threshold: float | None = None
    k_core: int | dict[str, int] = 0
    split: SplitSpec = field(default_factory=SplitSpec)
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    valid_frac: float = 0.1
    item_features: str | None = None
    item_columns: FeatureColumns | None = None
    user_features: str | None = None
    user_columns: FeatureColumns | None = None
    catalogue: str = "interactions"
    dedupe: str | None = "last"
    name: str | None = None

    def __post_init__(self):
        if isinstance(self.split, dict):
            self.split = SplitSpec(**self.split)
        for side in ("item", "user"):
            v = getattr(self, f"{side}_columns")
            if isinstance(v, dict):
                setattr(self, f"{side}_columns", FeatureColumns(**v))

    def key(self) -> str:
        """A stable description (cache key of ``shared_cache``)."""
        return repr(sorted(asdict(self).items()))

    def label(self) -> str:
        """The dataset name of reports."""
        return self.name or Path(self.interactions or self.train or "data").name


def _k_core(k) -> tuple[int, int]:
    if isinstance(k, int):
        return k, k
    if isinstance(k, dict) and set(k) <= {"users", "items"}:
        return int(k.get("users", 0)), int(k.get("items", 0))
    raise ConfigError(f"k_core={k!r}: need an int or {{users: k, items: k}}. Fix: e.g. k_core: {{users: 5, items: 5}}.")


def _threshold(src: DataSource) -> float | None:
    if src.min_weight is not None and src.rating_threshold is not None:
        raise ConfigError(f"min_weight={src.min_weight} and rating_threshold={src.rating_threshold}: both keep rows "
                          "whose weight / rating is >= the value. Fix: set only one of them.")
    return src.min_weight if src.min_weight is not None else src.rating_threshold


def _read(path: str, src: DataSource) -> pd.DataFrame:
    """One interaction file: an adjacency ``.txt`` file or a table."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".txt" or p.name.lower().endswith(".txt.gz"):
        users, items = read_adjacency(p)
        return pd.DataFrame({"user": users, "item": items})
    return read_interactions(p, columns=src.columns if src.columns is not None else "auto", sep=src.sep,
                             format=src.format, dedupe=src.dedupe)


def read_source_interactions(src: DataSource) -> pd.DataFrame:
    """The interaction frame of ``src.interactions`` after the weight threshold and k-core."""
    df = _read(src.interactions, src)
    thr = _threshold(src)
    if thr is not None or "rating" in df.columns:
        df = to_implicit(df, thr, source=src.interactions)
    ku, ki = _k_core(src.k_core)
    return kcore(df, ku, ki, source=src.interactions) if max(ku, ki) > 1 else df


def _carve_valid(train: pd.DataFrame, frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded per-user ``frac`` of ``train`` as validation (raw ids kept)."""
    codes = pd.DataFrame({"user": pd.factorize(train["user"], sort=True)[0], "row": np.arange(len(train))})
    kept, held, _ = split_random(codes, (1.0 - frac, frac, 0.0), seed=seed)
    return (train.iloc[np.sort(kept["row"].to_numpy())].reset_index(drop=True),
            train.iloc[np.sort(held["row"].to_numpy())].reset_index(drop=True))


def load_source(src: DataSource | dict, seed: int = 0) -> RecData:
    """Read, filter, split and encode a ``DataSource`` into a ``RecData``."""
    src = src if isinstance(src, DataSource) else DataSource(**src)
    if (src.interactions is None) == (src.train is None):
        raise ConfigError(f"data source interactions={src.interactions!r}, train={src.train!r}: need exactly one. "
                          "Fix: `interactions: events.csv` (split by `split:`), or `train:` (+ `valid:`, `test:`) "
                          "for pre-split files.")
    if src.split.kind not in SPLITS:
        raise ConfigError(f"split kind={src.split.kind!r} is unknown; valid: {sorted(SPLITS)}. Fix: pick one of them.")
    _threshold(src), _k_core(src.k_core)  # config errors before any file is read
    items = users = titles = None
    icols = ucols = None
    if src.item_features is not None:
        items, icols = read_features(src.item_features, "item", src.item_columns, sep=src.sep)
        if icols.title is not None:
            titles = items[icols.title].astype(str)
    if src.user_features is not None:
        users, ucols = read_features(src.user_features, "user", src.user_columns, sep=src.sep)
    common = dict(name=src.label(), seed=seed, items=items, item_columns=icols, users=users, user_columns=ucols,
                  item_titles=titles, catalogue=src.catalogue)
    if src.interactions is not None:
        df = read_source_interactions(src)
        return from_frames(df, split=src.split.kind, valid=src.split.valid, test=src.split.test,
                           cold_valid=src.split.cold_valid, **common)
    if max(_k_core(src.k_core)) > 1:
        raise ConfigError(f"k_core={src.k_core!r} with pre-split files: filtering would change your fixed split. "
                          "Fix: filter the files before splitting them, or drop k_core.")
    thr = _threshold(src)
    parts = []
    for f in (src.train, src.valid, src.test):
        if f is None:
            parts.append(None)
            continue
        d = _read(f, src)
        parts.append(to_implicit(d, thr, source=f) if thr is not None or "rating" in d.columns else d)
    train, valid, test = parts
    if test is None:
        raise ConfigError(f"pre-split source train={src.train!r} has no test file. Fix: add `test: <file>` (the "
                          "held-out interactions), or use `interactions:` with a split.")
    if valid is None:
        if not 0 < src.valid_frac < 1:
            raise ConfigError(f"valid_frac={src.valid_frac}: need 0 < valid_frac < 1 without a valid file. "
                              "Fix: e.g. valid_frac: 0.1.")
        train, valid = _carve_valid(train, src.valid_frac, seed)
        logger.info("%s: no validation file; %d of %d train rows carved out as validation (valid_frac %.2f, seed %d)",
                    src.label(), len(valid), len(train) + len(valid), src.valid_frac, seed)
    return from_frames(train, parts=(train, valid, test), **common)

