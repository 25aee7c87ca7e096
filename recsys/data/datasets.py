"""The dataset registry: a name -> loader table (``DATASETS``) over the bundled datasets
``synthetic`` (embedded, generated), ``ml-100k``, ``ml-1m``, ``bibtex``, ``delicious`` and
``gowalla``.

Real files are looked up under ``root``, else ``$RECSYS_DATA``, else ``~/.cache/recsys``,
in the layout described in ``data/README.md`` (``ml-1m/ratings.dat`` from the official zip is
used when present, else ``ml-1m/ratings_no_timestamp.dat.gz``). Missing files raise
``DataError`` saying which files to place where (or call ``recsys.data.download.download``).

``load_dataset(name, ...)`` looks the loader up and calls it with the protocol settings. A
loader is a function ``(root, *, split, seed, rating_threshold, k_core, synthetic,
side_features) -> RecData``; ``register(name)`` adds one.

``shared_cache()`` is a context in which every distinct ``load_dataset`` call is loaded once
and the same ``RecData`` is handed to every later identical call (``recsys compare`` trains
every head on one copy of the data).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data import formats
from recsys.data.formats.table import SUFFIX_FORMATS
from recsys.data.preprocess import kcore, to_implicit
from recsys.data.recdata import RecData, binary_csr, from_interactions, with_ratings
from recsys.data.source import DataSource, load_source
from recsys.data.synthetic import SyntheticConfig, make_synthetic
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError

__all__ = ["DATASETS", "NAMES", "register", "data_root", "load_dataset", "load_file", "load_bibtex", "load_mulan",
           "load_documents",
           "load_interactions", "shared_cache", "load_source_cached"]

logger = logging.getLogger(__name__)
Loader = Callable[..., RecData]
DATASETS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: add ``fn`` to ``DATASETS`` under ``name``."""

    def add(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return add


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


_RATINGS = {"ml-100k": ["u.data", "u.data.gz"],
            "ml-1m": ["ratings.dat", "ratings.dat.gz", "ratings_no_timestamp.dat.gz"]}


def load_interactions(name: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The raw interaction frame of a named MovieLens dataset (before filtering)."""
    if name not in _RATINGS:
        raise ConfigError(f"dataset '{name}' has no interaction file. Fix: use ml-100k or ml-1m.")
    return formats.read_movielens(_find(data_root(root), name, _RATINGS[name]))


def _build(df, name, split, seed, rating_threshold, k_core, uf=None, itf=None, titles=None,
           dislike_threshold=None) -> RecData:
    """The protocol: ratings >= threshold, iterative k-core, vocab, split; with
    ``dislike_threshold`` the ratings and the dislikes kept beside (``recdata.with_ratings``)."""
    pos = to_implicit(df, rating_threshold, source=name)
    pos = kcore(pos, k_core, k_core, source=name)
    data = from_interactions(pos, name, split=split, seed=seed, user_features=uf, item_features=itf,
                             item_titles=titles)
    return data if dislike_threshold is None else with_ratings(data, df, dislike_threshold, seed=seed)


@register("synthetic")
def _synthetic(root=None, *, split="random", seed=0, rating_threshold=3.0, k_core=10, synthetic=None,
               side_features=True) -> RecData:
    cfg = synthetic if isinstance(synthetic, SyntheticConfig) else SyntheticConfig(**(synthetic or {}))
    df, items, users, planted = make_synthetic(cfg)
    itf, uf = (items, users) if side_features else (None, None)
    titles = items["title"] if "title" in items else None
    data = _build(df, "synthetic", split, seed, rating_threshold, k_core, uf, itf, titles)
    # re-index the planted truth to the vocab's contiguous ids
    data.planted = {
        "user_cluster": planted["user_cluster"][data.user_vocab.raw.to_numpy()],
        "item_cluster": planted["item_cluster"][data.item_vocab.raw.to_numpy()],
    }
    return data


def _movielens(name: str, item_reader, user_reader, item_file: str, user_file: str):
    def load(root=None, *, split="random", seed=0, rating_threshold=3.0, k_core=10, synthetic=None,
             side_features=True, dislike_threshold=None) -> RecData:
        df = load_interactions(name, root)
        r = data_root(root)
        items = item_reader(_find(r, name, [item_file])).set_index("item")
        users = user_reader(_find(r, name, [user_file]))
        itf = items[["genres"]] if side_features else None
        uf = users.set_index("user")[["gender", "age", "occupation"]] if side_features else None
        return _build(df, name, split, seed, rating_threshold, k_core, uf, itf, items["title"],
                      dislike_threshold=dislike_threshold)

    load.__doc__ = (f"MovieLens {name}: ratings, genres, titles and user demographics; ``dislike_threshold``: "
                    "also the ratings and the low-rated pairs (``RecData.ratings`` / ``dislikes``).")
    return register(name)(load)


_movielens("ml-100k", formats.read_ml100k_items, formats.read_ml100k_users, "u.item", "u.user")
_movielens("ml-1m", formats.read_ml1m_movies, formats.read_ml1m_users, "movies.dat", "users.dat")


@register("bibtex")
def _bibtex(root=None, *, split="random", seed=0, bag_weighting="binary", **_protocol) -> RecData:
    return load_bibtex(root, seed=seed, bag_weighting=bag_weighting)


@register("delicious")
def _delicious(root=None, *, split="random", seed=0, bag_weighting="binary", **_protocol) -> RecData:
    """Delicious (Mulan; 983 labels, 500 word features, 12,920 / 3,185 documents)."""
    return load_mulan("delicious", root, seed=seed, bag_weighting=bag_weighting)


@register("gowalla")
def _gowalla(root=None, *, split="random", seed=0, valid_frac: float = 0.1, **_protocol) -> RecData:
    """Gowalla, LightGCN / NGCF split (29,858 users, 40,981 items, 810,128 train + 217,242 test
    pairs): the pre-split source ``gowalla/{train,test}.txt(.gz)`` as given (no filtering); a
    seeded per-user share ``valid_frac`` of train becomes the validation set, since the
    published split has none; the test file is the test set."""
    r = data_root(root)
    src = DataSource(train=str(_find(r, "gowalla", ["train.txt.gz", "train.txt"])),
                     test=str(_find(r, "gowalla", ["test.txt.gz", "test.txt"])), valid_frac=valid_frac, name="gowalla")
    return load_source(src, seed=seed)


NAMES = tuple(DATASETS)

_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("recsys_dataset_cache", default=None)


@contextlib.contextmanager
def shared_cache() -> Iterator[dict]:
    """Within the block, identical ``load_dataset`` calls return one shared ``RecData``.

    Yields the cache (key -> RecData); its length is the number of distinct loads.
    """
    token = _CACHE.set({})
    try:
        yield _CACHE.get()
    finally:
        _CACHE.reset(token)


def load_dataset(
    name: str = "synthetic",
    root: str | os.PathLike | None = None,
    split: str = "random",
    seed: int = 0,
    rating_threshold: float | None = 3.0,
    k_core: int = 10,
    synthetic: SyntheticConfig | dict | None = None,
    side_features: bool = True,
    bag_weighting: str = "binary",
    dislike_threshold: float | None = None,
) -> RecData:
    """Load, filter (ratings >= threshold, iterative k-core), encode and split a dataset.

    Defaults follow the protocol of docs/protocol.md (ratings >= 3, 10-core, per-user
    random 8:1:1). ``seed`` is the split seed (and the generator seed of ``synthetic``
    unless its config sets one). ``dislike_threshold``: keep the explicit ratings and the
    pairs rated <= it as dislikes, split per user like the positives (``RecData.dislikes``;
    datasets with ratings: MovieLens, or a rated interaction file); the positives are unchanged.
    """
    if name not in DATASETS and _is_table_file(name):
        return _load_cached(("file", str(Path(name).resolve()), split, seed, rating_threshold, k_core,
                             dislike_threshold),
                            lambda: load_file(name, split=split, seed=seed, rating_threshold=rating_threshold,
                                              k_core=k_core, dislike_threshold=dislike_threshold))
    if name not in DATASETS:
        raise ConfigError(f"dataset '{name}' is unknown; valid: {list(DATASETS)}, or the path of a .csv / .tsv / "
                          ".parquet interaction file. Fix: pick one of them.")
    if name == "synthetic" and not isinstance(synthetic, SyntheticConfig):
        synthetic = SyntheticConfig(**(synthetic or {}))
    kw = dict(split=split, seed=seed, rating_threshold=rating_threshold, k_core=k_core, synthetic=synthetic,
              side_features=side_features)
    if bag_weighting != "binary":  # document datasets only (their loaders take it)
        if "bag_weighting" not in inspect.signature(DATASETS[name]).parameters:
            raise ConfigError(f"bag_weighting={bag_weighting!r} but dataset {name!r} has no document bags (its queries "
                              "are users described by their history). Fix: leave bag_weighting at 'binary', or use "
                              "a document dataset such as bibtex.")
        kw["bag_weighting"] = bag_weighting
    if dislike_threshold is not None:  # datasets with explicit ratings only (their loaders take it)
        if "dislike_threshold" not in inspect.signature(DATASETS[name]).parameters:
            raise ConfigError(f"dislike_threshold={dislike_threshold} but dataset {name!r} has no explicit ratings to "
                              "take dislikes from. Fix: set dislike_threshold: null, or use a rated dataset "
                              "(ml-100k, ml-1m, or a file with a rating column).")
        kw["dislike_threshold"] = dislike_threshold
    key_kw = {**kw, "synthetic": asdict(synthetic) if name == "synthetic" else None}  # only synthetic reads it
    return _load_cached((name, str(root), sorted(key_kw.items())), lambda: DATASETS[name](root, **kw))


def _load_cached(key, load: Callable[[], RecData]) -> RecData:
    """``load()``, or inside ``shared_cache()`` the RecData an identical earlier call loaded."""
    cache = _CACHE.get()
    if cache is None:
        return load()
    if repr(key) not in cache:
        cache[repr(key)] = load()
    return cache[repr(key)]


def _is_table_file(name: str) -> bool:
    """A name ending like a file ``read_interactions`` reads (``.csv``, ``.tsv``, ``.parquet`` ...)."""
    suffixes = [x.lower() for x in Path(name).suffixes if x.lower() != ".gz"]
    return bool(suffixes) and suffixes[-1] in SUFFIX_FORMATS


def load_file(path: str | os.PathLike, split: str = "random", seed: int = 0, rating_threshold: float | None = 3.0,
              k_core: int = 10, dislike_threshold: float | None = None) -> RecData:
    """Your own interaction file (``--data.dataset=events.csv``): the ``DataSource`` of a CSV /
    TSV / Parquet file whose columns have the usual names (``formats.table.ALIASES``) with
    the protocol: ratings >= ``rating_threshold`` when the file has a rating / weight column
    (every row otherwise), iterative ``k_core``, vocab, ``split``. Repeated (user, item[,
    time]) rows keep the last. ``dislike_threshold``: as in ``load_dataset`` (needs a rating column)."""
    df = formats.read_interactions(path, columns="auto", dedupe="last")
    threshold = rating_threshold if "rating" in df.columns else None
    return _build(df, Path(path).name, split, seed, threshold, k_core, dislike_threshold=dislike_threshold)


def load_source_cached(src: DataSource, seed: int = 0) -> RecData:
    """``load_source``, shared inside ``shared_cache()`` like ``load_dataset``."""
    return _load_cached(("source", src.key(), seed), lambda: load_source(src, seed=seed))


def load_bibtex(root: str | os.PathLike | None = None, seed: int = 0, valid_frac: float = 0.1,
                bag_weighting: str = "binary") -> RecData:
    """Bibtex (159 labels) as retrieval, from ``bibtex/xc_{train,test}.txt(.gz)``
    (``load_documents`` for the protocol). PSP@k with the Extreme Classification
    Repository's A, B for it (its default 0.55 / 1.5)."""
    from recsys.data.formats import read_xc

    r = data_root(root)
    xtr, ytr = read_xc(_find(r, "bibtex", ["xc_train.txt.gz", "xc_train.txt"]))
    xte, yte = read_xc(_find(r, "bibtex", ["xc_test.txt.gz", "xc_test.txt"]))
    return load_documents("bibtex", (xtr, ytr), (xte, yte), seed=seed, valid_frac=valid_frac,
                          bag_weighting=bag_weighting, propensity_ab=(0.55, 1.5))


def load_mulan(name: str, root: str | os.PathLike | None = None, seed: int = 0, valid_frac: float = 0.1,
               bag_weighting: str = "binary", propensity_ab: tuple[float, float] = (0.55, 1.5)) -> RecData:
    """A Mulan multi-label dataset as retrieval, from the Mulan project's own files in
    ``NAME/``: ``NAME-train.arff(.gz)``, ``NAME-test.arff(.gz)`` and the label header
    ``NAME.xml`` (``formats.read_arff``); ``load_documents`` for the protocol."""
    r = data_root(root)
    labels = formats.read_mulan_labels(_find(r, name, [f"{name}.xml", f"{name}.xml.gz"]))
    tr = formats.read_arff(_find(r, name, [f"{name}-train.arff.gz", f"{name}-train.arff"]), labels)
    te = formats.read_arff(_find(r, name, [f"{name}-test.arff.gz", f"{name}-test.arff"]), labels)
    return load_documents(name, tr, te, seed=seed, valid_frac=valid_frac, bag_weighting=bag_weighting,
                          propensity_ab=propensity_ab)


def load_documents(name: str, train: tuple[sp.csr_matrix, sp.csr_matrix], test: tuple[sp.csr_matrix, sp.csr_matrix],
                   seed: int = 0, valid_frac: float = 0.1, bag_weighting: str = "binary",
                   propensity_ab: tuple[float, float] = (0.55, 1.5)) -> RecData:
    """A multi-label document dataset as retrieval: documents are queries (a bag of word
    features), labels are items.

    Args:
        name: the dataset's name.
        train / test: (features (R, F), labels (R, L)) CSR pairs of the official train and
            test documents.
        seed / valid_frac: a seeded share ``valid_frac`` of the train documents becomes the
            validation documents; the test documents are the test queries. Held-out
            documents have no train labels: they are described by their words only.
        bag_weighting: ``tfidf``: each word's value is its TF x IDF (scikit-learn's smoothed
            IDF over the train documents, no row normalisation: a weighted mean pools them);
            ``binary``: 1.
        propensity_ab: the A, B of the propensity model of PSP@k (Jain et al., KDD 2016).
    """
    (xtr, ytr), (xte, yte) = train, test
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise DataError(f"dataset {name!r}: train has {xtr.shape[1]} features / {ytr.shape[1]} labels, test "
                        f"{xte.shape[1]} / {yte.shape[1]}; they must agree. Fix: use the train and test files "
                        "of one dataset.")
    n_tr, n_te, L = xtr.shape[0], xte.shape[0], ytr.shape[1]
    is_valid = np.zeros(n_tr, dtype=bool)
    is_valid[np.random.default_rng(seed).permutation(n_tr)[: int(valid_frac * n_tr)]] = True
    empty = sp.csr_matrix((n_te, L), dtype=np.float32)
    ytr = sp.csr_matrix(ytr, dtype=np.float32)
    keep = sp.diags(~is_valid * 1.0).dot(ytr).tocsr()
    held = sp.diags(is_valid * 1.0).dot(ytr).tocsr()
    zeros_tr = sp.csr_matrix((n_tr, L), dtype=np.float32)
    train_m = binary_csr(sp.vstack([keep, empty]))
    valid = binary_csr(sp.vstack([held, empty]))
    test_m = binary_csr(sp.vstack([zeros_tr, sp.csr_matrix(yte, dtype=np.float32)]))
    bags = binary_csr(sp.vstack([xtr, xte]))
    if bag_weighting == "tfidf":
        from sklearn.feature_extraction.text import TfidfTransformer

        tf = TfidfTransformer(norm=None).fit(bags[np.flatnonzero(~is_valid)])  # the train documents
        bags = sp.csr_matrix(tf.transform(bags), dtype=np.float32)
        bags.sort_indices()
    elif bag_weighting != "binary":
        raise ConfigError(f"bag_weighting={bag_weighting!r}: need 'binary' or 'tfidf'. Fix: pick one of them.")
    user_vocab = Vocab(np.arange(n_tr + n_te), name="document")
    item_vocab = Vocab(np.arange(L), name="label")
    return RecData(name, train_m, valid, test_m, user_vocab, item_vocab, query_bags=bags,
                   propensity_ab=propensity_ab, bag_weighting=bag_weighting)
