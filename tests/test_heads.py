"""Tests for recsys.model.heads: exact equivalences, logQ on hand-worked examples, masks that
must change the loss, chunked reductions, temperature, streaming frequencies, hard negatives.

Everything runs on a catalogue of N = 7 items and batches of 2-4 examples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recsys.errors import ConfigError
from recsys.model.candidates import LogUniformSampler, PopularitySampler, Sampler, UniformSampler
from recsys.model.chunked import chunked_logsumexp, chunked_softplus_sum
from recsys.model.heads import (
    FullSoftmax,
    HardNegativeSoftmax,
    InBatchSoftmax,
    KnownPositives,
    MultiLabelSigmoid,
    SampledSoftmax,
    StreamingFrequency,
    Temperature,
)
from recsys.model.towers import ItemTower
from recsys.schema import Schema

N, D = 7, 4
# train positives of 5 users over 7 items
TRAIN = {0: [0, 2], 1: [1], 2: [3, 4, 5], 3: [6], 4: [0, 1, 6]}
LOG_KEYS = {"temperature", "pos_logit", "neg_logit", "accidental_hit_rate", "effective_negatives"}


def train_csr() -> sp.csr_matrix:
    rows = [u for u, js in TRAIN.items() for _ in js]
    cols = [j for js in TRAIN.values() for j in js]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(5, N))


def make_schema(counts=None) -> Schema:
    return Schema(n_users=5, n_items=N, bag_size=N, item_counts=counts)


def tower(seed: int = 0, dtype=torch.float64, schema: Schema | None = None) -> ItemTower:
    torch.manual_seed(seed)
    t = ItemTower(schema or make_schema(), dim=D, sparse=False, init_std=0.5)
    return t.to(dtype)


def bound(head, counts=None, known: sp.csr_matrix | None = None):
    head.bind(make_schema(counts), KnownPositives(train_csr() if known is None else known))
    return head


def batch(users, items) -> dict:
    return {"user": torch.tensor(users), "item": torch.tensor(items)}


def query(B: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype).requires_grad_()


def ce(rows: list[list[float]]) -> float:
    """Mean softmax cross-entropy with the positive first: mean(logsumexp(row) - row[0])."""
    return float(np.mean([np.log(np.exp(r).sum()) - r[0] for r in map(np.asarray, rows)]))


class FixedSampler(Sampler):
    """Returns preset candidate ids; log q = log(M p_j) of an underlying popularity proposal."""

    def __init__(self, ids, alpha: float = 1.0):
        super().__init__()
        self.ids, self.alpha = torch.tensor(ids), alpha

    def proposal(self, counts):
        return (counts + 1.0) ** self.alpha

    def sample(self, M, generator=None):
        return self.ids, self.log_q(self.ids, M)


# ---------------------------------------------------------------------------------------
# exact equivalence: sampled softmax over the whole catalogue == full softmax
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 0.3])
def test_sampled_over_all_items_with_uniform_q_equals_full_softmax(T):
    b = batch([0, 1, 2], [2, 1, 2])
    grads, losses = [], []
    for head in (FullSoftmax(temperature=T, chunk=3),
                 SampledSoftmax(UniformSampler(replacement=False), num_negatives=N, temperature=T)):
        bound(head)
        t, q = tower(), query(3)
        loss = head(q, b, t).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append((q.grad, t.item_emb.weight.grad))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0][0], grads[1][0])  # d loss / d q
    torch.testing.assert_close(grads[0][1], grads[1][1])  # d loss / d item embeddings
    # and both equal the textbook formula on the dense (B, N) logit matrix
    t, q = tower(), query(3)
    ref = F.cross_entropy(q @ t.forward_all().T / T, b["item"])
    torch.testing.assert_close(losses[0], ref.detach())


# ---------------------------------------------------------------------------------------
# logQ correction in the heads
# ---------------------------------------------------------------------------------------

def unit_tower(scores: list[float]) -> ItemTower:
    """Item j's embedding is (scores[j], 0, ...), so with q = e_0 the score of j is scores[j]."""
    t = tower()
    with torch.no_grad():
        t.item_emb.weight.zero_()
        t.item_emb.weight[:, 0] = torch.tensor(scores, dtype=t.item_emb.weight.dtype)
    return t


def test_sampled_softmax_logq_sign_and_size():
    # Items 0..6; counts c = [0, 1, 0, 0, 0, 0, 0], proposal p ~ c + 1 = [1, 2, 1, 1, 1, 1, 1] / 8.
    # M = 4 draws land on candidates [1, 2]: expected counts M p = (1, 0.5), log q = (0, -log 2).
    # Positive item 0: M p = 0.5, log q = -log 2. Scores (q = e_0): item 0 -> 2, items 1, 2 -> 1.
    # Corrected logits: pos 2 + log 2, popular item 1: 1 - 0 = 1, rare item 2: 1 + log 2.
    counts = np.array([0, 1, 0, 0, 0, 0, 0])
    t = unit_tower([2, 1, 1, 0, 0, 0, 0])
    q = torch.zeros(1, D, dtype=torch.float64)
    q[0, 0] = 1.0
    b = batch([1], [0])  # user 1's train item is 1: no known positive masked (mask is off)
    head = bound(SampledSoftmax(FixedSampler([1, 2]), num_negatives=4), counts)
    expected = ce([[2 + math.log(2), 1.0, 1 + math.log(2)]])
    assert math.isclose(head(q, b, t).loss.item(), expected, rel_tol=1e-6)
    # the popular candidate is the one pushed down: flipping the sign gives another number
    flipped = ce([[2 - math.log(2), 1.0, 1 - math.log(2)]])
    assert not math.isclose(expected, flipped, rel_tol=1e-3)
    # logq_correction=False: plain logits [2, 1, 1]
    head = bound(SampledSoftmax(FixedSampler([1, 2]), num_negatives=4, logq_correction=False), counts)
    assert math.isclose(head(q, b, t).loss.item(), ce([[2.0, 1.0, 1.0]]), rel_tol=1e-6)


