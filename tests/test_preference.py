"""Preference fine-tuning: the DPO / S-DPO loss and its baselines, the masks, the rejected
pools, the dislike data and metrics, and a stage trained from a reference checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recsys.data import InteractionDataModule
from recsys.data.recdata import from_frames, with_ratings
from recsys.errors import ConfigError, DataError
from recsys.eval.metrics import disliked_metrics, repetition, topk_kl
from recsys.model.heads.base import KnownPositives
from recsys.model.preference import (
    RejectedPools,
    bpr_loss,
    dpo_loss,
    dpo_positive_penalty,
    mine_top,
    unlikelihood_loss,
)
from tests.conftest import REPO, need


# ---- the losses ------------------------------------------------------------------------
def test_dpo_with_one_rejected_item_is_the_bradley_terry_likelihood():
    s_w, s_ref_w = torch.tensor([2.0]), torch.tensor([1.0])
    s_l, s_ref_l = torch.tensor([[1.5]]), torch.tensor([[1.0]])
    loss, rows = dpo_loss(s_w, s_ref_w, s_l, s_ref_l, torch.zeros(1, 1, dtype=torch.bool), beta=0.5)
    # -log sigmoid(beta * ((2 - 1) - (1.5 - 1)))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 0.5))), rel=1e-6)
    assert rows.tolist() == [True]


def test_dpo_ignores_each_users_log_partition():
    """Adding any per-user constant to the policy's and the reference's scores (their log Z)
    leaves the loss unchanged: only score differences between the user's items enter."""
    g = torch.Generator().manual_seed(0)
    s_w, s_ref_w = torch.randn(4, generator=g), torch.randn(4, generator=g)
    s_l, s_ref_l = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    none = torch.zeros(4, 3, dtype=torch.bool)
    c, c_ref = torch.randn(4, generator=g) * 5, torch.randn(4, generator=g) * 5
    a, _ = dpo_loss(s_w, s_ref_w, s_l, s_ref_l, none, 0.7)
    b, _ = dpo_loss(s_w + c, s_ref_w + c_ref, s_l + c[:, None], s_ref_l + c_ref[:, None], none, 0.7)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_masked_rejected_items_leave_the_loss_and_a_row_without_any_is_skipped():
    s_w, s_ref_w = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.0])
    s_l, s_ref_l = torch.tensor([[0.3, 9.0], [0.2, 0.1]]), torch.zeros(2, 2)
    keep_all = torch.zeros(2, 2, dtype=torch.bool)
    mask = torch.tensor([[False, True], [True, True]])
    full, _ = dpo_loss(s_w, s_ref_w, s_l, s_ref_l, keep_all, 1.0)
    masked, rows = dpo_loss(s_w, s_ref_w, s_l, s_ref_l, mask, 1.0)
    alone, _ = dpo_loss(s_w[:1], s_ref_w[:1], s_l[:1, :1], s_ref_l[:1, :1], keep_all[:1, :1], 1.0)
    assert rows.tolist() == [True, False]
    assert masked.item() == pytest.approx(alone.item()) and masked.item() != pytest.approx(full.item())


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected_score():
    s_w = torch.tensor([0.0], requires_grad=True)
    s_l = torch.tensor([[0.0]], requires_grad=True)
    loss, _ = dpo_loss(s_w, torch.zeros(1), s_l, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool), 0.5)
    loss.backward()
    assert s_w.grad.item() < 0 < s_l.grad.item()  # descent raises s_w, lowers s_l


def test_not_to_recommend_and_bpr_match_their_formulas():
    s_l = torch.tensor([[math.log(0.25), math.log(0.5)]])
    log_z = torch.tensor([0.0])
    live = torch.zeros(1, 2, dtype=torch.bool)
    want = (-math.log(0.75) - math.log(0.5)) / 2
    assert unlikelihood_loss(s_l, log_z, live).item() == pytest.approx(want, rel=1e-5)
    assert unlikelihood_loss(s_l, log_z, torch.tensor([[False, True]])).item() == pytest.approx(-math.log(0.75))
    s_w = torch.tensor([1.0])
    assert bpr_loss(s_w, torch.tensor([[0.0, 2.0]]), live).item() == pytest.approx(
        (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(1.0))).item() / 2)


