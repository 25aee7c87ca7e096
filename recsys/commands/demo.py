"""``recsys demo``: the main job on the embedded default. Trains a two-tower model on the
synthetic dataset from ``configs/synthetic/base.yaml`` + ``configs/synthetic/<head>.yaml``
(shipped inside the wheel as the package ``recsys.configs``), then prints full-catalogue
test Recall@k / NDCG@k beside a popularity baseline."""

from __future__ import annotations

import argparse
from pathlib import Path


def configs_folder() -> Path:
    """``configs/synthetic`` of a source checkout, else the copy installed with the package."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "configs" / "synthetic").is_dir():  # a source checkout
        return root / "configs" / "synthetic"
    from importlib.resources import files

    return Path(str(files("recsys.configs") / "synthetic"))


def main(argv: list[str]) -> None:
    """Train on the embedded default and print the test table."""
    p = argparse.ArgumentParser(prog="recsys demo", description=__doc__)
    p.add_argument("--head", default="inbatch", help="config in configs/synthetic/ (default inbatch)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--root-dir", default="runs/demo", help="where checkpoints and logs go")
    a = p.parse_args(argv)

    from recsys.eval.baselines import Popularity
    from recsys.eval.evaluate import evaluate
    from recsys.reporting import metric_table
    from recsys.train.cli import RecsysCLI, fit_best

    folder = configs_folder()
    args = ["--config", str(folder / "base.yaml"), "--config", str(folder / f"{a.head}.yaml"),
            f"--trainer.default_root_dir={a.root_dir}",
            f"--trainer.logger.init_args.save_dir={a.root_dir}", "--trainer.enable_progress_bar=false"]
    if a.max_epochs:
        args.append(f"--trainer.max_epochs={a.max_epochs}")
    cli = RecsysCLI(args=args, run=False)
    secs, best = fit_best(cli)
    ks = (10, 20)
    res = evaluate(cli.model, cli.datamodule, "test", ks)
    data = cli.datamodule.data
    pop = evaluate(Popularity().fit(data), data, "test", ks).metrics
    cols = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@10"]
    print(f"\n{data.name}: {data.n_users} users, {data.n_items} items; full-catalogue test metrics, "
          f"seen items excluded; trained {cli.trainer.current_epoch} epochs in {secs:.1f}s\n")
    print(metric_table({f"two-tower ({type(cli.model.head).__name__})": res.metrics, "popularity": pop}, cols))
    print(f"\ncheckpoint: {best or cli.trainer.checkpoint_callback.last_model_path}")
