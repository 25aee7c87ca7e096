"""Query and item towers: inputs -> (B, D) embeddings. No loss, no Lightning.

Each input part (id, bag of ids, categorical features) is embedded to D. Without an MLP
the parts are summed; with ``hidden`` layers they are concatenated and passed through the
MLP to D. Id tables are ``sparse`` by default: their gradients touch only the rows a
batch uses, so a step's cost does not grow with the catalogue (pair them with
``torch.optim.SparseAdam``; see ``TwoTowerModule``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError
from recsys.schema import Schema


def _mlp(d_in: int, hidden: list[int], d_out: int, dropout: float) -> nn.Module:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU(), nn.Dropout(dropout)]
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class _Tower(nn.Module):
    """Shared combine step: sum the parts, or concatenate them through an MLP."""

    def __init__(self, dim: int, n_parts: int, hidden: list[int] | None, dropout: float,
                 normalize: bool, init_std: float, item_bias: bool = False, residual: bool = False,
                 part_norm: bool = False):
        super().__init__()
        if dim < 1 or n_parts < 1:
            raise ConfigError(
                f"tower dim={dim} with {n_parts} input parts: need dim >= 1 and at least one "
                "input (id, bag or features). Fix: enable an input or raise dim."
            )
        self.dim, self.normalize, self.init_std = dim, normalize, init_std
        self.item_bias = item_bias
        self.out_dim = dim + int(item_bias)  # the width of the score's inner product
        self.mlp = _mlp(dim * n_parts, list(hidden), dim, dropout) if hidden else None
        self.residual = residual and self.mlp is not None
        # part_norm: unit-norm parts times a learned scale each (init 1)
        self.part_scale = nn.Parameter(torch.ones(n_parts)) if part_norm else None
        if self.residual:  # the MLP starts as a zero correction of the summed parts
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def _init(self, m: nn.Module) -> None:
        for mod in m.modules():
            if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
                nn.init.normal_(mod.weight, std=self.init_std)
                if mod.padding_idx is not None:
                    with torch.no_grad():
                        mod.weight[mod.padding_idx].zero_()

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.part_scale is not None:
            parts = [F.normalize(p, dim=-1) * self.part_scale[i] for i, p in enumerate(parts)]  # (B, D) each
        if self.mlp is None:
            x = torch.stack(parts).sum(0)  # (B, D)
        elif self.residual:
            x = torch.stack(parts).sum(0) + self.mlp(torch.cat(parts, dim=-1))  # (B, D)
        else:
            x = self.mlp(torch.cat(parts, dim=-1))  # (B, D)
        return F.normalize(x, dim=-1) if self.normalize else x


class QueryTower(_Tower):
    """User / document -> (B, D).

    Args:
        schema: data sizes (linked from the data module by the CLI).
        dim: D.
        use_id: embed the user id (off for documents unseen in training, e.g. Bibtex).
        use_bag: mean-pool the embeddings of the query bag (train history or words);
            padding is masked out of the mean.
        use_features: embed categorical user features (one table per field, summed).
        hidden: MLP widths (empty: parts summed, no MLP).
        dropout: MLP dropout.
        part_norm: L2-normalise each input part (id, bag, features) and multiply it by a
            learned scale (initially 1) before combining them. Summed raw parts are not on
            one scale: a mean-pooled bag of H random vectors has about 1/sqrt(H) of the norm
            of an id or feature embedding, so at the start the bag (the strongest signal)
            is drowned by the others.
        residual: with ``hidden``, add the MLP's output to the summed parts instead of
            replacing them (last layer zero-initialised, so training starts from the
            linear tower; He et al., CVPR 2016, "Deep Residual Learning").
        bag_dropout: in training, each bag id is dropped (turned into padding) with this
            probability before pooling: the input corruption of denoising autoencoders for
            collaborative filtering (Wu et al., WSDM 2016, "Collaborative Denoising
            Auto-Encoders"; Liang et al., WWW 2018, "Variational Autoencoders for
            Collaborative Filtering", where 0.5 works best on MovieLens). It regularises
            the bag towards predicting any held-out item from part of the history;
            evaluation always pools the whole bag.
        bag_weights: pool the bag with a learned weight per id, sum_h exp(a_h) e_h /
            sum_h exp(a_h) (a_h zero-initialised, so training starts from the plain mean):
            the model can learn how telling each history item is, e.g. that a blockbuster
            says less about a user than a niche film (IDF). A query-independent form of the
            item-attention pooling of NAIS (He et al., TKDE 2018, "NAIS: Neural Attentive
            Item Similarity Model"), whose weights also depend on the candidate and so do
            not fit one inner product.
        normalize: L2-normalise the output (pair with a small temperature).
        sparse: sparse gradients for the id tables.
        init_std: std of the normal init of the id tables.
        item_bias: append a constant 1 to the output (D + 1), the coordinate that multiplies
            the item tower's learned bias (``ItemTower(item_bias=True)``); set it on both.
    """

    def __init__(self, schema: Schema, dim: int = 64, use_id: bool = True, use_bag: bool = True,
                 use_features: bool = True, hidden: list[int] | None = None, dropout: float = 0.0,
                 residual: bool = False, part_norm: bool = False, bag_dropout: float = 0.0,
                 bag_weights: bool = False, normalize: bool = False, sparse: bool = True,
                 init_std: float = 0.05, item_bias: bool = False):
        use_features = use_features and bool(schema.user_feature_cards)
        if not 0.0 <= bag_dropout < 1.0:
            raise ConfigError(
                f"QueryTower bag_dropout={bag_dropout}: need 0 <= bag_dropout < 1 (the share of bag "
                "ids dropped in training). Fix: e.g. bag_dropout=0.5, or 0 to turn it off."
            )
        super().__init__(dim, use_id + use_bag + use_features, hidden, dropout, normalize, init_std,
                         item_bias, residual, part_norm)
        self.bag_dropout = bag_dropout
        self.user_emb = nn.Embedding(schema.n_users, dim, sparse=sparse) if use_id else None
        self.bag_emb = (nn.EmbeddingBag(schema.bag_size + 1, dim, mode="sum" if bag_weights else "mean",
                                        sparse=sparse, padding_idx=schema.bag_size) if use_bag else None)
        self.bag_logw = (nn.Embedding(schema.bag_size + 1, 1, sparse=sparse, padding_idx=schema.bag_size)
                         if use_bag and bag_weights else None)
        self.feat_emb = None
        if use_features:
            cards = torch.tensor([0] + list(schema.user_feature_cards))
            self.register_buffer("feat_offsets", torch.cumsum(cards, 0)[:-1], persistent=False)
            self.feat_emb = nn.Embedding(int(cards.sum()), dim, sparse=sparse)
        self._init(self)
        if self.bag_logw is not None:
            nn.init.zeros_(self.bag_logw.weight)  # every weight exp(0) = 1: the plain mean

    def forward(self, batch: dict) -> torch.Tensor:
        """``batch``: user (B,), bag (B, H) padded with bag_size, user_feats (B, K)."""
        parts = []
        if self.user_emb is not None:
            parts.append(self.user_emb(batch["user"]))  # (B, D)
        if self.bag_emb is not None:
            if "bag" not in batch:
                raise ConfigError(
                    f"QueryTower(use_bag=True) got a batch without 'bag' (keys {sorted(batch)}): the "
                    "data module builds bags only with max_history > 0. Fix: set max_history > 0 "
                    "or use_bag=False."
                )
            bag = batch["bag"]  # (B, H), padded with bag_size
            if self.training and self.bag_dropout > 0:
                drop = torch.rand(bag.shape, device=bag.device) < self.bag_dropout  # (B, H)
                bag = bag.masked_fill(drop, self.bag_emb.padding_idx)
            if self.bag_logw is None:
                parts.append(self.bag_emb(bag))  # (B, D), mean over non-pad ids
            else:
                w = self.bag_logw(bag).squeeze(-1).exp() * (bag != self.bag_emb.padding_idx)  # (B, H)
                pooled = self.bag_emb(bag, per_sample_weights=w)  # (B, D), sum_h w_h e_h
                parts.append(pooled / w.sum(1, keepdim=True).clamp_min(1e-12))  # weighted mean
        if self.feat_emb is not None:
            parts.append(self.feat_emb(batch["user_feats"] + self.feat_offsets).sum(1))  # (B, D)
        x = self.combine(parts)  # (B, D)
        if self.item_bias:
            x = torch.cat([x, x.new_ones(len(x), 1)], dim=-1)  # (B, D + 1): q . v + b_j
        return x


class ItemTower(_Tower):
    """Item ids -> (C, D): id embedding plus optional mean-pooled side features (genres).

    Args:
        schema: data sizes and the (N, Gmax) item feature index.
        dim, hidden, dropout, part_norm, normalize, sparse, init_std: as for ``QueryTower``.
        use_features: embed the item's categorical features (if the data has them).
        item_bias: append a learned per-item bias b_j (zero-initialised) to the output
            (D + 1), so that the score is q . v_j + b_j, still one inner product (FAISS and
            the exact retriever need no change) with ``QueryTower(item_bias=True)``. With
            L2-normalised towers the embeddings cannot carry popularity in their norm; the
            bias can (the item bias of matrix factorisation, Koren et al. 2009).
    """

    def __init__(self, schema: Schema, dim: int = 64, use_features: bool = True,
                 hidden: list[int] | None = None, dropout: float = 0.0, part_norm: bool = False,
                 normalize: bool = False, sparse: bool = True, init_std: float = 0.05,
                 item_bias: bool = False):
        use_features = use_features and schema.item_feature_index is not None
        super().__init__(dim, 1 + use_features, hidden, dropout, normalize, init_std, item_bias,
                         part_norm=part_norm)
        self.n_items = schema.n_items
        self.item_emb = nn.Embedding(schema.n_items, dim, sparse=sparse)
        self.feat_emb = None
        if use_features:
            G = schema.n_item_feature_values
            self.register_buffer("feat_index", torch.as_tensor(schema.item_feature_index))
            self.feat_emb = nn.EmbeddingBag(G + 1, dim, mode="mean", sparse=sparse, padding_idx=G)
        self.bias_emb = nn.Embedding(schema.n_items, 1, sparse=sparse) if item_bias else None
        self._init(self)
        if self.bias_emb is not None:
            nn.init.zeros_(self.bias_emb.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...,) int64 -> (..., D)."""
        shape = ids.shape
        ids = ids.reshape(-1)
        parts = [self.item_emb(ids)]  # (C, D)
        if self.feat_emb is not None:
            parts.append(self.feat_emb(self.feat_index[ids]))  # (C, D)
        x = self.combine(parts)  # (C, D)
        if self.bias_emb is not None:
            x = torch.cat([x, self.bias_emb(ids)], dim=-1)  # (C, D + 1)
        return x.reshape(*shape, self.out_dim)

    def forward_all(self) -> torch.Tensor:
        """(N, D) embeddings of the whole catalogue, with gradients (full-catalogue heads).

        Goes through the embedding lookup so sparse tables get (sparse) gradients. ``embed_all``
        is its no-gradient, chunked, eval-mode counterpart for retrieval.
        """
        return self(torch.arange(self.n_items, device=self.item_emb.weight.device))

    @torch.no_grad()
    def embed_all(self, chunk: int = 65536) -> torch.Tensor:
        """(N, D) catalogue embeddings computed ``chunk`` items at a time, no gradients.

        Runs in eval mode (no MLP dropout), so an index built during training from these
        embeddings is deterministic; the training mode is restored afterwards.
        """
        dev, was_training = self.item_emb.weight.device, self.training
        self.eval()
        try:
            out = [self(torch.arange(s, min(s + chunk, self.n_items), device=dev))  # (c, D)
                   for s in range(0, self.n_items, chunk)]
        finally:
            self.train(was_training)
        return torch.cat(out)  # (N, D)
