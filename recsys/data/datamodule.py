"""InteractionDataModule: a dataset (by name, or built) served as train batches of (query,
positive item) pairs and evaluation queries (``recsys.data.batches``), plus its ``Schema``."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from recsys.data.batches import PairDataset, QueryDataset, batch_identity, pad_rows
from recsys.data.datasets import load_dataset, load_source_cached
from recsys.data.recdata import RecData, from_frames
from recsys.data.source import DataSource
from recsys.data.synthetic import SyntheticConfig
from recsys.errors import ConfigError
from recsys.schema import Schema


def make_schema(data: RecData) -> Schema:
    """Schema of a ``RecData``."""
    fi = None
    if data.item_features is not None:
        m = data.item_features.tocsr()
        fi = pad_rows(m.indptr, m.indices, np.arange(m.shape[0]), max(1, int(np.diff(m.indptr).max())),
                      pad=m.shape[1])
    return Schema(data.n_users, data.n_items, data.bag_size, data.user_feature_cards,
                  data.n_item_feature_values, fi, data.item_counts(), item_numeric=data.item_numeric,
                  user_numeric_dim=0 if data.user_numeric is None else int(data.user_numeric.shape[1]),
                  user_counts=np.diff(data.train.indptr).astype(np.int64),
                  item_feature_names=data.item_encoder.names if data.item_encoder else [],
                  user_feature_names=data.user_encoder.names if data.user_encoder else [])


class InteractionDataModule(L.LightningDataModule):
    """Loads a dataset and serves train / eval batches: a named one (``recsys.data.datasets``),
    the user's own files (``source``), or a ``RecData`` built in Python (``data``).

    Args:
        dataset: ``synthetic`` (embedded default), ``ml-100k``, ``ml-1m``, ``bibtex``, ``delicious``,
            ``gowalla``, or the path of a CSV / TSV / Parquet interaction file with the usual
            column names.
        source: your own files, filters and split (``recsys.data.source.DataSource``; YAML
            ``data.source``); replaces ``dataset`` and the protocol settings below.
        data: an already built ``RecData`` (Python only; e.g. ``RecData.from_frames``).
        root: data folder (default ``$RECSYS_DATA`` or ``~/.cache/recsys``).
        split: ``random`` (per-user 8:1:1), ``leave_last_out``, ``global_time`` / ``time``, ``users`` or
            ``items`` (``recsys.data.splits.make_split``; a ``source`` sets its own).
        seed: split seed (and batch-order seed).
        batch_size: training pairs per batch (B).
        eval_batch_size: queries per evaluation batch.
        max_history: H, ids per query bag in training (0 disables bags); each step draws
            H of the user's other train items, which also acts as input dropout.
        eval_max_history: ids per bag at evaluation; None = the whole train history.
        rating_threshold / k_core: the protocol's filtering (3.0 / 10).
        synthetic: generator settings for ``dataset: synthetic``.
        num_workers: DataLoader workers (0: batches are built in the main process).
        user_weight_power: beta >= 0; each epoch draws its pairs with replacement, a pair of a
            user with n train items in proportion to n^-beta (0: every pair once, shuffled;
            1: every user equally often). Pairs weigh users by their activity, ranking
            metrics average over users; beta trades one for the other. For multi-label
            documents, 1 is the "pick-all-labels, normalised" weighting (each document's labels
            share one unit of weight; Menon et al., NeurIPS 2019, "Multilabel reductions").
        bag_weighting: ``binary`` or ``tfidf``: the values of a document dataset's word bags
            (``tfidf``: TF x IDF over the train documents, carried as ``bag_w`` for
            ``QueryTower(bag_values=True)``). Only for datasets whose queries are documents.
        refit: train on train + validation (``RecData.with_valid_in_train``) and have no
            validation set: the second step of "choose on validation, then refit on all
            labelled rows". Run it with a fixed ``trainer.max_epochs`` (the validated run's
            best epoch + 1), ``trainer.limit_val_batches: 0`` and, with a ``prior_grid``,
            ``model.prior_weight`` set to the validated run's choice (``recsys compare
            --refit`` does all three).
        dislike_threshold: keep the explicit ratings and the pairs rated <= this as dislikes,
            split per user like the positives (``RecData.dislikes``): evaluation then reports
            ``disliked@k``, and a preference stage takes its explicit rejected items from the
            train part. The positives are unchanged. Rated datasets only (MovieLens, rated files).
        min_rating: train only on the positives rated >= this (``RecData.chosen``: the chosen
            items of a preference stage); needs ``dislike_threshold`` (which keeps the ratings).
            Bags, seen items and the known positives stay the whole train history.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        source: DataSource | None = None,
        data: RecData | None = None,
        root: str | None = None,
        split: str = "random",
        seed: int = 0,
        batch_size: int = 1024,
        eval_batch_size: int = 4096,
        max_history: int = 50,
        eval_max_history: int | None = None,
        rating_threshold: float | None = 3.0,
        k_core: int = 10,
        synthetic: SyntheticConfig | None = None,
        side_features: bool = True,
        num_workers: int = 0,
        user_weight_power: float = 0.0,
        bag_weighting: str = "binary",
        refit: bool = False,
        dislike_threshold: float | None = None,
        min_rating: float | None = None,
    ):
        super().__init__()
        if batch_size < 1 or max_history < 0:
            raise ConfigError(
                f"batch_size={batch_size}, max_history={max_history}: need batch_size >= 1 and "
                "max_history >= 0. Fix: e.g. batch_size=1024, max_history=50."
            )
        self.dataset, self.root, self.split, self.seed = dataset, root, split, seed
        self.batch_size, self.eval_batch_size, self.max_history = batch_size, eval_batch_size, max_history
        self.rating_threshold, self.k_core = rating_threshold, k_core
        self.synthetic, self.side_features, self.num_workers = synthetic, side_features, num_workers
        self.eval_max_history = eval_max_history
        if not user_weight_power >= 0:
            raise ConfigError(f"user_weight_power={user_weight_power}: need >= 0 (0 = every pair once per "
                              "epoch). Fix: e.g. user_weight_power=0.5.")
        self.user_weight_power = user_weight_power
        if bag_weighting not in ("binary", "tfidf"):
            raise ConfigError(f"bag_weighting={bag_weighting!r}: need 'binary' or 'tfidf'. Fix: pick one of them.")
        self.bag_weighting, self.refit = bag_weighting, refit
        if min_rating is not None and dislike_threshold is None and data is None:
            raise ConfigError(f"min_rating={min_rating} without dislike_threshold: the ratings are kept only when "
                              "dislikes are. Fix: set data.dislike_threshold (e.g. 2) as well.")
        if dislike_threshold is not None and source is not None:
            raise ConfigError(f"dislike_threshold={dislike_threshold} with data.source: dislikes are kept for named "
                              "datasets and interaction files (data.dataset: ml-1m or events.csv) only. Fix: pass the "
                              "rated file as data.dataset, or set dislike_threshold: null.")
        self.dislike_threshold, self.min_rating = dislike_threshold, min_rating
        self.source = source if source is None or isinstance(source, DataSource) else DataSource(**source)
        self._data: RecData | None = data
        if data is not None:
            self.dataset = data.name
        elif self.source is not None:
            self.dataset = self.source.label()

    @classmethod
    def from_data(cls, data: RecData, **kwargs) -> InteractionDataModule:
        """A data module serving an already built ``RecData`` (``kwargs``: the batching
        arguments of ``__init__``; the loading ones are not used); same as ``cls(data=data)``::

            dm = InteractionDataModule.from_data(RecData.from_frames(df, name="mine"), batch_size=512)
        """
        return cls(data=data, **kwargs)

    @classmethod
    def from_frame(cls, interactions, items=None, users=None, item_columns=None, user_columns=None,
                   split: str = "random", seed: int = 0, name: str = "frame", **kwargs) -> InteractionDataModule:
        """A data module over a pandas interaction frame (columns user, item[, time]; other names
        via ``recsys.data.formats.table.ALIASES``) and optional feature frames (raw ``items`` /
        ``users`` tables with their ``FeatureColumns``); ``kwargs``: batching arguments::

            dm = InteractionDataModule.from_frame(events, items=catalogue_df,
                                                  item_columns=FeatureColumns(categorical=["brand"]))
        """
        from recsys.data.features import feature_frame
        from recsys.data.formats.table import guess_columns
        from recsys.data.validation import validate_interactions

        cols = guess_columns(name, [str(c) for c in interactions.columns])
        df = interactions.rename(columns={v: k for k, v in cols.items() if v is not None})
        df = validate_interactions(df, name, dedupe="last").drop(columns=["rating"], errors="ignore")
        if items is not None:
            items, item_columns = feature_frame(items, "item", item_columns, f"{name} items")
        if users is not None:
            users, user_columns = feature_frame(users, "user", user_columns, f"{name} users")
        data = from_frames(df, name=name, split=split, seed=seed, items=items, item_columns=item_columns,
                           users=users, user_columns=user_columns)
        return cls(data=data, seed=seed, **kwargs)

    @property
    def data(self) -> RecData:
        """The loaded ``RecData`` (loaded on first access)."""
        if self._data is None and self.source is not None:
            self._data = load_source_cached(self.source, seed=self.seed)
        if self._data is None:
            self._data = load_dataset(
                self.dataset, self.root, split=self.split, seed=self.seed,
                rating_threshold=self.rating_threshold, k_core=self.k_core,
                synthetic=self.synthetic, side_features=self.side_features, bag_weighting=self.bag_weighting,
                dislike_threshold=self.dislike_threshold,
            )
        if self.refit and self._data.valid.nnz:
            self._data = self._data.with_valid_in_train()
        return self._data

    @property
    def schema(self) -> Schema:
        """Sizes for the model (linked by the CLI on instantiation)."""
        return make_schema(self.data)

    def eval_users(self, split: str) -> np.ndarray:
        """Queries with at least one held-out item in ``split`` (``RecData.eval_users``)."""
        return self.data.eval_users(split)

    def train_dataloader(self) -> DataLoader:
        """Shuffled pairs; the order of epoch e is a function of (seed, e) only, this process's
        share of it under DDP, and the loader resumes mid-epoch (``recsys.model.distributed``)."""
        from recsys.data.sampler import EpochSampler, ResumableLoader

        trainer = getattr(self, "trainer", None)  # resumed fit: start at the restored epoch
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        ds = PairDataset(self.data, self.max_history, self.seed, min_rating=self.min_rating)
        g = torch.Generator().manual_seed(self.seed)  # worker seeds: never the global RNG
        weights = None
        if self.user_weight_power > 0:  # (nnz,) n_u ** -beta for every pair of user u
            n_u = np.diff(self.data.train.indptr).astype(np.float64)
            weights = torch.from_numpy(n_u[ds.users] ** -self.user_weight_power)
        sampler = EpochSampler(ds, self.seed, epoch, weights=weights)
        return ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler,
                               generator=g, collate_fn=batch_identity, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Batches of evaluation queries for ``split`` ('valid' or 'test')."""
        return self.query_dataloader(self.eval_users(split))

    def query_dataloader(self, users: np.ndarray) -> DataLoader:
        """Batches of the evaluation inputs (whole histories, ``eval_max_history``) of ``users``."""
        H = self.eval_max_history
        if H is None:  # the longest bag among all queries
            m = self.data.query_bags if self.data.query_bags is not None else self.data.history
            H = int(np.diff(m.indptr).max()) if self.max_history > 0 else 0
        ds = QueryDataset(self.data, np.asarray(users), H)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=batch_identity)

    def val_dataloader(self) -> DataLoader:
        if self.refit:
            raise ConfigError("data.refit=true trains on the validation rows, so there is nothing left to "
                              "validate on. Fix: add --trainer.limit_val_batches=0 and a fixed "
                              "--trainer.max_epochs (the validated run's best epoch + 1).")
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