def test_inbatch_static_logq_is_log_B_p():
    # counts c = [2, 0, 0, 0, 0, 0, 0] -> p = (c + 1) / 9 = [3, 1, 1, 1, 1, 1, 1] / 9
    counts = np.array([2, 0, 0, 0, 0, 0, 0])
    head = bound(InBatchSoftmax(logq="static"), counts)
    ids = torch.tensor([0, 1, 2])
    # B = 3: expected counts B p = (1, 1/3, 1/3)
    torch.testing.assert_close(head.candidate_log_q(ids, 3),
                               torch.tensor([0.0, math.log(1 / 3), math.log(1 / 3)]))
    # With all scores 0 the logits are -log q; row b keeps the other columns (diagonal masked):
    #   row 0 (item 0, B p = 1):   [0, log 3, log 3]     -> loss log(1 + 3 + 3)   = log 7
    #   row 1 (item 1, B p = 1/3): [log 3, 0, log 3]     -> loss log(1 + 1/3 + 1) = log(7/3)
    #   row 2 (item 2): the same as row 1
    q = torch.zeros(3, D, dtype=torch.float64)
    loss = head(q, batch([0, 1, 2], [0, 1, 2]), tower()).loss.item()
    assert math.isclose(loss, (math.log(7) + 2 * math.log(7 / 3)) / 3, rel_tol=1e-6)
    # flipped sign would give (log(5/3) + 2 log 5) / 3; no correction gives log 3
    assert not math.isclose(loss, (math.log(5 / 3) + 2 * math.log(5)) / 3, rel_tol=1e-3)
    none = bound(InBatchSoftmax(logq="none"), counts)
    assert math.isclose(none(q, batch([0, 1, 2], [0, 1, 2]), tower()).loss.item(), math.log(3), rel_tol=1e-6)


def test_mixed_negatives_expected_count_is_B_p_plus_M_over_N():
    # p as above ([3, 1, 1, 1, 1, 1, 1] / 9), B = 3 in-batch + M = 7 uniform over N = 7:
    #   item 0: 3 * 3/9 + 7/7 = 2   -> log 2
    #   item 1: 3 * 1/9 + 1   = 4/3 -> log(4/3)
    counts = np.array([2, 0, 0, 0, 0, 0, 0])
    head = bound(InBatchSoftmax(logq="static", num_uniform=7), counts)
    torch.testing.assert_close(head.candidate_log_q(torch.tensor([0, 1]), 3),
                               torch.tensor([math.log(2), math.log(4 / 3)]))
    # the loss uses it: all scores 0, so each row's logits are -log q of its candidates
    b, t = batch([0, 1, 2], [0, 1, 2]), tower()
    torch.manual_seed(5)
    loss = head(torch.zeros(3, D, dtype=torch.float64), b, t).loss.item()
    torch.manual_seed(5)
    cand = torch.cat([b["item"], torch.randint(N, (7,))]).tolist()  # the same uniform draws
    cnt = {0: 2.0}
    rows = []
    for pos in [0, 1, 2]:
        negs = [-math.log(cnt.get(c, 4 / 3)) for c in cand if c != pos]  # own column and dups masked
        rows.append([-math.log(cnt.get(pos, 4 / 3))] + negs)
    assert math.isclose(loss, ce(rows), rel_tol=1e-6)


# ---------------------------------------------------------------------------------------
# accidental hits and known positives: each mask changes the loss, and only when triggered
# ---------------------------------------------------------------------------------------

def sampled_loss(ids, **kw) -> float:
    head = bound(SampledSoftmax(FixedSampler(ids), num_negatives=len(ids), **kw))
    torch.manual_seed(0)
    return head(query(2), batch([0, 1], [0, 1]), tower()).loss.item()


def test_sampled_remove_accidental_hits():
    # user 0: positive 0, user 1: positive 1; candidate 1 is an accidental hit of row 1
    on = sampled_loss([1, 3, 6], remove_accidental_hits=True)
    off = sampled_loss([1, 3, 6], remove_accidental_hits=False)
    assert not math.isclose(on, off, rel_tol=1e-4)
    # masked == the candidate removed for that row, computed by hand
    t, q = tower(), query(2)
    s = (q @ t.forward_all().T).detach().numpy()  # (2, N) scores
    lq = math.log(1 / N * 3)  # uniform-ish proposal with zero counts: M p = 3 / 7 for all
    rows = [[s[0, 0] - lq] + [s[0, c] - lq for c in (1, 3, 6)],
            [s[1, 1] - lq] + [s[1, c] - lq for c in (3, 6)]]
    assert math.isclose(on, ce(rows), rel_tol=1e-6)
    # no hit among the candidates: the flag changes nothing
    assert math.isclose(sampled_loss([3, 4, 6], remove_accidental_hits=True),
                        sampled_loss([3, 4, 6], remove_accidental_hits=False), rel_tol=1e-7)


