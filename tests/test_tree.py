"""The item tree (balanced codes, lookup tables), beam search, and the TreeSoftmax head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.errors import ConfigError, DataError
from recsys.model.heads import KnownPositives, TreeSoftmax
from recsys.model.heads.tree import prefix_logits
from recsys.model.towers import ItemTower
from recsys.retrieval.tree import ItemTree, balanced_codes, beam_search
from recsys.schema import Schema


def test_codes_are_balanced_unique_and_group_similar_items():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16)) * 5
    x = np.repeat(centers, 25, axis=0) + rng.standard_normal((100, 16))  # 4 clusters of 25
    codes = balanced_codes(x, branching=4, levels=4, seed=0)
    assert codes.shape == (100, 4) and codes.min() == 0 and codes.max() == 3
    assert np.bincount(codes[:, 0]).tolist() == [25, 25, 25, 25]  # balanced to one item
    for c in range(4):  # each first-level node is one planted cluster
        assert len(np.unique(np.flatnonzero(codes[:, 0] == c) // 25)) == 1
    tree = ItemTree(codes, 4)
    assert sorted(tree.slot_item[tree.slot_item >= 0]) == list(range(100))  # one slot per item
    with pytest.raises(ConfigError, match="K\\^L >= N"):
        balanced_codes(x, branching=3, levels=2)
    with pytest.raises(DataError, match="share a leaf"):
        ItemTree(np.zeros((2, 2), dtype=np.int64), 4)


def _exhaustive(logp_fn, tree, Q):
    """log p(item) = sum of the levels' log-probabilities, for every item."""
    out = np.zeros((Q, tree.n_items))
    for i, code in enumerate(tree.codes):
        prefix = np.zeros((Q, 1), dtype=np.int64)
        for lv in range(tree.levels):
            lp = logp_fn(lv, None if lv == 0 else prefix)  # (Q, 1, K)
            out[:, i] += lp[:, 0, code[lv]]
            prefix = prefix * tree.branching + code[lv]
    return out


def _random_level_scores(tree, Q, seed=0):
    rng = np.random.default_rng(seed)
    tables = [rng.standard_normal(tree.branching ** (lv + 1)) for lv in range(tree.levels)]

    def level_scores(lv, prefixes):
        pre = np.zeros((Q, 1), dtype=np.int64) if prefixes is None else prefixes
        child = pre[:, :, None] * tree.branching + np.arange(tree.branching)
        z = tables[lv][child] + 0.01 * np.arange(Q)[:, None, None]
        z = np.where(tree.occupied[lv][child], z, -np.inf)
        return z - np.log(np.exp(z).sum(axis=2, keepdims=True))

    return level_scores


def test_a_full_width_beam_is_the_exhaustive_tree_ranking_and_narrow_beams_approach_it():
    rng = np.random.default_rng(1)
    tree = ItemTree.build(rng.standard_normal((50, 8)), branching=4, levels=3)  # 64 slots, 50 items
    Q, k = 5, 10
    fn = _random_level_scores(tree, Q)
    exact = _exhaustive(fn, tree, Q)
    assert np.allclose(np.exp(exact).sum(1), 1.0)  # a normalised distribution over the items
    top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    I, S = beam_search(fn, tree, beam=16, k=k)  # 16 = every depth-2 prefix
    assert (I == top).all() and np.allclose(S, np.take_along_axis(exact, top, 1))
    I1, _ = beam_search(fn, tree, beam=1, k=4)  # greedy: the best leaves under the best path only
    assert len({tuple(tree.codes[i][:2]) for i in I1[0] if i >= 0}) == 1
    # seen items are never returned
    seen = sp.csr_matrix((np.ones(Q), (np.arange(Q), top[:, 0])), shape=(Q, 50))
    from recsys.retrieval.keys import member

    Ie, _ = beam_search(fn, tree, beam=16, k=k, exclude=lambda items: member(items, seen))
    assert not (Ie == top[:, :1]).any() and (Ie[:, 0] == top[:, 1]).all()


