"""Vocab, k-core, splits, synthetic generator, DataModule batches, registry (ML-1M counts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data import (
    InteractionDataModule,
    SyntheticConfig,
    Vocab,
    kcore,
    load_dataset,
    make_synthetic,
    split_global_time,
    split_leave_last_out,
    split_random,
    to_implicit,
)
from recsys.data.batches import pad_rows
from recsys.errors import ConfigError, DataError
from tests.conftest import TINY, need


def test_vocab_round_trip_and_unknown(tmp_path):
    v, codes = Vocab.fit(["b", "a", "c", "a"], name="item")
    assert codes.tolist() == [1, 0, 2, 0]
    assert v.decode(v.encode(["c", "a"])).tolist() == ["c", "a"]
    v.save(tmp_path / "v.json")
    w = Vocab.load(tmp_path / "v.json")
    assert w == v and w.fingerprint() == v.fingerprint()
    with pytest.raises(DataError, match="unknown item id.*'zz'.*Fix"):
        v.encode(["a", "zz"])
    vi, _ = Vocab.fit([10, 30, 20])
    assert vi.encode(["30"]).tolist() == [2]  # raw ids given as strings still resolve
    assert Vocab.from_state(vi.to_state()) == vi


def test_kcore_invariant_and_fixed_point():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(200, size=3000), "item": rng.zipf(1.5, size=3000) % 300})
    df = df.drop_duplicates()
    out = kcore(df, 5, 5)
    assert out["user"].value_counts().min() >= 5 and out["item"].value_counts().min() >= 5
    assert len(kcore(out, 5, 5)) == len(out)  # a fixed point
    # one pass is not enough on this data: the iteration matters
    one = df[df["item"].map(df["item"].value_counts()) >= 5]
    one = one[one["user"].map(one["user"].value_counts()) >= 5]
    assert len(out) <= len(one)
    with pytest.raises(DataError, match="empty after.*Fix"):
        kcore(df.head(10), 50, 50)


def test_to_implicit_threshold():
    df = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 3], "rating": [2.0, 3.0, 5.0]})
    assert to_implicit(df, 3.0)[["user", "item"]].values.tolist() == [[1, 2], [2, 3]]
    with pytest.raises(DataError, match="no interactions left"):
        to_implicit(df, 6.0)


def _frame(seed=0, users=50):
    rng = np.random.default_rng(seed)
    rows = [(u, i, t) for u in range(users) for t, i in enumerate(rng.choice(500, size=rng.integers(3, 40),
                                                                               replace=False))]
    return pd.DataFrame(rows, columns=["user", "item", "time"])


def test_split_random_properties():
    df = _frame()
    tr, va, te = split_random(df, seed=3)
    key = lambda d: set(zip(d["user"], d["item"]))
    assert not key(tr) & key(va) and not key(tr) & key(te) and not key(va) & key(te)
    assert len(tr) + len(va) + len(te) == len(df)
    n = df.groupby("user").size()
    nv, nt = va.groupby("user").size().reindex(n.index, fill_value=0), te.groupby("user").size().reindex(
        n.index, fill_value=0)
    assert (nv == np.floor(0.1 * n)).loc[n >= 10].all() and (nt == np.floor(0.1 * n)).loc[n >= 10].all()
    assert set(va["user"]) | set(te["user"]) <= set(tr["user"])  # every evaluated user has train data
    tr2, va2, _ = split_random(df, seed=3)
    assert tr2.equals(tr) and va2.equals(va)  # seed determinism
    _, va3, _ = split_random(df, seed=4)
    assert not va3.equals(va)
    with pytest.raises(ConfigError, match="ratios"):
        split_random(df, ratios=(0.5, 0.5, 0.5))


def test_leave_last_out_and_global_time():
    df = _frame()
    tr, va, te = split_leave_last_out(df)
    last = df.sort_values("time").groupby("user").tail(1)
    assert set(zip(te["user"], te["item"])) == set(zip(last["user"], last["item"]))
    assert (va.groupby("user").size() == 1).all()
    tr, va, te = split_global_time(df)
    assert tr["time"].max() <= va["time"].min() and va["time"].max() <= te["time"].min()
    with pytest.raises(DataError, match="time"):
        split_leave_last_out(df.drop(columns="time"))


def test_synthetic_determinism_size_and_speed():
    import time

    a = make_synthetic(SyntheticConfig(**TINY, seed=1))[0]
    b = make_synthetic(SyntheticConfig(**TINY, seed=1))[0]
    c = make_synthetic(SyntheticConfig(**TINY, seed=2))[0]
    assert a.equals(b) and not a.equals(c)
    t = time.perf_counter()
    df, items, users, planted = make_synthetic(n_items=100_000, n_users=10_000)
    assert time.perf_counter() - t < 30  # "seconds" (generous for a loaded CI box)
    assert df["item"].max() < 100_000 and len(planted["item_cluster"]) == 100_000
    # planted structure: most of a user's items come from the user's cluster
    same = planted["item_cluster"][df["item"]] == planted["user_cluster"][df["user"]]
    assert same.mean() > 0.7


def test_pad_rows_leaves_target_out():
    indptr, indices = np.array([0, 3, 5]), np.array([7, 8, 9, 1, 2])
    out = pad_rows(indptr, indices, np.array([0, 1]), 4, pad=99, exclude_pos=np.array([1, 0]))
    assert out.tolist() == [[7, 9, 99, 99], [2, 99, 99, 99]]
    long = pad_rows(indptr, indices, np.array([0]), 2, pad=99)  # evenly spaced when too long
    assert long.tolist() == [[7, 8]]


def _pad_reference(indptr, indices, rows, H, pad, exclude_pos=None, rng=None, values=None):
    """pad_rows row by row in plain Python: the documented behaviour, one row at a time."""
    avail = [int(indptr[r + 1] - indptr[r]) - (exclude_pos is not None) for r in rows]
    long = [j for j, a in enumerate(avail) if a > H]
    draws = rng.random((len(long), H)) if rng is not None and long else None
    ids, vals = np.full((len(rows), H), pad, np.int64), np.zeros((len(rows), H), np.float32)
    for j, r in enumerate(rows):
        a = avail[j]
        if a > H:
            pos = ((draws[long.index(j)] * a).astype(np.int64) if draws is not None
                   else (np.arange(H) * a) // H)
        else:
            pos = np.arange(max(a, 0))
        if exclude_pos is not None:
            pos = pos + (pos >= exclude_pos[j])
        ids[j, :len(pos)] = indices[indptr[r] + pos]
        if values is not None:
            vals[j, :len(pos)] = values[indptr[r] + pos]
    return ids if values is None else (ids, vals)


@pytest.mark.parametrize("seed", range(4))
def test_pad_rows_equals_the_row_by_row_reference(seed):
    """Short rows (scattered), long rows (thinned, evenly or by the rng), the target left out,
    values beside the ids, empty rows."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 30, 40)
    lens[:3] = [0, 1, 29]
    indptr = np.concatenate([[0], np.cumsum(lens)])
    indices, values = rng.integers(0, 50, indptr[-1]), rng.random(indptr[-1]).astype(np.float32)
    rows = rng.integers(0, 40, 25)
    for H in (1, 5, 12, 40):
        for draw in (None, 7):
            def run(f, H=H, draw=draw):
                return f(indptr, indices, rows, H, 99, rng=None if draw is None else np.random.default_rng(draw),
                         values=values)
            for got, want in zip(run(pad_rows), run(_pad_reference)):
                np.testing.assert_array_equal(got, want)
            ok = rows[lens[rows] > 0]  # a target to leave out needs a non-empty row
            ex = np.array([rng.integers(0, lens[r]) for r in ok])
            got = pad_rows(indptr, indices, ok, H, 99, exclude_pos=ex)
            np.testing.assert_array_equal(got, _pad_reference(indptr, indices, ok, H, 99, exclude_pos=ex))


