"""recsys.model.optim: SparseAdam gives torch.optim.SparseAdam's update bit for bit; RowWiseAdagrad
matches a hand-computed / dense reference and touches only the batch's rows."""

from __future__ import annotations

import copy

import pytest
import torch

from recsys.model.optim import RowWiseAdagrad, SparseAdam


def _pair(n=500, d=8):
    torch.manual_seed(0)
    a, b = torch.nn.Embedding(n, d, sparse=True), torch.nn.Embedding(n, d, sparse=True)
    b.load_state_dict(a.state_dict())
    return a, b


def test_sparse_adam_equals_torch_bitwise():
    a, b = _pair()
    oa = torch.optim.SparseAdam(a.parameters(), lr=1e-2)
    ob = SparseAdam(b.parameters(), lr=1e-2)
    for _ in range(20):
        ids = torch.randint(500, (300,))  # repeated ids: the gradient needs coalescing
        for emb, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            (emb(ids) ** 2).sum().backward()
            opt.step()
    assert torch.equal(a.weight, b.weight)
    sa, sb = oa.state[a.weight], ob.state[b.weight]
    assert sa["step"] == sb["step"] == 20
    assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_sparse_adam_state_dict_interchangeable():
    a, b = _pair()
    oa = torch.optim.SparseAdam(a.parameters(), lr=1e-2)
    for _ in range(3):
        oa.zero_grad()
        a(torch.tensor([1, 2, 2, 7])).sum().backward()
        oa.step()
    b.load_state_dict(a.state_dict())
    ob = SparseAdam(b.parameters(), lr=1e-2)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # torch's state resumes in ours
    ids = torch.tensor([2, 3, 7])
    for emb, opt in ((a, oa), (b, ob)):
        opt.zero_grad()
        emb(ids).sum().backward()
        opt.step()
    assert torch.equal(a.weight, b.weight)


def test_sparse_adam_untouched_rows_unchanged():
    _, b = _pair()
    before = b.weight.detach().clone()
    opt = SparseAdam(b.parameters(), lr=1e-1)
    b(torch.tensor([4, 9])).sum().backward()
    opt.step()
    changed = (b.weight != before).any(1).nonzero().ravel().tolist()
    assert changed == [4, 9], changed


def test_rowwise_adagrad_by_hand():
    # one 2-d row, lr 0.5, eps 0: step 1 g = (3, 4): s = (9 + 16) / 2 = 12.5,
    # w -= 0.5 * g / sqrt(12.5); step 2 g = (1, 1): s = 12.5 + 1 = 13.5
    emb = torch.nn.Embedding(3, 2, sparse=True)
    with torch.no_grad():
        emb.weight.zero_()
    opt = RowWiseAdagrad(emb.parameters(), lr=0.5, eps=0.0)
    for g in ((3.0, 4.0), (1.0, 1.0)):
        opt.zero_grad()
        (emb(torch.tensor([1])) * torch.tensor([g])).sum().backward()  # d/dw = g
        opt.step()
    w1 = -0.5 * torch.tensor([3.0, 4.0]) / 12.5**0.5
    w2 = w1 - 0.5 * torch.tensor([1.0, 1.0]) / 13.5**0.5
    torch.testing.assert_close(emb.weight[1], w2)
    assert (emb.weight[[0, 2]] == 0).all()
    state = opt.state[emb.weight]["sum"]
    assert state.shape == (3,)
    torch.testing.assert_close(state, torch.tensor([0.0, 13.5, 0.0]))


def _rowwise_reference(w, s, grads, lr, eps):
    """Dense loop over rows: s_i += mean(g_i^2), w_i -= lr g_i / (sqrt(s_i) + eps) if touched."""
    w, s = w.clone(), s.clone()
    for G in grads:  # (N, D) dense gradient; all-zero rows are untouched rows
        for i in range(len(w)):
            if G[i].any():
                s[i] += G[i].pow(2).mean()
                w[i] -= lr * G[i] / (s[i].sqrt() + eps)
    return w, s


@pytest.mark.parametrize("bag", [False, True])
def test_rowwise_adagrad_equals_dense_reference_and_touches_only_batch_rows(bag):
    torch.manual_seed(0)
    n, d = 50, 4
    emb = (torch.nn.EmbeddingBag(n, d, mode="sum", sparse=True) if bag
           else torch.nn.Embedding(n, d, sparse=True))
    w0 = emb.weight.detach().clone()
    opt = RowWiseAdagrad(emb.parameters(), lr=0.1, eps=1e-8)
    grads, touched = [], set()
    for _ in range(5):
        ids = torch.randint(0, 20, (12,))  # rows >= 20 never in a batch; repeats coalesce
        opt.zero_grad()
        out = emb(ids.view(3, 4)) if bag else emb(ids)
        (out * torch.randn_like(out)).sum().backward()
        grads.append(emb.weight.grad.to_dense().clone())
        touched |= set(ids.tolist())
        opt.step()
    w_ref, s_ref = _rowwise_reference(w0, torch.zeros(n), grads, 0.1, 1e-8)
    torch.testing.assert_close(emb.weight.detach(), w_ref)
    torch.testing.assert_close(opt.state[emb.weight]["sum"], s_ref)
    changed = set((emb.weight != w0).any(1).nonzero().ravel().tolist())
    assert changed == touched, (changed, touched)


