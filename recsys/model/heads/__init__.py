"""Loss heads behind one interface: ``head(q, batch, item_tower) -> HeadOutput``."""

from recsys.model.heads.base import Head, HeadOutput, KnownPositives, Temperature
from recsys.model.heads.full import FullSoftmax
from recsys.model.heads.hard import HardNegativeSoftmax
from recsys.model.heads.inbatch import InBatchSoftmax, StreamingFrequency
from recsys.model.heads.preference import PreferenceHead
from recsys.model.heads.sampled import SampledSoftmax
from recsys.model.heads.sigmoid import MultiLabelSigmoid
from recsys.model.heads.tree import TreeSoftmax

HEADS = {
    "full": FullSoftmax,
    "sigmoid": MultiLabelSigmoid,
    "sampled": SampledSoftmax,
    "inbatch": InBatchSoftmax,
    "hard": HardNegativeSoftmax,
    "tree": TreeSoftmax,
    "preference": PreferenceHead,
}

__all__ = [
    "Head", "HeadOutput", "KnownPositives", "Temperature", "FullSoftmax", "HardNegativeSoftmax",
    "InBatchSoftmax", "StreamingFrequency", "SampledSoftmax", "MultiLabelSigmoid", "TreeSoftmax", "PreferenceHead",
    "HEADS",
]
