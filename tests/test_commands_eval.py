"""Checkpoint loading and the ``recsys evaluate`` / ``recommend`` / ``export`` commands.

One tiny synthetic model is trained once for the module (2 epochs, ~100 items); every test
reads its checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import yaml

from recsys.artifacts.checkpoint import load_checkpoint, read_checkpoint
from recsys.artifacts.export import load_export, load_query_tower, query_embeddings
from recsys.artifacts.recommender import Recommender, gumbel_topk
from recsys.commands.console import main as recsys_main
from recsys.errors import ConfigError, DataError
from recsys.eval.evaluate import evaluate

pytestmark = pytest.mark.filterwarnings("ignore:.*args parameter is intended.*")
TINY = {"n_users": 300, "n_items": 120, "n_clusters": 4, "interactions_per_user": 15.0}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Run folder of a 2-epoch fit on tiny synthetic data (checkpoints/best-*.ckpt, last.ckpt)."""
    root = tmp_path_factory.mktemp("fit")
    return fit_tiny(root, 2, {
        "query_tower": {"class_path": "recsys.model.towers.QueryTower", "init_args": {"dim": 16}},
        "item_tower": {"class_path": "recsys.model.towers.ItemTower", "init_args": {"dim": 16}},
        "head": {"class_path": "recsys.model.heads.InBatchSoftmax", "init_args": {"logq": "static"}}})


def fit_tiny(root: Path, max_epochs: int, model: dict) -> Path:
    """``recsys fit`` of ``model`` (the YAML ``model`` block) on TINY synthetic data; its run folder."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": max_epochs, "accelerator": "cpu", "enable_model_summary": False,
                    "enable_progress_bar": False, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root), "name": "recsys"}}},
        "data": {"dataset": "synthetic", "batch_size": 256, "max_history": 10, "synthetic": TINY},
        "model": model,
    }
    (root / "fit.yaml").write_text(yaml.safe_dump(cfg))
    recsys_main(["fit", "--config", str(root / "fit.yaml")])
    return root / "recsys" / "version_0"


@pytest.fixture(scope="module")
def best(run) -> Path:
    (path,) = (run / "checkpoints").glob("best-*.ckpt")
    return path


@pytest.fixture(scope="module")
def last(run) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def export(last, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    recsys_main(["export", "--ckpt", str(last), "--out", str(out)])
    return out


def _ranking(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "search_seconds"}


# ---- checkpoint loading --------------------------------------------------------------
def test_loaded_model_reproduces_training_validation_score(best):
    """The best checkpoint's val/ndcg@10, as logged during fit, is recomputed from the file."""
    model, dm, meta = load_checkpoint(best)
    assert not model.training
    res = evaluate(model, dm, "valid", ks=(10,))
    assert res.metrics["ndcg@10"] == pytest.approx(meta.metrics["val/ndcg@10"], abs=1e-6)
    assert meta.run_dir == best.parent.parent and meta.dataset == "synthetic"


def test_missing_and_foreign_checkpoints_raise(tmp_path, last):
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    ckpt = torch.load(last, weights_only=False)
    del ckpt["recsys"]
    torch.save(ckpt, tmp_path / "plain.ckpt")
    with pytest.raises(DataError, match="no recsys block.*recsys fit"):
        load_checkpoint(tmp_path / "plain.ckpt")


def test_vocab_mismatch_raises(tmp_path, last):
    """A checkpoint evaluated against other data (synthetic seed changed) is refused."""
    with pytest.raises(DataError, match=r"item vocab [0-9a-f]{16} .* has item vocab [0-9a-f]{16}.*Fix"):
        load_checkpoint(last, data_overrides={"synthetic": {**TINY, "seed": 1}})
    # the same through the command: the stored config now points at different data
    ckpt = torch.load(last, weights_only=False)
    cfg = yaml.safe_load(ckpt["recsys"]["config"])
    cfg["data"]["synthetic"]["n_users"] = 250
    ckpt["recsys"]["config"] = yaml.safe_dump(cfg)
    torch.save(ckpt, tmp_path / "moved.ckpt")
    with pytest.raises(DataError, match=r"moved\.ckpt.*vocab"):
        recsys_main(["evaluate", "--ckpt", str(tmp_path / "moved.ckpt"), "--out", str(tmp_path)])
    assert not (tmp_path / "eval_test.json").exists()


