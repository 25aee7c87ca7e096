"""Refit on train + validation after choosing on validation: the data view, the data module,
the module's start prior weight and `recsys compare --refit`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from recsys.commands.console import main
from recsys.data import InteractionDataModule, load_dataset
from recsys.errors import ConfigError
from tests.conftest import TINY
from tests.test_compare import INBATCH, _config_folder


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", synthetic=dict(TINY))


def test_valid_joins_train_and_test_is_unchanged(tiny):
    r = tiny.with_valid_in_train()
    assert r.train.nnz == tiny.train.nnz + tiny.valid.nnz and r.valid.nnz == 0
    assert (r.train != (tiny.train + tiny.valid)).nnz == 0 and (r.test != tiny.test).nnz == 0
    assert (r.seen("test") != tiny.seen("test")).nnz == 0  # the same items are excluded at test
    assert (r.history != r.train).nnz == 0 and r.history.nnz > tiny.history.nnz  # queries see the validation items
    assert r.item_counts().sum() > tiny.item_counts().sum()


def test_refit_data_module_trains_on_more_and_refuses_to_validate(tiny):
    dm = InteractionDataModule(dataset="synthetic", synthetic=dict(TINY), refit=True)
    assert dm.data.train.nnz == tiny.train.nnz + tiny.valid.nnz
    with pytest.raises(ConfigError, match="limit_val_batches=0"):
        dm.val_dataloader()


def test_prior_weight_start_value_is_served_until_validation_chooses(tiny):
    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    schema = InteractionDataModule.from_data(tiny).schema

    def make(**kw):
        return TwoTowerModule(schema=schema, query_tower=lambda s: QueryTower(s, dim=8, item_bias=True),
                              item_tower=lambda s: ItemTower(s, dim=8, item_bias=True), prior_grid=[0.0, 0.5], **kw)

    assert make().served_prior_weight == 0.0 and make(prior_weight=0.5).served_prior_weight == 0.5


def test_refit_names_heads_that_run(tmp_path):
    base = _config_folder(tmp_path, inbatch=INBATCH)
    with pytest.raises(ConfigError, match="not among --heads"):
        main(["compare", "--config", str(base), "--heads", "inbatch", "--refit", "full", "--out", str(tmp_path / "o")])


def test_compare_refit_reports_the_refit_test_and_keeps_the_validated_one(tmp_path):
    base = _config_folder(tmp_path, inbatch=INBATCH)
    out = tmp_path / "out"
    main(["compare", "--config", str(base), "--heads", "inbatch", "--seeds", "1", "--baselines", "pop,ease",
          "--baseline-param", "ease.lambda_=50", "--max-epochs", "2", "--k", "10", "20", "--refit",
          "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["refit"] == ["inbatch"]
    head, pop, ease = res["runs"]
    for r in (head, pop, ease):
        assert {"test", "test_validated", "valid", "refit"} <= set(r)
    # the refit trains on more pairs for the validated run's best epoch count, and its test differs
    refit_run = yaml.safe_load((out / "configs" / "inbatch_seed0.refit.run.yaml").read_text())
    assert refit_run["data"] == {"refit": True} and refit_run["trainer"]["limit_val_batches"] == 0
    assert refit_run["trainer"]["max_epochs"] == head["best_epoch"] + 1 == head["refit"]["epochs"]
    assert head["test"] != head["test_validated"]
    assert ease["test"]["ndcg@10"] != ease["test_validated"]["ndcg@10"]
    # popularity counts the validation items too: its ranking (and so its test) can only move with them
    assert pop["refit"]["train_seconds"] is not None
    assert "Refit (`--refit`)" in (out / "results.md").read_text()
    assert res["aggregate"]["inbatch"]["test"]["ndcg@10"]["mean"] == pytest.approx(head["test"]["ndcg@10"])
    assert np.isfinite(res["aggregate"]["inbatch"]["test_validated"]["ndcg@10"]["mean"])