def test_gumbel_beam_is_the_knob_for_diversity():
    rng = np.random.default_rng(2)
    tree = ItemTree.build(rng.standard_normal((64, 8)), branching=4, levels=3)
    fn = _random_level_scores(tree, 1, seed=3)
    det = [tuple(beam_search(fn, tree, beam=2, k=5)[0][0]) for _ in range(3)]
    assert len(set(det)) == 1  # temperature 0: deterministic
    hot = {tuple(beam_search(fn, tree, beam=2, k=5, temperature=2.0, rng=np.random.default_rng(s))[0][0])
           for s in range(10)}
    assert len(hot) > 1
    distinct = {i for lst in hot for i in lst}
    assert len(distinct) > len(set(det[0]))  # wider coverage over draws


N, U, D = 12, 6, 5


def _setup(K=4, L=2, mask=False):
    torch.manual_seed(0)
    train = sp.random(U, N, density=0.4, random_state=0, format="csr")
    train.data[:] = 1
    schema = Schema(n_users=U, n_items=N, bag_size=N, item_counts=np.asarray(train.sum(0)).ravel())
    head = TreeSoftmax(branching=K, levels=L, dim=D, temperature=0.5, codes_from="random",
                       mask_known_positives=mask).double()
    head.bind(schema, KnownPositives(train))
    items = ItemTower(schema, dim=D, use_features=False, sparse=False).double()
    return head, items, train


def _reference_loss(head, items, q, it, K=4, T=0.5):
    """Mean over examples of -log p(item) with p = the product of a two-level tree's softmaxes,
    computed one example and one child at a time."""
    tree, v, ref = head.tree, items(torch.arange(N)), 0.0
    for b in range(len(it)):
        code = tree.codes[it[b]]
        z0 = q[b] @ head.node_emb[0].weight.T / T  # (K,) depth-1 nodes
        z0 = z0.masked_fill(~torch.from_numpy(tree.occupied[0]), float("-inf"))
        kids = tree.slot_item[code[0] * K + np.arange(K)]
        z1 = torch.stack([q[b] @ v[j] / T if j >= 0 else torch.tensor(float("-inf"), dtype=q.dtype)
                          for j in kids])
        ref = ref - torch.log_softmax(z0, 0)[code[0]] - torch.log_softmax(z1, 0)[code[1]]
    return ref / len(it)


def test_tree_loss_is_the_negative_log_of_the_product_of_level_softmaxes():
    head, items, _ = _setup()
    q = torch.randn(3, D, dtype=torch.float64)
    it = torch.tensor([0, 5, 11])
    out = head(q, {"user": torch.tensor([0, 1, 2]), "item": it}, items)
    K, tree = 4, head.tree
    torch.testing.assert_close(out.loss, _reference_loss(head, items, q, it))
    out.loss.backward()
    assert head.node_emb[0].weight.grad.abs().sum() > 0 and items.item_emb.weight.grad.abs().sum() > 0
    # competing siblings per example: the live children at each level less the positive
    live = sum(tree.occupied[0].sum() - 1 for _ in range(3)) + sum(
        (tree.slot_item[tree.codes[i][0] * K + np.arange(K)] >= 0).sum() - 1 for i in it.tolist())
    assert float(out.logs["effective_negatives"]) == pytest.approx(live / 3)


class _CountingTower(torch.nn.Module):
    """Delegates to an item tower and records how many ids each call embeds."""

    def __init__(self, tower):
        super().__init__()
        self.tower, self.sizes = tower, []

    def forward(self, ids):
        self.sizes.append(ids.numel())
        return self.tower(ids)


@pytest.mark.parametrize("parents", [3, 40, 21])
def test_prefix_logits_group_examples_by_parent_with_the_per_example_values_and_gradients(parents):
    """Few distinct parents (3 in a batch of 40) or all distinct (40): the packed per-parent
    product; uneven groups (one parent holds half the batch, 20 more one example each, so the
    packing would hold 21 x 20 rows > 4 B): the per-example gather. Each equals
    q_b . table[prefix_b K + k] and gives the same gradients for the queries and the table."""
    K, Dq, B = 5, 4, 40
    g = torch.Generator().manual_seed(parents)
    q = torch.randn(B, Dq, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(40 * K, Dq, dtype=torch.float64, generator=g, requires_grad=True)
    prefix = {3: torch.randint(0, 3, (B,), generator=g), 40: torch.randperm(B, generator=g),
              21: torch.cat([torch.zeros(20, dtype=torch.long), torch.arange(1, 21)])}[parents]
    out = prefix_logits(q, prefix, table, K)  # (B, K)
    w = torch.randn(B, K, dtype=torch.float64, generator=g)
    (out * w).sum().backward()
    gq, gt = q.grad.clone(), table.grad.clone()
    q.grad = table.grad = None
    ref = torch.stack([table[prefix[b] * K + torch.arange(K)] @ q[b] for b in range(B)])  # (B, K)
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gq, q.grad)
    torch.testing.assert_close(gt, table.grad)
    assert (gt.abs().sum(1) > 0).sum() == K * len(prefix.unique())  # only the batch's parents' children