def test_sampled_mask_known_positives():
    # candidate 2 is a train item of user 0 (TRAIN[0] = [0, 2]) but not the positive
    on = sampled_loss([2, 3, 5], mask_known_positives=True)
    off = sampled_loss([2, 3, 5], mask_known_positives=False)
    assert not math.isclose(on, off, rel_tol=1e-4)
    assert on < off  # one negative fewer for row 0
    # with remove_accidental_hits off, known positives are still masked but the positive
    # itself (candidate 1 for row 1) is not
    a = sampled_loss([1, 2, 3], mask_known_positives=True, remove_accidental_hits=False)
    b = sampled_loss([1, 2, 3], mask_known_positives=True, remove_accidental_hits=True)
    assert a > b
    # no known positive among the candidates: unchanged
    assert math.isclose(sampled_loss([3, 4, 6], mask_known_positives=True),
                        sampled_loss([3, 4, 6], mask_known_positives=False), rel_tol=1e-7)


def inbatch_out(users, items, **kw):
    head = bound(InBatchSoftmax(logq="none", **kw))
    return head(query(len(items)), batch(users, items), tower())


def test_inbatch_mask_duplicates():
    # items [0, 0, 3]: rows 0 and 1 share item 0, each is a duplicate in the other's row
    on = inbatch_out([0, 4, 2], [0, 0, 3], mask_duplicates=True)
    off = inbatch_out([0, 4, 2], [0, 0, 3], mask_duplicates=False)
    assert not math.isclose(on.loss.item(), off.loss.item(), rel_tol=1e-4)
    # by hand: rows 0 and 1 keep only column 2, row 2 keeps columns 0 and 1
    t, q = tower(), query(3)
    s = (q @ t(torch.tensor([0, 0, 3])).T).detach().numpy()  # (3, 3) in-batch scores
    assert math.isclose(on.loss.item(), ce([[s[0, 0], s[0, 2]], [s[1, 1], s[1, 2]],
                                            [s[2, 2], s[2, 0], s[2, 1]]]), rel_tol=1e-6)
    # 2 accidental hits among the B (B - 1) = 6 real candidates; the diagonal is not one
    assert math.isclose(on.logs["accidental_hit_rate"].item(), 2 / 6, rel_tol=1e-6)
    assert off.logs["accidental_hit_rate"].item() == 0.0
    assert on.logs["effective_negatives"].item() == pytest.approx(4 / 3)
    # distinct items: nothing to mask, the flag changes nothing, the rate is 0 either way
    on = inbatch_out([0, 1, 2], [0, 1, 3], mask_duplicates=True)
    off = inbatch_out([0, 1, 2], [0, 1, 3], mask_duplicates=False)
    assert math.isclose(on.loss.item(), off.loss.item(), rel_tol=1e-7)
    assert on.logs["accidental_hit_rate"].item() == 0.0 == off.logs["accidental_hit_rate"].item()
    assert on.logs["effective_negatives"].item() == 2.0


def test_inbatch_mask_known_positives():
    # users [0, 1], items [0, 2]: item 2 is a train item of user 0 -> masked in row 0
    on = inbatch_out([0, 1], [0, 2], mask_known_positives=True)
    off = inbatch_out([0, 1], [0, 2], mask_known_positives=False)
    assert on.loss.item() < off.loss.item()
    assert on.logs["accidental_hit_rate"].item() == pytest.approx(1 / 2)
    assert off.logs["accidental_hit_rate"].item() == 0.0
    # users [1, 3], items [1, 6]: no cross-row known positive -> unchanged
    on = inbatch_out([1, 3], [1, 6], mask_known_positives=True)
    off = inbatch_out([1, 3], [1, 6], mask_known_positives=False)
    assert math.isclose(on.loss.item(), off.loss.item(), rel_tol=1e-7)
    assert on.logs["accidental_hit_rate"].item() == 0.0


def test_known_positives_lookup():
    kp = KnownPositives(train_csr())
    got = kp.contains(torch.tensor([0, 2]), torch.tensor([0, 1, 2, 5]))
    assert got.tolist() == [[True, False, True, False], [False, False, False, True]]
    empty = KnownPositives(sp.csr_matrix((5, N), dtype=np.float32))
    assert not empty.contains(torch.tensor([0]), torch.tensor([0, 1])).any()
    assert not empty.contains(torch.tensor([0]), torch.tensor([[0, 1]])).any()


@pytest.mark.parametrize("bitmap_limit,dense_limit", [(0, 0), (1 << 26, 0), (0, 1 << 25)])
def test_known_positives_every_path_equals_a_dense_oracle(bitmap_limit, dense_limit):
    # dense_limit 0: the per-pair paths (per-row: the sorted-key search, then the bitmap);
    # else the whole train matrix as a dense table
    rng = np.random.default_rng(0)
    U, M = 40, 30
    dense = rng.random((U, M)) < 0.2
    dense[3] = False  # a user without train items
    kp = KnownPositives(sp.csr_matrix(dense.astype(np.float32)))
    kp.bitmap_limit, kp.dense_limit = bitmap_limit, dense_limit
    users = torch.from_numpy(rng.integers(0, U, 64))
    users[:2] = 3
    shared = torch.from_numpy(rng.integers(0, M, 50))  # with repeated candidates
    per_row = torch.from_numpy(rng.integers(0, M, (64, 7)))
    want_shared = dense[users.numpy()][:, shared.numpy()]
    want_rows = np.take_along_axis(dense[users.numpy()], per_row.numpy(), axis=1)
    assert kp.contains(users, shared).numpy().tolist() == want_shared.tolist()
    assert kp.contains(users, per_row).numpy().tolist() == want_rows.tolist()
    assert (kp._col == -1).all()  # the scratch column table is left clean
    assert (kp._dense is not None) == (dense_limit > 0)
    # holds: True only when every pair is known and the dense table can check it
    pos_u, pos_i = np.nonzero(dense)
    assert kp.holds(torch.from_numpy(pos_u), torch.from_numpy(pos_i)) == (dense_limit > 0)
    assert not kp.holds(torch.tensor([3]), torch.tensor([0]))  # user 3 has no train items


