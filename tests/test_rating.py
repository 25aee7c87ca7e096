"""The explicit-rating correction: the ALS rating model, the towers' rating block and the
module's choice of its weight on validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.data import InteractionDataModule
from recsys.data.recdata import from_frames
from recsys.errors import ConfigError, DataError
from recsys.model.rating import fit_rating_mf
from tests.test_preference import _rated_frame, _stage_data


def _planted(U=300, N=200, k=3, share=0.3, noise=0.1, seed=0):
    """Ratings mean + b_u + b_i + p_u . q_i + noise on a random share of the pairs: (train, held-out)."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(0, 0.7, (U, k)), rng.normal(0, 0.7, (N, k))
    full = 3.5 + rng.normal(0, 0.3, (U, 1)) + rng.normal(0, 0.5, (1, N)) + P @ Q.T + rng.normal(0, noise, (U, N))
    seen = rng.random((U, N)) < share
    held = ~seen & (rng.random((U, N)) < 0.1)
    return sp.csr_matrix(np.where(seen, full, 0.0)), sp.csr_matrix(np.where(held, full, 0.0))


def test_als_recovers_a_planted_biased_low_rank_rating_matrix():
    train, held = _planted()
    f = fit_rating_mf(train, dim=3, reg=0.01, sweeps=15)
    h = held.tocoo()
    rmse = np.sqrt(np.mean((f.predict(h.row, h.col) - h.data) ** 2))
    rmse_mean = np.sqrt(np.mean((train.data.mean() - h.data) ** 2))
    assert rmse < 0.25 * rmse_mean, (rmse, rmse_mean)
    one = fit_rating_mf(train, dim=3, reg=0.01, sweeps=1)  # the sweeps are what fits it
    assert np.sqrt(np.mean((one.predict(h.row, h.col) - h.data) ** 2)) > rmse
    assert f.user.shape == (300, 3) and f.item.dtype == np.float32


def test_als_refuses_bad_settings_and_empty_ratings():
    train, _ = _planted(U=20, N=10)
    for kw in ({"dim": 0}, {"sweeps": 0}, {"reg": 0.0}):
        with pytest.raises(ConfigError, match="Fix"):
            fit_rating_mf(train, **kw)
    with pytest.raises(DataError, match="ratings"):
        fit_rating_mf(sp.csr_matrix((5, 4)))


def test_train_rating_matrix_holds_the_train_pairs_and_nothing_held_out():
    data = _stage_data()
    m = data.train_rating_matrix()
    pattern = (data.train + data.dislikes["train"]).tocsr()
    assert m.nnz == pattern.nnz and (m.astype(bool) != pattern.astype(bool)).nnz == 0
    assert np.array_equal(m.toarray()[pattern.toarray() > 0], data.ratings.toarray()[pattern.toarray() > 0])
    held = (data.valid + data.test + data.dislikes["valid"] + data.dislikes["test"]).tocsr()
    assert m.multiply(held).nnz == 0
    assert set(np.unique(m.data)) <= {1.0, 2.0, 3.0, 4.0, 5.0} and m.data.min() <= 2  # the dislikes are in
    plain = from_frames(_rated_frame().drop(columns="rating"), name="plain")
    with pytest.raises(ConfigError, match="dislike_threshold"):
        plain.train_rating_matrix()


def _towers(k=4, dim=8):
    from recsys.model.towers import ItemTower, QueryTower

    schema = InteractionDataModule.from_data(_stage_data(), max_history=10).schema
    return (schema, QueryTower(schema, dim=dim, use_id=False, sparse=False, item_bias=True, rating_dim=k),
            ItemTower(schema, dim=dim, sparse=False, item_bias=True, rating_dim=k))


def test_rating_block_adds_the_weighted_predicted_rating_at_retrieval_only():
    schema, qt, it = _towers()
    g = torch.Generator().manual_seed(0)
    qt.rating_user.copy_(torch.randn(qt.rating_user.shape, generator=g))
    it.rating_item.copy_(torch.randn(it.rating_item.shape, generator=g))
    assert qt.out_dim == it.out_dim == 8 + 1 + 4 + 1
    users = torch.tensor([0, 3, -1])
    batch = {"user": users, "bag": torch.tensor([[1, 2], [3, schema.bag_size], [4, 5]])}
    items = torch.arange(6)
    qt.rating_weight.fill_(0.5)
    qt.train()
    plain = qt(batch)[:, :9] @ it(items)[:, :9].T  # (3, 6) the retrieval towers' score
    assert torch.equal(qt(batch)[:, 9:], torch.zeros(3, 5))  # training: the block is zero
    qt.eval()
    it.eval()
    q = qt(batch)
    score = q @ it(items).T
    base = q[:, :9] @ it(items)[:, :9].T
    pu, qi = qt.rating_user[users.clamp_min(0)], it.rating_item[items]
    want = base + 0.5 * (pu @ qi[:, :4].T + qi[:, 4])
    want[2] = base[2] + 0.5 * qi[:, 4]  # an unseen user: no factors, the item bias still
    assert torch.allclose(score, want, atol=1e-5)
    assert not torch.allclose(score, base)  # the correction changes the ranking scores
    assert torch.allclose(plain, base, atol=1e-6)  # training sees the retrieval towers alone


