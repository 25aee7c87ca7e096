"""Your own data: DataSource (YAML and Python), feature files, split kinds, pre-split files,
cold-start items and users, batch recommendations, export --items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from recsys.commands.console import main
from recsys.data.features import FeatureColumns, FeatureEncoder, feature_frame
from recsys.data.source import DataSource, SplitSpec, load_source
from recsys.errors import ConfigError, DataError
from tests.conftest import REPO, config_args


def write_files(folder, n_users=300, n_items=120, seed=0):
    """events.csv (customer_id, sku, quantity, ts), items.csv (sku, brand = the planted
    cluster, tags multi-valued, price), users.csv (customer_id, country); returns planted."""
    from recsys.data.synthetic import make_synthetic

    df, items, users, planted = make_synthetic(n_users=n_users, n_items=n_items, n_clusters=4,
                                               interactions_per_user=15.0, seed=seed)
    ev = pd.DataFrame({"customer_id": "u" + df.user.astype(str), "sku": "s" + df.item.astype(str),
                       "quantity": df.rating, "ts": df.time})
    ev.to_csv(folder / "events.csv", index=False)
    rng = np.random.default_rng(seed)
    pd.DataFrame({"sku": "s" + pd.Series(np.arange(n_items)).astype(str),
                  "brand": [f"b{c}" for c in planted["item_cluster"]],
                  "tags": items["genres"].to_numpy(), "price": rng.random(n_items),
                  "name": [f"product {j}" for j in range(n_items)]}).to_csv(folder / "items.csv", index=False)
    pd.DataFrame({"customer_id": "u" + pd.Series(np.arange(n_users)).astype(str),
                  "country": rng.choice(["de", "fr", "it"], n_users)}).to_csv(folder / "users.csv", index=False)
    return planted


SOURCE = {
    "interactions": "events.csv",
    "columns": {"user": "customer_id", "item": "sku", "time": "ts", "weight": "quantity"},
    "min_weight": 1,
    "k_core": {"users": 2, "items": 2},
    "item_features": "items.csv",
    "item_columns": {"item": "sku", "categorical": ["brand"], "multi": {"tags": "|"}, "numeric": ["price"],
                     "title": "name"},
    "user_features": "users.csv",
    "user_columns": {"user": "customer_id", "categorical": ["country"]},
}


def _abs(folder, spec):
    out = dict(spec)
    for k in ("interactions", "item_features", "user_features", "train", "valid", "test"):
        if out.get(k):
            out[k] = str(folder / out[k])
    return out


def test_source_reads_columns_features_and_names(tmp_path):
    write_files(tmp_path)
    d = load_source(_abs(tmp_path, SOURCE))
    assert d.name == "events.csv" and d.n_items == 120 and d.n_users == 300
    assert d.item_vocab.raw[0] == "s0"  # string ids kept
    toks = d.item_encoder.tokens
    assert "brand=b0" in toks and "tags=g0" in toks and not any("|" in t for t in toks)  # multi split on '|'
    assert d.item_encoder.names[-1] == "price" and d.item_numeric.shape == (120, 1)
    assert abs(float(d.item_numeric.mean())) < 1e-5  # standardised
    assert d.user_features.shape == (300, 1) and d.user_encoder.names == ["country"]
    j = int(d.item_vocab.encode(["s7"])[0])
    assert d.item_titles[j] == "product 7"
    row = d.item_features[j].indices
    assert {toks[t] for t in row} >= {"brand=b" + str(pd.read_csv(tmp_path / "items.csv").brand[7][1:])}
    assert d.stats()["item_feature_values"] == len(toks)


def test_feature_encoder_keeps_the_training_vocabulary_for_new_rows():
    cols = FeatureColumns(categorical=["brand"], multi={"tags": "|"}, numeric=["price"])
    train = pd.DataFrame({"brand": ["a", "b"], "tags": ["x|y", "y"], "price": [1.0, 3.0]}, index=["i1", "i2"])
    enc = FeatureEncoder.fit(train, "item", cols)
    new = pd.DataFrame({"brand": ["b", "zzz"], "tags": ["y|unseen", None], "price": [2.0, np.nan]})
    bag = enc.bag(new)
    assert [enc.tokens[t] for t in bag[0].indices] == ["brand=b", "tags=y"]  # unknown tag dropped
    assert bag[1].nnz == 0  # unknown brand, no tags: no token
    np.testing.assert_allclose(enc.numeric(new).ravel(), [0.0, 0.0])  # the mean; missing -> 0
    again = FeatureEncoder.from_state(json.loads(json.dumps(enc.to_state())))
    assert (again.bag(new) != bag).nnz == 0


def test_feature_file_errors_name_the_column_and_list_the_present_ones(tmp_path):
    df = pd.DataFrame({"sku": ["a", "b", "b"], "brand": ["x", "y", "z"]})
    present = r"columns present: \['sku', 'brand'\]"
    with pytest.raises(DataError, match=r"feature column\(s\) \['colour'\] not found; " + present):
        feature_frame(df.iloc[:2], "item", FeatureColumns(item="sku", categorical=["colour"]), "items.csv")
    with pytest.raises(DataError, match="1 duplicate item ids .*row 2"):
        feature_frame(df, "item", FeatureColumns(item="sku", categorical=["brand"]), "items.csv")
    bad = pd.DataFrame({"sku": ["a", "b"], "price": ["1.5", "cheap"]})
    with pytest.raises(DataError, match="numeric column 'price' .* row 1: 'cheap'"):
        feature_frame(bad, "item", FeatureColumns(item="sku", numeric=["price"]), "items.csv")


def test_a_columns_entry_that_does_not_exist_lists_the_columns_that_do(tmp_path):
    write_files(tmp_path)
    spec = _abs(tmp_path, {**SOURCE, "columns": {"user": "customer", "item": "sku"}})
    present = r"columns present: \['customer_id', 'sku', 'quantity', 'ts'\]"
    with pytest.raises(DataError, match=r"user -> 'customer'.*" + present):
        load_source(spec)


def test_source_config_errors():
    with pytest.raises(ConfigError, match="need exactly one"):
        load_source(DataSource())
    with pytest.raises(ConfigError, match="set only one"):
        load_source(DataSource(interactions="x.csv", min_weight=1, rating_threshold=3))
    with pytest.raises(ConfigError, match="split kind='weekly' is unknown"):
        load_source(DataSource(interactions="x.csv", split=SplitSpec(kind="weekly")))


@pytest.mark.parametrize("kind", ["random", "leave_last_out", "time", "users", "items"])
def test_split_kinds_are_disjoint_and_do_what_they_say(tmp_path, kind):
    write_files(tmp_path)
    d = load_source(_abs(tmp_path, {**SOURCE, "split": {"kind": kind, "valid": 0.1, "test": 0.1}}))
    tr, va, te = d.train, d.valid, d.test
    assert tr.multiply(va).nnz == 0 and tr.multiply(te).nnz == 0 and va.multiply(te).nnz == 0
    assert va.nnz > 0 and te.nnz > 0
    if kind == "users":  # held-out users: no train row; their inputs are the fold-in history
        held = np.flatnonzero(np.diff(te.indptr) > 0)
        assert np.diff(tr.indptr)[held].max() == 0 and np.diff(d.fold_in.indptr)[held].min() > 0
        assert (d.seen("test")[held].multiply(te[held])).nnz == 0  # inputs are excluded, targets are not
        assert d.history[held].nnz == d.fold_in[held].nnz
    elif kind == "items":  # every test item is absent from train and validation
        cold = d.cold_items()
        assert len(cold) == np.count_nonzero(np.diff(te.tocsc().indptr)) and len(cold) >= 10
        assert np.asarray((tr + va)[:, cold].sum()).item() == 0
        assert d.candidates("cold_items").tolist() == cold.tolist()
    else:
        assert d.fold_in is None and d.candidates("test") is None
    if kind == "time":  # every test row is at least as late as every train row (raw timestamps)
        ev = pd.read_csv(tmp_path / "events.csv").set_index(["customer_id", "sku"])["ts"]

        def times(m):
            c = m.tocoo()
            return ev.loc[list(zip(d.user_vocab.decode(c.row), d.item_vocab.decode(c.col)))].to_numpy()

        assert times(te).min() >= times(tr).max() and times(va).min() >= times(tr).max()


def write_adjacency(path, rows):
    path.write_text("".join(f"{u} {' '.join(map(str, its))}\n" if its else f"{u} \n" for u, its in rows))


def test_pre_split_files_with_a_carved_validation_set(tmp_path, caplog):
    rng = np.random.default_rng(0)
    tr = [(u, sorted(rng.choice(50, 12, replace=False).tolist())) for u in range(40)] + [(40, [])]  # 'uid '
    te = [(u, sorted(set(rng.choice(50, 3).tolist()))) for u in range(40)]
    write_adjacency(tmp_path / "train.txt", tr)
    write_adjacency(tmp_path / "test.txt", te)
    import logging

    with caplog.at_level(logging.INFO):
        d = load_source(DataSource(train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt")), seed=0)
    assert any("carved out as validation" in r.getMessage() for r in caplog.records)
    assert d.train.nnz + d.valid.nnz == 40 * 12 and d.valid.nnz == 40 * 1  # floor(10% of 12) = 1 per user
    assert d.test.nnz == sum(len(i) for _, i in te)
    again = load_source(DataSource(train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt")), seed=1)
    assert (again.valid != d.valid).nnz > 0  # the carve is seeded
    # an explicit validation file is used as given
    pd.DataFrame({"user": [0, 1], "item": [49, 48]}).to_csv(tmp_path / "valid.csv", index=False)
    d2 = load_source(DataSource(train=str(tmp_path / "train.txt"), valid=str(tmp_path / "valid.csv"),
                                test=str(tmp_path / "test.txt")))
    assert d2.valid.nnz == 2 and d2.train.nnz == 40 * 12


def test_catalogue_all_items_ranks_items_only_the_item_file_lists(tmp_path):
    write_files(tmp_path)
    extra = pd.read_csv(tmp_path / "items.csv")
    extra = pd.concat([extra, extra.head(5).assign(sku=[f"new{j}" for j in range(5)])])
    extra.to_csv(tmp_path / "items.csv", index=False)
    assert load_source(_abs(tmp_path, SOURCE)).n_items == 120
    d = load_source(_abs(tmp_path, {**SOURCE, "catalogue": "all_items"}))
    assert d.n_items == 125 and d.item_counts()[d.item_vocab.encode(["new0"])].item() == 0


def test_datamodule_takes_built_data_and_frames():
    from recsys.data.datamodule import InteractionDataModule
    from recsys.data.synthetic import make_synthetic

    df, items, _, _ = make_synthetic(n_users=200, n_items=80, n_clusters=4)
    events = df.rename(columns={"user": "user_id", "item": "item_id", "time": "timestamp"})
    cat = items.reset_index()[["item", "genres"]].rename(columns={"item": "item_id"})
    dm = InteractionDataModule.from_frame(events, items=cat, item_columns=FeatureColumns(multi={"genres": "|"}),
                                          batch_size=32)
    assert dm.data.n_items == 80 and dm.schema.n_item_feature_values == dm.data.item_features.shape[1] > 0
    dm2 = InteractionDataModule(data=dm.data, batch_size=16)
    assert dm2.data is dm.data and dm2.dataset == "frame" and next(iter(dm2.train_dataloader()))["item"].shape == (16,)


def test_fit_validate_with_a_yaml_source_and_with_the_shorthand(tmp_path):
    write_files(tmp_path)
    cfg = tmp_path / "source.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": _abs(tmp_path, SOURCE)}}))
    root = tmp_path / "out"
    main(["fit", *config_args("synthetic", "inbatch"), "--config", str(cfg), "--trainer.max_epochs=1",
          f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"])
    metrics = (root / "recsys" / "version_0" / "metrics.csv").read_text()
    assert "val/ndcg@10" in metrics.splitlines()[0]
    ckpt = root / "recsys" / "version_0" / "checkpoints" / "last.ckpt"
    from recsys.artifacts.checkpoint import load_checkpoint

    model, dm, meta = load_checkpoint(ckpt)
    assert meta.dataset == "events.csv" and dm.data.item_numeric is not None
    assert model.item_tower.num_proj is not None and "brand=b0" in model.item_tower.feature_names
    # the shorthand: usual column names, one file
    ev = pd.read_csv(tmp_path / "events.csv").rename(columns={"customer_id": "user_id", "sku": "item_id",
                                                              "quantity": "rating", "ts": "timestamp"})
    ev.to_csv(tmp_path / "plain.csv", index=False)
    main(["fit", *config_args("synthetic", "inbatch"), f"--data.dataset={tmp_path / 'plain.csv'}",
          "--data.k_core=2", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path / 'out2'}",
          "--trainer.enable_progress_bar=false"])
    assert "val/ndcg@10" in (tmp_path / "out2" / "recsys" / "version_0" / "metrics.csv").read_text()


# ---- cold start --------------------------------------------------------------------------
def _cold_model(tmp_path, use_id=True, rate=0.2, seed=0, epochs=4):
    """A tiny in-batch model on the planted files with 20% of the items held out (split kind
    items), trained directly (no CLI)."""
    import lightning as L
    import torch

    from recsys.data.datamodule import InteractionDataModule
    from recsys.model.heads import InBatchSoftmax
    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    planted = write_files(tmp_path, n_users=600, n_items=200)
    src = DataSource(**{**_abs(tmp_path, SOURCE), "split": {"kind": "items", "valid": 0.1, "test": 0.2}})
    dm = InteractionDataModule(source=src, batch_size=128, max_history=20)
    torch.manual_seed(seed)
    model = TwoTowerModule(
        dm.schema,
        query_tower=lambda s: QueryTower(s, dim=32, use_id=False, sparse=False),
        item_tower=lambda s: ItemTower(s, dim=32, sparse=False, use_id=use_id, unknown_id_rate=rate),
        head=InBatchSoftmax(),
        dense_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(model, dm)
    return model, dm, planted


def test_a_feature_only_item_ranks_above_chance_for_the_users_of_its_cluster(tmp_path):
    from recsys.eval.evaluate import evaluate

    model, dm, _ = _cold_model(tmp_path, use_id=True, rate=0.5)
    d = dm.data
    cold = d.cold_items()
    M = len(cold)
    res = evaluate(model, dm, "cold_items", ks=(10,))
    chance = 10 / M  # a random ranking of the M cold items: expected recall@10 (about 0.25)
    assert res.metrics["recall@10"] > 1.6 * chance, (res.metrics["recall@10"], chance)  # seen: 0.57
    # the ranking is over the cold items only
    assert set(res.I.ravel().tolist()) <= set(cold.tolist())
    # and a random ranking of the same cold items, measured, is far below
    from recsys.eval.metrics import ranking_metrics

    rng = np.random.default_rng(0)
    I = np.stack([rng.permutation(cold)[:10] for _ in res.users])
    rand = ranking_metrics(I, d.truth("cold_items")[res.users], (10,))["recall@10"]
    assert res.metrics["recall@10"] > 1.6 * rand
    # a feature-only item tower (no id at all) ranks cold items from the features too
    model2, dm2, _ = _cold_model(tmp_path, use_id=False, rate=0.0)
    assert model2.item_tower.item_emb is None
    assert evaluate(model2, dm2, "cold_items", ks=(10,)).metrics["recall@10"] > 1.6 * chance  # seen: 0.61


def test_cold_items_use_the_unknown_row_and_new_items_embed_like_cold_ones(tmp_path):
    import torch

    model, dm, _ = _cold_model(tmp_path, use_id=True, rate=0.2, epochs=1)
    t = model.item_tower.eval()
    d = dm.data
    cold = torch.as_tensor(d.cold_items()[:5])
    assert t.item_emb.num_embeddings == d.n_items + 1 and t.cold_item[cold].all()
    with torch.no_grad():
        got = t(cold)
        # a cold item is its features + the unknown row: the same as embedding it as a new item
        from recsys.data.batches import pad_rows

        bag = d.item_features[cold.numpy()]
        rows = torch.from_numpy(pad_rows(bag.indptr.astype(np.int64), bag.indices.astype(np.int64),
                                         np.arange(5), t.feat_index.shape[1], pad=bag.shape[1]))
        new = t.embed_new(rows, torch.from_numpy(d.item_numeric[cold.numpy()]))
    torch.testing.assert_close(got, new)
    # the mask changes the result: without it, the cold items would read their own (untrained) rows
    t.cold_item = None
    with torch.no_grad():
        assert not torch.allclose(t(cold), got)


def test_unknown_id_dropout_only_in_training_and_a_zero_id_part_without_it():
    import torch

    from recsys.model.towers import ItemTower, QueryTower
    from recsys.schema import Schema

    s = Schema(n_users=5, n_items=6, bag_size=6, item_counts=np.array([3, 1, 0, 2, 2, 1]),
               user_counts=np.array([1, 0, 2, 2, 2]))
    t = ItemTower(s, dim=4, sparse=False, unknown_id_rate=0.5)
    ids = torch.arange(6).repeat(50)
    t.train()
    torch.manual_seed(0)
    a = t(ids)
    t.eval()
    b = t(ids)
    unk = t.item_emb.weight[-1]
    assert (a == unk).all(1).float().mean() > 0.3  # about half replaced in training
    assert (b == unk).all(1).sum() == 50  # in eval only the cold item 2 reads the unknown row
    z = ItemTower(s, dim=4, sparse=False).eval()
    assert torch.count_nonzero(z(torch.tensor([2]))) == 0  # a zero id part, no features
    q = QueryTower(s, dim=4, sparse=False, use_bag=False).eval()
    out = q({"user": torch.tensor([0, 1, -1])})
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[2]) == 0 and torch.count_nonzero(out[0]) > 0
    with pytest.raises(ConfigError, match="unknown_id_rate=1.5"):
        ItemTower(s, unknown_id_rate=1.5)


def test_held_out_users_are_queried_by_their_fold_in_history(tmp_path):
    write_files(tmp_path)
    from recsys.data.batches import QueryDataset

    d = load_source(_abs(tmp_path, {**SOURCE, "split": {"kind": "users", "valid": 0.1, "test": 0.1}}))
    held = d.eval_users("test")
    batch = QueryDataset(d, held[:4], 50).__getitems__(range(4))
    for r, u in enumerate(held[:4]):
        bag = batch["bag"][r].numpy()
        assert set(bag[bag < d.n_items].tolist()) == set(d.fold_in[u].indices.tolist())


# ---- commands on a trained model -----------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    write_files(folder)
    cfg = folder / "source.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": _abs(folder, SOURCE)}}))
    main(["fit", *config_args("synthetic", "inbatch"), "--config", str(cfg), "--trainer.max_epochs=1",
          f"--trainer.default_root_dir={folder / 'out'}", "--trainer.enable_progress_bar=false",
          "--model.item_tower.init_args.unknown_id_rate=0.1"])
    return folder, folder / "out" / "recsys" / "version_0" / "checkpoints" / "last.ckpt"


def test_batch_recommendations_match_single_ones(fitted, tmp_path):
    from recsys.artifacts.recommender import Recommender

    folder, ckpt = fitted
    (tmp_path / "users.txt").write_text("user\nu1\nu5\nu7\n")
    out = tmp_path / "recs.parquet"
    main(["recommend", "--ckpt", str(ckpt), "--users", str(tmp_path / "users.txt"), "-k", "5", "--out", str(out),
          "--chunk", "2"])
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user", "rank", "item", "score"] and len(recs) == 15
    rec = Recommender.from_checkpoint(ckpt)
    for u in ("u1", "u5", "u7"):
        assert recs[recs.user == u].item.tolist() == [r["item"] for r in rec.recommend(u, k=5)]
    main(["recommend", "--ckpt", str(ckpt), "--users", "all", "-k", "3", "--out", str(tmp_path / "all.csv")])
    assert len(pd.read_csv(tmp_path / "all.csv")) == 3 * len(rec.user_vocab)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ConfigError, match="without --out"):
        main(["recommend", "--ckpt", str(ckpt), "--users", "all"])


def test_recommend_for_a_new_user_from_their_history(fitted, capsys):
    from recsys.artifacts.recommender import Recommender

    _, ckpt = fitted
    rec = Recommender.from_checkpoint(ckpt)
    rows = rec.recommend_history(["s1", "s2", "s3"], k=5)
    assert len(rows) == 5 and not {"s1", "s2", "s3"} & {r["item"] for r in rows}
    assert rows[0]["features"].startswith("brand=")  # the item's feature tokens are printed
    other = rec.recommend_history(["s100", "s101", "s102", "s103"], k=5)
    assert [r["item"] for r in rows] != [r["item"] for r in other]  # the history drives the result
    main(["recommend", "--ckpt", str(ckpt), "--history", "s1,s2,s3", "-k", "5"])
    assert "brand=" in capsys.readouterr().out
    with pytest.raises(DataError, match="unknown item id"):
        rec.recommend_history(["nope"])


def test_export_adds_new_items_without_retraining(fitted, tmp_path):
    from recsys.artifacts.export import load_export
    from recsys.artifacts.recommender import Recommender

    folder, ckpt = fitted
    items = pd.read_csv(folder / "items.csv")
    new = items.head(3).assign(sku=["n0", "n1", "n2"], name=["new a", "new b", "new c"])
    new.to_csv(tmp_path / "new_items.csv", index=False)
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp")])
    base = load_export(tmp_path / "exp")
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp"), "--items", str(tmp_path / "new_items.csv"),
          "--force"])
    e = load_export(tmp_path / "exp")
    assert e.item_embeddings.shape[0] == base.item_embeddings.shape[0] + 3 and e.manifest["n_trained_items"] == 120
    np.testing.assert_array_equal(e.item_embeddings[:-3], base.item_embeddings)
    assert list(e.item_vocab.raw[-3:]) == ["n0", "n1", "n2"] and list(e.titles[-3:]) == ["new a", "new b", "new c"]
    assert e.faiss_index().ntotal == e.item_embeddings.shape[0] and e.seen.shape[1] == e.item_embeddings.shape[0]
    # a new item with the features of a known cold-free item lands near it: same tokens, same numeric
    j = int(base.item_vocab.encode(["s0"])[0])
    cos = e.item_embeddings[-3] @ base.item_embeddings[j] / (
        np.linalg.norm(e.item_embeddings[-3]) * np.linalg.norm(base.item_embeddings[j]))
    assert cos > 0.3
    rec = Recommender.from_export(tmp_path / "exp")
    assert len(rec.recommend("u1", k=10)) == 10
    rows = rec.recommend_history(["s0", "s1"], k=e.item_embeddings.shape[0] - 2)  # every other item, new ones too
    assert {"n0", "n1", "n2"} <= {r["item"] for r in rows}
    with pytest.raises(DataError, match="added after training"):
        rec.recommend_history(["n0"])
    with pytest.raises(DataError, match="already in the catalogue"):
        items.head(2).to_csv(tmp_path / "old.csv", index=False)
        main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp2"), "--items", str(tmp_path / "old.csv")])
    assert not (tmp_path / "exp2").exists()


def test_readme_yaml_block_is_a_valid_source():
    text = (REPO / "README.md").read_text()
    start = text.index("```yaml\ndata:\n  source:")
    block = text[start + len("```yaml\n"): text.index("```", start + 7)]
    spec = yaml.safe_load(block)["data"]["source"]
    src = DataSource(**spec)
    assert src.split.kind in ("random", "leave_last_out", "time", "users", "items")
    assert isinstance(src.item_columns, FeatureColumns)


def test_compare_runs_on_a_source_base_config(fitted, tmp_path):
    folder, _ = fitted
    base = yaml.safe_load((REPO / "configs" / "synthetic" / "base.yaml").read_text())
    base["data"] = {"source": _abs(folder, SOURCE), "batch_size": 256, "max_history": 20}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "cmp"
    main(["compare", "--config", str(tmp_path / "base.yaml"), "--head-configs", str(REPO / "configs" / "synthetic"),
          "--heads", "inbatch", "--seeds", "1", "--baselines", "pop", "--max-epochs", "1", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"]["dataset"] == "events.csv" and res["dataset_loads"] == 1
    assert {r["model"] for r in res["runs"]} >= {"inbatch", "pop"}


class _Boom:
    def __reduce__(self):
        return (print, ("this would run code",))


def _resign(exp, name):  # the attacker fixes the checksum in the manifest too
    import hashlib

    man = json.loads((exp / "manifest.json").read_text())
    man["files"][name]["sha256"] = hashlib.sha256((exp / name).read_bytes()).hexdigest()
    (exp / "manifest.json").write_text(json.dumps(man))


def test_an_export_query_tower_holding_a_pickle_or_a_foreign_class_is_refused_unread(fitted, tmp_path, capsys):
    from recsys.artifacts.export import load_query_tower

    _, ckpt = fitted
    exp = tmp_path / "exp"
    main(["export", "--ckpt", str(ckpt), "--out", str(exp)])
    assert load_query_tower(exp).bag_emb is not None  # a clean export loads
    good = (exp / "query_tower.npz").read_bytes()
    with np.load(exp / "query_tower.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(exp / "query_tower.npz", **arrays, x=np.array([_Boom()], dtype=object))  # a pickled object
    _resign(exp, "query_tower.npz")
    with pytest.raises(DataError, match="refused unread"):
        load_query_tower(exp)
    (exp / "query_tower.npz").write_bytes(good)
    _resign(exp, "query_tower.npz")
    desc = json.loads((exp / "query_tower.json").read_text())
    desc["config"] = desc["config"].replace("class_path: recsys.QueryTower", "class_path: os.system")
    assert "os.system" in desc["config"]
    (exp / "query_tower.json").write_text(json.dumps(desc))
    _resign(exp, "query_tower.json")
    with pytest.raises(ConfigError, match="class_path 'os.system' is not allowed"):
        load_query_tower(exp)
    assert "this would run code" not in capsys.readouterr().out


def test_a_checkpoint_naming_a_foreign_class_or_holding_a_pickle_is_refused(fitted, tmp_path, capsys):
    import torch

    from recsys.artifacts.checkpoint import load_checkpoint, read_checkpoint

    _, ckpt = fitted
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # our checkpoints are plain tensors + values
    for foreign in ("os.system", "recsys.data.io.os.system", "torch.optim.Adam.__init__"):
        bad = dict(raw, recsys=dict(raw["recsys"], config=raw["recsys"]["config"].replace(
            "class_path: recsys.QueryTower", f"class_path: {foreign}")))
        torch.save(bad, tmp_path / "foreign.ckpt")
        with pytest.raises(ConfigError, match=f"class_path '{foreign}' is not allowed"):
            load_checkpoint(tmp_path / "foreign.ckpt")
    torch.save(dict(raw, extra=_Boom()), tmp_path / "pickle.ckpt")
    with pytest.raises(DataError, match="refused unread"):
        read_checkpoint(tmp_path / "pickle.ckpt")
    assert "this would run code" not in capsys.readouterr().out


def test_top_level_help_and_unknown_commands_need_no_training_stack():
    import subprocess
    import sys

    code = ("import sys; from recsys.commands.console import main; main(['--help']); "
            "assert 'lightning' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "fit | validate | test | predict" in out.stdout and "recommend" in out.stdout
    with pytest.raises(ConfigError, match="command 'nonsense' is unknown"):
        main(["nonsense"])


def test_recommend_from_an_export_needs_neither_torch_nor_lightning(fitted, tmp_path):
    import subprocess
    import sys

    _, ckpt = fitted
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp")])
    code = ("import sys; from recsys.commands.console import main; "
            f"main(['recommend', '--model', {str(tmp_path / 'exp')!r}, '--user', 'u1', '-k', '3']); "
            "assert not {'torch', 'lightning', 'faiss'} & set(sys.modules), 'training stack imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 4  # header + 3 rows


def test_recommend_history_from_an_export_needs_no_lightning(fitted, tmp_path):
    """A new user's history is embedded by the export's query tower: torch, but not Lightning
    (the fit-time module and data module are never imported), and the same rows as the checkpoint."""
    import subprocess
    import sys

    from recsys.artifacts.recommender import Recommender

    _, ckpt = fitted
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exp")])
    code = ("import sys, json; from recsys.artifacts.recommender import Recommender; "
            f"rows = Recommender.from_export({str(tmp_path / 'exp')!r}).recommend_history(['s1', 's2', 's3'], k=5); "
            "assert 'lightning' not in sys.modules, 'Lightning imported'; "
            "print(json.dumps([r['item'] for r in rows]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    expected = [r["item"] for r in Recommender.from_checkpoint(ckpt).recommend_history(["s1", "s2", "s3"], k=5)]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_items_split_with_cold_validation_items_selects_on_cold_items(tmp_path):
    write_files(tmp_path, n_users=400, n_items=150)
    d = load_source(_abs(tmp_path, {**SOURCE, "split": {"kind": "items", "valid": 0.1, "test": 0.2,
                                                        "cold_valid": True}}))
    vitems = np.flatnonzero(np.diff(d.valid.tocsc().indptr) > 0)
    assert d.valid_candidates.tolist() == vitems.tolist() and 10 <= len(vitems) <= 15
    assert np.asarray(d.train[:, vitems].sum()).item() == 0  # validation items are never trained on
    assert not set(vitems) & set(d.cold_items().tolist())  # and are not the test items
    assert d.candidates("valid") is d.valid_candidates and d.candidates("test") is None
    warm = load_source(_abs(tmp_path, {**SOURCE, "split": {"kind": "items", "valid": 0.1, "test": 0.2}}))
    assert warm.candidates("valid") is None and (warm.test != d.test).nnz == 0  # same cold test items
    from recsys.eval.baselines import Popularity
    from recsys.eval.evaluate import evaluate

    res = evaluate(Popularity().fit(d), d, "valid", ks=(5,))
    assert set(res.I.ravel().tolist()) <= set(vitems.tolist())  # validation ranks the validation items
    with pytest.raises(ConfigError, match="cold_valid=true with split 'random'"):
        load_source(_abs(tmp_path, {**SOURCE, "split": {"kind": "random", "cold_valid": True}}))
