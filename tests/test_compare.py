"""`recsys compare` end to end on tiny synthetic data, and its config composition."""

from __future__ import annotations

import json

import pytest
import yaml

from recsys.commands.compare import aggregate, curve_ks, head_source
from recsys.commands.console import main
from recsys.errors import ConfigError
from tests.conftest import TINY

BASE = {
    "seed_everything": 0,
    "trainer": {"max_epochs": 3, "accelerator": "cpu"},
    "data": {"dataset": "synthetic", "batch_size": 128, "max_history": 8, "synthetic": dict(TINY)},
    "model": {
        "query_tower": {"class_path": "recsys.model.towers.QueryTower", "init_args": {"dim": 8}},
        "item_tower": {"class_path": "recsys.model.towers.ItemTower", "init_args": {"dim": 8}},
    },
}
INBATCH = {"model": {"head": {"class_path": "recsys.model.heads.InBatchSoftmax", "init_args": {"logq": "static"}}}}
FULL = {"model": {"head": {"class_path": "recsys.model.heads.FullSoftmax", "init_args": {"temperature": 0.5}}}}


def test_head_source_composes_the_head_file_or_the_default_class(tmp_path):
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(FULL))
    assert head_source("full", tmp_path) == (["--config", str(tmp_path / "full.yaml")], str(tmp_path / "full.yaml"))
    args, src = head_source("sigmoid", tmp_path)  # no file: the class with its defaults
    assert args == ["--model.head=recsys.model.heads.sigmoid.MultiLabelSigmoid"] and src == "default MultiLabelSigmoid"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": {"dim": 3}}))
    with pytest.raises(ConfigError, match="no model.head block"):
        head_source("bad", tmp_path)
    # a head file may not change the data or the towers: every head sees the base's
    (tmp_path / "towers.yaml").write_text(yaml.safe_dump({**FULL, "data": {"dataset": "ml-1m"},
                                                         "model": {**FULL["model"], "query_tower": {}}}))
    with pytest.raises(ConfigError, match=r"sets \['data', 'model.query_tower'\]"):
        head_source("towers", tmp_path)
    # how the head's checkpoint is chosen is the head's (a tree head validates by its own beam)
    (tmp_path / "tree.yaml").write_text(yaml.safe_dump({"model": {**FULL["model"], "eval_index": "beam"}}))
    assert head_source("tree", tmp_path)[0] == ["--config", str(tmp_path / "tree.yaml")]


def test_compare_refuses_a_head_file_as_base(tmp_path):
    head = tmp_path / "inbatch.yaml"
    head.write_text(yaml.safe_dump(INBATCH))
    with pytest.raises(ConfigError, match="a compare base sets the data and no model.head"):
        main(["compare", "--config", str(head), "--heads", "inbatch", "--baselines", "none", "--out", str(tmp_path)])


def test_aggregate_and_curve_ks():
    runs = [{"model": "a", "kind": "head", "seed": s, "train_seconds": t, "test": {"ndcg@10": v}, "valid": {}}
            for s, (t, v) in enumerate([(1.0, 0.2), (3.0, 0.4)])]
    agg = aggregate(runs)["a"]
    assert agg["test"]["ndcg@10"]["mean"] == pytest.approx(0.3)
    assert agg["test"]["ndcg@10"]["std"] == pytest.approx(0.02**0.5)  # sample std, ddof=1
    assert agg["train_seconds"] == {"mean": 2.0, "std": agg["train_seconds"]["std"], "n": 2}
    assert curve_ks([10, 20, 50], 30) == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30)