def test_duplicates_of_known_positives_are_masked_once_by_the_known_table():
    # accidental_hits skips the duplicate comparison when every row's positive is a known pair
    # (its duplicates are then known positives): the mask must be the same either way, and
    # still include the duplicates when a positive is not a train pair
    from recsys.model.candidates import accidental_hits

    users, items = torch.tensor([0, 4, 2, 0]), torch.tensor([0, 0, 3, 2])  # train pairs, item 0 twice
    full = KnownPositives(train_csr())
    per_pair = KnownPositives(train_csr())
    per_pair.dense_limit = 0  # no dense table: holds() is False, the comparison runs
    assert full.holds(users, items) and not per_pair.holds(users, items)
    a = accidental_hits(users, items, items, full, duplicates=True)
    b = accidental_hits(users, items, items, per_pair, duplicates=True)
    assert torch.equal(a, b) and a[1, 0] and a[0, 1]  # rows 0 and 1 share item 0
    # user 1 never had item 3: not a train pair, so the duplicate comparison must still run
    users2, items2 = torch.tensor([1, 2]), torch.tensor([3, 3])
    assert not full.holds(users2, items2)
    assert accidental_hits(users2, items2, items2, full, duplicates=True)[0, 1]


# ---------------------------------------------------------------------------------------
# chunked reductions
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 3, N, N + 5])
def test_chunked_logsumexp_equals_dense(chunk):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=torch.float64)  # non-uniform upstream gradient
    out = chunked_logsumexp(q, v, chunk)
    ref = torch.logsumexp(q @ v.T, dim=1)
    torch.testing.assert_close(out, ref)
    gq, gv = torch.autograd.grad((out * w).sum(), (q, v))
    rq, rv = torch.autograd.grad((ref * w).sum(), (q, v))
    torch.testing.assert_close(gq, rq)
    torch.testing.assert_close(gv, rv)


@pytest.mark.parametrize("chunk", [1, 3, N, N + 5])
def test_chunked_softplus_sum_equals_dense(chunk):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=torch.float64)
    out = chunked_softplus_sum(q, v, b, chunk)
    ref = F.softplus(q @ v.T + b).sum(1)
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad((out * w).sum(), (q, v, b))
    exp = torch.autograd.grad((ref * w).sum(), (q, v, b))
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e)


def test_chunked_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, v: chunked_logsumexp(q, v, 2), (q, v))
    assert torch.autograd.gradcheck(lambda q, v, b: chunked_softplus_sum(q, v, b, 2), (q, v, b))


def test_chunk_must_be_positive():
    with pytest.raises(ConfigError, match="Fix:"):
        chunked_logsumexp(torch.zeros(1, 2), torch.zeros(3, 2), 0)


# ---------------------------------------------------------------------------------------
# multi-label sigmoid
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos_weight", [1.0, 4.0])
def test_sigmoid_full_equals_dense_bce(pos_weight):
    head = bound(MultiLabelSigmoid(temperature=0.5, chunk=3, pos_weight=pos_weight)).double()
    with torch.no_grad():
        head.bias.fill_(0.3)
    users = [0, 2, 4]
    b = batch(users, [0, 3, 6])
    t, q = tower(), query(3)
    loss = head(q, b, t).loss
    got = torch.autograd.grad(loss, (q, t.item_emb.weight, head.bias))
    t2, q2 = tower(), query(3)
    bias = head.bias.detach().clone().requires_grad_()
    Y = torch.tensor(train_csr()[users].toarray(), dtype=torch.float64)  # (B, N) multi-hot
    logits = q2 @ t2.forward_all().T / 0.5 + bias  # (B, N)
    ref = F.binary_cross_entropy_with_logits(logits, Y, reduction="sum",
                                             pos_weight=torch.tensor(pos_weight, dtype=torch.float64)) / 3
    exp = torch.autograd.grad(ref, (q2, t2.item_emb.weight, bias))
    torch.testing.assert_close(loss, ref)
    if pos_weight != 1.0:  # the weight changes the loss
        plain = bound(MultiLabelSigmoid(temperature=0.5, chunk=3)).double()
        with torch.no_grad():
            plain.bias.fill_(0.3)
        assert not torch.isclose(plain(q, b, t).loss, loss)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e)


def sigmoid_sampled_ref(head, q, t, users, items, cand, w):
    """softplus(-l+) + w * sum over candidates that are neither the positive nor known."""
    kp = KnownPositives(train_csr())
    l_pos = (q * t(torch.tensor(items))).sum(-1) + head.bias
    l_neg = q @ t(cand).T + head.bias  # (B, k)
    drop = kp.contains(torch.tensor(users), cand) | (cand[None, :] == torch.tensor(items)[:, None])
    return (F.softplus(-l_pos) + w * (F.softplus(l_neg) * ~drop).sum(1)).mean()


