"""Hard negatives mined from a FAISS index of the item tower, refreshed during training."""

from __future__ import annotations

import torch

from recsys.model.heads.base import HeadOutput
from recsys.model.heads.inbatch import InBatchSoftmax
from recsys.model.mining import HardNegativeMiner, MinerRefresh


class HardNegativeSoftmax(InBatchSoftmax):
    """In-batch (or mixed) softmax plus, per query, the K items the current model ranks
    highest among those the user has not interacted with.

    The item embeddings are indexed with FAISS (inner product, the training score) and the
    index (``recsys.model.mining.HardNegativeMiner``) is rebuilt every ``refresh_every`` steps
    by its ``MinerRefresh`` callback (``callbacks()``, added by ``TwoTowerModule``), so mining
    costs a k-NN search per batch instead of a full scoring pass. The top ``skip_top`` results
    are skipped as likely false negatives
    (unlabelled positives), a trick from ANCE (Xiong et al. 2021) and Facebook search
    (Huang et al. 2020, "Embedding-based Retrieval in Facebook Search", which also finds
    that mixing hard with easy negatives works better than hard alone). Known positives are
    never returned (they are excluded inside the search). Hard negatives are not sampled,
    so they get no logQ correction; the in-batch part keeps its own.

    Args:
        num_hard: K hard negatives per query.
        skip_top: m top-ranked unlabelled items skipped before taking K.
        refresh_every: steps between index rebuilds (staleness is logged).
        index: ``exact`` (``ExactRetriever``: BLAS scores with the known positives set to -inf),
            ``flat`` (FAISS exact), ``ivf``, ``hnsw`` or ``auto`` (exact below 20k items, else ivf:
            an exact search scores all N items at every step, ~50x slower than IVF at 100k
            items). Below 20k items ``exact`` beats ``flat``: FAISS cannot exclude per query, so
            it over-fetches k + |train items| and filters; on ML-1M (heavy users: ~1,800 train
            items of 3,123) that was 0.6 s of mining per step against 0.05 s for ``exact``.
        index_params: parameters of the FAISS retriever, over the mining defaults for ivf:
            ``nlist = sqrt(N)`` cells, ``nprobe=1``, 10 k-means iterations, query chunks of
            256 (``MINING_IVF``).
            Mining needs hard items, not the exact top-k, and the IVF search is most of a
            mining step: at N = 1e6 one cell of ~1000 items per query keeps ~0.98 of the
            exact top-16 on clustered embeddings (bench/eval_speed) at ~1/4 of the cost of
            the retrieval defaults (4 sqrt(N) cells, nprobe 16).
        retrain_every: refreshes between k-means trainings of the IVF cells; the refreshes in
            between keep the cells and only re-assign the new embeddings (at N = 1e6 a refresh
            then costs ~5 s instead of ~30 s). 1 retrains at every refresh.
        other arguments: as ``InBatchSoftmax`` (logQ, duplicate masking, ``num_uniform``).
    """

    def __init__(self, num_hard: int = 16, skip_top: int = 0, refresh_every: int = 500,
                 index: str = "auto", index_params: dict | None = None, retrain_every: int = 10,
                 logq: str = "static", mask_duplicates: bool = True, num_uniform: int = 0,
                 temperature: float = 1.0, learn_temperature: bool = False):
        super().__init__(logq=logq, mask_duplicates=mask_duplicates, mask_known_positives=True,
                         num_uniform=num_uniform, temperature=temperature,
                         learn_temperature=learn_temperature)
        self.miner = HardNegativeMiner(num_hard, skip_top, refresh_every, index, index_params, retrain_every)

    def callbacks(self) -> list:
        """``MinerRefresh``: rebuilds the miner's index every ``refresh_every`` steps."""
        return [MinerRefresh(self.miner)]

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        m = self.miner
        return super().size_checks(n_items) + [
            ("num_hard + skip_top", m.num_hard + m.skip_top, n_items,
             "mine fewer hard negatives (num_hard) or skip fewer (skip_top)")]

    def mine(self, q: torch.Tensor, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) hard negative ids (-1 where fewer remain); the users' known positives and
        (if given) the batch positives ``items`` are excluded inside the search."""
        return self.miner.mine(q, self.known.rows(users.cpu().numpy()), items)  # exclude: (B, N) CSR

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        users, items = batch["user"], batch["item"]
        if not self.miner.built():  # first step without the callback: build once
            self.miner.refresh(item_tower.embed_all())
        hard = self.mine(q, users, items)  # (B, K)
        pos, neg, lq_pos, lq_neg, hits, own = self.candidates(q, users, items, item_tower)
        v_hard = item_tower(hard.clamp(min=0))  # (B, K, D)
        s_hard = torch.einsum("bd,bkd->bk", q, v_hard)  # (B, K)
        neg = torch.cat([neg, s_hard], 1)  # (B, C + K)
        hits = torch.cat([hits, hard == items[:, None]], 1)  # the positive (only if not a known one)
        drop = torch.cat([own, hard < 0], 1)  # own positive and -1 padding: no candidates
        if lq_neg is not None:  # hard negatives are chosen, not sampled: no correction
            lq_neg = torch.cat([lq_neg[None, :].expand(len(items), -1), torch.zeros_like(s_hard)], 1)
        if self.training:
            self.miner.step()
        out = self.softmax_loss(pos, neg, lq_pos, lq_neg, hits, drop=drop, extra_logs={
            "index_staleness": torch.tensor(float(self.miner.steps_since_refresh)),
            "refresh_seconds": torch.tensor(self.miner.last_refresh_seconds),
            "mine_seconds": torch.tensor(self.miner.last_mine_seconds),
            "hard_logit": s_hard.detach().mean(),
        })
        if self.streaming is not None and self.training:
            self.streaming.update(items)
        return out
