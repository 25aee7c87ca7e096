"""recsys.optim.SparseAdam: the same update as torch.optim.SparseAdam, bit for bit."""

from __future__ import annotations

import copy

import torch

from recsys.optim import SparseAdam


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