def test_sigmoid_sampled_weight_and_known_positive_dropping():
    k = 5
    head = bound(MultiLabelSigmoid(num_negatives=k)).double()
    users, items = [0, 2], [0, 3]
    t, q = tower(), query(2)
    torch.manual_seed(11)
    out = head(q, batch(users, items), t)
    torch.manual_seed(11)
    cand = torch.randint(N, (k,))  # the same draws
    kp = KnownPositives(train_csr())
    assert kp.contains(torch.tensor(users), cand).any(), "pick a seed whose draws hit a known positive"
    ref = sigmoid_sampled_ref(head, q, t, users, items, cand, N / k)
    torch.testing.assert_close(out.loss, ref)
    # pos_weight multiplies the positive's term
    head_p = bound(MultiLabelSigmoid(num_negatives=k, pos_weight=3.0)).double()
    torch.manual_seed(11)
    out_p = head_p(q, batch(users, items), t)
    l_pos = (q * t(torch.tensor(items))).sum(-1) + head_p.bias
    torch.testing.assert_close(out_p.loss, ref + 2.0 * F.softplus(-l_pos).mean())
    # an explicit negative_weight is used as given
    head1 = bound(MultiLabelSigmoid(num_negatives=k, negative_weight=1.0)).double()
    torch.manual_seed(11)
    out1 = head1(q, batch(users, items), t)
    torch.testing.assert_close(out1.loss, sigmoid_sampled_ref(head1, q, t, users, items, cand, 1.0))


def test_sigmoid_sampled_negative_term_is_unbiased():
    # With many uniform draws the weighted sampled negative term converges to the full
    # one, sum over j not in P(u) of softplus(l_j): the default weight must be N / k.
    k = 40_000
    head = bound(MultiLabelSigmoid(num_negatives=k)).double()
    users, items = [0, 2], [0, 3]
    t, q = tower(), query(2)
    torch.manual_seed(0)
    out = head(q, batch(users, items), t)
    with torch.no_grad():
        l_all = q @ t.forward_all().T  # bias 0
        Y = torch.tensor(train_csr()[users].toarray(), dtype=torch.bool)
        full_neg = (F.softplus(l_all) * ~Y).sum(1).mean()
        pos_term = F.softplus(-(q * t(torch.tensor(items))).sum(-1)).mean()
    assert math.isclose((out.loss.detach() - pos_term).item(), full_neg.item(), rel_tol=0.02)


# ---------------------------------------------------------------------------------------
# temperature
# ---------------------------------------------------------------------------------------

def test_temperature_value_and_use():
    assert math.isclose(Temperature(0.25)().item(), 0.25, rel_tol=1e-6)
    assert not Temperature(0.25).log_t.requires_grad
    # FullSoftmax at T equals FullSoftmax at 1 on q / T
    t, q = tower(), query(2)
    b = batch([0, 1], [0, 1])
    a = bound(FullSoftmax(temperature=0.25))(q, b, t).loss
    c = bound(FullSoftmax(temperature=1.0))(q / 0.25, b, t).loss
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("head_cls", [FullSoftmax, SampledSoftmax, InBatchSoftmax, MultiLabelSigmoid])
def test_learnable_temperature_gets_a_gradient(head_cls):
    head = bound(head_cls(temperature=0.5, learn_temperature=True)).double()
    assert isinstance(head.temperature.log_t, torch.nn.Parameter)
    head(query(3), batch([0, 1, 2], [0, 1, 3]), tower()).loss.backward()
    g = head.temperature.log_t.grad
    assert g is not None and g.abs().item() > 0


def test_temperature_is_clamped():
    T = Temperature(1.0, learnable=True, min_value=0.1, max_value=2.0)
    with torch.no_grad():
        T.log_t.fill_(math.log(50.0))
    assert math.isclose(T().item(), 2.0, rel_tol=1e-6)
    T().backward()
    assert T.log_t.grad.item() == 0.0  # outside the range: no gradient
    with torch.no_grad():
        T.log_t.fill_(math.log(1e-3))
    assert math.isclose(T().item(), 0.1, rel_tol=1e-6)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), 1e-4, 100.0])
def test_bad_temperature_raises(value):
    with pytest.raises(ConfigError, match="Fix:"):
        Temperature(value)
    with pytest.raises(ConfigError, match="Fix:"):
        FullSoftmax(temperature=value)


# ---------------------------------------------------------------------------------------
# streaming frequency (Yi et al. 2019)
# ---------------------------------------------------------------------------------------

def test_streaming_frequency_converges():
    # item 0 in every batch, item 1 in every 4th: expected counts per batch 1 and 0.25
    sf = StreamingFrequency(3, alpha=0.05)
    for step in range(1, 801):
        ids = [0, 1] if step % 4 == 0 else [0]
        sf.update(torch.tensor(ids))
    counts = sf.log_count(torch.tensor([0, 1])).exp()
    assert counts[0].item() == pytest.approx(1.0, rel=0.02)
    assert counts[1].item() == pytest.approx(0.25, rel=0.05)


def test_streaming_head_updates_only_in_training():
    head = bound(InBatchSoftmax(logq="streaming", streaming_alpha=0.5))
    b = batch([0, 1], [0, 1])
    head.train()
    head(query(2), b, tower())
    assert head.streaming.step.item() == 1
    head.eval()
    head(query(2), b, tower())
    assert head.streaming.step.item() == 1


# ---------------------------------------------------------------------------------------
# hard negatives
# ---------------------------------------------------------------------------------------

def hard_head(**kw) -> HardNegativeSoftmax:
    return bound(HardNegativeSoftmax(index="flat", **kw))


