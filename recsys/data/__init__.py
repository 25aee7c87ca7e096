"""Data layer: readers and formats, vocab, filters, splits, the synthetic generator, the
dataset registry and the DataModule.

Importing this package loads neither torch nor Lightning: ``InteractionDataModule`` (and
``make_schema``) are imported from ``recsys.data.datamodule`` on first use.
"""

from recsys.data.datasets import NAMES, data_root, load_dataset
from recsys.data.preprocess import kcore, to_implicit
from recsys.data.recdata import RecData, from_interactions
from recsys.data.splits import make_split, split_global_time, split_leave_last_out, split_random
from recsys.data.synthetic import SyntheticConfig, make_synthetic
from recsys.data.vocab import Vocab

_LAZY = {"InteractionDataModule", "make_schema"}

__all__ = [
    "RecData", "from_interactions", "InteractionDataModule", "make_schema", "kcore",
    "to_implicit", "NAMES", "data_root", "load_dataset", "make_split", "split_global_time",
    "split_leave_last_out", "split_random", "SyntheticConfig", "make_synthetic", "Vocab",
]


def __getattr__(name: str):
    if name in _LAZY:
        from recsys.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'recsys.data' has no attribute {name!r}")
