"""Recommend for one user from a checkpoint or an export folder, with optional temperature
sampling (Gumbel top-k).

    rec = Recommender.from_export("exports/ml-1m")
    rec.recommend("42", k=10)                      # plain top-k, seen items excluded
    rec.recommend("42", k=10, temperature=0.5, seed=0)  # sampled without replacement
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.artifacts.export import load_export, query_embeddings
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError, require

__all__ = ["gumbel_topk", "Recommender"]


def gumbel_topk(scores: np.ndarray, k: int, temperature: float = 0.0, rng: np.random.Generator | None = None,
                exclude_mask: np.ndarray | None = None) -> np.ndarray:
    """k distinct ids drawn without replacement from softmax(scores / temperature).

    Gumbel top-k trick (Vieira 2014; Kool, van Hoof & Welling, ICML 2019, "Stochastic Beams
    and Where to Find Them"): the ids of the k largest ``scores / T + G``, G i.i.d.
    Gumbel(0, 1), are an ordered sample without replacement from softmax(scores / T).
    ``temperature`` <= 0 is plain top-k (the T -> 0 limit): by score desc, ties by smaller
    id, as ``recsys.retrieval``. Large T approaches uniform sampling over admissible items.

    scores (N,) or (Q, N); ``exclude_mask`` bool of the same shape marks ids never returned.
    Returns int64 (k,) or (Q, k), best first, padded with -1 when fewer than k are admissible.
    """
    S = np.asarray(scores, dtype=np.float64)
    one = S.ndim == 1
    S = np.atleast_2d(S)
    require(S.ndim == 2, f"scores have shape {np.shape(scores)}: they must be (N,) or (Q, N). Fix: pass one "
            "row of item scores per query.", DataError)
    if k < 1:
        raise ConfigError(f"k={k} < 1: need at least one result. Fix: choose k >= 1.")
    if not np.isfinite(S).all():
        raise DataError(f"scores hold {np.count_nonzero(~np.isfinite(S))} NaN/inf values: they must be "
                        "finite. Fix: check the towers for diverged weights.")
    if temperature > 0:
        rng = rng if rng is not None else np.random.default_rng()
        keys = S / temperature + rng.gumbel(size=S.shape)  # (Q, N) perturbed log-weights
    else:
        keys = S.copy()
    if exclude_mask is not None:
        ex = np.atleast_2d(np.asarray(exclude_mask, dtype=bool))
        require(ex.shape == keys.shape, f"exclude_mask has shape {ex.shape}, scores {keys.shape}: they must match. "
                "Fix: pass one bool per score (True = never returned).", DataError)
        keys[ex] = -np.inf
    Q, N = keys.shape
    out = np.full((Q, k), -1, dtype=np.int64)
    for r in range(Q):
        row = keys[r]
        kk = min(k, N)
        t = np.partition(row, N - kk)[N - kk]  # kk-th largest key
        cand = np.flatnonzero(row >= t) if np.isfinite(t) else np.flatnonzero(np.isfinite(row))
        cand = cand[np.lexsort((cand, -row[cand]))][:kk]  # key desc, then id asc
        out[r, : len(cand)] = cand
    return out[0] if one else out


@dataclass
class Recommender:
    """Scores every item for one user by inner product and returns the best unseen ones."""

    xb: np.ndarray  # (N, D) float32 item embeddings
    embed_user: Callable[[int], np.ndarray]  # user index -> (D,) query embedding
    seen: sp.csr_matrix  # (U, N) items never recommended to each user (train + valid)
    user_vocab: Vocab
    item_vocab: Vocab
    titles: np.ndarray | None = None  # (N,) str

    @classmethod
    def from_checkpoint(cls, path, data_root=None) -> Recommender:
        from recsys.artifacts.checkpoint import load_checkpoint  # Lightning and the model: only for --ckpt

        model, dm, _ = load_checkpoint(path, data_root)
        d = dm.data
        xb = model.item_embeddings().float().cpu().numpy()

        def embed_user(u: int) -> np.ndarray:
            return query_embeddings(model.query_tower, d, np.array([u]), dm.max_history)[0]

        return cls(xb, embed_user, d.seen("test"), d.user_vocab, d.item_vocab, d.item_titles)

    @classmethod
    def from_export(cls, folder) -> Recommender:
        e = load_export(folder)
        return cls(e.item_embeddings, lambda u: e.user_embeddings[u], e.seen, e.user_vocab,
                   e.item_vocab, e.titles)

    def recommend(self, user, k: int = 10, temperature: float = 0.0, seed: int | None = None) -> list[dict]:
        """Rows {rank, item, score, title} for raw user id ``user``; seen items excluded.

        ``temperature`` > 0 samples k distinct items from softmax(score / T) (``gumbel_topk``).
        """
        u = int(self.user_vocab.encode([user])[0])  # unknown id -> the Vocab's DataError
        scores = self.xb @ self.embed_user(u).astype(np.float32)  # (N,)
        mask = np.zeros(len(scores), dtype=bool)
        mask[self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]] = True
        if k > len(scores):
            raise ConfigError(f"k={k} exceeds the catalogue size N={len(scores)}. Fix: choose k <= N.")
        ids = gumbel_topk(scores, k, temperature, np.random.default_rng(seed), exclude_mask=mask)
        ids = ids[ids >= 0]
        raw = self.item_vocab.decode(ids)
        return [{"rank": r + 1, "item": raw[r].item() if hasattr(raw[r], "item") else raw[r],
                 "score": float(scores[i]),
                 "title": None if self.titles is None else str(self.titles[i])}
                for r, i in enumerate(ids)]