@pytest.mark.parametrize("repeat", [False, True])
def test_leaf_level_embeds_distinct_leaves_once_with_the_same_loss_and_gradients(repeat):
    """With many examples under a few parents the tower runs on the distinct leaves only; the
    loss and the item tower's gradient equal the per-example reference either way."""
    head, items, _ = _setup()
    it = torch.tensor([0, 5, 11] * 10 if repeat else [0, 5, 11])  # (B,)
    q = torch.randn(len(it), D, dtype=torch.float64)
    tower = _CountingTower(items)
    out = head(q, {"user": torch.arange(len(it)) % U, "item": it}, tower)
    out.loss.backward()
    grad = items.item_emb.weight.grad.clone()
    assert (tower.sizes[-1] < len(it) * 4) == repeat  # distinct leaves only when they repeat
    items.item_emb.weight.grad = None
    ref = _reference_loss(head, items, q, it)
    ref.backward()
    torch.testing.assert_close(out.loss, ref.detach())
    torch.testing.assert_close(grad, items.item_emb.weight.grad)


def test_tree_probabilities_sum_to_one_and_beam_topk_matches_them():
    head, items, _ = _setup(K=4, L=2)
    xq = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32)
    xb = items.embed_all().detach().float().numpy()
    # exhaustive p(item | u) through the training loss of each item as the positive
    with torch.no_grad():
        logp = np.array([[-float(head(torch.from_numpy(xq[b:b + 1]).double(),
                                      {"user": torch.tensor([0]), "item": torch.tensor([i])}, items).loss)
                          for i in range(N)] for b in range(2)])
    assert np.allclose(np.exp(logp).sum(1), 1.0)
    I, S = head.beam_topk(xq, xb, k=5, beam=4)  # every depth-1 prefix: exact
    assert (I == np.argsort(-logp, axis=1, kind="stable")[:, :5]).all()
    np.testing.assert_allclose(S, np.sort(logp, axis=1)[:, ::-1][:, :5], rtol=1e-4, atol=1e-5)
    I1, S1 = head.beam_topk(xq, xb, k=5, beam=4, chunk=1)  # query chunks: the same answer
    assert (I1 == I).all() and np.allclose(S1, S)
    Ir, Sr = head.beam_topk(xq, xb, k=5, beam=4, rerank=True)  # re-ranked by the exact score
    assert (Ir == np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :5]).all()



def test_leaf_prior_is_added_after_the_leaf_normalisation():
    """A popularity prior carried in the leaves' bias coordinate (w T log p_j, as
    ``item_embeddings`` serves it) ranks by log p_tree(j | u) + w log p_j: the scores of an
    exhaustive beam are exactly that, which differs from leaving the prior inside the
    softmax over the siblings (there a parent's share of the prior cancels)."""
    head, items, _ = _setup(K=4, L=2)
    T = float(head.temperature())
    xq = np.random.default_rng(0).standard_normal((3, D)).astype(np.float32)
    xq[:, -1] = 1.0  # the query's constant coordinate multiplies the items' bias coordinate
    xb = items.embed_all().detach().float().numpy()
    I0, S0 = head.beam_topk(xq, xb, k=N, beam=4)  # (3, N) every item, log p_tree
    logp = np.full((3, N), -np.inf)
    np.put_along_axis(logp, I0, S0, axis=1)
    prior = 2.0 * np.log(np.random.default_rng(1).dirichlet(np.ones(N)) + 1e-3).astype(np.float32)  # (N,) w log p
    xb_w = xb.copy()
    xb_w[:, -1] += T * prior  # the served vectors carry the prior
    I, S = head.beam_topk(xq, xb_w, k=N, beam=4, leaf_prior=prior)
    want = logp + prior[None, :]
    assert (I == np.argsort(-want, axis=1, kind="stable")).all()
    np.testing.assert_allclose(S, np.take_along_axis(want, I, 1), rtol=1e-4, atol=1e-4)
    Iin, Sin = head.beam_topk(xq, xb_w, k=N, beam=4)  # no leaf_prior: the prior stays inside the leaf softmax
    assert not np.allclose(np.sort(Sin, 1), np.sort(S, 1), atol=1e-3)
    state = head.beam_index(prior).state_dict()  # the export's arrays keep it
    from recsys.retrieval.tree import BeamIndex
    np.testing.assert_array_equal(BeamIndex.from_state(state).leaf_prior, prior)
    assert BeamIndex.from_state(head.beam_index().state_dict()).leaf_prior is None
    with pytest.raises(DataError, match="leaf_prior"):
        head.beam_index(prior[:-1])


