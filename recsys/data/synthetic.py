"""Synthetic interactions with planted structure: the embedded default dataset.

Items belong to latent clusters and have Zipf popularity; each user prefers one cluster.
A user's positives are drawn from the preferred cluster by within-cluster popularity, plus
a share ``noise`` drawn from global popularity. So a model that learns the clusters beats
popularity, and ``planted`` (user and item clusters) lets tests check the recovery.
Everything is vectorised: 100k items and 10k users take well under a second, 10M items a
few seconds. Deterministic by ``seed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.errors import ConfigError


@dataclass
class SyntheticConfig:
    """Sizes and shape of the synthetic data (defaults: the embedded demo dataset)."""

    n_users: int = 3000
    n_items: int = 1000
    n_clusters: int = 16
    interactions_per_user: float = 25.0  # mean positives per user (Poisson, at least 10)
    zipf: float = 1.0  # popularity exponent: p(rank r) ~ 1 / (r + 1) ** zipf
    noise: float = 0.2  # share of positives drawn from global popularity, not the cluster
    n_genres: int = 8  # item side feature: genre = cluster mod n_genres (+ one random genre)
    seed: int = 0


def make_synthetic(cfg: SyntheticConfig | None = None, **overrides):
    """Generate ``(interactions, items, users, planted)``.

    interactions: DataFrame [user, item, rating, time] (rating is always 5.0);
    items: DataFrame indexed by item with ``genres`` ('|'-joined) and ``title``;
    users: DataFrame indexed by user with categorical ``segment`` and ``age``;
    planted: dict of arrays ``user_cluster`` (U,), ``item_cluster`` (N,), ``item_pop`` (N,).
    """
    cfg = dataclasses.replace(cfg or SyntheticConfig(), **overrides)  # the caller's config is not changed
    if cfg.n_items < 2 * cfg.n_clusters or cfg.n_users < 1:
        raise ConfigError(
            f"synthetic n_items={cfg.n_items}, n_clusters={cfg.n_clusters}, n_users={cfg.n_users}: "
            "need n_items >= 2 * n_clusters and n_users >= 1. Fix: raise n_items or lower n_clusters."
        )
    rng = np.random.default_rng(cfg.seed)
    N, U, K = cfg.n_items, cfg.n_users, cfg.n_clusters
    item_cluster = rng.integers(K, size=N)
    pop = 1.0 / (rng.permutation(N) + 1.0) ** cfg.zipf  # (N,) Zipf weights, random ranks
    user_cluster = rng.integers(K, size=U)

    # Cluster-sorted cumulative popularity: a draw inside cluster c is a searchsorted
    # into its slice of the global cumulative sum.
    order = np.argsort(item_cluster, kind="stable")  # (N,) items grouped by cluster
    cum = np.cumsum(pop[order])
    ends = np.searchsorted(item_cluster[order], np.arange(K), side="right")
    starts_mass = np.concatenate([[0.0], cum[ends[:-1] - 1]])
    mass = cum[ends - 1] - starts_mass

    n_per_user = np.maximum(10, rng.poisson(cfg.interactions_per_user, size=U))
    n_draw = (n_per_user * 1.3).astype(np.int64) + 2  # oversample, duplicates removed below
    users = np.repeat(np.arange(U), n_draw)
    c = user_cluster[users]
    target = starts_mass[c] + rng.random(len(users)) * mass[c]
    items = order[np.minimum(np.searchsorted(cum, target), N - 1)]
    from_global = rng.random(len(users)) < cfg.noise
    gcum = np.cumsum(pop)
    items[from_global] = np.minimum(
        np.searchsorted(gcum, rng.random(from_global.sum()) * gcum[-1]), N - 1
    )
    df = pd.DataFrame({"user": users, "item": items}).drop_duplicates(["user", "item"])
    df = df[df.groupby("user").cumcount() < n_per_user[df["user"].to_numpy()]]
    df = df.assign(
        rating=np.float32(5.0),
        time=rng.integers(1_000_000_000, 1_100_000_000, size=len(df)),
    ).reset_index(drop=True)

    genre = item_cluster % cfg.n_genres
    extra = rng.integers(cfg.n_genres, size=N)
    genres = pd.Series([f"g{a}|g{b}" if a != b else f"g{a}" for a, b in zip(genre, extra)])
    items_df = pd.DataFrame(
        {"genres": genres.to_numpy(), "title": [f"item {j} (cluster {k})" for j, k in zip(range(N), item_cluster)]}
        if N <= 200_000 else {"genres": genres.to_numpy()},
        index=pd.RangeIndex(N, name="item"),
    )
    segment = np.where(rng.random(U) < 0.7, user_cluster // 2, rng.integers(max(1, K // 2), size=U))
    users_df = pd.DataFrame(
        {"segment": segment, "age": rng.integers(7, size=U)}, index=pd.RangeIndex(U, name="user")
    )
    planted = {"user_cluster": user_cluster, "item_cluster": item_cluster, "item_pop": pop}
    return df, items_df, users_df, planted
