"""A balanced hierarchical item index: item codes (c_1, ..., c_L), c_l in [0, K), and beam search
over it. Plain numpy (no torch), so the tree is built, stored and searched like the other indexes.

    tree = ItemTree.build(xb, branching=64, levels=2, seed=0)   # xb (N, d) item vectors
    tree.codes        # (N, L) int64, the path of each item
    tree.slot_item    # (K^L,) item of each leaf slot, -1 where empty
    I, S = beam_search(level_scores, tree, beam=16, k=10)       # level_scores(l, prefixes) -> (Q, b, K)
    index = BeamIndex(tree, tables, temperature=0.1)            # a TreeSoftmax's trained index
    I, S = index.search(xq, xb, k=10, beam=16, exclude=seen)    # xb: the leaves (item vectors)

Construction: balanced recursive 2-means (the PECOS / Parabel way: Prabhu et al., WWW 2018,
"Parabel"; Yu et al., JMLR 2022, "PECOS"). A node's items are cut into K groups of sizes as
equal as possible: two spherical centroids by a few Lloyd steps, the items ordered by the
difference of their cosine to the two, and the order cut at the share K1 / K with K1 = K // 2;
each side recurses with K1 and K - K1 groups. So every level is balanced to one item, the tree
has K^l nodes at depth l, and each leaf slot holds at most one item (K^L >= N is required).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys.errors import ConfigError, DataError

__all__ = ["ItemTree", "BeamIndex", "balanced_codes", "beam_search", "gumbel_noise"]


def _two_means_order(x: np.ndarray, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """Indices of the rows of x (n, d), ordered from the first spherical 2-means centroid's side
    to the second's (by cos(x, c1) - cos(x, c2))."""
    n = len(x)
    if n <= 1:
        return np.arange(n)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    c = xn[rng.choice(n, 2, replace=False)].copy()  # (2, d)
    for _ in range(iters):
        side = (xn @ c[0]) < (xn @ c[1])  # True: nearer c2
        for j, m in enumerate((~side, side)):
            if m.any():
                v = xn[m].sum(0)
                c[j] = v / max(np.linalg.norm(v), 1e-12)
    return np.argsort(xn @ c[1] - xn @ c[0], kind="stable")


