"""Full-catalogue offline evaluation, one path for the two-tower models and the baselines:
top-k over all N items with the user's seen items excluded, then ``recsys.eval.metrics``.
Never sampled metrics (Krichene & Rendle 2020).

    res = evaluate(model, datamodule, "test", ks=(10, 20))      # a TwoTowerModule
    res = evaluate(EASE(1000.0).fit(data), data, "test")        # a fitted baseline
    res.metrics["ndcg@10"], res.per_user["ndcg@10"]

Both reach ``topk_metrics`` (the one place where means, per-user values and catalogue
metrics are computed): a two-tower model through ``evaluate_embeddings`` (its query and item
embeddings, any retriever), a baseline through its exact ``Baseline.topk``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from recsys.data.recdata import RecData
from recsys.errors import require
from recsys.eval.baselines import Baseline
from recsys.eval.metrics import (
    calibration_metrics,
    disliked_metrics,
    per_user_metrics,
    propensity_metrics,
    ranking_metrics,
)
from recsys.eval.prior_grid import topk_bias_grid
from recsys.retrieval import make_retriever, recall_vs_exact

__all__ = ["EvalResult", "evaluate", "evaluate_embeddings", "evaluate_grid", "evaluate_beam", "topk_metrics",
           "embed_queries", "calibration"]

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


def topk_metrics(I: np.ndarray, users: np.ndarray, data: RecData, split: str = "valid",
                 ks: tuple[int, ...] = (10, 20), seconds: float = float("nan")) -> EvalResult:
    """Metrics of top-k lists ``I`` (Q, k) of ``users`` (Q,) against ``split``'s held-out items,
    with the train item counts for the popularity metrics."""
    truth = data.truth(split)[users]
    m = ranking_metrics(I, truth, ks, item_counts=data.item_counts())
    w = data.inverse_propensity()  # multi-label data (propensity_ab set): PSP@k, PSnDCG@k
    if w is not None:
        m.update(propensity_metrics(I, truth, w, ks))
    if data.dislikes is not None and split in data.dislikes:  # rated data: held-out dislikes in the top-k
        m.update(disliked_metrics(I, data.dislikes[split][users], ks))
    m["search_seconds"] = seconds
    return EvalResult(m, per_user_metrics(I, truth, ks), users, I)


def _ranked(data: RecData, split: str, users: np.ndarray, xb: np.ndarray):
    """What ``split`` ranks for ``users``: (cand, xb, exclude) with cand None for all N items
    (``xb`` and the (Q, N) seen-item CSR as they are), or the (M,) candidate ids of e.g.
    cold_items with the rows of ``xb`` and the columns of ``exclude`` cut to them."""
    cand = data.candidates(split)
    exclude = data.seen(split)[users]
    if cand is not None:
        xb, exclude = xb[cand], exclude[:, cand]
    return cand, xb, exclude


def _item_ids(I: np.ndarray, cand: np.ndarray | None) -> np.ndarray:
    """Top-k positions among the ranked items (``_ranked``) -> catalogue ids (-1 pads stay)."""
    return I if cand is None else np.where(I >= 0, cand[I.clip(0)], -1)


def evaluate_embeddings(
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
    For ``split="cold_items"`` the ranking is over the cold items only (``data.candidates``).

    xq (Q, D) query embeddings of ``users`` (Q,), xb (N, D) item embeddings. For an
    approximate ``index`` the exact top-k is computed too and ``index_recall`` (recall of
    the approximate top-k against the exact one) is reported beside the metrics.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    cand, xb, exclude = _ranked(data, split, users, xb)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    t = time.perf_counter()
    retriever = make_retriever(index, **(index_params or {})).build(xb)
    _, I = retriever.search(xq, max(ks), exclude=exclude)
    I_ids = _item_ids(I, cand)
    res = topk_metrics(I_ids, users, data, split, ks, seconds=time.perf_counter() - t)
    if not retriever.is_exact:
        _, I_exact = make_retriever("exact").build(xb).search(xq, max(ks), exclude=exclude)
        res.metrics["index_recall"] = recall_vs_exact(I, I_exact)
    logger.info("scored %d queries over %d items with %s in %.2fs", len(xq), len(xb), index,
                res.metrics["search_seconds"])
    return res


def evaluate_grid(
    xq: np.ndarray,
    users: np.ndarray,
    xb: np.ndarray,
    bias: np.ndarray,
    weights,
    data: RecData,
    split: str = "valid",
    ks: tuple[int, ...] = (10, 20),
) -> tuple[int, EvalResult, list[float]]:
    """The best of a grid of additive item biases: ranking by ``xq @ xb.T + w * bias`` for
    each w of ``weights``, full catalogue (or ``split``'s candidates), seen items excluded,
    exactly as ``evaluate_embeddings`` with ``w * bias`` added to the item embeddings'
    coordinate that multiplies the query's constant 1 (the popularity prior).

    The scores are computed once for every weight (``recsys.eval.prior_grid``). Returns the
    index of the weight with the best NDCG@min(ks) (the first of ties), its ``EvalResult``
    (every metric; ``search_seconds``: the whole grid's search) and each weight's NDCG@min(ks).
    """
    ks = tuple(ks)
    cand, xb, exclude = _ranked(data, split, users, xb)
    bias = np.asarray(bias, dtype=np.float32)
    bias = bias if cand is None else bias[cand]
    t = time.perf_counter()
    found = topk_bias_grid(xq, xb, bias, weights, max(ks), exclude)  # [(D, I) (Q, k)] per weight
    secs = time.perf_counter() - t
    ids = [_item_ids(I, cand) for _, I in found]
    truth = data.truth(split)[users]
    k0, W, Q = min(ks), len(ids), len(users)
    # every weight's lists in one call: rows w * Q + q against the truth repeated W times
    pu = per_user_metrics(np.concatenate([I[:, :k0] for I in ids]), sp.vstack([truth] * W).tocsr(), (k0,))
    which = pu["users"] // Q  # (W U,) the weight of each evaluated row
    scores = (np.bincount(which, pu[f"ndcg@{k0}"], W) / np.maximum(np.bincount(which, minlength=W), 1)).tolist()
    best = int(np.argmax(scores))  # the first of ties
    res = topk_metrics(ids[best], users, data, split, ks, seconds=secs)
    logger.info("scored %d queries over %d items for %d prior weights in %.2fs", len(xq), len(xb),
                len(ids), secs)
    return best, res, scores


@torch.no_grad()
def evaluate(model, data, split: str = "test", ks=(10, 20), index: str = "exact",
             index_params: dict | None = None) -> EvalResult:
    """Full-catalogue metrics of ``model`` on ``split``.

    ``model``: a ``TwoTowerModule`` with ``data`` its ``InteractionDataModule`` (queries
    embedded with the evaluation inputs; any retriever ``index``), or a fitted ``Baseline`` with
    ``data`` a ``RecData`` or a data module (always exact: ``index`` must stay ``exact``). Seen
    items (``data.seen(split)``) are excluded either way.
    """
    ks = tuple(ks)
    if isinstance(model, Baseline):
        require(index == "exact", f"index={index!r} for baseline {model}: baselines are scored exactly. "
                "Fix: leave index='exact' (approximate retrieval applies to two-tower models).")
        d = data if isinstance(data, RecData) else data.data
        users = d.eval_users(split)
        if d.candidates(split) is not None:  # a candidate subset: the embedding path ranks it
            return evaluate_embeddings(model.query_vectors(users), users, model.xb, d, split, ks)
        t = time.perf_counter()
        I = model.topk(users, max(ks), exclude=d.seen(split)[users])  # (Q, k)
        secs = time.perf_counter() - t
        logger.info("%s: scored %d %s users in %.2fs", model, len(users), split, secs)
        return topk_metrics(I, users, d, split, ks, seconds=secs)
    require(hasattr(data, "eval_dataloader"), f"data is a {type(data).__name__}: a two-tower model is evaluated "
            "with its InteractionDataModule (its queries need the evaluation inputs). Fix: pass the data module, "
            "e.g. InteractionDataModule.from_data(data).")
    users, xq = _eval_queries(model, data, split)
    xb = model.item_embeddings().float().cpu().numpy()
    if index == "beam":
        return evaluate_beam(model.head, xq, users, xb, data.data, split, ks, **(index_params or {}),
                             leaf_prior=model.beam_leaf_prior())
    return evaluate_embeddings(xq, users, xb, data.data, split, ks, index, index_params)


def _eval_queries(model, data, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(users (Q,), xq (Q, D)) of ``split``, embedded in evaluation mode (the model's mode restored)."""
    was = model.training
    model.eval()
    try:
        return embed_queries(model.query_tower, data.eval_dataloader(split))
    finally:
        model.train(was)


def calibration(model, data, split: str = "test") -> dict | None:
    """Calibration of ``model``'s label probabilities on ``split`` over every (query, item)
    pair (``recsys.eval.metrics.calibration_metrics``: ECE, Brier, expected labels), or None
    where the model defines no probabilities (baselines other than one-vs-rest).

    ``model``: a ``TwoTowerModule`` with ``data`` its data module (the head's
    ``probabilities`` of the scores q . v, without the retrieval prior), or a ``Baseline``
    with a ``RecData`` or data module. Needs (Q, N) dense: meant for label sets (N up to
    ~10^4), as in multi-label document data.
    """
    if isinstance(model, Baseline):
        d = data if isinstance(data, RecData) else data.data
        users = d.eval_users(split)
        prob = model.probabilities(users)
        return None if prob is None else calibration_metrics(prob, d.truth(split)[users])
    users, xq = _eval_queries(model, data, split)
    with torch.no_grad():
        xb = model.item_tower.embed_all().float().cpu()  # (N, D), no prior
        prob = model.head.probabilities(torch.from_numpy(xq) @ xb.T).numpy()  # (Q, N)
    return calibration_metrics(prob, data.data.truth(split)[users])


def evaluate_beam(head, xq: np.ndarray, users: np.ndarray, xb: np.ndarray, data: RecData, split: str = "valid",
                  ks: tuple[int, ...] = (10, 20), beam: int = 16, temperature: float = 0.0, rerank: bool | None = None,
                  seed: int = 0, leaf_prior: np.ndarray | None = None) -> EvalResult:
    """Metrics of beam search over a tree head's item index (``TreeSoftmax.beam_topk``: ``beam``
    prefixes per level, seen items excluded; ``temperature`` > 0 a Gumbel beam, ``rerank`` orders
    the surviving leaves by the exact score, None: the head's default; ``leaf_prior`` (N,) the
    popularity prior ``xb`` carries, applied after the leaf level's normalisation, ``BeamIndex``);
    ``index_recall`` is the overlap of its top-k with the exact two-tower top-k (inner products
    of the same embeddings)."""
    require(hasattr(head, "beam_topk"), f"index='beam' needs a head with an item tree (TreeSoftmax); this model's "
            f"head is {type(head).__name__}. Fix: train with model.head TreeSoftmax, or use index exact / ivf / hnsw.")
    require(data.candidates(split) is None, f"index='beam' ranks the whole catalogue; split {split!r} ranks a subset. "
            "Fix: use index='exact' for cold_items.")
    exclude = data.seen(split)[users]
    t = time.perf_counter()
    I, _ = head.beam_topk(xq, xb, max(ks), beam=beam, exclude=exclude, temperature=temperature, rerank=rerank,
                          rng=np.random.default_rng(seed), leaf_prior=leaf_prior)
    res = topk_metrics(I, users, data, split, ks, seconds=time.perf_counter() - t)
    _, I_exact = make_retriever("exact").build(np.ascontiguousarray(xb)).search(
        np.ascontiguousarray(xq, dtype=np.float32), max(ks), exclude=exclude)
    res.metrics["index_recall"] = recall_vs_exact(np.where(I >= 0, I, -1), I_exact)
    logger.info("beam %d over %d queries: %.2fs", beam, len(xq), res.metrics["search_seconds"])
    return res