def test_rowwise_adagrad_dense_gradient_and_state_dict():
    torch.manual_seed(0)
    a, b = torch.nn.Embedding(10, 3), torch.nn.Embedding(10, 3)
    b.load_state_dict(a.state_dict())
    oa = RowWiseAdagrad(a.parameters(), lr=0.1)
    ids = torch.tensor([1, 1, 5])
    oa.zero_grad()
    a(ids).sum().backward()  # dense gradient: rows 1 (twice) and 5 nonzero
    oa.step()
    w_ref, _ = _rowwise_reference(b.weight.detach(), torch.zeros(10), [a.weight.grad], 0.1, 1e-8)
    torch.testing.assert_close(a.weight.detach(), w_ref)
    ob = RowWiseAdagrad(b.parameters(), lr=0.1)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    torch.testing.assert_close(ob.state[b.weight]["sum"], oa.state[a.weight]["sum"])
    with pytest.raises(ValueError, match="Fix:"):
        RowWiseAdagrad(a.parameters(), lr=0.0)


def test_rowwise_adagrad_from_yaml_as_sparse_optimizer():
    from recsys.train.cli import RecsysCLI
    from tests.conftest import config_args

    cli = RecsysCLI(args=[*config_args("synthetic", "inbatch"),
                          "--data.synthetic.n_users=200", "--data.synthetic.n_items=100",
                          "--data.synthetic.n_clusters=4",
                          "--model.query_tower.init_args.sparse=true", "--model.item_tower.init_args.sparse=true",
                          "--model.sparse_optimizer=recsys.model.optim.RowWiseAdagrad",
                          "--model.sparse_optimizer.lr=0.07"], run=False)
    opt = cli.model.configure_optimizers()
    kinds = {type(o).__name__: o for o in opt.optimizers}
    assert "RowWiseAdagrad" in kinds and "SparseAdam" not in kinds, kinds
    assert kinds["RowWiseAdagrad"].param_groups[0]["lr"] == 0.07


def _rowwise_adam_reference(w, grads, lr, b1, b2, eps, momentum):
    """Plain loop: per step, only the rows with a nonzero gradient are updated (lazy)."""
    w = w.clone()
    m, v, t = torch.zeros_like(w), torch.zeros(w.shape[0]), 0
    for g in grads:
        t += 1
        for i in range(w.shape[0]):
            if not g[i].any():
                continue
            v[i] = b2 * v[i] + (1 - b2) * (g[i] ** 2).mean()
            if momentum:
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                num = m[i] / (1 - b1**t)
            else:
                num = g[i]
            w[i] -= lr * num / ((v[i] / (1 - b2**t)).sqrt() + eps)
    return w, m, v


@pytest.mark.parametrize("momentum", [True, False])
def test_rowwise_adam_equals_a_loop_reference_and_is_lazy(momentum):
    from recsys.model.optim import RowWiseAdam

    torch.manual_seed(0)
    n, d = 40, 4
    emb = torch.nn.Embedding(n, d, sparse=True)
    w0 = emb.weight.detach().clone()
    opt = RowWiseAdam(emb.parameters(), lr=0.05, momentum=momentum)
    grads, touched = [], set()
    for _ in range(6):
        ids = torch.randint(0, 15, (10,))  # rows >= 15 never touched; repeats coalesce
        opt.zero_grad()
        out = emb(ids)
        (out * torch.randn_like(out)).sum().backward()
        grads.append(emb.weight.grad.to_dense().clone())
        touched |= set(ids.tolist())
        opt.step()
    w_ref, m_ref, v_ref = _rowwise_adam_reference(w0, grads, 0.05, 0.9, 0.999, 1e-8, momentum)
    torch.testing.assert_close(emb.weight.detach(), w_ref)
    torch.testing.assert_close(opt.state[emb.weight]["exp_avg_sq"], v_ref)
    assert ("exp_avg" in opt.state[emb.weight]) == momentum  # no N x D state without momentum
    if momentum:
        torch.testing.assert_close(opt.state[emb.weight]["exp_avg"], m_ref)
    changed = set((emb.weight != w0).any(1).nonzero().ravel().tolist())
    assert changed == touched
    # the state is one float per row (+ the first moment): the memory saving is real
    assert opt.state[emb.weight]["exp_avg_sq"].shape == (n,)
    b = torch.nn.Embedding(n, d, sparse=True)
    ob = RowWiseAdam(b.parameters(), lr=0.05, momentum=momentum)
    ob.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert ob.state[b.weight]["step"] == 6
    with pytest.raises(ValueError, match="Fix:"):
        RowWiseAdam(emb.parameters(), lr=0.0)


def test_multi_optimizer_shares_the_loaded_param_groups_with_a_scheduler():
    """torch's load_state_dict replaces the group dicts; the wrapper must hand the new ones to
    an LR scheduler, or a resumed run's schedule would no longer reach the optimizer."""
    from recsys.model.optim import MultiOptimizer

    w = torch.nn.Parameter(torch.zeros(3))
    opt = MultiOptimizer([torch.optim.Adam([w], lr=0.1)])
    opt.load_state_dict(MultiOptimizer([torch.optim.Adam([w], lr=0.5)]).state_dict())
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    w.grad = torch.ones(3)
    opt.step()
    sched.step()
    assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25)
