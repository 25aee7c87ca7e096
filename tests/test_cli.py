"""CLI: every config (base + head) runs with fast_dev_run; head files hold only the head;
the demo and `data stats` commands run end to end."""

from __future__ import annotations

import pytest
import yaml

from recsys.commands.console import main
from tests.conftest import HEAD_NAMES, REPO, SHARED, config_args

DATASETS = ("synthetic", "ml-100k", "ml-1m", "gowalla", "bibtex")
# head files beyond the built-in head names: a second config of one head class
VARIANTS = {"bibtex": ("softmax",)}  # FullSoftmax without the decoupling mask (full.yaml has it)
# stage files: a second training stage composed with base.yaml, which also sets its data, optimiser
# and epochs (the preference stage from a reference checkpoint; tests/test_preference.py runs it)
STAGES = {"ml-1m": ("preference",)}
RUNS = ([(ds, h) for ds in DATASETS for h in HEAD_NAMES] + [("synthetic", "tree"), ("ml-1m", "tree")]
        + [(ds, h) for ds, hs in VARIANTS.items() for h in hs])
TINY_ARGS = ["--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4"]


def test_every_dataset_has_a_base_and_head_files_hold_only_the_head():
    for ds in DATASETS:
        folder = REPO / "configs" / ds
        from recsys.model.heads import HEADS

        files = {p.stem for p in folder.glob("*.yaml")}
        # the five heads, and maybe newer ones or a variant
        assert {"base", *HEAD_NAMES} <= files <= {"base", *HEADS, *VARIANTS.get(ds, ())}, ds
        assert "head" not in (yaml.safe_load((folder / "base.yaml").read_text())["model"])
        for h in STAGES.get(ds, ()):
            cfg = yaml.safe_load((folder / f"{h}.yaml").read_text())
            assert set(cfg) <= {"trainer", "data", "model"} and "head" in cfg["model"], (ds, h)
            rating = {"rating_grid", "rating_tolerance", "rating_reg", "rating_sweeps", "query_tower", "item_tower"}
            assert set(cfg["model"]) <= {"head", "reference", "dense_optimizer", "lr_scheduler", *rating}, (ds, h)
            for tower in ("query_tower", "item_tower"):  # of the towers, a stage sets only the rating factors
                assert set(cfg["model"].get(tower, {})) <= {"init_args"}, (ds, h, tower)
                assert set(cfg["model"].get(tower, {}).get("init_args", {})) <= {"rating_dim"}, (ds, h, tower)
        for h in sorted(files - {"base", *STAGES.get(ds, ())}):
            cfg = yaml.safe_load((folder / f"{h}.yaml").read_text())
            # the head, how its checkpoint is chosen (the tree: its own beam) and at most an epoch cap
            # (Gowalla's full-catalogue heads)
            assert set(cfg) - {"trainer"} == {"model"} and "head" in cfg["model"], (ds, h)
            assert set(cfg["model"]) <= {"head", "eval_index", "eval_beam"}, (ds, h)
            assert set(cfg.get("trainer", {})) <= {"max_epochs"}, (ds, h)
            assert cfg["model"]["head"]["class_path"].startswith("recsys.model.heads."), (ds, h)


def test_composed_config_is_base_plus_head(tmp_path):
    # what LightningCLI makes of base + head equals the base with the head block added
    from recsys.train.cli import RecsysCLI

    cli = RecsysCLI(args=[*config_args("synthetic", "sampled"), *TINY_ARGS,
                          "--model.head.init_args.num_negatives=32"], run=False)
    assert type(cli.model.head).__name__ == "SampledSoftmax" and cli.model.head.num_negatives == 32
    assert type(cli.model.head.sampler).__name__ == "LogUniformSampler"
    base = yaml.safe_load((REPO / "configs" / "synthetic" / "base.yaml").read_text())
    assert cli.datamodule.batch_size == base["data"]["batch_size"]
    assert cli.model.query_tower.dim == base["model"]["query_tower"]["init_args"]["dim"]


@pytest.mark.parametrize("ds,head", RUNS, ids=lambda x: str(x))
def test_every_config_fast_dev_run(ds: str, head: str, tmp_path, monkeypatch):
    if ds != "synthetic" and not (SHARED / ds).exists():
        pytest.skip(f"real data for {ds} not found in {SHARED}")
    monkeypatch.setenv("RECSYS_DATA", str(SHARED))
    extra = TINY_ARGS if ds == "synthetic" else []
    if ds == "synthetic" and head == "sampled":  # the tiny catalogue has < 512 items
        extra = [*extra, "--model.head.init_args.num_negatives=32"]
    main(["fit", *config_args(ds, head), "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false", *extra])