def test_a_leaf_head_trains_the_leaves_as_one_flat_softmax_and_the_beam_normalises_them_per_parent():
    """With ``leaf_head`` the loss is the internal levels' cross-entropy plus the flat head's
    loss on the same queries (no sibling softmax); the beam's leaf level is the log-softmax
    over the siblings of q . v / T' with T' the leaf head's temperature, which the exported
    index keeps."""
    from recsys.model.heads import InBatchSoftmax
    from recsys.retrieval.tree import BeamIndex

    _, items, train = _setup()
    schema = Schema(n_users=U, n_items=N, bag_size=N, item_counts=np.asarray(train.sum(0)).ravel())
    torch.manual_seed(0)
    head = TreeSoftmax(branching=4, levels=2, dim=D, temperature=0.5, codes_from="random",
                       leaf_head=InBatchSoftmax(temperature=0.25)).double()
    head.bind(schema, KnownPositives(train))
    flat = InBatchSoftmax(temperature=0.25).double()
    flat.bind(schema, KnownPositives(train))
    q = torch.randn(4, D, dtype=torch.float64)
    batch = {"user": torch.tensor([0, 1, 2, 3]), "item": torch.tensor([0, 5, 11, 7])}
    out = head(q, batch, items)
    codes = torch.from_numpy(head.tree.codes)[batch["item"]]  # (B, L)
    z0 = (q @ head.node_emb[0].weight.T / 0.5).masked_fill(~torch.from_numpy(head.tree.occupied[0]), float("-inf"))
    want = torch.nn.functional.cross_entropy(z0, codes[:, 0]) + flat(q, batch, items).loss
    torch.testing.assert_close(out.loss, want)
    assert float(out.logs["temperature"]) == pytest.approx(0.25) and "tree_loss" in out.logs
    assert float(head.score_temperature()) == pytest.approx(0.25)

    xq = q.float().numpy()
    xb = items.embed_all().detach().float().numpy()
    I, S = head.beam_topk(xq, xb, k=N, beam=4)  # every prefix: the exhaustive tree ranking
    lp0 = torch.log_softmax(z0, 1).detach().float().numpy()  # (B, K) log p(parent | u)
    want_s = np.full((4, N), -np.inf)
    for p in range(4):
        kids = head.tree.slot_item[p * 4 + np.arange(4)]
        live = kids[kids >= 0]
        z = xq @ xb[live].T / 0.25  # (B, |live|) leaf logits at T'
        want_s[:, live] = lp0[:, [p]] + z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(S, np.take_along_axis(want_s, I, 1), rtol=1e-4, atol=1e-4)
    assert (I == np.argsort(-want_s, axis=1, kind="stable")).all()
    index = BeamIndex.from_state(head.beam_index().state_dict())
    assert index.leaf_temperature == pytest.approx(0.25)
    np.testing.assert_allclose(index.search(xq, xb, k=N, beam=4)[1], S, rtol=1e-5)
    head.rerank = True  # the head's default ranking: the survivors (here all) by the exact leaf score
    Ir, _ = head.beam_topk(xq, xb, k=5, beam=4)
    assert (Ir == np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :5]).all() and not (Ir == I[:, :5]).all()
    assert BeamIndex.from_state(head.beam_index().state_dict()).rerank
    with pytest.raises(ConfigError, match="leaf_head"):
        TreeSoftmax(branching=4, levels=2, dim=D, leaf_samples=2, leaf_head=InBatchSoftmax())

