"""Determinism on CPU: two `recsys fit` runs with the same seed end with identical weights and
identical validation metrics (tolerance 0); another seed gives another run. The batch order
is a function of (seed, epoch) only and the train loader resumes mid-epoch exactly.

Known sources of nondeterminism, none of them on this path, are listed in docs/scaling.md
("Determinism").
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError
from tests.conftest import REPO, TINY, config_args

ARGS = ["fit", *config_args("synthetic", "sampled"),
        "--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4",
        "--data.batch_size=64", "--model.head.init_args.num_negatives=32", "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=15", "--trainer.enable_progress_bar=false"]


def _fit(root: Path, *extra: str) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "recsys.train.cli", *ARGS, f"--trainer.default_root_dir={root}",
           f"--trainer.logger.init_args.save_dir={root}", *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    run = root / "recsys" / "version_0"
    rows = [row for row in csv.DictReader(open(run / "metrics.csv")) if row.get("val/ndcg@10")]
    val = [{k: v for k, v in row.items() if k.startswith("val/") and "seconds" not in k} for row in rows]
    sd = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return {"val": val}, sd


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    (m1, sd1), (m2, sd2) = _fit(tmp_path / "a"), _fit(tmp_path / "b")
    assert len(m1["val"]) == 2 and m1 == m2  # every epoch's validation metrics, to the last digit
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    m3, sd3 = _fit(tmp_path / "c", "--seed_everything=1")
    assert not torch.equal(sd1["query_tower.user_emb.weight"], sd3["query_tower.user_emb.weight"])


# ------------------------------------------------------------------------ batch order
@pytest.fixture(scope="module")
def data():
    from recsys.data import InteractionDataModule

    return InteractionDataModule(dataset="synthetic", synthetic=dict(TINY), batch_size=64, max_history=5).data


def _loader(data, seed=0, epoch=0):
    from recsys.data.batches import PairDataset, batch_identity
    from recsys.data.sampler import EpochSampler, ResumableLoader

    ds = PairDataset(data, 5, seed)
    return ResumableLoader(ds, batch_size=64, sampler=EpochSampler(ds, seed, epoch), collate_fn=batch_identity,
                           generator=torch.Generator().manual_seed(seed))


def _pairs(batches) -> list[tuple[int, int]]:
    return [(int(u), int(i)) for b in batches for u, i in zip(b["user"], b["item"])]


def test_epoch_order_depends_only_on_seed_and_epoch(data):
    a, b = _loader(data), _loader(data)
    list(iter(b))  # consuming other epochs of b first changes nothing
    b.sampler.set_epoch(3)
    list(iter(b))
    b.sampler.set_epoch(0)
    assert _pairs(a) == _pairs(b)
    c = _loader(data)
    c.sampler.set_epoch(1)
    assert _pairs(c) != _pairs(a) and sorted(_pairs(c)) == sorted(_pairs(a))
    assert _pairs(_loader(data, seed=1)) != _pairs(a)


def test_loader_resumes_mid_epoch_with_the_same_batches(data):
    full = list(iter(_loader(data, epoch=2)))
    first = _loader(data, epoch=2)
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 5}
    resumed = _loader(data, epoch=2)
    resumed.load_state_dict(state)
    rest = list(iter(resumed))
    assert len(head) + len(rest) == len(full) == len(resumed)
    for x, y in zip(head + rest, full):
        for k in x:
            assert torch.equal(x[k], y[k]), k  # bags drawn per batch are the same too
    assert resumed.state_dict() == {"epoch": 2, "batches": len(full)}
    later = _loader(data, epoch=3)  # a state from an epoch that already ended: start at batch 0
    later.load_state_dict(state)
    assert len(list(iter(later))) == len(full)


def test_ddp_shares_partition_the_epoch(data, monkeypatch):
    import recsys.data.sampler as rd

    whole = list(_loader(data, epoch=1).sampler)
    shares = []
    for rank in range(2):
        monkeypatch.setattr(rd, "world", lambda rank=rank: (2, rank))
        s = _loader(data, epoch=1).sampler
        shares.append(list(s))
    assert len(shares[0]) == len(shares[1])  # equal share sizes: no rank waits in a collective
    assert set(shares[0]) | set(shares[1]) == set(whole)
    assert [x for pair in zip(*shares) for x in pair][: len(whole)] == whole  # rank r: r::2 of the same order


def test_user_weighted_epochs_are_deterministic_and_balance_users():
    from recsys.data import InteractionDataModule

    def users_of(beta, epoch=0):
        dm = InteractionDataModule(dataset="synthetic", synthetic=dict(TINY), batch_size=64, max_history=5,
                                   user_weight_power=beta)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return np.array([u for u, _ in _pairs(loader)]), dm.data

    u0, data = users_of(0.0)
    u1, _ = users_of(1.0)
    assert np.array_equal(u1, users_of(1.0)[0])  # a function of (seed, epoch) only
    assert not np.array_equal(u1, users_of(1.0, epoch=1)[0])
    assert len(u1) == len(u0)  # the epoch keeps its length
    n_u = np.diff(data.train.indptr)
    # beta = 0: every pair once, so user u appears n_u times; beta = 1: every user about equally
    assert np.array_equal(np.bincount(u0, minlength=len(n_u)), n_u)
    share = np.bincount(u1, minlength=len(n_u)) / len(u1)
    heavy, light = np.argsort(n_u)[-10:], np.argsort(n_u)[:10]
    assert share[heavy].sum() < (n_u[heavy].sum() / n_u.sum()) * 0.8  # heavy users drawn less than their pairs
    assert share[light].sum() > (n_u[light].sum() / n_u.sum()) * 1.2


def test_user_weight_power_must_be_non_negative():
    from recsys.data import InteractionDataModule

    with pytest.raises(ConfigError, match="user_weight_power=-1"):
        InteractionDataModule(user_weight_power=-1)