def test_data_stats_prints_protocol_counts(capsys, monkeypatch):
    if not (SHARED / "ml-1m").exists():
        pytest.skip(f"real data not found in {SHARED}")
    main(["data", "stats", "ml-1m", "--root", str(SHARED)])
    out = capsys.readouterr().out
    assert "| users | 6,033 |" in out and "| items | 3,123 |" in out and "| interactions | 834,449 |" in out


def test_demo_runs_and_beats_popularity(tmp_path, capsys):
    main(["demo", "--max-epochs", "3", "--root-dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    model = next(v for k, v in rows.items() if k.startswith("two-tower"))
    ndcg = lambda line: float(line.split("|")[3])
    assert ndcg(model) > 1.2 * ndcg(rows["popularity"])


def test_a_head_file_alone_warns_that_it_trains_on_the_default_data():
    from recsys.train.cli import warn_without_data

    head = str(REPO / "configs" / "ml-1m" / "inbatch.yaml")
    msg = warn_without_data({"config": [head], "data": {"dataset": "synthetic"}})
    assert msg and "sets `data`" in msg and "base.yaml" in msg
    assert warn_without_data({"config": [str(REPO / "configs" / "ml-1m" / "base.yaml"), head]}) is None
    assert warn_without_data({"config": None}) is None  # flags only: nothing to check


@pytest.mark.parametrize("flag", ["--trainer.max_steps=5", "--trainer.limit_val_batches=0",
                                  "--trainer.enable_checkpointing=false"])
def test_runs_that_end_early_end_cleanly_under_default_root_dir(flag, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's runs/
    root = tmp_path / "out"
    with caplog.at_level("WARNING"):
        main(["fit", *config_args("synthetic", "inbatch"), *TINY_ARGS, "--trainer.max_epochs=1",
              f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", flag])
    run = root / "recsys" / "version_0"
    assert (run / "metrics.csv").is_file() and not (tmp_path / "runs").exists()  # logs follow default_root_dir
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").exists() else []
    if "enable_checkpointing" in flag:
        assert ckpts == []
    else:
        assert ckpts == ["last.ckpt"]  # no validation: no best checkpoint, the final weights kept
        assert sum("no validation ran" in r.getMessage() for r in caplog.records) == 1


def test_fit_on_your_own_csv_with_usual_column_names(tmp_path, capsys):
    # --data.dataset=PATH: a CSV with user_id, item_id, rating, timestamp columns and string ids
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"sku{j}", int(rng.integers(1, 6)), 1_600_000_000 + int(rng.integers(0, 10**6)))
            for u in range(120) for j in rng.choice(np.arange(u % 3 * 20, u % 3 * 20 + 20), 12, replace=False)]
    csv_path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(csv_path, index=False)
    root = tmp_path / "out"
    main(["fit", *config_args("synthetic", "inbatch"), f"--data.dataset={csv_path}", "--data.k_core=2",
          "--data.batch_size=64", "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}",
          "--trainer.enable_progress_bar=false"])
    metrics = (root / "recsys" / "version_0" / "metrics.csv").read_text()
    assert "val/ndcg@10" in metrics.splitlines()[0]  # it trained and validated
    main(["data", "stats", str(csv_path), "--k-core", "2"])
    out = capsys.readouterr().out
    assert "| dataset | events.csv |" in out and "| users | 120 |" in out


def test_training_help_is_built_once_then_printed_from_the_cache(tmp_path, monkeypatch, capsys):
    from recsys.commands.console import help_cache_path

    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    path = help_cache_path("validate")
    assert not path.exists()
    main(["validate", "--help"])  # a miss: LightningCLI builds the text, the console keeps it
    built = capsys.readouterr().out
    assert "--config CONFIG" in built and path.read_text() == built
    path.write_text("cached help text\n")  # a hit prints the file, without Lightning
    main(["validate", "--help"])
    assert capsys.readouterr().out == "cached help text\n"
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "other"))  # another key (folder): built again
    main(["validate", "--help"])
    assert capsys.readouterr().out == built
