"""CLI: every config runs with fast_dev_run; configs of a dataset differ only in the head;
the demo and `data stats` commands run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsys.train.cli import main
from tests.conftest import REPO, SHARED

CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))
TINY_ARGS = ["--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4"]


def test_configs_exist_for_every_dataset_and_head():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    for ds in ("synthetic", "ml-100k", "ml-1m"):
        for head in ("full", "sigmoid", "sampled", "inbatch", "hard"):
            assert (ds, head) in names, f"configs/{ds}/{head}.yaml missing"


@pytest.mark.parametrize("ds", ["synthetic", "ml-100k", "ml-1m"])
def test_heads_differ_only_in_head_block(ds):
    cfgs = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "configs" / ds).glob("*.yaml")}
    base = cfgs["inbatch"]
    for name, c in cfgs.items():
        assert c["model"].pop("head")["class_path"].startswith("recsys.model.heads.")
        assert c == {**base, "model": {k: v for k, v in base["model"].items() if k != "head"}}, name


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_fast_dev_run(cfg: Path, tmp_path, monkeypatch):
    ds = cfg.parent.name
    if ds != "synthetic" and not (SHARED / ds).exists():
        pytest.skip(f"real data for {ds} not found in {SHARED}")
    monkeypatch.setenv("RECSYS_DATA", str(SHARED))
    extra = TINY_ARGS if ds == "synthetic" else []
    if ds == "synthetic" and cfg.stem == "sampled":  # the tiny catalogue has < 512 items
        extra = [*extra, "--model.head.init_args.num_negatives=32"]
    main(["fit", "--config", str(cfg), "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
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