def test_hard_negatives_exclude_known_positives_and_the_positive():
    head = hard_head(num_hard=3)
    t = tower()
    head.miner.refresh(t.embed_all())
    users, items = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3, 5])  # item 5 is not in TRAIN[4]
    hard = head.mine(query(4), users, items)  # (B, K)
    assert hard.shape == (4, 3) and (hard >= 0).all()
    for u, i, row in zip(users.tolist(), items.tolist(), hard.tolist()):
        assert not set(row) & set(TRAIN[u]), (u, row)
        assert i not in row
    # they are the top 3 by score among the remaining items (exact on a flat index)
    s = (query(4) @ t.forward_all().T).detach()
    for r, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        s[r, TRAIN[u] + [i]] = -math.inf
    assert torch.equal(hard, s.topk(3, dim=1).indices)


def test_hard_negatives_skip_top():
    t = tower()
    full = hard_head(num_hard=4)
    skip = hard_head(num_hard=2, skip_top=2)
    full.miner.refresh(t.embed_all())
    skip.miner.refresh(t.embed_all())
    users, items = torch.tensor([1, 3]), torch.tensor([1, 6])
    a, b = full.mine(query(2), users, items), skip.mine(query(2), users, items)
    assert torch.equal(b, a[:, 2:4])


def test_hard_negatives_pad_when_few_items_remain():
    # user 4 has 3 train items; N - 3 = 4 remain, so K = 6 pads 2 with -1 (masked, not hits)
    head = hard_head(num_hard=6)
    t = tower()
    out = head(query(1), batch([4], [0]), t)
    hard = head.mine(query(1), torch.tensor([4]), torch.tensor([0]))
    assert (hard[0, 4:] == -1).all() and (hard[0, :4] >= 0).all()
    assert torch.isfinite(out.loss)
    assert out.logs["accidental_hit_rate"].item() == 0.0
    assert out.logs["effective_negatives"].item() == 4.0


def test_hard_refresh_rebuilds():
    head = hard_head(num_hard=2)
    t = tower()
    head.train()
    head(query(2), batch([0, 1], [0, 1]), t)  # the first forward builds the index itself
    r0, n0 = head.miner.retriever, head.miner.refresh_count
    assert r0 is not None and n0 == 1 and head.miner.steps_since_refresh == 1
    head(query(2), batch([0, 1], [0, 1]), t)
    assert head.miner.steps_since_refresh == 2 and head.miner.retriever is r0
    # new embeddings -> refresh -> a new index that reflects them
    with torch.no_grad():
        t.item_emb.weight.mul_(-1)
    head.miner.refresh(t.embed_all())
    assert head.miner.retriever is not r0 and head.miner.refresh_count == 2 and head.miner.steps_since_refresh == 0
    users, items = torch.tensor([1]), torch.tensor([1])
    s = (query(1) @ t.forward_all().T).detach()
    s[0, 1] = -math.inf
    assert torch.equal(head.mine(query(1), users, items), s.topk(2, dim=1).indices)


def test_hard_refresh_callback_in_a_tiny_fit(tmp_path):
    import lightning as L

    from recsys.data.datamodule import InteractionDataModule
    from recsys.model.module import TwoTowerModule

    dm = InteractionDataModule(dataset="synthetic", root=str(tmp_path), batch_size=32, max_history=5,
                               synthetic={"n_users": 200, "n_items": 100, "n_clusters": 4})
    head = HardNegativeSoftmax(num_hard=4, refresh_every=2, index="flat")
    model = TwoTowerModule(schema=dm.schema, head=head)
    counts = []  # (step, refreshes so far) after every step

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            counts.append((batch_idx, head.miner.refresh_count))

    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                        callbacks=[Record()])
    trainer.fit(model, datamodule=dm)
    steps = [s for i, (s, n) in enumerate(counts) if n > (counts[i - 1][1] if i else 0)]
    assert steps == [0, 2, 4]  # before the first step, then every refresh_every = 2 steps
    assert head.miner.refresh_count == 3


def test_hard_miner_state_travels_in_the_state_dict():
    # the index a checkpoint restores is the one it was mining from, not one of the new weights
    head, t = hard_head(num_hard=3), tower()
    head.miner.refresh(t.embed_all())
    users, items = torch.tensor([0, 2, 4]), torch.tensor([0, 3, 5])
    before = head.mine(query(3), users, items)
    state = head.state_dict()
    assert state["miner._extra_state"]["xb"].shape == (N, D)
    other = hard_head(num_hard=3)
    other.load_state_dict(state)
    assert other.miner.built() and other.miner.refresh_count == 1
    assert torch.equal(other.mine(query(3), users, items), before)
    empty = hard_head(num_hard=3)
    empty.load_state_dict(hard_head(num_hard=3).state_dict())  # no index yet: nothing restored
    assert not empty.miner.built()


# ---------------------------------------------------------------------------------------
# every head: forward + backward on a tiny batch, the common logs
# ---------------------------------------------------------------------------------------