def test_datamodule_batches(tiny_dm):
    d = tiny_dm.data
    b = next(iter(tiny_dm.train_dataloader()))
    assert b["user"].shape == (64,) and b["bag"].shape == (64, 10)
    # the target never appears in its own history bag, and bags hold only train items
    for u, i, bag in zip(b["user"].tolist(), b["item"].tolist(), b["bag"].tolist()):
        ids = [x for x in bag if x != d.n_items]
        assert i not in ids and set(ids) <= set(d.train[u].indices.tolist())
    assert tiny_dm.schema.n_items == d.n_items and len(tiny_dm.eval_users("test")) > 0
    with pytest.raises(ConfigError, match="batch_size"):
        InteractionDataModule(batch_size=0)


def test_ml1m_protocol_counts(ml1m):
    s = ml1m.stats()
    assert (s["users"], s["items"], s["interactions"]) == (6033, 3123, 834_449)
    assert ml1m.train.multiply(ml1m.test).nnz == 0 and ml1m.valid.multiply(ml1m.test).nnz == 0


def test_ml100k_and_bibtex_registry(shared_root):
    need("ml-100k", "u.data.gz")
    d = load_dataset("ml-100k", shared_root)
    assert d.item_features is not None and d.user_features is not None and d.item_titles is not None
    need("bibtex", "xc_train.txt.gz")
    b = load_dataset("bibtex", shared_root)
    assert b.n_items == 159 and b.n_users == 4880 + 2515 and b.query_bags.shape[1] == 1836
    assert b.test[:4880].nnz == 0 and b.train[4880:].nnz == 0  # test documents have no train labels


