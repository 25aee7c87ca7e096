"""Side-feature files (item or user tables keyed by id) and their encoding for the towers.

A feature file is a CSV / TSV / Parquet table with one row per id::

    sku,brand,category,tags,price
    A1,acme,tools,red|steel,9.5

``FeatureColumns`` says which column is the key and what the others are:

- ``categorical``: one value per row, e.g. ``brand`` -> the token ``brand=acme``;
- ``multi``: several values in one cell, split on a separator, e.g. ``tags`` with ``"|"``
  -> ``tags=red``, ``tags=steel``;
- ``numeric``: a number, standardised with the mean / std of the known rows (missing -> 0,
  the mean).

``FeatureEncoder`` turns the table into what the towers read, row ``j`` = index ``j`` of the
vocab: item side, a multi-hot (N, G) CSR over the sorted tokens (mean-pooled by the item
tower) and an (N, P) float32 numeric block; user side, one integer code per categorical
field (U, K) (one embedding table per field, summed) and the numeric block. Its state (tokens,
codes, means, stds) is JSON-able, so items that arrive after training (``recsys export
--items``) are encoded with the training vocabulary: unknown tokens are dropped, unknown
categories get the code of a missing value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.io import PathLike, data_error
from recsys.errors import ConfigError

__all__ = ["FeatureColumns", "FeatureEncoder", "read_features", "feature_frame", "fill_by_dtype"]

MISSING = "<missing>"  # the category of a missing / unknown value (user fields)


@dataclass
class FeatureColumns:
    """The columns of a feature file (``item_columns:`` / ``user_columns:`` of a data source).

    Args:
        item / user: the key column (default: the first usual name present, e.g. ``item_id``;
            see ``recsys.data.formats.table.ALIASES``).
        categorical: columns with one value per row.
        multi: column -> separator, for columns holding several values (``"Action|Drama"``).
        numeric: columns holding a number.
        title: a display name column (printed by ``recsys recommend``; not a feature).

    When none of ``categorical`` / ``multi`` / ``numeric`` is given, every other column is
    used: numeric dtypes as ``numeric``, the rest as ``categorical``.
    """

    item: str | None = None
    user: str | None = None
    categorical: list[str] = field(default_factory=list)
    multi: dict[str, str] = field(default_factory=dict)
    numeric: list[str] = field(default_factory=list)
    title: str | None = None

    def used(self) -> list[str]:
        """Every feature column named, in the order categorical, multi, numeric."""
        return [*self.categorical, *self.multi, *self.numeric]


def _key_column(p: object, kind: str, available: list[str], cols: FeatureColumns) -> str:
    from recsys.data.formats.table import ALIASES

    key = getattr(cols, kind)
    if key is not None:
        if key not in available:
            raise data_error(p, f"{kind}_columns names the key column {kind}: {key!r}, which is not in the file; "
                             f"columns present: {available}", f"set {kind}: to one of those columns")
        return key
    key = next((a for a in ALIASES[kind] if a in available), None)
    if key is None:
        raise data_error(p, f"has no {kind} id column under a usual name ({', '.join(ALIASES[kind])}); columns "
                         f"present: {available}", f"name it: {kind}_columns: {{{kind}: <column>}}")
    return key


def fill_by_dtype(df: pd.DataFrame, key: str | None, cols: FeatureColumns) -> None:
    """When ``cols`` names no feature column: every column but the key and the title, numeric
    dtypes as ``numeric``, the rest as ``categorical`` (in place)."""
    if cols.used():
        return
    rest = [str(c) for c in df.columns if str(c) not in (key, cols.title)]
    cols.numeric = [c for c in rest if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    cols.categorical = [c for c in rest if c not in cols.numeric]


def feature_frame(df: pd.DataFrame, kind: str, cols: FeatureColumns | None = None, source: object = "features"
                  ) -> tuple[pd.DataFrame, FeatureColumns]:
    """Check a feature table and return (frame indexed by raw id, the resolved columns).

    ``kind``: ``"item"`` or ``"user"``. Ids are cleaned like interaction ids (integers ->
    int64, else str), so they join with the interaction file. Raises ``DataError`` naming the
    file for a missing column (listing the columns present), a missing or duplicate id, or a
    non-numeric value in a ``numeric`` column.
    """
    from recsys.data.validation import clean_ids

    cols = FeatureColumns(**vars(cols)) if cols is not None else FeatureColumns()
    available = [str(c) for c in df.columns]
    key = _key_column(source, kind, available, cols)
    fill_by_dtype(df, key, cols)
    missing = [c for c in cols.used() if c not in available]
    if missing:
        raise data_error(source, f"feature column(s) {missing} not found; columns present: {available}",
                         f"name existing columns in {kind}_columns (categorical / multi / numeric)")
    if kind == "user" and cols.multi:
        raise ConfigError(f"user_columns multi={cols.multi}: multi-valued user features are not supported (the "
                          "query tower embeds one category per user field). Fix: list them as categorical, or "
                          "move them to the item side.")
    if cols.title is not None and cols.title not in available:
        raise data_error(source, f"title column {cols.title!r} not found; columns present: {available}",
                         f"set title: to one of those columns in {kind}_columns, or drop it")
    out = df[[key, *cols.used(), *([cols.title] if cols.title and cols.title not in cols.used() else [])]]
    out = out.reset_index(drop=True)
    ids = clean_ids(out[key], str(source), kind)
    dup = ids.duplicated()
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise data_error(source, f"{int(dup.sum())} duplicate {kind} ids (first repeat at row {i}: {ids.iloc[i]!r}); "
                         f"a feature file has one row per {kind}", f"drop the duplicates (df.drop_duplicates("
                         f"subset=[{key!r}]))")
    for c in cols.numeric:
        num = pd.to_numeric(out[c], errors="coerce")
        bad = num.isna() & out[c].notna() | np.isinf(num.astype("float64"))
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise data_error(source, f"numeric column {c!r} has {int(bad.sum())} non-numeric or infinite values "
                             f"(first at row {i}: {out[c].iloc[i]!r})", f"clean the column, or list {c!r} "
                             "as categorical")
        out[c] = num.astype("float64")
    out.index = pd.Index(ids.to_numpy(), name=kind)
    return out.drop(columns=[key]), cols


def read_features(path: PathLike, kind: str, cols: FeatureColumns | None = None, sep: str | None = None
                  ) -> tuple[pd.DataFrame, FeatureColumns]:
    """Read a CSV / TSV / Parquet feature file (``feature_frame`` on its rows)."""
    from recsys.data.formats.table import read_table

    p, df = read_table(path, sep=sep)
    return feature_frame(df, kind, cols, p)


@dataclass
class FeatureEncoder:
    """Feature table -> tower inputs, with the training vocabulary kept (``to_state``).

    ``tokens``: the sorted ``column=value`` tokens of the item bag (G); ``categories``: field
    -> its sorted categories (user side: the code of a value is its position); ``mean`` /
    ``std``: per numeric column.
    """

    kind: str
    columns: FeatureColumns
    tokens: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, frame: pd.DataFrame, kind: str, columns: FeatureColumns) -> FeatureEncoder:
        """Learn tokens / categories / numeric scales from ``frame`` (rows of the known ids)."""
        enc = cls(kind, columns)
        if kind == "item":
            enc.tokens = sorted(set(_token_pairs(frame, columns)[1]))
        else:
            enc.categories = {c: sorted(set(frame[c].map(_category))) for c in columns.categorical}
        for c in columns.numeric:
            x = frame[c].to_numpy(dtype=np.float64)
            ok = x[np.isfinite(x)]
            enc.mean.append(float(ok.mean()) if ok.size else 0.0)
            enc.std.append(float(ok.std()) if ok.size and ok.std() > 0 else 1.0)
        return enc

    @property
    def names(self) -> list[str]:
        """Feature names: the item tokens, or the user fields; then the numeric columns."""
        return [*(self.tokens if self.kind == "item" else self.columns.categorical), *self.columns.numeric]

    def bag(self, frame: pd.DataFrame) -> sp.csr_matrix:
        """(rows, G) multi-hot float32 CSR of the item tokens (unknown tokens dropped)."""
        rows, toks = _token_pairs(frame, self.columns)
        col = pd.Index(self.tokens).get_indexer(toks)
        keep = col >= 0
        m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], col[keep])),
                          shape=(len(frame), len(self.tokens)))
        m.sum_duplicates()
        m.data[:] = 1.0
        m.sort_indices()
        return m

    def codes(self, frame: pd.DataFrame) -> np.ndarray | None:
        """(rows, K) int64 category codes of the user fields (None without categorical fields)."""
        if not self.columns.categorical:
            return None
        out = []
        for c in self.columns.categorical:
            cats = pd.Index(self.categories[c])
            idx = cats.get_indexer(frame[c].map(_category))
            miss = cats.get_indexer([MISSING])[0]
            out.append(np.where(idx >= 0, idx, miss if miss >= 0 else 0))
        return np.stack(out, axis=1).astype(np.int64)

    def numeric(self, frame: pd.DataFrame) -> np.ndarray | None:
        """(rows, P) float32 standardised numeric columns, missing -> 0 (None without any)."""
        if not self.columns.numeric:
            return None
        x = frame[self.columns.numeric].to_numpy(dtype=np.float64)
        z = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return np.where(np.isfinite(z), z, 0.0).astype(np.float32)

    def to_state(self) -> dict:
        """A JSON-able dict (stored with a model)."""
        return {"kind": self.kind, "columns": vars(self.columns), "tokens": self.tokens,
                "categories": self.categories, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict) -> FeatureEncoder:
        """Inverse of ``to_state``."""
        return cls(state["kind"], FeatureColumns(**state["columns"]), list(state["tokens"]),
                   {k: list(v) for k, v in state["categories"].items()}, list(state["mean"]), list(state["std"]))


def _category(v) -> str:
    return MISSING if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _token_pairs(frame: pd.DataFrame, cols: FeatureColumns) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, 'column=value' tokens) of the categorical and multi columns; missing
    values and empty parts give no token."""
    rows, toks = [], []
    pos = np.arange(len(frame))
    for c in cols.categorical:
        s = frame[c]
        ok = (s.notna() & (s.astype(str).str.strip() != "")).to_numpy()
        rows.append(pos[ok])
        toks.append((c + "=" + s[ok].astype(str)).to_numpy())
    for c, sep in cols.multi.items():
        s = frame[c].astype("string").str.split(sep, regex=False)
        s = pd.Series(s.to_numpy(), index=pos).explode().dropna()
        s = s.astype(str).str.strip()
        s = s[s != ""]
        rows.append(s.index.to_numpy(dtype=np.int64))
        toks.append((c + "=" + s).to_numpy())
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, object)
    return np.concatenate(rows).astype(np.int64), np.concatenate(toks).astype(object)
