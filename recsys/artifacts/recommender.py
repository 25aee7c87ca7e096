"""Recommend for one user from a checkpoint or an export folder, with optional temperature
sampling (Gumbel top-k).

    rec = Recommender.from_export("exports/ml-1m")
    rec.recommend("42", k=10)                      # plain top-k, seen items excluded
    rec.recommend("42", k=10, temperature=0.5, seed=0)  # sampled without replacement
    rec.recommend("42", k=10, beam=16)             # a TreeSoftmax model: its own beam search
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.artifacts.export import load_export, query_embeddings
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError, require
from recsys.retrieval.tree import BeamIndex

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
    """Scores every item by inner product and returns the best unseen ones: for a known user
    (``recommend``), for a user the model has never seen from the items they interacted with
    (``recommend_history``), or for many users at once (``recommend_many``)."""

    xb: np.ndarray  # (N, D) float32 item embeddings
    embed_users: Callable[[np.ndarray], np.ndarray]  # user indices (Q,) -> (Q, D) query embeddings
    seen: sp.csr_matrix  # (U, N) items never recommended to each user (train + valid)
    user_vocab: Vocab
    item_vocab: Vocab
    titles: np.ndarray | None = None  # (N,) str
    embed_history: Callable[[list[np.ndarray]], np.ndarray] | None = None  # item-index lists -> (Q, D)
    item_features: list[str] | None = None  # (N,) the feature tokens of each item, for display
    beam_index: BeamIndex | None = None  # a TreeSoftmax model's tree (its first n_items are the leaves)

    @classmethod
    def from_checkpoint(cls, path, data_root=None) -> Recommender:
        from recsys.artifacts.checkpoint import load_checkpoint  # Lightning and the model: only for --ckpt

        model, dm, _ = load_checkpoint(path, data_root)
        d = dm.data
        xb = model.item_embeddings().float().cpu().numpy()
        feats = d.item_feature_strings()
        return cls(xb, lambda users: query_embeddings(model.query_tower, d, users, dm.max_history),
                   d.seen("test"), d.user_vocab, d.item_vocab, d.item_titles,
                   history_embedder(model.query_tower, d.n_items, dm.max_history), feats,
                   model.head.beam_index(model.beam_leaf_prior()) if hasattr(model.head, "beam_index") else None)

    @classmethod
    def from_export(cls, folder) -> Recommender:
        e = load_export(folder)
        n_trained = int(e.manifest.get("n_trained_items", e.item_embeddings.shape[0]))  # before export --items
        tower_file = e.folder / "query_tower.npz"
        hist = None
        if tower_file.is_file():
            cache: dict = {}

            def hist(histories):  # the query tower is read only when a new user's history needs it
                if "embed" not in cache:
                    from recsys.artifacts.export import load_query_tower

                    cache["embed"] = history_embedder(load_query_tower(folder), n_trained,
                                                      int(e.manifest.get("max_history", 50)))
                    if cache["embed"] is None:
                        raise ConfigError(f"export {str(folder)!r}: its query tower pools no item history, so it "
                                          "cannot describe a new user by items. Fix: use --user with a known id.")
                return cache["embed"](histories)

        return cls(e.item_embeddings, lambda users: e.user_embeddings[users], e.seen, e.user_vocab,
                   e.item_vocab, e.titles, hist, e.item_features, e.beam_index)

    def _rows(self, scores: np.ndarray, exclude: np.ndarray, k: int, temperature: float, seed) -> list[dict]:
        if k > len(scores):
            raise ConfigError(f"k={k} exceeds the catalogue size N={len(scores)}. Fix: choose k <= N.")
        ids = gumbel_topk(scores, k, temperature, np.random.default_rng(seed), exclude_mask=exclude)
        ids = ids[ids >= 0]
        return self._format(ids, scores[ids])

    def _format(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        raw = self.item_vocab.decode(ids)
        return [{"rank": r + 1, "item": raw[r].item() if hasattr(raw[r], "item") else raw[r],
                 "score": float(scores[r]),
                 "title": None if self.titles is None else str(self.titles[i]),
                 **({} if self.item_features is None else {"features": self.item_features[i]})}
                for r, i in enumerate(ids)]

    def _beam(self, xq: np.ndarray, exclude: sp.csr_matrix, k: int, beam: int, temperature: float = 0.0,
              seed=None) -> tuple[np.ndarray, np.ndarray]:
        """(I, S) (Q, k): the tree's beam search for queries ``xq`` (Q, D), ``exclude`` (Q, N) CSR;
        ``temperature`` > 0 a stochastic (Gumbel) beam. Items added after training (``export
        --items``) are not in the tree and never returned."""
        if self.beam_index is None:
            raise ConfigError(f"beam={beam}: beam search needs a model trained with the TreeSoftmax head (its item "
                              "tree); this model has none. Fix: drop --beam (exact top-k), or export a TreeSoftmax "
                              "checkpoint.")
        n = self.beam_index.tree.n_items  # beam < 1: beam_search's ConfigError
        if k > n:
            raise ConfigError(f"k={k} exceeds the tree's {n} items. Fix: choose k <= {n}.")
        return self.beam_index.search(np.asarray(xq, dtype=np.float32), self.xb[:n], k, beam,
                                      exclude=sp.csr_matrix(exclude)[:, :n], temperature=temperature,
                                      rng=np.random.default_rng(seed))

    def _beam_rows(self, q: np.ndarray, exclude: sp.csr_matrix, k, beam, temperature, seed) -> list[dict]:
        I, S = self._beam(q[None, :], exclude, k, beam, temperature, seed)
        ok = I[0] >= 0
        return self._format(I[0][ok], S[0][ok])

    def recommend(self, user, k: int = 10, temperature: float = 0.0, seed: int | None = None,
                  beam: int | None = None) -> list[dict]:
        """Rows {rank, item, score, title[, features]} for raw user id ``user``; seen items excluded.

        ``temperature`` > 0 samples k distinct items from softmax(score / T) (``gumbel_topk``).
        ``beam``: a TreeSoftmax model's beam search with ``beam`` prefixes per level instead
        (score: the tree's log-probability, or the exact score with the head's ``rerank``;
        ``temperature`` > 0: the stochastic beam).
        """
        u = int(self.user_vocab.encode([user])[0])  # unknown id -> the Vocab's DataError
        q = self.embed_users(np.array([u]))[0].astype(np.float32)  # (D,)
        if beam is not None:
            return self._beam_rows(q, self.seen[u], k, beam, temperature, seed)
        scores = self.xb @ q  # (N,)
        mask = np.zeros(len(scores), dtype=bool)
        mask[self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]] = True
        return self._rows(scores, mask, k, temperature, seed)

    def recommend_history(self, items, k: int = 10, temperature: float = 0.0, seed: int | None = None,
                          beam: int | None = None) -> list[dict]:
        """Rows for a user the model has never seen, described by the raw ids of the ``items``
        they interacted with (the query tower's bag; no user id, no user features). Those
        items are excluded from the result. ``beam``: as in ``recommend``."""
        if self.embed_history is None:
            raise ConfigError("recommend --history needs a query tower that pools a bag of item ids "
                              "(QueryTower use_bag: true over the item history). Fix: use a model trained "
                              "with use_bag and max_history > 0, from --ckpt or a new export.")
        idx = self.item_vocab.encode(list(items))  # unknown id -> the Vocab's DataError
        q = self.embed_history([idx])[0].astype(np.float32)  # (D,)
        if beam is not None:
            ex = sp.csr_matrix((np.ones(len(idx)), (np.zeros(len(idx), int), idx)), shape=(1, len(self.xb)))
            return self._beam_rows(q, ex, k, beam, temperature, seed)
        scores = self.xb @ q  # (N,)
        mask = np.zeros(len(scores), dtype=bool)
        mask[idx] = True
        return self._rows(scores, mask, k, temperature, seed)

    def recommend_many(self, users=None, k: int = 10, chunk: int = 4096, index: str = "exact",
                       beam: int | None = None):
        """Top-k for many known users, ``chunk`` at a time, through the retrievers evaluation
        uses (``recsys.retrieval``; seen items excluded), or with ``beam`` the TreeSoftmax
        model's beam search. ``users``: raw ids, or None for every user. Yields pandas frames
        (user, rank, item, score), one per chunk."""
        import pandas as pd

        from recsys.retrieval import make_retriever

        idx = np.arange(len(self.user_vocab)) if users is None else self.user_vocab.encode(list(users))
        if k > self.xb.shape[0]:
            raise ConfigError(f"k={k} exceeds the catalogue size N={self.xb.shape[0]}. Fix: choose k <= N.")
        if beam is None:
            retriever = make_retriever(index).build(np.ascontiguousarray(self.xb, dtype=np.float32))
        for s in range(0, len(idx), chunk):
            u = idx[s:s + chunk]  # (Q,)
            xq = np.ascontiguousarray(self.embed_users(u), dtype=np.float32)
            if beam is None:
                D, I = retriever.search(xq, k, exclude=self.seen[u])  # (Q, k)
            else:
                I, D = self._beam(xq, self.seen[u], k, beam)
            ok = I >= 0
            rows, ranks = np.nonzero(ok)
            yield pd.DataFrame({"user": self.user_vocab.decode(u[rows]), "rank": (ranks + 1).astype(np.int32),
                                "item": self.item_vocab.decode(I[ok]), "score": D[ok].astype(np.float32)})


def history_embedder(query_tower, n_items: int, max_history: int):
    """A function item-index lists -> (Q, D) query embeddings of new users (user id -1, the bag
    = the listed items, evenly thinned to ``max_history``); None when the tower has no item bag."""
    import torch

    from recsys.data.batches import pad_rows

    bag = getattr(query_tower, "bag_emb", None)
    if bag is None or bag.num_embeddings != n_items + 1:
        return None

    @torch.no_grad()
    def embed(histories: list[np.ndarray]) -> np.ndarray:
        late = [int(j) for h in histories for j in h if j >= n_items]
        if late:
            raise DataError(f"history items with index {late[:5]} were added after training (export --items): the "
                            f"query tower knows the {n_items} items it was trained on. Fix: describe the user by "
                            "items of the training catalogue.")
        indptr = np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int64)
        flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        H = max(1, min(max_history or 1, int(np.diff(indptr).max())))
        b = pad_rows(indptr, flat, np.arange(len(histories)), H, pad=n_items)  # (Q, H)
        was = query_tower.training
        query_tower.eval()
        try:
            batch = {"user": torch.full((len(histories),), -1, dtype=torch.long), "bag": torch.from_numpy(b)}
            return query_tower(batch).float().cpu().numpy()
        finally:
            query_tower.train(was)

    return embed
