"""recsys.artifacts.config: stored configs of the old module layout still rebuild, and
hard-negative checkpoints written before the miner kept its index in the model state load."""

from __future__ import annotations

import torch
import yaml

from recsys.artifacts.config import build_query_tower, upgrade_class_paths
from recsys.schema import Schema


def test_old_class_paths_are_upgraded_and_new_ones_left_alone():
    old = ("head: {class_path: recsys.heads.InBatchSoftmax}\nsampler: recsys.samplers.LogUniformSampler\n"
           "opt: recsys.optim.RowWiseAdagrad\ntower: recsys.towers.QueryTower\n"
           "new: recsys.model.heads.FullSoftmax\n")
    up = yaml.safe_load(upgrade_class_paths(old))
    assert up == {"head": {"class_path": "recsys.model.heads.InBatchSoftmax"},
                  "sampler": "recsys.model.candidates.LogUniformSampler", "opt": "recsys.model.optim.RowWiseAdagrad",
                  "tower": "recsys.model.towers.QueryTower", "new": "recsys.model.heads.FullSoftmax"}
    assert upgrade_class_paths(upgrade_class_paths(old)) == upgrade_class_paths(old)  # idempotent


def test_an_old_query_tower_config_rebuilds():
    cfg = yaml.safe_load(upgrade_class_paths("query_tower:\n  class_path: recsys.towers.QueryTower\n"
                                             "  init_args: {dim: 8, use_id: false}\n"))
    tower = build_query_tower(cfg, Schema(n_users=4, n_items=6, bag_size=6))
    assert type(tower).__name__ == "QueryTower" and tower.dim == 8 and tower.user_emb is None


def test_a_legacy_hard_negative_checkpoint_loads_its_index():
    from recsys.model.heads import HardNegativeSoftmax
    from recsys.model.module import TwoTowerModule

    schema = Schema(n_users=4, n_items=12, bag_size=12)
    make = lambda: TwoTowerModule(schema=schema, head=HardNegativeSoftmax(num_hard=2, index="flat"), eval_ks=[5])  # noqa: E731
    model = make()
    model.head.miner.refresh(model.item_tower.embed_all())
    sd = model.state_dict()
    state = sd.pop("head.miner._extra_state")  # as written before: in a callback's state
    legacy = {"state_dict": sd, "callbacks": {"HardNegativeIndexState": state}}
    fresh = make()
    fresh.load_state_dict(fresh.upgrade_checkpoint(legacy)["state_dict"], strict=True)
    assert fresh.head.miner.built() and fresh.head.miner.refresh_count == 1
    assert torch.equal(fresh.head.miner.xb, state["xb"])
    none = make()  # an old checkpoint of a run that never refreshed: no index, still loads
    sd2 = make().state_dict()
    sd2.pop("head.miner._extra_state")
    none.load_state_dict(none.upgrade_checkpoint({"state_dict": sd2})["state_dict"], strict=True)
    assert not none.head.miner.built()
