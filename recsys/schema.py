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
