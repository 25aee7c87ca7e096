"""Vocab: raw ids <-> contiguous indices 0..n-1 (pandas.factorize), saved with a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import DataError


class Vocab:
    """A bijection between raw ids (ints or strings) and indices ``0..len-1``.

    Built with ``pandas.factorize(sort=True)`` so the same set of raw ids always gets the
    same indices. ``encode`` of an unknown raw id raises ``DataError`` naming it.

    Example:
        >>> v, codes = Vocab.fit([30, 10, 30])
        >>> codes.tolist(), v.decode([0, 1]).tolist()
        ([1, 0, 1], [10, 30])
    """

    def __init__(self, raw_ids, name: str = "id"):
        self.raw = pd.Index(np.asarray(raw_ids))  # (n,) index -> raw id
        if not self.raw.is_unique:
            raise DataError(
                f"Vocab '{name}': raw ids are not unique; a vocab must be a bijection. "
                "Fix: build it with Vocab.fit(values)."
            )
        self.name = name

    @classmethod
    def fit(cls, values, name: str = "id") -> tuple[Vocab, np.ndarray]:
        """Build a vocab from observed ``values``; return it and the (n,) int64 codes."""
        codes, uniques = pd.factorize(np.asarray(values), sort=True)
        return cls(uniques, name=name), codes.astype(np.int64)

    def __len__(self) -> int:
        return len(self.raw)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.raw.equals(other.raw)

    def encode(self, values) -> np.ndarray:
        """Map raw ids to indices; unknown ids raise ``DataError`` naming them."""
        values = np.atleast_1d(np.asarray(values))
        if self.raw.dtype.kind in "iu" and values.dtype.kind in "OUS":
            try:
                values = values.astype(np.int64)
            except ValueError:
                pass
        idx = self.raw.get_indexer(values)
        if (idx < 0).any():
            bad = values[idx < 0][:5].tolist()
            raise DataError(
                f"unknown {self.name} id(s) {bad}: not in the model's vocab of {len(self)} "
                f"{self.name}s (e.g. {self.raw[:3].tolist()}). Fix: use ids seen in training, "
                "or retrain on data that contains them."
            )
        return idx.astype(np.int64)

    def decode(self, idx) -> np.ndarray:
        """Map indices back to raw ids."""
        return self.raw.to_numpy()[np.asarray(idx, dtype=np.int64)]

    def to_state(self) -> dict:
        """A JSON-able dict (stored in checkpoints and export folders)."""
        kind = "int" if self.raw.dtype.kind in "iu" else "str"
        vals = self.raw.to_numpy()
        return {"name": self.name, "kind": kind,
                "ids": [int(x) for x in vals] if kind == "int" else [str(x) for x in vals]}

    @classmethod
    def from_state(cls, state: dict) -> Vocab:
        """Inverse of ``to_state``."""
        ids = np.asarray(state["ids"], dtype=np.int64 if state["kind"] == "int" else object)
        return cls(ids, name=state.get("name", "id"))

    def save(self, path: str | Path) -> None:
        """Write the vocab as JSON."""
        Path(path).write_text(json.dumps(self.to_state()))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocab written by ``save``."""
        return cls.from_state(json.loads(Path(path).read_text()))

    def fingerprint(self) -> str:
        """A short hash of the ids, to check a checkpoint matches a dataset."""
        import hashlib

        h = hashlib.sha256("\x1f".join(map(str, self.raw.to_numpy())).encode()).hexdigest()
        return h[:16]