def test_dpo_positive_penalises_only_a_fall_of_the_chosen_log_probability():
    assert dpo_positive_penalty(torch.tensor([-1.0]), torch.tensor([-2.0])).item() == 0.0
    assert dpo_positive_penalty(torch.tensor([-3.0]), torch.tensor([-2.0])).item() == pytest.approx(1.0)


# ---- pools and masks -------------------------------------------------------------------
def _pools(explicit_share=0.5, mask_shared=True, R=4):
    explicit = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32))
    mined = sp.csr_matrix(np.array([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 1]], dtype=np.float32))
    return RejectedPools(explicit, mined, R, explicit_share, mask_shared)


def test_pools_draw_their_share_from_each_pool_and_pad_an_empty_one():
    torch.manual_seed(0)
    rej = _pools().sample(torch.tensor([0, 1, 0, 1]))  # (4, 4): 2 explicit then 2 mined
    assert rej.shape == (4, 4)
    assert set(rej[[0, 2], :2].flatten().tolist()) == {2}  # user 0's one dislike
    assert set(rej[[1, 3], :2].flatten().tolist()) == {-1}  # user 1 has none: padding, not mined items
    assert set(rej[[0, 2], 2:].flatten().tolist()) <= {0, 3} and set(rej[[1, 3], 2:].flatten().tolist()) <= {1, 4, 5}


def test_shared_mask_removes_the_users_positives_and_changes_the_loss():
    known = KnownPositives(sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32)))
    users = torch.tensor([0])
    rej = torch.tensor([[2, 0, -1, 3]])  # a dislike, a train positive (item 0), padding, a mined item
    on, off = _pools(mask_shared=True), _pools(mask_shared=False)
    m_on, m_off = on.masks(users, rej, known, 6), off.masks(users, rej, known, 6)
    assert m_on.tolist() == [[False, True, True, False]] and m_off.tolist() == [[False, False, True, False]]
    assert on.last_counts == {"rejected_padding": 0.25, "rejected_shared": 0.25}
    s_w, s_l = torch.tensor([1.0]), torch.tensor([[0.2, 3.0, 0.0, 0.1]])
    a, _ = dpo_loss(s_w, torch.zeros(1), s_l, torch.zeros(1, 4), m_on, 1.0)
    b, _ = dpo_loss(s_w, torch.zeros(1), s_l, torch.zeros(1, 4), m_off, 1.0)
    assert a.item() < b.item()  # the positive scored 3.0 no longer counts as a rejected item


def test_padding_is_always_masked_and_ids_outside_the_catalogue_too():
    p = _pools(mask_shared=False)
    m = p.masks(torch.tensor([0]), torch.tensor([[-1, 6, 7, 1]]), None, 6)
    assert m.tolist() == [[True, True, True, False]] and p.last_counts["rejected_padding"] == 0.75


def test_missing_pool_and_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="explicit_share"):
        RejectedPools(None, sp.csr_matrix((2, 6)), 4, 0.5)
    from recsys.model.heads import PreferenceHead

    for kw, word in ((dict(objective="kto"), "objective"), (dict(rejected="random"), "rejected"),
                     (dict(beta=0.0), "beta"), (dict(num_rejected=0), "num_rejected")):
        with pytest.raises(ConfigError, match=word):
            PreferenceHead(**kw)


def test_mining_takes_each_users_reference_top_k():
    xq = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    xb = np.array([[3.0, 0.0], [2.0, 0.0], [0.0, 5.0], [0.0, 1.0]], dtype=np.float32)
    m = mine_top(xq, xb, 2)
    assert sorted(m[0].indices.tolist()) == [0, 1] and sorted(m[1].indices.tolist()) == [2, 3]
    with pytest.raises(ConfigError, match="mine_k"):
        mine_top(xq, xb, 5)


