"""TwoTowerModule: injected towers + head + optimizers; full-catalogue validation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from recsys.errors import ConfigError, RecsysError
from recsys.eval.evaluate import EvalResult, embed_queries, evaluate_beam, evaluate_embeddings, evaluate_grid
from recsys.eval.metrics import repetition
from recsys.model.corrections import log_frequency
from recsys.model.heads.base import Head, KnownPositives
from recsys.model.heads.inbatch import InBatchSoftmax
from recsys.model.optim import MultiOptimizer, SparseAdam
from recsys.model.preference import Reference, collapse_diagnostics, reference_state
from recsys.model.rating import fit_rating_mf
from recsys.model.towers import ItemTower, QueryTower
from recsys.schema import Schema

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
SchedulerCallable = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def _adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def _sparse_adam(params):
    return SparseAdam(params, lr=1e-2)  # torch.optim.SparseAdam, faster step (recsys.model.optim)


def check_head_sizes(head: Head, n_items: int) -> None:
    """``ConfigError`` before training unless every count the head declares
    (``Head.size_checks``: negatives sampled, uniform negatives, hard negatives mined)
    satisfies 1 <= value < N, the catalogue size."""
    name = type(head).__name__
    for arg, value, bound, fix in head.size_checks(n_items):
        if not (isinstance(value, int) and 1 <= value < bound):
            raise ConfigError(
                f"{name} {arg}={value}: need 1 <= {arg} < N={bound} (the catalogue size) so there are "
                f"negatives to choose from. Fix: {arg} <= {bound - 1}, or {fix}."
            )


class TwoTowerModule(L.LightningModule):
    """A query tower, an item tower and a loss head, all injected (YAML ``class_path``).

    Args:
        schema: data sizes; the CLI links it from the data module (``data.schema``).
        query_tower: ``QueryTower`` class or a partial (``init_args`` without ``schema``).
        item_tower: ``ItemTower`` class or partial.
        head: one of ``recsys.model.heads``: FullSoftmax, MultiLabelSigmoid, SampledSoftmax,
            InBatchSoftmax, HardNegativeSoftmax.
        dense_optimizer: optimizer for dense parameters (MLPs, temperature, biases);
            default Adam(lr=1e-3).
        sparse_optimizer: optimizer for sparse id tables; default SparseAdam(lr=1e-2).
        lr_scheduler: optional epoch-wise schedule over both optimizers (they share their
            param groups through ``MultiOptimizer``), e.g. ``torch.optim.lr_scheduler.ExponentialLR``
            with ``gamma: 0.7``; its state is checkpointed by Lightning.
        eval_ks: cut-offs of the validation / test metrics.
        eval_index: retriever for validation / test (``exact`` by default; ``ivf`` / ``hnsw``;
            ``beam`` for a head with an item tree, ``TreeSoftmax``: its own beam search of
            width ``eval_beam``, so that the checkpoint is chosen by the ranking it serves).
        eval_beam: beam width of ``eval_index: beam``.
        prior_grid: popularity prior at retrieval (off when None). Retrieval ranks by
            ``logit_j + w * log p_j``, p_j the item's add-one smoothed train frequency: the
            model's distribution tilted by p_j^w. Training is unchanged; each validation
            scores every w of the grid (with the exact index from one scoring pass,
            ``recsys.eval.prior_grid``), keeps the best validation NDCG@k (smallest k) and
            stores it in the checkpoint (``prior_weight``), which test, ``evaluate``,
            ``export`` and ``recommend`` then use. This is the logit adjustment of Menon et
            al. (ICLR 2021, "Long-tail learning via logit adjustment") with the sign for
            top-k accuracy rather than balanced error: softmax training (and the logQ
            correction of sampled / in-batch heads, Yi et al. 2019) fits p(item | user),
            while top-k metrics reward popular items more than likelihood does. Needs
            ``item_bias`` on both towers (w * T * log p_j is added to the bias coordinate,
            so FAISS serves it unchanged). Costs len(grid) validation scorings per epoch.
        prior_weight: w used until a validation chooses one: the value a refit without
            validation (``data.refit``) serves, copied from the validated run.
        reference: a ``recsys fit`` checkpoint (``PATH.ckpt``) of the same data and towers, for
            a head that trains against a frozen reference (``PreferenceHead``). When fitting
            starts, the policy's towers (and its prior weight) are loaded from it and a frozen
            copy of its query tower with its item embeddings, computed once, becomes the
            reference (``recsys.model.preference.Reference``, saved in this model's
            checkpoints, so they evaluate without the file). Validation then also logs the
            collapse diagnostics (``collapse_diagnostics``, ``repetition@10``).
        rating_grid: the explicit-rating correction at retrieval (towers with ``rating_dim`` k >
            0; off when None): when fitting starts, a biased MF of the train ratings (the
            positives' and the train dislikes', ``RecData.train_rating_matrix``) is fitted by
            ALS (``recsys.model.rating.fit_rating_mf``, k factors, ``rating_reg``,
            ``rating_sweeps``) into the towers' rating buffers, and retrieval ranks by
            ``logit + g * (p_u . q_i + b_i)``: the predicted rating, in rating units per logit
            unit. Training is unchanged. Each validation scores every g of the grid (and 0),
            and keeps the one with the lowest ``disliked@k`` (smallest k) whose NDCG@k is at
            least (1 - ``rating_tolerance``) of g = 0's, or with a ``reference`` of the
            reference's own (``choose_rating``): the share of explicit dislikes among the top-k
            cut as far as the NDCG budget allows. Stored in the checkpoint
            (``QueryTower.rating_weight`` = g * T), so test, ``evaluate``, ``export`` and
            ``recommend`` serve it. Needs data with ratings (``data.dislike_threshold``).
        rating_tolerance: the relative validation NDCG@k the rating correction may cost.
        rating_reg, rating_sweeps: the ALS ridge weight per rating and sweeps.
        reference_optimizer: also start the optimizer from the reference checkpoint's state (its
            Adam moments), with this config's learning rates: a fresh Adam's first steps move
            every coordinate by about lr whatever its gradient, which on a converged model costs
            validation NDCG before the stage's own signal arrives. Ignored (with a warning)
            when the parameter groups do not match.
    """

    def __init__(
        self,
        schema: Any = None,
        query_tower: Callable[[Schema], QueryTower] = QueryTower,
        item_tower: Callable[[Schema], ItemTower] = ItemTower,
        head: Head | None = None,
        dense_optimizer: OptimizerCallable | None = None,
        sparse_optimizer: OptimizerCallable | None = None,
        lr_scheduler: SchedulerCallable | None = None,
        eval_ks: list[int] | None = None,
        eval_index: str = "exact",
        eval_beam: int = 16,
        prior_grid: list[float] | None = None,
        prior_weight: float = 0.0,
        reference: str | None = None,
        reference_optimizer: bool = True,
        rating_grid: list[float] | None = None,
        rating_tolerance: float = 0.01,
        rating_reg: float = 0.05,
        rating_sweeps: int = 10,
    ):
        super().__init__()
        if schema is None:
            raise ConfigError(
                "TwoTowerModule needs schema=data.schema (the data sizes). Fix: run through "
                "`recsys fit`, which links it, or pass schema=datamodule.schema."
            )
        self.schema = schema
        self.query_tower = query_tower(schema)
        self.item_tower = item_tower(schema)
        qt, it = self.query_tower, self.item_tower
        if (qt.dim, qt.item_bias, qt.rating_dim) != (it.dim, it.item_bias, it.rating_dim):
            raise ConfigError(
                f"query tower dim={qt.dim}, item_bias={qt.item_bias}, rating_dim={qt.rating_dim} != item tower "
                f"dim={it.dim}, item_bias={it.item_bias}, rating_dim={it.rating_dim}: the score is their inner "
                "product, so both must output the same D (+ 1 for the item bias, + k + 1 for the rating factors). "
                "Fix: set the same dim, item_bias and rating_dim in both towers."
            )
        bad_tolerance = rating_grid is not None and not 0 <= rating_tolerance < 1
        if (rating_grid is not None) != bool(qt.rating_dim) or bad_tolerance:
            raise ConfigError(
                f"rating_grid={rating_grid} with rating_dim={qt.rating_dim}, rating_tolerance={rating_tolerance}: "
                "the rating correction needs both, the grid of weights and the towers' rating factors, and a "
                "tolerance in [0, 1). Fix: e.g. rating_grid: [0.5, 0.75, 1.0] with rating_dim: 32 on both towers "
                "and rating_tolerance: 0.01, or rating_grid: null and rating_dim: 0."
            )
        self.rating_grid = None if rating_grid is None else sorted({0.0, *(float(g) for g in rating_grid)})
        self.rating_tolerance, self.rating_reg, self.rating_sweeps = rating_tolerance, rating_reg, rating_sweeps
        self.head = head if head is not None else InBatchSoftmax()
        check_head_sizes(self.head, schema.n_items)
        needs = bool(getattr(self.head, "needs_reference", False))
        if needs != (reference is not None):
            raise ConfigError(
                f"model.reference={reference!r} with head {type(self.head).__name__}: "
                + ("this head trains against a frozen reference and needs a `recsys fit` checkpoint. Fix: set "
                   "model.reference: runs/.../checkpoints/best.ckpt (e.g. an in-batch fit of the same data)."
                   if needs else "only a head that trains against a reference (PreferenceHead) uses one. Fix: "
                   "drop model.reference, or use model.head PreferenceHead.")
            )
        self.reference_path, self.reference_optimizer = reference, reference_optimizer
        self._reference_optim_state: list | None = None
        self.reference = None
        if reference is not None:  # filled from the file when fitting starts (load_reference)
            self.reference = Reference(query_tower(schema), schema.n_items, it.out_dim)
        self.dense_optimizer = dense_optimizer or _adam
        self.sparse_optimizer = sparse_optimizer or _sparse_adam
        self.lr_scheduler = lr_scheduler
        self.eval_ks = list(eval_ks or [10, 20])
        if max(self.eval_ks) > schema.n_items:
            raise ConfigError(
                f"eval_ks={self.eval_ks}: k={max(self.eval_ks)} exceeds the catalogue size "
                f"N={schema.n_items}. Fix: choose k <= {schema.n_items}."
            )
        if eval_index == "beam" and not hasattr(self.head, "beam_topk"):
            raise ConfigError(
                f"eval_index='beam' with head {type(self.head).__name__}: beam search needs a head with an item "
                "tree. Fix: use model.head TreeSoftmax, or eval_index exact / ivf / hnsw."
            )
        if eval_beam < 1:
            raise ConfigError(f"eval_beam={eval_beam}: need a beam width >= 1. Fix: e.g. eval_beam: 16.")
        self.eval_index, self.eval_beam = eval_index, int(eval_beam)
        self.prior_grid = None if prior_grid is None else sorted(float(w) for w in prior_grid)
        if self.prior_grid is not None:
            if not self.prior_grid or not it.item_bias:
                raise ConfigError(
                    f"prior_grid={prior_grid} with item_bias={it.item_bias}: the popularity prior needs "
                    "a non-empty grid of weights and item_bias: true on both towers (it is added to "
                    "the bias coordinate). Fix: e.g. prior_grid: [0, 0.1, 0.2, 0.3] and item_bias: true, "
                    "or prior_grid: null."
                )
            # chosen on validation; until then (or in a refit, which has none) the given start value
            self.register_buffer("prior_weight", torch.tensor(float(prior_weight)))
            self.register_buffer("log_prior", torch.zeros(schema.n_items))  # (N,) log p_j, set by bind
        self.recsys_config: str | None = None  # resolved YAML, set by the CLI
        self._eval_buf: list = []
        self._bound = False
        self._epoch_loss, self._epoch_examples = torch.zeros(()), 0  # train/loss_epoch (training_step)

    # ---- setup -----------------------------------------------------------------------
    def bind(self, data) -> None:
        """Give the head the train positives and counts (idempotent)."""
        if not self._bound:
            self.head.bind(self.schema, KnownPositives(data.train))
            self.head.to(self.device)
            if self.prior_grid is not None:
                self.log_prior.copy_(torch.from_numpy(log_frequency(data.item_counts())))  # (N,)
            self._bound = True

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            if stage == "fit" and self.reference is not None:
                self.load_reference(dm)
            if stage == "fit" and self.rating_grid is not None:
                self.fit_rating(dm.data)
            self.bind(dm.data)

    @torch.no_grad()
    def fit_rating(self, data) -> None:
        """Fit the explicit-rating factors of the towers (``rating_grid``) on ``data``'s train
        ratings; the weight stays as it is until a validation chooses one. A resumed fit then
        restores its own (Lightning loads the checkpoint after ``setup``)."""
        f = fit_rating_mf(data.train_rating_matrix("rating_grid"), self.query_tower.rating_dim, self.rating_reg,
                          self.rating_sweeps)
        self.query_tower.rating_user.copy_(torch.from_numpy(f.user))  # (U, k)
        self.item_tower.rating_item.copy_(torch.from_numpy(np.hstack([f.item, f.item_bias[:, None]])))  # (N, k + 1)

    @torch.no_grad()
    def load_reference(self, datamodule) -> None:
        """Start the policy from ``model.reference`` and set the frozen reference (its query tower
        and item embeddings), then give the head the reference's embeddings of every user and
        item (``PreferenceHead.prepare``: the mined rejected pool). A resumed fit then restores
        its own weights over these (Lightning loads the checkpoint after ``setup``)."""
        data = datamodule.data
        sd, optim = reference_state(self.reference_path, data.item_vocab.fingerprint(), data.user_vocab.fingerprint())
        self._reference_optim_state = optim if self.reference_optimizer else None
        for name, tower in (("query_tower", self.query_tower), ("item_tower", self.item_tower)):
            part = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
            for key in ("rating_user", "rating_item", "rating_weight"):  # the stage's own (fit_rating)
                if key in tower.state_dict() and key not in part:
                    part[key] = tower.state_dict()[key]
            try:
                tower.load_state_dict(part, strict=True)
            except RuntimeError as e:
                raise ConfigError(f"model.reference={self.reference_path!r}: its {name} does not fit this model's "
                                  f"({str(e).splitlines()[0]}). Fix: compose the stage with the reference's own base "
                                  "config (same towers, dim, features).") from e
        if self.prior_grid is not None and "prior_weight" in sd:
            self.prior_weight.copy_(sd["prior_weight"])
        was = self.training
        self.eval()
        self.reference.load(self.query_tower.state_dict(), self.item_tower.embed_all())
        users, xq = embed_queries(self.reference.query_tower,
                                  datamodule.query_dataloader(np.arange(data.n_users)))
        self.train(was)
        order = np.argsort(users)
        self.head.prepare(data, xq[order], self.reference.items.float().cpu().numpy())

    def on_train_start(self) -> None:
        """A fresh preference stage: the reference's optimizer state with this run's learning
        rates (``reference_optimizer``); a resumed one keeps its own."""
        state, self._reference_optim_state = self._reference_optim_state, None
        if not state or self.global_step > 0:
            return
        opt = self.trainer.optimizers[0]
        mine = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        try:
            opt.load_state_dict(state[0])
        except (ValueError, KeyError, RuntimeError) as e:
            warnings.warn(f"model.reference_optimizer: the reference's optimizer state does not fit this model's "
                          f"parameters ({e}); the stage starts with a fresh optimizer.", stacklevel=2)
            return
        for g, settings in zip(opt.param_groups, mine):  # keep this run's lr and settings
            g.update(settings)

    def configure_callbacks(self):
        return self.head.callbacks()

    def configure_optimizers(self):
        sparse_ids = {
            id(p) for m in self.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for p in m.parameters()
        }
        sparse = [p for p in self.parameters() if id(p) in sparse_ids and p.requires_grad]
        dense = [p for p in self.parameters() if id(p) not in sparse_ids and p.requires_grad]
        opts = ([self.dense_optimizer(dense)] if dense else []) + (
            [self.sparse_optimizer(sparse)] if sparse else [])
        opt = MultiOptimizer(opts)
        if self.lr_scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler(opt), "interval": "epoch"}}

    # ---- training --------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Query embeddings (B, D)."""
        return self.query_tower(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        q = self.query_tower(batch)  # (B, D)
        extra = {} if self.reference is None else {"reference": self.reference}
        out = self.head(q, batch, self.item_tower, **extra)
        bad = not bool(torch.isfinite(out.loss))
        if self.trainer.world_size > 1:  # stop every process together (no rank left in a collective)
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            where = "" if self.trainer.world_size == 1 else f" on rank {self.global_rank} (non-finite on some rank)"
            raise RecsysError(
                f"loss is {out.loss.item()}{where} at step {self.global_step} (head "
                f"{type(self.head).__name__}, temperature {float(self.head.temperature()):.4g}): "
                "training diverged. Fix: lower the learning rates or raise the temperature."
            )
        # train/loss_epoch: the example-weighted mean of the epoch, accumulated here and logged at
        # the epoch's end (a Lightning self.log on every step took ~2 ms a step under cProfile)
        self._epoch_loss = self._epoch_loss + out.loss.detach() * len(q)
        self._epoch_examples += len(q)
        # step values only on the steps Lightning writes (after batch k when (k + 1) % n == 0),
        # so the diagnostics are those of the step they are written at
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/loss_step", out.loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(q),
                     sync_dist=True)  # DDP: the mean over processes = the loss of the global batch
            self.log_dict({f"train/{k}": float(v) for k, v in out.logs.items()},
                          on_step=True, on_epoch=False, batch_size=len(q))
        return out.loss

    def on_train_epoch_start(self) -> None:
        self._epoch_loss, self._epoch_examples = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_examples:  # DDP: the mean of the processes' means (equal shares of the epoch)
            self.log("train/loss_epoch", self._epoch_loss / self._epoch_examples, on_step=False, on_epoch=True,
                     sync_dist=True)

    # ---- evaluation ------------------------------------------------------------------
    @property
    def served_prior_weight(self) -> float | None:
        """The popularity-prior weight retrieval uses (chosen on validation), None without ``prior_grid``."""
        return None if self.prior_grid is None else float(self.prior_weight)

    @torch.no_grad()
    def item_embeddings(self, prior_weight: float | None = None) -> torch.Tensor:
        """(N, D) catalogue embeddings for retrieval (evaluation, export, recommend).

        The item tower's output, with ``prior_weight`` (default: the stored one) times
        T * log p_j added to the bias coordinate when ``prior_grid`` is set. Training and
        hard-negative mining use the item tower directly, without the prior.
        """
        w = self.served_prior_weight if prior_weight is None else prior_weight
        return self._with_prior(self.item_tower.embed_all(), w)

    def beam_leaf_prior(self, prior_weight: float | None = None) -> np.ndarray | None:
        """(N,) w log p_j, the prior that ``item_embeddings(prior_weight)`` carries in its bias
        coordinate, in the tree's log-probability units (default w: the stored one), for a
        TreeSoftmax's beam search (``BeamIndex.leaf_prior``); None without a prior."""
        w = self.served_prior_weight if prior_weight is None else prior_weight
        if not w or self.prior_grid is None:
            return None
        return (w * self.log_prior).float().cpu().numpy()

    def _prior_bias(self) -> torch.Tensor:
        """(N,) T * log p_j: the popularity prior of one unit of weight, in logit units."""
        return float(self.head.score_temperature()) * self.log_prior

    def _with_prior(self, xb: torch.Tensor, w: float | None) -> torch.Tensor:
        """``xb`` (N, D) with w * T * log p_j added to its last (bias) coordinate (a copy)."""
        if not w or self.prior_grid is None:
            return xb
        xb = xb.clone()
        xb[:, -1] += w * self._prior_bias().to(xb)
        return xb

    def on_validation_epoch_start(self) -> None:
        self._eval_buf = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        q = self.query_tower(batch)
        if self.reference is not None:  # the reference's embedding beside it (collapse diagnostics)
            q = torch.cat([q, self.reference.query(batch)], dim=1)
        self._eval_buf.append((batch["user"], q))

    def on_validation_epoch_end(self) -> None:
        self._log_eval("valid", "val")

    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", "test")

    def _log_eval(self, split: str, prefix: str) -> None:
        if not self._eval_buf:
            return
        users = torch.cat([u for u, _ in self._eval_buf])
        xq = torch.cat([q for _, q in self._eval_buf]).float()
        self._eval_buf = []
        if self.trainer.world_size > 1:  # every rank scores the gathered queries
            users = self.all_gather(users).reshape(-1)
            xq = self.all_gather(xq).reshape(-1, xq.shape[-1])
        users_np, first = np.unique(users.cpu().numpy(), return_index=True)
        xq_np = xq.cpu().numpy()[first]
        xq_ref = None
        if self.reference is not None:  # (Q, 2D): the policy's then the reference's embeddings
            xq_np, xq_ref = np.split(xq_np, 2, axis=1)
        choose = split == "valid" and self.prior_grid is not None  # choose the prior on validation
        data = self.trainer.datamodule.data
        if split == "valid" and self.rating_grid is not None:  # choose the rating weight (and prior per weight)
            g, xq_np, res, w = self.choose_rating(users_np, xq_np, data, split, choose, xq_ref)
            self.query_tower.rating_weight.fill_(g * float(self.head.score_temperature()))
            self.log(f"{prefix}/rating_weight", g, sync_dist=True)
        else:
            res, w = self.score_queries(users_np, xq_np, data, split, choose)
        if choose:
            self.prior_weight.fill_(w)
            self.log(f"{prefix}/prior_weight", w, sync_dist=True)
        main = f"{prefix}/ndcg@{min(self.eval_ks)}"
        vals = {f"{prefix}/{k}": v for k, v in res.metrics.items()
                if isinstance(v, float) and math.isfinite(v)}
        diag = {} if xq_ref is None else self.preference_diagnostics(self.trainer.datamodule, split, res.I,
                                                                     (users_np, xq_np, xq_ref))
        vals.update({f"{prefix}/{k}": v for k, v in diag.items() if math.isfinite(v)})
        self.log(main, vals.pop(main), prog_bar=True, sync_dist=True)  # equal on every rank already
        self.log_dict(vals, sync_dist=True)
        self.last_eval = {**res.metrics, **diag}

    def with_rating(self, users: np.ndarray, xq: np.ndarray, g: float) -> np.ndarray:
        """``xq`` (Q, out_dim) of known ``users`` (Q,) with the rating block at weight g (logit
        units): [g T p_u, g T] in its last k + 1 coordinates."""
        k, gt = self.query_tower.rating_dim, g * float(self.head.score_temperature())
        out = np.array(xq, dtype=np.float32, copy=True)
        out[:, -k - 1:-1] = gt * self.query_tower.rating_user[torch.as_tensor(users)].float().cpu().numpy()
        out[:, -1] = gt
        return out

    @torch.no_grad()
    def choose_rating(self, users: np.ndarray, xq: np.ndarray, data, split: str, choose_prior: bool,
                      xq_ref: np.ndarray | None = None) -> tuple[float, np.ndarray, EvalResult, float | None]:
        """The rating weight g of ``rating_grid`` (0 included) with the lowest disliked@k (smallest
        k; the first of ties) among those whose NDCG@k is at least (1 - ``rating_tolerance``) of
        the baseline's: g = 0's, or with the reference's queries ``xq_ref`` (a preference
        stage) the reference's own (its item embeddings, the prior chosen the same way), so
        that the stage and the correction together cost at most the tolerance. Each g is scored
        with its own prior choice; when none reaches the floor, the g of the best NDCG@k.
        Returns g, the queries at g, the result and the prior weight."""
        k = min(self.eval_ks)
        xb = self.item_tower.embed_all()  # (N, D), once for every weight
        runs = []
        for g in self.rating_grid:
            xq_g = self.with_rating(users, xq, g)
            res, w = self.score_queries(users, xq_g, data, split, choose_prior, items=xb)
            runs.append((g, xq_g, res, w))
        if f"disliked@{k}" not in runs[0][2].metrics:
            raise ConfigError(f"rating_grid needs disliked@{k} on {split}, which needs the data's held-out dislikes. "
                              "Fix: set data.dislike_threshold (e.g. 2), or rating_grid: null.")
        base = runs[0][2]  # g = 0
        if xq_ref is not None:
            base, _ = self.score_queries(users, xq_ref, data, split, choose_prior, items=self.reference.items)
        floor = (1.0 - self.rating_tolerance) * base.metrics[f"ndcg@{k}"]
        ok = [r for r in runs if r[2].metrics[f"ndcg@{k}"] >= floor]
        if not ok:
            return max(runs, key=lambda r: r[2].metrics[f"ndcg@{k}"])
        return min(ok, key=lambda r: r[2].metrics[f"disliked@{k}"])

    @torch.no_grad()
    def score_queries(self, users: np.ndarray, xq: np.ndarray, data, split: str,
                      choose_prior: bool = False, items: torch.Tensor | None = None) -> tuple[EvalResult, float | None]:
        """Full-catalogue metrics on ``split`` of the query embeddings ``xq`` (Q, D) of
        ``users`` (Q,) against the item tower (or the given ``items`` (N, D), e.g. the
        reference's), seen items excluded (``eval_index``, ``eval_ks``).

        ``choose_prior`` (with ``prior_grid``): every weight of the grid, the best on
        NDCG@min(eval_ks), the first of ties (the exact index scores once for the whole grid,
        ``evaluate_grid``; any other scores each weight). Otherwise the served weight. Returns
        the result and the weight used; nothing is stored (the caller keeps the weight).
        """
        xb = (self.item_tower.embed_all() if items is None else items).float()  # (N, D), once for every prior weight
        ks = tuple(self.eval_ks)
        if choose_prior and self.prior_grid is not None and self.eval_index == "exact":
            bias = self._prior_bias().float().cpu().numpy()  # (N,) added at weight w as w * bias
            i, res, _ = evaluate_grid(xq, users, xb.cpu().numpy(), bias, self.prior_grid, data, split, ks)
            return res, self.prior_grid[i]

        def run(w: float | None) -> EvalResult:
            xb_w = self._with_prior(xb, w).float().cpu().numpy()
            if self.eval_index == "beam":  # the tree's own retrieval
                return evaluate_beam(self.head, xq, users, xb_w, data, split, ks, beam=self.eval_beam,
                                     leaf_prior=self.beam_leaf_prior(w))
            return evaluate_embeddings(xq, users, xb_w, data, split, ks, self.eval_index)

        if choose_prior and self.prior_grid is not None:
            key = f"ndcg@{min(ks)}"
            w, res = max(((w, run(w)) for w in self.prior_grid), key=lambda r: r[1].metrics[key])  # first of ties
            return res, w
        return run(self.served_prior_weight), self.served_prior_weight

    @torch.no_grad()
    def preference_diagnostics(self, datamodule, split: str, I=None, queries=None) -> dict:
        """The collapse diagnostics of a model with a reference on ``split``'s queries
        (``collapse_diagnostics``): the chosen margins on held-out chosen items (rated >=
        ``data.min_rating``, else every held-out item) and the KL to the reference over the top
        100; with the served top-k ``I`` (Q, k) of the same queries, ``repetition@10``.
        ``queries``: (users (Q,), xq, xq_ref) already embedded (validation); else embedded here.
        The margins and the KL are the policy's own (towers without the rating correction of
        ``rating_grid``, which is added at retrieval and is no part of what the stage trains);
        repetition is of the served top-k."""
        data = datamodule.data
        if queries is None:
            was = self.training
            self.eval()
            loader = datamodule.eval_dataloader(split)
            users, xq = embed_queries(self.query_tower, loader)
            _, xq_ref = embed_queries(self.reference.query_tower, loader)
            self.train(was)
        else:
            users, xq, xq_ref = queries
        if self.rating_grid is not None:  # the policy against the reference: the retrieval-time correction left out
            xq = self.with_rating(users, xq, 0.0)
        truth = data.truth(split)[users]
        min_rating = getattr(datamodule, "min_rating", None)
        if min_rating is not None and data.ratings is not None:
            truth = truth.multiply(data.ratings[users] >= min_rating).tocsr()
        out = collapse_diagnostics(xq, xq_ref, self.item_tower.embed_all().float().cpu().numpy(),
                                   self.reference.items.float().cpu().numpy(), float(self.head.temperature()), truth,
                                   data.seen(split)[users])
        if I is not None and I.shape[1] >= 10:
            out["repetition@10"] = repetition(I, 10)
        return out

    # ---- checkpoint extras -------------------------------------------------------------
    def upgrade_checkpoint(self, checkpoint: dict) -> dict:
        """A checkpoint written before the miner kept its index in the model state: its
        ``HardNegativeIndexState`` callback state (the same dict) becomes the miner's extra
        state, so old hard-negative checkpoints load, resume and evaluate."""
        sd = checkpoint.get("state_dict") or {}
        legacy = next((v for k, v in (checkpoint.get("callbacks") or {}).items()
                       if str(k).startswith("HardNegativeIndexState")), None)
        for key in self.state_dict():
            if key.endswith("miner._extra_state") and key not in sd:
                sd[key] = dict(legacy or {})
        return checkpoint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.upgrade_checkpoint(checkpoint)


    def on_save_checkpoint(self, checkpoint: dict) -> None:
        extra = {"config": self.recsys_config}
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            d = dm.data
            extra.update(dataset=d.name, user_vocab=d.user_vocab.to_state(),
                         item_vocab=d.item_vocab.to_state(),
                         item_fingerprint=d.item_vocab.fingerprint())
        checkpoint["recsys"] = extra