def test_known_positive_mask_changes_the_leaf_softmax():
    plain, items, train = _setup(mask=False)
    masked, _, _ = _setup(mask=True)
    q = torch.randn(4, D, dtype=torch.float64)
    users = torch.tensor([0, 1, 2, 3])
    pos = torch.tensor([int(train[u].indices[0]) for u in range(4)])  # each user's own train item
    b = {"user": users, "item": pos}
    a, m = plain(q, b, items), masked(q, b, items)
    assert float(m.logs["accidental_hit_rate"]) > 0 and float(m.loss.detach()) < float(a.loss.detach())


NL = 40  # items of the leaf-sampling tests: 8 x 8 slots, 5 items per parent


def _leaf_samples_head(S, K=8):
    torch.manual_seed(0)
    train = sp.random(U, NL, density=0.4, random_state=0, format="csr")
    train.data[:] = 1
    schema = Schema(n_users=U, n_items=NL, bag_size=NL, item_counts=np.asarray(train.sum(0)).ravel())
    head = TreeSoftmax(branching=K, levels=2, dim=D, temperature=0.5, codes_from="random", leaf_samples=S).double()
    head.bind(schema, KnownPositives(train))
    torch.manual_seed(0)
    return head, ItemTower(schema, dim=D, use_features=False, sparse=False).double()


def test_leaf_samples_draw_live_siblings_only_and_correct_by_the_inclusion_probability():
    """S = 2 of K = 8 leaves (40 items on 8 x 8 slots, 5 per parent): every draw is a live sibling other than the
    positive, the item tower embeds B (1 + S) leaves, and each negative's logit is its score / T
    plus log(n / S), n the positive's live siblings; S >= K - 1 is the exact tree softmax."""
    head, items = _leaf_samples_head(S=2)
    exact, _ = _leaf_samples_head(S=7)
    assert exact.leaf_samples == 0  # every sibling: nothing to sample
    exact.load_state_dict(head.state_dict())
    q = torch.randn(6, D, dtype=torch.float64)
    it = torch.tensor([0, 3, 5, 17, 29, 39])
    batch = {"user": torch.arange(6) % U, "item": it}
    tower = _CountingTower(items)
    out = head(q, batch, tower)
    assert tower.sizes[-1] == 6 * 3
    with torch.no_grad():
        T, v, tree = 0.5, items(torch.arange(NL)), head.tree
        torch.manual_seed(1)
        drawn = [head._sampled_leaves(q, torch.from_numpy(tree.slot_item).view(-1, 8)[torch.from_numpy(
            tree.codes[it.numpy(), 0])], torch.from_numpy(~tree.occupied[1]).view(-1, 8)[torch.from_numpy(
                tree.codes[it.numpy(), 0])], torch.from_numpy(tree.codes[it.numpy(), 1]), batch["user"], it, items, T)
            for _ in range(20)]
    for logits, ids, _ in drawn:
        assert (ids[:, 0] == it).all()
        for b in range(6):
            sibs = tree.slot_item[tree.codes[it[b], 0] * 8 + np.arange(8)]
            live = set(sibs[sibs >= 0].tolist()) - {int(it[b])}
            got = ids[b, 1:].tolist()
            assert set(got) - {-1} <= live and len(set(got) - {-1}) == min(2, len(live))  # empty slots drawn last
            assert all(not torch.isfinite(logits[b, 1 + j]) for j, i in enumerate(got) if i < 0)  # and masked
            n = len(live)
            want = (q[b] @ v[ids[b, 1:]].T) / T + np.log(n / 2) if n > 2 else None
            if want is not None:
                torch.testing.assert_close(logits[b, 1:], want)
                torch.testing.assert_close(logits[b, 0], q[b] @ v[it[b]] / T)
    # the correction changes the loss: without it the sampled partition is smaller
    with torch.no_grad():
        lg = drawn[0][0]
        raw = lg.clone()
        for b in range(6):
            sibs = tree.slot_item[tree.codes[it[b], 0] * 8 + np.arange(8)]
            n = int((sibs >= 0).sum()) - 1
            raw[b, 1:] -= np.log(max(n, 2) / 2)
        assert float(torch.nn.functional.cross_entropy(raw, torch.zeros(6, dtype=torch.long))) < float(
            torch.nn.functional.cross_entropy(lg, torch.zeros(6, dtype=torch.long)))
    assert torch.isfinite(out.loss) and float(exact(q, batch, items).loss) > 0
    with pytest.raises(ConfigError, match="leaf_samples"):
        TreeSoftmax(leaf_samples=-1)