# ---- dislike data and metrics -------------------------------------------------------------
def _rated_frame(n_users=60, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, i, float(rng.integers(1, 6))) for u in range(n_users)
            for i in rng.choice(n_items, size=20, replace=False)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def test_dislikes_sit_beside_unchanged_positives_split_per_user():
    raw = _rated_frame()
    pos = raw[raw["rating"] >= 3].drop(columns="rating")
    data = from_frames(pos, name="rated", seed=3)
    rated = with_ratings(data, raw, 2.0, seed=3)
    assert all((getattr(rated, s) != getattr(data, s)).nnz == 0 for s in ("train", "valid", "test"))
    d = rated.dislikes
    allpos = (data.train + data.valid + data.test).tocsr()
    assert sum(m.nnz for m in d.values()) == int((raw["rating"] <= 2).sum())
    assert all(allpos.multiply(m).nnz == 0 for m in d.values())  # a pair is a like or a dislike
    n = np.diff((d["train"] + d["valid"] + d["test"]).tocsr().indptr)
    assert np.array_equal(np.diff(d["test"].indptr), np.floor(0.1 * n).astype(int) + ((n >= 3) & (n < 10)))
    chosen = rated.chosen(4)
    rest = (rated.train - chosen).tocsr()
    rest.eliminate_zeros()
    assert chosen.nnz > 0 and rest.nnz > 0 and chosen.multiply(rated.train).nnz == chosen.nnz
    assert rated.ratings[chosen.nonzero()].min() >= 4 and set(np.unique(rated.ratings[rest.nonzero()].A1)) == {3.0}
    with pytest.raises(ConfigError, match="dislike_threshold"):
        data.chosen(4)
    with pytest.raises(DataError, match="rating"):
        with_ratings(data, pos, 2.0)


