"""Data layer: loaders, vocab, filters, splits, synthetic generator, registry, DataModule."""

from recsys.data.datamodule import InteractionDataModule, Schema, make_schema
from recsys.data.dataset import RecData, from_interactions
from recsys.data.preprocess import kcore, to_implicit
from recsys.data.registry import NAMES, data_root, load_dataset
from recsys.data.splits import make_split, split_global_time, split_leave_last_out, split_random
from recsys.data.synthetic import SyntheticConfig, make_synthetic
from recsys.data.vocab import Vocab

__all__ = [
    "RecData", "from_interactions", "InteractionDataModule", "Schema", "make_schema", "kcore",
    "to_implicit", "NAMES", "data_root", "load_dataset", "make_split", "split_global_time",
    "split_leave_last_out", "split_random", "SyntheticConfig", "make_synthetic", "Vocab",
]