def _split(x: np.ndarray, idx: np.ndarray, K: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``idx`` cut into K balanced groups (sizes differ by at most one), similar items together."""
    if K == 1:
        return [idx]
    K1 = K // 2
    order = idx[_two_means_order(x[idx], rng)]
    cut = int(round(len(idx) * K1 / K))
    return _split(x, order[:cut], K1, rng) + _split(x, order[cut:], K - K1, rng)


def balanced_codes(x: np.ndarray, branching: int, levels: int, seed: int = 0) -> np.ndarray:
    """(N, L) int64 codes of the N rows of ``x`` (N, d) in a balanced K-ary tree of depth L."""
    x = np.asarray(x, dtype=np.float32)
    N = len(x)
    K, L = int(branching), int(levels)
    if K < 2 or L < 1 or K**L < N:
        raise ConfigError(f"a tree of branching={K} and levels={L} has {K**L if K >= 1 and L >= 1 else 0} leaves for "
                          f"N={N} items: need K >= 2, L >= 1 and K^L >= N. Fix: e.g. levels=2 with branching "
                          f"{int(np.ceil(N ** 0.5))}, or levels=3 with branching {int(np.ceil(N ** (1 / 3)))}.")
    rng = np.random.default_rng(seed)
    codes = np.zeros((N, L), dtype=np.int64)
    groups = [np.arange(N)]
    for level in range(L):
        nxt = []
        last = level == L - 1
        for g in groups:
            if last:  # at most K items left in each node: one child each, in similarity order
                codes[g[_two_means_order(x[g], rng)] if len(g) > 2 else g, level] = np.arange(len(g))
                continue
            parts = _split(x, g, K, rng) if len(g) > 1 else [g] + [g[:0]] * (K - 1)
            for c, p in enumerate(parts):
                codes[p, level] = c
                nxt.append(p)
        groups = nxt
    return codes


@dataclass
class ItemTree:
    """Item codes of a K-ary tree of depth L (``balanced_codes``) and their lookup tables.

    ``codes`` (N, L); ``slot_item`` (K^L,) the item at each leaf slot (-1: empty);
    ``occupied[l]`` (K^(l+1),) bool, the depth-(l+1) nodes with at least one item. A node at
    depth l + 1 is numbered by its prefix, ``prefix * K + c`` (``node_ids``).
    """

    codes: np.ndarray
    branching: int

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        K, L = self.branching, self.levels
        if self.codes.ndim != 2 or (self.codes < 0).any() or (self.codes >= K).any():
            raise DataError(f"tree codes of shape {self.codes.shape} with values in [{self.codes.min(initial=0)}, "
                            f"{self.codes.max(initial=0)}]: need (N, L) ints in [0, {K}). Fix: build them with "
                            "ItemTree.build.")
        slots = self.node_ids(self.codes, L - 1)  # (N,) leaf slot of each item
        if len(np.unique(slots)) != len(slots):
            raise DataError("two items share a leaf slot: each item needs its own code. Fix: build the codes "
                            "with ItemTree.build (balanced to one item per leaf).")
        self.slot_item = np.full(K**L, -1, dtype=np.int64)
        self.slot_item[slots] = np.arange(len(slots))
        self.occupied = [np.zeros(K ** (l + 1), dtype=bool) for l in range(L)]
        for l in range(L):
            self.occupied[l][self.node_ids(self.codes, l)] = True

    @classmethod
    def build(cls, x: np.ndarray, branching: int, levels: int, seed: int = 0) -> ItemTree:
        """The balanced tree of the item vectors ``x`` (N, d)."""
        return cls(balanced_codes(x, branching, levels, seed), branching)

    @property
    def levels(self) -> int:
        return int(self.codes.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    def node_ids(self, codes: np.ndarray, level: int) -> np.ndarray:
        """Node numbers at depth ``level`` + 1 of code rows (..., L): sum_{j<=level} c_j K^(level-j)."""
        ids = np.zeros(codes.shape[:-1], dtype=np.int64)
        for j in range(level + 1):
            ids = ids * self.branching + codes[..., j]
        return ids

    def state_dict(self) -> dict:
        """Plain arrays and ints: the codes and the branching."""
        return {"codes": self.codes.copy(), "branching": int(self.branching)}

    @classmethod
    def from_state(cls, state: dict) -> ItemTree:
        return cls(np.asarray(state["codes"]), int(state["branching"]))


def gumbel_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard Gumbel samples, -log(-log U): adding them to log-probabilities and taking the
    top b draws b items without replacement (Kool et al., ICML 2019, "Stochastic Beams")."""
    u = rng.random(shape)
    return -np.log(-np.log(np.clip(u, 1e-12, 1 - 1e-12)))


def beam_search(level_scores: Callable[[int, np.ndarray], np.ndarray], tree: ItemTree, beam: int, k: int,
                exclude: Callable[[np.ndarray], np.ndarray] | None = None, temperature: float = 0.0,
                rng: np.random.Generator | None = None, n_queries: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items of each query by the tree probability, keeping the ``beam`` best prefixes per level.

    ``level_scores(l, prefixes)``: prefixes (Q, b) node numbers at depth l (0 at the root) ->
    (Q, b, K) log-probabilities of their K children (-inf for empty children is applied here).
    A prefix's score is the sum of its log-probabilities. At the last level the surviving
    b x K leaves are items; ``exclude(items (Q, b K)) -> (Q, b K) bool`` removes seen ones.
    ``temperature`` > 0: a stochastic beam, each level's scores plus Gumbel noise times the
    temperature (the diversity knob; 0 is the deterministic beam). Returns I (Q, k) item ids
    (-1 where fewer survive) and S (Q, k) their log-probabilities, best first.
    """
    K, L = tree.branching, tree.levels
    if beam < 1 or k < 1:
        raise ConfigError(f"beam={beam}, k={k}: need beam >= 1 and k >= 1. Fix: e.g. beam=16, k=10.")
    rng = rng or np.random.default_rng(0)
    Q = n_queries
    prefixes = None
    score = None
    for level in range(L):
        if prefixes is None:
            logp = np.asarray(level_scores(0, None), dtype=np.float64)  # (Q, 1, K)
            Q = logp.shape[0]
            prefixes = np.zeros((Q, 1), dtype=np.int64)
            score = np.zeros((Q, 1))
        else:
            logp = np.asarray(level_scores(level, prefixes), dtype=np.float64)  # (Q, b, K)
        child = prefixes[:, :, None] * K + np.arange(K)[None, None, :]  # (Q, b, K) node numbers
        live = tree.occupied[level][child] & np.isfinite(score)[:, :, None]
        total = np.where(live, score[:, :, None] + logp, -np.inf).reshape(Q, -1)  # (Q, b K)
        child = child.reshape(Q, -1)
        if level == L - 1:
            items = np.where(np.isfinite(total), tree.slot_item[child], -1)  # (Q, b K)
            if exclude is not None:
                total = np.where(exclude(items) | (items < 0), -np.inf, total)
            keep = k
        else:
            keep = beam
        rank = total + (temperature * gumbel_noise(total.shape, rng) if temperature > 0 else 0.0)
        rank = np.where(np.isfinite(total), rank, -np.inf)
        keep_n = min(keep, rank.shape[1])
        top = np.argsort(-rank, axis=1, kind="stable")[:, :keep_n]  # (Q, keep)
        score = np.take_along_axis(total, top, axis=1)
        prefixes = np.take_along_axis(child, top, axis=1)
    items = np.where(np.isfinite(score), tree.slot_item[prefixes], -1)
    out_I = np.full((Q, k), -1, dtype=np.int64)
    out_S = np.full((Q, k), -np.inf)
    out_I[:, : items.shape[1]], out_S[:, : items.shape[1]] = items, np.where(items >= 0, score, -np.inf)
    return out_I, out_S


@dataclass
class BeamIndex:
    """A trained tree-softmax index (``recsys.model.heads.TreeSoftmax``) as plain arrays:
    the tree, the internal node vectors of each level and the temperature, so that a
    TreeSoftmax's beam search runs the same in training code and in an export folder.

    The level-l logits of the children of a prefix are q . e_child / T, with e_child a row of
    ``tables[l]`` (K^(l+1), D) for l < L - 1, and at the last level q . v / T' with v the leaf's
    item vector (``xb``) and T' = ``leaf_temperature`` (a leaf head's; None: T); each level is
    a log-softmax over the K children (empty children masked).

    ``leaf_prior`` (N,), optional: the popularity prior w log p_j that the served item vectors
    carry in their bias coordinate (``TwoTowerModule.item_embeddings`` adds w T log p_j there,
    so the leaf logit holds + w log p_j). A flat head ranks by logit + w log p_j; the tree's
    analogue is log p_tree(j | u) + w log p_j, the prior added after the leaf level's
    normalisation, where it moves items across parents. Inside the softmax over the siblings it
    would only reorder siblings (a parent's constant cancels), so the leaf level takes it out
    of the logits before the log-softmax and adds it to the normalised score.
    """

    tree: ItemTree
    tables: list  # L - 1 float32 arrays (K^(l+1), D)
    temperature: float
    leaf_prior: np.ndarray | None = None  # (N,) w log p_j carried by the leaves' vectors, or None
    leaf_temperature: float | None = None  # T' of the leaf logits q . v / T' (a leaf head's); None: temperature
    rerank: bool = False  # the default of ``search``: the survivors ordered by the exact score q . v

    def __post_init__(self) -> None:
        K, L = self.tree.branching, self.tree.levels
        self.tables = [np.asarray(t, dtype=np.float32) for t in self.tables]
        shapes = [t.shape for t in self.tables]
        if len(self.tables) != L - 1 or any(t.ndim != 2 or t.shape[0] != K ** (lv + 1)
                                            for lv, t in enumerate(self.tables)):
            raise DataError(f"beam index: node tables of shapes {shapes} for a {K}-ary tree of {L} levels: need "
                            f"{L - 1} tables, level l of K^(l+1) rows. Fix: write them from the same TreeSoftmax.")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise DataError(f"beam index: temperature {self.temperature}: must be finite and > 0. Fix: write it "
                            "from the head's temperature().")
        if self.leaf_temperature is not None and not (np.isfinite(self.leaf_temperature) and self.leaf_temperature > 0):
            raise DataError(f"beam index: leaf_temperature {self.leaf_temperature}: must be finite and > 0. Fix: "
                            "write it from the leaf head's temperature().")
        if self.leaf_prior is not None:
            self.leaf_prior = np.asarray(self.leaf_prior, dtype=np.float32).reshape(-1)
            if self.leaf_prior.shape != (self.tree.n_items,) or not np.isfinite(self.leaf_prior).all():
                raise DataError(f"beam index: leaf_prior of shape {self.leaf_prior.shape}: need one finite value "
                                f"per item, ({self.tree.n_items},). Fix: write it from the model's served prior "
                                "(TwoTowerModule.beam_leaf_prior).")

    def state_dict(self) -> dict:
        """Plain arrays (``np.savez`` without pickle): the codes, the branching, the node tables
        (``table_<l>``), the temperature, the leaf prior and leaf temperature (when set) and the
        default ranking (``rerank``)."""
        out = {**self.tree.state_dict(), "temperature": np.float64(self.temperature)}
        out.update({f"table_{lv}": t for lv, t in enumerate(self.tables)})
        if self.leaf_prior is not None:
            out["leaf_prior"] = self.leaf_prior
        if self.leaf_temperature is not None:
            out["leaf_temperature"] = np.float64(self.leaf_temperature)
        out["rerank"] = np.bool_(self.rerank)
        return out

    @classmethod
    def from_state(cls, state) -> BeamIndex:
        """The inverse of ``state_dict`` (a dict or an ``np.load`` of it)."""
        tree = ItemTree.from_state(state)
        tables = [np.asarray(state[f"table_{lv}"]) for lv in range(tree.levels - 1)]
        prior = np.asarray(state["leaf_prior"]) if "leaf_prior" in state else None  # absent: an older export
        leaf_T = float(state["leaf_temperature"]) if "leaf_temperature" in state else None
        rerank = bool(state["rerank"]) if "rerank" in state else False
        return cls(tree, tables, float(state["temperature"]), prior, leaf_T, rerank)

    def search(self, xq: np.ndarray, xb: np.ndarray, k: int, beam: int = 16, exclude=None,
               temperature: float = 0.0, rerank: bool | None = None, rng: np.random.Generator | None = None,
               chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of queries ``xq`` (Q, D) by beam search (``beam`` prefixes per level),
        ``xb`` (N, D) the leaves' item vectors. ``exclude``: a (Q, N) CSR of seen items.
        ``temperature`` > 0: a stochastic (Gumbel) beam. ``rerank``: order the surviving leaves
        by the exact score q . v instead of the tree probability (None: the index's ``rerank``).
        Queries are searched ``chunk`` at a time (a level holds (chunk, beam, K, D) node
        vectors). Returns I (Q, k) item ids (-1 pads) and S (Q, k) scores."""
        xq = np.asarray(xq, dtype=np.float32)
        xb = np.asarray(xb, dtype=np.float32)
        if xq.ndim != 2 or xb.shape != (self.tree.n_items, xq.shape[1]):
            raise DataError(f"beam search: queries {xq.shape}, item vectors {xb.shape}: need (Q, D) and "
                            f"({self.tree.n_items}, D), the tree's items. Fix: pass the item tower's embeddings "
                            "of the same model.")
        rng = rng or np.random.default_rng(0)
        rerank = self.rerank if rerank is None else bool(rerank)
        parts = [self._chunk(xq[s:s + chunk], xb, k, beam, None if exclude is None else exclude[s:s + chunk],
                             temperature, rerank, rng) for s in range(0, len(xq), chunk)]
        if not parts:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _chunk(self, xq, xb, k, beam, exclude, temperature, rerank, rng):
        T, tree, tables = self.temperature, self.tree, self.tables
        K, L = tree.branching, tree.levels

        def level_scores(lv, prefixes):
            pre = np.zeros((len(xq), 1), dtype=np.int64) if prefixes is None else prefixes
            child = pre[:, :, None] * K + np.arange(K)[None, None, :]  # (Q, b, K)
            leaf = lv == L - 1
            ids = np.clip(tree.slot_item[child], 0, None) if leaf else None  # (Q, b, K) the leaves' items
            e = xb[ids] if leaf else tables[lv][child]  # (Q, b, K, D)
            logits = np.einsum("qd,qbkd->qbk", xq, e) / ((self.leaf_temperature or T) if leaf else T)
            prior = 0.0
            if leaf and self.leaf_prior is not None:  # normalise without the prior, then add it
                prior = self.leaf_prior[ids]  # (Q, b, K)
                logits = logits - prior
            logits = np.where(tree.occupied[lv][child], logits, -np.inf)
            m = logits.max(axis=2, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            return logits - m - np.log(np.exp(logits - m).sum(axis=2, keepdims=True)) + prior  # log-softmax over K

        ex = None
        if exclude is not None:
            from recsys.retrieval.keys import member

            excl = exclude.tocsr()

            def ex(items):  # (Q, M) -> (Q, M) bool: items the query has seen
                return member(items, excl)

        want = max(k, beam * K) if rerank else k
        I, S = beam_search(level_scores, tree, beam, want, exclude=ex, temperature=temperature, rng=rng)
        if rerank:
            exact = np.where(I >= 0, np.einsum("qd,qkd->qk", xq, xb[I.clip(0)]), -np.inf)
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            I, S = np.take_along_axis(I, order, 1), np.take_along_axis(exact, order, 1)
        return I, S
