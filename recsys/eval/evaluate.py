"""Full-catalogue offline evaluation: embed queries and items, retrieve top-k with seen
items excluded, score with ``recsys.eval.metrics``. Never sampled metrics (Krichene & Rendle 2020).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from recsys.data.recdata import RecData
from recsys.eval.metrics import evaluate, per_user_metrics
from recsys.retrieval import make_retriever, recall_vs_exact

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Means (``metrics``), per-user values (``per_user``) and the top-k ids ``I``."""

    metrics: dict
    per_user: dict = field(default_factory=dict)
    users: np.ndarray | None = None
    I: np.ndarray | None = None


@torch.no_grad()
def embed_queries(query_tower, loader) -> tuple[np.ndarray, np.ndarray]:
    """Run the query tower over an evaluation loader: users (Q,), xq (Q, D) float32."""
    users, xq = [], []
    for batch in loader:
        users.append(batch["user"].numpy())
        xq.append(query_tower(batch).float().cpu().numpy())
    return np.concatenate(users), np.concatenate(xq)


def score(
    xq: np.ndarray,
    users: np.ndarray,
    xb: np.ndarray,
    data: RecData,
    split: str = "valid",
    ks: tuple[int, ...] = (10, 20),
    index: str = "exact",
    index_params: dict | None = None,
) -> EvalResult:
    """Top-max(ks) over all N items for each query, seen items excluded, then metrics.

    xq (Q, D) query embeddings of ``users`` (Q,), xb (N, D) item embeddings. For an
    approximate ``index`` the exact top-k is computed too and ``index_recall`` (recall of
    the approximate top-k against the exact one) is reported beside the metrics.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    exclude = data.seen(split)[users]
    t = time.perf_counter()
    retriever = make_retriever(index, **(index_params or {})).build(xb)
    _, I = retriever.search(xq, max(ks), exclude=exclude)
    res = score_topk(I, users, data, split, ks, seconds=time.perf_counter() - t)
    if not retriever.is_exact:
        _, I_exact = make_retriever("exact").build(xb).search(xq, max(ks), exclude=exclude)
        res.metrics["index_recall"] = recall_vs_exact(I, I_exact)
    logger.info("scored %d queries over %d items with %s in %.2fs", len(xq), len(xb), index,
                res.metrics["search_seconds"])
    return res


def score_topk(I: np.ndarray, users: np.ndarray, data: RecData, split: str = "valid",
               ks: tuple[int, ...] = (10, 20), seconds: float = float("nan")) -> EvalResult:
    """Metrics of top-k lists ``I`` (Q, k) of ``users`` (Q,) against ``split``'s held-out items.

    The one place where means, per-user values and catalogue metrics are computed, for
    two-tower models (``score``) and baselines (``recsys.eval.baselines.evaluate_baseline``) alike.
    """
    truth = data.truth(split)[users]
    m = evaluate(I, truth, ks, item_counts=data.item_counts())
    m["search_seconds"] = seconds
    return EvalResult(m, per_user_metrics(I, truth, ks), users, I)


@torch.no_grad()
def evaluate_model(model, datamodule, split: str = "test", ks=(10, 20), index: str = "exact",
                   index_params: dict | None = None) -> EvalResult:
    """Evaluate a ``TwoTowerModule`` on a data module's ``split`` over the whole catalogue."""
    was = model.training
    model.eval()
    users, xq = embed_queries(model.query_tower, datamodule.eval_dataloader(split))
    xb = model.item_embeddings().float().cpu().numpy()
    model.train(was)
    return score(xq, users, xb, datamodule.data, split, tuple(ks), index, index_params)
