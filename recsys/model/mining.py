"""Hard-negative mining: a retrieval index over the item tower, refreshed during training.

``HardNegativeMiner`` owns everything mining needs: the retriever (exact or FAISS), the IVF
cells it reuses between refreshes, its counters and timings. Its whole state travels in
the model's ``state_dict`` (``get_extra_state`` / ``set_extra_state``: the (N, D) embeddings
the current index was built from, the cells, the counters), so a checkpoint resumes with
the same stale index the uninterrupted run was mining from, and loading needs no callback.
One callback, ``MinerRefresh``, decides when to rebuild it (every ``refresh_every`` steps
and before the first); the head only asks it for negatives.
"""

from __future__ import annotations

import math
import time

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys.errors import require
from recsys.retrieval import make_retriever

__all__ = ["HardNegativeMiner", "MinerRefresh"]


class HardNegativeMiner(nn.Module):
    """The K items the current item tower ranks highest for a query, excluding given items.

    Args:
        num_hard: K negatives per query.
        skip_top: m top-ranked results skipped before taking K (likely false negatives).
        refresh_every: steps between index rebuilds (``MinerRefresh``).
        index: ``exact``, ``flat``, ``ivf``, ``hnsw`` or ``auto`` (exact below 20k items,
            else ivf).
        index_params: retriever parameters, over the mining defaults for ivf (``MINING_IVF``,
            ``nlist = sqrt(N)``).
        retrain_every: refreshes between k-means trainings of the IVF cells; the refreshes
            in between keep the cells and only re-assign the new embeddings.

    Counters: ``steps_since_refresh`` (index staleness), ``refresh_count``; timings:
    ``last_refresh_seconds``, the totals ``refresh_seconds`` (index builds), ``embed_seconds``
    (``refresh_from``'s catalogue embedding), ``mine_seconds`` over ``mine_calls``, and
    ``build_log``: ``(seconds, trained)`` of every build (``trained``: new IVF cells).
    """

    # cheap defaults for mining (index_params override); query_chunk 256: a batch is searched in
    # 4 chunks of similar users, so only the heaviest users' chunk over-fetches their many positives
    MINING_IVF = {"nprobe": 1, "niter": 10, "query_chunk": 256}

    def __init__(self, num_hard: int = 16, skip_top: int = 0, refresh_every: int = 500, index: str = "auto",
                 index_params: dict | None = None, retrain_every: int = 10):
        super().__init__()
        require(isinstance(retrain_every, int) and retrain_every >= 1,
                f"HardNegativeSoftmax retrain_every={retrain_every}: need an integer >= 1 (refreshes between "
                "k-means trainings of the IVF cells). Fix: e.g. retrain_every=10, or 1 to retrain at every refresh.")
        require(isinstance(refresh_every, int) and refresh_every >= 1,
                f"HardNegativeSoftmax refresh_every={refresh_every}: need an integer >= 1 (training steps between "
                "index rebuilds). Fix: e.g. refresh_every=500.")
        self.num_hard, self.skip_top, self.refresh_every = num_hard, skip_top, refresh_every
        self.index, self.index_params, self.retrain_every = index, dict(index_params or {}), retrain_every
        self.retriever = None
        self.centroids: np.ndarray | None = None  # (nlist, D) IVF cells of the current index (None: not ivf)
        self.xb: torch.Tensor | None = None  # (N, D) embeddings the current index was built from
        self.steps_since_refresh = 0
        self.refresh_count = 0
        self.last_refresh_seconds = 0.0
        self.refresh_seconds = self.mine_seconds = 0.0  # totals, for benchmarks
        self.mine_calls, self.last_mine_seconds, self.embed_seconds = 0, 0.0, 0.0
        self.build_log: list[tuple[float, bool]] = []
        self._pending: dict | None = None  # loaded state, rebuilt on first use

    # ---- index ------------------------------------------------------------------------
    def built(self) -> bool:
        """True when there is an index to mine from (a loaded state counts)."""
        self._restore()
        return self.retriever is not None

    def due(self) -> bool:
        """True when the index must be (re)built: none yet, or ``refresh_every`` steps old."""
        self._restore()
        return self.retriever is None or self.steps_since_refresh >= self.refresh_every

    def refresh(self, item_embeddings: torch.Tensor, retrain: bool | None = None) -> float:
        """Rebuild the index from (N, D) item embeddings; returns the seconds it took.

        An IVF index keeps its cells (``self.centroids``) and only re-adds the embeddings,
        except at every ``retrain_every``-th refresh (and the first), or when ``retrain``
        says so (True: train new cells; False: reuse ``self.centroids``)."""
        t = time.perf_counter()
        self.xb = item_embeddings.detach().float().cpu().clone()
        xb = np.ascontiguousarray(self.xb.numpy())
        name = self.index if self.index != "auto" else ("exact" if len(xb) < 20_000 else "ivf")
        params = dict(self.index_params)
        if name == "ivf":
            params = {**self.MINING_IVF, "nlist": max(1, round(math.sqrt(len(xb)))), **params}
            if retrain is None:
                retrain = self.refresh_count % self.retrain_every == 0
            reuse = not retrain and self.centroids is not None and self.centroids.shape[1] == xb.shape[1]
            params["centroids"] = self.centroids if reuse else None
        trained = name == "ivf" and params["centroids"] is None
        self.retriever = make_retriever(name, **params).build(xb)
        self.centroids = getattr(self.retriever, "centroids", None)
        self.steps_since_refresh = 0
        self.refresh_count += 1
        self.last_refresh_seconds = time.perf_counter() - t
        self.refresh_seconds += self.last_refresh_seconds
        self.build_log.append((self.last_refresh_seconds, trained))
        return self.last_refresh_seconds

    def refresh_from(self, item_tower) -> float:
        """Embed the catalogue with ``item_tower.embed_all()`` (timed into ``embed_seconds``)
        and rebuild the index from it; returns the build seconds."""
        t = time.perf_counter()
        xb = item_tower.embed_all()  # (N, D)
        self.embed_seconds += time.perf_counter() - t
        return self.refresh(xb)

    def step(self) -> None:
        """One training step has used the index (its staleness grows by one)."""
        self.steps_since_refresh += 1

    # ---- mining -----------------------------------------------------------------------
    def mine(self, q: torch.Tensor, exclude: sp.csr_matrix, positives: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) int64 hard negative ids for queries q (B, D), on q's device; -1 where fewer
        than K remain. Never returned: ``exclude`` (B, N) CSR (the users' known positives) and,
        if given, ``positives`` (B,) (each row's own positive, which may be a held-out item).
        ``mine_seconds`` counts the whole call (exclusion matrix and search)."""
        self._restore()
        require(self.retriever is not None, "HardNegativeMiner.mine before refresh: there is no index. "
                "Fix: call refresh(item_tower.embed_all()) first (MinerRefresh does).")
        t = time.perf_counter()
        if positives is not None:
            B, N = exclude.shape
            own = sp.csr_matrix((np.ones(B, dtype=exclude.dtype), (np.arange(B), positives.cpu().numpy())),
                                shape=(B, N))
            exclude = exclude + own
        xq = np.ascontiguousarray(q.detach().float().cpu().numpy())
        kk = min(self.num_hard + self.skip_top, self.retriever.N)  # search needs k <= N
        _, ids = self.retriever.search(xq, kk, exclude=exclude)  # (B, kk), -1 padded
        ids = ids[:, self.skip_top:]
        if ids.shape[1] < self.num_hard:  # tiny catalogue: pad to K with -1 (masked)
            ids = np.pad(ids, ((0, 0), (0, self.num_hard - ids.shape[1])), constant_values=-1)
        self.last_mine_seconds = time.perf_counter() - t
        self.mine_seconds += self.last_mine_seconds
        self.mine_calls += 1
        return torch.from_numpy(np.ascontiguousarray(ids)).to(q.device)  # (B, K)

    # ---- state ------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        """The index as data: its embeddings (N, D), IVF cells and counters (empty before the
        first refresh). Stored in the model's ``state_dict``, so in every checkpoint."""
        if self._pending is not None:
            return dict(self._pending)
        if self.xb is None:
            return {}
        return {"xb": self.xb, "centroids": None if self.centroids is None else torch.from_numpy(self.centroids.copy()),
                "steps_since_refresh": int(self.steps_since_refresh), "refresh_count": int(self.refresh_count),
                "last_refresh_seconds": float(self.last_refresh_seconds)}

    def set_extra_state(self, state: dict) -> None:
        """Restore the index of ``get_extra_state`` (rebuilt lazily, on the next ``due`` or
        ``mine``, from the stored embeddings and cells, not from the current weights)."""
        self._pending = dict(state) if state else None
        if not state:
            self.retriever, self.xb, self.centroids = None, None, None

    def _restore(self) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        centroids = state.get("centroids")  # IVF cells the interrupted run's index used
        self.centroids = None if centroids is None else centroids.numpy()
        self.refresh(state["xb"], retrain=centroids is None)  # the index it was mining from
        self.steps_since_refresh = state["steps_since_refresh"]
        self.refresh_count = state["refresh_count"]
        self.last_refresh_seconds = state["last_refresh_seconds"]


class MinerRefresh(L.Callback):
    """Rebuild ``miner``'s index from the current item tower before the first training step
    and whenever it is ``refresh_every`` steps old (``HardNegativeMiner.due``)."""

    def __init__(self, miner: HardNegativeMiner):
        self.miner = miner

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.miner.due():
            self.miner.refresh_from(pl_module.item_tower)