HEADS = {
    "full": lambda: FullSoftmax(chunk=3),
    "sigmoid-full": lambda: MultiLabelSigmoid(chunk=3),
    "sigmoid-sampled": lambda: MultiLabelSigmoid(num_negatives=4),
    "sampled-uniform": lambda: SampledSoftmax(UniformSampler(), num_negatives=5),
    "sampled-pop": lambda: SampledSoftmax(PopularitySampler(0.75), num_negatives=5, mask_known_positives=True),
    "sampled-loguniform": lambda: SampledSoftmax(LogUniformSampler(), num_negatives=5),
    "inbatch-static": lambda: InBatchSoftmax(),
    "inbatch-streaming": lambda: InBatchSoftmax(logq="streaming"),
    "inbatch-mixed": lambda: InBatchSoftmax(num_uniform=3, mask_known_positives=True),
    "hard": lambda: HardNegativeSoftmax(num_hard=2, index="flat", num_uniform=2),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_forward_backward_and_logs(name):
    head = bound(HEADS[name](), counts=np.array([5, 1, 0, 3, 2, 0, 1]))
    head.train()
    t = tower(dtype=torch.float32)
    q = query(4, dtype=torch.float32)
    out = head(q, batch([0, 1, 2, 3], [2, 1, 4, 6]), t)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert t.item_emb.weight.grad is not None and t.item_emb.weight.grad.abs().sum() > 0
    assert LOG_KEYS <= set(out.logs), LOG_KEYS - set(out.logs)
    for k, v in out.logs.items():
        assert torch.as_tensor(v).numel() == 1 and math.isfinite(float(v)), (k, v)
    assert 0.0 <= float(out.logs["accidental_hit_rate"]) <= 1.0
    assert float(out.logs["effective_negatives"]) >= 1.0


def test_heads_work_without_item_counts():
    # a hand-built Schema has item_counts=None: samplers and logQ fall back to uniform
    for head in (SampledSoftmax(UniformSampler()), SampledSoftmax(PopularitySampler(), num_negatives=3),
                 InBatchSoftmax()):
        bound(head, counts=None)
        out = head(query(2), batch([0, 1], [0, 1]), tower())
        assert torch.isfinite(out.loss)


def test_hard_ivf_cells_reused_between_retrains():
    # retrain_every=2: refreshes 0, 2, 4 train k-means, 1 and 3 re-add the new embeddings to
    # the previous cells. Moving the embeddings between refreshes makes retrained cells differ.
    head = bound(HardNegativeSoftmax(num_hard=2, index="ivf", retrain_every=2,
                                     index_params={"nlist": 3, "nprobe": 3, "train_size": 7}))
    t = tower()
    cells = []
    for _ in range(5):
        head.miner.refresh(t.embed_all())
        cells.append(head.miner.centroids.copy())
        with torch.no_grad():
            t.item_emb.weight.add_(torch.randn_like(t.item_emb.weight))
    assert head.miner.refresh_count == 5 and cells[0].shape == (3, D)
    np.testing.assert_array_equal(cells[1], cells[0])
    np.testing.assert_array_equal(cells[3], cells[2])
    assert not np.array_equal(cells[2], cells[1]) and not np.array_equal(cells[4], cells[3])
    head.miner.refresh(t.embed_all(), retrain=False)  # explicit: keep the cells (e.g. on resume)
    np.testing.assert_array_equal(head.miner.centroids, cells[4])
    # mining from reused cells: nprobe = nlist scans everything, so it is the exact top-2
    # with the known positives and the positive excluded
    users, items = torch.tensor([0, 2, 4]), torch.tensor([0, 3, 5])
    s = (query(3) @ t.forward_all().T).detach()
    for r, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        s[r, TRAIN[u] + [i]] = -math.inf
    assert torch.equal(head.mine(query(3), users, items), s.topk(2, dim=1).indices)


def test_hard_retrain_every_checked():
    with pytest.raises(ConfigError, match=r"retrain_every=0.*Fix:"):
        HardNegativeSoftmax(retrain_every=0)


@pytest.mark.parametrize("chunk", [1, 3, N, N + 5])
def test_chunked_logsumexp_mask_equals_dense_masked(chunk):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=torch.float64)
    rows, cols = torch.tensor([0, 0, 2, 1]), torch.tensor([5, 1, 6, 3])  # unsorted on purpose
    out = chunked_logsumexp(q, v, chunk, (rows, cols))
    logits = (q @ v.T).masked_fill(torch.zeros(3, N, dtype=torch.bool).index_put_((rows, cols), torch.tensor(True)),
                                   float("-inf"))
    ref = torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(out, ref)
    assert (out < torch.logsumexp(q @ v.T, 1)).all()  # the mask removes mass from every row
    gq, gv = torch.autograd.grad((out * w).sum(), (q, v))
    rq, rv = torch.autograd.grad((ref * w).sum(), (q, v))
    torch.testing.assert_close(gq, rq)
    torch.testing.assert_close(gv, rv)


def test_full_softmax_mask_known_positives_hand_worked():
    # user 0 has train items {0, 2}; example (user 0, item 0): item 2 leaves the denominator.
    # user 1 has only {1}: example (user 1, item 1) is unchanged by the mask.
    it = tower()
    q = query(2)
    b = batch([0, 1], [0, 1])
    plain = bound(FullSoftmax(temperature=0.5))(q, b, it).loss
    masked = bound(FullSoftmax(temperature=0.5, mask_known_positives=True))(q, b, it)
    with torch.no_grad():
        s = (q @ it.forward_all().T / 0.5).numpy()  # (2, N)
    row0 = [s[0, 0]] + [s[0, j] for j in range(N) if j not in (0, 2)]
    row1 = [s[1, 1]] + [s[1, j] for j in range(N) if j != 1]
    assert masked.loss.item() == pytest.approx(ce([row0, row1]), rel=1e-9)
    assert plain.item() == pytest.approx(ce([[s[0, 0]] + [s[0, j] for j in range(N) if j != 0], row1]), rel=1e-9)
    assert masked.loss.item() < plain.item()  # triggered: changes the loss
    assert float(masked.logs["effective_negatives"]) == pytest.approx(N - 1 - 0.5)  # one masked over two rows
    only_unmasked = bound(FullSoftmax(temperature=0.5, mask_known_positives=True))(q[1:], batch([1], [1]), it).loss
    assert only_unmasked.item() == pytest.approx(ce([row1]), rel=1e-9)  # not triggered: unchanged


