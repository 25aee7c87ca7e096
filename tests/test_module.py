"""Tests for recsys.model.module: optimizer wiring and the learning-rate schedule."""

from __future__ import annotations

from functools import partial

import torch

from recsys.model.module import TwoTowerModule
from recsys.model.towers import ItemTower, QueryTower
from recsys.schema import Schema


def schema() -> Schema:
    return Schema(n_users=5, n_items=7, bag_size=7)


def test_no_scheduler_returns_the_optimizer():
    m = TwoTowerModule(schema=schema(), eval_ks=[5])
    assert isinstance(m.configure_optimizers(), torch.optim.Optimizer)


def test_lr_scheduler_decays_dense_and_sparse_groups():
    # sparse id tables (SparseAdam, lr 1e-2) and a dense MLP (Adam, lr 1e-3): one schedule for both
    m = TwoTowerModule(schema=schema(), query_tower=partial(QueryTower, dim=4, hidden=[8], sparse=True),
                       item_tower=partial(ItemTower, dim=4, sparse=True),
                       lr_scheduler=partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5), eval_ks=[5])
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "epoch"
    assert len(opt.optimizers) == 2
    before = [g["lr"] for g in opt.param_groups]
    assert sorted(before) == [1e-3, 1e-2]
    opt.step()
    sched.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [lr * 0.25 for lr in before]
    # the inner optimizers see the decayed rate (the groups are shared, not copied)
    assert [g["lr"] for o in opt.optimizers for g in o.param_groups] == [lr * 0.25 for lr in before]


# ---- popularity prior at retrieval (prior_grid) --------------------------------------------

def test_prior_grid_needs_the_item_bias():
    import pytest

    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="item_bias: true"):
        TwoTowerModule(schema=schema(), prior_grid=[0.0, 0.1], eval_ks=[5])


def _prior_model(dm, grid):
    from recsys.model.heads import InBatchSoftmax

    return TwoTowerModule(
        schema=dm.schema, head=InBatchSoftmax(temperature=0.5), prior_grid=grid, eval_ks=[5, 10],
        query_tower=partial(QueryTower, dim=8, use_id=False, normalize=True, item_bias=True),
        item_tower=partial(ItemTower, dim=8, normalize=True, item_bias=True))


def test_item_embeddings_add_the_weighted_log_prior_to_the_bias(tiny_dm):
    import numpy as np

    tiny_dm.setup("fit")
    m = _prior_model(tiny_dm, [0.0, 1.0])
    m.bind(tiny_dm.data)
    c = tiny_dm.data.item_counts() + 1.0
    logp = np.log(c / c.sum())  # (N,)
    base = m.item_tower.embed_all().numpy()
    np.testing.assert_array_equal(m.item_embeddings().numpy(), base)  # stored weight 0: unchanged
    got = m.item_embeddings(0.5).numpy()
    np.testing.assert_array_equal(got[:, :-1], base[:, :-1])  # only the bias coordinate moves
    np.testing.assert_allclose(got[:, -1] - base[:, -1], 0.5 * 0.5 * logp, rtol=1e-5, atol=1e-6)


def test_validation_chooses_the_prior_and_the_checkpoint_keeps_it(tiny_dm, tmp_path):
    import lightning as L
    import numpy as np

    from recsys.eval.evaluate import embed_queries, evaluate, evaluate_embeddings

    grid = [0.0, 0.5, 2.0]
    m = _prior_model(tiny_dm, grid)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(m, datamodule=tiny_dm)
    m.eval()
    users, xq = embed_queries(m.query_tower, tiny_dm.val_dataloader())
    ndcg = [evaluate_embeddings(xq, users, m.item_embeddings(w).numpy(), tiny_dm.data, "valid",
                                (5, 10)).metrics["ndcg@5"] for w in grid]
    assert len(set(ndcg)) > 1  # the prior changes the ranking
    w_best = grid[int(np.argmax(ndcg))]
    assert float(m.prior_weight) == w_best
    assert float(trainer.callback_metrics["val/ndcg@5"]) == np.float32(max(ndcg))
    assert float(trainer.callback_metrics["val/prior_weight"]) == w_best
    # test scoring uses the stored weight, and a checkpoint restores it
    test = evaluate(m, tiny_dm, "test", (5,)).metrics["ndcg@5"]
    xq_t = embed_queries(m.query_tower, tiny_dm.test_dataloader())
    assert test == evaluate_embeddings(xq_t[1], xq_t[0], m.item_embeddings(w_best).numpy(), tiny_dm.data, "test",
                         (5,)).metrics["ndcg@5"]
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    m2 = _prior_model(tiny_dm, grid)
    m2.load_state_dict(torch.load(tmp_path / "m.ckpt", weights_only=False)["state_dict"])
    assert float(m2.prior_weight) == w_best
    np.testing.assert_array_equal(m2.item_embeddings().numpy(), m.item_embeddings().numpy())