def test_rating_settings_must_agree_and_be_valid():
    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    schema, _, _ = _towers()
    with pytest.raises(ConfigError, match="rating_dim=-1"):
        QueryTower(schema, rating_dim=-1)
    q = lambda s, k=4: QueryTower(s, dim=8, use_id=False, item_bias=True, rating_dim=k)  # noqa: E731
    i = lambda s, k=4: ItemTower(s, dim=8, item_bias=True, rating_dim=k)  # noqa: E731
    with pytest.raises(ConfigError, match="rating_dim"):
        TwoTowerModule(schema=schema, query_tower=q, item_tower=lambda s: i(s, 2), rating_grid=[1.0])
    with pytest.raises(ConfigError, match="rating_grid"):
        TwoTowerModule(schema=schema, query_tower=q, item_tower=i)  # factors without a grid
    with pytest.raises(ConfigError, match="rating_grid"):
        TwoTowerModule(schema=schema, rating_grid=[1.0])  # a grid without factors
    with pytest.raises(ConfigError, match="tolerance"):
        TwoTowerModule(schema=schema, query_tower=q, item_tower=i, rating_grid=[1.0], rating_tolerance=1.0)


def test_validation_keeps_the_lowest_disliked_weight_within_the_ndcg_tolerance(tmp_path):
    import lightning as L

    from recsys.model.heads import InBatchSoftmax
    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    torch.manual_seed(0)
    data = _stage_data()
    dm = InteractionDataModule.from_data(data, batch_size=64, max_history=10)
    grid = [0.5, 1.0, 2.0, 4.0, 8.0]
    model = TwoTowerModule(schema=dm.schema, head=InBatchSoftmax(temperature=0.1),
                           query_tower=lambda s: QueryTower(s, dim=8, use_id=False, sparse=False, item_bias=True,
                                                            rating_dim=4),
                           item_tower=lambda s: ItemTower(s, dim=8, sparse=False, item_bias=True, rating_dim=4),
                           dense_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), rating_grid=grid,
                           rating_tolerance=0.2, rating_sweeps=5)
    model.recsys_config = "model: {}\ndata: {}\n"
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert float(model.query_tower.rating_user.abs().sum()) > 0  # the ALS factors were fitted
    T = float(model.head.temperature())
    chosen = float(model.query_tower.rating_weight) / T
    assert float(trainer.callback_metrics["val/rating_weight"]) == pytest.approx(chosen)
    # the rule, recomputed: lowest validation disliked@10 among the weights within 20% of g = 0's NDCG@10
    model.eval()
    from recsys.eval.evaluate import _eval_queries

    users, xq = _eval_queries(model, dm, "valid")
    runs = {g: model.score_queries(users, model.with_rating(users, xq, g), data, "valid")[0].metrics
            for g in [0.0, *grid]}
    ok = [g for g in runs if runs[g]["ndcg@10"] >= 0.8 * runs[0.0]["ndcg@10"]]
    assert chosen == min(ok, key=lambda g: runs[g]["disliked@10"])
    assert len({round(m["disliked@10"], 6) for m in runs.values()}) > 1  # the weight changes the ranking


def test_a_stage_fits_the_factors_and_its_diagnostics_leave_the_correction_out(tmp_path):
    """A preference stage with the rating correction: the reference's towers load beside the
    stage's own rating buffers, ALS fills them, and the collapse diagnostics compare the policy
    with the reference without the retrieval-time correction, whatever its weight."""
    import lightning as L

    from recsys.model.heads import InBatchSoftmax, PreferenceHead
    from recsys.model.module import TwoTowerModule
    from recsys.model.preference import collapse_diagnostics
    from recsys.model.towers import ItemTower, QueryTower
    from tests.test_preference import _fit

    torch.manual_seed(0)
    data = _stage_data()
    _, _, ref_path = _fit(tmp_path, "ref", InBatchSoftmax(temperature=0.1), data)
    dm = InteractionDataModule.from_data(data, batch_size=64, max_history=10, min_rating=4)
    model = TwoTowerModule(schema=dm.schema, head=PreferenceHead(rejected="explicit", num_rejected=2),
                           query_tower=lambda s: QueryTower(s, dim=8, use_id=False, sparse=False, rating_dim=3),
                           item_tower=lambda s: ItemTower(s, dim=8, sparse=False, rating_dim=3),
                           reference=ref_path, rating_grid=[1.0, 4.0], rating_sweeps=3)
    model.recsys_config = "model: {}\ndata: {}\n"
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0).fit(model, dm)
    assert float(model.query_tower.rating_user.abs().sum()) > 0
    model.eval()
    model.query_tower.rating_weight.fill_(0.0)
    plain = model.preference_diagnostics(dm, "valid")
    model.query_tower.rating_weight.fill_(4.0 * float(model.head.temperature()))
    assert model.preference_diagnostics(dm, "valid") == pytest.approx(plain)  # the policy's own
    # the served scores do move with the weight: the diagnostics of the raw queries would differ
    from recsys.eval.evaluate import _eval_queries

    users, xq = _eval_queries(model, dm, "valid")
    _, xq_ref = users, model.reference.query_tower(next(iter(dm.eval_dataloader("valid")))).numpy()
    truth, seen = data.truth("valid")[users], data.seen("valid")[users]
    n = len(xq_ref)
    raw = collapse_diagnostics(xq[:n], xq_ref, model.item_tower.embed_all().numpy(), model.reference.items.numpy(),
                               float(model.head.temperature()), truth[:n], seen[:n])
    strip = collapse_diagnostics(model.with_rating(users[:n], xq[:n], 0.0), xq_ref,
                                 model.item_tower.embed_all().numpy(), model.reference.items.numpy(),
                                 float(model.head.temperature()), truth[:n], seen[:n])
    kl = next(k for k in raw if k.startswith("kl_top"))
    assert raw[kl] != pytest.approx(strip[kl])
