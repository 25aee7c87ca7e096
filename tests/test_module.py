"""Tests for recsys.module: optimizer wiring and the learning-rate schedule."""

from __future__ import annotations

from functools import partial

import torch

from recsys.data.datamodule import Schema
from recsys.module import TwoTowerModule
from recsys.towers import ItemTower, QueryTower


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
