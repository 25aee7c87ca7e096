"""recsys: two-tower retrieval for very large catalogues.

Train a query tower and an item tower with one of five loss heads (full softmax, sigmoid
multi-label, sampled softmax, in-batch negatives, FAISS hard negatives), evaluate them over
the whole catalogue, compare them against baselines on identical data, and export them for
serving. The layers and where each concept lives: docs/architecture.md.

    import recsys
    dm = recsys.InteractionDataModule(dataset="synthetic")
    model = recsys.TwoTowerModule(schema=dm.schema, head=recsys.InBatchSoftmax(temperature=0.1))

Names are imported on first use, so ``import recsys`` loads neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recsys")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_API = {
    "RecsysError": "recsys.errors", "ConfigError": "recsys.errors", "DataError": "recsys.errors",
    "MissingDependency": "recsys.errors", "Schema": "recsys.schema",
    "RecData": "recsys.data.recdata", "from_interactions": "recsys.data.recdata", "Vocab": "recsys.data.vocab",
    "load_dataset": "recsys.data.datasets", "SyntheticConfig": "recsys.data.synthetic",
    "read_interactions": "recsys.data.formats", "InteractionDataModule": "recsys.data.datamodule",
    "make_retriever": "recsys.retrieval",
    "evaluate": "recsys.eval.evaluate", "EvalResult": "recsys.eval.evaluate",
    "Popularity": "recsys.eval.baselines", "EASE": "recsys.eval.baselines", "ALS": "recsys.eval.baselines",
    "OneVsRest": "recsys.eval.baselines",
    "QueryTower": "recsys.model.towers", "ItemTower": "recsys.model.towers",
    "FullSoftmax": "recsys.model.heads", "MultiLabelSigmoid": "recsys.model.heads",
    "SampledSoftmax": "recsys.model.heads", "InBatchSoftmax": "recsys.model.heads",
    "HardNegativeSoftmax": "recsys.model.heads",
    "UniformSampler": "recsys.model.candidates", "PopularitySampler": "recsys.model.candidates",
    "LogUniformSampler": "recsys.model.candidates", "TwoTowerModule": "recsys.model.module",
    "load_checkpoint": "recsys.artifacts.checkpoint", "Recommender": "recsys.artifacts.recommender",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