def test_inbatch_logq_weight_scales_the_correction():
    # as test_inbatch_static_logq_is_log_B_p with w = 0.5: logits are -0.5 log(B p)
    #   row 0 (B p = 1):   [0, log 3 / 2, log 3 / 2]            -> log(1 + 2 sqrt 3)
    #   rows 1, 2 (1/3):   [log 3 / 2 | 0, log 3 / 2] - pos     -> log(2 + 1 / sqrt 3)
    counts = np.array([2, 0, 0, 0, 0, 0, 0])
    head = bound(InBatchSoftmax(logq="static", logq_weight=0.5), counts)
    q = torch.zeros(3, D, dtype=torch.float64)
    loss = head(q, batch([0, 1, 2], [0, 1, 2]), tower()).loss.item()
    r3 = math.sqrt(3)
    assert math.isclose(loss, (math.log(1 + 2 * r3) + 2 * math.log(2 + 1 / r3)) / 3, rel_tol=1e-6)
    full = bound(InBatchSoftmax(logq="static"), counts)(q, batch([0, 1, 2], [0, 1, 2]), tower()).loss.item()
    assert not math.isclose(loss, full, rel_tol=1e-3)  # the weight changes the loss
    with pytest.raises(ConfigError, match="logq_weight=1.5"):
        InBatchSoftmax(logq_weight=1.5)


def test_inbatch_hardest_keeps_only_the_k_largest_negatives():
    # step 4 of the corrections: with hardest=1 each row competes with its largest negative only
    def out(hardest):
        head = bound(InBatchSoftmax(logq="none", mask_duplicates=False, hardest=hardest))
        return head(query(3), batch([0, 1, 2], [0, 1, 3]), tower())

    every, one = out(None), out(1)
    t, q = tower(), query(3)
    s = (q @ t(torch.tensor([0, 1, 3])).T).detach().numpy()  # (3, 3)
    rows = [[s[r, r], max(s[r, c] for c in range(3) if c != r)] for r in range(3)]
    assert math.isclose(one.loss.item(), ce(rows), rel_tol=1e-6)
    assert one.loss.item() < every.loss.item()  # fewer negatives: a smaller log-partition
    assert one.logs["effective_negatives"].item() == 1.0
    with pytest.raises(ConfigError, match="hardest=0"):
        InBatchSoftmax(hardest=0)


def test_accidental_hits_marks_duplicates_known_positives_and_spares_exempt():
    from recsys.model.candidates import accidental_hits

    known = KnownPositives(train_csr())
    users, items = torch.tensor([0, 4]), torch.tensor([0, 5])
    cand = torch.tensor([0, 2, 5, 6])  # TRAIN[0] = [0, 2], TRAIN[4] = [0, 1, 6]
    dup = accidental_hits(users, items, cand)
    assert dup.tolist() == [[True, False, False, False], [False, False, True, False]]
    both = accidental_hits(users, items, cand, known)
    assert both[0].tolist() == [True, True, False, False]  # item 0 (the positive) and item 2 (known)
    assert both[1].tolist() == [True, False, True, True]  # 0 and 6 known, 5 the positive
    assert (both & ~dup).sum() > 0  # the known positives change the mask
    spared = accidental_hits(users, items, cand, known, exempt=cand[None, :] == items[:, None])
    assert spared[0].tolist() == [False, True, False, False] and spared[1].tolist() == [True, False, False, True]
    none = accidental_hits(users, items, cand, duplicates=False)
    assert not none.any()


@pytest.mark.parametrize("kw", [dict(mask_duplicates=True, mask_known_positives=True, logq="static"),
                                dict(mask_duplicates=False, logq="none", num_uniform=3)])
def test_inbatch_positive_in_place_equals_the_positive_first_layout(kw):
    # InBatchSoftmax.forward keeps each row's positive in its own column (softmax_loss_at);
    # the positive-first layout of softmax_loss (used with ``hardest``) must give the same
    # loss, gradients and logs on the same batch, masks and log q
    torch.manual_seed(0)
    users, items = [0, 4, 2, 1, 0], [0, 0, 3, 1, 2]  # a duplicate item, known positives across rows
    head = bound(InBatchSoftmax(temperature=0.5, **kw), counts=np.array([5, 1, 3, 2, 4, 1, 1]))
    t, q = tower(), query(len(items))
    b = batch(users, items)
    state = torch.random.get_rng_state()
    a = head(q, b, t)
    ga = torch.autograd.grad(a.loss, [q, *t.parameters()])
    torch.random.set_rng_state(state)  # the same uniform negatives
    pos, neg, lq_pos, lq_neg, hits, own = head.candidates(q, b["user"], b["item"], t)
    c = head.softmax_loss(pos, neg, lq_pos, lq_neg, hits, drop=own)
    gc = torch.autograd.grad(c.loss, [q, *t.parameters()])
    torch.testing.assert_close(a.loss, c.loss)
    for x, y in zip(ga, gc):
        torch.testing.assert_close(x, y)
    for k in LOG_KEYS:
        torch.testing.assert_close(a.logs[k].double(), c.logs[k].double(), msg=k)
    if kw["mask_duplicates"]:
        assert a.logs["accidental_hit_rate"] > 0
