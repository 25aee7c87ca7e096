"""Retrieval: top-k by inner product over item embeddings, exact or with FAISS.

    retriever = make_retriever("exact").build(xb)   # or "flat", "ivf", "hnsw"
    D, I = retriever.search(xq, k=20, exclude=seen)

The FAISS retrievers (``recsys.retrieval.faiss``, which imports FAISS at its top) load on
first use, so the exact retriever, the membership keys and the metrics need no FAISS.
"""

from __future__ import annotations

import inspect

from recsys.errors import ConfigError
from recsys.retrieval.base import Retriever, recall_vs_exact
from recsys.retrieval.exact import ExactRetriever

__all__ = [
    "Retriever", "ExactRetriever", "FaissFlatRetriever", "FaissIVFRetriever",
    "FaissHNSWRetriever", "make_retriever", "recall_vs_exact", "RETRIEVERS",
]


# name -> class name in recsys.retrieval.exact / recsys.retrieval.faiss
RETRIEVERS: dict[str, str] = {
    "exact": "ExactRetriever",
    "flat": "FaissFlatRetriever",
    "ivf": "FaissIVFRetriever",
    "hnsw": "FaissHNSWRetriever",
}
_FAISS = {"FaissFlatRetriever", "FaissIVFRetriever", "FaissHNSWRetriever"}


def __getattr__(name: str):
    if name in _FAISS:
        from recsys.retrieval import faiss as _faiss

        return getattr(_faiss, name)
    raise AttributeError(f"module 'recsys.retrieval' has no attribute {name!r}")


def make_retriever(name: str, **params) -> Retriever:
    """Retriever by name (``exact``, ``flat``, ``ivf``, ``hnsw``) with its parameters."""
    if name not in RETRIEVERS:
        raise ConfigError(
            f"retriever {name!r} is unknown: valid names are {sorted(RETRIEVERS)}. "
            "Fix: pick one of them."
        )
    cls = ExactRetriever if name == "exact" else __getattr__(RETRIEVERS[name])
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"retriever {name!r} got unknown parameters {unknown}: it takes {valid}. "
            "Fix: drop or rename them."
        )
    return cls(**params)
