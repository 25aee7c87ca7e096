"""Named datasets: ``ml-100k``, ``ml-1m``, ``bibtex``, ``synthetic``.

Real files are looked up under ``root``, else ``$RECSYS_DATA``, else ``~/.cache/recsys``,
in the layout of ``shared/data`` (``ml-1m/ratings.dat`` from the official zip is used when
present, else ``ml-1m/ratings_no_timestamp.dat.gz``). Missing files raise ``DataError``
saying which files to place where (or call ``recsys.data.download.download``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.dataset import RecData, from_interactions, to_csr
from recsys.data.preprocess import kcore, to_implicit
from recsys.data.synthetic import SyntheticConfig, make_synthetic
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError

NAMES = ("synthetic", "ml-100k", "ml-1m", "bibtex")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$RECSYS_DATA``, else ``~/.cache/recsys``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("RECSYS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "recsys"


def _find(root: Path, name: str, candidates: list[str]) -> Path:
    for c in candidates:
        if (root / name / c).exists():
            return root / name / c
    from recsys.data.download import files_hint

    raise DataError(
        f"dataset '{name}': none of {candidates} found in {root / name}. "
        f"Fix: {files_hint(name, root)}"
    )


def load_interactions(name: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The raw interaction frame of a named MovieLens dataset (before filtering)."""
    from recsys.data import loaders

    r = data_root(root)
    if name == "ml-100k":
        return loaders.read_movielens(_find(r, name, ["u.data", "u.data.gz"]))
    if name == "ml-1m":
        return loaders.read_movielens(
            _find(r, name, ["ratings.dat", "ratings.dat.gz", "ratings_no_timestamp.dat.gz"])
        )
    raise ConfigError(f"dataset '{name}' has no interaction file. Fix: use ml-100k or ml-1m.")


def load_dataset(
    name: str = "synthetic",
    root: str | os.PathLike | None = None,
    split: str = "random",
    seed: int = 0,
    rating_threshold: float | None = 3.0,
    k_core: int = 10,
    synthetic: SyntheticConfig | dict | None = None,
    side_features: bool = True,
) -> RecData:
    """Load, filter (ratings >= threshold, iterative k-core), encode and split a dataset.

    Defaults follow the protocol of DESIGN.md section 3 (ratings >= 3, 10-core, per-user
    random 8:1:1). ``seed`` is the split seed (and the generator seed of ``synthetic``
    unless its config sets one).
    """
    if name not in NAMES:
        raise ConfigError(f"dataset '{name}' is unknown; valid: {list(NAMES)}. Fix: pick one of them.")
    if name == "bibtex":
        return load_bibtex(root, seed=seed)
    uf = itf = titles = None
    planted = {}
    if name == "synthetic":
        cfg = synthetic if isinstance(synthetic, SyntheticConfig) else SyntheticConfig(**(synthetic or {}))
        df, items, users, planted = make_synthetic(cfg)
        if side_features:
            itf, uf = items, users
        titles = items["title"] if "title" in items else None
    else:
        from recsys.data import loaders

        df = load_interactions(name, root)
        r = data_root(root)
        if name == "ml-100k":
            items = loaders.read_ml100k_items(_find(r, name, ["u.item"]))
            users = loaders.read_ml100k_users(_find(r, name, ["u.user"]))
        else:
            items = loaders.read_ml1m_movies(_find(r, name, ["movies.dat"]))
            users = loaders.read_ml1m_users(_find(r, name, ["users.dat"]))
        items = items.set_index("item")
        titles = items["title"]
        if side_features:
            itf = items[["genres"]]
            uf = users.set_index("user")[["gender", "age", "occupation"]]
    df = to_implicit(df, rating_threshold, source=name)
    df = kcore(df, k_core, k_core, source=name)
    data = from_interactions(df, name, split=split, seed=seed, user_features=uf,
                             item_features=itf, item_titles=titles)
    if planted:  # re-index the planted truth to the vocab's contiguous ids
        data.planted = {
            "user_cluster": planted["user_cluster"][data.user_vocab.raw.to_numpy()],
            "item_cluster": planted["item_cluster"][data.item_vocab.raw.to_numpy()],
        }
    return data


def load_bibtex(root: str | os.PathLike | None = None, seed: int = 0, valid_frac: float = 0.1) -> RecData:
    """Bibtex as retrieval: documents are queries (bag of word features), labels are items.

    The official train documents are split into train / validation documents
    (``valid_frac``, seeded); the official test documents are the test queries. Held-out
    documents have no train labels: they are described by their words only.
    """
    from recsys.data.loaders import read_xc

    r = data_root(root)
    xtr, ytr = read_xc(_find(r, "bibtex", ["xc_train.txt.gz", "xc_train.txt"]))
    xte, yte = read_xc(_find(r, "bibtex", ["xc_test.txt.gz", "xc_test.txt"]))
    n_tr, n_te, L = xtr.shape[0], xte.shape[0], ytr.shape[1]
    is_valid = np.zeros(n_tr, dtype=bool)
    is_valid[np.random.default_rng(seed).permutation(n_tr)[: int(valid_frac * n_tr)]] = True
    empty = sp.csr_matrix((n_te, L), dtype=np.float32)
    ytr = sp.csr_matrix(ytr, dtype=np.float32)
    keep = sp.diags(~is_valid * 1.0).dot(ytr).tocsr()
    held = sp.diags(is_valid * 1.0).dot(ytr).tocsr()
    zeros_tr = sp.csr_matrix((n_tr, L), dtype=np.float32)
    train = _binary(sp.vstack([keep, empty]))
    valid = _binary(sp.vstack([held, empty]))
    test = _binary(sp.vstack([zeros_tr, sp.csr_matrix(yte, dtype=np.float32)]))
    bags = _binary(sp.vstack([xtr, xte]))
    user_vocab = Vocab(np.arange(n_tr + n_te), name="document")
    item_vocab = Vocab(np.arange(L), name="label")
    return RecData("bibtex", train, valid, test, user_vocab, item_vocab, query_bags=bags)


def _binary(m) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.eliminate_zeros()
    m.sort_indices()
    m.data[:] = 1.0
    return m


__all__ = ["NAMES", "data_root", "load_dataset", "load_bibtex", "load_interactions", "to_csr"]