# ---- recsys evaluate -----------------------------------------------------------------
def test_evaluate_writes_json_and_md_equal_to_evaluate_model(tmp_path, last, capsys):
    recsys_main(["evaluate", "--ckpt", str(last), "--k", "5", "10", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "eval_test.json").read_text())
    model, dm, _ = load_checkpoint(last)
    want = _ranking(evaluate(model, dm, "test", ks=(5, 10)).metrics)
    got = _ranking(report["metrics"])
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    assert report["k"] == [5, 10] and report["index"] == "exact" and report["split"] == "test"
    assert report["checkpoint"] == str(last.resolve()) and "index_recall" not in report
    md = (tmp_path / "eval_test.md").read_text()
    assert "| recall@5 |" in md and f"{want['ndcg@10']:.4f}" in md
    assert f"{want['ndcg@10']:.4f}" in printed


def test_evaluate_default_out_is_run_folder_and_valid_split(run, best):
    recsys_main(["evaluate", "--ckpt", str(best), "--split", "valid", "--k", "10"])
    report = json.loads((run / "eval_valid.json").read_text())
    assert report["split"] == "valid"
    _, meta = read_checkpoint(best)
    assert report["metrics"]["ndcg@10"] == pytest.approx(meta.metrics["val/ndcg@10"], abs=1e-6)


def test_faiss_flat_evaluation_equals_exact_and_ivf_reports_index_recall(tmp_path, last):
    from recsys.commands.evaluate import evaluate_checkpoint

    exact, _ = evaluate_checkpoint(last, ks=(10, 20), index="exact", out=tmp_path / "exact")
    flat, _ = evaluate_checkpoint(last, ks=(10, 20), index="flat", out=tmp_path / "flat")
    assert _ranking(flat["metrics"]) == pytest.approx(_ranking(exact["metrics"]), abs=1e-9)
    ivf, table = evaluate_checkpoint(last, ks=(10,), index="ivf", index_params={"nlist": 8, "nprobe": 1},
                                     out=tmp_path / "ivf")
    assert 0.0 < ivf["index_recall"] < 1.0  # 1 of 8 cells scanned: approximate
    assert "index_recall" in table


def test_evaluate_bad_index_params(last):
    with pytest.raises(ConfigError, match="not valid JSON"):
        recsys_main(["evaluate", "--ckpt", str(last), "--index", "ivf", "--index-params", "{nprobe: 3"])


# ---- recsys recommend ----------------------------------------------------------------
def test_recommend_checkpoint_equals_export(last, export, capsys):
    from_ckpt, from_export = Recommender.from_checkpoint(last), Recommender.from_export(export)
    for user in from_ckpt.user_vocab.raw[:20]:
        a, b = from_ckpt.recommend(user, k=10), from_export.recommend(user, k=10)
        assert [r["item"] for r in a] == [r["item"] for r in b]
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-5)
        assert [r["title"] for r in a] == [r["title"] for r in b] and a[0]["title"]
        sa = from_ckpt.recommend(user, k=10, temperature=0.5, seed=3)
        assert [r["item"] for r in sa] == [r["item"] for r in from_export.recommend(user, 10, 0.5, seed=3)]
    user = str(from_ckpt.user_vocab.raw[7])
    recsys_main(["recommend", "--ckpt", str(last), "--user", user, "-k", "5"])
    out_ckpt = capsys.readouterr().out
    recsys_main(["recommend", "--model", str(export), "--user", user, "-k", "5"])
    assert capsys.readouterr().out == out_ckpt
    assert len(out_ckpt.strip().splitlines()) == 6 and "title" in out_ckpt.splitlines()[0]