def test_tree_state_round_trips_and_sizes_are_checked():
    head, _, _ = _setup()
    sd = head.state_dict()
    fresh = TreeSoftmax(branching=4, levels=2, dim=D, codes_from="random", seed=9).double()
    fresh.load_state_dict(sd)  # the tree comes back through get_extra_state
    assert (fresh.tree.codes == head.tree.codes).all()
    with pytest.raises(ConfigError, match="raise branching"):
        TreeSoftmax(branching=3, levels=2, dim=D).bind(Schema(n_users=2, n_items=10, bag_size=10),
                                                        KnownPositives(sp.csr_matrix((2, 10))))
    head2, items, _ = _setup()
    with pytest.raises(ConfigError, match="dim=5 but the query tower outputs 7"):
        head2(torch.randn(2, 7, dtype=torch.float64), {"user": torch.tensor([0, 1]), "item": torch.tensor([0, 1])},
              items)
    with pytest.raises(ConfigError, match="beam-aware"):
        TreeSoftmax(beam_train=4)


def test_evaluate_index_beam_on_a_fitted_tree_model(tmp_path, capsys):
    from recsys.commands.console import main
    from tests.conftest import config_args

    tiny = ["--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4"]
    main(["fit", *config_args("synthetic", "tree"), *tiny, "--model.head.init_args.branching=10",
          "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    def beam(width, **params):
        main(["evaluate", "--ckpt", str(ckpt), "--index", "beam", "--beam", str(width), "--k", "5",
              "--index-params", json.dumps(params), "--out", str(tmp_path)])
        return json.loads((tmp_path / "eval_test.json").read_text())["metrics"]

    # every depth-1 prefix kept and the leaves re-ranked by q . v: the exact two-tower top-k
    assert beam(10, rerank=True)["index_recall"] == 1.0
    assert 0 <= beam(1, rerank=True)["index_recall"] < 1.0  # one prefix: the other branches' items are lost
    assert "recall@5" in beam(10)
    with pytest.raises(ConfigError, match="applies to --index beam"):
        main(["evaluate", "--ckpt", str(ckpt), "--beam", "4"])


def test_compare_scores_a_tree_head_by_its_beam_beside_exact(tmp_path):
    from recsys.commands.console import main
    from tests.test_compare import _config_folder

    tree = {"model": {"head": {"class_path": "recsys.model.heads.TreeSoftmax",
                               "init_args": {"branching": 12, "levels": 2, "dim": 8}}}}
    base = _config_folder(tmp_path, tree=tree)
    out = tmp_path / "out"
    main(["compare", "--config", str(base), "--heads", "tree", "--seeds", "1", "--baselines", "none",
          "--max-epochs", "1", "--beam", "1", "--k", "10", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    run = res["runs"][0]
    assert run["beam"] == 1 and {"recall@10", "index_recall"} <= set(run["test_beam"])
    assert run["test_beam"]["index_recall"] < 1.0  # one prefix of 12: the beam misses part of the exact top-k
    assert set(res["aggregate"]) == {"tree", "tree (beam 1)"}
    assert res["aggregate"]["tree (beam 1)"]["test"]["recall@10"]["mean"] == run["test_beam"]["recall@10"]
    assert "| tree (beam 1) |" in (out / "results.md").read_text()


def test_export_serves_the_tree_beam_as_the_checkpoint_does(tmp_path, capsys):
    """recommend --beam from an export folder (numpy only) gives the head's own beam search; the
    beam index round-trips as plain arrays; a flat model's export refuses --beam."""
    from recsys.artifacts.recommender import Recommender
    from recsys.commands.console import main
    from recsys.retrieval.tree import BeamIndex
    from tests.conftest import config_args

    tiny = ["--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4"]
    main(["fit", *config_args("synthetic", "tree"), *tiny, "--model.head.init_args.branching=10",
          "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "export"
    main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    assert "beam_index.npz" in json.loads((out / "manifest.json").read_text())["files"]
    with np.load(out / "beam_index.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        index = BeamIndex.from_state(z)
    from_ckpt, from_export = Recommender.from_checkpoint(ckpt), Recommender.from_export(out)
    assert (index.tree.codes == from_ckpt.beam_index.tree.codes).all()
    user = from_export.user_vocab.decode(np.array([3]))[0]
    for beam in (1, 3, 10):
        a, b = from_ckpt.recommend(user, k=5, beam=beam), from_export.recommend(user, k=5, beam=beam)
        assert [r["item"] for r in a] == [r["item"] for r in b]
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-5)
    u = int(from_export.user_vocab.encode([user])[0])
    seen = set(from_export.item_vocab.decode(from_export.seen[u].indices).tolist())
    wide = from_export.recommend(user, k=10, beam=10)
    assert not seen & {r["item"] for r in wide}  # seen items excluded
    exact = [r["item"] for r in from_export.recommend(user, k=10)]
    narrow = [r["item"] for r in from_export.recommend(user, k=10, beam=1)]
    assert narrow != exact  # one prefix of 10 keeps one branch: another list than exact top-k
    stoch = {tuple(r["item"] for r in from_export.recommend(user, k=5, beam=4, temperature=2.0, seed=s))
             for s in range(6)}
    assert len(stoch) > 1  # the stochastic beam varies with the seed
    frames = list(from_export.recommend_many([user], k=5, beam=3))
    assert frames[0]["item"].tolist() == [r["item"] for r in from_export.recommend(user, k=5, beam=3)]
    capsys.readouterr()
    main(["recommend", "--model", str(out), "--user", str(user), "-k", "5", "--beam", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["item"] for r in rows] == [r["item"] for r in from_export.recommend(user, k=5, beam=3)]
    flat = Recommender(from_export.xb, from_export.embed_users, from_export.seen, from_export.user_vocab,
                       from_export.item_vocab)
    with pytest.raises(ConfigError, match="TreeSoftmax head"):
        flat.recommend(user, k=5, beam=4)
    with pytest.raises(ConfigError, match="--beam 0"):
        main(["recommend", "--model", str(out), "--user", str(user), "--beam", "0"])


def test_eval_index_beam_validates_a_tree_model_by_its_own_beam(tmp_path):
    from recsys.eval.evaluate import evaluate
    from recsys.model.heads import InBatchSoftmax
    from recsys.model.module import TwoTowerModule
    from recsys.train.cli import RecsysCLI
    from tests.conftest import config_args

    tiny = ["--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4"]
    cli = RecsysCLI(args=[*config_args("synthetic", "tree"), *tiny, "--model.head.init_args.branching=10",
                          "--model.eval_index=beam", "--model.eval_beam=1", "--trainer.max_epochs=1",
                          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                          "--trainer.logger=false"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    ks = tuple(cli.model.eval_ks)
    val = cli.model.last_eval  # what the epoch's validation logged (and the checkpoint is chosen by)
    beam1 = evaluate(cli.model, cli.datamodule, "valid", ks, index="beam", index_params={"beam": 1}).metrics
    exact = evaluate(cli.model, cli.datamodule, "valid", ks).metrics
    key = f"ndcg@{min(ks)}"
    assert val[key] == pytest.approx(beam1[key])
    assert val[key] != pytest.approx(exact[key])  # one prefix of 10: not the exact ranking
    with pytest.raises(ConfigError, match="eval_index='beam' with head InBatchSoftmax"):
        TwoTowerModule(schema=Schema(n_users=5, n_items=7, bag_size=7), head=InBatchSoftmax(), eval_ks=[5],
                       eval_index="beam")
    with pytest.raises(ConfigError, match="eval_beam=0"):
        TwoTowerModule(schema=Schema(n_users=5, n_items=7, bag_size=7), head=TreeSoftmax(branching=4), eval_ks=[5],
                       eval_index="beam", eval_beam=0)
