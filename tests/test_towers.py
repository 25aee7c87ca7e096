"""Tests for recsys.model.towers: bags, sparse gradients, catalogue embedding, MLP, normalisation."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError
from recsys.model.towers import ItemTower, QueryTower
from recsys.schema import Schema

PAD = 7  # bag_size: the pad id of query bags


def schema(**kw) -> Schema:
    return Schema(n_users=5, n_items=7, bag_size=7, **kw)


def test_bag_mean_ignores_padding():
    torch.manual_seed(0)
    t = QueryTower(schema(), dim=4, use_id=False, use_bag=True, use_features=False, sparse=False)
    E = t.bag_emb.weight  # (bag_size + 1, D)
    out = t({"bag": torch.tensor([[3, PAD, PAD], [3, 5, PAD], [PAD, PAD, PAD]])})
    torch.testing.assert_close(out[0], E[3])  # [a, pad, pad] -> emb(a), not emb(a) / 3
    torch.testing.assert_close(out[1], (E[3] + E[5]) / 2)
    torch.testing.assert_close(out[2], torch.zeros(4))  # an empty bag is zero
    out.sum().backward()
    assert (t.bag_emb.weight.grad[PAD] == 0).all()  # the pad row never learns


def test_bag_values_pool_a_weighted_mean_and_need_the_batch_values():
    torch.manual_seed(0)
    t = QueryTower(schema(), dim=4, use_id=False, use_features=False, sparse=False, bag_values=True)
    E = t.bag_emb.weight
    bag = torch.tensor([[3, 5, PAD], [3, PAD, PAD]])
    w = torch.tensor([[3.0, 1.0, 9.0], [2.0, 0.0, 0.0]])  # the pad's value is never used
    out = t({"bag": bag, "bag_w": w})
    torch.testing.assert_close(out[0], (3 * E[3] + E[5]) / 4)  # sum_h x_h e_h / sum_h x_h
    torch.testing.assert_close(out[1], E[3])
    plain = t({"bag": bag})  # no values in the batch (a history bag): the plain mean
    torch.testing.assert_close(plain[0], (E[3] + E[5]) / 2)
    assert not torch.allclose(out[0], plain[0])  # the values change the pooled vector


def test_bag_norm_divides_the_weighted_sum_by_the_chosen_norm():
    bag = torch.tensor([[3, 5, PAD]])
    w = torch.tensor([[3.0, 4.0, 9.0]])  # l1 7, l2 5 (the pad's value is never used)
    outs = {}
    for norm in ("l1", "l2", "none"):
        torch.manual_seed(0)
        t = QueryTower(schema(), dim=4, use_id=False, use_features=False, sparse=False,
                       bag_values=True, bag_norm=norm)
        E = t.bag_emb.weight
        outs[norm] = t({"bag": bag, "bag_w": w})[0]
    s = 3 * E[3] + 4 * E[5]
    torch.testing.assert_close(outs["l1"], s / 7)
    torch.testing.assert_close(outs["l2"], s / 5)
    torch.testing.assert_close(outs["none"], s)
    with pytest.raises(ConfigError, match="bag_norm='l3'"):
        QueryTower(schema(), dim=4, bag_values=True, bag_norm="l3")


def test_query_parts_are_summed_without_mlp():
    torch.manual_seed(0)
    t = QueryTower(schema(user_feature_cards=[2, 3]), dim=4, sparse=False)
    b = {"user": torch.tensor([1]), "bag": torch.tensor([[2, PAD]]), "user_feats": torch.tensor([[1, 2]])}
    # feature field 2 is offset by the 2 categories of field 1: rows 1 and 2 + 2 = 4
    exp = t.user_emb.weight[1] + t.bag_emb.weight[2] + t.feat_emb.weight[1] + t.feat_emb.weight[4]
    torch.testing.assert_close(t(b)[0], exp)


def test_sparse_tables_give_sparse_grads():
    s = schema(user_feature_cards=[2], n_item_feature_values=3,
               item_feature_index=np.array([[0, 3], [1, 2], [3, 3], [0, 1], [2, 3], [1, 3], [0, 2]]))
    q, i = QueryTower(s, dim=4, sparse=True), ItemTower(s, dim=4, sparse=True)
    b = {"user": torch.tensor([0, 1]), "bag": torch.tensor([[1, PAD], [2, 4]]),
         "user_feats": torch.tensor([[0], [1]])}
    (q(b) * i(torch.tensor([3, 5]))).sum().backward()
    for p in (q.user_emb.weight, q.bag_emb.weight, q.feat_emb.weight, i.item_emb.weight, i.feat_emb.weight):
        assert p.grad is not None and p.grad.is_sparse
    assert set(i.item_emb.weight.grad.coalesce().indices()[0].tolist()) == {3, 5}  # only used rows
    dense = ItemTower(s, dim=4, sparse=False)
    dense(torch.tensor([0])).sum().backward()
    assert not dense.item_emb.weight.grad.is_sparse


def test_item_features_mean_ignores_padding():
    torch.manual_seed(0)
    s = schema(n_item_feature_values=3, item_feature_index=np.array([[0, 3], [1, 2]] + [[3, 3]] * 5))
    t = ItemTower(s, dim=4, sparse=False)
    out = t(torch.tensor([0, 1, 2]))
    F, E = t.feat_emb.weight, t.item_emb.weight
    torch.testing.assert_close(out[0], E[0] + F[0])
    torch.testing.assert_close(out[1], E[1] + (F[1] + F[2]) / 2)
    torch.testing.assert_close(out[2], E[2])  # no features: the id part only


def test_embed_all_equals_forward_in_chunks():
    torch.manual_seed(0)
    t = ItemTower(schema(), dim=4, hidden=[8])
    ref = t(torch.arange(7))
    for chunk in (1, 3, 7, 100):
        out = t.embed_all(chunk=chunk)
        assert out.shape == (7, 4) and not out.requires_grad
        torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(t.forward_all(), ref)
    assert t.forward_all().requires_grad


def test_embed_all_has_no_dropout_and_keeps_the_mode():
    torch.manual_seed(0)
    t = ItemTower(schema(), dim=4, hidden=[32], dropout=0.5)
    t.train()
    a, b = t.embed_all(chunk=3), t.embed_all(chunk=3)
    torch.testing.assert_close(a, b)  # deterministic: the index is built from the eval tower
    assert t.training
    t.eval()
    torch.testing.assert_close(a, t(torch.arange(7)).detach())


def test_item_forward_keeps_leading_shape():
    t = ItemTower(schema(), dim=4)
    assert t(torch.tensor([[0, 1, 2], [3, 4, 5]])).shape == (2, 3, 4)


def test_hidden_mlp_path_shape():
    s = schema(user_feature_cards=[2])
    q = QueryTower(s, dim=6, hidden=[16, 8], dropout=0.1)
    i = ItemTower(s, dim=6, hidden=[5])
    assert q.mlp is not None and q.mlp[0].in_features == 3 * 6  # id + bag + features concatenated
    b = {"user": torch.tensor([0, 1, 2]), "bag": torch.tensor([[1, PAD]] * 3),
         "user_feats": torch.tensor([[0], [1], [0]])}
    assert q(b).shape == (3, 6)
    assert i(torch.tensor([0, 6])).shape == (2, 6)


def test_normalize_gives_unit_norm():
    s = schema()
    q = QueryTower(s, dim=4, normalize=True, hidden=[8])
    i = ItemTower(s, dim=4, normalize=True)
    b = {"user": torch.arange(5), "bag": torch.tensor([[1, PAD]] * 5)}
    torch.testing.assert_close(q(b).norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(i.embed_all().norm(dim=-1), torch.ones(7))


def test_no_input_parts_raises():
    with pytest.raises(ConfigError, match="Fix:"):
        QueryTower(schema(), use_id=False, use_bag=False, use_features=False)


def test_missing_bag_raises():
    with pytest.raises(ConfigError, match="max_history.*Fix:"):
        QueryTower(schema(), dim=4)({"user": torch.tensor([0])})


def test_mismatched_tower_dims_caught_by_module():
    from recsys.model.module import TwoTowerModule

    with pytest.raises(ConfigError, match="dim=8.*dim=16.*Fix:"):
        TwoTowerModule(schema=schema(), query_tower=partial(QueryTower, dim=8),
                       item_tower=partial(ItemTower, dim=16))


def test_bag_dropout_drops_ids_in_training_only():
    s = schema()
    t = QueryTower(s, dim=4, use_id=False, use_bag=True, use_features=False, sparse=False, bag_dropout=0.5)
    batch = {"user": torch.zeros(64, dtype=torch.long),
             "bag": torch.arange(8).repeat(64, 1) % s.bag_size}  # (64, 8), same bag for all rows
    t.eval()
    q_eval = t(batch)
    assert torch.allclose(q_eval, q_eval[0].expand_as(q_eval))  # evaluation pools the whole bag
    t.train()
    torch.manual_seed(0)
    q_train = t(batch)
    # dropped ids change the mean: rows differ from each other and from the full bag
    assert not torch.allclose(q_train, q_eval)
    assert (q_train - q_train[0]).abs().sum(1).gt(1e-6).any()
    t.bag_dropout = 0.0
    assert torch.allclose(t(batch), q_eval)  # dropout 0: training equals evaluation


def test_bag_dropout_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="bag_dropout=1.0"):
        QueryTower(schema(), dim=4, bag_dropout=1.0)


def test_item_bias_is_one_more_inner_product_coordinate():
    s = schema()
    q = QueryTower(s, dim=4, use_id=True, use_bag=False, use_features=False, sparse=False, normalize=True,
                   item_bias=True)
    it = ItemTower(s, dim=4, sparse=False, normalize=True, item_bias=True)
    xq = q({"user": torch.tensor([0, 1])})  # (2, 5)
    xb = it.embed_all()  # (7, 5)
    assert xq.shape == (2, 5) and xb.shape == (7, 5)
    assert torch.equal(xq[:, -1], torch.ones(2))  # the constant that multiplies b_j
    torch.testing.assert_close(xq[:, :4].norm(dim=1), torch.ones(2))  # normalisation leaves it out
    assert torch.equal(xb[:, -1], torch.zeros(7))  # zero-initialised: no effect until trained
    before = xq @ xb.T  # (2, 7)
    with torch.no_grad():
        it.bias_emb.weight[3] = 0.7
    after = xq @ it.embed_all().T
    expect = before.clone()
    expect[:, 3] += 0.7  # score = q . v_j + b_j
    torch.testing.assert_close(after, expect)


def test_item_bias_on_one_tower_only_is_a_config_error():
    from recsys.model.module import TwoTowerModule

    with pytest.raises(ConfigError, match="item_bias=True.*item_bias=False.*Fix:"):
        TwoTowerModule(schema=schema(), query_tower=partial(QueryTower, dim=4, item_bias=True),
                       item_tower=partial(ItemTower, dim=4), eval_ks=[5])


def test_bag_weights_start_as_the_mean_and_reweight_the_pool():
    from recsys.model.towers import QueryTower
    from recsys.schema import Schema

    s = Schema(n_users=3, n_items=6, bag_size=6)
    plain = QueryTower(s, dim=4, use_id=False, sparse=False)
    weighted = QueryTower(s, dim=4, use_id=False, sparse=False, bag_weights=True)
    weighted.bag_emb.weight.data.copy_(plain.bag_emb.weight.data)
    batch = {"user": torch.tensor([0, 1]), "bag": torch.tensor([[0, 1, 6], [2, 3, 4]])}  # 6 = padding
    torch.testing.assert_close(weighted(batch), plain(batch))  # zero log-weights: the plain mean
    with torch.no_grad():
        weighted.bag_logw.weight[1] = 2.0  # id 1 counts e^2 times as much as id 0
    E = plain.bag_emb.weight.data
    w = torch.tensor([0.0, 2.0]).exp()  # log-weights of ids 0 and 1
    torch.testing.assert_close(weighted(batch)[0], (w[0] * E[0] + w[1] * E[1]) / w.sum())
    torch.testing.assert_close(weighted(batch)[1], plain(batch)[1])  # a bag without id 1 is unchanged
    weighted(batch).sum().backward()
    assert weighted.bag_logw.weight.grad[6].abs().sum() == 0  # padding gets no weight and no gradient
    assert weighted.bag_logw.weight.grad[1].abs().sum() > 0


def test_residual_mlp_starts_as_the_linear_tower_and_then_adds_to_it():
    from recsys.model.towers import QueryTower
    from recsys.schema import Schema

    s = Schema(n_users=3, n_items=6, bag_size=6)
    linear = QueryTower(s, dim=4, sparse=False)
    res = QueryTower(s, dim=4, sparse=False, hidden=[8], residual=True)
    res.load_state_dict(linear.state_dict(), strict=False)  # same id / bag tables
    batch = {"user": torch.tensor([0, 1]), "bag": torch.tensor([[0, 1, 6], [2, 3, 4]])}
    torch.testing.assert_close(res(batch), linear(batch))  # zero last layer: the summed parts
    with torch.no_grad():
        res.mlp[-1].bias.fill_(0.5)
    torch.testing.assert_close(res(batch), linear(batch) + 0.5)  # the MLP adds to the parts
    plain = QueryTower(s, dim=4, sparse=False, hidden=[8])
    plain.load_state_dict(linear.state_dict(), strict=False)
    assert not torch.allclose(plain(batch), linear(batch))  # without residual the MLP replaces them


def test_part_norm_puts_every_part_on_one_scale():
    import torch.nn.functional as F

    from recsys.model.towers import QueryTower
    from recsys.schema import Schema

    s = Schema(n_users=3, n_items=6, bag_size=6)
    raw = QueryTower(s, dim=4, sparse=False)
    bal = QueryTower(s, dim=4, sparse=False, part_norm=True)
    bal.load_state_dict(raw.state_dict(), strict=False)
    batch = {"user": torch.tensor([0, 1]), "bag": torch.tensor([[0, 1, 6], [2, 3, 4]])}
    u, b = raw.user_emb(batch["user"]), raw.bag_emb(batch["bag"])
    torch.testing.assert_close(raw(batch), u + b)
    torch.testing.assert_close(bal(batch), F.normalize(u, dim=-1) + F.normalize(b, dim=-1))
    with torch.no_grad():
        bal.part_scale[0] = 0.0  # the learned scale can switch the id part off
    torch.testing.assert_close(bal(batch), F.normalize(b, dim=-1))


@pytest.mark.parametrize("sparse", [False, True])
def test_bag_mean_equals_embedding_bag_in_values_and_gradients(sparse):
    # recsys.model.pooling.bag_mean replaces nn.EmbeddingBag(mode="mean", padding_idx) on the
    # towers' hot path: same output, same weight gradient (dense or sparse), empty rows zero,
    # and ``keep`` leaves entries out exactly as turning them into padding would
    from torch import nn

    from recsys.model.pooling import bag_mean

    torch.manual_seed(0)
    N, H, B = 30, 8, 12
    emb = nn.EmbeddingBag(N + 1, 5, mode="mean", padding_idx=N, sparse=sparse)
    ids = torch.randint(0, N, (B, H))
    ids[torch.arange(H)[None] >= torch.randint(0, H + 1, (B,))[:, None]] = N  # ragged, some rows empty
    ids[0] = N  # an all-padding row
    ids[1, :4] = 3  # a repeated id inside one bag
    g = torch.randn(B, 5)
    ref = emb(ids)
    ref.backward(g)
    g_ref, emb.weight.grad = emb.weight.grad, None
    out = bag_mean(emb, ids)
    out.backward(g)
    torch.testing.assert_close(out, ref)
    assert (out[0] == 0).all()
    assert emb.weight.grad.is_sparse == sparse
    torch.testing.assert_close(emb.weight.grad.to_dense(), g_ref.to_dense())
    assert (emb.weight.grad.to_dense()[N] == 0).all()  # the padding row learns nothing
    keep = torch.rand(B, H) < 0.6
    torch.testing.assert_close(bag_mean(emb, ids, keep), emb(ids.masked_fill(~keep, N)))
    assert not torch.allclose(bag_mean(emb, ids, keep), out)
