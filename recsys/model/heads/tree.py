"""Tree-factorised softmax: p(item | u) as a product of softmaxes over the children of a
balanced item tree, trained with teacher forcing and served by beam search."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError
from recsys.model.corrections import corrected_logits
from recsys.model.heads.base import Head, HeadOutput, LazyLogs, head_logs
from recsys.retrieval.tree import BeamIndex, ItemTree


def prefix_logits(q: torch.Tensor, prefix: torch.Tensor, table: torch.Tensor, K: int) -> torch.Tensor:
    """(B, K) scores q_b . table[prefix_b K + k] of each example's K children.

    ``q`` (B, D) queries, ``prefix`` (B,) parent node numbers, ``table`` (P K, D) the child
    vectors of a level, the K children of parent p in rows p K ... p K + K - 1. Near the root
    a batch has few distinct parents (at most K^l at depth l), so the examples of one parent
    share its (K, D) block: the queries are packed into a (M, m, D) array (M distinct parents,
    m the largest group) and scored by one batched (m, D) x (D, K) product per parent, which
    reads M K D child values instead of the B K D of a per-example gather (and its backward
    writes as few; with every parent distinct, M = B and m = 1, it is that gather). When most
    of the level's P parents occur (2 M >= P) every parent's block is scored, the table read as
    it is, without the gather and its scatter back (on a 1M-item 3 x 100 tree's middle level:
    5 ms forward and backward against 70 ms for the per-example gather). When the groups are
    too uneven (M m > 4 B: one hot parent beside many single ones) the padding would cost more
    than it saves, and the per-example gather is used. The root level (P = 1) is one (B, D) x
    (D, K) product.
    """
    B, D = q.shape
    P = table.shape[0] // K  # parents of the level
    if P == 1:  # the root: every example has its K children
        return q @ table.T
    uniq, inv, counts = torch.unique(prefix, return_inverse=True, return_counts=True)  # (M,), (B,), (M,)
    M, m = len(uniq), int(counts.max())
    if M * m > 4 * B:
        e = table.view(-1, K, D).index_select(0, prefix)  # (B, K, D)
        return torch.einsum("bd,bkd->bk", q, e)
    whole = 2 * M >= P  # most parents present (near the root): every block, no gather of child rows
    if whole:
        inv, counts, M = prefix, torch.bincount(prefix, minlength=P), P
    order = torch.argsort(inv, stable=True)  # examples grouped by parent
    start = torch.cumsum(counts, 0) - counts  # (M,) first position of each group in ``order``
    rank = torch.empty_like(inv)
    rank[order] = torch.arange(B, device=q.device) - start[inv[order]]  # (B,) position within its group
    slot = inv * m + rank  # (B,) row of each example in the packed queries
    packed = q.new_zeros(M * m, D).index_copy(0, slot, q).view(M, m, D)  # (M, m, D) zero rows pad
    e = table.view(P, K, D) if whole else table.view(P, K, D).index_select(0, uniq)  # (M, K, D) children
    return torch.bmm(packed, e.transpose(1, 2)).view(M * m, K)[slot]  # (B, K)


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
            softmax over the siblings (as the flat heads do over the catalogue); a
            ``leaf_head`` has its own masks.
        seed: seed of the tree construction.
        leaf_samples: S > 0 trains the leaf level as a sampled softmax over the positive and S
            of its live siblings drawn uniformly without replacement, each negative's logit
            corrected by -log q with q = S / (its live siblings but the positive), so that
            the sampled partition estimates the full one (Bengio & Senecal, IEEE TNN 2008;
            Jean et al., ACL 2015, "On Using Very Large Target Vocabulary for Neural Machine
            Translation"; through ``corrected_logits``). The item tower then runs on B (1 + S)
            leaves a step instead of B K: the leaf level is the one whose rows are items, so
            with K ~ 100 it is most of a step's cost. 0 (or S >= K - 1): every sibling, the
            exact tree softmax. Known positives are masked among the drawn siblings.
        leaf_head: a flat head (e.g. ``InBatchSoftmax``) that trains the leaf level instead of
            the softmax over the siblings: the leaves' scores s_j = q . v_j are then fitted as
            the logits of one softmax over the catalogue (``leaf_head``'s own estimator and
            corrections), and the beam's leaf level is their log-softmax over the siblings,
            s_j / T' - log sum_siblings exp(s / T') with T' the leaf head's temperature: for
            logits of p(j | u), that is exactly p(j | u, parent), the conditional the tree's
            leaf level models (the internal levels still learn p(parent | u) by teacher
            forcing). The leaf level then costs what the flat head costs (B item rows and a
            B x B block for in-batch negatives, against B K or B (1 + S) sibling rows), and the
            leaf scores rank the whole catalogue like a flat head's (the beam's survivors can
            be re-ranked by them). The joint form of a learned index and a two-tower scorer
            (Deep Retrieval, Gao et al., 2020; JTM, Zhu et al., NeurIPS 2019). None: the
            sibling softmax. Excludes ``leaf_samples``.
        rerank: the beam's default ranking (validation, ``evaluate --index beam``, ``recommend
            --beam``, exports): the surviving leaves ordered by the exact score q . v (plus the
            served prior) instead of the tree probability: the tree as an index for the leaf
            scores, which with a ``leaf_head`` rank like a flat head's.
    """

    def __init__(self, branching: int = 64, levels: int = 2, dim: int = 65, temperature: float = 1.0,
                 learn_temperature: bool = False, codes_from: str = "cooccurrence", svd_dim: int = 64,
                 mask_known_positives: bool = False, seed: int = 0, beam_train: int = 0, leaf_samples: int = 0,
                 leaf_head: Head | None = None, rerank: bool = False):
        super().__init__(temperature, learn_temperature)
        if branching < 2 or levels < 1 or dim < 1:
            raise ConfigError(f"TreeSoftmax branching={branching}, levels={levels}, dim={dim}: need branching >= 2, "
                              "levels >= 1, dim >= 1. Fix: e.g. branching=64, levels=2.")
        if beam_train:
            raise ConfigError(f"TreeSoftmax beam_train={beam_train}: beam-aware training is not implemented; "
                              "the head trains with teacher forcing. Fix: leave beam_train at 0.")
        if leaf_samples < 0:
            raise ConfigError(f"TreeSoftmax leaf_samples={leaf_samples}: need >= 0 (0: every sibling at the leaf "
                              "level). Fix: e.g. leaf_samples: 16, or 0.")
        if leaf_head is not None and (leaf_samples or isinstance(leaf_head, TreeSoftmax) or levels < 2):
            raise ConfigError(f"TreeSoftmax leaf_head={type(leaf_head).__name__} with leaf_samples={leaf_samples}, "
                              f"levels={levels}: a leaf head replaces the sibling softmax of the leaf level, so it "
                              "needs a flat head, leaf_samples 0 and levels >= 2. Fix: e.g. leaf_head "
                              "InBatchSoftmax with leaf_samples: 0, or no leaf_head.")
        self.leaf_head, self.rerank = leaf_head, bool(rerank)
        self.K, self.L, self.dim = int(branching), int(levels), int(dim)
        self.leaf_samples = int(leaf_samples) if 0 < leaf_samples < self.K - 1 else 0
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
        if self.leaf_head is not None:
            self.leaf_head.bind(schema, known)

    def callbacks(self) -> list:
        """The leaf head's callbacks (none of the tree's own)."""
        return [] if self.leaf_head is None else self.leaf_head.callbacks()

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        """The leaf head's (none of the tree's own: ``bind`` checks K^L >= N)."""
        return [] if self.leaf_head is None else self.leaf_head.size_checks(n_items)

    def score_temperature(self) -> torch.Tensor:
        """T' of the item scores q . v (the leaves): the leaf head's temperature with one, else the tree's."""
        return self.temperature() if self.leaf_head is None else self.leaf_head.temperature()

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
        for lv in range(self.L if self.leaf_head is None else self.L - 1):  # a leaf head: the leaves after
            child = self._children(prefix)  # (B, K)
            dead = ~t["occupied"][lv][child]  # (B, K) empty children
            target = codes[:, lv]  # (B,) the positive's child
            if lv < self.L - 1:
                logits = prefix_logits(q, prefix, self.node_emb[lv].weight, self.K) / T  # (B, K)
            elif self.leaf_samples:
                logits, _, other = self._sampled_leaves(q, t["slot_item"][child], dead, target, users, items,
                                                           item_tower, T)
                dead, target = ~torch.isfinite(logits), torch.zeros_like(target)  # the positive in column 0
                masked = float(other.float().sum(1).mean())
            else:  # the leaves are items: the item tower's embeddings
                leaf = t["slot_item"][child]  # (B, K) -1 where empty
                # examples under one parent share its K leaves: when at most half of the B x K leaves are
                # distinct, the tower runs once per distinct leaf (the gather back costs less than the rows saved)
                ids = leaf.clamp_min(0)  # (B, K)
                uniq, inv = torch.unique(ids, return_inverse=True)  # (M,), (B, K)
                e = item_tower(uniq)[inv] if 2 * len(uniq) <= ids.numel() else item_tower(ids)  # (B, K, D)
                logits = torch.einsum("bd,bkd->bk", q, e) / T  # (B, K)
                if self.mask_known_positives and self.known is not None:
                    known = self.known.contains(users.cpu(), leaf.clamp_min(0).cpu()).to(q.device)  # (B, K)
                    other = known & (leaf != items[:, None])
                    dead = dead | (other & (leaf >= 0))
                    masked = float(other.float().sum(1).mean())
            logits = logits.masked_fill(dead, float("-inf"))
            live += float((~dead).sum(1).float().mean()) - 1.0
            loss = loss + F.cross_entropy(logits, target)
            prefix = child.gather(1, codes[:, lv:lv + 1]).squeeze(1)
        if self.leaf_head is not None:  # the leaves as one flat softmax (the leaf head's)
            leaf = self.leaf_head(q, batch, item_tower)
            loss = loss + leaf.loss
            return HeadOutput(loss, LazyLogs(lambda: {**dict(leaf.logs), "tree_loss": loss.detach()}))
        pos_col = target[:, None]  # (B, 1) the positive's column at the leaf level

        def logs() -> dict:  # the leaf level's positive and sibling logits (the two-tower scores / T)
            pos = logits.gather(1, pos_col).squeeze(1)
            other = torch.ones_like(logits, dtype=torch.bool).scatter_(1, pos_col, False) & torch.isfinite(logits)
            neg = logits.masked_select(other).mean() if other.any() else logits.new_tensor(float("nan"))
            return head_logs(T, pos.mean() * T, neg * T, masked / max((self.leaf_samples or self.K) - 1, 1), live,
                             tree_loss=loss.detach())

        return HeadOutput(loss, LazyLogs(logs))

    def _sampled_leaves(self, q, leaf, dead, pos_slot, users, items, item_tower, T):
        """The leaf level of ``leaf_samples``: (B, 1 + S) corrected logits (positive in column 0,
        drawn empty or known siblings at -inf), the (B, 1 + S) leaf ids and the (B, S) known-positive
        mask. ``leaf`` (B, K) the parent's leaf items (-1 empty), ``dead`` (B, K), ``pos_slot`` (B,)."""
        B, S = len(q), self.leaf_samples
        rows = torch.arange(B, device=q.device)
        r = torch.rand(leaf.shape, device=q.device).masked_fill(dead, -1.0)  # (B, K) empty slots drawn last
        r[rows, pos_slot] = -2.0  # never the positive
        neg_slot = r.topk(S, dim=1).indices  # (B, S) uniform without replacement among the live siblings
        drawn = leaf.gather(1, torch.cat([pos_slot[:, None], neg_slot], 1))  # (B, 1 + S) item ids
        e = item_tower(drawn.clamp_min(0))  # (B, 1 + S, D)
        scores = torch.einsum("bd,bsd->bs", q, e)  # (B, 1 + S)
        hits = dead.gather(1, neg_slot) | (neg_slot == pos_slot[:, None])  # (B, S) empty draws
        other = torch.zeros_like(hits)
        if self.mask_known_positives and self.known is not None:
            neg = drawn[:, 1:]
            other = self.known.contains(users.cpu(), neg.clamp_min(0).cpu()).to(q.device) & (neg != items[:, None])
            hits = hits | other
        n_neg = ((~dead).sum(1) - 1).clamp_min(1).to(q.dtype)  # (B,) live siblings but the positive
        log_q = torch.log(torch.clamp(S / n_neg, max=1.0))[:, None].expand(B, S)  # (B, S) inclusion probability
        logits = corrected_logits(scores[:, 0], scores[:, 1:], T, log_q_neg=log_q, hits=hits)  # (B, 1 + S)
        return logits, drawn, other

    # ---- retrieval -----------------------------------------------------------------------
    def level_tables(self) -> list[np.ndarray]:
        """The internal node vectors of every level as float32 arrays (K^(l+1), D), l < L - 1."""
        return [e.weight.detach().float().cpu().numpy() for e in self.node_emb]

    def beam_index(self, leaf_prior: np.ndarray | None = None) -> BeamIndex:
        """The trained index as plain arrays (tree, node vectors, temperature, and the
        ``leaf_prior`` (N,) w log p_j the served item vectors carry, see ``BeamIndex``): what an
        export stores and what ``beam_topk`` searches."""
        if self.tree is None:
            raise ConfigError("TreeSoftmax has no tree: fit or load a checkpoint first.")
        return BeamIndex(self.tree, self.level_tables(), float(self.temperature()), leaf_prior,
                         float(self.score_temperature()), self.rerank)

    def beam_topk(self, xq: np.ndarray, xb: np.ndarray, k: int, beam: int = 16, exclude=None,
                  temperature: float = 0.0, rerank: bool | None = None, rng: np.random.Generator | None = None,
                  chunk: int = 256, leaf_prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of queries ``xq`` (Q, D) by beam search over the tree
        (``BeamIndex.search``, arguments there), with ``xb`` (N, D) the item vectors as served
        (the leaves; with ``leaf_prior`` the prior they carry). Returns I (Q, k) item ids (-1
        pads) and S (Q, k) scores."""
        return self.beam_index(leaf_prior).search(xq, xb, k, beam, exclude, temperature, rerank, rng, chunk)