def test_seen_items_never_recommended(export):
    rec = Recommender.from_export(export)
    ex = load_export(export)
    seen_in_plain_topk = 0
    for u, user in enumerate(rec.user_vocab.raw):
        seen = set(ex.seen[u].indices.tolist())
        scores = ex.item_embeddings @ ex.user_embeddings[u]
        seen_in_plain_topk += len(seen & set(np.argsort(-scores)[:20].tolist()))
        for T in (0.0, 1.0):
            rows = rec.recommend(user, k=20, temperature=T, seed=u)
            ids = rec.item_vocab.encode([r["item"] for r in rows])
            assert len(ids) == 20 == len(set(ids.tolist()))
            assert not seen & set(ids.tolist()), (user, T)
    assert seen_in_plain_topk > 0  # the trained model does rank seen items high: exclusion matters


def test_unknown_user_raises(last, export):
    with pytest.raises(DataError, match=r"unknown user id\(s\) \['no-such-user'\]"):
        Recommender.from_export(export).recommend("no-such-user")
    with pytest.raises(DataError, match="unknown user"):
        recsys_main(["recommend", "--ckpt", str(last), "--user", "100000"])


# ---- gumbel_topk -----------------------------------------------------------------------
def test_gumbel_topk_small_temperature_is_topk():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(50, 200))
    ex = rng.random((50, 200)) < 0.3
    want = np.argsort(np.where(ex, np.inf, -S), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(gumbel_topk(S, 10, 0.0, exclude_mask=ex), want)
    np.testing.assert_array_equal(gumbel_topk(S, 10, 1e-6, rng, exclude_mask=ex), want)
    np.testing.assert_array_equal(gumbel_topk(S[3], 10, 1e-6, rng, exclude_mask=ex[3]), want[3])
    # fewer admissible items than k: padded with -1
    out = gumbel_topk(np.arange(5.0), 4, 1.0, rng, exclude_mask=np.array([1, 1, 0, 1, 0], bool))
    assert sorted(out[:2].tolist()) == [2, 4] and out[2:].tolist() == [-1, -1]


def test_gumbel_topk_huge_temperature_is_uniform_over_unseen():
    """First pick over 20k draws at T=1e6: chi-square against uniform over unseen items."""
    rng = np.random.default_rng(0)
    S = rng.normal(size=40) * 5  # strongly peaked at T=1
    ex = np.zeros(40, bool)
    ex[::4] = True  # 10 seen items
    draws = 20_000
    keys_rng = np.random.default_rng(1)
    first = gumbel_topk(np.broadcast_to(S, (draws, 40)), 3, 1e6, keys_rng,
                        exclude_mask=np.broadcast_to(ex, (draws, 40)))
    assert not ex[first].any()
    assert all(len(set(r)) == 3 for r in first[:100].tolist())
    counts = np.bincount(first[:, 0], minlength=40)[~ex]
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    # at T=1 the same test rejects uniformity, and the first pick follows softmax(S)
    first1 = gumbel_topk(np.broadcast_to(S, (draws, 40)), 1, 1.0, keys_rng,
                         exclude_mask=np.broadcast_to(ex, (draws, 40)))[:, 0]
    counts1 = np.bincount(first1, minlength=40)[~ex]
    assert scipy.stats.chisquare(counts1).pvalue < 1e-6
    p = np.exp(S[~ex] - S[~ex].max())
    p /= p.sum()
    big = p * draws > 5  # chi-square needs expected counts >= 5: pool the rest
    f_exp = np.append(p[big] * draws, p[~big].sum() * draws)
    f_obs = np.append(counts1[big], counts1[~big].sum())
    assert scipy.stats.chisquare(f_obs, f_exp).pvalue > 1e-3


# ---- recsys export ---------------------------------------------------------------------
def test_export_contents_and_faiss_index(export, last):
    ex = load_export(export)
    man = ex.manifest
    names = {"item_embeddings.npy", "user_embeddings.npy", "item_vocab.json", "user_vocab.json", "seen.npz",
             "faiss.index", "query_tower.npz", "query_tower.json", "titles.json", "item_features.json"}
    assert set(man["files"]) == names and set(p.name for p in export.iterdir()) == names | {"manifest.json"}
    assert set(man["versions"]) == {"recsys", "torch", "faiss", "numpy"}
    assert "val/ndcg@10" in man["metrics"] and man["dataset"] == "synthetic"
    N, D = ex.item_embeddings.shape
    assert ex.item_embeddings.dtype == np.float32 and (N, D) == (man["n_items"], 16)
    assert ex.user_embeddings.shape == (man["n_users"], D) and ex.seen.shape == (man["n_users"], N)
    index = ex.faiss_index()
    assert index.ntotal == N
    _, I = index.search(ex.user_embeddings[:30], 10)
    want = np.argsort(-(ex.user_embeddings[:30] @ ex.item_embeddings.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(I, want)


def test_export_query_tower_rebuilds_user_embeddings(export, last):
    tower = load_query_tower(export)
    _, dm, _ = load_checkpoint(last)
    users = np.arange(25)
    xu = query_embeddings(tower, dm.data, users, dm.max_history)
    np.testing.assert_allclose(xu, load_export(export).user_embeddings[users], rtol=1e-5, atol=1e-6)


def test_export_checksum_tamper_raises(export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    load_export(copy)
    emb = np.load(copy / "item_embeddings.npy")
    emb[0, 0] += 1.0
    np.save(copy / "item_embeddings.npy", emb)
    with pytest.raises(DataError, match="item_embeddings.npy has sha256 .* re-export"):
        load_export(copy)
    with pytest.raises(DataError, match="not a recsys export folder"):
        load_export(tmp_path)


def test_export_refuses_overwrite_and_is_atomic(last, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="refusing to overwrite.*--force"):
        recsys_main(["export", "--ckpt", str(last), "--out", str(out)])
    assert (out / "keep.txt").read_text() == "mine"
    # a failure half-way leaves neither a half folder nor the .tmp folder, and the old one intact
    import faiss

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        recsys_main(["export", "--ckpt", str(last), "--out", str(out), "--force"])
    with pytest.raises(OSError, match="disk full"):
        recsys_main(["export", "--ckpt", str(last), "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.tmp").exists()
    assert not (tmp_path / "exp.tmp").exists() and (out / "keep.txt").exists()
    monkeypatch.undo()
    recsys_main(["export", "--ckpt", str(last), "--out", str(out), "--force", "--index", "hnsw"])
    assert not (out / "keep.txt").exists() and load_export(out).manifest["index"]["name"] == "hnsw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_popularity_prior_is_served_by_evaluate_export_and_recommend(tmp_path):
    """A one-weight prior_grid fixes w = 1: every retrieval path ranks by logit + log p_j."""
    run = fit_tiny(tmp_path, 1, {
        "query_tower": {"class_path": "recsys.model.towers.QueryTower",
                        "init_args": {"dim": 8, "normalize": True, "item_bias": True}},
        "item_tower": {"class_path": "recsys.model.towers.ItemTower",
                       "init_args": {"dim": 8, "normalize": True, "item_bias": True}},
        "prior_grid": [1.0],
        "head": {"class_path": "recsys.model.heads.InBatchSoftmax", "init_args": {"temperature": 0.5}}})
    ckpt = run / "checkpoints" / "last.ckpt"
    model, dm, _ = load_checkpoint(ckpt)
    assert float(model.prior_weight) == 1.0
    c = dm.data.item_counts() + 1.0
    raw = model.item_tower.embed_all().numpy()
    served = model.item_embeddings().numpy()
    np.testing.assert_allclose(served[:, -1] - raw[:, -1], 0.5 * np.log(c / c.sum()), rtol=1e-5, atol=1e-6)
    from recsys.commands.evaluate import evaluate_checkpoint

    report, _ = evaluate_checkpoint(ckpt, ks=[10], out=tmp_path / "eval")
    assert report["prior_weight"] == 1.0
    out = tmp_path / "export"
    recsys_main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    ex = load_export(out)
    assert ex.manifest["prior_weight"] == 1.0
    np.testing.assert_allclose(ex.item_embeddings, served, rtol=1e-6)
    a, b = Recommender.from_checkpoint(ckpt), Recommender.from_export(out)
    for user in a.user_vocab.raw[:10]:
        assert [r["item"] for r in a.recommend(user, k=10)] == [r["item"] for r in b.recommend(user, k=10)]
    # without the prior the ranking differs for some user: the prior reaches the served lists
    xu = ex.user_embeddings
    assert (np.argsort(-(xu @ served.T), 1)[:, :10] != np.argsort(-(xu @ raw.T), 1)[:, :10]).any()