def _config_folder(tmp_path, **heads):
    """tmp_path/cfg with the tiny base.yaml and one <head>.yaml per keyword; returns the base path."""
    base = tmp_path / "cfg" / "base.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump(BASE))
    for name, spec in heads.items():
        (base.parent / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return base


def test_compare_end_to_end(tmp_path, capsys):
    base = _config_folder(tmp_path, inbatch=INBATCH, full=FULL)
    out = tmp_path / "out"
    main(["compare", "--config", str(base), "--heads", "inbatch,full", "--seeds", "2", "--baselines", "pop,ease",
          "--max-epochs", "1", "--k", "5", "10", "20", "--out", str(out), "--baseline-param", "ease.lambda_=50"])
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["dataset_loads"] == 1  # one RecData shared by every run
    assert res["head_configs"] == {"inbatch": str(base.parent / "inbatch.yaml"), "full": str(base.parent / "full.yaml")}
    # heads per seed; pop and EASE have no seed: deterministic, fitted once
    assert [(r["model"], r["seed"]) for r in res["runs"]] == [
        *((m, s) for m in ("inbatch", "full") for s in (0, 1)), ("pop", 0), ("ease", 0)]
    for r in res["runs"]:
        assert {"train_seconds", "peak_rss_mb", "ru_maxrss_mb", "test", "valid", "epochs"} <= set(r)
        assert {"recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@1"} <= set(r["test"])
        if r["kind"] == "head":
            assert r["epochs"] == 1 and r["checkpoint"].endswith(".ckpt") and r["peak_rss_mb"] > 0
            clock = r["epoch_clock"]  # EpochClock: one validation epoch
            assert [e["epoch"] for e in clock] == [0] and clock[0]["examples"] > 0
            assert 0 < clock[0]["train_s"] <= clock[0]["elapsed_s"] == r["seconds_to_best"] <= r["train_seconds"]
            assert r["examples_per_second"] == pytest.approx(clock[0]["examples"] / clock[0]["train_s"])
    assert res["runs"][-1]["params"]["lambda_"] == 50
    agg = res["aggregate"]
    assert set(agg) == {"inbatch", "full", "pop", "ease"}
    assert agg["pop"]["test"]["ndcg@10"]["std"] == 0.0  # deterministic baseline
    assert agg["ease"]["test"]["ndcg@10"]["mean"] > agg["pop"]["test"]["ndcg@10"]["mean"]
    composed = yaml.safe_load((out / "configs" / "full_seed1.yaml").read_text())  # the resolved config
    assert composed["seed_everything"] == 1 and composed["model"]["head"]["class_path"].endswith("FullSoftmax")
    assert composed["model"]["head"]["init_args"]["temperature"] == 0.5
    assert composed["model"]["query_tower"]["init_args"]["dim"] == 8 and composed["data"]["batch_size"] == 128
    md = (out / "results.md").read_text()
    assert ("| model | recall@10 | ndcg@10 | recall@20 | ndcg@20 | train s | s to best | s / epoch | ex / s | epochs "
            "| peak RSS MB | prior w |") in md
    assert all(f"| {m} |" in md and f"| {m} |" in printed for m in agg)
    for png in ("recall_at_k.png", "ndcg10_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_are_tuned_on_validation_and_listed_once(tmp_path):
    base = tmp_path / "cfg" / "base.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "out"
    main(["compare", "--config", str(base), "--heads", "none", "--seeds", "2", "--baselines", "pop,ease",
          "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    tune = res["baseline_tuning"]
    assert set(tune) == {"ease"}  # pop has nothing to tune
    trials = tune["ease"]["trials"]
    assert [t["params"]["lambda_"] for t in trials] == tune["ease"]["grid"]["lambda_"]
    best = max(trials, key=lambda t: t["ndcg@10"])
    assert tune["ease"]["chosen"]["lambda_"] == best["params"]["lambda_"]  # chosen on validation
    assert {r["params"]["lambda_"] for r in res["runs"] if r["model"] == "ease"} == {best["params"]["lambda_"]}
    # the chosen point's tuning fit is the run's model (not fitted again)
    assert [r["train_seconds"] for r in res["runs"] if r["model"] == "ease"] == [best["fit_seconds"]]
    # the run's own validation score of the chosen lambda is the tuning trial's (same fit, same split)
    ease_valid = [r["valid"]["ndcg@10"] for r in res["runs"] if r["model"] == "ease"]
    assert ease_valid[0] == pytest.approx(best["ndcg@10"])
    md = (out / "results.md").read_text()
    assert "## Baselines tuned on validation" in md and md.count("| chosen |") == 1
    table = md.split("\n\n")[2]
    assert table.count("| ease |") == 1 and table.count("| pop |") == 1  # one row per model, not per seed
    main(["compare", "--config", str(base), "--heads", "none", "--seeds", "1", "--baselines", "ease",
          "--out", str(tmp_path / "fixed"), "--no-tune-baselines"])
    fixed = json.loads((tmp_path / "fixed" / "results.json").read_text())
    assert fixed["baseline_tuning"] == {} and fixed["runs"][0]["params"]["repr"] == "ease(lambda=500)"


def test_best_head_gets_more_seeds_and_a_grid_can_be_replaced(tmp_path):
    base = _config_folder(tmp_path, inbatch=INBATCH, full=FULL)
    out = tmp_path / "out"
    main(["compare", "--config", str(base), "--heads", "inbatch,full", "--seeds", "1", "--best-head-seeds", "2",
          "--baselines", "ease", "--baseline-grid", "ease.lambda_=5,500", "--max-epochs", "1", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    heads = [r for r in res["runs"] if r["kind"] == "head"]
    first = {r["model"]: r["valid"]["ndcg@10"] for r in heads if r["seed"] == 0}
    assert res["best_head"] == max(first, key=first.get)  # chosen on validation
    assert [(r["model"], r["seed"]) for r in heads] == [("inbatch", 0), ("full", 0), (res["best_head"], 1)]
    assert res["baseline_tuning"]["ease"]["grid"] == {"lambda_": [5, 500]}
    assert [t["params"]["lambda_"] for t in res["baseline_tuning"]["ease"]["trials"]] == [5, 500]
    with pytest.raises(ConfigError, match="baseline-grid"):
        main(["compare", "--config", str(base), "--heads", "none", "--baselines", "ease",
              "--baseline-grid", "ease.lambda_", "--out", str(out)])


def test_an_interrupted_compare_resumes_its_runs(tmp_path):
    base = tmp_path / "cfg" / "base.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump(BASE))
    (base.parent / "inbatch.yaml").write_text(yaml.safe_dump(INBATCH))
    out = tmp_path / "out"
    args = ["compare", "--config", str(base), "--heads", "inbatch", "--seeds", "1", "--baselines", "none",
            "--out", str(out)]
    main([*args, "--max-epochs", "1"])
    first = json.loads((out / "results.json").read_text())["runs"][0]
    record = out / "runs" / "inbatch" / "seed0" / "record.json"
    assert record.is_file()
    main([*args, "--max-epochs", "1", "--resume"])  # the record is reused as it is
    again = json.loads((out / "results.json").read_text())["runs"][0]
    assert again["test"] == first["test"] and again["train_seconds"] == first["train_seconds"]
    record.unlink()  # no record, a last.ckpt whose fit had ended: scored only, same model
    main([*args, "--max-epochs", "1", "--resume"])
    scored = json.loads((out / "results.json").read_text())["runs"][0]
    drop = {"search_seconds"}  # wall time of the scoring
    assert scored["resumed"] and ({k: v for k, v in scored["test"].items() if k not in drop}
                                  == pytest.approx({k: v for k, v in first["test"].items() if k not in drop}))
    assert scored["epoch_clock"] == first["epoch_clock"]  # the clock comes back from the checkpoint
    record.unlink()  # a longer budget: the fit continues from last.ckpt for one more epoch
    main([*args, "--max-epochs", "2", "--resume"])
    more = json.loads((out / "results.json").read_text())["runs"][0]
    assert more["resumed"] and more["epochs"] == 2 and [e["epoch"] for e in more["epoch_clock"]] == [0, 1]
    assert more["epoch_clock"][0] == first["epoch_clock"][0]
