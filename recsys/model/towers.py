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
from recsys.model.pooling import bag_mean
from recsys.schema import Schema


def _check_rate(tower: str, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{tower} unknown_id_rate={rate}: need 0 <= rate < 1 (the share of ids replaced by the "
                          "unknown row in training). Fix: e.g. unknown_id_rate=0.1, or 0 to turn it off.")


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
        self.unknown_id_rate = 0.0
        self.item_bias = item_bias
        self.out_dim = dim + int(item_bias)  # the width of the score's inner product
        self.mlp = _mlp(dim * n_parts, list(hidden), dim, dropout) if hidden else None
        self.residual = residual and self.mlp is not None
        # part_norm: unit-norm parts times a learned scale each (init 1)
        self.part_scale = nn.Parameter(torch.ones(n_parts)) if part_norm else None
        if self.residual:  # the MLP starts as a zero correction of the summed parts
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def _rating_block(self, k: int, rows: int, cols: int, name: str) -> None:
        """Register the (rows, cols) explicit-rating factor buffer ``name`` of ``rating_dim`` k:
        k + 1 more output coordinates."""
        if k < 0:
            raise ConfigError(f"{type(self).__name__} rating_dim={k}: need >= 0 (0: no rating factors). Fix: e.g. "
                              "rating_dim: 32 on both towers, or 0.")
        self.rating_dim = k
        if k:
            self.register_buffer(name, torch.zeros(rows, cols))
            self.out_dim += k + 1

    def _init(self, m: nn.Module) -> None:
        for mod in m.modules():
            if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
                nn.init.normal_(mod.weight, std=self.init_std)
                if mod.padding_idx is not None:
                    with torch.no_grad():
                        mod.weight[mod.padding_idx].zero_()

    def _id_part(self, table: nn.Embedding, ids: torch.Tensor, new: torch.Tensor | None) -> torch.Tensor:
        """(C, D) id embeddings; ``new`` (C,) bool marks ids unseen in training: they read the
        unknown row (the table's last row) when the tower has one, else a zero vector. In
        training each id is replaced by the unknown row with probability ``unknown_id_rate``
        (id dropout, so that row learns what an id-less input looks like; Volkovs et al.,
        NeurIPS 2017, "DropoutNet")."""
        if self.unknown_id_rate > 0:
            unk = table.num_embeddings - 1
            drop = torch.rand(ids.shape, device=ids.device) < self.unknown_id_rate if self.training else None
            mask = new if drop is None else (drop if new is None else drop | new)
            return table(ids if mask is None else torch.where(mask, torch.full_like(ids, unk), ids))
        if new is None:
            return table(ids)
        return table(ids.clamp_min(0)) * (~new).unsqueeze(-1)  # (C, D), zero for new ids

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
        use_features: embed categorical user features (one table per field, summed) and the
            numeric ones (a linear map to D).
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
        bag_values: pool the bag as a mean weighted by the batch's ``bag_w`` (B, H) values,
            sum_h x_h e_h / sum_h x_h, e.g. a document's TF-IDF word weights
            (``data.bag_weighting: tfidf``); times the learned weights with ``bag_weights``.
            Batches without ``bag_w`` (history bags) pool as before.
        bag_norm: what a weighted bag's sum (``bag_values`` or ``bag_weights``) is divided
            by: ``l1`` the sum of the weights (the weighted mean), ``l2`` their Euclidean
            norm (with TF-IDF values: a linear model on the L2-normalised TF-IDF vector, the
            input of the one-vs-rest and extreme-classification baselines, where a longer
            document has a larger query norm), ``none`` nothing (the plain weighted sum).
        normalize: L2-normalise the output (pair with a small temperature).
        sparse: sparse gradients for the id tables.
        init_std: std of the normal init of the id tables.
        item_bias: append a constant 1 to the output (D + 1), the coordinate that multiplies
            the item tower's learned bias (``ItemTower(item_bias=True)``); set it on both.
        unknown_id_rate: > 0 adds an unknown-user row to the id table, used for users with
            no train interaction (held-out users, ``recommend --history``) and, in training,
            in place of a user's own id with this probability (id dropout). 0: such users get
            a zero id part (their history and features describe them).
        rating_dim: k > 0 appends the explicit-rating factors of ``recsys.model.rating`` after
            the output (and its bias coordinate): [w p_u, w] (k + 1 coordinates) against the
            item tower's [q_i, b_i], so the score gains w * (p_u . q_i + b_i), the ranking part
            of a biased MF of the user's ratings. p_u and w are buffers, not parameters: the
            preference stage fits the factors (``fit_rating_mf``) and chooses w on validation
            (``TwoTowerModule.rating_grid``); in training the block is zero, so the losses see
            the retrieval towers alone. Users unseen in training get p_u = 0 (the item part
            b_i still applies). Set the same k on both towers.

    A user unseen in training has ``user`` = -1 (or no train row): the id part is the unknown
    row / zero; categorical and numeric features missing from the batch contribute zero.
    """

    def __init__(self, schema: Schema, dim: int = 64, use_id: bool = True, use_bag: bool = True,
                 use_features: bool = True, hidden: list[int] | None = None, dropout: float = 0.0,
                 residual: bool = False, part_norm: bool = False, bag_dropout: float = 0.0,
                 bag_weights: bool = False, normalize: bool = False, sparse: bool = True,
                 init_std: float = 0.05, item_bias: bool = False, unknown_id_rate: float = 0.0,
                 bag_values: bool = False, bag_norm: str = "l1", rating_dim: int = 0):
        use_numeric = use_features and schema.user_numeric_dim > 0
        use_features = use_features and bool(schema.user_feature_cards)
        _check_rate("QueryTower", unknown_id_rate)
        if not 0.0 <= bag_dropout < 1.0:
            raise ConfigError(
                f"QueryTower bag_dropout={bag_dropout}: need 0 <= bag_dropout < 1 (the share of bag "
                "ids dropped in training). Fix: e.g. bag_dropout=0.5, or 0 to turn it off."
            )
        super().__init__(dim, use_id + use_bag + use_features + use_numeric, hidden, dropout, normalize, init_std,
                         item_bias, residual, part_norm)
        self.bag_dropout, self.unknown_id_rate = bag_dropout, unknown_id_rate
        self.feature_names = list(schema.user_feature_names)
        self.user_emb = (nn.Embedding(schema.n_users + (unknown_id_rate > 0), dim, sparse=sparse)
                         if use_id else None)
        self.n_users = schema.n_users
        self.num_proj = nn.Linear(schema.user_numeric_dim, dim, bias=False) if use_numeric else None
        cold = None if schema.user_counts is None else torch.as_tensor(schema.user_counts) == 0
        self.register_buffer("cold_user", cold if cold is not None and bool(cold.any()) else None, persistent=False)
        if bag_norm not in ("l1", "l2", "none"):
            raise ConfigError(
                f"QueryTower bag_norm={bag_norm!r}: need 'l1' (weighted mean), 'l2' (sum over the "
                "L2 norm of the weights) or 'none' (weighted sum). Fix: e.g. bag_norm: l2."
            )
        self.bag_values, self.bag_norm = bag_values, bag_norm
        self.bag_emb = (nn.EmbeddingBag(schema.bag_size + 1, dim, mode="sum" if bag_weights or bag_values else "mean",
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
        self._rating_block(rating_dim, schema.n_users, rating_dim, "rating_user")  # (U, k) p_u
        if rating_dim:
            self.register_buffer("rating_weight", torch.zeros(()))  # w, chosen on validation

    def forward(self, batch: dict) -> torch.Tensor:
        """``batch``: user (B,) (-1: unseen), bag (B, H) padded with bag_size, user_feats (B, K),
        user_num (B, P')."""
        parts = []
        if self.user_emb is not None:
            user = batch["user"]  # (B,)
            new = user < 0
            if self.cold_user is not None:
                new = new | self.cold_user[user.clamp_min(0)]
            parts.append(self._id_part(self.user_emb, user, new if bool(new.any()) else None))  # (B, D)
        if self.bag_emb is not None:
            if "bag" not in batch:
                raise ConfigError(
                    f"QueryTower(use_bag=True) got a batch without 'bag' (keys {sorted(batch)}): the "
                    "data module builds bags only with max_history > 0. Fix: set max_history > 0 "
                    "or use_bag=False."
                )
            bag = batch["bag"]  # (B, H), padded with bag_size
            keep = None
            if self.training and self.bag_dropout > 0:
                keep = torch.rand(bag.shape, device=bag.device) >= self.bag_dropout  # (B, H)
            if self.bag_emb.mode == "mean":
                parts.append(bag_mean(self.bag_emb, bag, keep))  # (B, D), mean over the kept non-pad ids
            else:
                if keep is not None:
                    bag = bag.masked_fill(~keep, self.bag_emb.padding_idx)
                w = (bag != self.bag_emb.padding_idx).to(self.bag_emb.weight.dtype)  # (B, H) 1 per id, 0 at pads
                if self.bag_values and "bag_w" in batch:
                    w = w * batch["bag_w"].to(w.dtype)  # the bag's own values (e.g. TF-IDF)
                if self.bag_logw is not None:
                    w = w * self.bag_logw(bag).squeeze(-1).exp()  # learned weight per id
                pooled = self.bag_emb(bag, per_sample_weights=w)  # (B, D), sum_h w_h e_h
                parts.append(self._pool_norm(pooled, w))  # (B, D)
        B = len(parts[0]) if parts else len(next(iter(batch.values())))
        if self.feat_emb is not None:
            if "user_feats" in batch:
                parts.append(self.feat_emb(batch["user_feats"] + self.feat_offsets).sum(1))  # (B, D)
            else:  # a new user without features
                parts.append(self.feat_emb.weight.new_zeros(B, self.dim))
        if self.num_proj is not None:
            parts.append(self.num_proj(batch["user_num"]) if "user_num" in batch
                         else self.num_proj.weight.new_zeros(B, self.dim))  # (B, D)
        x = self.combine(parts)  # (B, D)
        if self.item_bias:
            x = torch.cat([x, x.new_ones(len(x), 1)], dim=-1)  # (B, D + 1): q . v + b_j
        if self.rating_dim:
            x = torch.cat([x, self._rating_part(batch.get("user"), len(x)).to(x)], dim=-1)  # (B, out_dim)
        return x

    def _rating_part(self, user: torch.Tensor | None, B: int) -> torch.Tensor:
        """(B, k + 1) [w p_u, w]: zero in training, p_u = 0 for users unseen in training."""
        w = 0.0 if self.training else self.rating_weight
        out = self.rating_user.new_zeros(B, self.rating_dim + 1)
        out[:, -1] = w
        if user is not None:
            known = (user >= 0) & (user < self.n_users)  # (B,)
            out[:, :-1] = w * self.rating_user[user.clamp(0, self.n_users - 1)] * known[:, None]
        return out

    def _pool_norm(self, pooled: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, D) weighted sum ``pooled`` of a bag with weights ``w`` (B, H) over the bag's
        weight norm: l1 the weighted mean, l2 sum / ||w||_2 (a linear model on L2-normalised
        TF-IDF features), none the plain sum."""
        if self.bag_norm == "none":
            return pooled
        norm = w.sum(1, keepdim=True) if self.bag_norm == "l1" else w.square().sum(1, keepdim=True).sqrt()
        return pooled / norm.clamp_min(1e-12)


class ItemTower(_Tower):
    """Item ids -> (C, D): id embedding plus optional side features: the mean-pooled bag of
    categorical / multi-valued tokens (genres, brand=..., tags=...) and a linear map of the
    numeric ones.

    Args:
        schema: data sizes, the (N, Gmax) item feature index and the (N, P) numeric block.
        dim, hidden, dropout, part_norm, normalize, sparse, init_std: as for ``QueryTower``.
        use_id: embed the item id; False drops the id embedding, so every item, known or new,
            is its features (with ``item_bias`` a known item still has its learned bias, an id
            parameter; new and cold items a zero one: set ``item_bias: false`` on both towers
            for a strictly feature-only score).
        use_features: embed the item's features (if the data has them).
        unknown_id_rate: > 0 adds an unknown-item row to the id table, used for items with no
            train interaction (cold items) and for new items (``embed_new``), and in training
            in place of an item's own id with this probability (id dropout; DropoutNet,
            Volkovs et al., NeurIPS 2017). 0: such items get a zero id part, their features
            alone describe them.
        rating_dim: k > 0 appends the item's explicit-rating factors [q_i, b_i] (buffers, set
            by the preference stage; zero for new items), the counterpart of
            ``QueryTower(rating_dim=k)``.
        item_bias: append a learned per-item bias b_j (zero-initialised) to the output
            (D + 1), so that the score is q . v_j + b_j, still one inner product (FAISS and
            the exact retriever need no change) with ``QueryTower(item_bias=True)``. With
            L2-normalised towers the embeddings cannot carry popularity in their norm; the
            bias can (the item bias of matrix factorisation, Koren et al. 2009).
    """

    def __init__(self, schema: Schema, dim: int = 64, use_features: bool = True,
                 hidden: list[int] | None = None, dropout: float = 0.0, part_norm: bool = False,
                 normalize: bool = False, sparse: bool = True, init_std: float = 0.05,
                 item_bias: bool = False, use_id: bool = True, unknown_id_rate: float = 0.0,
                 rating_dim: int = 0):
        use_numeric = use_features and schema.item_numeric is not None
        use_features = use_features and schema.item_feature_index is not None
        _check_rate("ItemTower", unknown_id_rate)
        super().__init__(dim, use_id + use_features + use_numeric, hidden, dropout, normalize, init_std, item_bias,
                         part_norm=part_norm)
        self.n_items, self.unknown_id_rate = schema.n_items, unknown_id_rate
        self.feature_names = list(schema.item_feature_names)
        self.item_emb = nn.Embedding(schema.n_items + (unknown_id_rate > 0), dim, sparse=sparse) if use_id else None
        self.feat_emb = None
        if use_features:
            G = schema.n_item_feature_values
            self.register_buffer("feat_index", torch.as_tensor(schema.item_feature_index))
            self.feat_emb = nn.EmbeddingBag(G + 1, dim, mode="mean", sparse=sparse, padding_idx=G)
        self.num_proj = None
        if use_numeric:
            self.register_buffer("item_numeric", torch.as_tensor(schema.item_numeric, dtype=torch.float32),
                                 persistent=False)
            self.num_proj = nn.Linear(schema.item_numeric.shape[1], dim, bias=False)
        cold = None if schema.item_counts is None else torch.as_tensor(schema.item_counts) == 0
        self.register_buffer("cold_item", cold if cold is not None and bool(cold.any()) else None, persistent=False)
        self.bias_emb = nn.Embedding(schema.n_items, 1, sparse=sparse) if item_bias else None
        self._init(self)
        if self.bias_emb is not None:
            nn.init.zeros_(self.bias_emb.weight)
        self._rating_block(rating_dim, schema.n_items, rating_dim + 1, "rating_item")  # (N, k + 1) [q_i, b_i]

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _encode(self, ids: torch.Tensor | None, new: torch.Tensor | None, feat_rows: torch.Tensor | None,
                numeric: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """(C, out_dim) from the parts: ids (C,) with ``new`` (C,) bool, token rows (C, Gmax)
        padded with G, numeric (C, P), bias (C, 1)."""
        parts = []
        if self.item_emb is not None:
            parts.append(self._id_part(self.item_emb, ids, new))  # (C, D)
        if self.feat_emb is not None:
            parts.append(bag_mean(self.feat_emb, feat_rows))  # (C, D), mean over the non-pad tokens
        if self.num_proj is not None:
            parts.append(self.num_proj(numeric))  # (C, D)
        x = self.combine(parts)  # (C, D)
        if self.bias_emb is not None:
            x = torch.cat([x, bias], dim=-1)  # (C, D + 1)
        if self.rating_dim:  # (C, k + 1) [q_i, b_i]; zero for new items
            r = self.rating_item[ids] if new is None else self.rating_item[ids] * (~new).unsqueeze(-1)
            x = torch.cat([x, r.to(x)], dim=-1)  # (C, out_dim)
        return x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...,) int64 -> (..., D)."""
        shape = ids.shape
        ids = ids.reshape(-1)
        new = None
        if self.cold_item is not None and self.item_emb is not None:
            new = self.cold_item[ids]
            new = new if bool(new.any()) else None
        x = self._encode(ids, new,
                         self.feat_index[ids] if self.feat_emb is not None else None,
                         self.item_numeric[ids] if self.num_proj is not None else None,
                         self.bias_emb(ids) if self.bias_emb is not None else None)
        return x.reshape(*shape, self.out_dim)

    @torch.no_grad()
    def embed_new(self, feat_rows: torch.Tensor | None, numeric: torch.Tensor | None) -> torch.Tensor:
        """(M, out_dim) embeddings of M items that are not in the catalogue, from their features
        alone: token rows (M, Gmax) padded with G, numeric (M, P) (as ``FeatureEncoder``
        encodes them); the id part is the unknown row (or zero), the bias zero. Eval mode."""
        was = self.training
        self.eval()
        try:
            M = len(feat_rows if feat_rows is not None else numeric)
            dev = self._device()
            ids = torch.zeros(M, dtype=torch.long, device=dev)
            new = torch.ones(M, dtype=torch.bool, device=dev)
            G = self.feat_emb.padding_idx if self.feat_emb is not None else 0
            if self.feat_emb is not None and feat_rows is None:
                feat_rows = torch.full((M, 1), G, dtype=torch.long, device=dev)
            if self.num_proj is not None and numeric is None:
                numeric = torch.zeros(M, self.num_proj.in_features, device=dev)
            bias = torch.zeros(M, 1, device=dev) if self.bias_emb is not None else None
            return self._encode(ids, new, None if self.feat_emb is None else feat_rows.to(dev),
                                None if self.num_proj is None else numeric.to(dev), bias)
        finally:
            self.train(was)

    def forward_all(self) -> torch.Tensor:
        """(N, D) embeddings of the whole catalogue, with gradients (full-catalogue heads).

        Goes through the embedding lookup so sparse tables get (sparse) gradients. ``embed_all``
        is its no-gradient, chunked, eval-mode counterpart for retrieval.
        """
        return self(torch.arange(self.n_items, device=self._device()))

    @torch.no_grad()
    def embed_all(self, chunk: int = 65536) -> torch.Tensor:
        """(N, D) catalogue embeddings computed ``chunk`` items at a time, no gradients.

        Runs in eval mode (no MLP dropout), so an index built during training from these
        embeddings is deterministic; the training mode is restored afterwards.
        """
        dev, was_training = self._device(), self.training
        self.eval()
        try:
            out = [self(torch.arange(s, min(s + chunk, self.n_items), device=dev))  # (c, D)
                   for s in range(0, self.n_items, chunk)]
        finally:
            self.train(was_training)
        return torch.cat(out)  # (N, D)
