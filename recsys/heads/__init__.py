"""Loss heads behind one interface: ``head(q, batch, item_tower) -> HeadOutput``."""

from recsys.heads.base import Head, HeadOutput, KnownPositives, Temperature
from recsys.heads.full import FullSoftmax
from recsys.heads.hard import HardNegativeSoftmax
from recsys.heads.inbatch import InBatchSoftmax, StreamingFrequency
from recsys.heads.sampled import SampledSoftmax
from recsys.heads.sigmoid import MultiLabelSigmoid

HEADS = {
    "full": FullSoftmax,
    "sigmoid": MultiLabelSigmoid,
    "sampled": SampledSoftmax,
    "inbatch": InBatchSoftmax,
    "hard": HardNegativeSoftmax,
}

__all__ = [
    "Head", "HeadOutput", "KnownPositives", "Temperature", "FullSoftmax", "HardNegativeSoftmax",
    "InBatchSoftmax", "StreamingFrequency", "SampledSoftmax", "MultiLabelSigmoid", "HEADS",
]