def test_disliked_at_k_counts_held_out_dislikes_in_the_top_k():
    dis = sp.csr_matrix(np.array([[0, 1, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    I = np.array([[1, 0], [2, 3]])
    assert disliked_metrics(I, dis, ks=(1, 2)) == {"disliked@1": 0.5, "disliked@2": 0.25}


def test_repetition_and_top_k_kl():
    assert repetition(np.array([[1, 2], [1, 2], [2, 1], [3, 4]]), 2) == 0.5
    a = np.array([[1.0, 2.0, 3.0]])
    assert topk_kl(a, a + 7.0) == pytest.approx(0.0)
    assert topk_kl(a, a[:, ::-1]) > 0.1


# ---- a stage trained from a reference ------------------------------------------------------
def _stage_data():
    raw = _rated_frame(n_users=80, n_items=50, seed=1)
    pos = raw[raw["rating"] >= 3].drop(columns="rating")
    return with_ratings(from_frames(pos, name="rated", seed=0), raw, 2.0, seed=0)


def _fit(tmp_path, name, head, data, callbacks=(), **module_kw):
    import lightning as L

    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    dm = InteractionDataModule.from_data(data, batch_size=64, max_history=10, min_rating=module_kw.pop("min_rating",
                                                                                                        None))
    lr = module_kw.pop("lr", 1e-3)
    model = TwoTowerModule(schema=dm.schema, query_tower=lambda s: QueryTower(s, dim=8, use_id=False, sparse=False),
                           item_tower=lambda s: ItemTower(s, dim=8, sparse=False), head=head,
                           dense_optimizer=lambda p: torch.optim.Adam(p, lr=lr), **module_kw)
    model.recsys_config = "model: {}\ndata: {}\n"
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_last=True)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt, *callbacks], num_sanity_val_steps=0)
    trainer.fit(model, dm)
    return model, trainer, str(tmp_path / name / "last.ckpt")


def test_stage_starts_from_the_reference_keeps_it_frozen_and_logs_the_diagnostics(tmp_path):
    import lightning as L

    from recsys.model.heads import InBatchSoftmax, PreferenceHead

    torch.manual_seed(0)
    data = _stage_data()
    ref_model, _, ref_path = _fit(tmp_path, "ref", InBatchSoftmax(temperature=0.1), data)
    head = PreferenceHead(rejected="mixed", num_rejected=4, mine_k=10, beta=0.5, alpha=1.0)
    seen = {}

    class FirstStep(L.Callback):  # the optimizer the first step uses
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                adam = trainer.optimizers[0].optimizers[0]
                seen.update(lr=adam.param_groups[0]["lr"], step=float(next(iter(adam.state.values()))["step"]))

    model, trainer, _ = _fit(tmp_path, "stage", head, data, callbacks=[FirstStep()], reference=ref_path,
                             min_rating=4, lr=3e-4)
    ref_steps = torch.load(ref_path, weights_only=True)["global_step"]
    assert seen == {"lr": 3e-4, "step": float(ref_steps)}  # the reference's Adam moments, this run's lr
    ref_items = ref_model.item_tower.embed_all()
    assert torch.allclose(model.reference.items, ref_items)  # the frozen copy is the reference
    assert not torch.allclose(model.item_tower.embed_all(), ref_items)  # the policy moved
    assert all(not p.requires_grad for p in model.reference.parameters())
    logged = trainer.callback_metrics
    for key in ("val/chosen_margin", "val/repetition@10", "val/disliked@10"):
        assert key in logged, (key, sorted(k for k in logged if k.startswith("val")))
    assert any(k.startswith("val/kl_top") for k in logged)
    assert set(model.head.pools.last_counts) == {"rejected_padding", "rejected_shared"}


def test_a_reference_head_without_a_reference_and_a_foreign_reference_are_refused(tmp_path):
    from recsys.model.heads import InBatchSoftmax, PreferenceHead
    from recsys.model.module import TwoTowerModule

    data = _stage_data()
    schema = InteractionDataModule.from_data(data).schema
    with pytest.raises(ConfigError, match="model.reference"):
        TwoTowerModule(schema=schema, head=PreferenceHead())
    with pytest.raises(ConfigError, match="drop model.reference"):
        TwoTowerModule(schema=schema, head=InBatchSoftmax(), reference="x.ckpt")
    _, _, ref_path = _fit(tmp_path, "ref", InBatchSoftmax(temperature=0.1), data)
    other = with_ratings(from_frames(_rated_frame(n_users=80, n_items=45, seed=2).query("rating >= 3")
                                     .drop(columns="rating"), name="other"), _rated_frame(80, 45, 2), 2.0)
    with pytest.raises(DataError, match="vocab"):
        _fit(tmp_path, "stage", PreferenceHead(rejected="explicit"), other, reference=ref_path, min_rating=4)


def test_shipped_preference_config_trains_on_ml100k_from_a_fit_checkpoint(tmp_path):
    """The CLI path: an in-batch fit, then the stage from its checkpoint (ml-100k, one short epoch each)."""
    from recsys.commands.console import main

    root = need("ml-100k", "u.data.gz").parents[1]
    common = ["--data.root", str(root), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20",
              "--trainer.enable_progress_bar", "false"]
    base = str(REPO / "configs" / "ml-100k" / "base.yaml")
    main(["fit", "--config", base, "--config", str(REPO / "configs" / "ml-100k" / "inbatch.yaml"), *common,
          "--trainer.default_root_dir", str(tmp_path / "ref")])
    ref = next((tmp_path / "ref").rglob("last.ckpt"))
    main(["fit", "--config", base, "--config", str(REPO / "configs" / "ml-1m" / "preference.yaml"), *common,
          "--model.reference", str(ref), "--model.head.init_args.temperature", "1.0",
          "--trainer.default_root_dir", str(tmp_path / "stage")])
    from recsys.artifacts.checkpoint import load_checkpoint

    ref.unlink()  # the stage's checkpoint carries its reference
    model, dm, _ = load_checkpoint(next((tmp_path / "stage").rglob("last.ckpt")), data_root=root)
    assert model.reference is not None and bool(model.reference.loaded)
    assert dm.data.dislikes is not None
    # the shipped rating correction: ALS factors fitted at the stage's start, restored from the checkpoint
    assert model.query_tower.rating_dim == 32 and float(model.query_tower.rating_user.abs().sum()) > 0
    assert float(model.item_tower.rating_item.abs().sum()) > 0
    g = float(model.query_tower.rating_weight) / float(model.head.temperature())  # stored as g T
    assert min(abs(g - c) for c in model.rating_grid) < 1e-5  # a weight of the grid, chosen on validation


def test_batches_carry_ratings_and_the_chosen_filter_keeps_liked_pairs_only():
    data = _stage_data()
    full = InteractionDataModule.from_data(data, batch_size=4096, max_history=5)
    liked = InteractionDataModule.from_data(data, batch_size=4096, max_history=5, min_rating=4)
    b_all, b_liked = next(iter(full.train_dataloader())), next(iter(liked.train_dataloader()))
    assert len(liked.train_dataloader().dataset) == data.chosen(4).nnz < len(full.train_dataloader().dataset)
    r = np.asarray(data.ratings[b_all["user"].numpy().copy(), b_all["item"].numpy().copy()]).ravel()
    assert np.array_equal(b_all["rating"].numpy(), r) and b_all["rating"].min() >= 3
    assert b_liked["rating"].min() >= 4


def test_chosen_min_rating_leaves_unliked_examples_out_of_the_preference_term():
    from recsys.model.heads import PreferenceHead

    head = PreferenceHead(chosen_min_rating=4, rejected="explicit", num_rejected=2)
    head.pools = _pools(explicit_share=1.0, R=2)
    head.bind(type("S", (), {"n_items": 6, "item_counts": None})(), KnownPositives(sp.csr_matrix((2, 6))))

    class Items(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v = torch.nn.Parameter(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))

        def forward(self, ids):
            return self.v[ids]

        def forward_all(self):
            return self.v

    ref = type("R", (), {"items": torch.randn(6, 3), "query": staticmethod(lambda b: torch.zeros(2, 3))})()
    q = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    batch = {"user": torch.tensor([0, 0]), "item": torch.tensor([1, 4])}
    head.alpha = 0.0  # the preference term alone
    torch.manual_seed(0)
    both = head(q, {**batch, "rating": torch.tensor([5.0, 4.0])}, Items(), reference=ref).loss
    torch.manual_seed(0)
    one = head(q, {**batch, "rating": torch.tensor([5.0, 3.0])}, Items(), reference=ref).loss
    assert both.item() != pytest.approx(one.item())
    with pytest.raises(ConfigError, match="rating"):
        head(q, batch, Items(), reference=ref)


def test_nll_objective_is_the_nll_term_alone():
    from recsys.model.heads import FullSoftmax, PreferenceHead

    data = _stage_data()
    schema = InteractionDataModule.from_data(data).schema
    known = KnownPositives(data.train)
    head = PreferenceHead(objective="nll", rejected="explicit", num_rejected=3)
    head.bind(schema, known)
    head.prepare(data, None, None)
    ce = FullSoftmax(temperature=0.1, mask_known_positives=True)
    ce.bind(schema, known)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(schema.n_items, 4, generator=g)

    class Items(torch.nn.Module):
        def forward(self, ids):
            return v[ids]

        def forward_all(self):
            return v

    ref = type("R", (), {"items": v, "query": staticmethod(lambda b: torch.zeros(len(b["user"]), 4))})()
    q = torch.randn(5, 4, generator=g)
    batch = {"user": torch.arange(5), "item": torch.tensor([data.train[u].indices[0] for u in range(5)])}
    assert head(q, batch, Items(), reference=ref).loss.item() == pytest.approx(ce(q, batch, Items()).loss.item())


def test_chosen_logp_margin_sees_what_the_score_margin_misses():
    from recsys.model.preference import collapse_diagnostics

    xq = np.array([[1.0, 0.0]], dtype=np.float32)
    xb_ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    xb = xb_ref.copy()
    xb[1] = [3.0, 1.0]  # another item rises above the chosen item 0, whose score stays
    chosen = sp.csr_matrix(np.array([[1, 0, 0]], dtype=np.float32))
    d = collapse_diagnostics(xq, xq, xb, xb_ref, 1.0, chosen, sp.csr_matrix((1, 3)), k=2)
    assert d["chosen_margin"] == pytest.approx(0.0) and d["chosen_logp_margin"] < -0.5 and d["kl_top2"] > 0
    same = collapse_diagnostics(xq, xq, xb_ref, xb_ref, 1.0, chosen, sp.csr_matrix((1, 3)), k=2)
    assert same["chosen_logp_margin"] == pytest.approx(0.0) and same["kl_top2"] == pytest.approx(0.0)
