"""Tree-factorised softmax: p(item | u) as a product of softmaxes over the children of a
balanced item tree, trained with teacher forcing and served by beam search."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError
from recsys.model.heads.base import Head, HeadOutput, LazyLogs, head_logs
from recsys.retrieval.tree import BeamIndex, ItemTree


class TreeSoftmax(Head):
    """Hierarchical softmax over a balanced K-ary item tree of depth L (``recsys.retrieval.tree``).

    Each item has a code (c_1, ..., c_L); with prefix_l = (c_1, ..., c_{l-1}),

        p(item | u) = prod_l p(c_l | u, prefix_l),  p(c | u, prefix) = softmax_c (q . e_{prefix, c} / T)

    over the K children of the prefix (empty children masked), so the per-user log-partition of
    each level is over K nodes only: a step costs O(B L K D), flat in the catalogue size N, with
    no negative sampling (Morin & Bengio, AISTATS 2005, "Hierarchical Probabilistic Neural
    Network Language Model"; as a retrieval index: TDM, Zhu et al., KDD 2018, "Learning
    Tree-based Deep Model for Recommender Systems"; Deep Retrieval, Gao et al., 2020; label trees
    of extreme classification: Parabel, Prabhu et al., WWW 2018; AttentionXML, You et al.,
    NeurIPS 2019). Internal nodes have their own D-vectors (``node_emb[l]``, K^(l+1) rows at
    depth l + 1); the leaves are the items and use the item tower's embeddings, so a leaf's
    logit is the two-tower score and beam results can be re-ranked by it. Training is teacher
    forcing on the positive's code: the loss is the sum over levels of each level's
    cross-entropy. Beam-aware training (AttentionXML; OTM, Zhuo et al., ICML 2020: also train
    on the previous level's own beam) is not implemented; ``beam_train`` > 0 is refused.

    Softmax or sigmoid per node? With one positive per example (multi-class data, a user's next
    item), the product of softmaxes is the exact likelihood of a normalised p(item | u) and top-k
    by it is consistent. With several positives per query (multi-label documents), the product
    of softmaxes estimates a mixture and its top-k is not consistent for precision@k (Wydmuch
    et al., NeurIPS 2018, "A no-regret generalization of hierarchical softmax to extreme
    multi-label classification"); there the per-node sigmoid of probabilistic label trees
    (Jasinska et al., ICML 2016) is the right form. This head is the softmax form: use it for
    user -> item retrieval; for multi-label data prefer ``MultiLabelSigmoid`` or a PLT.

    The tree: built in ``bind`` from ``codes_from``: ``cooccurrence`` (truncated SVD of the
    train matrix, item vectors V S^(1/2)), ``random`` (a random balanced assignment), or the
    path of an ``.npy`` of item vectors (N, d), e.g. an export's ``item_embeddings.npy`` of a
    trained two-tower model. It is kept in the module's state (``get_extra_state``), so a
    checkpoint restores the same tree.

    Args:
        branching: K children per node.
        levels: L, with K^L >= N.
        dim: width of the query vectors (the towers' output, D + 1 with ``item_bias``).
        temperature / learn_temperature: T of every level's softmax.
        codes_from: ``cooccurrence``, ``random`` or a path to item vectors (.npy).
        svd_dim: dimension of the co-occurrence item vectors.
        mask_known_positives: at the leaf level, drop the user's other train items from the
            softmax over the siblings (as the flat heads do over the catalogue).
        seed: seed of the tree construction.
    """

    def __init__(self, branching: int = 64, levels: int = 2, dim: int = 65, temperature: float = 1.0,
                 learn_temperature: bool = False, codes_from: str = "cooccurrence", svd_dim: int = 64,
                 mask_known_positives: bool = False, seed: int = 0, beam_train: int = 0):
        super().__init__(temperature, learn_temperature)
        if branching < 2 or levels < 1 or dim < 1:
            raise ConfigError(f"TreeSoftmax branching={branching}, levels={levels}, dim={dim}: need branching >= 2, "
                              "levels >= 1, dim >= 1. Fix: e.g. branching=64, levels=2.")
        if beam_train:
            raise ConfigError(f"TreeSoftmax beam_train={beam_train}: beam-aware training is not implemented; "
                              "the head trains with teacher forcing. Fix: leave beam_train at 0.")
        self.K, self.L, self.dim = int(branching), int(levels), int(dim)
        self.codes_from, self.svd_dim, self.seed = codes_from, svd_dim, seed
        self.mask_known_positives = mask_known_positives
        self.node_emb = nn.ModuleList(nn.Embedding(self.K ** (lv + 1), self.dim) for lv in range(self.L - 1))
        for e in self.node_emb:
            nn.init.normal_(e.weight, std=0.05)
        self.tree: ItemTree | None = None
        self._tables: dict = {}

    # ---- the tree ----------------------------------------------------------------------
    def bind(self, schema, known) -> None:
        super().bind(schema, known)
        if self.K ** self.L < schema.n_items:
            raise ConfigError(f"TreeSoftmax branching={self.K}, levels={self.L}: {self.K ** self.L} leaves for "
                              f"{schema.n_items} items. Fix: raise branching to "
                              f"{int(np.ceil(schema.n_items ** (1 / self.L)))} or add a level.")
        if self.tree is None or self.tree.n_items != schema.n_items:
            self._set_tree(ItemTree.build(self._item_vectors(schema, known), self.K, self.L, self.seed))

    def _item_vectors(self, schema, known) -> np.ndarray:
        N = schema.n_items
        if self.codes_from == "random":
            return np.random.default_rng(self.seed).standard_normal((N, 8)).astype(np.float32)
        if self.codes_from == "cooccurrence":
            from scipy.sparse.linalg import svds

            X = known.csr.astype(np.float64)  # (U, N) train positives
            k = max(1, min(self.svd_dim, min(X.shape) - 1))
            _, s, vt = svds(X, k=k, random_state=self.seed)
            return (vt.T * np.sqrt(s)[None, :]).astype(np.float32)  # (N, k)
        path = str(self.codes_from)
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"TreeSoftmax codes_from={path!r}: not 'cooccurrence', 'random' or a readable .npy of "
                              f"item vectors ({e}). Fix: pass an export's item_embeddings.npy.") from e
        if x.ndim != 2 or x.shape[0] != N:
            raise ConfigError(f"TreeSoftmax codes_from={path!r} holds shape {x.shape}: need one vector per item, "
                              f"({N}, d). Fix: use the item embeddings of a model of this dataset.")
        return x.astype(np.float32)

    def _set_tree(self, tree: ItemTree) -> None:
        self.tree = tree
        dev = self.node_emb[0].weight.device if len(self.node_emb) else torch.device("cpu")
        self._tables = {
            "codes": torch.from_numpy(tree.codes).to(dev),  # (N, L)
            "slot_item": torch.from_numpy(tree.slot_item).to(dev),  # (K^L,)
            "occupied": [torch.from_numpy(o).to(dev) for o in tree.occupied],  # (K^(l+1),) each
        }

    def get_extra_state(self) -> dict:
        if self.tree is None:
            return {}
        return {"codes": torch.from_numpy(self.tree.codes), "branching": int(self.K)}

    def set_extra_state(self, state) -> None:
        if state:
            self._set_tree(ItemTree(state["codes"].numpy(), int(state["branching"])))

    # ---- training ------------------------------------------------------------------------
    def _children(self, prefix: torch.Tensor) -> torch.Tensor:
        """(B, K) node numbers of the children of ``prefix`` (B,)."""
        return prefix[:, None] * self.K + torch.arange(self.K, device=prefix.device)[None, :]

    def forward(self, q: torch.Tensor, batch: dict, item_tower) -> HeadOutput:
        if self.tree is None:
            raise ConfigError("TreeSoftmax has no tree yet: bind(schema, known) builds it before training. Fix: train "
                              "through TwoTowerModule (its setup binds the head).")
        if q.shape[1] != self.dim:
            raise ConfigError(f"TreeSoftmax dim={self.dim} but the query tower outputs {q.shape[1]} values. Fix: set "
                              f"model.head.init_args.dim={q.shape[1]} (the towers' dim, +1 with item_bias).")
        T = self.temperature()
        t = self._tables
        users, items = batch["user"], batch["item"]
        codes = t["codes"][items]  # (B, L) the positive's path
        prefix = torch.zeros(len(items), dtype=torch.long, device=q.device)
        loss = q.new_zeros(())
        masked, live = 0.0, 0.0  # per example: known positives masked, competing siblings
        for lv in range(self.L):
            child = self._children(prefix)  # (B, K)
            if lv < self.L - 1:
                e = self.node_emb[lv](child)  # (B, K, D)
            else:  # the leaves are items: the item tower's embeddings
                leaf = t["slot_item"][child]  # (B, K) -1 where empty
                # examples under one parent share its K leaves: when at most half of the B x K leaves are
                # distinct, the tower runs once per distinct leaf (the gather back costs less than the rows saved)
                ids = leaf.clamp_min(0)  # (B, K)
                uniq, inv = torch.unique(ids, return_inverse=True)  # (M,), (B, K)
                e = item_tower(uniq)[inv] if 2 * len(uniq) <= ids.numel() else item_tower(ids)  # (B, K, D)
            logits = torch.einsum("bd,bkd->bk", q, e) / T  # (B, K)
            dead = ~t["occupied"][lv][child]  # (B, K) empty children
            if lv == self.L - 1 and self.mask_known_positives and self.known is not None:
                known = self.known.contains(users.cpu(), leaf.clamp_min(0).cpu()).to(q.device)  # (B, K)
                other = known & (leaf != items[:, None])
                dead = dead | (other & (leaf >= 0))
                masked = float(other.float().sum(1).mean())
            logits = logits.masked_fill(dead, float("-inf"))
            live += float((~dead).sum(1).float().mean()) - 1.0
            loss = loss + F.cross_entropy(logits, codes[:, lv])
            prefix = child.gather(1, codes[:, lv:lv + 1]).squeeze(1)

        def logs() -> dict:  # the leaf level's positive and sibling logits (the two-tower scores / T)
            pos = logits.gather(1, codes[:, -1:]).squeeze(1)
            other = torch.ones_like(logits, dtype=torch.bool).scatter_(1, codes[:, -1:], False) & torch.isfinite(logits)
            neg = logits.masked_select(other).mean() if other.any() else logits.new_tensor(float("nan"))
            return head_logs(T, pos.mean() * T, neg * T, masked / max(self.K - 1, 1), live, tree_loss=loss.detach())

        return HeadOutput(loss, LazyLogs(logs))

    # ---- retrieval -----------------------------------------------------------------------
    def level_tables(self) -> list[np.ndarray]:
        """The internal node vectors of every level as float32 arrays (K^(l+1), D), l < L - 1."""
        return [e.weight.detach().float().cpu().numpy() for e in self.node_emb]

    def beam_index(self) -> BeamIndex:
        """The trained index as plain arrays (tree, node vectors, temperature): what an export
        stores and what ``beam_topk`` searches."""
        if self.tree is None:
            raise ConfigError("TreeSoftmax has no tree: fit or load a checkpoint first.")
        return BeamIndex(self.tree, self.level_tables(), float(self.temperature()))

    def beam_topk(self, xq: np.ndarray, xb: np.ndarray, k: int, beam: int = 16, exclude=None,
                  temperature: float = 0.0, rerank: bool = False, rng: np.random.Generator | None = None,
                  chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of queries ``xq`` (Q, D) by beam search over the tree
        (``BeamIndex.search``, arguments there), with ``xb`` (N, D) the item tower's
        embeddings (the leaves). Returns I (Q, k) item ids (-1 pads) and S (Q, k) scores."""
        return self.beam_index().search(xq, xb, k, beam, exclude, temperature, rerank, rng, chunk)
