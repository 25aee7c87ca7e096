"""``recsys recommend (--ckpt PATH | --model DIR) --user RAW_ID -k 10``: the best unseen
items for one user (train and validation items excluded), from a checkpoint or an export
folder. ``--temperature T`` > 0 samples k distinct items from softmax(score / T) instead
(Gumbel top-k); ``--seed`` makes the draw reproducible.
"""

from __future__ import annotations

import argparse
import json

from recsys.errors import ConfigError


def recommender(ckpt=None, model=None, data_root=None):
    """A ``Recommender`` from a checkpoint or an export folder (exactly one of them)."""
    from recsys.artifacts.recommender import Recommender

    if (ckpt is None) == (model is None):
        raise ConfigError("pass exactly one of --ckpt (a `recsys fit` checkpoint) and --model (a "
                          "`recsys export` folder). Fix: e.g. --ckpt runs/recsys/version_0/checkpoints/last.ckpt.")
    return Recommender.from_checkpoint(ckpt, data_root) if ckpt else Recommender.from_export(model)


def format_rows(rows: list[dict]) -> str:
    """Aligned text table: rank, item, score, title."""
    cells = [("rank", "item", "score", "title")] + [
        (str(r["rank"]), str(r["item"]), f"{r['score']:.4f}", r["title"] or "") for r in rows]
    w = [max(len(c[j]) for c in cells) for j in range(3)]
    return "\n".join(f"{c[0]:>{w[0]}}  {c[1]:<{w[1]}}  {c[2]:>{w[2]}}  {c[3]}".rstrip() for c in cells)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="recsys recommend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint written by `recsys fit`")
    src.add_argument("--model", help="export folder written by `recsys export`")
    p.add_argument("--user", required=True, help="raw user id, as in the dataset")
    p.add_argument("-k", "--k", type=int, default=10, help="number of items (default 10)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: plain top-k (default); > 0: sample from softmax(score / T)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    p.add_argument("--data-root", default=None, help="data folder for --ckpt (default: the fit config's)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    a = p.parse_args(argv)
    if a.temperature < 0:
        raise ConfigError(f"--temperature {a.temperature} < 0: need T >= 0. Fix: 0 for top-k, e.g. 1.0 to sample.")
    rows = recommender(a.ckpt, a.model, a.data_root).recommend(a.user, a.k, a.temperature, a.seed)
    print(json.dumps(rows, indent=2) if a.json else format_rows(rows))