def test_missing_dataset_says_where(tmp_path):
    with pytest.raises(DataError, match="ml-1m"):
        load_dataset("ml-1m", tmp_path)
    with pytest.raises(ConfigError, match="unknown"):
        load_dataset("nope")


def test_gowalla_registry_counts_and_carved_validation(shared_root):

    need("gowalla", "train.txt.gz")
    d = load_dataset("gowalla", shared_root)
    st = d.stats()
    assert (st["users"], st["items"], st["interactions"]) == (29_858, 40_981, 1_027_370)
    assert d.train.nnz + d.valid.nnz == 810_128 and d.test.nnz == 217_242
    assert d.train.multiply(d.valid).nnz == 0  # validation is carved out of train, not copied
    n_u = np.diff((d.train + d.valid).indptr)
    share = d.valid.nnz / (d.train.nnz + d.valid.nnz)
    assert 0.08 < share <= 0.1 and (np.diff(d.valid.indptr) <= np.ceil(0.1 * n_u) + 1).all()
    again = load_dataset("gowalla", shared_root, seed=1)
    assert (again.valid != d.valid).nnz > 0  # the carve is seeded


def test_bibtex_tfidf_bags_reach_the_batches(monkeypatch):
    from recsys.data.batches import query_inputs
    from recsys.data.datamodule import InteractionDataModule
    from tests.conftest import SHARED

    if not (SHARED / "bibtex").exists():
        pytest.skip(f"real data for bibtex not found in {SHARED}")
    monkeypatch.setenv("RECSYS_DATA", str(SHARED))
    binary = InteractionDataModule(dataset="bibtex").data
    tfidf = InteractionDataModule(dataset="bibtex", bag_weighting="tfidf").data
    assert not binary.weighted_bags and tfidf.weighted_bags
    assert (binary.query_bags != 0).nnz == (tfidf.query_bags != 0).nnz  # same words, other values
    b = query_inputs(tfidf, np.array([0, 1]), 50)
    assert b["bag_w"].shape == b["bag"].shape and (b["bag_w"][b["bag"] == tfidf.bag_size] == 0).all()
    assert "bag_w" not in query_inputs(binary, np.array([0, 1]), 50)
    with pytest.raises(ConfigError, match="has no document bags"):
        _ = InteractionDataModule(dataset="synthetic", bag_weighting="tfidf").data
