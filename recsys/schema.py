"""Schema: the sizes the towers and heads need from the data. Imports neither torch nor Lightning."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Schema"]


@dataclass
class Schema:
    """Sizes the towers and heads need from the data (linked data -> model by the CLI)."""

    n_users: int
    n_items: int
    bag_size: int  # ids in a query bag: N for item history, F for document words
    user_feature_cards: list[int] = field(default_factory=list)  # categories per user field
    n_item_feature_values: int = 0  # G, e.g. genres
    item_feature_index: np.ndarray | None = None  # (N, Gmax) genre ids padded with G
    item_counts: np.ndarray | None = None  # (N,) train frequency (logQ, samplers)
    item_numeric: np.ndarray | None = None  # (N, P) standardised numeric item features
    user_numeric_dim: int = 0  # P', numeric user features per query
    user_counts: np.ndarray | None = None  # (U,) train rows per user (0: a user unseen in training)
    item_feature_names: list[str] = field(default_factory=list)  # G tokens, then the P numeric columns
    user_feature_names: list[str] = field(default_factory=list)  # K fields, then the P' numeric columns
